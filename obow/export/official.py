"""Reading checkpoints written elsewhere: the official OBoW files, torchvision files, our backbone files.

Registered as `load_backbone` formats, so every evaluation and export accepts them directly.
`import_checkpoint` turns one into an OBoW Lab file: a full official training checkpoint becomes a
training checkpoint (student, teacher, vocabularies, heads), anything else a backbone-only file.
Nothing is written until the whole file has been mapped and loaded strictly into the rebuilt model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from obow.config.presets import load_pretrain_config
from obow.config.pretrain import PretrainSpec
from obow.errors import CheckpointError
from obow.export.backbone_state import BACKBONE_FORMAT, backbone_from_state, backbone_payload, infer_backbone
from obow.export.names import official_backbone_key, official_model_key
from obow.models.loading import LoadedBackbone, load_state_strict, register_format, strip_prefix
from obow.train.checkpoint import FORMAT_VERSION, PRETRAIN_FORMAT, load_file, save_atomic, sha256_of

# One key that each known foreign layout always has, for the "matches nothing" error.
_SIGNATURES = {
    "official model_net checkpoint": "feature_extractor._feature_blocks.0.Conv.weight",
    "official feature_extractor_net checkpoint": "_feature_blocks.0.Conv.weight",
    "torchvision ResNet": "conv1.weight",
}


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


_EPOCH_IN_NAME = re.compile(r"(?:_epoch|_checkpoint_)(\d+)\.pth(?:\.tar)?$")


def _epoch_of(envelope: dict[str, Any], path: Path) -> int | None:
    """The `epoch` the file records, else the one its official name carries (`…_epoch200.pth.tar`,
    `…_checkpoint_80.pth.tar`): the torchvision release files record none."""
    if isinstance(envelope.get("epoch"), int):
        return int(envelope["epoch"])
    match = _EPOCH_IN_NAME.search(path.name)
    return int(match.group(1)) if match else None


def _drop_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DDP-wrapped files (the official `--multiprocessing-distributed` runs) prefix every key."""
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
    keys = sorted(state)
    shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
    wanted = "; ".join(f"'{key}' ({what})" for what, key in _SIGNATURES.items())
    raise CheckpointError(
        f"unknown checkpoint layout: unexpected keys [{shown}]; missing keys: none of {wanted} is present. "
        f"Expected an official OBoW model_net or feature_extractor_net checkpoint, or a torchvision ResNet"
    )


def map_official_backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official `_feature_blocks.…` names -> torchvision names; unknown keys are kept as they are, so the
    strict load that follows reports them as unexpected next to whatever is missing."""
    return {official_backbone_key(k) or k: v for k, v in state.items()}


def map_official_model(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official OBoW module names -> ours; unknown keys kept as they are (reported by the strict load)."""
    return {official_model_key(k) or k: v for k, v in state.items()}


