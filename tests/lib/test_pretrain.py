"""End-to-end pretraining on real Fashion-MNIST images with the tiny preset."""

from pathlib import Path

import pytest
import torch

from obow.config import load_pretrain_config
from obow.errors import CheckpointError, ConfigError, DataError, StopRequested
from obow.io.checkpoint import load_training_checkpoint
from obow.reporting import RecordingReporter
from obow.train.checkpoint import latest_checkpoint, list_checkpoints
from obow.train.engine import run_pretrain

TINY = ["data.epoch_size=128", "data.batch_size=16", "runtime.print_freq=1", "runtime.workers=0"]


def tiny_spec(*extra: str):
    return load_pretrain_config("FashionMNIST/tiny", [*TINY, *extra])


def losses(reporter: RecordingReporter) -> list[tuple[int, float]]:
    return reporter.series("loss_total")


def test_loss_falls_and_checkpoints_are_written(tmp_path: Path):
    patches = ["data.num_img_patches=2", "data.img_patch_preresize=40", "data.img_patch_size=16",
               "data.img_patch_jitter=4"]
    spec = tiny_spec("optim.num_epochs=4", "data.epoch_size=256", "optim.lr=0.1", "model.alpha=0.99", *patches)
    rep = RecordingReporter()
    result = run_pretrain(spec, tmp_path, rep)
    assert result["epochs"] == 4 and result["iterations"] == 4 * 16
    series = [v for _, v in rep.series("epoch/loss_total")]
    assert len(series) == 4
    assert series[-1] < series[0] - 0.05, series
    # only the newest epoch checkpoint is kept (no `permanent`)
    assert [e for e, _, _ in list_checkpoints(tmp_path)] == [4]
    ckpt = load_training_checkpoint(latest_checkpoint(tmp_path))
    assert ckpt["iteration"] == 64 and ckpt["epoch"] == 4
    assert any(kind == "checkpoint" for _, kind, _ in rep.artifacts)
    for key in ("perp_b_lev@0", "perp_i_lev@1", "lr", "alpha", "img_per_s", "loss_crop32", "loss_crop16"):
        assert rep.series(key), key
    # teacher momentum follows the cosine up to 1.0 at the last iteration
    alphas = [v for _, v in rep.series("alpha")]
    assert alphas[0] == pytest.approx(0.99, abs=1e-4) and alphas[-1] > 0.9999


@pytest.mark.parametrize("pipeline", ["pil", "batched"])
def test_resume_equals_uninterrupted_run(tmp_path: Path, pipeline: str):
    spec = tiny_spec("optim.num_epochs=2", "runtime.save_every_iters=3", f"runtime.data_pipeline={pipeline}")
    straight = RecordingReporter()
    run_pretrain(spec, tmp_path / "a", straight)

    first = RecordingReporter(stop_after_metrics=5)  # stops mid-epoch 1, after iteration 5
    with pytest.raises(StopRequested):
        run_pretrain(spec, tmp_path / "b", first)
    second = RecordingReporter()
    run_pretrain(spec, tmp_path / "b", second)
    assert any("resumed from" in msg for _, msg in second.logs)

    expected = dict(losses(straight))
    got = dict(losses(first)) | dict(losses(second))
    assert sorted(got) == sorted(expected)
    for step, value in expected.items():
        assert got[step] == pytest.approx(value, rel=1e-5, abs=1e-6), step
    a = load_training_checkpoint(latest_checkpoint(tmp_path / "a"))["model"]
    b = load_training_checkpoint(latest_checkpoint(tmp_path / "b"))["model"]
    for key in a:
        assert torch.allclose(a[key].double(), b[key].double(), atol=1e-6), key


def test_two_process_gloo_run_keeps_vocabularies_identical(tmp_path: Path):
    spec = tiny_spec("optim.num_epochs=1", "runtime.num_processes=2", "runtime.device=cpu")
    rep = RecordingReporter()
    result = run_pretrain(spec, tmp_path, rep)
    assert result["iterations"] == 128 // 16
    checks = [msg for _, msg in rep.logs if "cross-rank check" in msg]
    assert len(checks) == 2 and all("2 ranks agree" in msg for msg in checks)


def test_resume_refuses_a_different_config(tmp_path: Path):
    run_pretrain(tiny_spec("optim.num_epochs=1"), tmp_path, RecordingReporter())
    with pytest.raises(CheckpointError, match="different 'model' config"):
        run_pretrain(tiny_spec("optim.num_epochs=1", "model.bow_predictor_opts.kappa=7"), tmp_path, RecordingReporter())


