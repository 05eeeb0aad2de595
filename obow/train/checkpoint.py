"""Checkpoint files: atomic writes, validated reads, and the layout of a training checkpoint.

A training checkpoint is one file holding everything exact resume needs:
`{"format": "obow-lab/pretrain", "format_version": 1, "epoch": completed epochs, "iteration": completed
global iterations, "spec": PretrainSpec as JSON, "model": OBoW state dict (no `module.` prefix),
"optimizer": SGD state dict, "rng": RNG states}`. Files are read with `weights_only=True`, so a
checkpoint can never execute code.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from obow.errors import CheckpointError
from obow.hashing import sha256_of  # noqa: F401  (re-exported: checkpoints and exports record it)

PRETRAIN_FORMAT = "obow-lab/pretrain"
FORMAT_VERSION = 1
CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)(?:_it(\d+))?\.pt$")


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(handle)` on a temp file in the same folder, fsync, then rename over `path`.

    A crash at any point leaves either the old file or the new one, never a torn file; on failure
    (disk full, permissions) the temp file is removed and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through `write_atomic`: the old checkpoint survives a failed or interrupted save."""
    write_atomic(path, lambda handle: torch.save(obj, handle))


def load_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True and one-line errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty; delete it and resume from an earlier one")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read ({first[:200]}); it is truncated, corrupt or not a "
            f"PyTorch checkpoint"
        ) from None


def load_training_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    payload = load_file(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != PRETRAIN_FORMAT:
        raise CheckpointError(
            f"'{path}' is not an OBoW Lab training checkpoint (use `obow import` for official OBoW files)"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"'{path}' was written by a newer OBoW Lab; upgrade to read it")
    return payload


def checkpoint_name(epoch: int, iteration_in_epoch: int | None = None) -> str:
    suffix = f"_it{iteration_in_epoch}" if iteration_in_epoch else ""
    return f"checkpoint_{epoch:04d}{suffix}.pt"


def list_checkpoints(exp_dir: Path) -> list[tuple[int, int, Path]]:
    """(completed epochs, iterations into the next epoch, path), oldest first."""
    found = []
    for entry in Path(exp_dir).glob("checkpoint_*.pt"):
        match = CHECKPOINT_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2) or 0), entry))
    return sorted(found)


def latest_checkpoint(exp_dir: Path) -> Path | None:
    found = list_checkpoints(exp_dir)
    return found[-1][2] if found else None
