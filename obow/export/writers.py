"""The export formats' writers. Every file is written atomically (`obow.io.atomic`).

The low-level functions (`torchvision_state`, `caffe2_blobs`, `write_caffe2`, ...) each build or write
one file; the `export_<format>` functions, all with the `Exporter` signature, are what
`obow.export.registry` binds to the format names of `obow.io.export_formats`.
"""

from __future__ import annotations

import pickle
import pickletools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from obow.config.export import ExportSpec
from obow.errors import ConfigError
from obow.export.names import caffe2_blob_name, detectron2_name
from obow.io.atomic import save_atomic, write_atomic, write_text_atomic
from obow.io.export_formats import backbone_error
from obow.models.backbone import ResNetBackbone
from obow.models.loading import LoadedBackbone
from obow.reporting import Reporter

D2_PIXEL_MEAN = [123.675, 116.28, 103.53]  # RGB, 0-255 scale: torchvision's statistics
D2_PIXEL_STD = [58.395, 57.12, 57.375]


def legacy_numpy_pickle(obj: object) -> bytes:
    """Pickle protocol 2 whose numpy references read `numpy.core.*`, as numpy < 2 writes them.

    numpy 2 pickles arrays through `numpy._core.multiarray._reconstruct`, a module that numpy 1 (and
    the Python 2 Caffe2 / Detectron readers these files are for) cannot import; numpy 2 still
    resolves `numpy.core.*`, so the rewritten file loads everywhere. Only GLOBAL opcodes are
    rewritten, found by parsing the pickle, so array bytes that happen to spell the name are untouched.
    """
    raw = pickle.dumps(obj, protocol=2)
    chunks: list[bytes] = []
    start = 0
    for opcode, arg, pos in pickletools.genops(raw):
        if opcode.name != "GLOBAL" or pos is None:
            continue
        module, name = str(arg).split(" ", 1)
        if module.startswith("numpy._core"):
            old = f"c{module}\n{name}\n".encode()
            assert raw[pos : pos + len(old)] == old, "GLOBAL opcode not where pickletools put it"
            legacy = module.replace("numpy._core", "numpy.core", 1)
            chunks += [raw[start:pos], f"c{legacy}\n{name}\n".encode()]
            start = pos + len(old)
    chunks.append(raw[start:])
    return b"".join(chunks)


def require_stock_resnet(backbone: ResNetBackbone, fmt: str) -> None:
    """torchvision, Caffe2 and Detectron2 readers build a standard ResNet and load into it by name."""
    problem = backbone_error(fmt, backbone.small_stem, backbone.width, backbone.block4_width)
    if problem:
        raise ConfigError(problem)


def torchvision_state(
    backbone: ResNetBackbone, fc_weight: torch.Tensor | None, fc_bias: torch.Tensor | None = None
) -> OrderedDict:
    """The backbone as a torchvision ResNet state dict; with `fc_weight` [K, C] an fc (bias 0 by default)."""
    state = OrderedDict((k, v.detach().cpu().clone()) for k, v in backbone.state_dict().items())
    if fc_weight is not None:
        state["fc.weight"] = fc_weight.detach().cpu().clone()
        state["fc.bias"] = (
            torch.zeros(fc_weight.shape[0]) if fc_bias is None else fc_bias.detach().cpu().clone().reshape(-1)
        )
    import torchvision

    # The promise of this format: it loads into torchvision's own model with strict=True. Checked on a
    # meta-device model (names and shapes only, no weight initialisation, no memory).
    with torch.device("meta"):
        check = getattr(torchvision.models, backbone.arch)(num_classes=1 if fc_weight is None else fc_weight.shape[0])
    if fc_weight is None:
        check.fc = torch.nn.Identity()
    check.load_state_dict(state, strict=True, assign=True)
    return state


def write_torchvision(path: Path, state: OrderedDict, plain: bool) -> None:
    save_atomic(state if plain else {"network": state}, path)


def caffe2_blobs(backbone: ResNetBackbone, rgb2bgr: bool) -> OrderedDict:
    """Sorted torchvision keys renamed to Caffe2 blobs, as numpy arrays; fc never included."""
    state = backbone.state_dict()
    blobs: OrderedDict = OrderedDict()
    for key in sorted(state):
        if "fc" in key:
            continue
        value = state[key].detach().cpu()
        if key == "conv1.weight" and rgb2bgr:
            value = value.flip(1)  # reverse the input-channel axis: the reader feeds BGR
        blobs[caffe2_blob_name(key)] = value.numpy()
    return blobs


