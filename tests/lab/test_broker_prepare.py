"""The embedded SQLite broker on a new `broker.db`, prepared by several processes at once (the API's first
send, `obow lab worker --gpus 0,1`): kombu creates its tables and queue rows unguarded, and the loser of
that race used to fail the send or die ("Unrecoverable error: IntegrityError"), leaving runs queued."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy.exc import IntegrityError

from server.core.queue import QUEUES, prepare_broker

REPO = Path(__file__).resolve().parents[2]

RACER = """
import sys, time
from server.core.queue import prepare_broker
start = float(sys.argv[2])
while time.time() < start:  # every process leaves the line at the same instant
    pass
prepare_broker(sys.argv[1])
"""


def _queue_rows(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return sorted(name for (name,) in conn.execute("SELECT name FROM kombu_queue"))


def test_processes_preparing_a_new_broker_at_once_all_succeed(tmp_path: Path):
    for round_ in range(3):
        db = tmp_path / f"broker{round_}.db"
        start = time.time() + 4  # past every racer's imports
        racers = [
            subprocess.Popen([sys.executable, "-c", RACER, f"sqla+sqlite:///{db}", str(start)], cwd=REPO,
                             stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        failures = [err for racer in racers if (err := racer.communicate(timeout=60)[1]) and racer.returncode]
        assert failures == [], failures
        assert _queue_rows(db) == sorted(QUEUES)  # one row per queue: nobody inserted a second


def test_the_loser_of_the_queue_row_race_retries(tmp_path: Path, monkeypatch):
    """Deterministically: the first declare meets the other process's row (IntegrityError)."""
    declared = kombu_sqla.Channel.queue_declare
    calls = {"n": 0}

    def declare_losing_once(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise IntegrityError("INSERT INTO kombu_queue", {}, Exception("UNIQUE constraint failed"))
        return declared(self, *args, **kwargs)

    monkeypatch.setattr(kombu_sqla.Channel, "queue_declare", declare_losing_once)
    db = tmp_path / "broker.db"
    prepare_broker(f"sqla+sqlite:///{db}")
    assert calls["n"] == 1 + len(QUEUES) and _queue_rows(db) == sorted(QUEUES)


def test_a_broker_that_keeps_failing_is_reported(tmp_path: Path, monkeypatch):
    def always_fails(self, *args, **kwargs):
        raise IntegrityError("INSERT INTO kombu_queue", {}, Exception("UNIQUE constraint failed"))

    monkeypatch.setattr(kombu_sqla.Channel, "queue_declare", always_fails)
    with pytest.raises(IntegrityError):
        prepare_broker(f"sqla+sqlite:///{tmp_path / 'broker.db'}", attempts=3)


def test_redis_needs_no_preparation():
    prepare_broker("redis://127.0.0.1:1/0")  # unreachable, and never contacted
