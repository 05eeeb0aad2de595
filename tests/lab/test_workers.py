"""Worker liveness rows and `/api/v1/healthz` on SQLite and PostgreSQL: a worker's Beater keeps its row
fresh and removes it on a clean stop; `/healthz` is `ok` only while every queue has a worker seen within
the heartbeat lease, `degraded` (HTTP 200) otherwise, and says per queue when one was last seen.
(`test_lab_up.py` does the same with real processes and a SIGKILLed worker.)"""

from __future__ import annotations

import time
from datetime import timedelta

from sqlalchemy import select

from server.core import workers
from server.core.models import WorkerBeat, utcnow


def _health(lab) -> dict:
    response = lab.client.get("/api/v1/healthz")
    assert response.status_code == 200, response.text
    return response.json()


def test_healthz_reports_worker_liveness_per_queue(lab):
    lease = lab.settings.heartbeat_timeout_s
    assert _health(lab) == {
        "status": "degraded",
        "queues": {"gpu": {"last_seen_at": None, "workers": 0}, "cpu": {"last_seen_at": None, "workers": 0}},
    }
    maker = lab.client.app.state.sessionmaker
    beater = workers.Beater(maker, "gpu0.1@node", "node", 1, ["gpu"], every_s=0.1)
    beater.start()
    try:
        health = _health(lab)
        assert health["status"] == "degraded"  # nobody serves the cpu queue (exports would wait)
        assert health["queues"]["gpu"]["workers"] == 1 and health["queues"]["cpu"]["workers"] == 0
        with maker() as session:
            workers.beat(session, "cpu.2@node", "node", 2, ["cpu"])
        assert _health(lab)["status"] == "ok"
        with maker() as session:
            first = session.scalar(select(WorkerBeat.last_seen_at).where(WorkerBeat.name == "gpu0.1@node"))
        time.sleep(0.4)
        with maker() as session:  # the thread refreshes it
            assert session.scalar(select(WorkerBeat.last_seen_at).where(WorkerBeat.name == "gpu0.1@node")) > first
    finally:
        beater.stop()
    with maker() as session:  # a clean stop removes the row
        assert session.scalars(select(WorkerBeat.name)).all() == ["cpu.2@node"]
        # the cpu worker's last beat is older than a lease: it is taken for dead
        stale = utcnow() - timedelta(seconds=lease + 1)
        session.query(WorkerBeat).update({"last_seen_at": stale})
        session.commit()
    health = _health(lab)
    assert health["status"] == "degraded" and health["queues"]["cpu"]["workers"] == 0
    assert health["queues"]["cpu"]["last_seen_at"].startswith(stale.isoformat()[:19])
    with maker() as session:  # rows unseen for a day go when a worker starts
        session.query(WorkerBeat).update({"last_seen_at": utcnow() - timedelta(days=2)})
        session.commit()
        assert workers.forget_stale(session) == 1


def test_worker_names_are_stored_clean(lab):
    """A node name is the host's name: NUL or a lone surrogate in it must not break the beat on PostgreSQL."""
    with lab.client.app.state.sessionmaker() as session:
        workers.beat(session, "w\x00\ud800@h", "h\x00", 3, ["gpu", "cpu"])
        (row,) = session.scalars(select(WorkerBeat)).all()
        assert row.name == "w\\0\ufffd@h" and row.queues == "cpu,gpu"
    assert _health(lab)["status"] == "ok"
