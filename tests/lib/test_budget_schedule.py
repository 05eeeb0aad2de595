"""Schedules fitted to a time budget: the pure functions against hand computations, then real runs.

A budgeted run times its first steps, fixes its length to the steps the rest of the budget allows and
runs the lr cosine (after its warm-up) and the teacher-momentum cosine to their end within that length.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
import torch

from obow.config import OptimSpec, load_pretrain_config
from obow.errors import ConfigError, StopRequested
from obow.io.checkpoint import load_training_checkpoint
from obow.reporting import RecordingReporter
from obow.train.checkpoint import latest_checkpoint
from obow.train.engine import run_pretrain
from obow.train.schedules import fitted_learning_rate, learning_rate, steps_within_budget


def test_fitted_cosine_by_hand():
    o = OptimSpec(lr=0.2, end_lr=0.002, lr_schedule_type="cos", warmup_iters=10)
    T = 110  # 10 warm-up steps, then 100 cosine steps: iterations 10 … 109 map to progress 0 … 1
    assert [fitted_learning_rate(o, i, T) for i in (0, 4, 9)] == pytest.approx([0.02, 0.1, 0.2])
    assert fitted_learning_rate(o, 10, T) == pytest.approx(0.2)
    # iteration 43 is 33 of the 99 cosine intervals: progress 1/3
    assert fitted_learning_rate(o, 10 + 33, T) == pytest.approx(0.002 + 0.198 * 0.5 * (1 + math.cos(math.pi / 3)))
    assert fitted_learning_rate(o, T - 1, T) == pytest.approx(0.002)  # the last step is at end_lr
    assert fitted_learning_rate(o, T + 5, T) == pytest.approx(0.002)  # never below it


def test_the_warm_up_does_not_depend_on_the_length():
    """The probe steps run before the length is known: their lr must be the same for any length."""
    o = OptimSpec(lr=0.1, lr_schedule_type="cos", warmup_iters=30)
    for i in range(30):
        values = {fitted_learning_rate(o, i, T) for T in (40, 400, 4000)}
        assert len(values) == 1 and values.pop() == pytest.approx(0.1 * (i + 1) / 30)
    no_warmup = OptimSpec(lr=0.1, lr_schedule_type="cos")
    # without a warm-up the first steps differ by less than the cosine's curvature: 1 - cos(pi*i/T)
    assert fitted_learning_rate(no_warmup, 5, 1000) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 5 / 999)))


def test_fitted_schedule_needs_cos():
    with pytest.raises(ValueError, match="cos"):
        fitted_learning_rate(OptimSpec(lr_schedule_type="step_lr"), 0, 10)


def test_warmup_iters_in_the_per_epoch_cosine():
    o = OptimSpec(lr=0.08, num_epochs=4, lr_schedule_type="cos", warmup_iters=8)
    # epoch 0 holds lr, ramped (i+1)/8 for the first 8 global iterations
    assert [learning_rate(o, 0, i, 5) for i in (0, 3)] == pytest.approx([0.01, 0.04])
    assert learning_rate(o, 1, 2, 5) == pytest.approx(0.08 * 0.5 * (1 + math.cos(math.pi / 4)))  # 8th: ramp 1
    assert learning_rate(o, 1, 1, 5) == pytest.approx(0.08 * 0.5 * (1 + math.cos(math.pi / 4)) * 7 / 8)


@pytest.mark.parametrize(
    ("done", "per_step", "remaining", "cap", "expected"),
    [
        (23, 0.5, 100.0, 10_000, 223),  # 200 more steps fit
        (23, 0.5, 100.2, 10_000, 223),  # a partial step does not count
        (23, 0.5, 100.0, 150, 150),  # never beyond the nominal length
        (23, 0.5, -3.0, 10_000, 24),  # over budget already: one more step ends the schedule
        (23, 0.0, 100.0, 500, 500),  # no measurement: the nominal length
        (23, math.inf, 100.0, 500, 500),
    ],
)
def test_steps_within_budget(done, per_step, remaining, cap, expected):
    assert steps_within_budget(done, per_step, remaining, cap) == expected


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["runtime.budget_schedule=true"], "time_budget_s"),
        (["runtime.budget_schedule=true", "runtime.time_budget_s=60", "optim.lr_schedule_type=step_lr"], "cos"),
        (["optim.lr_schedule_type=cos_warmup", "optim.warmup_epochs=1", "optim.warmup_iters=5"], "warmup_iters"),
        (["runtime.budget_probe_steps=0"], "budget_probe_steps"),
        (["runtime.budget_reserve=1"], "budget_reserve"),
    ],
)
def test_budget_settings_are_checked(overrides, field):
    with pytest.raises(ConfigError, match=field):
        load_pretrain_config("FashionMNIST/tiny", overrides)


BUDGET = ["data.epoch_size=2048", "data.batch_size=16", "runtime.print_freq=1", "runtime.workers=0",
          "optim.num_epochs=20", "optim.lr=0.05", "optim.end_lr=0.001", "optim.warmup_iters=4",
          "runtime.budget_schedule=true", "runtime.budget_probe_steps=4", "runtime.budget_reserve=0.4"]


@pytest.fixture
def one_thread():
    """One thread: on a loaded 2-core machine two OpenMP threads can make a step 30x slower, and the
    budgeted runs here need steps of a steady length far below their 12 s budget."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_budgeted_run_ends_its_schedules_within_the_budget(tmp_path: Path, one_thread):
    budget = 12.0
    spec = load_pretrain_config("FashionMNIST/tiny", [*BUDGET, f"runtime.time_budget_s={budget}"])
    rep = RecordingReporter()
    start = time.monotonic()
    result = run_pretrain(spec, tmp_path, rep)  # returns normally: the schedule ended, no stop was needed
    elapsed = time.monotonic() - start
    total = result["schedule_iterations"]
    nominal = 128 * 20
    assert 7 < total < nominal and result["iterations"] == total, result
    assert elapsed < budget + 2  # + loading the data and the final checkpoint
    fits = [msg for _, msg in rep.logs if msg.startswith("time budget:")]
    assert f"to {total} steps" in fits[-1] and "fitted to" in fits[0], fits
    # the step of the last change of length (none: the first fit, after the 3 + 4 probe steps)
    changed_at = int(re.search(r"at step (\d+)", fits[-1]).group(1)) if len(fits) > 1 else 7

    lrs = dict(rep.series("lr"))
    alphas = dict(rep.series("alpha"))
    assert sorted(lrs) == list(range(1, total + 1))  # every step reported once (print_freq 1)
    assert lrs[1] == pytest.approx(0.05 / 4) and lrs[4] == pytest.approx(0.05)  # the warm-up
    assert lrs[total] == pytest.approx(0.001)  # lr at end_lr on the last step
    # the momentum: 1 - (1 - α0)·½(1 + cos(π·i/T)) with i the 0-based step, computed here
    gap = 1 - spec.model.alpha
    last = 1 - gap * 0.5 * (1 + math.cos(math.pi * (total - 1) / total))
    assert alphas[total] == pytest.approx(last, abs=1e-12) and alphas[total] > 1 - gap * (math.pi / total) ** 2
    # the steps after the last change follow the fitted cosine exactly (reported step s ran at 0-based s - 1)
    for step in range(changed_at + 1, total + 1):
        assert lrs[step] == pytest.approx(fitted_learning_rate(spec.optim, step - 1, total)), step

    ckpt = load_training_checkpoint(latest_checkpoint(tmp_path))
    assert ckpt["iteration"] == total and ckpt["schedule_iterations"] == total


