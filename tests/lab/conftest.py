"""Fixtures for the lab: migrated databases on SQLite and PostgreSQL, an app with a recording
enqueuer, a token. PostgreSQL and Redis must be up (scripts/services.sh): tests fail, never skip."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from server.app import create_app
from server.db import make_engine, upgrade
from server.models import Base, Run
from server.services import tokens
from server.settings import Settings
from tests.lab import fake_kinds

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/15"

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
    client: TestClient
    settings: Settings
    token: str
    enqueue: Recorder
    url: str

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
    )
    recorder = Recorder()
    app = create_app(settings, enqueue=recorder, sweep_every_s=0)
    with TestClient(app) as client, app.state.sessionmaker() as session:
        token = tokens.create_token(session, "tests")
        yield Lab(client, settings, token, recorder, url)


def count_rows(lab: Lab, table: str) -> int:
    with lab.session() as session:
        return session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


def artifact_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
