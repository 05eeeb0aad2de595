"""Official OBoW files in, our checkpoints out, and back to torchvision."""

from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from obow.cli import main
from obow.config.export import ExportSpec, ImportSpec
from obow.errors import CheckpointError
from obow.export.run import run_export, run_import
from obow.hashing import sha256_of
from obow.io.checkpoint import load_training_checkpoint
from obow.models.loading import load_backbone
from obow.reporting import RecordingReporter


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

    rep = RecordingReporter()
    result = run_import(ImportSpec(path=str(official)), tmp_path / "lab", rep)
    assert result["kind"] == "training" and result["layout"] == "official-model"
    assert rep.artifacts[0][1] == "checkpoint" and rep.artifacts[0][0] == Path(result["path"])
    imported = load_training_checkpoint(Path(result["path"]))
    spec = imported["spec"]["model"]
    assert imported["epoch"] == 80 and spec["bow_levels"] == ["block3", "block4"]
    assert spec["bow_extractor_opts"]["num_words"] == [256, 256]
    assert spec["feature_extractor_arch"] == "resnet18" and spec["bow_predictor_opts"]["kappa"] == [5.0, 5.0]
    assert spec["bow_extractor_opts"]["inv_delta"] == 10  # not in the file: the original R18 config's value
    assert imported["imported_from"]["sha256"] == sha256_of(official)
    for key, value in model.state_dict().items():
        assert torch.equal(imported["model"][key], value), key
    if ddp_prefix:
        return  # the exports below do not depend on how the file was read

    # exported back to torchvision: the original student with fc = κ·G(V) of the original model
    expected = dict(model.student.state_dict())
    expected["fc.weight"], expected["fc.bias"] = model.bow_classifier_weights(-1), torch.zeros(256)
    back = run_export(ExportSpec(checkpoint=result["path"]), tmp_path / "b", RecordingReporter())
    # and the same straight from the official file, without importing it first
    direct = run_export(ExportSpec(checkpoint=str(official)), tmp_path / "c", RecordingReporter())
    for folder, record in (("b", back), ("c", direct)):
        assert record["file"] == "tochvision_resnet18_student_K256_epoch80.pth.tar"
        state = torch.load(tmp_path / folder / record["file"], weights_only=True)["network"]
        assert state.keys() == expected.keys()
        assert all(torch.allclose(state[k].float(), expected[k].float(), atol=1e-6) for k in state), folder
    # the official file is also directly usable wherever a backbone is expected
    direct = load_backbone(official)
    assert direct.source_format == "official-model" and direct.epoch == 80


def test_official_checkpoint_without_cosine_momentum_buffers(r18_checkpoint, tmp_path):
    """Official runs with a fixed momentum have no `_alpha`/`_iteration`: imported with alpha_cosine off."""
    _, model = r18_checkpoint
    state = {k: v for k, v in official_model_state(model).items() if k not in ("_alpha", "_iteration")}
    official = tmp_path / "model_net_checkpoint_7.pth.tar"
    torch.save({"epoch": 7, "network": state, "meters": None}, official)
    result = run_import(ImportSpec(path=str(official), name="fixed.pt"), tmp_path, RecordingReporter())
    imported = load_training_checkpoint(Path(result["path"]))
    assert imported["spec"]["model"]["alpha_cosine"] is False and imported["iteration"] == 0
    assert torch.equal(imported["model"]["student.conv1.weight"], model.student.conv1.weight)