def test_a_resumed_budgeted_run_keeps_its_length(tmp_path: Path, one_thread):
    spec = load_pretrain_config("FashionMNIST/tiny", [*BUDGET, "runtime.time_budget_s=12",
                                                       "runtime.save_every_iters=1"])
    first = RecordingReporter(stop_after_metrics=9)  # stops after step 9, past the probe (steps 4-7)
    with pytest.raises(StopRequested):
        run_pretrain(spec, tmp_path, first)
    total = load_training_checkpoint(latest_checkpoint(tmp_path))["schedule_iterations"]
    assert total is not None and total > 9
    second = RecordingReporter()
    result = run_pretrain(spec, tmp_path, second)
    # The resumed run follows the saved length. It may only shorten it, when this (shared) machine has
    # slowed down since the probe: then it says so, and the steps after the change follow the new length.
    final = result["schedule_iterations"]
    assert result["iterations"] == final and 9 < final <= total
    changes = [msg for _, msg in second.logs if msg.startswith("time budget:")]
    assert all("shortened" in msg for msg in changes), changes  # never re-fitted nor lengthened on resume
    steps_of_change = [int(re.search(r"at step (\d+)", msg).group(1)) for msg in changes]
    if final != total:
        assert f"to {final} steps" in changes[-1] and f"shortened from {total} " in changes[0], changes
    first_change, last_change = (steps_of_change[0], steps_of_change[-1]) if changes else (final, final)
    lrs = dict(second.series("lr"))
    assert sorted(lrs) == list(range(10, final + 1)) and lrs[final] == pytest.approx(0.001)
    for step in range(10, first_change + 1):  # until the first change: the saved length's cosine
        assert lrs[step] == pytest.approx(fitted_learning_rate(spec.optim, step - 1, total)), step
    for step in range(last_change + 1, final + 1):  # after the last change: the new length's cosine
        assert lrs[step] == pytest.approx(fitted_learning_rate(spec.optim, step - 1, final)), step


