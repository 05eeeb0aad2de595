"""What the SSE stream sends: new metric points, new log lines and state changes of one run.

An event id is the cursor `<last metric id>-<last log id>-<run version>` just after that event; each
part only grows (one worker writes a run's rows, in order), so the ids increase strictly and a client
that reconnects with `Last-Event-ID` gets exactly what it missed. Each event of a poll carries its own
cursor: a connection cut between the `metrics` and the `logs` event of one poll resumes with the logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.core.errors import NotFound
from server.core.models import TERMINAL_STATES, LogLine, Metric, Run
from server.schemas import INT64_MAX

MAX_ROWS_PER_POLL = 5000
_ID = re.compile(r"(\d{1,19})-(\d{1,19})-(-?\d{1,19})", re.ASCII)


@dataclass(frozen=True)
class Cursor:
    metric_id: int
    log_id: int
    version: int

    def __str__(self) -> str:
        return f"{self.metric_id}-{self.log_id}-{self.version}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor | None:
        """The inverse of str(); the version may be the start cursor's -1 ("5-3--1"), which a split on
        "-" would reject, sending a reconnect that resumes from such an id back to "from now"."""
        match = _ID.fullmatch(text or "")
        if match is None:
            return None
        metric_id, log_id, version = (int(part) for part in match.groups())
        if max(metric_id, log_id, abs(version)) > INT64_MAX:
            return None  # not an id this server made (the columns are 64-bit): start from now
        return cls(metric_id, log_id, version)


def start_cursor(session: Session) -> Cursor:
    """New subscribers get what happens from now on (history comes from the REST reads); the global
    maxima are O(1) index lookups whatever the run."""
    metric_id = session.scalar(select(func.max(Metric.id))) or 0
    log_id = session.scalar(select(func.max(LogLine.id))) or 0
    return Cursor(metric_id, log_id, -1)


def run_state(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "state": run.state,
        "cancel_requested": run.cancel_requested,
        "progress_done": run.progress_done,
        "progress_total": run.progress_total,
        "phase": run.phase,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error,
        "last_metrics": run.last_metrics,
        "result": run.result,
    }


def poll(
    session: Session, run_id: int, cursor: Cursor
) -> tuple[list[tuple[str, dict[str, Any], Cursor]], Cursor, bool]:
    """(events as (name, data, the cursor after it), the cursor after them all, whether the run is
    finished)."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    events: list[tuple[str, dict[str, Any], Cursor]] = []
    metric_id, log_id = cursor.metric_id, cursor.log_id
    rows = session.execute(
        select(Metric.id, Metric.key, Metric.step, Metric.value, Metric.time)
        .where(Metric.run_id == run_id, Metric.id > cursor.metric_id)
        .order_by(Metric.id)
        .limit(MAX_ROWS_PER_POLL)
    ).all()
    if rows:
        metric_id = rows[-1][0]
        points = [[r[1], r[2], r[3], r[4]] for r in rows]
        events.append(("metrics", {"points": points}, Cursor(metric_id, log_id, cursor.version)))
    lines = session.execute(
        select(LogLine.id, LogLine.time, LogLine.level, LogLine.message)
        .where(LogLine.run_id == run_id, LogLine.id > cursor.log_id)
        .order_by(LogLine.id)
        .limit(MAX_ROWS_PER_POLL)
    ).all()
    if lines:
        log_id = lines[-1][0]
        out = [{"id": r[0], "time": r[1], "level": r[2], "message": r[3]} for r in lines]
        events.append(("logs", {"lines": out}, Cursor(metric_id, log_id, cursor.version)))
    version = cursor.version
    if run.version != cursor.version:
        version = run.version
        events.append(("state", run_state(run), Cursor(metric_id, log_id, version)))
    finished = run.state in TERMINAL_STATES and not rows and not lines
    return events, Cursor(metric_id, log_id, version), finished
