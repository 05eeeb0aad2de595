"""`block4_width`: a last stage wider than the rest, end to end. The network is built with the channels
asked for, a real run's checkpoint loads back into the same shape, a backbone-only state dict (an
import, a safetensors file) rebuilds it from its tensors alone, and the export formats that need a stock
ResNet refuse it by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from obow.config import load_pretrain_config
from obow.config.export import ExportSpec
from obow.config.pretrain import FeatureExtractorOpts
from obow.errors import ConfigError
from obow.export.official import import_checkpoint
from obow.export.run import run_export
from obow.io.export_formats import backbone_error
from obow.models.backbone import build_backbone
from obow.models.loading import load_backbone
from obow.models.state import backbone_from_state, backbone_payload
from obow.reporting import RecordingReporter
from obow.train.checkpoint import latest_checkpoint
from obow.train.engine import run_pretrain

TINY = ["data.epoch_size=64", "data.batch_size=16", "runtime.workers=0", "runtime.bn_recalibration_images=0",
        "runtime.knn_monitor_every=null", "model.feature_extractor_opts.block4_width=0.25"]


def channels(net: torch.nn.Module) -> list[int]:
    return [net.conv1.out_channels] + [getattr(net, f"layer{i}")[-1].conv2.out_channels for i in range(1, 5)]


def test_only_block4_is_widened():
    net = build_backbone("resnet18", small_stem=True, width=0.125, block4_width=0.25)
    assert channels(net) == [8, 8, 16, 32, 128]
    assert net.out_dim == net.channels["pooled"] == 128 and net.channels["block3"] == 32
    assert net(torch.randn(2, 3, 32, 32), taps=("block4", "pooled"))["block4"].shape == (2, 128, 4, 4)
    wide50 = build_backbone("resnet50", width=0.25, block4_width=0.5)
    assert wide50.out_dim == 256 * 4 and wide50.layer3[-1].conv3.out_channels == 64 * 4
    # the value that gives block4 its usual channels is the same network, and named so
    assert build_backbone("resnet18", small_stem=True, width=0.125, block4_width=0.125).block4_width is None
    assert build_backbone("resnet18", small_stem=True, width=0.125).block4_width is None


@pytest.mark.parametrize("bad", [0, -1, 5, float("inf"), float("nan"), "wide", True])
def test_bad_widths_name_the_field(bad):
    with pytest.raises(ValidationError, match="block4_width"):
        FeatureExtractorOpts.model_validate({"block4_width": bad})
    with pytest.raises(ValidationError, match="width"):
        FeatureExtractorOpts.model_validate({"width": bad})


def test_a_state_dict_rebuilds_its_own_widths():
    for arch, width, block4 in (("resnet18", 0.125, 0.25), ("resnet50", 0.25, 0.125), ("resnet18", 0.5, None)):
        net = build_backbone(arch, small_stem=True, width=width, block4_width=block4)
        back = backbone_from_state(net.state_dict(), "test")
        assert (back.width, back.block4_width) == (width, block4)
        assert all(torch.equal(back.state_dict()[k], v) for k, v in net.state_dict().items())
        payload = backbone_payload(net, {"path": "x"})
        assert payload.get("block4_width") == block4


def test_stock_formats_refuse_a_widened_block4_by_name():
    assert backbone_error("torchvision", False, 1.0, None) is None
    assert backbone_error("torchvision", False, 1.0, 1.0) is None  # block4 at its usual width
    for fmt in ("torchvision", "caffe2", "detectron2"):
        reason = backbone_error(fmt, False, 1.0, 2.0)
        assert reason is not None and "block4_width=2.0" in reason and "safetensors" in reason
    assert backbone_error("safetensors", True, 0.125, 0.25) is None


def test_a_run_with_a_wide_block4_trains_loads_exports_and_imports(tmp_path: Path):
    spec = load_pretrain_config("FashionMNIST/tiny", TINY)
    out = tmp_path / "run"
    run_pretrain(spec, out, RecordingReporter())
    ckpt = latest_checkpoint(out)
    loaded = load_backbone(ckpt).backbone
    assert loaded.block4_width == 0.25 and loaded.out_dim == 128 and channels(loaded)[:4] == [8, 8, 16, 32]

    with pytest.raises(ConfigError, match=r"block4_width=0\.25"):
        run_export(ExportSpec(checkpoint=str(ckpt), format="torchvision"), tmp_path / "tv", RecordingReporter())
    record = run_export(ExportSpec(checkpoint=str(ckpt), format="safetensors"), tmp_path / "st", RecordingReporter())
    assert record["block4_width"] == 0.25

    made = import_checkpoint(ckpt, tmp_path / "imported.pt")  # another lab's training file
    assert (made["kind"], made["width"], made["block4_width"]) == ("training", 0.125, 0.25)
    backbone_file = tmp_path / "backbone.pt"
    torch.save(backbone_payload(loaded, {"path": "x"}), backbone_file)
    made = import_checkpoint(backbone_file, tmp_path / "imported_backbone.pt")
    assert (made["kind"], made["block4_width"]) == ("backbone", 0.25)
    again = load_backbone(tmp_path / "imported_backbone.pt").backbone
    assert all(torch.equal(again.state_dict()[k], v) for k, v in loaded.state_dict().items())
