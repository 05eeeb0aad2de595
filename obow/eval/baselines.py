"""Baselines: an evaluation protocol run on features that need no training, so a result can be read
against them. `raw_pixels` is the normalised evaluation view itself, flattened (one channel of the grey
datasets, whose three channels are copies: the same classifier and the same neighbours, a third of the
memory); `random_init` is a freshly initialised backbone of the evaluated architecture (seeded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from obow.config.eval import GREY_DATASETS, BaselineSpec, KnnSpec, LinearSpec
from obow.eval.knn import run_knn
from obow.eval.linear import run_linear
from obow.models.backbone import build_backbone
from obow.reporting import Reporter


class RawPixels(nn.Module):
    """The backbone interface (`forward(x, taps) -> {"pooled": ...}`, `out_dim`) over raw pixels."""

    def __init__(self, size: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.out_dim = channels * size * size

    def forward(self, x: torch.Tensor, taps: tuple[str, ...] = ("pooled",)) -> dict[str, torch.Tensor]:
        return {"pooled": x[:, : self.channels].flatten(1)}


def baseline_features(spec: BaselineSpec, size: int) -> nn.Module:
    if spec.features == "raw_pixels":
        return RawPixels(size, 1 if spec.dataset in GREY_DATASETS else 3)
    torch.manual_seed(spec.evaluation_spec().seed)
    return build_backbone(
        spec.arch, small_stem=spec.small_stem, width=spec.width, block4_width=spec.block4_width
    ).eval()


def run_baseline(spec: BaselineSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    evaluation = spec.evaluation_spec(checkpoint=f"baseline:{spec.features}")
    features = baseline_features(spec, evaluation.size)
    what = "raw pixels" if spec.features == "raw_pixels" else f"random-init {spec.arch} (width {spec.width})"
    reporter.log(f"baseline: {spec.protocol} on {what}, {spec.dataset}")
    if isinstance(evaluation, LinearSpec):
        result = run_linear(evaluation, out_dir, reporter, backbone=features, features_id=f"baseline-{spec.features}")
        headline = result["top1"]
    else:
        assert isinstance(evaluation, KnnSpec)
        result = run_knn(evaluation, out_dir, reporter, backbone=features)
        headline = next(iter(result["top1"].values()))
    return {**result, "headline": headline, "features": spec.features, "protocol": spec.protocol,
            "dataset": spec.dataset}
