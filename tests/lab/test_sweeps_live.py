"""Sweeps against real processes: a Celery worker process training the tiny Fashion-MNIST preset, the
API's own background controller, and an API server process SIGKILLed and restarted mid-sweep.

These share Redis db 15 with the other live tests: run them under `flock /tmp/obow-live-tests.lock`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import func, select

from obow_lab_client import LabClient
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.models import Artifact, Attempt, Metric, Run, RunEvent, Sweep, SweepTrial
from server.core.queue import CeleryEnqueuer
from server.core.settings import Settings
from server.services import sweeps as sweeps_service
from server.services import tokens
from tests.lab.conftest import REDIS_URL, Live, _free_port, _truncate, start_live
from tests.lab.test_sse_restart import Server
from tests.lab.test_sweeps import sweep_body

REPO = Path(__file__).resolve().parents[2]
# the tiny preset shrunk further: a few iterations per epoch, a small kNN monitor, on the CPU
TINY = {
    "data": {"epoch_size": 256},
    "runtime": {
        "workers": 0,
        "device": "cpu",
        "print_freq": 1,
        "knn_monitor_train_size": 500,
        "knn_monitor_test_size": 200,
        "bn_recalibration_images": 0,
    },
}


@pytest.fixture
def live(request, tmp_path) -> Iterator[Live]:
    with start_live(request, tmp_path, "redis+postgresql") as running:
        yield running


def wait_sweep(client: LabClient, sweep_id: int, live_log: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (sweep := client.sweep_status(sweep_id))["state"] == "running":
        assert time.monotonic() < deadline, (sweep, live_log.read_text()[-3000:])
        time.sleep(0.5)
    return sweep


def test_a_grid_sweep_of_four_tiny_trials_runs_exactly_the_grid(live):
    grid = {"model.bow_extractor_opts.inv_delta": [5.0, 20.0], "optim.lr": [0.02, 0.05]}
    body = {
        "kind": "pretrain",
        "preset": "FashionMNIST/tiny",
        "spec": {**TINY, "optim": {"num_epochs": 1}, "runtime": {**TINY["runtime"], "max_iters_per_epoch": 3}},
        "space": {key: {"type": "choice", "values": values} for key, values in grid.items()},
        "method": "grid",
        "budget": 10,
        "parallel": 2,
        "objective": {"metric": "knn_acc@1"},
    }
    with LabClient(live.url, live.token) as client:
        created = client.create_sweep(body)
        assert created["budget"] == 4
        done = wait_sweep(client, created["id"], live.worker_log, 600)
        assert done["state"] == "finished" and done["counts"]["complete"] == 4, done
        specs = [client.run(t["run_id"])["spec"] for t in done["trials"]]
    got = sorted((s["model"]["bow_extractor_opts"]["inv_delta"], s["optim"]["lr"]) for s in specs)
    assert got == sorted((d, lr) for d in grid["model.bow_extractor_opts.inv_delta"] for lr in grid["optim.lr"])
    for trial, spec in zip(done["trials"], specs, strict=True):
        assert spec["model"]["bow_extractor_opts"]["inv_delta"] == trial["params"]["model.bow_extractor_opts.inv_delta"]
        assert spec["optim"]["num_epochs"] == 1 and spec["runtime"]["max_iters_per_epoch"] == 3
        assert spec["runtime"]["knn_monitor_every"] == 1 and spec["model"]["bow_extractor_opts"]["num_words"] == 256
        assert 0 < trial["value"] <= 100 and trial["duration_s"] > 0
    assert done["best"]["value"] == max(t["value"] for t in done["trials"])
    assert set(done["importance"] or {}) <= set(grid)


def test_a_pruned_trial_stops_at_its_next_step_with_a_checkpoint(live):
    """Trial 0 trains on all of Fashion-MNIST; trial 1 on 2 images per class, so its epoch-1 kNN (a
    20-image memory bank) is far below trial 0's: the median pruner stops it.

    Epoch 2 has 40 steps: the prune (metric flush, a controller tick, the worker's next cancel check) takes
    a second or two, and an 8-step epoch (a tenth of a second each) was sometimes over before it came."""
    body = {
        "kind": "pretrain",
        "preset": "FashionMNIST/tiny",
        "spec": {**TINY, "data": {"epoch_size": 40 * 32}, "optim": {"num_epochs": 2},
                 "runtime": {**TINY["runtime"], "max_iters_per_epoch": 40}},
        "space": {"data.subset": {"type": "choice", "values": [-1, 2]}},
        "method": "grid",
        "seed": 2,
        "budget": 2,
        "parallel": 1,
        "objective": {"metric": "knn_acc@1"},
        "pruner": {"type": "median", "every": 1, "options": {"n_startup_trials": 1}},
    }
    with LabClient(live.url, live.token) as client:
        created = client.create_sweep(body)
        assert created["trials"][0]["params"] == {"data.subset": -1}  # the seed puts the full set first
        done = wait_sweep(client, created["id"], live.worker_log, 600)
        good, poor = done["trials"]
        assert good["state"] == "complete", done
        assert poor["state"] == "pruned" and poor["note"].startswith("pruned at report 1"), done
        run = client.run(poor["run_id"])
    assert run["state"] == "cancelled", run
    maker = make_sessionmaker(make_engine(live.settings.db_url))
    with maker() as session:
        knn_steps = session.scalars(
            select(Metric.step).where(Metric.run_id == run["id"], Metric.key == "knn_acc@1").order_by(Metric.step)
        ).all()
        trained_steps = session.scalars(
            select(Metric.step).where(Metric.run_id == run["id"], Metric.key == "loss_total").order_by(Metric.step)
        ).all()
        ckpts = session.scalars(
            select(Artifact).where(Artifact.run_id == run["id"], Artifact.kind == "checkpoint")
        ).all()
        cause, cancelled_at = session.execute(
            select(RunEvent.cause, RunEvent.time).where(
                RunEvent.run_id == run["id"], RunEvent.transition == "request_cancel"
            )
        ).one()
    assert knn_steps == [40]  # one kNN report (end of epoch 1), then stopped inside epoch 2
    newest = max(ckpts, key=lambda a: a.id)
    # the stop checkpoint: at the step of epoch 2 where the cancel was seen (`checkpoint_0001.pt` again
    # when that was its first step), written after the prune asked for it
    found = re.search(r"checkpoint_0001(?:_it(\d+))?\.pt$", newest.path)
    assert found and int(found.group(1) or 0) < 40, [a.path for a in ckpts]
    # written after the prune asked for it (when the stop came at the first step of epoch 2 it reuses
    # the epoch-1 file name, so the store may hold one row for both)
    assert newest.created_at >= cancelled_at
    stopped_at = 40 + int(found.group(1) or 0)
    assert trained_steps[-1] <= stopped_at < run["progress_total"] == 80, (trained_steps, stopped_at, run)
    assert (live.settings.artifact_root / newest.path).is_file()
    assert cause.startswith(f"pruned by sweep {created['id']}")


def _stuck_sweep(session, sweep_id: int, server_log: str, worker_log: str) -> str:
    """What a sweep that did not finish was waiting for: its trials, their runs' states, message ids and
    histories, the run messages the broker holds, the worker processes alive, and both logs."""
    lines = []
    for trial in session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep_id).order_by(SweepTrial.number)):
        run = session.get(Run, trial.run_id) if trial.run_id else None
        lines.append(f"trial {trial.number} {trial.state} run {trial.run_id}: "
                     f"{run and (run.state, run.task_id, run.cancel_requested)}")
        if run is not None:
            events = session.scalars(select(RunEvent).where(RunEvent.run_id == run.id).order_by(RunEvent.id))
            lines += [f"    {e.time:%H:%M:%S.%f} {e.transition} {e.from_state}->{e.to_state}: {e.cause}"
                      for e in events]
    try:
        lines.append(f"broker holds: {sorted(CeleryEnqueuer(REDIS_URL).pending_task_ids() or [])}")
    except Exception as err:  # a diagnosis must not hide the failure it explains
        lines.append(f"broker unreadable: {err}")
    workers = subprocess.run(["pgrep", "-af", "worker_main"], capture_output=True, text=True).stdout
    lines += [f"worker processes:\n{workers}", f"server log:\n{server_log}", f"worker log:\n{worker_log}"]
    return "\n".join(lines)


def test_killing_the_api_mid_sweep_loses_no_trial_and_duplicates_none(pg_url, tmp_path):
    """The API server process (production `obow lab serve`) is SIGKILLed after 2 of 6 trials and started
    again; its successor takes the sweep over once the lease expires and finishes it."""
    upgrade(pg_url)
    _truncate(pg_url)
    redis.Redis.from_url(REDIS_URL).flushdb()
    settings = Settings(
        home=tmp_path,
        database_url=pg_url,
        broker_url=REDIS_URL,
        artifact_root_dir=tmp_path / "artifacts",
        secret_key_value="sweep-restart",
    )
    maker = make_sessionmaker(make_engine(pg_url))
    with maker() as session:
        token = tokens.create_token(session, "sweep-restart")
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}:{REPO / 'client'}",
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": REDIS_URL,
        "ARTIFACT_ROOT": str(settings.artifact_root),
        "OBOW_LAB_HOME": str(tmp_path),
        "OBOW_LAB_SECRET_KEY": "sweep-restart",
        "OMP_NUM_THREADS": "1",
    }
    server = Server(_free_port(), env, tmp_path / "server.log")
    server.start()
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.lab.worker_main"], cwd=REPO, env=env, stdout=log, stderr=log
        )
    body = sweep_body(
        spec={"steps": 6, "sleep_s": 0.3},
        space={
            "lr": {"type": "loguniform", "low": 1e-3, "high": 1.0},
            "steps": {"type": "int", "low": 4, "high": 8},
        },
        seed=11,
        budget=6,
    )
    try:
        sweep_id = httpx.post(
            f"{server.url}/api/v1/sweeps", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ).json()["id"]
        deadline = time.monotonic() + 180
        while True:
            with maker() as session:
                complete = session.scalar(
                    select(func.count())
                    .select_from(SweepTrial)
                    .where(SweepTrial.sweep_id == sweep_id, SweepTrial.state == "complete")
                )
            if complete >= 2:
                break
            assert time.monotonic() < deadline, worker_log.read_text()[-3000:]
            time.sleep(0.1)
        server.kill()
        killed_at = time.monotonic()
        with maker() as session:
            numbered = session.scalar(
                select(func.count()).select_from(SweepTrial).where(SweepTrial.sweep_id == sweep_id)
            )
        assert numbered < 6  # killed mid-sweep: its successor proposes the rest
        time.sleep(2)  # trials go on ending on the worker while no controller runs
        server.start()
        with maker() as session:
            while (sweep := session.get(Sweep, sweep_id)).state == "running":
                assert time.monotonic() - killed_at < 180, _stuck_sweep(
                    session, sweep_id, server.log.read_text()[-3000:], worker_log.read_text()[-3000:]
                )
                time.sleep(0.5)
                session.expire_all()
            rows = list(
                session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep_id).order_by(SweepTrial.number))
            )
            runs = list(session.scalars(select(Run).where(Run.name.like(f"sweep{sweep_id}-trial%"))))
            attempts = session.scalars(select(Attempt.run_id)).all()
            sweep_row = session.get(Sweep, sweep_id)
            expected = []
            for n in range(6):  # what an uninterrupted controller proposes: random draws seeded by (seed, n)
                params, _ = sweeps_service.propose(sweep_row, rows[:n], {})
                expected.append(params)
    finally:
        server.kill()
        worker.terminate()
        worker.wait(timeout=30)
    assert sweep.state == "finished"
    assert [t.number for t in rows] == list(range(6)) and all(t.state == "complete" for t in rows)
    assert len(runs) == 6 and sorted(r.id for r in runs) == sorted(t.run_id for t in rows)
    assert all(r.state == "succeeded" for r in runs)
    assert sorted(attempts) == sorted(r.id for r in runs)  # each trial trained exactly once
    assert [t.params for t in rows] == expected
    by_name = {r.name: r for r in runs}
    for trial in rows:
        run = by_name[sweeps_service.marker(sweep_id, trial.number)]
        assert (
            run.id == trial.run_id
            and run.spec["lr"] == trial.params["lr"]
            and run.spec["steps"] == trial.params["steps"]
        )
