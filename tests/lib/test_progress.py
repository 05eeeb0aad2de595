"""Phases and their ETA: the arithmetic (injected clock) and the ETA of a real tiny pretraining."""

import itertools
import tempfile
import time
from pathlib import Path

import pytest
import torch

from obow import runs
from obow.config.presets import build_pretrain_spec, deep_update, preset_dict
from obow.progress import PhaseClock, describe, eta_seconds, format_duration, phase_rate
from obow.reporting import RecordingReporter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_arithmetic():
    assert phase_rate(None, 10.0, 5) is None
    assert phase_rate((10.0, 5), 10.0, 5) is None  # nothing measured yet
    assert phase_rate((10.0, 0), 14.0, 8) == 2.0
    assert eta_seconds(8, 20, None) is None
    assert eta_seconds(8, 20, 2.0) == 6.0
    assert eta_seconds(25, 20, 2.0) == 0.0  # overshoot is done, not negative
    # upcoming phases at the rate of their unit; a unit never measured is left out
    upcoming = [("test features", 100, "images"), ("scoring", 50, "queries")]
    assert eta_seconds(10, 20, 2.0, upcoming, {}, "images") == 5.0 + 50.0
    assert eta_seconds(10, 20, 2.0, upcoming, {"queries": 25.0}, "images") == 5.0 + 50.0 + 2.0
    assert [format_duration(s) for s in (None, 0.4, 59.6, 130, 3900)] == ["?", "0s", "1m00s", "2m10s", "1h05m"]


def test_clock_starts_at_the_first_report_and_carries_rates_to_later_phases():
    clock = FakeClock()
    phases = PhaseClock(clock)
    phases.start("train features", 100, "images", upcoming=[("test features", 50, "images"), ("scoring", 10, "q")])
    clock.now += 30.0  # a slow first batch (worker start, warm-up) does not count
    phases.update(10, 100)
    assert phases.snapshot()["eta_s"] is None
    clock.now += 4.0
    phases.update(30, 100)  # 20 images in 4 s
    snap = phases.snapshot()
    assert snap["rate"] == 5.0 and snap["phase_eta_s"] == 14.0 and snap["eta_s"] == 14.0 + 10.0
    assert snap["upcoming"] == ["test features", "scoring"] and snap["index"] == 1
    assert describe(snap) == "train features 30/100 images · ETA 24s"
    clock.now += 14.0
    phases.update(100, 100)
    phases.start("test features", 50, "images", upcoming=[("scoring", 10, "q")])
    snap = phases.snapshot()
    assert snap["label"] == "test features" and snap["eta_s"] is None and snap["index"] == 2
    phases.update(0, 50)
    clock.now += 2.0
    phases.update(20, 50)
    assert phases.snapshot()["eta_s"] == 3.0  # 'q' was never measured


def test_returning_to_a_phase_continues_its_clock():
    clock = FakeClock()
    phases = PhaseClock(clock)
    phases.start("training", 100, "iterations")
    phases.update(0)
    clock.now += 10.0
    phases.update(50)
    phases.start("kNN monitor: bank features", 10, "images")
    clock.now += 10.0  # the monitor's time counts against training's rate, as it will again
    phases.start("training", 100, "iterations", done=50)
    assert phases.snapshot()["rate"] == 2.5 and phases.snapshot()["eta_s"] == 20.0
    phases.update(60)
    assert phases.snapshot()["eta_s"] == pytest.approx(40 / 3)


def test_progress_without_a_phase_is_one():
    phases = PhaseClock(FakeClock())
    phases.update(3, 9)
    assert phases.snapshot()["label"] == "progress" and phases.snapshot()["total"] == 9


class Marks(RecordingReporter):
    """Records, in this process's CPU time, every training report and the ETA shown when training passes 25%
    and 50% of its iterations."""

    def __init__(self) -> None:
        super().__init__(clock=time.process_time)
        self.marks: dict[float, tuple[int, float, float]] = {}  # share -> (done, when, ETA)
        self.cpu_log: list[tuple[int, float]] = []  # (done, when) of every training report

    def progress(self, done: int, total: int) -> None:
        super().progress(done, total)
        now = time.process_time()
        self.cpu_log.append((done, now))
        snap = self.clock.snapshot()
        for share in (0.25, 0.5):
            if share not in self.marks and total and done >= share * total and snap["eta_s"] is not None:
                self.marks[share] = (done, now, snap["eta_s"])


def test_eta_of_the_tiny_preset_follows_the_pace_the_run_had():
    """FashionMNIST/tiny with a smaller epoch (16 iterations in all, a few seconds on a CPU): the ETA shown
    at 25% and at 50% of the run must lie between the rest of the run at the slower and at the faster
    pace the run had (CPU time per iteration before that point and after it), and no phase may be silent
    for more than 3 s of CPU time.

    Why a bracket and not "within a quarter of the real finish": on a 2-core machine whose other core
    runs another test, one iteration's CPU time changes by 1.6x within seconds (shared caches and memory
    bandwidth), which no estimate can foresee and which failed CI once; an estimator that is wrong
    (wrong units, a factor, the phases to come, a rate over the wrong span) leaves the bracket on a quiet
    machine and on a busy one. benchmarks/eta_accuracy.py measures the real error on the full presets.
    The end-of-run BatchNorm recalibration is left out: it is a phase of its own with its own progress."""
    data = deep_update(preset_dict("FashionMNIST/tiny"), {
        "data": {"epoch_size": 256}, "runtime": {"device": "cpu", "bn_recalibration_images": 0},
    })
    rec = Marks()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads spin-wait for each other on a busy machine: CPU time goes astray
    try:
        with tempfile.TemporaryDirectory() as out:
            runs.run("pretrain", build_pretrain_spec(data, "tiny"), Path(out), rec)
    finally:
        torch.set_num_threads(threads)
    assert rec.phases() == ["training"] and set(rec.marks) == {0.25, 0.5}
    total = 16
    when_done = {}  # CPU time at the first report of each iteration count
    for done, when in rec.cpu_log:
        when_done.setdefault(done, when)
    assert sorted(when_done) == list(range(total + 1))
    for share, (done, _, eta) in rec.marks.items():
        left = total - done
        pace_before = (when_done[done] - when_done[0]) / done
        pace_after = (when_done[total] - when_done[done]) / left
        low, high = sorted((pace_before, pace_after))
        assert 0.9 * left * low <= eta <= 1.1 * left * high, (
            f"at {share:.0%}: ETA {eta:.2f} s for {left} iterations; the run's pace was {pace_before:.3f} s "
            f"per iteration before and {pace_after:.3f} s after"
        )
    assert rec.marks[0.5][2] < rec.marks[0.25][2]  # it counts down
    # silence in this process's CPU time, so what counts is unreported work, not the scheduler: in wall time
    # one gap between two 0.2 s iterations reached 3.5 s while the other core ran a browser test's processes
    cpu_times = [when for _, when in rec.cpu_log]
    assert max(b - a for a, b in itertools.pairwise(cpu_times)) < 3.0
