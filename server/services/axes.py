"""X axes for comparing runs: a metric is stored by step (the trainer's global iteration); the other
axes are derived from what the run stored, so two runs with different batch sizes or epoch lengths can
be laid over each other fairly.

- `step`: the stored step.
- `epoch`: from the run's own `epoch` metric (the trainer logs epoch + fraction of the epoch done at
  each logged step), interpolated linearly between its points with (step 0, epoch 0) as the first one
  and extended with the last segment's slope; a run without it uses its spec's epoch count over its
  total steps (`progress_total / optim.num_epochs`, or `epochs` for evaluations).
- `images`: step x the spec's total batch size (`data.batch_size` for pretraining, over all GPUs;
  `batch_size` for evaluations).
- `time`: wall-clock seconds since the run started (its first attempt), from each point's stored time;
  a resumed run's pause is part of it.

A run that lacks what an axis needs gets no points on it, and a note saying why.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.core import metrics as metrics_service
from server.core.models import Metric, Run

AXES = {"step": "step", "epoch": "epoch", "time": "wall time (s)", "images": "images seen"}
EPOCH_KEY = "epoch"
EPOCH_POINTS = 4000  # points of the `epoch` metric read to interpolate (exact for a monotone series)


def _get(spec: Any, *path: str) -> Any:
    node = spec
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value > 0 else None


def interpolate(xs: Sequence[float], ys: Sequence[float], at: Sequence[float]) -> list[float]:
    """Piecewise-linear y(x) through the points (xs increasing), extended past the last point with the
    last segment's slope and before the first with the first one's."""
    out = []
    last = len(xs) - 1
    for x in at:
        i = bisect_left(xs, x)
        if i < len(xs) and xs[i] == x:
            out.append(float(ys[i]))
            continue
        lo = min(max(i - 1, 0), last - 1)
        hi = lo + 1
        slope = (ys[hi] - ys[lo]) / (xs[hi] - xs[lo])
        out.append(float(ys[lo] + slope * (x - xs[lo])))
    return out


def epochs_of(session: Session, run: Run, steps: Sequence[int]) -> tuple[list[float] | None, str | None]:
    if EPOCH_KEY in (run.metric_keys or []):
        e_steps, e_values, _, _ = metrics_service.series(session, run.id, EPOCH_KEY, EPOCH_POINTS)
        pairs: dict[float, float] = {0.0: 0.0}
        for s, v in zip(e_steps, e_values, strict=True):
            pairs.setdefault(float(s), float(v))
        xs = sorted(pairs)
        if len(xs) >= 2:
            return interpolate(xs, [pairs[x] for x in xs], [float(s) for s in steps]), None
    epochs = _positive(_get(run.spec, "optim", "num_epochs")) or _positive(_get(run.spec, "epochs"))
    total = _positive(run.progress_total)
    if epochs and total:
        per_epoch = total / epochs
        return [s / per_epoch for s in steps], None
    return None, "no `epoch` metric and no epoch count with a step total: no epoch axis"


def images_of(run: Run, steps: Sequence[int]) -> tuple[list[float] | None, str | None]:
    batch = _positive(_get(run.spec, "data", "batch_size")) or _positive(_get(run.spec, "batch_size"))
    if batch is None:
        return None, "no batch size in the spec: no images-seen axis"
    return [s * batch for s in steps], None


def times_of(session: Session, run: Run, key: str, steps: Sequence[int]) -> list[float | None]:
    """Seconds since the run started for each step of `key` (None where no point has that step)."""
    at: dict[int, float] = {}
    wanted = sorted(set(steps))
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows = session.execute(
            select(Metric.step, func.min(Metric.time))
            .where(Metric.run_id == run.id, Metric.key == key, Metric.step.in_(chunk))
            .group_by(Metric.step)
        ).all()
        at.update({int(s): float(t) for s, t in rows})
    if run.started_at is not None:
        origin = run.started_at.timestamp()
    else:
        origin = min(at.values(), default=0.0)
    return [at[s] - origin if s in at else None for s in steps]


def x_values(
    session: Session, run: Run, key: str, axis: str, steps: Sequence[int]
) -> tuple[list[float | None] | None, str | None]:
    """The `axis` value of each step of `key` in `run`, or (None, why not)."""
    if axis == "step":
        return [float(s) for s in steps], None
    if axis == "epoch":
        return epochs_of(session, run, steps)
    if axis == "images":
        return images_of(run, steps)
    if axis == "time":
        return times_of(session, run, key, steps), None
    raise ValueError(f"unknown axis {axis}")
