"""Creating, listing, cancelling and retrying runs; finding lost ones. Every state change goes
through the run state machine (`server.core.transitions`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from obow.config import list_presets, preset_dict
from obow.config.eval_defaults import inherit_view
from obow.config.presets import deep_update
from obow.errors import ConfigError
from server.core import artifacts as artifact_store
from server.core import kinds as kinds_service
from server.core import transitions
from server.core.errors import Conflict, Invalid, NotFound, invalid
from server.core.models import TERMINAL_STATES, Artifact, Run, RunState, utcnow
from server.core.paths import path_errors
from server.core.settings import Settings
from server.core.text import clean_text
from server.schemas import RunCreate
from server.services import search as search_service

Enqueue = Callable[[Run], str]

# artifact kinds a child run can take its weights from, in order of preference
WEIGHT_KINDS = ("checkpoint", "backbone", "import")


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
    q: str | None = None,
    sort: str | None = None,
    top_level: bool = False,
) -> tuple[list[Run], int]:
    """A page of runs and how many match. `q` is the query language of `server.services.search`
    (archived runs are hidden unless it asks for them, or a parent's children are listed); `top_level`
    keeps runs without a parent and counts each one's children (`Run.child_count`)."""
    dialect = session.get_bind().dialect.name
    search = search_service.parse(q, dialect)
    where = [search_service.combine(search)] if parent_id is None or q else []
    if state:
        where.append(Run.state.in_(state.split(",")))
    if kind:
        where.append(Run.kind.in_(kind.split(",")))
    if parent_id is not None:
        where.append(Run.parent_id == parent_id)
    if top_level:
        where.append(Run.parent_id.is_(None))
    key = search_service.sort_key(sort, dialect)
    if key is None:
        # newest first: the page walks the primary key backwards and stops after `limit` matches; the
        # total is one count (index-only where the filters allow)
        page = session.execute(select(Run.id).where(*where).order_by(Run.id.desc()).limit(limit).offset(offset)).all()
        total = session.scalar(select(func.count()).select_from(Run).where(*where)) or 0
    else:
        # Sorted by a value: one scan finds the page's ids and the total (a search reads every run's JSON
        # once, not twice); the rows themselves are then read by id. The scan's output is only (id, sort
        # value): `OFFSET 0` keeps PostgreSQL from flattening it, which would carry each run's whole spec
        # into the count and the sort. Past the end there is no row to carry the total.
        scan = select(Run.id.label("id"), key[0].label("k")).where(*where).offset(0).subquery()
        page = session.execute(
            select(scan.c.id, func.count().over())
            .order_by((scan.c.k.desc() if key[1] else scan.c.k.asc()).nulls_last(), scan.c.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        if page:
            total = page[0][1]
        else:
            total = session.scalar(select(func.count()).select_from(Run).where(*where)) or 0
    ids = [row[0] for row in page]
    # lists never show the spec or the note: read on demand only
    found = {
        run.id: run
        for run in session.scalars(select(Run).options(defer(Run.spec), defer(Run.note)).where(Run.id.in_(ids)))
    }
    items = [found[i] for i in ids if i in found]
    if top_level and ids:
        counts = dict(
            session.execute(
                select(Run.parent_id, func.count()).where(Run.parent_id.in_(ids)).group_by(Run.parent_id)
            ).all()
        )
        for run in items:
            run.child_count = counts.get(run.id, 0)
    return items, total


def _check_strings(value: Any, loc: tuple[str | int, ...], errors: list[dict[str, Any]]) -> None:
    """NUL bytes and lone surrogates, at any depth: no database column or JSON answer can hold them."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, loc, errors)
            _check_strings(item, (*loc, str(key)), errors)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, (*loc, index), errors)
    elif isinstance(value, str) and clean_text(value) != value:
        errors.append({"loc": list(loc), "msg": "text must not contain NUL or invalid Unicode", "type": "string_type"})


INT64 = 2**63


def _unstorable_numbers(value: Any, loc: tuple[str | int, ...], errors: list[dict[str, Any]]) -> None:
    """NaN, infinities and integers beyond 64 bits in a validated spec: whatever a kind's class lets
    through (`"inf"` parses as a float), no JSON answer, no PostgreSQL json column and no library counter
    can hold them. The library's spec classes bound every number; this guards any other kind."""
    if isinstance(value, dict):
        for key, item in value.items():
            _unstorable_numbers(item, (*loc, str(key)), errors)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _unstorable_numbers(item, (*loc, index), errors)
    elif isinstance(value, float) and not math.isfinite(value):
        errors.append({"loc": list(loc), "msg": "must be a finite number", "type": "finite_number"})
    elif isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        errors.append({"loc": list(loc), "msg": "must fit in 64 bits", "type": "int_too_large"})


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


def weights_artifact(session: Session, run: Run, artifact_id: int) -> Artifact:
    """One of `run`'s weights by id (a row's Convert button names the checkpoint it stands beside)."""
    found = session.get(Artifact, artifact_id)
    if found is None or found.run_id != run.id or found.kind not in WEIGHT_KINDS:
        raise invalid(("body", "artifact_id"), f"run {run.id} has no checkpoint with artifact id {artifact_id}")
    return found


def pinned_weights(
    session: Session, parent: Run, settings: Settings, tries: int = 5, artifact_id: int | None = None
) -> Path:
    """The parent's newest weights (or the ones `artifact_id` names), pinned for the child
    (`artifacts.pin`): a still-running pretraining deletes the file when it writes the next checkpoint,
    which must not fail the child later. If the newest file goes between the lookup and the link, the
    (then newer) newest one is taken; a named one that is gone is an error naming it."""
    if artifact_id is not None:
        chosen = weights_artifact(session, parent, artifact_id)
        try:
            return artifact_store.pin(settings.artifact_root, chosen.path, chosen.sha256)
        except (FileNotFoundError, ValueError):
            raise invalid(
                ("body", "artifact_id"), f"the file of artifact {artifact_id} is gone or changed; pick a newer one"
            ) from None
    for _ in range(tries):
        weights = latest_weights(session, parent)
        if weights is None:
            raise invalid(("body", "parent_id"), f"run {parent.id} has no checkpoint yet")
        try:
            return artifact_store.pin(settings.artifact_root, weights.path, weights.sha256)
        except (FileNotFoundError, ValueError):
            session.expire_all()  # the parent wrote a newer checkpoint meanwhile: look again
    raise Conflict(f"run {parent.id} replaced its checkpoint {tries} times while it was being pinned; try again")


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


def build_spec(
    session: Session,
    body: RunCreate,
    settings: Settings,
    extra: dict[str, Any] | None = None,
    artifact_id: int | None = None,
) -> dict:
    """Preset + overrides + parent's checkpoint (its newest, or `artifact_id`), validated by the kind's
    spec class."""
    if body.kind not in kinds_service.kinds():
        raise invalid(
            ("body", "kind"), f"unknown run kind '{body.kind}'; known: {', '.join(kinds_service.kinds())}"
        )
    if body.kind == "import":  # its input is an uploaded file, never a path on the server
        raise invalid(("body", "kind"), "imports start from an upload: POST /api/v1/imports with the file")
    errors: list[dict[str, Any]] = []
    _check_strings(body.spec, ("body", "spec"), errors)
    if not errors:
        errors = [
            {"loc": ["body", "spec", *loc], "msg": msg, "type": "path_not_allowed"}
            for loc, msg in path_errors(body.kind, body.spec, settings)
        ]
    if errors:
        raise Invalid(errors)
    weights_field = kinds_service.weights_field(body.kind)

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
        if weights_field is None:
            raise invalid(("body", "parent_id"), f"a '{body.kind}' run does not start from a parent")
        data = inherit_view(body.kind, parent.kind, parent.spec, data)  # the parent's data and view
        data[weights_field] = str(pinned_weights(session, parent, settings, artifact_id=artifact_id))
    elif weights_field is not None and cls.model_fields[weights_field].is_required():
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
    number_errors: list[dict[str, Any]] = []
    _unstorable_numbers(spec.model_dump(), ("body", "spec"), number_errors)
    if number_errors:
        raise Invalid(number_errors)
    return spec.model_dump(mode="json")


def _enqueue_or_fail(session: Session, run: Run, enqueue: Enqueue) -> Run:
    """The row is committed before the message is sent; if the broker is down the run fails visibly."""
    try:
        task_id = enqueue(run)
    except Exception as err:  # broker unreachable: say so on the run instead of leaving it queued forever
        transitions.fail_unsent(session, run.id, f"could not enqueue: {err}")
    else:
        transitions.record_message(session, run.id, task_id)
    session.refresh(run)
    return run


def create_run(
    session: Session,
    body: RunCreate,
    settings: Settings,
    enqueue: Enqueue,
    extra: dict[str, Any] | None = None,
    artifact_id: int | None = None,
    name: str | None = None,
    launched_by: str | None = None,
) -> Run:
    """`name`: the service's default name (the user's `body.name` wins); `launched_by`: who asked for it
    (the API token's name, `sweep #N`), never taken from the body."""
    spec = build_spec(session, body, settings, extra, artifact_id)
    run = Run(
        kind=body.kind,
        name=body.name or name or str(spec.get("name") or body.kind),
        preset=body.preset,
        spec=spec,
        parent_id=body.parent_id,
        queue=kinds_service.queue_for(body.kind),
        tags=list(body.tags),
        note=body.note,
        project=body.project,
        launched_by=clean_text(launched_by, 100) if launched_by else None,
    )
    return add_run_row(session, run, enqueue)


def add_run_row(session: Session, run: Run, enqueue: Enqueue) -> Run:
    """Create a prepared row (imports build their spec themselves), then enqueue it."""
    transitions.create(session, run)
    return _enqueue_or_fail(session, run, enqueue)


def cancel_run(session: Session, run_id: int) -> Run:
    """Not started (or no worker alive): cancelled at once; running: its attempt stops at its next step."""
    run = get_run(session, run_id)
    applied = transitions.request_cancel(session, run_id)
    session.refresh(run)
    if applied is None:
        raise Conflict(f"run {run_id} is already {run.state}")
    return run


def retry_run(session: Session, run_id: int, enqueue: Enqueue) -> Run:
    """A new run with the same kind, validated spec and parent (a terminal run never runs again); a
    pretraining retry resumes from the old run's latest checkpoint (the worker copies it in)."""
    old = get_run(session, run_id)
    if old.state not in (RunState.FAILED, RunState.CANCELLED):
        raise Conflict(f"run {run_id} is {old.state}; only failed or cancelled runs can be retried")
    run = transitions.retry(session, old)
    return _enqueue_or_fail(session, run, enqueue)


def sweep_lost(session: Session, timeout_s: float, enqueue: Enqueue) -> list[int]:
    """Runs whose worker stopped sending heartbeats become `lost` and are queued again (the next
    attempt resumes from the last checkpoint), or `cancelled` if a cancel was asked for."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    stale = session.scalars(
        select(Run.id).where(Run.state == RunState.RUNNING, Run.heartbeat_at < cutoff)
    ).all()
    requeued = []
    for run_id in stale:
        if transitions.mark_lost(session, run_id, cutoff, f"no heartbeat for {timeout_s:.0f} s") != RunState.LOST:
            continue  # its worker came back in the meantime, or it was being cancelled
        run = session.get(Run, run_id)
        if run is None:
            continue
        session.refresh(run)
        try:
            task_id = enqueue(run)
        except Exception:  # broker down: the run stays `lost`, without a message; redelivery sends it later
            transitions.record_message(session, run_id, None)
            continue
        transitions.requeue(session, run_id, task_id, "its worker stopped sending heartbeats")
        requeued.append(run_id)
    return requeued


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES
