"""Export formats. Every writer produces its file atomically (temp file, fsync, rename)."""

from __future__ import annotations

import os
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from obow.errors import ConfigError
from obow.export.names import caffe2_blob_name, detectron2_name
from obow.models.backbone import ResNetBackbone
from obow.train.checkpoint import fsync_dir, save_atomic

D2_PIXEL_MEAN = [123.675, 116.28, 103.53]  # RGB, 0-255 scale: torchvision's statistics
D2_PIXEL_STD = [58.395, 57.12, 57.375]


def write_atomic(path: Path, write: Callable[[object], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def require_torchvision_layout(backbone: ResNetBackbone, fmt: str) -> None:
    if backbone.small_stem or backbone.width != 1.0:
        raise ConfigError(
            f"{fmt} export needs a standard ResNet (7x7 stem, width 1.0); this backbone has "
            f"small_stem={backbone.small_stem}, width={backbone.width}: export it as safetensors instead"
        )


def torchvision_state(backbone: ResNetBackbone, fc_weight: torch.Tensor | None) -> OrderedDict:
    """The backbone as a torchvision ResNet state dict; with `fc_weight` [K, C] an fc with zero bias."""
    state = OrderedDict((k, v.detach().cpu().clone()) for k, v in backbone.state_dict().items())
    if fc_weight is not None:
        state["fc.weight"] = fc_weight.detach().cpu().clone()
        state["fc.bias"] = torch.zeros(fc_weight.shape[0])
    import torchvision

    check = getattr(torchvision.models, backbone.arch)(num_classes=fc_weight.shape[0] if fc_weight is not None else 1)
    if fc_weight is None:
        check.fc = torch.nn.Identity()
    check.load_state_dict(state, strict=True)  # the promise of this format: loads with strict=True
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
    write_atomic(path, lambda handle: pickle.dump({"blobs": blobs}, handle, protocol=2))


def detectron2_model(backbone: ResNetBackbone) -> dict[str, np.ndarray]:
    """Detectron2 ResNet names; BN step counters are dropped (Detectron2's norms have none)."""
    return {
        detectron2_name(k): v.detach().cpu().numpy()
        for k, v in backbone.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def detectron2_settings(backbone: ResNetBackbone) -> dict[str, object]:
    depth = {"resnet18": 18, "resnet50": 50}[backbone.arch]
    settings: dict[str, object] = {
        "MODEL.PIXEL_MEAN": D2_PIXEL_MEAN,
        "MODEL.PIXEL_STD": D2_PIXEL_STD,
        "INPUT.FORMAT": "RGB",
        "MODEL.RESNETS.DEPTH": depth,
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
    }
    if depth == 18:
        settings["MODEL.RESNETS.RES2_OUT_CHANNELS"] = 64
    return settings


def write_detectron2(path: Path, model: dict[str, np.ndarray]) -> None:
    payload = {"model": model, "__author__": "OBoW Lab", "matching_heuristics": True}
    write_atomic(path, lambda handle: pickle.dump(payload, handle, protocol=2))


def write_safetensors(path: Path, backbone: ResNetBackbone, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    blob = save(tensors, metadata=metadata)
    write_atomic(path, lambda handle: handle.write(blob))