def _fake_clock(monkeypatch) -> dict[str, float]:
    from obow.train import engine

    clock = {"now": 0.0}
    monkeypatch.setattr(engine.time, "monotonic", lambda: clock["now"])
    return clock


def test_the_length_follows_the_pace_shortened_any_time_lengthened_only_early(tmp_path: Path, monkeypatch):
    """The probe and re-checks on a fake clock: 3 unmeasured steps, a 4-step probe, then a re-check every
    20 steps that shortens the schedule when the pace falls, lengthens it when the pace rises in the first
    half of the run, and leaves it when the pace rises later."""
    from obow.train import engine

    spec = load_pretrain_config("FashionMNIST/tiny", [*BUDGET, "runtime.time_budget_s=100", "runtime.budget_reserve=0"])
    rep = RecordingReporter()
    trainer = engine.Trainer(spec, tmp_path, rep)
    clock = _fake_clock(monkeypatch)
    probe = {"first_step": 0}

    def steps(n: int, seconds_each: float) -> None:
        for _ in range(n):
            clock["now"] += seconds_each
            trainer.state.global_iteration += 1
            trainer._budget_probe(0.0, 100.0, probe)

    # (step lengths are powers of two: the arithmetic below is exact in floating point)
    steps(6, 0.125)
    assert trainer.schedule_iterations is None  # probe window: steps 4-7
    steps(1, 0.125)  # step 7 at t=0.875: 0.125 s/step, 99.125 s left -> 793 more steps
    assert trainer.schedule_iterations == 800 and trainer.model.total_iterations == 800
    steps(20, 0.125)  # same pace: unchanged
    assert trainer.schedule_iterations == 800
    steps(20, 0.5)  # step 47 at t=13.375: 0.5 s/step, 86.625 s left -> 173 more steps
    assert trainer.schedule_iterations == 47 + 173 and trainer.model.total_iterations == 220
    assert any("shortened from 800 to 220" in msg for _, msg in rep.logs)
    steps(20, 0.5)  # step 67 at t=23.375: same slow pace, 76.625 s left -> 153 more: 220, unchanged
    assert trainer.schedule_iterations == 220
    steps(20, 0.25)  # step 87 at t=28.375: 0.25 s/step, 71.625 s left -> 286 more; 87 < 220 / 2
    assert trainer.schedule_iterations == 87 + 286 and trainer.model.total_iterations == 373
    assert any("lengthened from 220 to 373" in msg for _, msg in rep.logs)
    steps(120, 0.25)  # same pace, unchanged; step 207 at t=58.375
    assert trainer.schedule_iterations == 373
    steps(20, 0.0625)  # step 227 at t=59.625: faster still, but past half the run: kept
    assert trainer.schedule_iterations == 373


