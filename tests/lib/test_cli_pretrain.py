"""`obow pretrain` and `obow presets` as a user runs them."""

from pathlib import Path

import torch
from click.testing import CliRunner

from obow.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_presets_list_and_show():
    listing = invoke("presets")
    assert "ImageNetFull/ResNet50_OBoW_full" in listing.output and "FashionMNIST/tiny" in listing.output
    shown = invoke("presets", "ImageNetFull/ResNet50_OBoW_full")
    assert "lr_schedule_type: cos_warmup" in shown.output


def test_pretrain_writes_the_original_layout_and_refuses_to_overwrite(tmp_path: Path):
    args = ["pretrain", "--config", "FashionMNIST/tiny", "--dst-dir", str(tmp_path), "--workers", "0",
            "--set", "data.epoch_size=64", "--set", "data.batch_size=16", "--set", "optim.num_epochs=1"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    run_dir = tmp_path / "FashionMNIST" / "tiny"
    assert (run_dir / "checkpoint_0001.pt").is_file() and (run_dir / "spec.yaml").is_file()
    assert list((run_dir / "logs").glob("LOG_INFO_*.txt")) and (run_dir / "logs" / "metrics.jsonl").stat().st_size > 0
    again = invoke(*args)
    assert again.exit_code == 2 and "pass --resume" in again.output
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0 and "done: 1 epochs" in resumed.output


def test_pretrain_bad_input_is_one_line_with_exit_2(tmp_path: Path):
    cases = [
        (["--config", "Nope"], "unknown preset"),
        (["--config", "FashionMNIST/tiny", "--set", "optim.bogus=1"], "optim.bogus"),
        (["--config", "FashionMNIST/tiny", "--set", "data.batch_size=48"], "multiple of the total batch size"),
        (["--config", "FashionMNIST/tiny", "--data-dir", str(tmp_path / "none")], "does not exist"),
        (["--config", "FashionMNIST/tiny", "--gpus", "2", "--nproc", "2"], "either --gpus or --nproc"),
    ]
    for extra, message in cases:
        result = invoke("pretrain", "--dst-dir", str(tmp_path / "out"), *extra)
        assert result.exit_code == 2, (extra, result.output)
        lines = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and message in lines[0], (extra, result.output)
    assert not list((tmp_path / "out").rglob("checkpoint_*.pt"))


def test_pretrain_bf16_without_native_bfloat16_is_one_line_with_the_fix(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    result = invoke("pretrain", "--config", "FashionMNIST/tiny", "--dst-dir", str(tmp_path), "--bf16",
                    "--set", "runtime.device=cpu")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no native bfloat16" in lines[0] and "runtime.precision=fp32" in lines[0], result.output
    assert not list(tmp_path.rglob("checkpoint_*.pt"))
