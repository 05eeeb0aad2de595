"""Recognise a ResNet backbone from a torchvision-named state dict and rebuild it."""

from __future__ import annotations

import re

import torch

from obow.errors import CheckpointError
from obow.models.backbone import ARCHS, ResNetBackbone, build_backbone
from obow.models.loading import load_state_strict

BACKBONE_FORMAT = "obow-lab/backbone"
_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.")


def infer_backbone(state: dict[str, torch.Tensor]) -> tuple[str, bool, float]:
    """(arch, small_stem, width) of a torchvision-named backbone state dict, or a CheckpointError."""
    if "conv1.weight" not in state:
        keys = ", ".join(sorted(state)[:6])
        raise CheckpointError(f"no 'conv1.weight' among the keys ({keys}, ...): not a ResNet backbone state dict")
    depths = [0, 0, 0, 0]
    for key in state:
        match = _BLOCK.match(key)
        if match:
            stage, index = int(match.group(1)), int(match.group(2))
            if 1 <= stage <= 4:
                depths[stage - 1] = max(depths[stage - 1], index + 1)
    bottleneck = "layer1.0.conv3.weight" in state
    matches = [
        name for name, (block, expected) in ARCHS.items() if expected == depths and (block.expansion == 4) == bottleneck
    ]
    if not matches:
        raise CheckpointError(
            f"wrong architecture: stage depths {depths} ({'bottleneck' if bottleneck else 'basic'} blocks) match "
            f"neither resnet18 [2, 2, 2, 2] nor resnet50 [3, 4, 6, 3]"
        )
    arch = matches[0]
    stem = state["conv1.weight"]
    small_stem = stem.shape[-1] == 3
    width = stem.shape[0] / 64
    return arch, small_stem, width


def backbone_from_state(state: dict[str, torch.Tensor], what: str) -> ResNetBackbone:
    arch, small_stem, width = infer_backbone(state)
    backbone = build_backbone(arch, small_stem=small_stem, width=width)
    load_state_strict(backbone, state, what)
    return backbone


def backbone_payload(backbone: ResNetBackbone, source: dict) -> dict:
    """Our backbone-only checkpoint: what an imported feature extractor or torchvision file becomes."""
    return {
        "format": BACKBONE_FORMAT,
        "format_version": 1,
        "arch": backbone.arch,
        "small_stem": backbone.small_stem,
        "width": backbone.width,
        "state_dict": backbone.state_dict(),
        "source": source,
    }
