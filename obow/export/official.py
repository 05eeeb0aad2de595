"""Reading checkpoints written elsewhere: the official OBoW files, torchvision files, our backbone files.

Registered as `load_backbone` formats, so every evaluation and export accepts them directly.
`import_checkpoint` turns one into an OBoW Lab file: a full official training checkpoint becomes a
training checkpoint (student, teacher, vocabularies, heads), anything else a backbone-only file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from obow.config.presets import load_pretrain_config
from obow.config.pretrain import PretrainSpec
from obow.errors import CheckpointError
from obow.export.backbone_state import BACKBONE_FORMAT, backbone_from_state, backbone_payload
from obow.export.names import official_backbone_key, official_model_key
from obow.models.loading import LoadedBackbone, load_state_strict, register_format, strip_prefix
from obow.train.checkpoint import FORMAT_VERSION, PRETRAIN_FORMAT, load_file, save_atomic, sha256_of


def _unwrap(payload: Any) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
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


def _drop_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def classify(state: dict[str, torch.Tensor]) -> str:
    """`official-model`, `official-feature-extractor` or `torchvision` by the keys present."""
    if any(k.startswith("feature_extractor._feature_blocks.") for k in state):
        return "official-model"
    if any(k.startswith("_feature_blocks.") for k in state):
        return "official-feature-extractor"
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return "torchvision"
    shown = ", ".join(sorted(state)[:6])
    raise CheckpointError(
        f"unknown checkpoint layout (keys: {shown}, ...): expected an official OBoW model_net or "
        f"feature_extractor_net checkpoint, or a torchvision ResNet state dict"
    )


def map_official_backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mapped, unknown = {}, []
    for key, value in state.items():
        ours = official_backbone_key(key)
        (unknown.append(key) if ours is None else mapped.__setitem__(ours, value))
    if unknown:
        raise CheckpointError(f"unexpected keys in the feature extractor: {', '.join(sorted(unknown)[:5])}")
    return mapped


def map_official_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mapped, unknown = {}, []
    for key, value in state.items():
        ours = official_model_key(key)
        (unknown.append(key) if ours is None else mapped.__setitem__(ours, value))
    if unknown:
        raise CheckpointError(f"unexpected keys in the OBoW checkpoint: {', '.join(sorted(unknown)[:5])}")
    return mapped


def _torchvision_backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def spec_for_official_model(mapped: dict[str, torch.Tensor]) -> PretrainSpec:
    """The original preset matching the file, with what the file itself tells (levels, K, κ, classes)."""
    student = strip_prefix(mapped, "student.")
    from obow.export.backbone_state import infer_backbone

    arch, _, width = infer_backbone(student)
    levels = sorted({int(k.split(".")[2]) for k in mapped if k.startswith("bow_extractor.levels.")})
    names = ["block4"] if len(levels) == 1 else ["block3", "block4"]
    if len(levels) not in (1, 2):
        raise CheckpointError(f"the checkpoint has {len(levels)} BoW levels; OBoW uses 1 or 2")
    preset = (
        "ImageNetFull/ResNet50_OBoW_full" if arch == "resnet50"
        else ("ImageNet20/ResNet18_OBoW_vanilla" if len(levels) == 1 else "ImageNet20/ResNet18_OBoW_full")
    )
    num_words = [int(mapped[f"bow_extractor.levels.{i}._embedding"].shape[0]) for i in levels]
    kappa = [float(x) for x in mapped["bow_predictor.scale"].tolist()] if "bow_predictor.scale" in mapped else None
    classes = mapped.get("linear_classifier.prediction_layer.weight")
    overrides = [
        f"model.bow_levels={names}",
        f"model.bow_extractor_opts.num_words={num_words}",
        f"model.num_classes={int(classes.shape[0]) if classes is not None else 'null'}",
        f"model.feature_extractor_opts.width={width}",
    ]
    if kappa:
        overrides.append(f"model.bow_predictor_opts.kappa={kappa}")
    batch = load_pretrain_config(preset).data.batch_size
    if any(k % batch for k in num_words):
        overrides.append(f"data.batch_size={min(num_words)}")
    return load_pretrain_config(preset, overrides).model_copy(update={"name": f"imported/{preset.split('/')[1]}"})


def read_foreign(payload: Any, path: Path) -> LoadedBackbone | None:
    """`load_backbone` reader for official OBoW and torchvision files."""
    state, envelope = _unwrap(payload)
    if state is None:
        return None
    state = _drop_module_prefix(state)
    try:
        kind = classify(state)
    except CheckpointError:
        return None
    epoch = envelope.get("epoch") if isinstance(envelope.get("epoch"), int) else None
    if kind == "official-model":
        student = {k: v for k, v in map_official_model(state).items() if k.startswith("student.")}
        backbone = backbone_from_state(strip_prefix(student, "student."), f"student of '{path}'")
    elif kind == "official-feature-extractor":
        backbone = backbone_from_state(map_official_backbone(state), f"feature extractor '{path}'")
    else:
        backbone = backbone_from_state(_torchvision_backbone_state(state), f"torchvision file '{path}'")
    return LoadedBackbone(backbone, kind, epoch=epoch)


def read_backbone_file(payload: Any, path: Path) -> LoadedBackbone | None:
    if not isinstance(payload, dict) or payload.get("format") != BACKBONE_FORMAT:
        return None
    backbone = backbone_from_state(payload["state_dict"], f"backbone of '{path}'")
    return LoadedBackbone(backbone, BACKBONE_FORMAT, epoch=payload.get("source", {}).get("epoch"),
                          extra={"source": payload.get("source", {})})


register_format(read_backbone_file)
register_format(read_foreign)


def import_checkpoint(path: Path, dst: Path) -> dict[str, Any]:
    """Validate a foreign file completely, then write its OBoW Lab version atomically to `dst`."""
    path = Path(path)
    payload = load_file(path)
    state, envelope = _unwrap(payload)
    if state is None:
        raise CheckpointError(f"'{path}' holds no state dict (top-level: {type(payload).__name__})")
    state = _drop_module_prefix(state)
    kind = classify(state)
    source = {"path": path.name, "sha256": sha256_of(path), "size": path.stat().st_size, "layout": kind,
              "epoch": envelope.get("epoch") if isinstance(envelope.get("epoch"), int) else None}
    if kind == "official-model":
        from obow.models.obow import build_obow

        mapped = map_official_model(state)
        spec = spec_for_official_model(mapped)
        model = build_obow(spec)
        load_state_strict(model, mapped, f"OBoW checkpoint '{path}'")
        out = {
            "format": PRETRAIN_FORMAT,
            "format_version": FORMAT_VERSION,
            "epoch": source["epoch"] or 0,
            "iteration_in_epoch": 0,
            "iteration": int(mapped.get("_iteration", torch.zeros(1)).item()),
            "spec": spec.model_dump(mode="json"),
            "model": model.state_dict(),
            "optimizer": {},
            "rng": None,
            "imported_from": source,
        }
        result = {"kind": "training", "arch": spec.model.feature_extractor_arch, "levels": spec.model.bow_levels}
    else:
        backbone_state = map_official_backbone(state) if kind == "official-feature-extractor" else (
            _torchvision_backbone_state(state)
        )
        backbone = backbone_from_state(backbone_state, f"'{path}'")
        out = backbone_payload(backbone, source)
        result = {"kind": "backbone", "arch": backbone.arch, "levels": []}
    save_atomic(out, dst)
    return {**result, "layout": kind, "path": str(dst), "sha256": sha256_of(dst), "size": dst.stat().st_size}
