"""Faults against real processes: a worker killed with SIGKILL mid-pretraining, Redis restarted under
queued and running runs, a cancelled multi-process pretraining, and two workers handed the same run.

Everything here is real: uvicorn serving the app (with its lost-run sweeper), Celery worker processes,
PostgreSQL, Redis (the machine's, or a private redis-server this module starts and restarts), and the
library's pretraining on Fashion-MNIST.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch

from obow.io.checkpoint import load_training_checkpoint
from obow_lab_client import LabClient
from server.core.queue import RUN_TASK, make_celery
from tests.lab.conftest import Live, start_live

LEASE_S = 4.0  # heartbeat lease of these tests: a dead worker's run is lost after 4-6 s


def pretrain(**runtime) -> dict:
    """A tiny real pretraining: 2 epochs of 16 iterations (about 0.25 s each), checkpoints at 12, 16, 24, 32."""
    return {
        "kind": "pretrain",
        "preset": "FashionMNIST/tiny",
        "spec": {
            "optim": {"num_epochs": 2},
            "data": {"epoch_size": 1024, "batch_size": 64},
            "runtime": {"print_freq": 1, "workers": 0, "device": "cpu", "save_every_iters": 12, **runtime},
        },
    }


def wait_for(predicate, timeout: float, what: str, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll_s)


def wait_state(client: LabClient, run_id: int, states: tuple[str, ...], timeout: float) -> dict:
    return wait_for(
        lambda: (run := client.run(run_id))["state"] in states and run, timeout, f"run {run_id} in {states}"
    )


def loss_series(client: LabClient, run_id: int) -> tuple[list[int], list[float]]:
    (series,) = client.metrics(run_id, keys=["loss_total"], max_points=100_000)["series"]
    return series["steps"], series["values"]


def checkpoints(run: dict) -> list[dict]:
    return [a for a in run["artifacts"] if a["kind"] == "checkpoint"]


@pytest.fixture
def redis_pg(request, tmp_path) -> Iterator[Live]:
    with start_live(request, tmp_path, "redis+postgresql", heartbeat_timeout_s=LEASE_S) as live:
        yield live


def test_sigkilled_worker_run_is_lost_requeued_and_resumed_exactly(redis_pg, tmp_path):
    """SIGKILL mid-pretraining: the run is `lost` within the lease plus one sweep, a new worker resumes
    it from the last checkpoint, every step is charted once, and the final weights equal those of an
    uninterrupted run of the same seed."""
    live = redis_pg
    (victim,) = live.workers
    with LabClient(live.url, live.token) as client:
        run = client.submit(**pretrain())

        # kill it once points past a checkpoint are stored: the resumed attempt must replace them
        def past_checkpoint() -> bool:
            current = client.run(run["id"])
            assert current["state"] in ("queued", "running"), (current, live.worker_log.read_text()[-3000:])
            saved = [a["options"]["iteration"] for a in checkpoints(current)]
            return bool(saved) and current["progress_done"] >= max(saved) + 2

        wait_for(past_checkpoint, 120, "a checkpoint and points after it", poll_s=0.05)
        training = _descendants(victim.pid)
        assert training, "the run is not in a child process of the worker"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        killed_at = time.monotonic()
        # the run's process dies with its worker: nothing trains on while the run is handed on
        wait_for(lambda: not [pid for pid in training if _cmdline(pid)], 10, "the run's process to die")
        at_kill = client.run(run["id"])
        assert at_kill["state"] == "running" and at_kill["progress_done"] < 32, "it finished before the kill"
        recorded = max(a["options"]["iteration"] for a in checkpoints(at_kill))
        steps_before, values_before = loss_series(client, run["id"])

        lost = wait_state(client, run["id"], ("lost",), LEASE_S * 3 + 10)
        lost_after = time.monotonic() - killed_at
        # bounded: the lease, plus at most one sweep (half a lease), plus the polling here
        assert lost_after <= LEASE_S * 1.5 + 2, lost_after
        assert lost["attempts"][0]["outcome"] == "lost" and "no heartbeat" in lost["attempts"][0]["error"]
        live.spawn_worker()
        done = wait_state(client, run["id"], ("succeeded", "failed"), 180)
        assert done["state"] == "succeeded", (done["error"], live.worker_log.read_text()[-3000:])
        assert [a["outcome"] for a in done["attempts"]] == ["lost", "succeeded"]

        steps, values = loss_series(client, run["id"])
        assert steps == list(range(1, 33))  # every step once, none twice
        # it resumed from the newest checkpoint on disk (one written just before the kill may not have
        # been recorded as an artifact yet), and every point up to it had been stored before the kill
        logs = [line["message"] for line in client.logs(done["id"], limit=10_000)]
        (resumed,) = [m for m in logs if m.startswith("resumed from 'checkpoint_")]
        saved_at = int(resumed.rsplit("iteration ", 1)[1].rstrip(")"))
        assert saved_at >= recorded and steps_before[: saved_at] == list(range(1, saved_at + 1))
        repeated = [s for s in steps_before if s > saved_at]  # the resumed attempt ran these again
        final_values = dict(zip(steps, values, strict=True))
        assert all(final_values[s] == v for s, v in zip(steps_before, values_before, strict=True) if s <= saved_at)

        reference = client.submit(**pretrain())
        ref = wait_state(client, reference["id"], ("succeeded", "failed"), 180)
        assert ref["state"] == "succeeded", ref["error"]
        ref_steps, ref_values = loss_series(client, reference["id"])
        assert ref_steps == steps and ref_values == values  # the resumed losses are the uninterrupted ones

        # the final checkpoints, as a user downloads them (sha256 checked by the client)
        final = load_training_checkpoint(client.download(checkpoints(done)[-1]["id"], tmp_path / "resumed.pt"))
        expected = load_training_checkpoint(client.download(checkpoints(ref)[-1]["id"], tmp_path / "reference.pt"))
    assert (final["epoch"], final["iteration"]) == (expected["epoch"], expected["iteration"]) == (2, 32)
    assert final["model"].keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(final["model"][name], tensor), name
    print(
        f"\nSIGKILL: run lost {lost_after:.1f} s after the kill (lease {LEASE_S} s), resumed at step {saved_at}, "
        f"{len(repeated)} charted step(s) of the dead attempt replaced"
    )


def test_sigterm_worker_hands_its_run_back_with_a_fresh_checkpoint(redis_pg):
    """A worker stopped for a deploy (SIGTERM, warm shutdown): the run checkpoints at its current step,
    goes back to the queue at once (no lease to wait for), and the next worker resumes exactly there."""
    live = redis_pg
    (stopping,) = live.workers
    with LabClient(live.url, live.token) as client:
        run = client.submit(**pretrain())
        wait_for(lambda: client.run(run["id"])["progress_done"] >= 3, 120, "the run to train", poll_s=0.05)
        stopping.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert stopping.wait(timeout=30) == 0
        exited_after = time.monotonic() - signalled
        back = client.run(run["id"])
        assert back["state"] == "queued", (back["state"], live.worker_log.read_text()[-3000:])
        assert [(a["outcome"], a["error"]) for a in back["attempts"]] == [
            ("interrupted", "the worker shut down; the run was queued again")
        ]
        stopped_at = back["progress_done"]
        assert 3 <= stopped_at < 32
        assert max(a["options"]["iteration"] for a in checkpoints(back)) == stopped_at  # saved where it stopped
        steps_before, values_before = loss_series(client, run["id"])
        assert steps_before == list(range(1, stopped_at + 1))

        live.spawn_worker()
        done = wait_state(client, run["id"], ("succeeded", "failed"), 180)
        assert done["state"] == "succeeded", done["error"]
        assert [a["outcome"] for a in done["attempts"]] == ["interrupted", "succeeded"]
        logs = [line["message"] for line in client.logs(run["id"], limit=10_000)]
        assert any(m.startswith("resumed from") and f"iteration {stopped_at})" in m for m in logs)
        assert not any(m.startswith("resumed at step") for m in logs)  # nothing was repeated
        steps, values = loss_series(client, run["id"])
        assert steps == list(range(1, 33)) and values[:stopped_at] == values_before
    print(f"\nSIGTERM: worker exited {exited_after:.1f} s after the signal, run handed back at step {stopped_at}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server without persistence (the worst case: a restart forgets every message)."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        wait_for(lambda: _pings(client), 20, "redis-server to answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def private_redis(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_restart_loses_no_run_and_runs_none_twice(request, tmp_path, private_redis):
    """Redis killed and started again (empty) while one run is running and three are queued behind it:
    the running one finishes, the queued ones are sent again by the sweeper, each runs exactly once."""
    with (
        start_live(request, tmp_path, "redis+postgresql", heartbeat_timeout_s=LEASE_S, broker_url=private_redis.url)
        as live,
        LabClient(live.url, live.token) as client,
    ):
        running = client.submit("faketrain", spec={"steps": 150, "sleep_s": 0.04})
        wait_state(client, running["id"], ("running",), 60)
        queued = [client.submit("faketrain", spec={"steps": 5})["id"] for _ in range(3)]
        broker = redis.Redis.from_url(private_redis.url)
        assert broker.llen("gpu") == 3
        private_redis.stop()
        private_redis.start()
        assert broker.llen("gpu") == 0  # the restart forgot the queued messages
        restarted_at = time.monotonic()
        ids = [running["id"], *queued]
        finished = [wait_state(client, run_id, ("succeeded", "failed", "cancelled"), 120) for run_id in ids]
        recovered_after = time.monotonic() - restarted_at
        for run in finished:
            assert run["state"] == "succeeded", (run["id"], run["error"], live.worker_log.read_text()[-3000:])
            assert len(run["attempts"]) == 1, run["attempts"]  # never run twice
            assert [step for step, _ in _loss(client, run["id"])] == list(range(run["spec"]["steps"]))
        for run_id in queued:
            logs = [line["message"] for line in client.logs(run_id)]
            assert any("queued again" in m for m in logs), logs
        # late duplicates of every message (a broker that did keep them) change nothing
        app = make_celery(private_redis.url)
        for run_id in ids:
            app.send_task(RUN_TASK, args=[run_id], queue="gpu")
        wait_for(lambda: broker.llen("gpu") == 0, 30, "the duplicates to be consumed")
        time.sleep(1.0)
        for run_id in ids:
            again = client.run(run_id)
            assert again["state"] == "succeeded" and len(again["attempts"]) == 1
    print(f"\nRedis restart: 4 runs done {recovered_after:.1f} s after the restart, one attempt each")


def _loss(client: LabClient, run_id: int) -> list[tuple[int, float]]:
    (series,) = client.metrics(run_id, keys=["loss"], max_points=100_000)["series"]
    return list(zip(series["steps"], series["values"], strict=True))


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (children of children included), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_cancel_stops_the_training_process_group_within_10_s(redis_pg):
    """A two-process (gloo) pretraining is cancelled: both ranks stop, the run is `cancelled` within
    10 s of the request, and its last checkpoint is kept and loadable."""
    live = redis_pg
    (worker,) = live.workers
    spec = pretrain(num_processes=2)
    spec["spec"]["optim"]["num_epochs"] = 50
    with LabClient(live.url, live.token) as client:
        run = client.submit(**spec)
        wait_for(lambda: checkpoints(client.run(run["id"])), 180, "a first checkpoint")
        # the other rank is a spawned child of the worker (beside multiprocessing's resource tracker)
        ranks = wait_for(
            lambda: [pid for pid in _descendants(worker.pid) if "spawn_main" in _cmdline(pid)], 30, "the spawned rank"
        )
        requested = time.monotonic()
        client.cancel(run["id"])
        done = wait_state(client, run["id"], ("cancelled", "failed", "succeeded"), 30)
        stopped_after = time.monotonic() - requested
        assert done["state"] == "cancelled", (done["error"], live.worker_log.read_text()[-3000:])
        assert stopped_after < 10, f"cancel took {stopped_after:.1f} s"
        alive = lambda: [(pid, _cmdline(pid)) for pid in ranks if _cmdline(pid)]  # noqa: E731
        wait_for(lambda: not alive(), 10, f"the ranks to exit: {alive()}")
        last = checkpoints(done)[-1]
        payload = load_training_checkpoint(client.download(last["id"], live.settings.home / "last.pt"))
        assert payload["iteration"] == last["options"]["iteration"] == done["progress_done"] > 0
        assert worker.poll() is None  # the worker survives and takes the next run
        follow = client.submit("faketrain", spec={"steps": 3})
        assert wait_state(client, follow["id"], ("succeeded",), 60)
    print(f"\ncancel: 2-rank pretraining cancelled {stopped_after:.1f} s after the request")


def test_cancel_of_a_run_that_never_checks_is_enforced_within_10_s(redis_pg):
    """A step that ignores the cancel flag: after the grace period the worker stops the run's process
    group itself; the checkpoint written before is kept; the worker takes the next run."""
    live = redis_pg
    (worker,) = live.workers
    with LabClient(live.url, live.token) as client:
        run = client.submit("faketrain", spec={"steps": 50, "checkpoint_every": 5, "hang_at": 7, "hang_s": 120})
        (ckpt,) = wait_for(lambda: checkpoints(client.run(run["id"])), 60, "the checkpoint at step 5")
        time.sleep(0.5)  # steps 5 and 6 take microseconds: it is in its long step now
        group = _descendants(worker.pid)
        requested = time.monotonic()
        client.cancel(run["id"])
        done = wait_state(client, run["id"], ("cancelled", "failed", "succeeded"), 30)
        stopped_after = time.monotonic() - requested
        assert done["state"] == "cancelled" and stopped_after < 10, (done["state"], stopped_after)
        assert not [pid for pid in group if _cmdline(pid)], "the run's processes outlived the cancel"
        assert client.download(ckpt["id"], live.settings.home / "kept.json").read_bytes().startswith(b'{"step": 5')
        assert done["attempts"][0]["outcome"] == "cancelled" and worker.poll() is None
        follow = client.submit("faketrain", spec={"steps": 3})
        assert wait_state(client, follow["id"], ("succeeded",), 60)
    print(f"\ncancel (non-cooperative step): stopped {stopped_after:.1f} s after the request")


def test_a_run_whose_process_is_killed_fails_at_once(redis_pg):
    """The run's process is SIGKILLed (as the out-of-memory killer does): the worker, which is alive,
    fails the run right away with the cause, rather than after a heartbeat lease."""
    live = redis_pg
    (worker,) = live.workers
    with LabClient(live.url, live.token) as client:
        run = client.submit("faketrain", spec={"steps": 50, "die_at": 5, "checkpoint_every": 4})
        started = time.monotonic()
        done = wait_state(client, run["id"], ("failed", "succeeded"), 60)
        assert done["state"] == "failed" and "killed by SIGKILL" in done["error"], done["error"]
        # the proof that the live worker failed it (no lease expiry): one attempt, "failed" with the signal (an
        # expired lease gives "lost" and a requeue). The wall-time bound covers queueing and the process's start,
        # which take several seconds on 2 cores shared with the other xdist worker
        assert time.monotonic() - started < LEASE_S + 15
        assert [a["outcome"] for a in done["attempts"]] == ["failed"]
        # what was reported before its checkpoint at step 4 is stored (the reporter flushes first)
        assert [s for s, _ in _loss(client, run["id"])][:4] == list(range(4))
        follow = client.submit("faketrain", spec={"steps": 3})
        assert wait_state(client, follow["id"], ("succeeded",), 60) and worker.poll() is None


def test_two_workers_never_run_the_same_run(request, tmp_path):
    """Two worker processes, each handed the same runs several times over: one attempt per run."""
    with (
        start_live(request, tmp_path, "redis+postgresql", heartbeat_timeout_s=LEASE_S, workers=2) as live,
        LabClient(live.url, live.token) as client,
    ):
        ids = [client.submit("faketrain", spec={"steps": 40, "sleep_s": 0.01})["id"] for _ in range(3)]
        app = make_celery(live.settings.celery_broker_url)
        for _ in range(3):
            for run_id in ids:
                app.send_task(RUN_TASK, args=[run_id], queue="gpu")
        finished = [wait_state(client, run_id, ("succeeded", "failed"), 120) for run_id in ids]
        wait_for(lambda: redis.Redis.from_url(live.settings.celery_broker_url).llen("gpu") == 0, 60, "the queue")
        time.sleep(1.0)
        pids = set()
        for run in finished:
            again = client.run(run["id"])
            assert again["state"] == "succeeded" and len(again["attempts"]) == 1, again["attempts"]
            assert [s for s, _ in _loss(client, run["id"])] == list(range(40))
            pids.add(again["attempts"][0]["pid"])
        assert pids <= {w.pid for w in live.workers} and os.getpid() not in pids
