"""Exported weights against independent expectations: torchvision forward, Caffe2 and Detectron2 names."""

import json
import pickle
import pickletools
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml

from obow.config.export import ExportSpec
from obow.errors import ConfigError
from obow.export.run import run_export
from obow.hashing import sha256_of
from obow.models.loading import load_backbone
from obow.reporting import RecordingReporter

STAGES = {"resnet18": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3]}


def export(ckpt: Path, out: Path, **options):
    rep = RecordingReporter()
    record = run_export(ExportSpec(checkpoint=str(ckpt), **options), out, rep)
    return out / record["file"], record, rep


def torchvision_pooled(net: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
    """The pooled features of a torchvision ResNet, layer by layer (its forward without fc)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


def test_torchvision_export_gives_the_same_features_and_the_bow_logits(r18_checkpoint, tmp_path):
    ckpt, model = r18_checkpoint
    path, record, rep = export(ckpt, tmp_path, format="torchvision")
    assert path.name == "tochvision_resnet18_student_K256_epoch3.pth.tar"
    state = torch.load(path, weights_only=True)["network"]
    net = torchvision.models.resnet18(num_classes=256)
    net.load_state_dict(state, strict=True)
    net.eval()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.student(x, taps=("pooled",))["pooled"]
        assert torch.allclose(ours, torchvision_pooled(net, x), atol=1e-5)
        # fc = κ·G(V) of the last level, bias 0, computed here from the parts: generator in eval mode
        # (BN on running statistics), unit-norm rows, scaled by the last level's κ
        gen = model.bow_predictor.layers_w[-1]
        gen.eval()
        words = model.bow_extractor.levels[-1].words
        expected = model.bow_predictor.scale[-1] * (ours @ gen(words).t())
        assert torch.allclose(net(x), expected, atol=1e-4)
        assert torch.equal(state["fc.bias"], torch.zeros(256))
        assert torch.allclose(state["fc.weight"].norm(dim=1), model.bow_predictor.scale[-1].expand(256), atol=1e-4)
    sidecar = json.loads((tmp_path / f"{path.name}.json").read_text())
    assert sidecar["sha256"] == record["sha256"] and sidecar["size"] == path.stat().st_size
    assert sidecar["source_sha256"] == sha256_of(ckpt) and sidecar["options"]["no_fc"] is False
    assert sidecar["num_classes"] == 256 and sidecar["source_epoch"] == 3
    assert rep.artifacts == [(path, "export", record)]


def test_torchvision_resnet50_gives_the_same_features(r50_backbone, tmp_path):
    ckpt, backbone = r50_backbone
    path, _, _ = export(ckpt, tmp_path, format="torchvision", no_fc=True)
    assert path.name == "tochvision_resnet50_student_epoch200_nofc.pth.tar"
    net = torchvision.models.resnet50()
    net.fc = torch.nn.Identity()
    net.load_state_dict(torch.load(path, weights_only=True)["network"], strict=True)
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(backbone(x)["pooled"], torchvision_pooled(net, x), atol=1e-5)


def test_backbone_only_file_has_no_bow_classifier(r50_backbone, tmp_path):
    with pytest.raises(ConfigError, match="export with --no-fc"):
        export(r50_backbone[0], tmp_path, format="torchvision")
    assert list(tmp_path.iterdir()) == []


def test_torchvision_no_fc_and_plain(r18_checkpoint, tmp_path):
    ckpt, _ = r18_checkpoint
    path, _, _ = export(ckpt, tmp_path, format="torchvision", no_fc=True, plain=True)
    state = torch.load(path, weights_only=True)
    assert "fc.weight" not in state and "conv1.weight" in state
    net = torchvision.models.resnet18()
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert missing == ["fc.weight", "fc.bias"] and unexpected == []


def expected_caffe2_names(arch: str, with_counters: bool) -> set[str]:
    """Built from the naming rules, independently of the exporter's string rewriting."""
    bn_parts = ["s", "b", "rm", "riv"] + (["num_batches_tracked"] if with_counters else [])
    names = {"conv1_w"} | {f"res_conv1_bn_{p}" for p in bn_parts}
    convs = ["branch2a", "branch2b"] + (["branch2c"] if arch == "resnet50" else [])
    for stage, blocks in enumerate(STAGES[arch], start=2):
        for b in range(blocks):
            branches = list(convs)
            if b == 0 and (stage > 2 or arch == "resnet50"):
                branches.append("branch1")
            for br in branches:
                names.add(f"res{stage}_{b}_{br}_w")
                names |= {f"res{stage}_{b}_{br}_bn_{p}" for p in bn_parts}
    return names


def caffe2_source_key(name: str) -> str:
    """Inverse mapping by hand, for value checks."""
    if name == "conv1_w":
        return "conv1.weight"
    part = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
    if name.startswith("res_conv1_bn_"):
        return "bn1." + part.get(name[len("res_conv1_bn_"):], name[len("res_conv1_bn_"):])
    stage, block, rest = name.split("_", 2)
    layer = f"layer{int(stage[3:]) - 1}.{block}."
    conv = {"branch2a": "1", "branch2b": "2", "branch2c": "3"}
    branch, tail = rest.split("_", 1)
    if branch == "branch1":
        if tail == "w":
            return layer + "downsample.0.weight"
        return layer + "downsample.1." + part.get(tail[3:], tail[3:])
    if tail == "w":
        return layer + f"conv{conv[branch]}.weight"
    return layer + f"bn{conv[branch]}." + part.get(tail[3:], tail[3:])


def read_caffe2(path: Path) -> OrderedDict:
    raw = path.read_bytes()
    assert raw[:2] == b"\x80\x02"  # pickle protocol 2
    # numpy 1 / Python 2 readers: arrays must be rebuilt through numpy.core, never numpy 2's numpy._core
    globals_ = {str(arg) for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}
    assert "numpy.core.multiarray _reconstruct" in globals_
    assert not any(g.startswith("numpy._core") for g in globals_)
    payload = pickle.loads(raw)  # plain pickle, no torch
    assert list(payload) == ["blobs"] and isinstance(payload["blobs"], OrderedDict)
    return payload["blobs"]


def check_caffe2_values(blobs: OrderedDict, state: dict[str, torch.Tensor], rgb2bgr: bool) -> None:
    assert [caffe2_source_key(n) for n in blobs] == sorted(k for k in state if "fc" not in k)  # sorted-key order
    for name, value in blobs.items():
        assert isinstance(value, np.ndarray), name
        source = state[caffe2_source_key(name)].numpy()
        if name == "conv1_w" and rgb2bgr:
            assert value.shape == (64, 3, 7, 7)
            for c in range(3):  # BGR input channel c is the RGB channel 2 - c
                assert np.array_equal(value[:, c], source[:, 2 - c])
            assert not np.array_equal(value, source)
        else:
            assert np.array_equal(value, source), name
        if name.endswith("num_batches_tracked"):
            assert value.shape == () and value.dtype == np.int64


def test_caffe2_blobs_resnet50(r50_backbone, tmp_path):
    ckpt, backbone = r50_backbone
    path, record, _ = export(ckpt, tmp_path, format="caffe2")
    blobs = read_caffe2(path)
    assert set(blobs) == expected_caffe2_names("resnet50", with_counters=True)
    assert len(blobs) == 318 and len([n for n in blobs if not n.endswith("num_batches_tracked")]) == 265
    without_counters = {n for n in blobs if not n.endswith("_num_batches_tracked")}
    assert without_counters == expected_caffe2_names("resnet50", with_counters=False)
    assert record["blobs"] == 318 and record["options"]["rgb2bgr"] is False
    check_caffe2_values(blobs, backbone.state_dict(), rgb2bgr=False)


def test_caffe2_resnet18_bgr(r18_checkpoint, tmp_path):
    ckpt, model = r18_checkpoint
    path, record, _ = export(ckpt, tmp_path, format="caffe2", rgb2bgr=True)
    assert path.name == "resnet18_student_epoch3_caffe2_bgr.pkl" and record["options"]["rgb2bgr"] is True
    blobs = read_caffe2(path)
    assert set(blobs) == expected_caffe2_names("resnet18", with_counters=True)
    check_caffe2_values(blobs, model.student.state_dict(), rgb2bgr=True)


def expected_detectron2_names(arch: str) -> set[str]:
    norm = ["weight", "bias", "running_mean", "running_var"]
    names = {"stem.conv1.weight"} | {f"stem.conv1.norm.{p}" for p in norm}
    convs = 3 if arch == "resnet50" else 2
    for stage, blocks in enumerate(STAGES[arch], start=2):
        for b in range(blocks):
            units = [f"conv{i}" for i in range(1, convs + 1)]
            if b == 0 and (stage > 2 or arch == "resnet50"):
                units.append("shortcut")
            for unit in units:
                names.add(f"res{stage}.{b}.{unit}.weight")
                names |= {f"res{stage}.{b}.{unit}.norm.{p}" for p in norm}
    return names


@pytest.mark.parametrize("which", ["r18_checkpoint", "r50_backbone"])
def test_detectron2_names_map_one_to_one(which, request, tmp_path):
    ckpt, model = request.getfixturevalue(which)
    backbone = model.student if which == "r18_checkpoint" else model
    path, record, rep = export(ckpt, tmp_path, format="detectron2")
    payload = pickle.loads(path.read_bytes())
    assert payload["__author__"] == "OBoW Lab" and payload["matching_heuristics"] is True
    assert set(payload["model"]) == expected_detectron2_names(backbone.arch)
    assert len(payload["model"]) == len([k for k in backbone.state_dict() if "num_batches_tracked" not in k])
    ours = backbone.state_dict()
    by_hand = {
        "stem.conv1.weight": "conv1.weight",
        "stem.conv1.norm.running_var": "bn1.running_var",
        "res2.0.conv2.norm.weight": "layer1.0.bn2.weight",
        "res3.0.shortcut.weight": "layer2.0.downsample.0.weight",
        "res5.1.conv1.norm.running_mean": "layer4.1.bn1.running_mean",
        "res4.0.shortcut.norm.bias": "layer3.0.downsample.1.bias",
    }
    for d2, tv in by_hand.items():
        assert isinstance(payload["model"][d2], np.ndarray)
        assert np.array_equal(payload["model"][d2], ours[tv].numpy()), d2
    settings = yaml.safe_load(path.with_suffix(".yaml").read_text())
    depth = 18 if backbone.arch == "resnet18" else 50
    assert settings["MODEL"]["WEIGHTS"] == path.name
    assert settings["INPUT"]["FORMAT"] == "RGB"
    assert settings["MODEL"]["PIXEL_MEAN"] == [123.675, 116.28, 103.53]
    assert settings["MODEL"]["PIXEL_STD"] == [58.395, 57.12, 57.375]
    assert settings["MODEL"]["RESNETS"]["STRIDE_IN_1X1"] is False
    assert settings["MODEL"]["RESNETS"]["DEPTH"] == depth
    assert record["extra_files"] == [path.with_suffix(".yaml").name]
    assert any("MODEL.PIXEL_MEAN" in msg and "INPUT.FORMAT=RGB" in msg for _, msg in rep.logs)


def test_safetensors_any_backbone(tiny_checkpoint, tmp_path):
    from safetensors import safe_open

    path, _, _ = export(tiny_checkpoint, tmp_path, format="safetensors")
    loaded = load_backbone(tiny_checkpoint).backbone
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
        assert meta["arch"] == "resnet18" and meta["width"] == "0.125" and meta["small_stem"] == "True"
        assert meta["source_sha256"] == sha256_of(tiny_checkpoint)
        assert set(handle.keys()) == set(loaded.state_dict())
        for key, value in loaded.state_dict().items():
            assert torch.equal(handle.get_tensor(key), value)


def test_small_backbones_refuse_torchvision_layouts(tiny_checkpoint, tmp_path):
    for fmt in ("torchvision", "caffe2", "detectron2"):
        with pytest.raises(ConfigError, match="export it as safetensors"):
            export(tiny_checkpoint, tmp_path, format=fmt)
    assert list(tmp_path.iterdir()) == []


def test_output_name_traversal_is_refused():
    from pydantic import ValidationError

    for bad in ("../x.pkl", "/etc/passwd", "a/b.pkl", ".hidden"):
        with pytest.raises(ValidationError):
            ExportSpec(checkpoint="c.pt", output_name=bad)
