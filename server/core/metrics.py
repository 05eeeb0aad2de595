"""Metric points: bulk ingestion and downsampled reads.

Ingestion stores every point and keeps `metric_blocks` current: per key, min/max/count over fixed step
ranges (64 and 4096 steps). A read of a long series is answered from the blocks: the window is cut into
at most `max_points // 2` buckets made of whole blocks, and each bucket is returned as its minimum and
its maximum (placed at the bucket's first and last step), so spikes survive downsampling. Blocks cut by
the window's edges are recomputed from the raw points, and a window with few points (a zoomed chart)
gets every point.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from server.core.models import Metric, MetricBlock
from server.core.text import clean_text, is_clean

Point = tuple[str, int, float, float]  # key, step, value, unix time
# steps per block at levels 0..4: a read uses the coarsest level with at least half as many blocks as
# buckets, so it touches at most about 2 block rows per bucket, whatever the length of the run (and
# returns between half and all of the `max_points` asked for)
BLOCK_SIZES = (64, 256, 1024, 4096)
# below this many points a window whose blocks are too coarse is bucketed by the database instead
RAW_AGGREGATE_MAX = 200_000


@dataclass
class Agg:
    count: int
    min_step: int
    max_step: int
    vmin: float
    vmax: float

    def merge(self, other: Agg) -> None:
        self.count += other.count
        self.min_step = min(self.min_step, other.min_step)
        self.max_step = max(self.max_step, other.max_step)
        self.vmin = min(self.vmin, other.vmin)
        self.vmax = max(self.vmax, other.vmax)


def _blocks(points: Sequence[Point]) -> dict[tuple[str, int, int], Agg]:
    """Block aggregates of a batch at every level: the finest from the points, the others from it."""
    size0 = BLOCK_SIZES[0]
    finest: dict[tuple[str, int], list] = {}
    for key, step, value, _ in points:
        ident = (key, step // size0)
        agg = finest.get(ident)
        if agg is None:
            finest[ident] = [1, step, step, value, value]
        else:
            agg[0] += 1
            if step < agg[1]:
                agg[1] = step
            if step > agg[2]:
                agg[2] = step
            if value < agg[3]:
                agg[3] = value
            if value > agg[4]:
                agg[4] = value
    out: dict[tuple[str, int, int], Agg] = {}
    for (key, block), (count, smin, smax, vmin, vmax) in finest.items():
        out[(key, 0, block)] = Agg(count, smin, smax, vmin, vmax)
        for level in range(1, len(BLOCK_SIZES)):
            ident = (key, level, smin // BLOCK_SIZES[level])
            agg = out.get(ident)
            if agg is None:
                out[ident] = Agg(count, smin, smax, vmin, vmax)
            else:
                agg.merge(Agg(count, smin, smax, vmin, vmax))
    return out


def _upsert_blocks(session: Session, run_id: int, blocks: dict[tuple[str, int, int], Agg]) -> None:
    dialect = session.get_bind().dialect.name
    rows = [
        {
            "run_id": run_id,
            "key": k,
            "level": lvl,
            "block": b,
            "count": a.count,
            "min_step": a.min_step,
            "max_step": a.max_step,
            "vmin": a.vmin,
            "vmax": a.vmax,
        }
        for (k, lvl, b), a in blocks.items()
    ]
    if dialect == "postgresql":
        stmt = pg_insert(MetricBlock)
        lo, hi = func.least, func.greatest
    else:
        stmt = sqlite_insert(MetricBlock)
        lo, hi = func.min, func.max  # two-argument min/max are scalar functions in SQLite
    ex, table = stmt.excluded, MetricBlock.__table__.c
    stmt = stmt.on_conflict_do_update(
        index_elements=["run_id", "key", "level", "block"],
        set_={
            "count": table.count + ex.count,
            "min_step": lo(table.min_step, ex.min_step),
            "max_step": hi(table.max_step, ex.max_step),
            "vmin": lo(table.vmin, ex.vmin),
            "vmax": hi(table.vmax, ex.vmax),
        },
    )
    for start in range(0, len(rows), 5000):
        session.execute(stmt, rows[start : start + 5000])


def ingest(session: Session, run_id: int, points: Sequence[Point]) -> None:
    """Insert points in one round trip (COPY on PostgreSQL, multi-row INSERT elsewhere) and update the
    blocks. No commit: the caller's transaction covers both."""
    if not points:
        return
    keys = {point[0] for point in points}
    if not all(is_clean(key) for key in keys):  # metric names come from the library: storable only
        points = [(clean_text(k, 100), s, v, t) for k, s, v, t in points]
    if session.get_bind().dialect.name == "postgresql":
        cursor = session.connection().connection.driver_connection.cursor()
        with cursor.copy("COPY metrics (run_id, key, step, value, time) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "int8", "float8", "float8"])
            for key, step, value, when in points:
                copy.write_row((run_id, key, step, value, when))
    else:
        session.execute(
            insert(Metric),
            [{"run_id": run_id, "key": k, "step": s, "value": v, "time": t} for k, s, v, t in points],
        )
    _upsert_blocks(session, run_id, _blocks(points))


def max_step(session: Session, run_id: int, key: str) -> int | None:
    """The last stored step of a key (from the coarsest blocks: one or two rows)."""
    return session.scalar(
        select(func.max(MetricBlock.max_step)).where(
            MetricBlock.run_id == run_id, MetricBlock.key == key, MetricBlock.level == len(BLOCK_SIZES) - 1
        )
    )


def supersede(session: Session, run_id: int, key: str, from_step: int) -> int:
    """Drop a key's points at `from_step` and later, and rebuild the blocks they were part of.

    A resumed attempt repeats the steps its dead predecessor ran after the last checkpoint; its points
    replace those, so no step is counted twice in a chart, a downsampled read or a block's count. The
    blocks from the enclosing coarsest block on are deleted at every level and rebuilt from the points
    kept before `from_step` (at most one coarsest block of them). No commit. Returns the points dropped.
    """
    coarsest = BLOCK_SIZES[-1]
    base = (from_step // coarsest) * coarsest
    dropped = session.execute(
        delete(Metric).where(Metric.run_id == run_id, Metric.key == key, Metric.step >= from_step)
    ).rowcount
    for level, size in enumerate(BLOCK_SIZES):
        session.execute(
            delete(MetricBlock).where(
                MetricBlock.run_id == run_id,
                MetricBlock.key == key,
                MetricBlock.level == level,
                MetricBlock.block >= base // size,
            )
        )
    kept = session.execute(
        select(Metric.step, Metric.value).where(
            Metric.run_id == run_id, Metric.key == key, Metric.step >= base, Metric.step < from_step
        )
    ).all()
    if kept:
        _upsert_blocks(session, run_id, _blocks([(key, step, value, 0.0) for step, value in kept]))
    return dropped or 0


def _raw(session: Session, where: list, lo: int, hi: int) -> Agg | None:
    count, min_step, max_step, vmin, vmax = session.execute(
        select(
            func.count(),
            func.min(Metric.step),
            func.max(Metric.step),
            func.min(Metric.value),
            func.max(Metric.value),
        ).where(*where, Metric.step >= lo, Metric.step <= hi)
    ).one()
    return Agg(count, min_step, max_step, vmin, vmax) if count else None


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
    window_lo = step_min if step_min is not None else -(2**62)
    window_hi = step_max if step_max is not None else 2**62

    def block_rows(level: int):
        return session.execute(
            select(
                MetricBlock.block,
                MetricBlock.count,
                MetricBlock.min_step,
                MetricBlock.max_step,
                MetricBlock.vmin,
                MetricBlock.vmax,
            )
            .where(
                MetricBlock.run_id == run_id,
                MetricBlock.key == key,
                MetricBlock.level == level,
                MetricBlock.max_step >= window_lo,
                MetricBlock.min_step <= window_hi,
            )
            .order_by(MetricBlock.block)
        ).all()

    def every_point() -> tuple[list[int], list[float], bool, int]:
        rows = session.execute(
            select(Metric.step, Metric.value)
            .where(*where, Metric.step >= window_lo, Metric.step <= window_hi)
            .order_by(Metric.step)
        ).all()
        return [r[0] for r in rows], [r[1] for r in rows], False, len(rows)

    coarse = block_rows(len(BLOCK_SIZES) - 1)
    estimate = sum(r[1] for r in coarse)
    if estimate <= max_points:  # few points (or a zoomed window): every point, exactly
        return every_point()

    n_buckets = max(1, max_points // 2)
    span = min(coarse[-1][3], window_hi) - max(coarse[0][2], window_lo) + 1
    level = None
    for candidate in range(len(BLOCK_SIZES) - 1, -1, -1):
        if span // BLOCK_SIZES[candidate] >= (n_buckets + 1) // 2:
            level = candidate
            break
    if level is None:
        if estimate <= RAW_AGGREGATE_MAX:  # blocks too coarse for the buckets asked: exact SQL buckets
            return _aggregate_raw(session, where, window_lo, window_hi, n_buckets)
        level = 0
    rows = coarse if level == len(BLOCK_SIZES) - 1 else block_rows(level)
    size = BLOCK_SIZES[level]
    blocks: list[Agg] = []
    for index, (block, count, min_step, max_step, vmin, vmax) in enumerate(rows):
        start, end = block * size, block * size + size - 1
        if (index in (0, len(rows) - 1)) and (start < window_lo or end > window_hi):
            # an edge block cut by the window: its in-window part, from the raw points
            agg = _raw(session, where, max(start, window_lo), min(end, window_hi))
            if agg is not None:
                blocks.append(agg)
        else:
            blocks.append(Agg(count, min_step, max_step, vmin, vmax))
    total = sum(b.count for b in blocks)
    if total <= max_points:
        return every_point()

    lo, hi = blocks[0].min_step, blocks[-1].max_step
    span = hi - lo + 1
    buckets: list[Agg] = []
    current_bucket = None
    for agg in blocks:
        bucket = (agg.min_step - lo) * n_buckets // span
        if bucket != current_bucket:
            buckets.append(Agg(agg.count, agg.min_step, agg.max_step, agg.vmin, agg.vmax))
            current_bucket = bucket
        else:
            buckets[-1].merge(agg)
    return (*_pairs(buckets), True, total)


def _pairs(buckets: Iterable[Agg]) -> tuple[list[int], list[float]]:
    """Each bucket as (first step, min) and (last step, max); one point when it holds one step."""
    steps: list[int] = []
    values: list[float] = []
    for agg in buckets:
        if agg.min_step == agg.max_step:
            steps.append(agg.min_step)
            values.append(agg.vmin)
        else:
            steps += [agg.min_step, agg.max_step]
            values += [agg.vmin, agg.vmax]
    return steps, values


def _aggregate_raw(
    session: Session, where: list, lo: int, hi: int, n_buckets: int
) -> tuple[list[int], list[float], bool, int]:
    """Buckets computed by the database from the raw points (for series of moderate length)."""
    where = [*where, Metric.step >= lo, Metric.step <= hi]
    count, first, last = session.execute(
        select(func.count(), func.min(Metric.step), func.max(Metric.step)).where(*where)
    ).one()
    if count <= 2 * n_buckets:
        rows = session.execute(select(Metric.step, Metric.value).where(*where).order_by(Metric.step)).all()
        return [r[0] for r in rows], [r[1] for r in rows], False, count
    bucket = ((Metric.step - first) * n_buckets // (last - first + 1)).label("bucket")
    rows = session.execute(
        select(
            func.count(),
            func.min(Metric.step),
            func.max(Metric.step),
            func.min(Metric.value),
            func.max(Metric.value),
        )
        .where(*where)
        .group_by(bucket)
        .order_by(bucket)
    ).all()
    return (*_pairs(Agg(*row) for row in rows), True, count)


def keys_in(requested: Iterable[str] | None, known: Sequence[str]) -> list[str]:
    if not requested:
        return list(known)
    return [k for k in requested if k]
