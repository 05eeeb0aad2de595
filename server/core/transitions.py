"""The run state machine: the only code that writes `runs.state`.

Each transition is a conditional UPDATE whose WHERE clause is the transition's precondition, so
concurrent writers (the API, workers, the lost-run sweeper, a redelivered message) can never move a
run along an edge that is not in the graph, and a terminal run stays terminal. A transition that
applies writes a `run_events` row with its cause in the same transaction.

Fencing: a run that is `running` names its owning attempt (`runs.attempt_id`). Every write made on
behalf of an attempt (heartbeat, metrics, progress, artifacts, finish, hand-back) carries
`attempt_id = :mine` in its WHERE clause; once the sweeper has declared the run lost (which clears the
owner) or another attempt has claimed it, the stale attempt's writes change nothing and it learns,
from the False it gets back, that it lost the run and must stop.

    create ──> queued ──claim──> running ──finish──> succeeded | failed | cancelled
                 ^  ^                │ │
                 │  └──interrupt─────┘ └──mark_lost──> lost ──claim──> running
                 └── (request_cancel: queued/lost -> cancelled at once; running -> flag, the owner stops)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from server.core.models import TERMINAL_STATES, Attempt, Run, RunEvent, RunState, utcnow
from server.core.notify import run_changed
from server.core.text import clean_json, clean_text

MAX_ERROR_CHARS = 20_000


class LostOwnership(Exception):
    """The attempt no longer owns its run (declared lost, claimed by another attempt, or ended)."""


def _event(
    session: Session,
    run_id: int,
    transition: str,
    from_state: str | None,
    to_state: str,
    cause: str,
    attempt_id: int | None = None,
) -> None:
    """The event row of a transition; also wakes the run's live streams at the commit (every transition
    changes what they show: state, cancel flag, error)."""
    run_changed(session, run_id)
    session.execute(
        insert(RunEvent).values(
            run_id=run_id,
            time=utcnow(),
            transition=transition,
            from_state=from_state,
            to_state=to_state,
            attempt_id=attempt_id,
            cause=clean_text(cause, MAX_ERROR_CHARS),
        )
    )


def _move(
    session: Session,
    run_id: int,
    from_states: Iterable[RunState],
    to_state: RunState,
    values: Mapping[str, Any],
    *where: Any,
) -> RunState | None:
    """One guarded UPDATE per candidate source state, in order; the first that applies names the edge
    taken (so the event records where the run came from without a racy read first)."""
    for source in from_states:
        moved = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.state == source, *where)
            .values(state=to_state, version=Run.version + 1, **values)
        ).rowcount
        if moved:
            return source
    return None


def create(session: Session, run: Run, cause: str = "created") -> Run:
    """Insert a new run, `queued` with no progress, and its first event. Commits."""
    run.state = RunState.QUEUED
    run.cancel_requested = False
    run.progress_done = run.progress_total = run.version = run.attempt_count = 0
    run.attempt_id = None
    run.metric_keys, run.last_metrics = [], {}
    session.add(run)
    session.flush()
    _event(session, run.id, "create", None, RunState.QUEUED, cause)
    session.commit()
    return run


def record_message(session: Session, run_id: int, task_id: str | None) -> bool:
    """Remember which broker message carries a waiting run (redelivery compares it with the broker).
    Not a state change; a run that has started or ended since keeps its row as it is."""
    changed = session.execute(
        update(Run).where(Run.id == run_id, Run.state.in_((RunState.QUEUED, RunState.LOST))).values(task_id=task_id)
    ).rowcount
    session.commit()
    return bool(changed)


def requeue(session: Session, run_id: int, task_id: str, cause: str) -> bool:
    """A waiting run (queued, or lost) was sent to the broker again: record the new message and why."""
    changed = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.state.in_((RunState.QUEUED, RunState.LOST)))
        .values(task_id=task_id)
        .returning(Run.state)
    ).scalar_one_or_none()
    if changed is not None:
        _event(session, run_id, "requeue", changed, changed, cause)
    session.commit()
    return changed is not None


def fail_unsent(session: Session, run_id: int, error: str) -> bool:
    """A new run whose message could not be sent (broker down) fails visibly instead of waiting forever."""
    error = clean_text(error, MAX_ERROR_CHARS)
    source = _move(session, run_id, [RunState.QUEUED], RunState.FAILED, {"error": error, "finished_at": utcnow()})
    if source is not None:
        _event(session, run_id, "fail_unsent", source, RunState.FAILED, error)
    session.commit()
    return source is not None


def claim(
    session: Session, run_id: int, worker_host: str, gpu: str | None, pid: int, lease_s: float
) -> Attempt | None:
    """Take a waiting run for a new attempt, numbered after the last one; None if it is not waiting
    (running elsewhere, finished, cancelled). A `running` run whose heartbeat is older than the lease
    is first declared lost (its worker died before the sweeper saw it)."""
    mark_lost(session, run_id, utcnow() - timedelta(seconds=lease_s), f"no heartbeat for {lease_s:.0f} s")
    now = utcnow()
    source = None
    for candidate in (RunState.QUEUED, RunState.LOST):
        number = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.state == candidate, Run.cancel_requested.is_(False))
            .values(
                state=RunState.RUNNING,
                attempt_count=Run.attempt_count + 1,
                started_at=now,
                heartbeat_at=now,
                error=None,
                version=Run.version + 1,
            )
            .returning(Run.attempt_count)
        ).scalar_one_or_none()
        if number is not None:
            source = candidate
            break
    if source is None:
        session.rollback()
        return None
    attempt = Attempt(run_id=run_id, number=number, worker_host=worker_host[:255], gpu=gpu, pid=pid, started_at=now)
    session.add(attempt)
    session.flush()
    session.execute(update(Run).where(Run.id == run_id).values(attempt_id=attempt.id))
    _event(
        session, run_id, "claim", source, RunState.RUNNING, f"attempt {number} on {worker_host} pid {pid}", attempt.id
    )
    session.commit()
    return attempt


def fenced_update(session: Session, run_id: int, attempt_id: int, **values: Any) -> bool:
    """A write on behalf of an attempt (heartbeat, progress, latest metrics): applies only while that
    attempt owns the running run. No commit: callers put it in the transaction of what it guards."""
    assert "state" not in values and "attempt_id" not in values, "state changes go through the transitions"
    for name in ("last_metrics", "metric_keys"):  # texts from the library (metric names): storable only
        if name in values:
            values[name] = clean_json(values[name])
    return bool(
        session.execute(
            update(Run)
            .where(Run.id == run_id, Run.attempt_id == attempt_id, Run.state == RunState.RUNNING)
            .values(**values)
        ).rowcount
    )


def heartbeat(session: Session, run_id: int, attempt_id: int) -> bool:
    """False: the attempt has lost the run and must stop."""
    owned = fenced_update(session, run_id, attempt_id, heartbeat_at=utcnow())
    session.commit()
    return owned


def mark_lost(session: Session, run_id: int, cutoff: datetime, cause: str) -> RunState | None:
    """A running run whose heartbeat is older than `cutoff` loses its owner: `lost` (claimable again),
    or `cancelled` if a cancel was asked for (nobody would claim it). Returns the new state, if any."""
    stale = (Run.heartbeat_at < cutoff,)
    now = utcnow()
    owner = session.scalar(
        update(Run)
        .where(Run.id == run_id, Run.state == RunState.RUNNING, Run.cancel_requested.is_(True), *stale)
        .values(state=RunState.CANCELLED, attempt_id=None, finished_at=now, version=Run.version + 1)
        .returning(Run.attempt_count)
    )
    new_state = RunState.CANCELLED if owner is not None else None
    if new_state is None:
        owner = session.scalar(
            update(Run)
            .where(Run.id == run_id, Run.state == RunState.RUNNING, *stale)
            .values(state=RunState.LOST, attempt_id=None, version=Run.version + 1)
            .returning(Run.attempt_count)
        )
        new_state = RunState.LOST if owner is not None else None
    if new_state is None:
        session.rollback()
        return None
    ended = _end_open_attempts(session, run_id, "lost", cause)
    _event(session, run_id, "mark_lost", RunState.RUNNING, new_state, cause, ended)
    session.commit()
    return new_state


def _end_open_attempts(session: Session, run_id: int, outcome: str, error: str | None) -> int | None:
    """End the run's unfinished attempt rows; returns the newest one's id."""
    ids = session.scalars(
        update(Attempt)
        .where(Attempt.run_id == run_id, Attempt.ended_at.is_(None))
        .values(
            ended_at=utcnow(), outcome=outcome, error=None if error is None else clean_text(error, MAX_ERROR_CHARS)
        )
        .returning(Attempt.id)
    ).all()
    return max(ids) if ids else None


def request_cancel(session: Session, run_id: int, cause: str | None = None) -> RunState | None:
    """Waiting runs are cancelled at once; a running one gets the flag its owner polls (it stops at its
    next step). Returns the state the run was in when the request applied, None if it had ended.
    `cause` names who asked when it was not the user (a sweep pruning or cancelling its trial)."""
    source = _move(
        session,
        run_id,
        [RunState.QUEUED, RunState.LOST],
        RunState.CANCELLED,
        {"cancel_requested": True, "finished_at": utcnow()},
    )
    if source is not None:
        _event(session, run_id, "request_cancel", source, RunState.CANCELLED, cause or "cancelled before it ran")
    else:
        flagged = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.state == RunState.RUNNING)
            .values(cancel_requested=True, version=Run.version + 1)
            .returning(Run.attempt_id)
        ).one_or_none()
        if flagged is not None:
            source = RunState.RUNNING
            _event(session, run_id, "request_cancel", source, RunState.RUNNING, cause or "cancel asked", flagged[0])
    session.commit()
    return source


def finish(
    session: Session,
    run_id: int,
    attempt_id: int,
    state: RunState | str,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """The owning attempt ends the run. A stale attempt's finish changes nothing but its own attempt
    row (if still open) and returns False."""
    state = RunState(state)
    if state not in TERMINAL_STATES:
        raise ValueError(f"finish needs a terminal state, not {state}")
    error = clean_text(error, MAX_ERROR_CHARS) if error is not None else None
    # the library's result as every backend can store it (NUL, lone surrogates, NaN: see clean_json);
    # a result the database refused would leave the run `running` until the sweeper re-queued it
    result = clean_json(result) if result is not None else None
    now = utcnow()
    moved = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.attempt_id == attempt_id, Run.state == RunState.RUNNING)
        .values(
            state=state, attempt_id=None, error=error, result=result, finished_at=now, version=Run.version + 1
        )
    ).rowcount
    session.execute(
        update(Attempt)
        .where(Attempt.id == attempt_id, Attempt.ended_at.is_(None))
        .values(ended_at=now, outcome=state.value if moved else "superseded", error=error)
    )
    if moved:
        _event(session, run_id, "finish", RunState.RUNNING, state, error or state.value, attempt_id)
    session.commit()
    return bool(moved)


def interrupt(session: Session, run_id: int, attempt_id: int, cause: str) -> bool:
    """The owning worker shuts down: the run (checkpointed at its last step) is `queued` again, with no
    message until the caller sends one (`requeue`)."""
    now = utcnow()
    source = _move(
        session,
        run_id,
        [RunState.RUNNING],
        RunState.QUEUED,
        {"attempt_id": None, "task_id": None},
        Run.attempt_id == attempt_id,
    )
    session.execute(
        update(Attempt)
        .where(Attempt.id == attempt_id, Attempt.ended_at.is_(None))
        .values(ended_at=now, outcome="interrupted" if source else "superseded", error=cause)
    )
    if source is not None:
        _event(session, run_id, "interrupt", source, RunState.QUEUED, cause, attempt_id)
    session.commit()
    return source is not None


def retry(session: Session, old: Run) -> Run:
    """A failed or cancelled run never runs again: a retry is a new run with the same kind, validated
    spec and parent (a pretraining retry resumes from the old run's checkpoint, which the worker copies)."""
    if old.state not in (RunState.FAILED, RunState.CANCELLED):
        raise ValueError(f"run {old.id} is {old.state}; only failed or cancelled runs can be retried")
    run = Run(
        kind=old.kind,
        name=old.name,
        preset=old.preset,
        spec=old.spec,
        parent_id=old.parent_id,
        retry_of_id=old.id,
        queue=old.queue,
        tags=list(old.tags or []),  # filed where the old one was
        note=old.note or "",
        project=old.project or "",
        launched_by=old.launched_by,
    )
    return create(session, run, cause=f"retry of run {old.id}")
