"""Tiny run kinds for the lab's tests: real files, metrics, logs and stops, no torch, milliseconds.

`register()` puts them into `obow.runs.RUN_KINDS` (and replaces `export`/`import`, so the lab's export
and import paths are tested without the real converters)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from obow import runs
from obow.config.kinds import KindInfo, PathField, PathRoot
from obow.errors import ConfigError
from obow.io.atomic import write_text_atomic
from obow.reporting import Reporter, check_stop


class FakeTrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lab: ClassVar[KindInfo] = KindInfo(queue="gpu")

    kind: Literal["faketrain"] = "faketrain"
    name: str = Field("fake", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
    steps: int = Field(20, ge=1, le=100_000)
    sleep_s: float = Field(0.0, ge=0, le=5)
    lr: float = Field(0.1, gt=0)
    fail_at: int | None = Field(None, ge=0, description="Raise a user error at this step (fresh starts only)")
    checkpoint_every: int | None = Field(None, ge=1, description="Also checkpoint every N steps")
    data_dir: Annotated[str | None, PathField(PathRoot.DATA)] = None
    hang_at: int | None = Field(None, ge=0, description="Sleep hang_s at this step without checking for a stop")
    hang_s: float = Field(0.0, ge=0, le=600)
    die_at: int | None = Field(None, ge=0, description="SIGKILL its own process at this step (an OOM kill)")
    rotate: bool = Field(
        False, description="Checkpoint as the real trainer does: a new file each time (written atomically), "
        "the previous one deleted"
    )
    hostile_text: bool = Field(
        False, description="Log, name metrics, describe artifacts, fail and return with NUL, lone surrogates, NaN"
    )


HOSTILE = "nul \x00 surrogate \ud800 rtl \u202e emoji \U0001f600"


def run_faketrain(spec: FakeTrainSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    start = 0
    ckpt = out_dir / "checkpoint.json"
    if ckpt.exists():
        start = json.loads(ckpt.read_text())["step"]
        reporter.log(f"resuming from step {start}")
    for step in range(start, spec.steps):
        check_stop(reporter)
        if spec.checkpoint_every and step and step % spec.checkpoint_every == 0 and spec.rotate:
            previous = sorted(out_dir.glob("checkpoint_*.json"))
            rotated = out_dir / f"checkpoint_{step:06d}.json"
            write_text_atomic(rotated, json.dumps({"step": step, "weights": [step / 1000] * 64}))
            reporter.artifact(rotated, "checkpoint", {"step": step})
            for old in previous:
                old.unlink()
        elif spec.checkpoint_every and step and step % spec.checkpoint_every == 0:
            ckpt.write_text(json.dumps({"step": step, "weights": [0.5] * 64}))
            meta = {"note": HOSTILE, "nan": float("nan"), HOSTILE: 1} if spec.hostile_text else {}
            reporter.artifact(ckpt, "checkpoint", {"step": step, **meta})
        if spec.hostile_text:
            reporter.log(f"step {step}: {HOSTILE}", "warning")
            reporter.metrics(step, {f"lo\x00ss\ud800{step % 2}": 0.5})
        if spec.fail_at is not None and step == spec.fail_at and start == 0:
            raise ConfigError(f"fail_at reached at step {step}" + (f": {HOSTILE}" if spec.hostile_text else ""))
        if spec.hang_at is not None and step == spec.hang_at:
            time.sleep(spec.hang_s)  # a long step that never looks at the cancel flag
        if spec.die_at is not None and step == spec.die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        reporter.metrics(step, {"loss": 1.0 / (step + 1), "lr": spec.lr})
        reporter.progress(step + 1, spec.steps)
        if step % 5 == 0:
            reporter.log(f"step {step}")
        if spec.sleep_s:
            time.sleep(spec.sleep_s)
    ckpt.write_text(json.dumps({"step": spec.steps, "weights": [0.5] * 64}))
    reporter.artifact(ckpt, "checkpoint", {"epoch": 1})
    if spec.hostile_text:
        return {"final_loss": 1.0 / spec.steps, "note": HOSTILE, HOSTILE: [float("nan"), float("inf")]}
    return {"final_loss": 1.0 / spec.steps}


class FakeExportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lab: ClassVar[KindInfo] = KindInfo(queue="cpu", weights_field="checkpoint")

    kind: Literal["export"] = "export"
    checkpoint: Annotated[str, PathField(PathRoot.WEIGHTS)]
    format: Literal["torchvision", "safetensors"] = "torchvision"
    rgb_to_bgr: bool = False


def run_fakeexport(spec: FakeExportSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    """Any checkpoint file (a fake trainer's JSON or a real .pt) behind a one-line header."""
    raw = Path(spec.checkpoint).read_bytes()
    target = out_dir / f"weights_{spec.format}.bin"
    target.write_bytes(f"fake-export {spec.format}\n".encode() + raw)
    reporter.artifact(target, "export", {"format": spec.format, "rgb_to_bgr": spec.rgb_to_bgr})
    return {"sha256": hashlib.sha256(target.read_bytes()).hexdigest()}


class FakeImportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lab: ClassVar[KindInfo] = KindInfo(queue="cpu", upload_field="source")

    kind: Literal["import"] = "import"
    name: str = "import"
    source: Annotated[str, PathField(PathRoot.UPLOAD)]


def run_fakeimport(spec: FakeImportSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    raw = Path(spec.source).read_bytes()
    if not raw.startswith(b"{"):
        raise ConfigError("not an OBoW checkpoint")
    target = out_dir / "imported.json"
    target.write_bytes(raw)
    reporter.artifact(target, "checkpoint", {"format": "obow-official"})
    return {"bytes": len(raw)}


KINDS = {
    "faketrain": ("tests.lab.fake_kinds:FakeTrainSpec", "tests.lab.fake_kinds:run_faketrain"),
    "export": ("tests.lab.fake_kinds:FakeExportSpec", "tests.lab.fake_kinds:run_fakeexport"),
    "import": ("tests.lab.fake_kinds:FakeImportSpec", "tests.lab.fake_kinds:run_fakeimport"),
}


def register(keep_real: bool = False) -> None:
    """With keep_real, kinds the library already has (a real `export`) are left alone."""
    for kind, targets in KINDS.items():
        if not (keep_real and kind in runs.RUN_KINDS):
            runs.RUN_KINDS[kind] = targets
