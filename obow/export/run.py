"""Entry points `run_export` and `run_import` (CLI and lab worker)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from obow.config.export import ExportSpec, ImportSpec
from obow.config.pretrain import PretrainSpec
from obow.errors import ConfigError
from obow.export import writers
from obow.export.official import import_checkpoint, official_model
from obow.export.registry import EXPORTERS
from obow.hashing import sha256_of
from obow.io.checkpoint import BACKBONE_FORMAT, PRETRAIN_FORMAT, load_file
from obow.io.layouts import OFFICIAL_MODEL, drop_module_prefix, map_official_model, unwrap
from obow.models.loading import LoadedBackbone, load_backbone
from obow.models.obow import OBoW, build_obow
from obow.reporting import Reporter, start_phase


def full_model(path: Path, loaded: LoadedBackbone) -> OBoW | None:
    """The whole OBoW module (vocabularies, generators) when the file has it; None for backbone-only files."""
    if loaded.source_format == PRETRAIN_FORMAT and loaded.spec is not None:
        model = build_obow(PretrainSpec.model_validate(loaded.spec))
        model.load_state_dict(load_file(path)["model"])
        return model.eval()
    if loaded.source_format == OFFICIAL_MODEL:
        state, _ = unwrap(load_file(path))
        _, model = official_model(map_official_model(drop_module_prefix(state or {})), f"'{path}'")
        return model.eval()
    return None


def bow_classifier(path: Path, loaded: LoadedBackbone) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [K, C], bias [K]) of the torchvision fc: κ·G(V) of the last level with bias 0, as the
    original export; or the fc a torchvision release file already carried."""
    model = full_model(path, loaded)
    if model is not None:
        weight = model.bow_classifier_weights(-1)
        return weight, torch.zeros(weight.shape[0])
    fc = loaded.extra.get("fc")
    if fc is not None:
        return fc["weight"], fc["bias"]
    raise ConfigError(
        f"'{path.name}' holds only a backbone (no vocabulary for the BoW classifier fc); export with --no-fc"
    )


def run_export(spec: ExportSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    """Export the student of `spec.checkpoint` into `out_dir`; returns the record also written as `<file>.json`.

    Either every file of the export (weights, Detectron2 settings, JSON sidecar) is written, or none.
    """
    source = Path(spec.checkpoint)
    start_phase(reporter, "exporting", 3, "steps")
    exporter = EXPORTERS[spec.format]
    loaded = load_backbone(source)
    backbone = loaded.backbone
    if exporter.facts.needs_stock_resnet:
        writers.require_stock_resnet(backbone, spec.format)
    fc = None
    if "no_fc" in exporter.facts.options and not spec.no_fc:  # a format that can leave the fc out carries one
        fc = bow_classifier(source, loaded)
    reporter.progress(1, 3)  # loaded
    epoch = loaded.epoch if loaded.epoch is not None else 0
    num_words = None if fc is None else int(fc[0].shape[0])
    name = spec.output_name or exporter.default_name(spec, backbone.arch, epoch, num_words)
    out_dir = Path(out_dir)
    path = out_dir / name
    sidecar = out_dir / f"{name}.json"
    if source.resolve() in (path.resolve(), sidecar.resolve()):
        raise ConfigError(f"the export would overwrite its source '{source}'; choose another output name")
    source_sha = sha256_of(source)
    reporter.progress(2, 3)  # hashed
    job = writers.ExportJob(spec, path, loaded, fc, source_sha, reporter)
    try:
        info = exporter.write(job)
        record = {
            "format": spec.format,
            "file": path.name,
            "sha256": sha256_of(path),
            "size": path.stat().st_size,
            "source": str(source),
            "source_sha256": source_sha,
            "source_format": loaded.source_format,
            "source_epoch": loaded.epoch,
            **backbone.facts(),
            "num_classes": num_words,
            "options": {"no_fc": spec.no_fc, "plain": spec.plain, "rgb2bgr": spec.rgb2bgr},
            "extra_files": [info["settings_file"]] if "settings_file" in info else [],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{k: v for k, v in info.items() if k != "settings_file"},
        }
        writers.write_text_atomic(sidecar, json.dumps(record, indent=2) + "\n")
    except BaseException:
        for done in job.written:  # no half export: weights without their settings or record go too
            done.unlink(missing_ok=True)
        raise
    reporter.progress(3, 3)
    reporter.artifact(path, "export", record)
    reporter.log(f"exported {spec.format} weights to {path} ({record['size']} bytes, sha256 {record['sha256'][:12]})")
    return record


def imported_name(source: Path) -> str:
    return f"imported_{source.name.split('.')[0] or 'file'}.pt"


def run_import(spec: ImportSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    """Convert an uploaded official OBoW / torchvision file into an OBoW Lab checkpoint in `out_dir`."""
    source = Path(spec.path)
    name = spec.name or imported_name(source)
    start_phase(reporter, "importing", 1, "files")
    result = import_checkpoint(source, Path(out_dir) / name)
    reporter.progress(1, 1)
    kind = "checkpoint" if result["kind"] == "training" else "backbone"
    reporter.artifact(Path(result["path"]), kind, {**result, "format": PRETRAIN_FORMAT if kind == "checkpoint"
                                                    else BACKBONE_FORMAT})
    reporter.log(f"imported {result['layout']} file '{source.name}' as {result['kind']} checkpoint {name}")
    return result
