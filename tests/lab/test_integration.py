"""The real thing: uvicorn serving the app, a Celery worker process, and a broker (Redis with
PostgreSQL, or the embedded SQLite transport with SQLite). A run goes queued -> running -> succeeded,
its metrics arrive over SSE, it is exported and the file downloaded with its checksum."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from obow_lab_client import LabClient
from tests.lab.conftest import PRETRAIN, Live, start_live

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["redis+postgresql", "sqlite-broker+sqlite"])
def live(request, tmp_path) -> Iterator[Live]:
    with start_live(request, tmp_path, request.param) as running:
        yield running


def _wait_state(client: LabClient, run_id: int, state: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while (run := client.run(run_id))["state"] != state:
        assert time.monotonic() < deadline, f"run {run_id} is {run['state']}, expected {state}"
        time.sleep(0.1)
    return run


def test_worker_trains_streams_exports_and_downloads(live, tmp_path):
    with LabClient(live.url, live.token) as client:
        run = client.submit(**PRETRAIN)
        points = list(client.stream_metrics(run["id"], timeout=180))
        done = client.run(run["id"])
        assert done["state"] == "succeeded", (done["error"], live.worker_log.read_text()[-3000:])
        losses = [(step, value) for key, step, value in points if key == "loss_total"]
        assert [s for s, _ in losses][:4] == list(range(1, 5)) and all(v > 0 for _, v in losses)
        (attempt,) = done["attempts"]
        assert attempt["outcome"] == "succeeded" and attempt["pid"] != os.getpid()
        assert (done["progress_done"], done["progress_total"]) == (4, 4)
        (ckpt,) = [a for a in done["artifacts"] if a["kind"] == "checkpoint"]

        export = client.export(run["id"], "safetensors")
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
