"""Reading OBoW Lab checkpoint files, and the format names they carry.

A training checkpoint is one file holding everything exact resume needs:
`{"format": "obow-lab/pretrain", "format_version": 1, "epoch": completed epochs, "iteration": completed
global iterations, "spec": PretrainSpec as JSON, "model": OBoW state dict (no `module.` prefix),
"optimizer": SGD state dict, "rng": RNG states}`. A backbone file (`obow-lab/backbone`) holds only a
torchvision-named backbone state dict and where it came from. Files are read with `weights_only=True`,
so a checkpoint can never execute code.

Integrity: every checkpoint written with `save_checkpoint` gets its sha256 in the folder's `SHA256SUMS`
(the `sha256sum` format, so `sha256sum -c SHA256SUMS` checks a folder by hand). Every load verifies a file
that has an entry there: bytes corrupted after the write (a bad disk, a partial copy, a stray edit) are
refused with an error naming the file, instead of loading into weights that later fail the run with a
misleading reason (a NaN loss blamed on the learning rate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from obow.errors import CheckpointError
from obow.io.atomic import save_atomic
from obow.io.sums import record_sha256, verify_checkpoint

PRETRAIN_FORMAT = "obow-lab/pretrain"
BACKBONE_FORMAT = "obow-lab/backbone"
FORMAT_VERSION = 1


def save_checkpoint(payload: Any, path: Path) -> str:
    """`save_atomic`, then record the file's sha256 for every later load to check; returns the digest.
    If the digest cannot be recorded (a full disk) the new file is removed again, so the error leaves the
    folder as it was."""
    path = Path(path)
    save_atomic(payload, path)
    try:
        return record_sha256(path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def load_file(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True and one-line errors for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty; delete it and resume from an earlier one")
    verify_checkpoint(path)
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
