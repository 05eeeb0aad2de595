"""Which checkpoint layout a loaded file holds, and the official OBoW parameter names.

Five layouts are understood: our training checkpoints and backbone files (tagged by their `format`
key), and three foreign ones recognised by their keys: the official OBoW training checkpoint
(`model_net_checkpoint_E.pth.tar`), the official feature extractor (`feature_extractor_net_...`) and a
torchvision ResNet. `identify` is the one place that decides; the readers that turn a layout into a
model are bound to these names by `obow.io.readers.ReaderRegistry`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from obow.errors import CheckpointError
from obow.io.checkpoint import BACKBONE_FORMAT, PRETRAIN_FORMAT

OFFICIAL_MODEL = "official-model"
OFFICIAL_FEATURE_EXTRACTOR = "official-feature-extractor"
TORCHVISION = "torchvision"
FOREIGN_LAYOUTS = (OFFICIAL_MODEL, OFFICIAL_FEATURE_EXTRACTOR, TORCHVISION)
CHECKPOINT_LAYOUTS = (PRETRAIN_FORMAT, BACKBONE_FORMAT, *FOREIGN_LAYOUTS)

# One key that each known foreign layout always has, for the "matches nothing" error.
_SIGNATURES = {
    "official model_net checkpoint": "feature_extractor._feature_blocks.0.Conv.weight",
    "official feature_extractor_net checkpoint": "_feature_blocks.0.Conv.weight",
    "torchvision ResNet": "conv1.weight",
}
_EPOCH_IN_NAME = re.compile(r"(?:_epoch|_checkpoint_)(\d+)\.pth(?:\.tar)?$")
_OFFICIAL_BLOCK = re.compile(r"^_feature_blocks\.(\d+)\.(.*)$")


@dataclass
class Identified:
    """A loaded file and its layout; `state` and `envelope` are set for the foreign layouts."""

    layout: str
    payload: Any
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    envelope: dict[str, Any] = field(default_factory=dict)


def unwrap(payload: Any) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """(state dict, envelope) of `{'network': sd, 'epoch': E}`, `{'state_dict': sd}` or a bare state dict."""
    if not isinstance(payload, dict):
        return None, {}
    for key in ("network", "state_dict", "model"):
        inner = payload.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner), payload
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return dict(payload), {}
    return None, payload


def drop_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DDP-wrapped files (the official `--multiprocessing-distributed` runs) prefix every key."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix` (e.g. `student.`), with the prefix removed; the others are dropped."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def classify(state: dict[str, torch.Tensor]) -> str:
    """The foreign layout of a state dict by the keys present, or a CheckpointError naming them."""
    if any(k.startswith("feature_extractor._feature_blocks.") for k in state):
        return OFFICIAL_MODEL
    if any(k.startswith("_feature_blocks.") for k in state):
        return OFFICIAL_FEATURE_EXTRACTOR
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return TORCHVISION
    keys = sorted(state)
    shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
    wanted = "; ".join(f"'{key}' ({what})" for what, key in _SIGNATURES.items())
    raise CheckpointError(
        f"unknown checkpoint layout: unexpected keys [{shown}]; missing keys: none of {wanted} is present. "
        f"Expected an official OBoW model_net or feature_extractor_net checkpoint, or a torchvision ResNet"
    )


def foreign_state(payload: Any, path: Path) -> Identified:
    """The state dict of a foreign file and its layout, or a CheckpointError saying what is wrong."""
    state, envelope = unwrap(payload)
    if state is None:
        top = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"'{path}' holds no state dict (top level: {top}); expected {{'network': state_dict}}, "
            f"{{'state_dict': ...}} or a bare state dict"
        )
    state = drop_module_prefix(state)
    return Identified(classify(state), payload, state, envelope)


def identify(payload: Any, path: Path) -> Identified | None:
    """The layout of a loaded file, or None when it is none of `CHECKPOINT_LAYOUTS`."""
    if isinstance(payload, dict) and payload.get("format") in (PRETRAIN_FORMAT, BACKBONE_FORMAT):
        return Identified(str(payload["format"]), payload)
    try:
        return foreign_state(payload, path)
    except CheckpointError:
        return None


def epoch_of(envelope: dict[str, Any], path: Path) -> int | None:
    """The `epoch` the file records, else the one its official name carries (`…_epoch200.pth.tar`,
    `…_checkpoint_80.pth.tar`): the torchvision release files record none."""
    if isinstance(envelope.get("epoch"), int):
        return int(envelope["epoch"])
    match = _EPOCH_IN_NAME.search(path.name)
    return int(match.group(1)) if match else None


def official_backbone_key(key: str) -> str | None:
    """`_feature_blocks.0.Conv.weight` -> `conv1.weight`, `_feature_blocks.3.1.bn2.bias` -> `layer3.1.bn2.bias`."""
    match = _OFFICIAL_BLOCK.match(key)
    if not match:
        return None
    block, rest = int(match.group(1)), match.group(2)
    if block == 0:
        if rest.startswith("Conv."):
            return "conv1." + rest[len("Conv.") :]
        if rest.startswith("bn."):
            return "bn1." + rest[len("bn.") :]
        return None
    if 1 <= block <= 4:
        return f"layer{block}.{rest}"
    return None


def official_model_key(key: str) -> str | None:
    """A key of the official `model_net_checkpoint_E.pth.tar` (no `module.`) -> our OBoW key, or None."""
    for prefix, ours in (("feature_extractor_teacher.", "teacher."), ("feature_extractor.", "student.")):
        if key.startswith(prefix):
            inner = official_backbone_key(key[len(prefix) :])
            return ours + inner if inner else None
    if key.startswith("bow_extractor.bow_extractor."):
        return "bow_extractor.levels." + key[len("bow_extractor.bow_extractor.") :]
    if key.startswith("linear_classifier.layers."):
        return "linear_classifier." + key[len("linear_classifier.layers.") :]
    if key.startswith("bow_predictor.") or key in ("_alpha", "_iteration"):
        return key
    return None


def map_official_backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official `_feature_blocks.…` names -> torchvision names; unknown keys are kept as they are, so the
    strict load that follows reports them as unexpected next to whatever is missing."""
    return {official_backbone_key(k) or k: v for k, v in state.items()}


def map_official_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official OBoW module names -> ours; unknown keys kept as they are (reported by the strict load)."""
    return {official_model_key(k) or k: v for k, v in state.items()}