def test_a_spent_budget_ends_the_run_like_a_finished_one(tmp_path: Path, one_thread):
    """Without a fitted schedule the budget cuts the run inside an epoch; it still returns normally (the
    lab records it as completed, not cancelled) with the final monitor and a checkpoint at that step."""
    spec = load_pretrain_config("FashionMNIST/tiny", [
        "data.epoch_size=4096", "data.batch_size=16", "runtime.workers=0", "runtime.time_budget_s=4",
        "runtime.knn_monitor_every=1", "runtime.knn_monitor_train_size=100", "runtime.knn_monitor_test_size=50",
    ])
    rep = RecordingReporter()
    result = run_pretrain(spec, tmp_path, rep)  # no StopRequested
    steps = result["iterations"]
    assert result["time_budget_spent"] and 0 < steps < 256 and result["epochs"] == round(steps / 256, 4)
    assert [step for step, _ in rep.series("knn_acc@1")] == [steps]
    assert any(msg.startswith(f"time budget spent at epoch 1 iteration {steps}") for _, msg in rep.logs)
    ckpt = load_training_checkpoint(latest_checkpoint(tmp_path))
    assert ckpt["iteration"] == steps and ckpt["schedule_iterations"] is None


EPOCH_END = ["data.epoch_size=64", "data.batch_size=16", "runtime.workers=0", "optim.num_epochs=3",
             "runtime.time_budget_s=100", "runtime.knn_monitor_every=1", "runtime.knn_monitor_train_size=100",
             "runtime.knn_monitor_test_size=50"]


@pytest.mark.parametrize("every", [1, 2])
def test_a_budget_spent_during_the_epoch_end_monitors_ends_the_run_there(
    tmp_path: Path, monkeypatch, one_thread, every: int
):
    """Spent while epoch 1's monitors run: the run ends at that step with those monitors and that
    checkpoint, not with a second monitor pass and a second save of the same step. When epoch 1 had no
    monitor to run (every 2 epochs), the run's final monitor runs at that step, once."""
    from obow.train import engine

    clock = _fake_clock(monkeypatch)
    monitors = engine.Trainer.epoch_end_monitors

    def slow_monitors(self, completed_epochs: int, final: bool = False):
        values = monitors(self, completed_epochs, final)
        clock["now"] += 1000.0  # the monitor outlasts the budget
        return values

    monkeypatch.setattr(engine.Trainer, "epoch_end_monitors", slow_monitors)
    spec = load_pretrain_config(
        "FashionMNIST/tiny", [*EPOCH_END, f"runtime.knn_monitor_every={every}", "runtime.bn_recalibration_images=0"]
    )
    rep = RecordingReporter()
    result = run_pretrain(spec, tmp_path, rep)
    assert result["time_budget_spent"] and result["iterations"] == 4 and result["epochs"] == 1
    assert [step for step, _ in rep.series("knn_acc@1")] == [4]
    ended_there = any("time budget spent at the end of epoch 1" in msg for _, msg in rep.logs)
    final_pass = any(msg.startswith("time budget spent at epoch 2 iteration 0") for _, msg in rep.logs)
    assert (ended_there, final_pass) == ((True, False) if every == 1 else (False, True))
    assert load_training_checkpoint(latest_checkpoint(tmp_path))["iteration"] == 4


def test_a_budget_spent_in_an_epochs_last_step_makes_that_epoch_end_the_final_one(
    tmp_path: Path, monkeypatch, one_thread
):
    """Spent during the epoch's last step: its epoch end is the run's end, so the final BatchNorm
    recalibration runs before its one monitor pass."""
    from obow.train import engine

    clock = _fake_clock(monkeypatch)
    step = engine.training_step

    def timed_step(network, optimizer, batch, lr, autocast, iteration):
        values = step(network, optimizer, batch, lr, autocast, iteration)
        if iteration == 3:
            clock["now"] += 1000.0
        return values

    monkeypatch.setattr(engine, "training_step", timed_step)
    spec = load_pretrain_config("FashionMNIST/tiny", [*EPOCH_END, "runtime.bn_recalibration_images=64"])
    rep = RecordingReporter()
    result = run_pretrain(spec, tmp_path, rep)
    assert result["time_budget_spent"] and result["iterations"] == 4 and result["epochs"] == 1
    assert [step for step, _ in rep.series("knn_acc@1")] == [4]
    logs = [msg for _, msg in rep.logs]
    recalibrated = next(i for i, msg in enumerate(logs) if "re-estimated on 64 clean views" in msg)
    ended = next(i for i, msg in enumerate(logs) if msg.startswith("epoch 1 done (time budget spent"))
    assert recalibrated < ended
    assert load_training_checkpoint(latest_checkpoint(tmp_path))["iteration"] == 4
