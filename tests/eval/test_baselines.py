"""Baselines and evaluation defaults in the library: the baseline's key is the protocol (not where files
go), raw pixels of grey images keep one channel, the run reports its protocol's number as its headline,
and an evaluation inherits its parent's view only for the parent's own data."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from obow.config.eval import BaselineSpec, baseline_key
from obow.config.eval_defaults import evaluation_defaults, images_to_process, inherit_view
from obow.eval.baselines import RawPixels, run_baseline
from obow.io.export_formats import backbone_error
from obow.reporting import NullReporter

SMALL = {"subset": 6, "test_subset": 3, "k": [3], "workers": 0, "device": "cpu"}


def test_baseline_key_is_the_protocol():
    spec = BaselineSpec(features="raw_pixels", protocol="knn", dataset="Synthetic", evaluation=SMALL)
    same = BaselineSpec(features="raw_pixels", protocol="knn", dataset="Synthetic",
                        evaluation={**SMALL, "workers": 3, "device": "auto"}, arch="resnet50")
    assert baseline_key(spec) == baseline_key(same)  # loader processes, device, arch: not raw pixels' number
    for other in (
        BaselineSpec(features="raw_pixels", protocol="knn", dataset="Synthetic", evaluation={**SMALL, "subset": 7}),
        BaselineSpec(features="raw_pixels", protocol="knn", dataset="FashionMNIST", evaluation=SMALL),
        BaselineSpec(features="random_init", protocol="knn", dataset="Synthetic", evaluation=SMALL),
    ):
        assert baseline_key(other) != baseline_key(spec)
    narrow = BaselineSpec(features="random_init", protocol="knn", dataset="Synthetic", evaluation=SMALL, width=0.5)
    assert baseline_key(narrow) != baseline_key(BaselineSpec(**{**narrow.model_dump(), "width": 0.25}))
    for owned in ({"checkpoint": "/etc/passwd"}, {"data_dir": "/"}, {"cache_dir": "/tmp"}):
        with pytest.raises(ValidationError, match="must not set"):
            BaselineSpec(features="raw_pixels", protocol="linear", evaluation=owned)
    with pytest.raises(ValidationError, match="subset"):
        BaselineSpec(features="raw_pixels", protocol="knn", evaluation={"subset": -1})


def test_raw_pixels_of_grey_images_keep_one_channel():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    grey = RawPixels(4, 1)
    assert grey.out_dim == 16 and torch.equal(grey(x)["pooled"], x[:, 0].flatten(1))
    assert RawPixels(4, 3)(x)["pooled"].shape == (2, 48)


@pytest.mark.parametrize("features", ["raw_pixels", "random_init"])
def test_a_baseline_run_reports_its_protocols_number(tmp_path, features):
    spec = BaselineSpec(features=features, protocol="knn", dataset="Synthetic", evaluation=SMALL,
                        small_stem=True, width=0.125)
    result = run_baseline(spec, tmp_path, NullReporter())
    assert result["headline"] == result["top1"]["3"] and 0 <= result["headline"] <= 100
    assert (result["train_images"], result["test_images"], result["features"]) == (24, 12, features)


def test_defaults_follow_the_parent_and_count_their_images():
    parent = {"data": {"dataset_name": "MNIST", "data_dir": "/data/mnist", "teacher_resize": 36,
                       "teacher_size": 32, "mean": [0.1] * 3, "std": [0.3] * 3, "val_split": "val"}}
    values, notes = evaluation_defaults("knn", "pretrain", parent)
    assert (values["dataset"], values["data_dir"], values["resize"], values["size"]) == ("MNIST", "/data/mnist", 36, 32)
    assert values["subset"] == 1000 and "pretrain spec" in notes[0]
    assert images_to_process("knn", values).images == 12_000
    # the API's rule: unset fields follow the parent; other data keeps its own defaults
    assert inherit_view("knn", "pretrain", parent, {"k": [5]})["size"] == 32
    assert inherit_view("knn", "pretrain", parent, {"size": 28, "resize": 28})["size"] == 28
    assert "size" not in inherit_view("knn", "pretrain", parent, {"dataset": "FashionMNIST"})
    assert inherit_view("export", "pretrain", parent, {}) == {}
    assert images_to_process("linear", {"dataset": "ImageFolder"}).images is None


def test_stock_resnet_formats_refuse_small_or_narrow_backbones():
    assert backbone_error("torchvision", small_stem=False, width=1.0) is None
    assert backbone_error("safetensors", small_stem=True, width=0.125) is None
    for fmt in ("torchvision", "caffe2", "detectron2"):
        assert "small_stem=True" in backbone_error(fmt, small_stem=True, width=1.0)
        assert "width=0.5" in backbone_error(fmt, small_stem=False, width=0.5)