def write_caffe2(path: Path, blobs: OrderedDict) -> None:
    """`{'blobs': OrderedDict}` and nothing else: the fair SSL benchmark and Detectron read exactly this."""
    blob = legacy_numpy_pickle({"blobs": blobs})
    write_atomic(path, lambda handle: handle.write(blob))


def detectron2_model(backbone: ResNetBackbone) -> dict[str, np.ndarray]:
    """Detectron2 ResNet names; BN step counters are dropped (Detectron2's norms have none)."""
    return {
        detectron2_name(k): v.detach().cpu().numpy()
        for k, v in backbone.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def detectron2_settings(backbone: ResNetBackbone) -> dict[str, object]:
    """The config values these weights need, flat (`MODEL.RESNETS.DEPTH`), for printing.

    The weights expect RGB input normalised with torchvision's statistics on the 0-255 scale, and a
    stride-2 3x3 conv in each bottleneck (torchvision's layout), unlike Detectron2's Caffe2 defaults.
    """
    depth = {"resnet18": 18, "resnet50": 50}[backbone.arch]
    settings: dict[str, object] = {
        "MODEL.PIXEL_MEAN": D2_PIXEL_MEAN,
        "MODEL.PIXEL_STD": D2_PIXEL_STD,
        "INPUT.FORMAT": "RGB",
        "MODEL.RESNETS.DEPTH": depth,
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
    }
    if depth == 18:
        settings["MODEL.RESNETS.RES2_OUT_CHANNELS"] = 64  # Detectron2 requires it for basic blocks
    return settings


def detectron2_config(settings: dict[str, object], weights_name: str) -> dict[str, object]:
    """The flat settings as a nested Detectron2 config fragment, mergeable with `cfg.merge_from_file`."""
    config: dict[str, object] = {}
    for dotted, value in {"MODEL.WEIGHTS": weights_name, **settings}.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[leaf] = value  # type: ignore[index]
    return config


def write_detectron2(path: Path, model: dict[str, np.ndarray]) -> None:
    blob = legacy_numpy_pickle({"model": model, "__author__": "OBoW Lab", "matching_heuristics": True})
    write_atomic(path, lambda handle: handle.write(blob))


def write_safetensors(path: Path, backbone: ResNetBackbone, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    blob = save(tensors, metadata=metadata)
    write_atomic(path, lambda handle: handle.write(blob))


@dataclass
class ExportJob:
    """One export in progress: what to write where, and the files finished so far (`written`), which
    `run_export` removes again if a later file of the same export fails."""

    spec: ExportSpec
    path: Path
    loaded: LoadedBackbone
    fc: tuple[torch.Tensor, torch.Tensor] | None  # (weight [K, C], bias [K]) of a torchvision fc
    source_sha: str
    reporter: Reporter
    written: list[Path] = field(default_factory=list)

    @property
    def backbone(self) -> ResNetBackbone:
        return self.loaded.backbone


# Writes the export's file(s); returns what the export's record should add (e.g. a blob count).
Exporter = Callable[[ExportJob], dict[str, Any]]


def export_torchvision(job: ExportJob) -> dict[str, Any]:
    weight, bias = job.fc if job.fc is not None else (None, None)
    write_torchvision(job.path, torchvision_state(job.backbone, weight, bias), job.spec.plain)
    job.written.append(job.path)
    return {}


def export_caffe2(job: ExportJob) -> dict[str, Any]:
    blobs = caffe2_blobs(job.backbone, job.spec.rgb2bgr)
    write_caffe2(job.path, blobs)
    job.written.append(job.path)
    return {"blobs": len(blobs)}


def export_detectron2(job: ExportJob) -> dict[str, Any]:
    """The weights, and beside them a YAML fragment with the config values they need."""
    write_detectron2(job.path, detectron2_model(job.backbone))
    job.written.append(job.path)
    settings = detectron2_settings(job.backbone)
    settings_path = job.path.parent / f"{job.path.stem}.yaml"
    write_text_atomic(
        settings_path,
        "# Detectron2 settings these weights need (merge with cfg.merge_from_file or copy into your config)\n"
        + yaml.safe_dump(detectron2_config(settings, job.path.name), sort_keys=False),
    )
    job.written.append(settings_path)
    job.reporter.log("Detectron2 settings for these weights: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    return {"settings_file": settings_path.name, "settings": settings}


def export_safetensors(job: ExportJob) -> dict[str, Any]:
    backbone, loaded = job.backbone, job.loaded
    meta = {**{key: str(value) for key, value in backbone.facts().items()},
            "source_sha256": job.source_sha, "source_format": loaded.source_format,
            "source_epoch": str(loaded.epoch)}
    write_safetensors(job.path, backbone, meta)
    job.written.append(job.path)
    return {}
