"""Entry points `run_export` and `run_import` (CLI and lab worker)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from obow.config.export import ExportSpec, ImportSpec
from obow.errors import ConfigError
from obow.export import writers
from obow.models.loading import LoadedBackbone, load_backbone
from obow.models.obow import OBoW
from obow.reporting import Reporter
from obow.train.checkpoint import PRETRAIN_FORMAT, load_file, sha256_of


def full_model(path: Path, loaded: LoadedBackbone) -> OBoW | None:
    """The whole OBoW module (vocabularies, generators) when the file has it; None for backbone-only files."""
    from obow.config.pretrain import PretrainSpec
    from obow.models.obow import build_obow

    if loaded.source_format == PRETRAIN_FORMAT and loaded.spec is not None:
        model = build_obow(PretrainSpec.model_validate(loaded.spec))
        model.load_state_dict(load_file(path)["model"])
        return model.eval()
    if loaded.source_format == "official-model":
        from obow.export.official import _drop_module_prefix, _unwrap, map_official_model, spec_for_official_model

        state, _ = _unwrap(load_file(path))
        mapped = map_official_model(_drop_module_prefix(state))
        model = build_obow(spec_for_official_model(mapped))
        model.load_state_dict(mapped)
        return model.eval()
    return None


def default_name(spec: ExportSpec, loaded: LoadedBackbone, num_words: int | None) -> str:
    arch = loaded.backbone.arch
    epoch = loaded.epoch if loaded.epoch is not None else 0
    if spec.format == "torchvision":
        if spec.plain:
            return f"torchvision_{arch}_student_epoch{epoch}{'_nofc' if spec.no_fc else ''}.pth"
        if spec.no_fc:
            return f"tochvision_{arch}_student_epoch{epoch}_nofc.pth.tar"
        return f"tochvision_{arch}_student_K{num_words}_epoch{epoch}.pth.tar"  # the original's (misspelt) name
    if spec.format == "caffe2":
        return f"{arch}_student_epoch{epoch}_caffe2{'_bgr' if spec.rgb2bgr else ''}.pkl"
    if spec.format == "detectron2":
        return f"{arch}_student_epoch{epoch}_detectron2.pkl"
    return f"{arch}_student_epoch{epoch}.safetensors"


def run_export(spec: ExportSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    source = Path(spec.checkpoint)
    loaded = load_backbone(source)
    backbone = loaded.backbone
    reporter.progress(0, 1)
    fc_weight = None
    if spec.format in ("torchvision", "caffe2", "detectron2"):
        writers.require_torchvision_layout(backbone, spec.format)
    if spec.format == "torchvision" and not spec.no_fc:
        model = full_model(source, loaded)
        if model is None:
            raise ConfigError(
                f"'{source.name}' holds only a backbone (no vocabulary for the BoW classifier fc); export with --no-fc"
            )
        fc_weight = model.bow_classifier_weights(-1)
    name = spec.output_name or default_name(spec, loaded, None if fc_weight is None else fc_weight.shape[0])
    out_dir = Path(out_dir)
    path = out_dir / name
    source_sha = sha256_of(source)
    extra_files: list[Path] = []
    if spec.format == "torchvision":
        writers.write_torchvision(path, writers.torchvision_state(backbone, fc_weight), spec.plain)
    elif spec.format == "caffe2":
        writers.write_caffe2(path, writers.caffe2_blobs(backbone, spec.rgb2bgr))
    elif spec.format == "detectron2":
        writers.write_detectron2(path, writers.detectron2_model(backbone))
        settings = writers.detectron2_settings(backbone)
        settings_path = path.with_suffix(".yaml")
        settings_path.write_text(yaml.safe_dump(settings, sort_keys=False))
        extra_files.append(settings_path)
        reporter.log("Detectron2 settings for these weights: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    else:
        meta = {"arch": backbone.arch, "small_stem": str(backbone.small_stem), "width": str(backbone.width),
                "source_sha256": source_sha}
        writers.write_safetensors(path, backbone, meta)
    record = {
        "format": spec.format,
        "file": path.name,
        "sha256": sha256_of(path),
        "size": path.stat().st_size,
        "source": str(source),
        "source_sha256": source_sha,
        "source_format": loaded.source_format,
        "source_epoch": loaded.epoch,
        "arch": backbone.arch,
        "options": {"no_fc": spec.no_fc, "plain": spec.plain, "rgb2bgr": spec.rgb2bgr},
        "extra_files": [p.name for p in extra_files],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / f"{path.name}.json").write_text(json.dumps(record, indent=2))
    reporter.artifact(path, "export", record)
    reporter.progress(1, 1)
    reporter.log(f"exported {spec.format} weights to {path} ({record['size']} bytes, sha256 {record['sha256'][:12]})")
    return record


def run_import(spec: ImportSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    from obow.export.official import import_checkpoint

    source = Path(spec.path)
    stem = source.name.split(".")[0] or "imported"
    name = spec.name or f"imported_{stem}.pt"
    result = import_checkpoint(source, Path(out_dir) / name)
    kind = "checkpoint" if result["kind"] == "training" else "backbone"
    reporter.artifact(Path(result["path"]), kind, {**result, "format": PRETRAIN_FORMAT if kind == "checkpoint"
                                                    else "obow-lab/backbone"})
    reporter.log(f"imported {result['layout']} file '{source.name}' as {result['kind']} checkpoint {name}")
    return result
