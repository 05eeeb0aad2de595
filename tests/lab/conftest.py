"""Fixtures for the lab: migrated databases on SQLite and PostgreSQL, an app with a recording
enqueuer, a token. PostgreSQL and Redis must be up (scripts/services.sh): tests fail, never skip."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import text

from obow import runs
from server.app import create_app
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.models import Base, Run
from server.core.settings import Settings
from server.services import tokens
from server.services.throttle import LoginThrottle
from tests.lab import fake_kinds

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def _redis_databases() -> tuple[int, int]:
    """The two Redis databases this test process may flush: 15/14 alone or on xdist worker gw0, 13/12 on
    gw1, and so on, so that live-worker modules on different xdist workers never share a broker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    first = 15 - 2 * index
    if first < 1:
        raise RuntimeError(f"xdist worker {worker}: Redis's 16 databases are enough for 7 test workers (-n 7 at most)")
    return first, first - 1


REDIS_DB, REDIS_SPARE_DB = _redis_databases()
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
# a second database for tests that need an empty broker of their own beside REDIS_URL's
REDIS_SPARE_URL = f"redis://127.0.0.1:6379/{REDIS_SPARE_DB}"
REPO = Path(__file__).resolve().parents[2]
# Host names the in-process apps answer: TestClient's own ("testserver") and the defaults
TEST_HOSTS = "testserver,localhost,127.0.0.1,::1"
# A tiny real pretraining: 1 epoch of 4 iterations on Fashion-MNIST, the live tests' run (without the
# preset's end-of-run BatchNorm recalibration: test_observe_live.py watches that phase).
PRETRAIN = {
    "kind": "pretrain",
    "preset": "FashionMNIST/tiny",
    "spec": {
        "optim": {"num_epochs": 1},
        "data": {"epoch_size": 64, "batch_size": 16},
        "runtime": {"print_freq": 1, "workers": 0, "device": "cpu", "bn_recalibration_images": 0},
    },
}

# The library's own kinds, before the fakes replace export/import for the in-process API tests (whose
# fake trainer writes JSON "checkpoints"); live tests put the real ones back, as their worker has them.
LIBRARY_KINDS = dict(runs.RUN_KINDS)
fake_kinds.register()


def _pg_admin() -> psycopg.Connection:
    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as err:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is unreachable (run scripts/services.sh): {err}")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    name = f"obow_lab_test_{uuid.uuid4().hex[:10]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with _pg_admin() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def migrated(tmp_path_factory, request) -> dict[str, str]:
    """Backend name -> URL of a database migrated to head (created lazily, once per session)."""
    return {}


def _db_url(backend: str, migrated: dict[str, str], tmp_path_factory, request) -> str:
    if backend not in migrated:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'lab.db'}"
        else:
            url = request.getfixturevalue("pg_url")
        upgrade(url)
        migrated[backend] = url
    return migrated[backend]


