"""`obow import`: turn an official OBoW, torchvision or OBoW Lab file into an OBoW Lab checkpoint.

A full official training checkpoint becomes a training checkpoint (student, teacher, vocabularies,
heads), anything else a backbone-only file. Nothing is written until the whole file has been mapped and
loaded strictly into the rebuilt model. Which layout a file has is decided by `obow.io.layouts`; reading
a backbone out of any of them for an evaluation or export is `obow.models.loading.load_backbone`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from obow.config.presets import load_pretrain_config
from obow.config.pretrain import PretrainSpec
from obow.errors import CheckpointError
from obow.hashing import sha256_of
from obow.io.atomic import save_atomic
from obow.io.checkpoint import BACKBONE_FORMAT, FORMAT_VERSION, PRETRAIN_FORMAT, load_file
from obow.io.layouts import (
    OFFICIAL_FEATURE_EXTRACTOR,
    OFFICIAL_MODEL,
    Identified,
    epoch_of,
    foreign_state,
    map_official_backbone,
    map_official_model,
    strip_prefix,
)
from obow.models.loading import read_backbone_file
from obow.models.obow import OBoW, build_obow
from obow.models.state import backbone_from_state, backbone_payload, infer_backbone, load_state_strict, split_fc


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


def official_model(mapped: dict[str, torch.Tensor], what: str) -> tuple[PretrainSpec, OBoW]:
    """The OBoW module rebuilt from a mapped official training checkpoint, loaded strictly."""
    spec = spec_for_official_model(mapped)
    model = build_obow(spec)
    defaults = model.state_dict()
    filled = {**{k: defaults[k] for k in ("_alpha", "_iteration") if k not in mapped}, **mapped}
    load_state_strict(model, filled, what)
    return spec, model


def _validated_lab_file(payload: dict[str, Any], path: Path) -> tuple[dict[str, Any], str]:
    """An OBoW Lab file (from another lab, say) is checked like a foreign one and kept as it is."""
    if payload.get("format") == BACKBONE_FORMAT:
        read_backbone_file(Identified(BACKBONE_FORMAT, payload), path)
        return payload, "backbone"
    try:
        spec = PretrainSpec.model_validate(payload["spec"])
    except Exception as err:
        raise CheckpointError(f"'{path}' has an invalid spec: {str(err).splitlines()[0]}") from None
    load_state_strict(build_obow(spec), payload.get("model", {}), f"OBoW Lab checkpoint '{path}'")
    return payload, "training"


def import_checkpoint(path: Path, dst: Path) -> dict[str, Any]:
    """Validate a foreign file completely, then write its OBoW Lab version atomically to `dst`.

    Returns what was made: `kind` ("training" or "backbone"), `layout` (what the file was), `arch`,
    `small_stem`, `width` (what the lab checks export formats against), `levels`, `path`, `sha256`, `size`.
    """
    path, dst = Path(path), Path(dst)
    payload = load_file(path)
    source = {"path": path.name, "sha256": sha256_of(path), "size": path.stat().st_size}
    if isinstance(payload, dict) and payload.get("format") in (PRETRAIN_FORMAT, BACKBONE_FORMAT):
        out, kind = _validated_lab_file(payload, path)
        layout = str(payload["format"])
        arch = out["arch"] if kind == "backbone" else out["spec"]["model"]["feature_extractor_arch"]
        levels = [] if kind == "backbone" else list(out["spec"]["model"]["bow_levels"])
        opts = {} if kind == "backbone" else out["spec"]["model"].get("feature_extractor_opts", {})
        stem = out.get("small_stem", False) if kind == "backbone" else opts.get("small_stem", False)
        width = out.get("width", 1.0) if kind == "backbone" else opts.get("width", 1.0)
        block4 = out.get("block4_width") if kind == "backbone" else opts.get("block4_width")
        result = {"kind": kind, "arch": arch, "levels": levels, "small_stem": bool(stem), "width": float(width),
                  **({"block4_width": float(block4)} if block4 is not None else {})}
    else:
        found = foreign_state(payload, path)
        state, layout, epoch = found.state, found.layout, epoch_of(found.envelope, path)
        source |= {"layout": layout, "epoch": epoch}
        if layout == OFFICIAL_MODEL:
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
            opts = spec.model.feature_extractor_opts
            result = {"kind": "training", "arch": spec.model.feature_extractor_arch, "levels": spec.model.bow_levels,
                      "small_stem": opts.small_stem, "width": opts.width}
        else:
            fc = None
            if layout == OFFICIAL_FEATURE_EXTRACTOR:
                backbone_state = map_official_backbone(state)
            else:
                backbone_state, fc = split_fc(state)
            backbone = backbone_from_state(backbone_state, f"'{path}'")
            if fc is not None and fc["weight"].shape[1:] != (backbone.out_dim,):
                raise CheckpointError(
                    f"'{path}': fc.weight has shape {list(fc['weight'].shape)}, expected [K, {backbone.out_dim}]"
                )
            out = backbone_payload(backbone, source, fc)
            result = {"kind": "backbone", "levels": [], **backbone.facts()}
    save_atomic(out, dst)
    return {**result, "layout": layout, "path": str(dst), "sha256": sha256_of(dst), "size": dst.stat().st_size}
