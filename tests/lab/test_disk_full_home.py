"""Disk full under the lab home, with the SQLite database on the same disk (issue #16, item 5).

The lab's home (database, artifacts) is a small tmpfs mounted by the test (needs root). A run that is
training when the disk fills used to stay `running` without an error: its checkpoint failed and so did
every commit, including the one recording the failure. Now the worker's reporter checks free space before
every batch it stores and before every checkpoint, and stops the run while `OBOW_LAB_MIN_FREE_MB` is
still free, so the reason is recorded and shown on the run page. The run goes through the worker's real
path: a supervised (forked) run process, its heartbeat kept by the supervising process.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.core.db import upgrade
from server.core.models import Artifact, Run
from server.core.settings import Settings
from server.services import tokens
from worker.tasks import execute_run

TMPFS_SIZE = "16m"


@pytest.fixture
def full_home(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(home)], capture_output=True)
    if done.returncode:
        pytest.fail(f"mounting a tmpfs failed (the test needs root): {done.stderr.decode().strip()}")
    try:
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=True)


def fill_leaving(directory: Path, leave_bytes: int) -> Path:
    """Fill the filesystem until ENOSPC, then give `leave_bytes` back."""
    filler = directory / "filler.bin"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 16))
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    os.truncate(filler, max(0, filler.stat().st_size - leave_bytes))
    return filler


def test_a_full_home_disk_fails_the_run_with_a_reason_shown_on_its_page(full_home: Path):
    settings = Settings(
        home=full_home, secret_key_value="disk", min_free_mb=4, heartbeat_timeout_s=60, cancel_grace_s=1,
        allowed_hosts_value="testserver",
    )
    upgrade(settings.db_url)
    app = create_app(settings, enqueue=lambda run: f"task-{run.id}", sweep_every_s=0)
    with TestClient(app) as client, app.state.sessionmaker() as session:
        token = tokens.create_token(session, "disk")
        auth = {"Authorization": f"Bearer {token}"}
        run = client.post(
            "/api/v1/runs",
            json={"kind": "faketrain", "spec": {"steps": 400, "sleep_s": 0.05, "checkpoint_every": 5}},
            headers=auth,
        ).json()
        outcome: list[str] = []
        worker = threading.Thread(target=lambda: outcome.append(execute_run(run["id"], settings, isolate=True)))
        worker.start()
        deadline = time.monotonic() + 60
        while True:  # training, with a first checkpoint recorded
            with app.state.sessionmaker() as s:
                if s.query(Artifact).filter_by(run_id=run["id"]).count():
                    break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        fill_leaving(full_home, 2 * 2**20)  # 2 MB left: below the 4 MB the lab keeps
        filled = time.monotonic()
        worker.join(timeout=60)
        assert outcome == ["failed"]
        print(f"\nrun failed {time.monotonic() - filled:.2f} s after the disk filled")

        with app.state.sessionmaker() as s:
            stored = s.get(Run, run["id"])
            assert stored.state == "failed" and stored.attempt_count == 1
            assert "almost full" in stored.error and str(full_home) in stored.error, stored.error
            assert "OBOW_LAB_MIN_FREE_MB" in stored.error
            assert 0 < stored.progress_done < 400  # stopped mid-run, not at the end
        client.post("/login", data={"token": token})
        page = client.get(f"/runs/{run['id']}")
        assert page.status_code == 200 and "almost full" in page.text
