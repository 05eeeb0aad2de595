"""Threads of a CPU training process: the rule by hand, and a real run that sets them and gives them back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from obow.config import load_pretrain_config
from obow.reporting import RecordingReporter
from obow.train import engine, threads
from obow.train.engine import run_pretrain


@pytest.mark.parametrize(
    ("cores", "processes", "workers", "expected"),
    [(2, 1, 1, 1), (2, 1, 0, 2), (16, 1, 4, 12), (16, 4, 2, 2), (2, 2, 1, 1), (1, 1, 8, 1)],
)
def test_default_threads_by_hand(cores, processes, workers, expected):
    assert threads.default_threads(cores, processes, workers) == expected


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _threads_seen_by_fit(monkeypatch) -> list[int]:
    seen: list[int] = []
    fit = engine.Trainer.fit

    def recording_fit(self):
        seen.append(torch.get_num_threads())
        return fit(self)

    monkeypatch.setattr(engine.Trainer, "fit", recording_fit)
    return seen


TINY = ["data.epoch_size=32", "data.batch_size=16", "optim.num_epochs=1", "runtime.bn_recalibration_images=0",
        "runtime.device=cpu"]


def test_a_cpu_run_leaves_a_core_to_each_loader_worker_and_gives_the_threads_back(
    tmp_path: Path, monkeypatch, two_threads
):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    seen = _threads_seen_by_fit(monkeypatch)
    rep = RecordingReporter()
    run_pretrain(load_pretrain_config("FashionMNIST/tiny", [*TINY, "runtime.workers=1"]), tmp_path, rep)
    assert seen == [1] and torch.get_num_threads() == 2
    assert any(msg.startswith("torch threads: 1 per process") for _, msg in rep.logs)


def test_runtime_threads_wins_and_omp_num_threads_is_respected(tmp_path: Path, monkeypatch, two_threads):
    seen = _threads_seen_by_fit(monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the environment chose: the default leaves torch's count
    run_pretrain(load_pretrain_config("FashionMNIST/tiny", [*TINY, "runtime.workers=1"]), tmp_path / "a",
                 RecordingReporter())
    run_pretrain(load_pretrain_config("FashionMNIST/tiny", [*TINY, "runtime.workers=0", "runtime.threads=1"]),
                 tmp_path / "b", RecordingReporter())
    assert seen == [2, 1] and torch.get_num_threads() == 2
