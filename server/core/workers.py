"""Worker liveness: every worker process keeps a row in `workers` fresh while it lives, and `/healthz`
reads, per queue, when a worker of that queue was last seen.

Why a table and not the broker: Celery's own worker pings (broadcast + reply) do not exist on the
embedded SQLite transport and cost a round trip through Redis per health check; a row refreshed every
quarter lease works on every backend, answers from one indexed read, and outlives the worker by
exactly what `/healthz` needs to know (its last sign of life). A SIGKILLed worker cannot remove its row,
so its `last_seen_at` simply stops moving; a worker that shuts down cleanly removes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from server.core.models import WorkerBeat, utcnow
from server.core.text import clean_text

log = logging.getLogger("obow.lab.worker")

# Rows of workers unseen for this long are deleted when a worker starts: a lab whose workers are
# restarted every day (or SIGKILLed in tests) must not grow the table forever.
FORGET_AFTER = timedelta(days=1)


def beat(session: Session, name: str, host: str, pid: int, queues: Iterable[str]) -> None:
    """Insert or refresh this worker's row (an UPDATE first: the common case, one statement). Commits."""
    name, host = clean_text(name, 255), clean_text(host, 255)
    now = utcnow()
    changed = session.execute(
        update(WorkerBeat).where(WorkerBeat.name == name).values(last_seen_at=now, pid=pid)
    ).rowcount
    if not changed:
        session.add(
            WorkerBeat(
                name=name,
                host=host,
                pid=pid,
                queues=clean_text(",".join(sorted(queues)), 100),
                started_at=now,
                last_seen_at=now,
            )
        )
    session.commit()


def forget(session: Session, name: str) -> None:
    """A worker that shuts down cleanly removes its row. Commits."""
    session.execute(delete(WorkerBeat).where(WorkerBeat.name == name))
    session.commit()


def forget_stale(session: Session, older_than: timedelta = FORGET_AFTER) -> int:
    """Delete the rows of workers not seen for `older_than` (long dead). Commits."""
    gone = session.execute(delete(WorkerBeat).where(WorkerBeat.last_seen_at < utcnow() - older_than)).rowcount
    session.commit()
    return gone


@dataclass(frozen=True)
class QueueHealth:
    last_seen_at: datetime | None  # the freshest beat of any worker consuming the queue
    workers: int  # workers of the queue seen within the lease

    def as_dict(self) -> dict[str, Any]:
        return {
            "last_seen_at": self.last_seen_at.isoformat() if self.last_seen_at else None,
            "workers": self.workers,
        }


def queue_health(session: Session, queues: Iterable[str], lease_s: float) -> dict[str, QueueHealth]:
    """Per queue: when a worker consuming it was last seen, and how many were seen within `lease_s`.
    The table holds one row per worker process (a handful), so it is read whole."""
    rows = session.execute(select(WorkerBeat.queues, WorkerBeat.last_seen_at)).all()
    cutoff = utcnow() - timedelta(seconds=lease_s)
    out = {}
    for queue in queues:
        seen = [last for names, last in rows if queue in names.split(",")]
        out[queue] = QueueHealth(max(seen, default=None), sum(1 for last in seen if last >= cutoff))
    return out


class Beater:
    """A daemon thread that keeps one worker's row fresh every `every_s` seconds until `stop()`, which
    removes the row (a clean shutdown). Database errors are logged and retried at the next beat: a
    database restart must not kill the worker, and the lease tolerates a few missed beats."""

    def __init__(
        self, maker: sessionmaker[Session], name: str, host: str, pid: int, queues: Iterable[str], every_s: float
    ) -> None:
        self._maker, self.name, self._host, self._pid = maker, name, host, pid
        self._queues = sorted(queues)
        self._every_s = every_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worker-beat", daemon=True)

    def start(self) -> None:
        try:
            with self._maker() as session:
                forget_stale(session)
        except Exception as err:
            log.warning("could not prune old worker rows: %s", err)
        self._beat()
        self._thread.start()

    def _beat(self) -> None:
        try:
            with self._maker() as session:
                beat(session, self.name, self._host, self._pid, self._queues)
        except Exception as err:
            log.warning("worker heartbeat failed (retrying in %.1f s): %s", self._every_s, err)

    def _run(self) -> None:
        while not self._stopped.wait(self._every_s):
            self._beat()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            with self._maker() as session:
                forget(session, self.name)
        except Exception as err:
            log.warning("could not remove the worker row of %s: %s", self.name, err)
