"""Where and with what an attempt ran, so a result can be traced and the run repeated.

Collected by the worker when an attempt starts (the API never imports torch): the lab's package version
and, when the code runs from a git checkout, its commit (read from `.git` directly, so git need not be
installed; `dirty` only when git is there to tell); Python, torch, torchvision, CUDA and cuDNN versions;
host, platform, CPU count and GPU models; the full resolved spec (presets and defaults applied, as the
library runs it) and the seed it uses. Every part that cannot be found is left out, never guessed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

PACKAGE = "obow-lab"


def package_version(name: str = PACKAGE) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def find_git_dir(start: Path) -> Path | None:
    """The git directory of the checkout holding `start` (`.git` a folder, or a worktree's `.git` file)."""
    for folder in [start, *start.parents]:
        dot = folder / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():
            text = dot.read_text(errors="replace").strip()
            if text.startswith("gitdir:"):
                target = Path(text[len("gitdir:") :].strip())
                return target if target.is_absolute() else (folder / target).resolve()
    return None


def _ref_value(git_dir: Path, ref: str) -> str | None:
    common = git_dir
    commondir = git_dir / "commondir"
    if commondir.is_file():  # a worktree keeps its HEAD, the refs live in the main repository
        common = (git_dir / commondir.read_text().strip()).resolve()
    for base in (git_dir, common):
        loose = base / ref
        if loose.is_file():
            return loose.read_text().strip() or None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref:
                return parts[0]
    return None


def git_commit(start: Path) -> dict[str, Any] | None:
    """{"commit", "branch", "dirty"?} of the checkout the code runs from; None outside a checkout."""
    try:
        git_dir = find_git_dir(start.resolve())
        if git_dir is None or not (git_dir / "HEAD").is_file():
            return None
        head = (git_dir / "HEAD").read_text().strip()
        info: dict[str, Any] = {}
        if head.startswith("ref:"):
            ref = head[4:].strip()
            info["branch"] = ref.removeprefix("refs/heads/")
            commit = _ref_value(git_dir, ref)
        else:
            commit = head
        if not commit or len(commit) != 40:
            return None
        info["commit"] = commit
    except OSError:
        return None
    if shutil.which("git"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            status = subprocess.run(
                ["git", "-C", str(start), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5, check=True,
            )
            info["dirty"] = bool(status.stdout.strip())
    return info


def _torch_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {}
    try:
        import torch
    except ImportError:
        return facts
    facts["torch"] = torch.__version__
    with contextlib.suppress(ImportError):
        import torchvision

        facts["torchvision"] = torchvision.__version__
    facts["cuda"] = torch.version.cuda
    with contextlib.suppress(Exception):
        facts["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return facts


def seed_of(spec: dict[str, Any]) -> int | None:
    """The seed a resolved spec runs with (evaluations: `seed`; pretraining: `runtime.seed`)."""
    if isinstance(spec.get("seed"), int):
        return spec["seed"]
    runtime = spec.get("runtime")
    if isinstance(runtime, dict) and isinstance(runtime.get("seed"), int):
        return runtime["seed"]
    return None


def collect(
    kind: str,
    spec: BaseModel,
    gpu_models: Callable[[], list[str]] | None = None,
    code_dir: Path | None = None,
) -> dict[str, Any]:
    """Provenance of an attempt of `kind` running the validated `spec` (JSON-ready)."""
    import obow

    resolved = spec.model_dump(mode="json")
    where = code_dir or Path(obow.__file__).resolve().parent
    out: dict[str, Any] = {
        "package": PACKAGE,
        "version": package_version(),
        "git": git_commit(where),
        "python": sys.version.split()[0],
        **_torch_facts(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "gpus": gpu_models() if gpu_models is not None else [],
        "kind": kind,
        "seed": seed_of(resolved),
        "spec": resolved,
    }
    if out["seed"] is None:
        out["seed_note"] = "this kind draws nothing at random"
    return out
