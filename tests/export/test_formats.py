"""Exported weights against independent expectations: torchvision forward, Caffe2 and Detectron2 names."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from obow.config.export import ExportSpec
from obow.errors import ConfigError
from obow.export.run import run_export
from obow.models.loading import load_backbone
from obow.reporting import RecordingReporter

STAGES = {"resnet18": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3]}


def export(ckpt: Path, out: Path, **options):
    rep = RecordingReporter()
    record = run_export(ExportSpec(checkpoint=str(ckpt), **options), out, rep)
    return out / record["file"], record, rep


@pytest.mark.parametrize("which", ["r18_checkpoint", "r50_checkpoint"])
def test_torchvision_export_gives_the_same_features_and_the_bow_logits(which, request, tmp_path):
    ckpt, model = request.getfixturevalue(which)
    path, record, rep = export(ckpt, tmp_path, format="torchvision")
    arch = model.student.arch
    assert path.name == f"tochvision_{arch}_student_K256_epoch3.pth.tar"
    state = torch.load(path, weights_only=True)["network"]
    net = getattr(torchvision.models, arch)(num_classes=256)
    net.load_state_dict(state, strict=True)
    net.eval()
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.student(x, taps=("pooled",))["pooled"]
        theirs = torch.flatten(net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(
            net.maxpool(net.relu(net.bn1(net.conv1(x))))))))), 1)
        assert torch.allclose(ours, theirs, atol=1e-5)
        # fc = κ·G(V) of the last level, bias 0: torchvision's logits are the block4 BoW logits
        gen = model.bow_predictor.layers_w[-1]
        gen.eval()
        words = model.bow_extractor.levels[-1].words
        expected = model.bow_predictor.scale[-1] * (ours @ gen(words).t())
        assert torch.allclose(net(x), expected, atol=1e-4)
    sidecar = json.loads((tmp_path / f"{path.name}.json").read_text())
    assert sidecar["sha256"] == record["sha256"] and sidecar["size"] == path.stat().st_size
    assert rep.artifacts[0][1] == "export"


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


@pytest.mark.parametrize("rgb2bgr", [False, True])
def test_caffe2_blobs_resnet50(r50_checkpoint, tmp_path, rgb2bgr):
    ckpt, model = r50_checkpoint
    path, _, _ = export(ckpt, tmp_path, format="caffe2", rgb2bgr=rgb2bgr)
    with open(path, "rb") as handle:
        assert handle.read(2) == b"\x80\x02"  # pickle protocol 2
        handle.seek(0)
        blobs = pickle.load(handle)["blobs"]
    state = model.student.state_dict()
    assert [caffe2_source_key(n) for n in blobs] == sorted(k for k in state if "fc" not in k)  # sorted-key order
    assert set(blobs) == expected_caffe2_names("resnet50", with_counters=True)
    assert len(blobs) == 318 and len([n for n in blobs if not n.endswith("num_batches_tracked")]) == 265
    for name, value in blobs.items():
        source = state[caffe2_source_key(name)].numpy()
        if name == "conv1_w" and rgb2bgr:
            assert np.array_equal(value, source[:, ::-1])
            assert not np.array_equal(value, source)
        else:
            assert np.array_equal(value, source), name


def test_caffe2_resnet18_names(r18_checkpoint, tmp_path):
    path, _, _ = export(r18_checkpoint[0], tmp_path, format="caffe2")
    with open(path, "rb") as handle:
        blobs = pickle.load(handle)["blobs"]
    assert set(blobs) == expected_caffe2_names("resnet18", with_counters=True)


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


@pytest.mark.parametrize("which", ["r18_checkpoint", "r50_checkpoint"])
def test_detectron2_names_map_one_to_one(which, request, tmp_path):
    ckpt, model = request.getfixturevalue(which)
    path, _, rep = export(ckpt, tmp_path, format="detectron2")
    with open(path, "rb") as handle:
        payload = pickle.load(handle)
    assert payload["__author__"] == "OBoW Lab" and payload["matching_heuristics"] is True
    assert set(payload["model"]) == expected_detectron2_names(model.student.arch)
    assert np.array_equal(payload["model"]["stem.conv1.weight"], model.student.conv1.weight.detach().numpy())
    settings = path.with_suffix(".yaml").read_text()
    assert "INPUT.FORMAT: RGB" in settings and "STRIDE_IN_1X1: false" in settings
    assert any("PIXEL_MEAN" in msg for _, msg in rep.logs)


def test_safetensors_any_backbone(tiny_checkpoint, tmp_path):
    from safetensors import safe_open

    path, _, _ = export(tiny_checkpoint, tmp_path, format="safetensors")
    loaded = load_backbone(tiny_checkpoint).backbone
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["arch"] == "resnet18" and handle.metadata()["width"] == "0.125"
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
