"""Load a trained backbone (the student) from any checkpoint file an evaluation or export may get.

Formats understood here: OBoW Lab training checkpoints. `obow.export` adds the official OBoW files
and torchvision state dicts through `register_format`; evaluations and exports call `load_backbone`
and never care which format they got.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from obow.errors import CheckpointError
from obow.models.backbone import ResNetBackbone, build_backbone
from obow.train.checkpoint import PRETRAIN_FORMAT, load_file


@dataclass
class LoadedBackbone:
    backbone: ResNetBackbone
    source_format: str
    epoch: int | None = None
    spec: dict[str, Any] | None = None  # the PretrainSpec as JSON when known
    extra: dict[str, Any] = field(default_factory=dict)


# A format reader gets the loaded payload and the path; returns None when the payload is not its format.
FormatReader = Callable[[Any, Path], LoadedBackbone | None]
_READERS: list[FormatReader] = []


def register_format(reader: FormatReader) -> FormatReader:
    _READERS.append(reader)
    return reader


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


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


@register_format
def _read_lab_checkpoint(payload: Any, path: Path) -> LoadedBackbone | None:
    if not isinstance(payload, dict) or payload.get("format") != PRETRAIN_FORMAT:
        return None
    opts = payload["spec"]["model"]
    fe = opts.get("feature_extractor_opts", {})
    backbone = build_backbone(
        opts["feature_extractor_arch"], small_stem=fe.get("small_stem", False), width=fe.get("width", 1.0)
    )
    load_state_strict(backbone, strip_prefix(payload["model"], "student."), f"student of '{path}'")
    return LoadedBackbone(backbone, PRETRAIN_FORMAT, epoch=payload.get("epoch"), spec=payload["spec"])


def load_backbone(path: Path | str, map_location: str | torch.device = "cpu") -> LoadedBackbone:
    """The student backbone of a checkpoint, in eval mode, whatever the file's format."""
    import obow.export.official  # noqa: F401  (registers the official/torchvision/backbone readers)

    path = Path(path)
    payload = load_file(path, map_location)
    for reader in _READERS:
        loaded = reader(payload, path)
        if loaded is not None:
            loaded.backbone.eval()
            return loaded
    keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
    raise CheckpointError(
        f"'{path}' is in no known checkpoint format (top-level keys: {keys}); expected an OBoW Lab "
        f"checkpoint or, after `obow import`, an official OBoW file"
    )
