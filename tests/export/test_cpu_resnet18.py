"""The stock-ResNet18 CPU preset: a real (short) pretraining of `FashionMNIST/resnet18`, exported to the
torchvision, Caffe2 and Detectron2 layouts, each checked against the student it came from."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from obow.config import load_pretrain_config
from obow.models.loading import load_backbone
from obow.reporting import RecordingReporter
from obow.train.checkpoint import latest_checkpoint
from obow.train.engine import run_pretrain
from tests.export.test_formats import (
    check_caffe2_values,
    expected_caffe2_names,
    expected_detectron2_names,
    export,
    read_caffe2,
    torchvision_pooled,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """Two real steps of the preset as shipped (its views, levels, vocabulary, its closing BatchNorm
    recalibration on fewer images): enough for BN statistics and weights that differ from the initial ones.
    One epoch of two steps instead of its 16 epochs, and no kNN monitor: the exports are what is tested."""
    spec = load_pretrain_config(
        "FashionMNIST/resnet18",
        ["optim.num_epochs=1", "runtime.max_iters_per_epoch=2", "runtime.workers=0", "runtime.knn_monitor_every=null",
         "runtime.bn_recalibration_images=128"],
    )
    out = tmp_path_factory.mktemp("r18cpu")
    run_pretrain(spec, out, RecordingReporter())
    ckpt = latest_checkpoint(out)
    return ckpt, load_backbone(ckpt).backbone.eval()


def test_the_preset_is_a_stock_resnet18():
    spec = load_pretrain_config("FashionMNIST/resnet18")
    fe = spec.model.feature_extractor_opts
    assert spec.model.feature_extractor_arch == "resnet18" and not fe.small_stem and fe.width == 1.0
    # block3 (stride 16) of the teacher view must leave 3x3 after the border crop for the local average
    assert spec.model.bow_levels == ["block3"] and spec.data.teacher_size // 16 - 2 >= 3


def test_torchvision_export_loads_strictly_into_resnet18(trained, tmp_path):
    ckpt, student = trained
    path, _, _ = export(ckpt, tmp_path, format="torchvision")
    state = torch.load(path, weights_only=True)["network"]
    k = state["fc.weight"].shape[0]
    net = torchvision.models.resnet18(num_classes=k)
    net.load_state_dict(state, strict=True)
    ours = student.state_dict()
    assert set(state) - {"fc.weight", "fc.bias"} == set(ours)
    for name, value in ours.items():
        assert torch.equal(state[name], value), name
    net.eval()
    x = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        assert torch.allclose(student(x, taps=("pooled",))["pooled"], torchvision_pooled(net, x), atol=1e-5)
    plain, _, _ = export(ckpt, tmp_path / "plain", format="torchvision", no_fc=True, plain=True)
    result = torchvision.models.resnet18().load_state_dict(torch.load(plain, weights_only=True), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys


def test_caffe2_and_detectron2_exports_carry_every_tensor(trained, tmp_path):
    ckpt, student = trained
    ours = student.state_dict()
    path, _, _ = export(ckpt, tmp_path, format="caffe2", rgb2bgr=True)
    blobs = read_caffe2(path)
    assert set(blobs) == expected_caffe2_names("resnet18", with_counters=True)
    assert len(blobs) == len(ours)  # one blob per tensor of the student, num_batches_tracked included
    check_caffe2_values(blobs, ours, rgb2bgr=True)

    path, _, _ = export(ckpt, tmp_path, format="detectron2")
    payload = pickle.loads(path.read_bytes())["model"]
    assert set(payload) == expected_detectron2_names("resnet18")
    assert len(payload) == len([k for k in ours if not k.endswith("num_batches_tracked")])
    arrays = sorted((v.shape, float(np.abs(v).sum())) for v in payload.values())
    expected = sorted((tuple(v.shape), float(v.abs().sum())) for k, v in ours.items() if "num_batches" not in k)
    assert [a[0] for a in arrays] == [e[0] for e in expected]
    assert np.allclose([a[1] for a in arrays], [e[1] for e in expected])
