"""Creating, listing, cancelling and retrying runs; finding lost ones.

Every state change is one guarded UPDATE (`... WHERE state IN (...)`), so two writers (the API, a
worker, the lost-run sweeper) can never move a run backwards: a terminal run stays terminal.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from obow.config import list_presets, preset_dict
from obow.config.presets import deep_update
from obow.errors import ConfigError
from server.models import TERMINAL_STATES, Artifact, Attempt, Run, utcnow
from server.schemas import RunCreate
from server.services import kinds as kinds_service
from server.services.errors import Conflict, Invalid, NotFound, invalid

Enqueue = Callable[[Run], str]

# artifact kinds a child run can take its weights from, in order of preference
WEIGHT_KINDS = ("checkpoint", "backbone", "import")
PATHLIKE_KEY = re.compile(r"(path|dir|root|file|checkpoint|source|src|dst|out|name)", re.IGNORECASE)


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    return run


def list_runs(
    session: Session,
    state: str | None = None,
    kind: str | None = None,
    parent_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Run], int]:
    query = select(Run)
    if state:
        query = query.where(Run.state.in_(state.split(",")))
    if kind:
        query = query.where(Run.kind.in_(kind.split(",")))
    if parent_id is not None:
        query = query.where(Run.parent_id == parent_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    items = session.scalars(query.order_by(Run.id.desc()).limit(limit).offset(offset)).all()
    return list(items), total


def _check_paths(value: Any, loc: tuple[str | int, ...], errors: list[dict[str, Any]], pathish: bool) -> None:
    """Reject `..` components and NUL bytes in every path-like field, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_paths(item, (*loc, key), errors, pathish or bool(PATHLIKE_KEY.search(str(key))))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_paths(item, (*loc, index), errors, pathish)
    elif isinstance(value, str) and ("\x00" in value or (pathish and ".." in PurePosixPath(value).parts)):
        errors.append(
            {"loc": list(loc), "msg": "path must not contain '..' or NUL", "type": "path_traversal"}
        )


def latest_weights(session: Session, run: Run) -> Artifact | None:
    """The newest weights a child run can start from: a training checkpoint, else a backbone (what an
    import of a feature extractor gives), else the raw upload of an import that has not run yet."""
    for kind in WEIGHT_KINDS:
        found = session.scalars(
            select(Artifact)
            .where(Artifact.run_id == run.id, Artifact.kind == kind)
            .order_by(Artifact.id.desc())
        ).first()
        if found is not None:
            return found
    return None


def runs_with_weights(session: Session, limit: int = 100) -> list[Run]:
    """Recent runs an evaluation or export can start from (they have a checkpoint or a backbone)."""
    ids = (
        select(Artifact.run_id)
        .where(Artifact.kind.in_(WEIGHT_KINDS))
        .group_by(Artifact.run_id)
        .order_by(Artifact.run_id.desc())
        .limit(limit)
    )
    return list(session.scalars(select(Run).where(Run.id.in_(ids)).order_by(Run.id.desc())))


def build_spec(session: Session, body: RunCreate, artifact_root, extra: dict[str, Any] | None = None) -> dict:
    """Preset + overrides + parent's checkpoint, validated by the kind's spec class."""
    if body.kind not in kinds_service.kinds():
        raise invalid(
            ("body", "kind"), f"unknown run kind '{body.kind}'; known: {', '.join(kinds_service.kinds())}"
        )
    if body.kind == "import":  # its input is an uploaded file, never a path on the server
        raise invalid(("body", "kind"), "imports start from an upload: POST /api/v1/imports with the file")
    errors: list[dict[str, Any]] = []
    _check_paths(body.spec, ("body", "spec"), errors, False)
    ckpt_field = kinds_service.checkpoint_field(body.kind) if body.kind != "import" else None
    for field in kinds_service.CHECKPOINT_FIELDS:
        if field in body.spec:
            errors.append(
                {
                    "loc": ["body", "spec", field],
                    "msg": "weights come from a parent run: set parent_id instead of a path",
                    "type": "value_error",
                }
            )
    if errors:
        raise Invalid(errors)

    data: dict[str, Any] = {}
    if body.preset is not None:
        if body.preset not in list_presets():
            raise invalid(("body", "preset"), f"unknown preset '{body.preset}'; see GET /api/v1/presets")
        preset = preset_dict(body.preset)
        preset_kind = preset.pop("kind", "pretrain")
        if preset_kind != body.kind:
            raise invalid(("body", "preset"), f"preset '{body.preset}' is for kind '{preset_kind}'")
        data = preset
    data = deep_update(data, body.spec)
    data = deep_update(data, extra or {})
    cls = kinds_service.spec_class(body.kind)
    if "name" in cls.model_fields and "name" not in data and body.preset:
        data["name"] = body.preset
    if "kind" in cls.model_fields:
        data.setdefault("kind", body.kind)

    if body.parent_id is not None:
        parent = session.get(Run, body.parent_id)
        if parent is None:
            raise invalid(("body", "parent_id"), f"run {body.parent_id} does not exist")
        if ckpt_field is None:
            raise invalid(("body", "parent_id"), f"a '{body.kind}' run does not start from a parent")
        weights = latest_weights(session, parent)
        if weights is None:
            raise invalid(("body", "parent_id"), f"run {parent.id} has no checkpoint yet")
        data[ckpt_field] = str(artifact_root / weights.path)
    elif ckpt_field is not None and cls.model_fields[ckpt_field].is_required():
        raise invalid(("body", "parent_id"), f"a '{body.kind}' run needs parent_id (a run with a checkpoint)")

    try:
        spec = cls.model_validate(data)
    except ValidationError as err:
        raise Invalid(
            [
                {"loc": ["body", "spec", *item["loc"]], "msg": item["msg"], "type": item["type"]}
                for item in err.errors()
            ]
        ) from None
    except ConfigError as err:
        raise invalid(("body", "spec"), str(err)) from None
    return spec.model_dump(mode="json")


