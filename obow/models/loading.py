"""Load a trained backbone (the student) from any checkpoint file an evaluation or export may get.

`BACKBONE_READERS` is the explicit table of what is understood: OBoW Lab training checkpoints and
backbone files, the official OBoW training checkpoints and feature extractors, torchvision files.
Which layout a file has is decided in `obow.io.layouts`; each reader here only rebuilds the backbone.
Evaluations and exports call `load_backbone` and never care which format they got.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from obow.errors import CheckpointError
from obow.io.checkpoint import BACKBONE_FORMAT, PRETRAIN_FORMAT
from obow.io.layouts import (
    OFFICIAL_FEATURE_EXTRACTOR,
    OFFICIAL_MODEL,
    TORCHVISION,
    Identified,
    epoch_of,
    map_official_backbone,
    map_official_model,
    strip_prefix,
)
from obow.io.readers import ReaderRegistry
from obow.models.backbone import ResNetBackbone, build_backbone
from obow.models.state import backbone_from_state, load_state_strict, split_fc


@dataclass
class LoadedBackbone:
    backbone: ResNetBackbone
    source_format: str
    epoch: int | None = None
    spec: dict[str, Any] | None = None  # the PretrainSpec as JSON when known
    extra: dict[str, Any] = field(default_factory=dict)


def read_lab_checkpoint(found: Identified, path: Path) -> LoadedBackbone:
    payload = found.payload
    opts = payload["spec"]["model"]
    fe = opts.get("feature_extractor_opts", {})
    backbone = build_backbone(
        opts["feature_extractor_arch"], small_stem=fe.get("small_stem", False), width=fe.get("width", 1.0),
        block4_width=fe.get("block4_width"),
    )
    load_state_strict(backbone, strip_prefix(payload["model"], "student."), f"student of '{path}'")
    return LoadedBackbone(backbone, PRETRAIN_FORMAT, epoch=payload.get("epoch"), spec=payload["spec"])


def read_backbone_file(found: Identified, path: Path) -> LoadedBackbone:
    payload = found.payload
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' is an OBoW Lab backbone file without its 'state_dict'; re-import the source")
    backbone = backbone_from_state(state, f"backbone of '{path}'")
    extra: dict[str, Any] = {"source": payload.get("source", {})}
    if isinstance(payload.get("fc"), dict):
        extra["fc"] = payload["fc"]
    return LoadedBackbone(backbone, BACKBONE_FORMAT, epoch=payload.get("source", {}).get("epoch"), extra=extra)


def read_official_model(found: Identified, path: Path) -> LoadedBackbone:
    student = {k: v for k, v in map_official_model(found.state).items() if k.startswith("student.")}
    backbone = backbone_from_state(strip_prefix(student, "student."), f"student of '{path}'")
    return LoadedBackbone(backbone, OFFICIAL_MODEL, epoch=epoch_of(found.envelope, path))


def read_official_feature_extractor(found: Identified, path: Path) -> LoadedBackbone:
    backbone = backbone_from_state(map_official_backbone(found.state), f"feature extractor '{path}'")
    return LoadedBackbone(backbone, OFFICIAL_FEATURE_EXTRACTOR, epoch=epoch_of(found.envelope, path))


def read_torchvision(found: Identified, path: Path) -> LoadedBackbone:
    """A torchvision file's backbone; its fc, if any, is kept in `extra` for a torchvision export."""
    backbone_state, fc = split_fc(found.state)
    backbone = backbone_from_state(backbone_state, f"torchvision file '{path}'")
    extra: dict[str, Any] = {} if fc is None else {"fc": fc}
    return LoadedBackbone(backbone, TORCHVISION, epoch=epoch_of(found.envelope, path), extra=extra)


BACKBONE_READERS: ReaderRegistry[LoadedBackbone] = ReaderRegistry(
    "backbone",
    {
        PRETRAIN_FORMAT: read_lab_checkpoint,
        BACKBONE_FORMAT: read_backbone_file,
        OFFICIAL_MODEL: read_official_model,
        OFFICIAL_FEATURE_EXTRACTOR: read_official_feature_extractor,
        TORCHVISION: read_torchvision,
    },
)


def load_backbone(path: Path | str, map_location: str | torch.device = "cpu") -> LoadedBackbone:
    """The student backbone of a checkpoint, in eval mode, whatever the file's format."""
    loaded = BACKBONE_READERS.read(path, map_location)
    loaded.backbone.eval()
    return loaded
