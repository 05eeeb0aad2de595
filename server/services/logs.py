"""Reading a run's log lines (the worker writes them in batches)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core.models import LogLine


def read(session: Session, run_id: int, after_id: int | None, limit: int) -> list[LogLine]:
    """Lines after `after_id` (oldest first), or the last `limit` lines when no id is given."""
    query = select(LogLine).where(LogLine.run_id == run_id)
    if after_id is not None:
        return list(session.scalars(query.where(LogLine.id > after_id).order_by(LogLine.id).limit(limit)))
    return list(reversed(session.scalars(query.order_by(LogLine.id.desc()).limit(limit)).all()))
