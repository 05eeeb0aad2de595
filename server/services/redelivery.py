"""Runs whose queue message the broker no longer holds are queued again.

Redis without persistence forgets every message when it restarts; so does a failover to a replica
that had not caught up. The database is the record of what must run: a `queued` or `lost` run whose
message is missing on two sweeps in a row (one sweep could fall between a worker popping the message
and registering it as unacknowledged) is sent again. A duplicate is harmless: the worker's claim is a
guarded UPDATE, so a run is never executed twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from server.core import transitions
from server.core.models import WAITING_STATES, LogLine, Run
from server.core.notify import run_changed
from server.services.runs import Enqueue

log = logging.getLogger("obow.lab")


@dataclass
class Redelivery:
    """The sweeper's memory between two sweeps: runs seen without a message last time."""

    suspects: set[int] = field(default_factory=set)

    def sweep(self, session: Session, pending: set[str], enqueue: Enqueue) -> list[int]:
        waiting = session.execute(
            select(Run.id, Run.task_id).where(Run.state.in_(WAITING_STATES), Run.cancel_requested.is_(False))
        ).all()
        missing = {run_id for run_id, task_id in waiting if task_id is None or task_id not in pending}
        resend, self.suspects = sorted(missing & self.suspects), missing - self.suspects
        sent = []
        for run_id in resend:
            run = session.get(Run, run_id)
            if run is None or run.state not in WAITING_STATES:
                continue
            try:
                task_id = enqueue(run)
            except Exception as err:  # broker down again: the run stays queued; the next sweep retries
                log.warning("could not queue run %s again: %s", run_id, err)
                self.suspects.add(run_id)
                continue
            if not transitions.requeue(session, run_id, task_id, "the broker no longer held its message"):
                continue  # claimed meanwhile: the duplicate message finds it taken and does nothing
            run_changed(session, run_id)
            session.execute(
                insert(LogLine),
                [
                    {
                        "run_id": run_id,
                        "time": time.time(),
                        "level": "warning",
                        "message": "the broker no longer held this run's queue message (restarted without "
                        "persistence?); queued again",
                    }
                ],
            )
            session.commit()
            sent.append(run_id)
        return sent