def _split_fc(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if "fc.weight" in state:
        weight = state["fc.weight"]
        bias = state.get("fc.bias", torch.zeros(weight.shape[0]))
        return backbone, {"weight": weight, "bias": bias}
    return backbone, None


def spec_for_official_model(mapped: dict[str, torch.Tensor]) -> PretrainSpec:
    """The original preset matching the file, with what the file itself tells (levels, K, κ, classes).

    The file does not record the inverse temperature, the optimisation or the data settings; those
    come from the original config of the same backbone and number of levels.
    """
    arch, small_stem, width = infer_backbone(strip_prefix(mapped, "student."))
    levels = sorted({int(k.split(".")[2]) for k in mapped if k.startswith("bow_extractor.levels.")})
    if len(levels) not in (1, 2) or levels != list(range(len(levels))):
        raise CheckpointError(
            f"the checkpoint has BoW levels {levels} (keys bow_extractor.bow_extractor.<l>.*); OBoW uses 1 or 2"
        )
    names = ["block4"] if len(levels) == 1 else ["block3", "block4"]
    preset = (
        "ImageNetFull/ResNet50_OBoW_full" if arch == "resnet50"
        else ("ImageNet20/ResNet18_OBoW_vanilla" if len(levels) == 1 else "ImageNet20/ResNet18_OBoW_full")
    )
    embeddings = [mapped.get(f"bow_extractor.levels.{i}._embedding") for i in levels]
    if any(e is None or e.dim() != 2 for e in embeddings):
        raise CheckpointError("missing keys: bow_extractor.bow_extractor.<l>._embedding (the vocabulary of a level)")
    num_words = [int(e.shape[0]) for e in embeddings]  # type: ignore[union-attr]
    classes = mapped.get("linear_classifier.prediction_layer.weight")
    overrides = [
        f"model.bow_levels={names}",
        f"model.bow_extractor_opts.num_words={num_words}",
        f"model.num_classes={int(classes.shape[0]) if classes is not None else 'null'}",
        f"model.feature_extractor_opts.width={width}",
        f"model.feature_extractor_opts.small_stem={str(small_stem).lower()}",
    ]
    scale = mapped.get("bow_predictor.scale")
    if scale is not None and scale.numel() == len(levels):
        overrides.append(f"model.bow_predictor_opts.kappa={[float(x) for x in scale.tolist()]}")
    if "_iteration" not in mapped:  # the cosine momentum schedule counts iterations in this buffer
        overrides.append("model.alpha_cosine=false")
    batch = load_pretrain_config(preset).data.batch_size
    if any(k % batch for k in num_words):
        overrides.append(f"data.batch_size={min(num_words)}")
    spec = load_pretrain_config(preset, overrides)
    return spec.model_copy(update={"name": f"imported/{preset.split('/')[1]}"})


def official_model(mapped: dict[str, torch.Tensor], what: str):  # -> OBoW (import kept lazy)
    """The OBoW module rebuilt from a mapped official training checkpoint, loaded strictly."""
    from obow.models.obow import build_obow

    spec = spec_for_official_model(mapped)
    model = build_obow(spec)
    defaults = model.state_dict()
    filled = {**{k: defaults[k] for k in ("_alpha", "_iteration") if k not in mapped}, **mapped}
    load_state_strict(model, filled, what)
    return spec, model


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
    epoch = _epoch_of(envelope, path)
    extra: dict[str, Any] = {}
    if kind == "official-model":
        student = {k: v for k, v in map_official_model(state).items() if k.startswith("student.")}
        backbone = backbone_from_state(strip_prefix(student, "student."), f"student of '{path}'")
    elif kind == "official-feature-extractor":
        backbone = backbone_from_state(map_official_backbone(state), f"feature extractor '{path}'")
    else:
        backbone_state, fc = _split_fc(state)
        backbone = backbone_from_state(backbone_state, f"torchvision file '{path}'")
        if fc is not None:
            extra["fc"] = fc
    return LoadedBackbone(backbone, kind, epoch=epoch, extra=extra)


def read_backbone_file(payload: Any, path: Path) -> LoadedBackbone | None:
    if not isinstance(payload, dict) or payload.get("format") != BACKBONE_FORMAT:
        return None
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' is an OBoW Lab backbone file without its 'state_dict'; re-import the source")
    backbone = backbone_from_state(state, f"backbone of '{path}'")
    extra: dict[str, Any] = {"source": payload.get("source", {})}
    if isinstance(payload.get("fc"), dict):
        extra["fc"] = payload["fc"]
    return LoadedBackbone(backbone, BACKBONE_FORMAT, epoch=payload.get("source", {}).get("epoch"), extra=extra)


register_format(read_backbone_file)
register_format(read_foreign)


def _validated_lab_file(payload: dict[str, Any], path: Path) -> tuple[dict[str, Any], str]:
    """An OBoW Lab file (from another lab, say) is checked like a foreign one and kept as it is."""
    if payload.get("format") == BACKBONE_FORMAT:
        read_backbone_file(payload, path)
        return payload, "backbone"
    from obow.models.obow import build_obow

    try:
        spec = PretrainSpec.model_validate(payload["spec"])
    except Exception as err:
        raise CheckpointError(f"'{path}' has an invalid spec: {str(err).splitlines()[0]}") from None
    load_state_strict(build_obow(spec), payload.get("model", {}), f"OBoW Lab checkpoint '{path}'")
    return payload, "training"


def import_checkpoint(path: Path, dst: Path) -> dict[str, Any]:
    """Validate a foreign file completely, then write its OBoW Lab version atomically to `dst`.

    Returns what was made: `kind` ("training" or "backbone"), `layout` (what the file was), `arch`,
    `levels`, `path`, `sha256`, `size`.
    """
    path, dst = Path(path), Path(dst)
    payload = load_file(path)
    source = {"path": path.name, "sha256": sha256_of(path), "size": path.stat().st_size}
    if isinstance(payload, dict) and payload.get("format") in (PRETRAIN_FORMAT, BACKBONE_FORMAT):
        out, kind = _validated_lab_file(payload, path)
        layout = str(payload["format"])
        arch = out["arch"] if kind == "backbone" else out["spec"]["model"]["feature_extractor_arch"]
        levels = [] if kind == "backbone" else list(out["spec"]["model"]["bow_levels"])
        result = {"kind": kind, "arch": arch, "levels": levels}
    else:
        state, envelope = _unwrap(payload)
        if state is None:
            top = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
            raise CheckpointError(
                f"'{path}' holds no state dict (top level: {top}); expected {{'network': state_dict}}, "
                f"{{'state_dict': ...}} or a bare state dict"
            )
        state = _drop_module_prefix(state)
        layout = classify(state)
        epoch = _epoch_of(envelope, path)
        source |= {"layout": layout, "epoch": epoch}
        if layout == "official-model":
            mapped = map_official_model(state)
            spec, model = official_model(mapped, f"OBoW checkpoint '{path}'")
            out = {
                "format": PRETRAIN_FORMAT,
                "format_version": FORMAT_VERSION,
                "epoch": epoch or 0,
                "iteration_in_epoch": 0,
                "iteration": int(model._iteration.item()),
                "spec": spec.model_dump(mode="json"),
                "model": model.state_dict(),
                "optimizer": {},
                "rng": None,
                "imported_from": source,
            }
            result = {"kind": "training", "arch": spec.model.feature_extractor_arch, "levels": spec.model.bow_levels}
        else:
            fc = None
            if layout == "official-feature-extractor":
                backbone_state = map_official_backbone(state)
            else:
                backbone_state, fc = _split_fc(state)
            backbone = backbone_from_state(backbone_state, f"'{path}'")
            if fc is not None and fc["weight"].shape[1:] != (backbone.out_dim,):
                raise CheckpointError(
                    f"'{path}': fc.weight has shape {list(fc['weight'].shape)}, expected [K, {backbone.out_dim}]"
                )
            out = backbone_payload(backbone, source, fc)
            result = {"kind": "backbone", "arch": backbone.arch, "levels": []}
    save_atomic(out, dst)
    return {**result, "layout": layout, "path": str(dst), "sha256": sha256_of(dst), "size": dst.stat().st_size}
