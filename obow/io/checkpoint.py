"""Reading OBoW Lab checkpoint files, and the format names they carry.

A training checkpoint is one file holding everything exact resume needs:
`{"format": "obow-lab/pretrain", "format_version": 1, "epoch": completed epochs, "iteration": completed
global iterations, "spec": PretrainSpec as JSON, "model": OBoW state dict (no `module.` prefix),
"optimizer": SGD state dict, "rng": RNG states}`. A backbone file (`obow-lab/backbone`) holds only a
torchvision-named backbone state dict and where it came from. Files are read with `weights_only=True`,
so a checkpoint can never execute code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from obow.errors import CheckpointError

PRETRAIN_FORMAT = "obow-lab/pretrain"
BACKBONE_FORMAT = "obow-lab/backbone"
FORMAT_VERSION = 1


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