def _truncate(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@dataclass
class Recorder:
    """Stands in for Celery in API tests: remembers what would have been sent."""

    sent: list[tuple[int, str]] = field(default_factory=list)
    fail: bool = False

    def __call__(self, run: Run) -> str:
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.sent.append((run.id, run.queue))
        return f"task-{run.id}"


@dataclass
class Lab:
    """`client` sends the token on every request, as a script does (reads need it too); `anon` sends no
    credentials but what it collects itself (a browser: log in with `/login` to get a session)."""

    client: TestClient
    settings: Settings
    token: str
    enqueue: Recorder
    url: str
    anon: TestClient

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def session(self):
        return self.client.app.state.sessionmaker()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def lab(backend, migrated, tmp_path, tmp_path_factory, request) -> Iterator[Lab]:
    url = _db_url(backend, migrated, tmp_path_factory, request)
    _truncate(url)
    settings = Settings(
        home=tmp_path,
        database_url=url,
        artifact_root_dir=tmp_path / "artifacts",
        secret_key_value="test-secret",
        max_upload_mb=0.01,
        allowed_hosts_value=TEST_HOSTS,
        # in-process runs here check exact metric bookkeeping; the worker's sys/ points are tested live
        # (tests/lab/test_observe_live.py) and with a fake NVML (tests/lab/test_sysmetrics_provenance.py)
        system_metrics_s=0,
    )
    recorder = Recorder()
    app = create_app(settings, enqueue=recorder, sweep_every_s=0)
    # the security tests send dozens of wrong tokens on purpose; the back-off itself is test_auth's
    app.state.login_throttle = LoginThrottle(free=10_000)
    with TestClient(app) as client, app.state.sessionmaker() as session, TestClient(app) as anon:
        token = tokens.create_token(session, "tests")
        client.headers["Authorization"] = f"Bearer {token}"
        yield Lab(client, settings, token, recorder, url, anon)


def upload(lab: Lab, payload: bytes, name: str):
    """POST a weights file to /imports as the dashboard and the client do (raw body, bearer token)."""
    return lab.client.post(
        "/api/v1/imports",
        params={"name": name},
        content=payload,
        headers={**lab.auth, "Content-Type": "application/octet-stream"},
    )


def count_rows(lab: Lab, table: str) -> int:
    with lab.session() as session:
        return session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def artifact_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@dataclass
class Live:
    url: str
    token: str
    settings: Settings
    worker_log: Path
    env: dict[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen] = field(default_factory=list)

    def spawn_worker(self) -> subprocess.Popen:
        """Another worker process (the production command, solo pool, both queues)."""
        log = open(self.worker_log, "ab")  # noqa: SIM115 - the child keeps it; closed with the process
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.lab.worker_main"], cwd=REPO, env=self.env, stdout=log, stderr=log
        )
        log.close()
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def start_live(
    request,
    tmp_path: Path,
    mode: str,
    heartbeat_timeout_s: float = 300.0,
    broker_url: str | None = None,
    workers: int = 1,
) -> Iterator[Live]:
    """uvicorn in a thread and worker processes, on Redis+PostgreSQL or the embedded SQLite pair. The
    sweeper runs every half heartbeat lease, as in production."""
    if mode.startswith("redis"):
        broker = broker_url or REDIS_URL
        try:
            redis.Redis.from_url(broker, socket_connect_timeout=5).flushdb()
        except redis.ConnectionError as err:
            pytest.fail(f"Redis at {broker} is unreachable (run scripts/services.sh): {err}")
        db_url = request.getfixturevalue("pg_url")
        upgrade(db_url)
        _truncate(db_url)
    else:
        db_url, broker = f"sqlite:///{tmp_path / 'lab.db'}", f"sqla+sqlite:///{tmp_path / 'broker.db'}"
        upgrade(db_url)
    settings = Settings(
        home=tmp_path,
        database_url=db_url,
        broker_url=broker,
        artifact_root_dir=tmp_path / "artifacts",
        secret_key_value="integration",
        heartbeat_timeout_s=heartbeat_timeout_s,
    )
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as session:
        token = tokens.create_token(session, "integration")
    engine.dispose()

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": db_url,
        "CELERY_BROKER_URL": broker,
        "ARTIFACT_ROOT": str(settings.artifact_root),
        "OBOW_LAB_HOME": str(tmp_path),
        "OBOW_LAB_HEARTBEAT_TIMEOUT_S": str(heartbeat_timeout_s),
        "OMP_NUM_THREADS": "1",
    }
    saved = dict(runs.RUN_KINDS)
    runs.RUN_KINDS.update(LIBRARY_KINDS)
    request.addfinalizer(lambda: (runs.RUN_KINDS.clear(), runs.RUN_KINDS.update(saved)))
    port = _free_port()
    live = Live(f"http://127.0.0.1:{port}", token, settings, tmp_path / "worker.log", env)
    for _ in range(workers):
        live.spawn_worker()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield live
    finally:
        server.should_exit = True
        live.stop_workers()
        thread.join(timeout=3)
        if thread.is_alive():  # an SSE stream still open: stop without waiting for it
            server.force_exit = True
            thread.join(timeout=10)
