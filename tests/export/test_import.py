"""Official OBoW files in, our checkpoints out, and back to torchvision."""

from pathlib import Path

import pytest
import torch
import torchvision

from obow.config.export import ExportSpec, ImportSpec
from obow.errors import CheckpointError
from obow.export.run import run_export, run_import
from obow.models.loading import load_backbone
from obow.reporting import RecordingReporter
from obow.train.checkpoint import load_training_checkpoint


def official_backbone_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our torchvision-named backbone keys written the official way (reference §5.1), by hand."""
    out = {}
    for key, value in state.items():
        if key.startswith("conv1."):
            out["_feature_blocks.0.Conv." + key[len("conv1."):]] = value
        elif key.startswith("bn1."):
            out["_feature_blocks.0.bn." + key[len("bn1."):]] = value
        else:
            stage = int(key[len("layer")])
            out[f"_feature_blocks.{stage}." + key[len("layerN."):]] = value
    return out


def official_model_state(model) -> dict[str, torch.Tensor]:
    out = {"_alpha": model._alpha, "_iteration": model._iteration}
    out |= {"feature_extractor." + k: v for k, v in official_backbone_keys(model.student.state_dict()).items()}
    out |= {"bow_predictor." + k: v for k, v in model.bow_predictor.state_dict().items()}
    out |= {"feature_extractor_teacher." + k: v for k, v in official_backbone_keys(model.teacher.state_dict()).items()}
    for i, level in enumerate(model.bow_extractor.levels):
        out |= {f"bow_extractor.bow_extractor.{i}.{k}": v for k, v in level.state_dict().items()}
    out |= {"linear_classifier.layers." + k: v for k, v in model.linear_classifier.state_dict().items()}
    return out


@pytest.mark.parametrize("ddp_prefix", [False, True])
def test_official_training_checkpoint_round_trip(r18_checkpoint, tmp_path, ddp_prefix):
    _, model = r18_checkpoint
    state = official_model_state(model)
    if ddp_prefix:
        state = {"module." + k: v for k, v in state.items()}
    official = tmp_path / "model_net_checkpoint_80.pth.tar"
    torch.save({"epoch": 80, "network": state, "meters": None}, official)

    result = run_import(ImportSpec(path=str(official)), tmp_path / "lab", RecordingReporter())
    assert result["kind"] == "training" and result["layout"] == "official-model"
    imported = load_training_checkpoint(Path(result["path"]))
    assert imported["epoch"] == 80 and imported["spec"]["model"]["bow_levels"] == ["block3", "block4"]
    assert imported["spec"]["model"]["bow_extractor_opts"]["num_words"] == [256, 256]
    for key, value in model.state_dict().items():
        assert torch.equal(imported["model"][key], value), key

    # exported back to torchvision, it matches an export of the original model
    ours = run_export(ExportSpec(checkpoint=str(r18_checkpoint[0])), tmp_path / "a", RecordingReporter())
    back = run_export(ExportSpec(checkpoint=result["path"]), tmp_path / "b", RecordingReporter())
    a = torch.load(tmp_path / "a" / ours["file"], weights_only=True)["network"]
    b = torch.load(tmp_path / "b" / back["file"], weights_only=True)["network"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the official file is also directly usable wherever a backbone is expected
    direct = load_backbone(official)
    assert direct.source_format == "official-model" and direct.epoch == 80


def test_feature_extractor_and_torchvision_release_files(r18_checkpoint, tmp_path):
    _, model = r18_checkpoint
    student = model.student.state_dict()
    fe = tmp_path / "feature_extractor_net_checkpoint_80.pth.tar"
    torch.save({"epoch": 80, "network": official_backbone_keys(student), "meters": None}, fe)
    tv = tmp_path / "tochvision_resnet18_student_K8192_epoch80.pth.tar"
    release = dict(student)
    release["fc.weight"], release["fc.bias"] = torch.randn(8192, 512), torch.zeros(8192)
    torch.save({"network": release}, tv)
    plain = tmp_path / "plain.pth"
    torch.save(torchvision.models.resnet18().state_dict(), plain)
    for path, layout in ((fe, "official-feature-extractor"), (tv, "torchvision"), (plain, "torchvision")):
        result = run_import(ImportSpec(path=str(path)), tmp_path / "lab", RecordingReporter())
        assert result["kind"] == "backbone" and result["layout"] == layout
        loaded = load_backbone(result["path"])
        if path != plain:
            for key, value in student.items():
                assert torch.equal(loaded.backbone.state_dict()[key], value)
        no_fc = run_export(ExportSpec(checkpoint=result["path"], no_fc=True), tmp_path / "x", RecordingReporter())
        assert no_fc["file"].endswith("_nofc.pth.tar")


def test_bad_imports_leave_nothing_behind(r18_checkpoint, tmp_path):
    _, model = r18_checkpoint
    out = tmp_path / "lab"
    good = tmp_path / "good.pth"
    torch.save({"network": model.student.state_dict()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        run_import(ImportSpec(path=str(truncated)), out, RecordingReporter())

    resnet34 = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), resnet34)
    with pytest.raises(CheckpointError, match=r"wrong architecture: stage depths \[3, 4, 6, 3\] \(basic"):
        run_import(ImportSpec(path=str(resnet34)), out, RecordingReporter())

    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(3), "head.bias": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match=r"unknown checkpoint layout.*encoder\.weight"):
        run_import(ImportSpec(path=str(foreign)), out, RecordingReporter())

    partial = official_model_state(model)
    del partial["feature_extractor_teacher._feature_blocks.4.1.bn2.running_var"]
    partial["bow_predictor.extra_thing"] = torch.zeros(1)
    broken = tmp_path / "model_net_checkpoint_1.pth.tar"
    torch.save({"epoch": 1, "network": partial}, broken)
    with pytest.raises(CheckpointError) as err:
        run_import(ImportSpec(path=str(broken)), out, RecordingReporter())
    assert "teacher.layer4.1.bn2.running_var" in str(err.value) and "bow_predictor.extra_thing" in str(err.value)

    assert not out.exists() or list(out.iterdir()) == []


def test_import_cli(r18_checkpoint, tmp_path):
    from click.testing import CliRunner

    from obow.cli import main

    path = tmp_path / "fe.pth.tar"
    torch.save({"epoch": 5, "network": official_backbone_keys(r18_checkpoint[1].student.state_dict())}, path)
    ok = CliRunner().invoke(main, ["import", str(path), "--dst-dir", str(tmp_path / "out")])
    assert ok.exit_code == 0 and "backbone checkpoint" in ok.output
    bad = CliRunner().invoke(main, ["import", str(tmp_path / "missing.pth"), "--dst-dir", str(tmp_path / "out")])
    assert bad.exit_code == 2 and bad.output.startswith("error:")
