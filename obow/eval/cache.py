"""Precomputed features of fixed views, in a memory-mapped numpy file that later runs reuse.

A frozen probe sees the same backbone output for the same view every epoch, so computing it once
turns each later epoch into a pass over a [N, V, C] float32 array. Layout of one cache folder:
`memmap.npy` (np.lib.format, [N, V, C]), `labels.npy` [N], `metadata.json` (everything the features
depend on) and a `done` marker written last: a folder without the marker, or whose metadata differs
from the wanted one, is rebuilt.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from obow.data.sources import ImageSource
from obow.data.views import ViewDataset
from obow.models.backbone import ResNetBackbone
from obow.models.loaders import in_order_loader
from obow.progress import Upcoming
from obow.reporting import Reporter, check_stop, start_phase

VIEW_COUNTS = {"center": 1, "center_flip": 2, "ten_crop": 10}
DONE_MARKER = "done"


def view_transform(
    views: str, resize: int, size: int, mean: list[float], std: list[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """Image -> [V, 3, size, size]: `center` (1), `center_flip` (center, flipped center) or `ten_crop`
    (Resize then torchvision TenCrop: the five crops, then the five crops of the flipped image)."""
    if views not in VIEW_COUNTS:
        raise ValueError(f"unknown cache views '{views}'; use one of {sorted(VIEW_COUNTS)}")
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    resize_t = T.Resize(resize)
    if views == "ten_crop":
        ten = T.TenCrop(size)
        return lambda image: torch.stack([to_tensor(crop) for crop in ten(resize_t(image))])
    center = T.CenterCrop(size)

    def center_views(image: Image.Image) -> torch.Tensor:
        view = to_tensor(center(resize_t(image)))
        return torch.stack([view, view.flip(-1)]) if views == "center_flip" else view.unsqueeze(0)

    return center_views


@torch.no_grad()
def _fill(
    array: np.ndarray, labels: np.ndarray, backbone: ResNetBackbone, dataset: ViewDataset,
    device: torch.device, batch_size: int, workers: int, reporter: Reporter, label: str, upcoming: Upcoming,
) -> None:
    views = array.shape[1]
    # counted in views (images x views per image): a view costs the same forward pass in the train cache
    # (2 or 10 views) and the test cache (1), so the rate measured on one predicts the other
    start_phase(reporter, label, len(dataset) * views, "views", upcoming=upcoming)
    images_per_batch = max(1, batch_size // views)
    data = in_order_loader(dataset, images_per_batch, workers)
    done = 0
    for images, targets in data:
        check_stop(reporter)
        flat = images.flatten(0, 1).to(device, non_blocking=True)
        feats = backbone(flat, taps=("pooled",))["pooled"].float().cpu()
        array[done : done + len(images)] = feats.view(len(images), views, -1).numpy()
        labels[done : done + len(images)] = np.asarray(targets)
        done += len(images)
        reporter.progress(done * views, len(dataset) * views)


def cached_features(
    folder: Path, meta: Mapping[str, Any], backbone: ResNetBackbone, source: ImageSource,
    transform: Callable, views: int, device: torch.device, batch_size: int, workers: int,
    reporter: Reporter, label: str = "caching features", upcoming: Upcoming = (),
) -> tuple[np.ndarray, np.ndarray]:
    """(read-only memmap [N, V, C], labels [N]); built under `folder` unless a valid cache is there.
    Building it is a phase called `label` (in views), `upcoming` the phases after it."""
    meta = {**meta, "num_images": len(source), "views": views, "dim": backbone.out_dim}
    data_file, labels_file, meta_file = folder / "memmap.npy", folder / "labels.npy", folder / "metadata.json"
    if (folder / DONE_MARKER).is_file() and meta_file.is_file():
        try:
            if json.loads(meta_file.read_text()) == json.loads(json.dumps(meta)):
                reporter.log(f"reusing the feature cache {folder}")
                return np.load(data_file, mmap_mode="r"), np.load(labels_file)
        except (ValueError, OSError):
            pass
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    reporter.log(f"caching features of {len(source)} images x {views} views into {folder}")
    array = np.lib.format.open_memmap(data_file, mode="w+", dtype=np.float32,
                                      shape=(len(source), views, backbone.out_dim))
    labels = np.zeros(len(source), dtype=np.int64)
    was_training = backbone.training
    backbone.eval()
    try:
        _fill(array, labels, backbone, ViewDataset(source, transform), device, batch_size, workers, reporter,
              label, upcoming)
    finally:
        backbone.train(was_training)
    array.flush()
    del array
    np.save(labels_file, labels)
    meta_file.write_text(json.dumps(meta, indent=2))
    (folder / DONE_MARKER).write_text("ok\n")
    return np.load(data_file, mmap_mode="r"), labels
