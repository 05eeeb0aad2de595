"""Bad input and failures during an export: one clear error, and nothing half-written left on disk."""

import os
from pathlib import Path

import pytest
import torch
import torchvision
from click.testing import CliRunner

from obow.cli import main
from obow.config.export import ExportSpec
from obow.errors import CheckpointError, ConfigError
from obow.export import writers
from obow.export.run import run_export
from obow.reporting import RecordingReporter


def test_truncated_source_is_a_one_line_error(r18_checkpoint, tmp_path):
    truncated = tmp_path / "src" / "checkpoint_0001.pt"
    truncated.parent.mkdir()
    with open(r18_checkpoint[0], "rb") as handle:
        truncated.write_bytes(handle.read(4096))
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        run_export(ExportSpec(checkpoint=str(truncated), format="caffe2"), out, RecordingReporter())
    assert not out.exists()


def resnet34_names_only() -> dict[str, torch.Tensor]:
    """torchvision resnet34's keys with placeholder values: enough to be recognised as the wrong ResNet."""
    with torch.device("meta"):
        names = torchvision.models.resnet34().state_dict()
    return {k: torch.zeros(64, 3, 7, 7) if k == "conv1.weight" else torch.zeros(1) for k in names}


@pytest.mark.parametrize("fmt", ["torchvision", "caffe2", "safetensors"])
def test_wrong_architecture_is_named(tmp_path, fmt):
    source = tmp_path / "resnet34.pth"
    torch.save({"network": resnet34_names_only()}, source)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=r"wrong architecture: stage depths \[3, 4, 6, 3\] \(basic blocks\)"):
        # no_fc only where the format can hold an fc (torchvision); the others never have one
        spec = ExportSpec(checkpoint=str(source), format=fmt, no_fc=fmt == "torchvision")
        run_export(spec, out, RecordingReporter())
    assert not out.exists()


def test_export_never_overwrites_its_source(r18_checkpoint, tmp_path):
    src = tmp_path / "checkpoint_0003.pt"
    os.symlink(r18_checkpoint[0], src)
    spec = ExportSpec(checkpoint=str(src), format="safetensors", output_name="checkpoint_0003.pt")
    with pytest.raises(ConfigError, match="overwrite its source"):
        run_export(spec, tmp_path, RecordingReporter())
    assert src.resolve() == Path(r18_checkpoint[0]).resolve()


@pytest.mark.parametrize("failing", ["settings", "sidecar"])
def test_a_failure_after_the_weights_removes_the_weights(r18_checkpoint, tmp_path, monkeypatch, failing):
    """Detectron2 writes weights, settings and a record: if a later file fails, the earlier ones go too."""
    real = writers.write_text_atomic

    def flaky(path: Path, text: str) -> None:
        if (failing == "settings") == path.name.endswith(".yaml"):
            raise OSError(28, "No space left on device")
        real(path, text)

    monkeypatch.setattr(writers, "write_text_atomic", flaky)
    with pytest.raises(OSError, match="No space left"):
        run_export(ExportSpec(checkpoint=str(r18_checkpoint[0]), format="detectron2"), tmp_path, RecordingReporter())
    assert list(tmp_path.iterdir()) == []


def test_a_failing_write_keeps_the_previous_export(r18_checkpoint, tmp_path, monkeypatch):
    spec = ExportSpec(checkpoint=str(r18_checkpoint[0]), format="caffe2", output_name="weights.pkl")
    run_export(spec, tmp_path, RecordingReporter())
    before = (tmp_path / "weights.pkl").read_bytes()

    def broken(handle) -> None:
        handle.write(b"partial")
        raise OSError(5, "Input/output error")

    real = writers.write_atomic
    monkeypatch.setattr(writers, "write_atomic", lambda path, write: real(path, broken))
    with pytest.raises(OSError, match="Input/output"):
        run_export(spec, tmp_path, RecordingReporter())
    # the atomic writer leaves the old file and no temp file; the old record stays with it
    assert (tmp_path / "weights.pkl").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pkl", "weights.pkl.json"]


def test_convert_cli(r18_checkpoint, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(main, ["convert", "--checkpoint", str(r18_checkpoint[0]), "--format", "caffe2",
                              "--rgb2bgr", "--dst", str(tmp_path / "bench" / "r18_bgr.pkl")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "bench" / "r18_bgr.pkl").is_file() and "sha256=" in ok.output
    # --rgb2bgr is a real flag: it takes no value, so the original's "--rgb2bgr False" is an error, not True
    bad = runner.invoke(main, ["convert", "--checkpoint", str(r18_checkpoint[0]), "--format", "caffe2",
                               "--rgb2bgr", "False"])
    assert bad.exit_code == 2 and "False" in bad.output
    wrong = runner.invoke(main, ["convert", "--checkpoint", str(r18_checkpoint[0]), "--format", "detectron2",
                                 "--rgb2bgr"])
    assert wrong.exit_code == 2 and wrong.output.startswith("error: --rgb2bgr applies to --format caffe2")
    missing = runner.invoke(main, ["convert", "--checkpoint", str(tmp_path / "nope.pt")])
    assert missing.exit_code == 2
    assert missing.output.splitlines()[-1].startswith("error: checkpoint") and "does not exist" in missing.output
    traversal = runner.invoke(main, ["convert", "--checkpoint", str(r18_checkpoint[0]), "--format", "safetensors",
                                     "--dst", str(tmp_path / "x") + "/../../.evil.safetensors"])
    assert traversal.exit_code == 2 and "output_name" in traversal.output


def test_convert_cli_by_config_picks_the_newest_checkpoint(r18_checkpoint, tmp_path):
    from obow.config import load_pretrain_config

    preset = "ImageNet20/ResNet18_OBoW_full"
    exp_dir = tmp_path / "experiments" / load_pretrain_config(preset).name
    exp_dir.mkdir(parents=True)
    (exp_dir / "checkpoint_0001.pt").write_bytes(b"")  # older and broken: must not be picked
    os.symlink(r18_checkpoint[0], exp_dir / "checkpoint_0003.pt")
    result = CliRunner().invoke(main, ["convert", "--config", preset, "--dst-dir", str(tmp_path / "experiments"),
                                       "--no-fc", "--dst", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "tochvision_resnet18_student_epoch3_nofc.pth.tar").is_file()
    state = torch.load(tmp_path / "out" / "tochvision_resnet18_student_epoch3_nofc.pth.tar", weights_only=True)
    assert "fc.weight" not in state["network"]
    none = CliRunner().invoke(main, ["convert", "--config", preset, "--dst-dir", str(tmp_path / "empty")])
    assert none.exit_code == 2 and "no checkpoint_*.pt" in none.output
    both = CliRunner().invoke(main, ["convert", "--config", preset, "--checkpoint", str(r18_checkpoint[0])])
    assert both.exit_code == 2 and "exactly one of" in both.output
