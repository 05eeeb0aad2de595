"""Metric points: bulk ingestion and downsampled reads.

Reads of long series are cut into `max_points // 2` step buckets, each returned as its minimum and its
maximum (placed at the bucket's first and last step), so spikes survive downsampling; a narrower
`step_min`/`step_max` window gives full resolution when a chart is zoomed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from server.models import Metric

Point = tuple[str, int, float, float]  # key, step, value, unix time


def ingest(session: Session, run_id: int, points: Sequence[Point]) -> None:
    """Insert points in one round trip (COPY on PostgreSQL, multi-row INSERT elsewhere). No commit."""
    if not points:
        return
    if session.get_bind().dialect.name == "postgresql":
        cursor = session.connection().connection.driver_connection.cursor()
        with cursor.copy("COPY metrics (run_id, key, step, value, time) FROM STDIN") as copy:
            for key, step, value, when in points:
                copy.write_row((run_id, key, step, value, when))
        return
    session.execute(
        insert(Metric),
        [{"run_id": run_id, "key": k, "step": s, "value": v, "time": t} for k, s, v, t in points],
    )


def series(
    session: Session,
    run_id: int,
    key: str,
    max_points: int,
    step_min: int | None = None,
    step_max: int | None = None,
) -> tuple[list[int], list[float], bool, int]:
    """(steps, values, downsampled, number of points in the window)."""
    where = [Metric.run_id == run_id, Metric.key == key]
    if step_min is not None:
        where.append(Metric.step >= step_min)
    if step_max is not None:
        where.append(Metric.step <= step_max)
    count, lo, hi = session.execute(
        select(func.count(), func.min(Metric.step), func.max(Metric.step)).where(*where)
    ).one()
    if count <= max_points:
        rows = session.execute(select(Metric.step, Metric.value).where(*where).order_by(Metric.step)).all()
        return [r[0] for r in rows], [r[1] for r in rows], False, count
    buckets = max(1, max_points // 2)
    span = hi - lo + 1
    bucket = ((Metric.step - lo) * buckets // span).label("bucket")
    rows = session.execute(
        select(func.min(Metric.step), func.max(Metric.step), func.min(Metric.value), func.max(Metric.value))
        .where(*where)
        .group_by(bucket)
        .order_by(bucket)
    ).all()
    steps: list[int] = []
    values: list[float] = []
    for first, last, vmin, vmax in rows:
        steps += [first, last]
        values += [vmin, vmax]
    return steps, values, True, count


def keys_in(requested: Iterable[str] | None, known: Sequence[str]) -> list[str]:
    if not requested:
        return list(known)
    return [k for k in requested if k]
