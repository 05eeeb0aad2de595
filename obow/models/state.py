"""Backbones from torchvision-named state dicts: recognise the architecture, rebuild, load strictly.

Shared by every checkpoint reader (`obow.models.loading`) and by `obow import`, which writes the
rebuilt backbone as an OBoW Lab backbone file (`backbone_payload`).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from obow.errors import CheckpointError
from obow.io.checkpoint import BACKBONE_FORMAT
from obow.models.backbone import ARCHS, ResNetBackbone, build_backbone

_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.")


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict(strict=True) with a one-line error listing the mismatched keys."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        raise CheckpointError(
            f"{what} does not match the architecture: missing keys [{show(missing)}], unexpected keys "
            f"[{show(unexpected)}], wrong shapes [{show(wrong_shape)}]"
        )
    module.load_state_dict(state, strict=True)


def infer_backbone(state: dict[str, torch.Tensor]) -> tuple[str, bool, float]:
    """(arch, small_stem, width) of a torchvision-named backbone state dict, or a CheckpointError.

    The depth of each stage comes from the block indices, the block type from the presence of
    `conv3`, the stem from conv1's kernel size and the width from conv1's output channels.
    """
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
    if stem.dim() != 4 or stem.shape[1] != 3 or stem.shape[-1] not in (3, 7):
        raise CheckpointError(
            f"wrong architecture: conv1.weight has shape {list(stem.shape)}; expected [C, 3, 7, 7] (ImageNet stem) "
            f"or [C, 3, 3, 3] (small-image stem)"
        )
    small_stem = stem.shape[-1] == 3
    width = stem.shape[0] / 64
    return arch, small_stem, width


def infer_block4_width(state: dict[str, torch.Tensor]) -> float | None:
    """block4's channel multiplier, from the output channels of its first conv (`planes`, before a
    bottleneck's expansion). The backbone itself names a value equal to the other stages' width None."""
    first = state.get("layer4.0.conv1.weight")
    if first is None or first.dim() != 4:
        return None  # a wrong layout: the strict load that follows names the missing or misshapen keys
    return first.shape[0] / 512


def backbone_from_state(state: dict[str, torch.Tensor], what: str) -> ResNetBackbone:
    arch, small_stem, width = infer_backbone(state)
    backbone = build_backbone(arch, small_stem=small_stem, width=width, block4_width=infer_block4_width(state))
    load_state_strict(backbone, state, what)
    return backbone


def split_fc(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(backbone entries, {"weight", "bias"} of a torchvision fc or None); a missing fc bias is zero."""
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "fc.weight" in state:
        weight = state["fc.weight"]
        bias = state.get("fc.bias", torch.zeros(weight.shape[0]))
        return backbone, {"weight": weight, "bias": bias}
    return backbone, None


def backbone_payload(
    backbone: ResNetBackbone, source: dict[str, Any], fc: dict[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """Our backbone-only checkpoint: what an imported feature extractor or torchvision file becomes.

    `fc` keeps a torchvision release file's classifier (`{"weight": [K, C], "bias": [K]}`, the BoW
    classifier for OBoW's files) so that exporting the import back to torchvision loses nothing.
    """
    payload: dict[str, Any] = {
        "format": BACKBONE_FORMAT,
        "format_version": 1,
        **backbone.facts(),
        "state_dict": backbone.state_dict(),
        "source": source,
    }
    if fc is not None:
        payload["fc"] = {"weight": fc["weight"].detach().cpu(), "bias": fc["bias"].detach().cpu()}
    return payload