def _enqueue_or_fail(session: Session, run: Run, enqueue: Enqueue) -> Run:
    """The row is committed before the message is sent; if the broker is down the run fails visibly."""
    try:
        run.task_id = enqueue(run)
    except Exception as err:  # broker unreachable: say so on the run instead of leaving it queued forever
        session.execute(
            update(Run)
            .where(Run.id == run.id, Run.state == "queued")
            .values(
                state="failed",
                error=f"could not enqueue: {err}",
                finished_at=utcnow(),
                version=Run.version + 1,
            )
        )
    session.commit()
    session.refresh(run)
    return run


def create_run(
    session: Session,
    body: RunCreate,
    artifact_root,
    enqueue: Enqueue,
    extra: dict[str, Any] | None = None,
    retry_of: Run | None = None,
) -> Run:
    spec = build_spec(session, body, artifact_root, extra)
    run = queued_run(
        kind=body.kind,
        name=str(spec.get("name") or body.kind),
        preset=body.preset,
        spec=spec,
        parent_id=body.parent_id,
        retry_of_id=retry_of.id if retry_of else None,
        queue=kinds_service.queue_for(body.kind),
    )
    return add_run_row(session, run, enqueue)


def queued_run(**fields: Any) -> Run:
    """A new row in its initial state: queued, no progress, no metrics, version 0."""
    return Run(
        state="queued", cancel_requested=False, progress_done=0, progress_total=0, version=0, metric_keys=[],
        last_metrics={}, **fields,
    )


def add_run_row(session: Session, run: Run, enqueue: Enqueue) -> Run:
    """Commit a prepared row, then enqueue it (imports build their spec themselves)."""
    session.add(run)
    session.commit()
    return _enqueue_or_fail(session, run, enqueue)


def cancel_run(session: Session, run_id: int) -> Run:
    run = get_run(session, run_id)
    now = utcnow()
    # not started (or no worker alive): cancelled at once; running: the worker stops at its next check
    done = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.state.in_(("queued", "lost")))
        .values(state="cancelled", cancel_requested=True, finished_at=now, version=Run.version + 1)
    ).rowcount
    if not done:
        done = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.state == "running")
            .values(cancel_requested=True, version=Run.version + 1)
        ).rowcount
    session.commit()
    session.refresh(run)
    if not done:
        raise Conflict(f"run {run_id} is already {run.state}")
    return run


def retry_run(session: Session, run_id: int, enqueue: Enqueue) -> Run:
    """A new run with the same kind, validated spec and parent (a terminal run never runs again); a
    pretraining retry resumes from the old run's latest checkpoint (the worker links it in)."""
    old = get_run(session, run_id)
    if old.state not in ("failed", "cancelled"):
        raise Conflict(f"run {run_id} is {old.state}; only failed or cancelled runs can be retried")
    run = queued_run(
        kind=old.kind,
        name=old.name,
        preset=old.preset,
        spec=old.spec,
        parent_id=old.parent_id,
        retry_of_id=old.id,
        queue=old.queue,
    )
    return add_run_row(session, run, enqueue)


def sweep_lost(session: Session, timeout_s: float, enqueue: Enqueue) -> list[int]:
    """Runs whose worker stopped sending heartbeats become `lost` and are queued again (the next
    attempt resumes from the last checkpoint), or `cancelled` if a cancel was asked for."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    stale = session.scalars(select(Run.id).where(Run.state == "running", Run.heartbeat_at < cutoff)).all()
    requeued = []
    for run_id in stale:
        # a run cancelled while its worker was dying is simply cancelled: nobody would claim it again
        cancelled = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.state == "running", Run.heartbeat_at < cutoff, Run.cancel_requested)
            .values(state="cancelled", finished_at=utcnow(), version=Run.version + 1)
        ).rowcount
        moved = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.state == "running", Run.heartbeat_at < cutoff)
            .values(state="lost", version=Run.version + 1)
        ).rowcount
        if not (cancelled or moved):  # its worker came back in the meantime
            continue
        session.execute(
            update(Attempt)
            .where(Attempt.run_id == run_id, Attempt.ended_at.is_(None))
            .values(ended_at=utcnow(), outcome="lost", error=f"no heartbeat for {timeout_s:.0f} s")
        )
        session.commit()
        if not moved:
            continue
        run = session.get(Run, run_id)
        if run is None:
            continue
        try:
            task_id = enqueue(run)
        except Exception:  # broker down: the run stays `lost`, without a message; redelivery sends it later
            task_id = None
        session.execute(update(Run).where(Run.id == run_id).values(task_id=task_id))
        session.commit()
        requeued.append(run_id)
    session.commit()
    return requeued


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES
