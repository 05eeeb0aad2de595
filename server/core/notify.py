"""Change notifications for a run's live stream: whoever commits rows that a run's SSE stream shows (the
worker's reporter: metrics, logs, progress; a state transition; an artifact) calls `run_changed` inside
that transaction, and the streams of that run wake up at the commit instead of polling the database.

Two carriers, because the writer and the API are often different processes:
- PostgreSQL: `pg_notify('obow_run', '<run id>')` in the writer's transaction. PostgreSQL delivers it
  at commit (never for a rolled-back transaction, never before the rows are visible) to every session
  that listens; each API process holds one listening connection (`server.services.notifier`).
- In-process, every backend: listeners registered here are called after the commit of a session that
  announced a change. On SQLite this is how a worker thread in the API process (tests, the in-process
  worker) or an API-side transition (cancel) wakes the streams; across processes on SQLite the API
  watches the database files instead (see the notifier).
Whatever the carrier, a stream also re-reads on its own every few seconds, so a lost notification
delays an event, never loses it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import event, text
from sqlalchemy.orm import Session

CHANNEL = "obow_run"
_PENDING = "obow_runs_changed"  # Session.info key: run ids announced in the current transaction

log = logging.getLogger("obow.lab.notify")
_listeners: list[Callable[[int], None]] = []
_lock = threading.Lock()


def run_changed(session: Session, run_id: int) -> None:
    """Announce, inside the transaction that writes them, new rows of a run's stream. Delivered at commit;
    dropped on rollback."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": str(run_id)})
    session.info.setdefault(_PENDING, set()).add(int(run_id))


def add_listener(listener: Callable[[int], None]) -> None:
    """`listener(run_id)` is called after each commit that announced that run (in the committing thread)."""
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Callable[[int], None]) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


@event.listens_for(Session, "after_commit")
def _deliver(session: Session) -> None:
    changed = session.info.pop(_PENDING, None)
    if not changed:
        return
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        for run_id in changed:
            try:
                listener(run_id)
            except Exception:  # a listener's bug must never fail the writer's commit
                log.exception("run change listener failed")


@event.listens_for(Session, "after_rollback")
def _drop(session: Session) -> None:
    session.info.pop(_PENDING, None)
