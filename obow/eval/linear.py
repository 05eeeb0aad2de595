"""Linear probe on the frozen student (ImageNet and Places205 protocols, optional feature cache).

The student runs in eval mode (BN running statistics) with gradients off; only the head learns. A
state hash of the backbone taken before and after training proves it stayed frozen. Test features are
computed once (the backbone never changes), so evaluating every epoch costs only the head.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision import transforms as T

from obow.config.eval import LinearSpec
from obow.data.multicrop import eval_transform, train_linear_transform
from obow.data.sources import ImageSource
from obow.data.views import ViewDataset
from obow.devices import resolve_device
from obow.errors import DataError
from obow.eval.cache import VIEW_COUNTS, cached_features, view_transform
from obow.eval.common import (
    check_unchanged,
    epoch_lr,
    freeze,
    load_eval_backbone,
    loader,
    open_split,
    state_hash,
    topk_correct,
    write_results,
)
from obow.eval.loop import train_classifier
from obow.hashing import sha256_of
from obow.io.atomic import save_atomic
from obow.models.backbone import ResNetBackbone
from obow.models.features import extract_features
from obow.progress import Upcoming
from obow.reporting import Reporter


class LinearHead(nn.Module):
    """Optional non-affine BN, then Linear initialised N(0, 0.01), bias 0 (the original's head)."""

    def __init__(self, dim: int, num_classes: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.batch_norm = nn.BatchNorm1d(dim, affine=False) if batch_norm else None
        self.prediction_layer = nn.Linear(dim, num_classes)
        nn.init.normal_(self.prediction_layer.weight, 0.0, 0.01)
        nn.init.zeros_(self.prediction_layer.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if self.batch_norm is not None:
            feats = self.batch_norm(feats)
        return self.prediction_layer(feats)


def train_transform(spec: LinearSpec) -> T.Compose:
    if spec.train_aug == "resize_random_crop":
        return T.Compose([T.Resize(spec.resize), T.RandomCrop(spec.size), T.RandomHorizontalFlip(),
                          T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    return train_linear_transform(spec.size, spec.mean, spec.std)


@torch.no_grad()
def evaluate_head(head: LinearHead, feats: torch.Tensor, labels: torch.Tensor, batch: int = 4096) -> dict[str, float]:
    head.eval()
    hits = {1: 0, 5: 0}
    for start in range(0, len(feats), batch):
        logits = head(feats[start : start + batch])
        for k, n in topk_correct(logits, labels[start : start + batch]).items():
            hits[k] += n
    head.train()
    return {"top1": 100.0 * hits[1] / len(feats), "top5": 100.0 * hits[5] / len(feats)}


class _FeatureBatches:
    """Training batches of features: from the cache (a random cached view per sample and epoch) or
    computed on the fly from augmented images."""

    def __init__(self, spec: LinearSpec, backbone: ResNetBackbone, source: ImageSource, device: torch.device,
                 cache: tuple[np.ndarray, np.ndarray] | None) -> None:
        self.spec, self.backbone, self.device, self.cache = spec, backbone, device, cache
        self.size = len(cache[1]) if cache is not None else len(source)
        self.drop_last = self.size > spec.batch_size
        if cache is None:
            self.images = ViewDataset(source, train_transform(spec))

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.spec.batch_size)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def epoch(self, epoch: int):
        g = torch.Generator().manual_seed(self.spec.seed * 1000 + epoch)
        if self.cache is None:
            data = loader(self.images, self.spec, shuffle=True, seed=self.spec.seed * 1000 + epoch,
                          drop_last=self.drop_last)
            for images, labels in data:
                with torch.no_grad():
                    feats = self.backbone(images.to(self.device, non_blocking=True), taps=("pooled",))["pooled"]
                yield feats.float(), labels.to(self.device)
            return
        array, labels = self.cache
        order = torch.randperm(self.size, generator=g).numpy()
        views = torch.randint(0, array.shape[1], (self.size,), generator=g).numpy()
        bs = self.spec.batch_size
        for start in range(0, self.size, bs):
            idx = order[start : start + bs]
            if len(idx) < bs and self.drop_last:
                break
            take = np.argsort(idx)  # sorted reads are much faster on a memory map
            feats = np.asarray(array[idx[take], views[idx[take]]])
            yield (torch.from_numpy(feats).to(self.device),
                   torch.from_numpy(labels[idx[take]]).to(self.device))


def _cache_folder(spec: LinearSpec, out_dir: Path, checkpoint_sha: str, split: str, per_class: int | None,
                  views: str) -> Path:
    """<cache root>/<checkpoint sha256[:12]>/<dataset>/<split>[_subsetN]/<views>: one shared root serves
    many checkpoints without them overwriting each other's features."""
    root = Path(spec.cache_dir) if spec.cache_dir else out_dir / "cache_features"
    subset = f"_subset{per_class}" if per_class else ""
    return root / checkpoint_sha[:12] / spec.dataset / f"{split}{subset}" / views


def _cache_meta(spec: LinearSpec, checkpoint_sha: str, split: str, per_class: int | None, views: str) -> dict:
    return {"checkpoint_sha256": checkpoint_sha, "dataset": spec.dataset, "data_dir": spec.data_dir,
            "split": split, "subset": per_class, "resize": spec.resize, "size": spec.size,
            "mean": spec.mean, "std": spec.std, "views": views, "tap": "pooled"}


def _test_features(spec: LinearSpec, out_dir: Path, backbone: ResNetBackbone, source: ImageSource,
                   device: torch.device, checkpoint_sha: str, reporter: Reporter,
                   upcoming: Upcoming) -> tuple[torch.Tensor, torch.Tensor]:
    if spec.precache:
        folder = _cache_folder(spec, out_dir, checkpoint_sha, spec.test_split, spec.test_subset, "center")
        meta = _cache_meta(spec, checkpoint_sha, spec.test_split, spec.test_subset, "center")
        array, labels = cached_features(folder, meta, backbone, source, view_transform("center", spec.resize,
                                        spec.size, spec.mean, spec.std), 1, device, spec.batch_size,
                                        spec.workers, reporter, "caching test features", upcoming)
        return torch.from_numpy(np.array(array[:, 0])), torch.from_numpy(labels)
    data = loader(ViewDataset(source, eval_transform(spec.resize, spec.size, spec.mean, spec.std)), spec, False)
    return extract_features(backbone, data, device, progress=False, reporter=reporter, label="test features",
                            upcoming=upcoming)


def run_linear(spec: LinearSpec, out_dir: Path, reporter: Reporter, backbone: ResNetBackbone | None = None,
               features_id: str | None = None) -> dict[str, Any]:
    """The probe of `spec.checkpoint`'s student, or of `backbone` (a baseline's features: raw pixels, a
    random network; `features_id` then names them in the feature cache instead of the file's sha256)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    device = resolve_device(spec.device)
    if backbone is None:
        backbone = load_eval_backbone(spec.checkpoint, device).backbone
    else:
        backbone = backbone.to(device).eval()
    freeze(backbone)
    frozen = state_hash(backbone)
    train_src = open_split(spec, spec.train_split, spec.subset)
    test_src = open_split(spec, spec.test_split, spec.test_subset)
    if test_src.num_classes != train_src.num_classes:
        raise DataError(f"train has {train_src.num_classes} classes but {spec.test_split} has "
                        f"{test_src.num_classes}; both splits need the same class folders")
    checkpoint_sha = (features_id or sha256_of(Path(spec.checkpoint))) if spec.precache else ""
    cache = None
    started = time.perf_counter()
    # the training phase's rate is unknown until it runs (it is not in images): it is left out of the ETA
    # of the feature phases before it, which say so by listing it as upcoming
    training = ("training", 0, "iterations")
    if spec.precache:
        views = spec.cache_views
        cache = cached_features(
            _cache_folder(spec, out_dir, checkpoint_sha, spec.train_split, spec.subset, views),
            _cache_meta(spec, checkpoint_sha, spec.train_split, spec.subset, views),
            backbone, train_src, view_transform(views, spec.resize, spec.size, spec.mean, spec.std),
            VIEW_COUNTS[views], device, spec.batch_size, spec.workers, reporter, "caching train features",
            [("caching test features", len(test_src), "views"), training])
    test_x, test_y = _test_features(spec, out_dir, backbone, test_src, device, checkpoint_sha, reporter,
                                    [training])
    test_x, test_y = test_x.to(device), test_y.to(device)
    feature_seconds = time.perf_counter() - started

    head = LinearHead(backbone.out_dim, train_src.num_classes, spec.batch_norm).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.wd,
                                nesterov=spec.nesterov and spec.momentum > 0)
    batches = _FeatureBatches(spec, backbone, train_src, device, cache)
    if len(batches) == 0:
        raise DataError("the training split is empty")
    reporter.log(f"linear probe: {len(train_src)} train / {len(test_src)} test images, {train_src.num_classes} "
                 f"classes, {backbone.out_dim}-d features, precache={spec.precache}")

    def set_lr(epoch: int) -> dict[str, float]:
        lr = epoch_lr(spec.lr, epoch, spec.epochs, spec.cos_schedule, spec.schedule, spec.lr_decay)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return {"lr": lr}

    history = train_classifier(head, optimizer, batches.epoch, len(batches), spec, set_lr,
                               lambda: evaluate_head(head, test_x, test_y), reporter)
    check_unchanged(frozen, backbone)
    if spec.precache and not spec.keep_cache:
        batches.cache = cache = None  # drop the memory maps before deleting their files
        for split, per_class, views in ((spec.train_split, spec.subset, spec.cache_views),
                                        (spec.test_split, spec.test_subset, "center")):
            shutil.rmtree(_cache_folder(spec, out_dir, checkpoint_sha, split, per_class, views), ignore_errors=True)
    head_file = out_dir / "linear_head.pt"
    save_atomic({"format": "obow-lab/linear-head", "state_dict": head.state_dict(),
                 "num_classes": train_src.num_classes, "batch_norm": spec.batch_norm}, head_file)
    reporter.artifact(head_file, "linear_head", {"num_classes": train_src.num_classes})
    final = history[-1]
    result = {"checkpoint": spec.checkpoint, "top1": final["top1"], "top5": final["top5"],
              "train_images": len(train_src), "test_images": len(test_src), "num_classes": train_src.num_classes,
              "feature_seconds": feature_seconds, "backbone_unchanged": True, "history": history,
              "spec": spec.model_dump(mode="json")}
    rows = [(p["epoch"], p["lr"], p["loss"], p["train_top1"], p.get("top1", "-"), p.get("top5", "-"))
            for p in history]
    write_results(out_dir, "linear", result, rows, ["epoch", "lr", "loss", "train@1", "top1", "top5"])
    reporter.artifact(out_dir / "results.json", "results", {"top1": final["top1"], "top5": final["top5"]})
    return result