def test_corrupt_checkpoint_on_resume_is_a_clear_error(tmp_path: Path):
    (tmp_path / "checkpoint_0001.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a PyTorch checkpoint"):
        run_pretrain(tiny_spec(), tmp_path, RecordingReporter())
    torch.save({"network": {}}, tmp_path / "checkpoint_0001.pt")
    with pytest.raises(CheckpointError, match="not an OBoW Lab training checkpoint"):
        run_pretrain(tiny_spec(), tmp_path, RecordingReporter())


def test_missing_or_empty_data_dir(tmp_path: Path):
    with pytest.raises(DataError):
        run_pretrain(tiny_spec(f"data.data_dir={tmp_path / 'nope'}"), tmp_path / "out", RecordingReporter())
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(DataError):
        run_pretrain(
            tiny_spec("data.dataset_name=ImageFolder", f"data.data_dir={empty}"), tmp_path / "out2", RecordingReporter()
        )
    assert latest_checkpoint(tmp_path / "out") is None and latest_checkpoint(tmp_path / "out2") is None


def test_batch_larger_than_dataset(tmp_path: Path):
    with pytest.raises(ConfigError, match="smaller than one batch"):
        run_pretrain(tiny_spec("data.epoch_size=8"), tmp_path, RecordingReporter())


def test_knn_monitor_gives_a_quality_curve(tmp_path: Path):
    spec = tiny_spec(
        "optim.num_epochs=2",
        "runtime.knn_monitor_every=1",
        "runtime.knn_monitor_train_size=200",
        "runtime.knn_monitor_test_size=100",
    )
    rep = RecordingReporter()
    run_pretrain(spec, tmp_path, rep)
    curve = rep.series("knn_acc@1")
    assert [step for step, _ in curve] == [8, 16]
    assert all(10.0 < acc <= 100.0 for _, acc in curve)  # better than chance on 10 classes


def test_knn_monitor_at_start_scores_the_untrained_student(tmp_path: Path):
    """`runtime.knn_monitor_at_start`: a step-0 point that is the monitor of the network before any step
    (the benchmark's "at initialisation" network), then the usual points; not repeated on resume."""
    import torch

    from obow.models.obow import build_obow
    from obow.train.monitor import knn_monitor

    sizes = ["runtime.knn_monitor_train_size=200", "runtime.knn_monitor_test_size=100"]
    spec = tiny_spec("optim.num_epochs=1", "runtime.knn_monitor_every=1", "runtime.knn_monitor_at_start=true", *sizes)
    rep = RecordingReporter()
    run_pretrain(spec, tmp_path, rep)
    curve = rep.series("knn_acc@1")
    assert [step for step, _ in curve] == [0, 8]
    torch.manual_seed(spec.runtime.seed)
    untrained = build_obow(spec).student
    assert curve[0][1] == knn_monitor(untrained, spec, torch.device("cpu"))["knn_acc@1"]
    resumed = RecordingReporter()  # the same run again: resumed from its last checkpoint, nothing to redo
    run_pretrain(spec, tmp_path, resumed)
    assert resumed.series("knn_acc@1") == []


def test_vocabulary_health_is_reported(tmp_path: Path):
    rep = RecordingReporter()
    run_pretrain(tiny_spec("optim.num_epochs=1", "runtime.health_window=4"), tmp_path, rep)
    used = rep.series("words_used_lev@1")
    assert len(used) == 2 and all(0.0 < v <= 1.0 for _, v in used)
    assert rep.series("queue_age_lev@0") and rep.series("usage_entropy_lev@0")


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_native_bfloat16_is_refused_with_the_fix(tmp_path: Path, monkeypatch, native: bool):
    """Emulated bf16 made the step 10-27x slower than fp32 on an AVX2-only CPU: such a run must fail at
    its start, naming the setting and the fix; where the CPU has it, the same spec trains."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    spec = tiny_spec("runtime.precision=bf16", "runtime.device=cpu", "runtime.max_iters_per_epoch=2",
                     "optim.num_epochs=1", "runtime.knn_monitor_every=null")
    if native:
        reporter = RecordingReporter()
        run_pretrain(spec, tmp_path, reporter)
        assert len(losses(reporter)) == 2 and latest_checkpoint(tmp_path) is not None
        return
    with pytest.raises(ConfigError, match=r"runtime.precision is 'bf16' but this CPU .*use runtime.precision=fp32"):
        run_pretrain(spec, tmp_path, RecordingReporter())
    assert latest_checkpoint(tmp_path) is None