def test_resnet50_spec_comes_from_the_original_resnet50_config():
    """Arch from the shapes, levels and K from the vocabularies, κ from the file, the rest from the preset."""
    from obow.export.official import spec_for_official_model
    from obow.models.backbone import build_backbone

    with torch.device("meta"):  # shapes only: no memory, no time
        student = build_backbone("resnet50").state_dict()
    mapped = {"student." + k: v for k, v in student.items()}
    mapped |= {
        "bow_extractor.levels.0._embedding": torch.zeros(512, 1024),
        "bow_extractor.levels.1._embedding": torch.zeros(512, 2048),
        "bow_predictor.scale": torch.tensor([8.0, 8.0]),
        "linear_classifier.prediction_layer.weight": torch.zeros(1000, 2048),
        "_iteration": torch.zeros(1),
    }
    spec = spec_for_official_model(mapped)
    assert spec.model.feature_extractor_arch == "resnet50" and spec.model.bow_levels == ["block3", "block4"]
    assert spec.model.per_level("num_words") == [512, 512] and spec.model.per_level("kappa") == [8.0, 8.0]
    assert spec.model.per_level("inv_delta") == [15, 15] and spec.model.num_classes == 1000
    assert spec.optim.num_epochs == 200 and spec.data.batch_size == 256
    vanilla = {k: v for k, v in mapped.items() if not k.startswith("bow_extractor.levels.1")}
    vanilla["bow_predictor.scale"] = torch.tensor([8.0])
    assert spec_for_official_model(vanilla).model.bow_levels == ["block4"]


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
        assert result["kind"] == "backbone" and result["layout"] == layout and result["arch"] == "resnet18"
        loaded = load_backbone(result["path"])
        assert loaded.source_format == "obow-lab/backbone" and loaded.extra["source"]["sha256"] == sha256_of(path)
        if path != plain:
            for key, value in student.items():
                assert torch.equal(loaded.backbone.state_dict()[key], value)
    no_fc = run_export(ExportSpec(checkpoint=str(tmp_path / "lab" / "imported_feature_extractor_net_checkpoint_80.pt"),
                                  no_fc=True), tmp_path / "x", RecordingReporter())
    assert no_fc["file"] == "tochvision_resnet18_student_epoch80_nofc.pth.tar"
    # the release file's fc (the BoW classifier) survives the import and comes back out unchanged
    imported = tmp_path / "lab" / "imported_tochvision_resnet18_student_K8192_epoch80.pt"
    back = run_export(ExportSpec(checkpoint=str(imported)), tmp_path / "y", RecordingReporter())
    assert back["file"] == "tochvision_resnet18_student_K8192_epoch80.pth.tar"  # epoch from the name
    state = torch.load(tmp_path / "y" / back["file"], weights_only=True)["network"]
    assert state.keys() == release.keys() and all(torch.equal(state[k], release[k]) for k in release)


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
    with torch.device("meta"):
        resnet34_names = torchvision.models.resnet34().state_dict()
    torch.save({k: torch.zeros(64, 3, 7, 7) if k == "conv1.weight" else torch.zeros(1) for k in resnet34_names},
               resnet34)
    with pytest.raises(CheckpointError, match=r"wrong architecture: stage depths \[3, 4, 6, 3\] \(basic"):
        run_import(ImportSpec(path=str(resnet34)), out, RecordingReporter())

    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(3), "head.bias": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError) as err:
        run_import(ImportSpec(path=str(foreign)), out, RecordingReporter())
    message = str(err.value)
    assert "unknown checkpoint layout: unexpected keys [encoder.weight, head.bias]" in message
    assert "missing keys" in message and "'_feature_blocks.0.Conv.weight'" in message and "'conv1.weight'" in message
    assert "\n" not in message

    not_a_state = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        run_import(ImportSpec(path=str(not_a_state)), out, RecordingReporter())

    partial = official_model_state(model)
    del partial["feature_extractor_teacher._feature_blocks.4.1.bn2.running_var"]
    partial["bow_predictor.extra_thing"] = torch.zeros(1)
    broken = tmp_path / "model_net_checkpoint_1.pth.tar"
    torch.save({"epoch": 1, "network": partial}, broken)
    with pytest.raises(CheckpointError) as err:
        run_import(ImportSpec(path=str(broken)), out, RecordingReporter())
    assert "missing keys [teacher.layer4.1.bn2.running_var]" in str(err.value)
    assert "unexpected keys [bow_predictor.extra_thing]" in str(err.value)

    fe = {k: v for k, v in official_backbone_keys(model.student.state_dict()).items() if "layer" not in k}
    fe["_feature_blocks.9.weird"] = torch.zeros(1)
    fe.pop("_feature_blocks.2.0.conv1.weight")
    partial_fe = tmp_path / "feature_extractor_net_checkpoint_1.pth.tar"
    torch.save({"epoch": 1, "network": fe}, partial_fe)
    with pytest.raises(CheckpointError) as err:
        run_import(ImportSpec(path=str(partial_fe)), out, RecordingReporter())
    assert "layer2.0.conv1.weight" in str(err.value) and "_feature_blocks.9.weird" in str(err.value)

    assert not out.exists() or list(out.iterdir()) == []


def test_a_lab_checkpoint_is_validated_and_kept(tiny_checkpoint, tmp_path):
    result = run_import(ImportSpec(path=str(tiny_checkpoint), name="copy.pt"), tmp_path, RecordingReporter())
    assert result["kind"] == "training" and result["layout"] == "obow-lab/pretrain"
    assert load_backbone(result["path"]).backbone.small_stem is True
    again = CliRunner().invoke(main, ["import", str(tiny_checkpoint), "--dst-dir", str(tmp_path), "--name", "copy.pt"])
    assert again.exit_code == 2 and "already exists" in again.output  # the CLI never overwrites a file


def test_import_cli(r18_checkpoint, tmp_path):
    path = tmp_path / "fe.pth.tar"
    torch.save({"epoch": 5, "network": official_backbone_keys(r18_checkpoint[1].student.state_dict())}, path)
    ok = CliRunner().invoke(main, ["import", str(path), "--dst-dir", str(tmp_path / "out")])
    assert ok.exit_code == 0 and "backbone checkpoint" in ok.output
    bad = CliRunner().invoke(main, ["import", str(tmp_path / "missing.pth"), "--dst-dir", str(tmp_path / "out")])
    assert bad.exit_code == 2 and bad.output.startswith("error:")
