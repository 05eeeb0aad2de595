"""`obow lab up`, the embedded default, as a user starts it: a real process from a fresh folder, its real
worker child, real signals.

- Its settings come from `OBOW_LAB_*` only: with HOME, HOST and PORT set to decoys (as other programs
  set them) and no OBOW_LAB_HOME, the data goes to `./lab-data` and the server listens on 127.0.0.1.
- The worker is watched: SIGKILL it and `/api/v1/healthz` says `degraded` within a heartbeat lease,
  `lab up` logs the restart, the new worker shows up in `/healthz`, and a run submitted while no worker
  lived runs to `succeeded`.
- Every way of stopping `lab up` (SIGTERM, Ctrl-C's SIGINT, a closed terminal's SIGHUP, even SIGKILL)
  leaves no worker behind.

Uses the SQLite broker in its own temp folder (no Redis), so it needs no lock of its own; it starts
real processes, so run it under the suite's lock like the other live tests.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from obow_lab_client import LabClient
from server.core.settings import Settings
from tests.lab.conftest import PRETRAIN, REPO, _free_port

pytestmark = pytest.mark.slow

LEASE_S = 3.0  # the heartbeat lease: workers beat every 0.75 s, `degraded` after 3 s without one


@dataclass
class Up:
    proc: subprocess.Popen
    url: str
    folder: Path
    decoy_home: Path
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def token(self) -> str:
        return next(line.rsplit(" ", 1)[-1] for line in self.text().splitlines() if line.startswith("API token"))

    def health(self) -> dict:
        return httpx.get(f"{self.url}/api/v1/healthz", timeout=5).json()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    """A pid that exists and is not a zombie (a dead child its parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait(predicate, timeout: float, what: str, up: Up | None = None):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s" + (f"; lab up log:\n{up.text()[-3000:]}" if up else ""))
        time.sleep(0.2)


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets `pid` listens on, from /proc (no ss/psutil needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                if size == 4:
                    text = ".".join(str(b) for b in raw[::-1])
                else:
                    text = raw.hex()
                found.add((text, int(port, 16)))
    return found


@pytest.fixture
def start_up(tmp_path) -> Iterator:
    started: list[Up] = []

    def start(name: str = "lab") -> Up:
        folder = tmp_path / name / "fresh"
        decoy_home = tmp_path / name / "decoy-home"
        folder.mkdir(parents=True)
        decoy_home.mkdir()
        port = _free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OBOW_LAB_")},
            "PYTHONPATH": str(REPO),
            "HOME": str(decoy_home),  # decoys: the lab reads OBOW_LAB_* only
            "HOST": "0.0.0.0",
            "PORT": str(_free_port()),
            "OBOW_LAB_HEARTBEAT_TIMEOUT_S": str(LEASE_S),
            "OMP_NUM_THREADS": "1",
        }
        for name_ in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_ROOT"):
            env.pop(name_, None)
        log = tmp_path / name / "up.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "up", "--port", str(port)],
                cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        up = Up(proc, f"http://127.0.0.1:{port}", folder, decoy_home, log)
        started.append(up)
        up.decoy_port = int(env["PORT"])  # type: ignore[attr-defined]
        return up

    yield start
    for up in started:
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGTERM)
            try:
                up.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.proc.kill()
                up.proc.wait()


def _worker_of(up: Up) -> int:
    """The worker child's pid once it has announced itself in /healthz (both queues served)."""
    _wait(lambda: up.health()["status"] == "ok", 120, "no live worker in /healthz", up)
    (pid,) = _children(up.proc.pid)
    return pid


def test_settings_read_only_documented_names(monkeypatch):
    """HOME, HOST and PORT belong to other programs; the defaults stay the documented ones."""
    for name in list(os.environ):
        if name.startswith("OBOW_LAB_") or name in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_ROOT"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", "/decoy/home")
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "9999")
    settings = Settings()
    assert (settings.home, settings.host, settings.port) == (Path("lab-data"), "127.0.0.1", 8000)
    monkeypatch.setenv("OBOW_LAB_HOST", "127.0.0.2")
    monkeypatch.setenv("OBOW_LAB_PORT", "8123")
    monkeypatch.setenv("OBOW_LAB_HOME", "/elsewhere")
    assert (Settings().host, Settings().port, Settings().home) == ("127.0.0.2", 8123, Path("/elsewhere"))


