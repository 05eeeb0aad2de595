"""Evaluation runs end to end on small real data (Fashion-MNIST subsets) with a tiny backbone."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from obow.cli import main
from obow.config.eval import FewshotSpec, KnnSpec, LinearSpec, SemisupSpec, SvmSpec
from obow.data.multicrop import eval_transform
from obow.data.sources import synthetic_source
from obow.errors import CheckpointError, ConfigError, DataError, StopRequested
from obow.eval.cache import cached_features, view_transform
from obow.eval.common import check_unchanged, state_hash
from obow.eval.fewshot import run_fewshot
from obow.eval.knn import run_knn
from obow.eval.linear import run_linear
from obow.eval.semisup import run_semisup
from obow.eval.svm import run_svm
from obow.models.backbone import ResNetBackbone
from obow.reporting import NullReporter, RecordingReporter

from .conftest import write_tiny_checkpoint

MEAN, STD = [0.5] * 3, [0.25] * 3
SMALL = {"dataset": "FashionMNIST", "resize": 32, "size": 32, "workers": 0, "batch_size": 32, "device": "cpu"}


def features_of(backbone, images):
    with torch.no_grad():
        return backbone(torch.stack(images), taps=("pooled",))["pooled"]


def test_cached_view_features_equal_on_the_fly_features(tiny_backbone_file, tmp_path):
    _, backbone = tiny_backbone_file
    source = synthetic_source(num_images=5, size=32, seed=3)
    center = eval_transform(36, 32, MEAN, STD)
    images = [source[i][0] for i in range(len(source))]
    for views, count in (("center_flip", 2), ("ten_crop", 10)):
        transform = view_transform(views, 36, 32, MEAN, STD)
        array, labels = cached_features(tmp_path / views, {"views": views}, backbone, source, transform, count,
                                        torch.device("cpu"), 8, 0, NullReporter())
        assert array.shape == (5, count, backbone.out_dim) and labels.tolist() == source.targets
        for v in range(count):
            expected = features_of(backbone, [transform(img)[v] for img in images])
            assert torch.allclose(torch.from_numpy(np.array(array[:, v])), expected, atol=1e-5)
        # independent views: the center crop, its mirror image (and TenCrop's 5th crop is the center)
        plain = features_of(backbone, [center(img) for img in images])
        mirrored = features_of(backbone, [center(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) for img in images])
        assert torch.allclose(torch.from_numpy(np.array(array[:, 4 if count == 10 else 0])), plain, atol=1e-5)
        if count == 2:
            assert torch.allclose(torch.from_numpy(np.array(array[:, 1])), mirrored, atol=1e-5)
    assert (tmp_path / "center_flip" / "done").is_file() and (tmp_path / "center_flip" / "metadata.json").is_file()
    rec = RecordingReporter()
    cached_features(tmp_path / "center_flip", {"views": "center_flip"}, backbone, source,
                    view_transform("center_flip", 36, 32, MEAN, STD), 2, torch.device("cpu"), 8, 0, rec)
    assert any("reusing" in m for _, m in rec.logs)
    rec = RecordingReporter()
    cached_features(tmp_path / "center_flip", {"views": "center_flip", "checkpoint_sha256": "other"}, backbone,
                    source, view_transform("center_flip", 36, 32, MEAN, STD), 2, torch.device("cpu"), 8, 0, rec)
    assert any("caching" in m for _, m in rec.logs)


def test_frozen_check_sees_a_batchnorm_update(tiny_backbone_file):
    _, backbone = tiny_backbone_file
    model = ResNetBackbone(arch="resnet18", small_stem=True, width=0.125)
    model.load_state_dict(backbone.state_dict())
    before = state_hash(model)
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 16, 16))
    check_unchanged(before, model)
    with torch.no_grad():
        model.train()(torch.randn(2, 3, 16, 16))  # updates the running statistics only
    with pytest.raises(RuntimeError, match="changed during training"):
        check_unchanged(before, model)


def test_linear_probe_fails_loudly_if_the_backbone_moved(tiny_backbone_file, tmp_path, monkeypatch):
    path, _ = tiny_backbone_file
    monkeypatch.setattr("obow.eval.linear.freeze", lambda backbone: backbone.train())  # a buggy "freeze"
    spec = LinearSpec(checkpoint=str(path), **SMALL, train_split="test", test_split="test", subset=3, test_subset=2,
                      epochs=1)
    with pytest.raises(RuntimeError, match="frozen backbone changed"):
        run_linear(spec, tmp_path, NullReporter())


def test_wrong_architecture_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "r18.pt"
    write_tiny_checkpoint(path)
    payload = torch.load(path, weights_only=True)
    payload["model"] = {k: v for k, v in payload["model"].items() if "layer4" not in k}
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        run_knn(KnnSpec(checkpoint=str(path), **SMALL, subset=2, test_subset=2), tmp_path, NullReporter())


@pytest.mark.parametrize("precache", [True, False])
def test_linear_probe_runs_and_reports(tiny_backbone_file, tmp_path, precache):
    path, _ = tiny_backbone_file
    spec = LinearSpec(checkpoint=str(path), **SMALL, train_split="test", test_split="test", subset=6, test_subset=4,
                      epochs=2, lr=0.1, batch_norm=True, precache=precache)
    rec = RecordingReporter()
    result = run_linear(spec, tmp_path, rec)
    assert result["backbone_unchanged"] and len(result["history"]) == 2 and result["train_images"] == 60
    assert [step for step, _ in rec.series("top1")] == [1, 2] and 0 <= result["top1"] <= result["top5"] <= 100
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["kind"] == "linear" and saved["top1"] == result["top1"]
    assert "top1" in (tmp_path / "results.txt").read_text()
    cache = list((tmp_path / "cache_features").glob("*/FashionMNIST/test_subset6/center_flip"))
    assert len(cache) == precache and (not precache or (cache[0] / "done").is_file())


def test_linear_stops_when_asked(tiny_backbone_file, tmp_path):
    path, _ = tiny_backbone_file
    spec = LinearSpec(checkpoint=str(path), **SMALL, train_split="test", test_split="test", subset=3, test_subset=2,
                      epochs=5, precache=True)
    with pytest.raises(StopRequested):
        run_linear(spec, tmp_path, RecordingReporter(stop_after_metrics=1))


def test_semisup_builds_a_balanced_split_and_reads_it_back(tiny_backbone_file, tmp_path):
    path, _ = tiny_backbone_file
    common = dict(checkpoint=str(path), **SMALL, train_split="test", test_split="test", subset=4, test_subset=2,
                  epochs=1)
    result = run_semisup(SemisupSpec(**common, percentage=50), tmp_path / "a", NullReporter())
    split = tmp_path / "a" / "split_50pct_seed0.txt"
    lines = split.read_text().split()
    assert result["labelled_images"] == 20 and len(lines) == 40  # index + name per line
    assert 0 <= result["top1"] <= result["top5"] <= 100
    again = run_semisup(SemisupSpec(**common, split_file=str(split)), tmp_path / "b", NullReporter())
    assert again["labelled_images"] == 20 and again["split"] == split.name


def test_fewshot_run_and_its_bad_inputs(tiny_backbone_file, tmp_path):
    path, _ = tiny_backbone_file
    novel = tmp_path / "novel.json"
    novel.write_text(json.dumps({"novel_classes": ["Trouser", "Bag", "Sandal", 0]}))
    common = dict(checkpoint=str(path), **SMALL, split="test", test_subset=6, novel_classes_file=str(novel))
    spec = FewshotSpec(**common, n_way=3, k_shot=[1, 2], n_query=2, episodes=10)
    result = run_fewshot(spec, tmp_path, NullReporter())
    assert result["novel_classes"] == ["T-shirt/top", "Trouser", "Sandal", "Bag"] and result["images"] == 24
    assert set(result["shots"]) == {"1", "2"} and all(s["episodes"] == 10 for s in result["shots"].values())
    with pytest.raises(ConfigError, match="n_way"):
        run_fewshot(FewshotSpec(**common, n_way=5), tmp_path, NullReporter())
    with pytest.raises(DataError, match="fewer than k_shot"):
        run_fewshot(FewshotSpec(**common, n_way=2, k_shot=[6], n_query=1), tmp_path, NullReporter())
    novel.write_text(json.dumps({"novel_classes": ["Unicorn"]}))
    with pytest.raises(ConfigError, match=r"entry 0 of .novel_classes. in .*neither a class name"):
        run_fewshot(FewshotSpec(**common, n_way=2), tmp_path, NullReporter())


def test_knn_run_and_k_larger_than_the_bank(tiny_backbone_file, tmp_path):
    path, _ = tiny_backbone_file
    common = dict(checkpoint=str(path), **SMALL, train_split="test", test_split="test", subset=3, test_subset=2)
    result = run_knn(KnnSpec(**common, k=[1, 5]), tmp_path, NullReporter())
    assert result["top1"]["1"] == 100.0  # the queries are in the bank: the nearest neighbour is themselves
    with pytest.raises(ConfigError, match="larger than the memory bank"):
        run_knn(KnnSpec(**common, k=[31]), tmp_path, NullReporter())


def make_multilabel_folder(root, n_train=24, n_test=12):
    """ImageFolder whose images carry 'left' and/or 'top' bright squares: a two-class multi-label task."""
    rng = np.random.default_rng(0)
    labels = {}
    for split, n in (("train", n_train), ("val", n_test)):
        (root / split / "all").mkdir(parents=True)
        for i in range(n):
            has = [i % 2 == 0, (i // 2) % 2 == 0]
            image = rng.integers(0, 40, (32, 32, 3), dtype=np.uint8)
            if has[0]:
                image[10:20, 0:8] = 250
            if has[1]:
                image[0:8, 10:20] = 250
            name = f"{split}_{i:03d}.png"
            Image.fromarray(image).save(root / split / "all" / name)
            labels[name] = [c for c, on in zip(["left", "top"], has, strict=True) if on]
    ignore = {"train_000.png": ["top"], "val_001.png": ["left"]}  # like VOC "difficult"
    (root / "labels.json").write_text(json.dumps({"classes": ["left", "top"], "labels": labels, "ignore": ignore}))
    return root / "labels.json"


def test_svm_multilabel_map(tiny_backbone_file, tmp_path):
    path, _ = tiny_backbone_file
    labels = make_multilabel_folder(tmp_path / "data")
    spec = SvmSpec(checkpoint=str(path), dataset="ImageFolder", data_dir=str(tmp_path / "data"), resize=32, size=32,
                   mean=MEAN, std=STD, workers=0, device="cpu", labels_file=str(labels), costs=[0.1, 1.0], folds=2)
    result = run_svm(spec, tmp_path / "out", NullReporter())
    assert [c["class"] for c in result["classes"]] == ["left", "top"]
    assert result["mAP"] == pytest.approx(np.mean([c["ap"] for c in result["classes"]]))
    assert all(c["cost"] in (0.1, 1.0) for c in result["classes"]) and 0 < result["mAP"] <= 100
    assert 0 < result["mAP_interpolated"] <= 100 and result["mAP_interpolated"] >= result["mAP"] - 1e-9
    assert "mean" in (tmp_path / "out" / "results.txt").read_text()


def test_bad_checkpoints_and_empty_datasets(tiny_backbone_file, tmp_path):
    path, _ = tiny_backbone_file
    foreign = tmp_path / "foreign.pt"
    torch.save({"hello": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="no known checkpoint format"):
        run_knn(KnnSpec(checkpoint=str(foreign), **SMALL, subset=2, test_subset=2), tmp_path, NullReporter())
    wrong = tmp_path / "wrong_arch.pt"
    payload = torch.load(path, weights_only=True)
    payload["spec"]["model"]["feature_extractor_arch"] = "resnet50"
    torch.save(payload, wrong)
    with pytest.raises(CheckpointError, match="does not match the architecture"):
        run_knn(KnnSpec(checkpoint=str(wrong), **SMALL, subset=2, test_subset=2), tmp_path, NullReporter())
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    spec = KnnSpec(checkpoint=str(path), dataset="ImageFolder", data_dir=str(tmp_path / "empty"), workers=0)
    with pytest.raises(DataError, match="no class folders"):
        run_knn(spec, tmp_path, NullReporter())


def test_cli_knn_and_one_line_errors(tiny_backbone_file, tmp_path):
    path, _ = tiny_backbone_file
    args = ["--checkpoint", str(path), "--dataset", "FashionMNIST", "--train-split", "test", "--test-split", "test",
            "--subset", "3", "--test-subset", "2", "--resize", "32", "--size", "32", "-j", "0", "--device", "cpu",
            "--quiet", "--dst-dir", str(tmp_path / "knn")]
    ok = CliRunner().invoke(main, ["knn", *args, "-k", "1,3"])
    assert ok.exit_code == 0, ok.output
    assert "temperature" in ok.output
    assert json.loads((tmp_path / "knn" / "results.json").read_text())["top1"]["1"] == 100
    bad = CliRunner().invoke(main, ["fewshot", *args, "--fewshot-n", "50"])
    assert bad.exit_code == 2 and "error: n_way (50)" in bad.output
    bad = CliRunner().invoke(main, ["linear", *args, "--lr-decay", "3"])
    assert bad.exit_code == 2 and "lr_decay" in bad.output


@pytest.mark.slow  # the shared fixture runs a short pretraining (paid once by the whole suite)
def test_linear_probe_on_a_real_tiny_pretraining(tiny_checkpoint, tmp_path):
    """A genuine OBoW Lab training checkpoint (teacher, vocabulary, predictor keys present) loads and probes."""
    spec = LinearSpec(checkpoint=str(tiny_checkpoint), **SMALL, train_split="test", test_split="test", subset=3,
                      test_subset=2, epochs=1, precache=True, keep_cache=False)
    result = run_linear(spec, tmp_path, NullReporter())
    assert result["backbone_unchanged"] and result["train_images"] == 30 and 0 <= result["top1"] <= 100
    assert not list((tmp_path / "cache_features").glob("*/*/*/*/memmap.npy"))  # keep_cache=False removed it
