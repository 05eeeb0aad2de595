"""The real thing: uvicorn serving the app, a Celery worker process, and a broker (Redis with
PostgreSQL, or the embedded SQLite transport with SQLite). A run goes queued -> running -> succeeded,
its metrics arrive over SSE, it is exported and the file downloaded with its checksum."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import uvicorn

from server.app import create_app
from server.client import LabClient
from server.db import make_engine, make_sessionmaker, upgrade
from server.services import tokens
from server.settings import Settings
from tests.lab.conftest import REDIS_URL, _truncate

REPO = Path(__file__).resolve().parents[2]
# A tiny real pretraining: 1 epoch of 4 iterations on Fashion-MNIST.
PRETRAIN_REAL = {
    "kind": "pretrain",
    "preset": "FashionMNIST/tiny",
    "spec": {
        "optim": {"num_epochs": 1},
        "data": {"epoch_size": 64, "batch_size": 16},
        "runtime": {"print_freq": 1, "workers": 0, "device": "cpu"},
    },
}

# Until the pretraining engine is on this branch, the same flow with the fake trainer.
PRETRAIN = {"kind": "faketrain", "spec": {"steps": 4, "sleep_s": 0.2}}


@dataclass
class Live:
    url: str
    token: str
    settings: Settings
    worker_log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(params=["redis+postgresql", "sqlite-broker+sqlite"])
def live(request, tmp_path) -> Iterator[Live]:
    if request.param.startswith("redis"):
        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).flushdb()
        except redis.ConnectionError as err:
            pytest.fail(f"Redis at 127.0.0.1:6379 is unreachable (run scripts/services.sh): {err}")
        db_url, broker = request.getfixturevalue("pg_url"), REDIS_URL
        upgrade(db_url)
        _truncate(db_url)
    else:
        db_url, broker = f"sqlite:///{tmp_path / 'lab.db'}", f"sqla+sqlite:///{tmp_path / 'broker.db'}"
        upgrade(db_url)
    settings = Settings(
        home=tmp_path, database_url=db_url, broker_url=broker, artifact_root_dir=tmp_path / "artifacts",
        secret_key_value="integration",
    )
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        token = tokens.create_token(session, "integration")
    engine.dispose()

    env = {
        **os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": db_url, "CELERY_BROKER_URL": broker,
        "ARTIFACT_ROOT": str(settings.artifact_root), "OBOW_LAB_HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
    }
    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.lab.worker_main"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Live(f"http://127.0.0.1:{port}", token, settings, worker_log)
    finally:
        server.should_exit = server.force_exit = True
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
        thread.join(timeout=10)


def _wait_state(client: LabClient, run_id: int, state: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (run := client.run(run_id))["state"] != state:
        assert time.monotonic() < deadline, f"run {run_id} is {run['state']}, expected {state}"
        time.sleep(0.1)
    return run


def test_worker_trains_streams_exports_and_downloads(live, tmp_path):
    with LabClient(live.url, live.token) as client:
        run = client.submit(**{k: v for k, v in PRETRAIN.items()})
        points = list(client.stream_metrics(run["id"], timeout=180))
        done = client.run(run["id"])
        assert done["state"] == "succeeded", (done["error"], live.worker_log.read_text()[-3000:])
        losses = [(step, value) for key, step, value in points if key == "loss"]
        assert [s for s, _ in losses] == list(range(0, 4)) and all(v > 0 for _, v in losses)
        (attempt,) = done["attempts"]
        assert attempt["outcome"] == "succeeded" and attempt["pid"] != os.getpid()
        assert (done["progress_done"], done["progress_total"]) == (4, 4)
        (ckpt,) = [a for a in done["artifacts"] if a["kind"] == "checkpoint"]

        export = client.export(run["id"], "torchvision")
        assert export["queue"] == "cpu"
        finished = client.wait(export["id"], timeout=120, poll_s=0.2)
        assert finished["state"] == "succeeded", finished["error"]
        (weights,) = client.artifacts(export["id"])
        path = client.download(weights["id"], tmp_path / "weights.bin")
        assert hashlib.sha256(path.read_bytes()).hexdigest() == weights["sha256"] and ckpt["size"] > 0

        # cancelling a running run stops it promptly
        slow = client.submit("faketrain", spec={"steps": 100000, "sleep_s": 0.01})
        _wait_state(client, slow["id"], "running", 60)
        client.cancel(slow["id"])
        stopped = _wait_state(client, slow["id"], "cancelled", 15)
        assert stopped["progress_done"] < 100000