def test_lab_up_uses_its_folder_and_replaces_a_killed_worker(start_up):
    up = start_up()
    first = _worker_of(up)
    # item 17: ./lab-data of the folder it was started in; nothing in the decoy HOME; 127.0.0.1 only
    data = up.folder / "lab-data"
    assert {"lab.db", "broker.db", "artifacts"} <= {p.name for p in data.iterdir()}
    assert f"data: {data.resolve()}" in up.text()
    assert list(up.decoy_home.iterdir()) == []
    port = int(up.url.rsplit(":", 1)[1])
    assert _listening(up.proc.pid) == {("127.0.0.1", port)}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{up.decoy_port}/api/v1/healthz", timeout=2)  # type: ignore[attr-defined]

    health = up.health()
    assert health["status"] == "ok"
    assert {q: h["workers"] for q, h in health["queues"].items()} == {"gpu": 1, "cpu": 1}
    seen_before = health["queues"]["gpu"]["last_seen_at"]

    os.kill(first, signal.SIGKILL)
    killed_at = time.monotonic()
    with LabClient(up.url, up.token()) as client:
        run = client.submit(**PRETRAIN)  # while no worker lives
        # /healthz turns `degraded` once the dead worker's beat is older than the lease, unless the keeper's
        # new worker (1 s back-off) has beaten it there: on a quiet machine it often has, and then no moment
        # was without a live worker (test_workers.py checks `degraded` itself, row by row)
        def degraded_or_replaced():
            health = up.health()
            if health["status"] == "degraded":
                return health
            children = _children(up.proc.pid)
            return health["status"] == "ok" and children and children != [first] and {"replaced": health}

        degraded = _wait(degraded_or_replaced, LEASE_S + 10, "/healthz neither degraded nor a new worker", up)
        degraded_after = time.monotonic() - killed_at
        if "replaced" not in degraded:
            assert degraded_after <= LEASE_S + 3
            assert degraded["queues"]["gpu"]["workers"] == 0
            assert degraded["queues"]["gpu"]["last_seen_at"] >= seen_before  # when the dead one was last seen
        _wait(lambda: "the worker exited (killed by SIGKILL)" in up.text(), 10, "the restart was not logged", up)
        second = _worker_of(up)
        back_after = time.monotonic() - killed_at
        assert second != first and "started a new worker" in up.text()
        done = _wait(
            lambda: (r := client.run(run["id"]))["state"] in ("succeeded", "failed", "cancelled") and r,
            240, "the run submitted while the worker was dead did not end", up,
        )
        assert done["state"] == "succeeded", (done["error"], up.text()[-3000:])
        (attempt,) = done["attempts"]
        assert attempt["pid"] == second
        print(
            f"worker SIGKILLed: /healthz degraded after {degraded_after:.1f} s, a new worker in /healthz after "
            f"{back_after:.1f} s, the run submitted meanwhile succeeded "
            f"{time.monotonic() - killed_at:.1f} s after the kill"
        )

    up.proc.send_signal(signal.SIGTERM)
    up.proc.wait(timeout=60)
    _wait(lambda: not _alive(second), 30, "the worker outlived lab up")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGHUP", "SIGKILL"])
def test_every_way_of_stopping_lab_up_stops_its_worker(start_up, how):
    up = start_up(how)
    worker = _worker_of(up)
    sent = time.monotonic()
    up.proc.send_signal(getattr(signal, how))
    up.proc.wait(timeout=60)
    _wait(lambda: not _alive(worker), 30, f"the worker (pid {worker}) outlived lab up stopped by {how}")
    gone_after = time.monotonic() - sent
    print(f"{how}: lab up exited {up.proc.returncode}, its worker gone {gone_after:.1f} s after the signal")
    # the worker left in order (a warm shutdown, even when lab up was SIGKILLed): its row is removed
    with sqlite3.connect(up.folder / "lab-data" / "lab.db") as db:
        assert db.execute("SELECT count(*) FROM workers").fetchone() == (0,)
    if how != "SIGKILL":  # a clean stop: the API shut down too
        assert up.proc.returncode == 0, up.text()[-3000:]
        assert "Traceback" not in up.text(), up.text()[-3000:]
