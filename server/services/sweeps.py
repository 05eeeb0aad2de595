"""Sweeps: hyper-parameter searches whose trials are ordinary runs on the ordinary workers.

Optuna proposes and prunes (ask/tell, its samplers and pruners); the lab executes and remembers. The
study is not Optuna's RDBStorage (it would bring its own schema and its own `alembic_version` table):
it is the `sweeps` and `sweep_trials` rows, and every controller step rebuilds an in-memory study from
them (params, distributions, values, states, intermediate values read from the trial runs' metrics,
Optuna's own per-trial bookkeeping). The sampler of trial N is seeded with (sweep seed, N), so a fixed
seed proposes the same trials twice and a restarted controller proposes what the dead one would have.

The controller (`step`) is idempotent and restart-safe:
- one API process steps a sweep at a time: it holds a short lease on the sweep row (`controller`,
  `controller_until`), renewed at each step, taken over once it expires (a killed process);
- a trial's number is claimed by inserting its row (UNIQUE(sweep_id, number)) before its run exists,
  and its run carries the marker name `sweep<S>-trial<N>`: a controller that died between the two
  finds the run by that name instead of starting a second one;
- trials are runs created through `transitions.create` and the normal enqueue, so the lab's fencing,
  lost-run sweep and redelivery apply to them; pruning and cancelling go through
  `transitions.request_cancel` (the library stops at its next step with a checkpoint).
Optuna is imported on first use only: the API process starts without it.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from obow.config.presets import deep_update
from server.core import kinds as kinds_service
from server.core import transitions
from server.core.errors import Conflict, Invalid, NotFound, invalid
from server.core.models import TERMINAL_STATES, Metric, Run, RunState, Sweep, SweepTrial, utcnow
from server.core.settings import Settings
from server.schemas import RunCreate
from server.services import runs as runs_service
from server.sweep_schemas import SweepCreate

if TYPE_CHECKING:
    import optuna

Enqueue = Callable[[Run], str]

SWEEP_STATES = ("running", "finished", "cancelled")
TRIAL_STATES = ("running", "complete", "pruned", "failed", "cancelled")
# How long a controller's claim on a sweep lasts without a step renewing it: a killed API process's
# sweeps are taken over by another (or the restarted) process this long after its last step.
LEASE_S = 6.0
# Cross-field rules (num_words a multiple of the batch) are checked on specs built from the space's
# extreme values: every combination while there are at most this many, else each extreme on its own.
MAX_SAMPLE_SPECS = 64
log = logging.getLogger("obow.lab.sweeps")
# This API process, as a lease holder.
CONTROLLER_ID = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# -- validation ------------------------------------------------------------------------------------


def _space_error(key: str, msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ["body", "space", key], "msg": f"{key}: {msg}", "type": kind}


def _section(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (a nested section), if any."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and get_origin(candidate) is None:
            return candidate
    return None


def _field_of(cls: type[BaseModel], key: str) -> tuple[Any, str | None]:
    """The pydantic FieldInfo at a dotted key, or an error naming the first part that does not exist."""
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = cls.model_fields
        here = ".".join(parts[:depth]) or "the spec"
        if part not in fields:
            return None, f"unknown key: '{part}' is not a field of {here} (fields: {', '.join(fields)})"
        info = fields[part]
        section = _section(info.annotation)
        if depth == len(parts) - 1:
            if section is not None:
                return None, f"'{key}' is a section, not a value: search one of its fields"
            return info, None
        if section is None:
            return (
                None,
                f"unknown key: '{'.'.join(parts[: depth + 1])}' is a value, it has no field '{parts[depth + 1]}'",
            )
        cls = section
    return None, "empty key"


def _bounds(info: Any) -> tuple[list[tuple[str, float]], str]:
    """The field's own numeric constraints (ge/gt/le/lt) and a readable form of them."""
    found = []
    for mark in info.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(mark, getattr(annotated_types, name.capitalize())):
                found.append((name, float(getattr(mark, name))))
    text = ", ".join(
        f"{'>=' if n == 'ge' else '>' if n == 'gt' else '<=' if n == 'le' else '<'} {v:g}" for n, v in found
    )
    return found, text


def _within(value: float, bounds: list[tuple[str, float]]) -> bool:
    ops = {"ge": value.__ge__, "gt": value.__gt__, "le": value.__le__, "lt": value.__lt__}
    return all(ops[name](limit) for name, limit in bounds)


def _check_dimension(key: str, dim: Any, info: Any, method: str) -> list[dict[str, Any]]:
    """Type and bounds of one search dimension against its field; errors name the key."""
    types = _scalar_types(info.annotation)
    bounds, bounds_text = _bounds(info)
    numeric = types & {int, float}
    if dim.type in ("uniform", "loguniform", "int"):
        if dim.type == "int" and dim.step > 1 and (dim.high - dim.low) % dim.step:
            return [_space_error(key, f"high - low ({dim.high - dim.low}) must be a multiple of step ({dim.step})")]
        if dim.type != "int" and method == "grid":
            return [_space_error(key, f"a grid sweep cannot enumerate a '{dim.type}' range: use choice or int")]
        if not numeric:
            accepted = ", ".join(sorted(getattr(t, "__name__", str(t)) for t in types))
            return [
                _space_error(
                    key,
                    f"a '{dim.type}' range needs a numeric field; this one takes {accepted}: use choice",
                    "type_error",
                )
            ]
        if dim.type in ("uniform", "loguniform") and float not in types:
            return [_space_error(key, f"is an integer field: use type int (or choice), not {dim.type}", "type_error")]
        if dim.low > dim.high or (dim.type != "int" and dim.low == dim.high):
            return [_space_error(key, f"low ({dim.low:g}) must be below high ({dim.high:g})")]
        if dim.type == "loguniform" and dim.low <= 0:
            return [_space_error(key, f"a loguniform range needs low > 0 (got {dim.low:g})")]
        if dim.type == "int" and dim.log and dim.low < 1:
            return [_space_error(key, f"a log int range needs low >= 1 (got {dim.low})")]
        for end, value in (("low", dim.low), ("high", dim.high)):
            if not math.isfinite(value):
                return [_space_error(key, f"{end} must be finite")]
            if bounds and not _within(float(value), bounds):
                return [_space_error(key, f"{end} = {value:g} is outside the field's bounds ({bounds_text})")]
        return []
    for value in dim.values:  # choice: bounds of numeric values here, the rest by the spec class below
        if isinstance(value, float) and not math.isfinite(value):
            return [_space_error(key, f"choice value {value} must be finite")]
        if (
            bounds
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and not _within(float(value), bounds)
        ):
            return [_space_error(key, f"choice value {value:g} is outside the field's bounds ({bounds_text})")]
    return []


def _scalar_types(annotation: Any) -> set[Any]:
    """int, float, bool, str, list, 'literal', NoneType: what a field accepts at its top level."""
    origin = get_origin(annotation)
    if origin is None:
        return {annotation}
    name = getattr(origin, "_name", None) or getattr(origin, "__name__", "") or str(origin)
    if "Literal" in str(origin) or name == "Literal":
        return {"literal"}
    if origin in (list, tuple, set, dict):
        return {list}
    found: set[Any] = set()
    for arg in get_args(annotation):
        if arg is type(None):
            continue
        found |= _scalar_types(arg)
    return found


def _extremes(dim: Any) -> list[Any]:
    if dim.type == "choice":
        return list(dict.fromkeys(dim.values))
    if dim.type == "int":
        return [dim.low, dim.high]
    return [dim.low, dim.high]


def nest(params: dict[str, Any]) -> dict[str, Any]:
    """{"optim.lr": 0.1} -> {"optim": {"lr": 0.1}}: spec overrides from a trial's params."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        *sections, leaf = key.split(".")
        node = out
        for part in sections:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _sample_params(space: dict[str, Any]) -> Iterable[dict[str, Any]]:
    keys = list(space)
    options = [_extremes(space[k]) for k in keys]
    total = math.prod(len(o) for o in options)
    if total <= MAX_SAMPLE_SPECS:
        for combo in itertools.product(*options):
            yield dict(zip(keys, combo, strict=True))
        return
    low = {k: o[0] for k, o in zip(keys, options, strict=True)}
    yield low
    for key, values in zip(keys, options, strict=True):
        for value in values[1:]:
            yield {**low, key: value}


def _spec_errors(
    session: Session, body: SweepCreate, settings: Settings, extra: dict[str, Any], params: dict[str, Any]
) -> list[dict[str, Any]]:
    try:
        runs_service.build_spec(
            session,
            RunCreate(kind=body.kind, preset=body.preset, spec=deep_update(body.spec, nest(params))),
            settings,
            extra,
        )
    except Invalid as err:
        return err.errors
    return []


def _sample_errors(
    session: Session, body: SweepCreate, settings: Settings, extra: dict[str, Any]
) -> list[dict[str, Any]]:
    """Specs built with the space's extreme values must pass the kind's spec class (cross-field rules).
    An error is put on the space key it is about: the key the spec class names, else the key whose value
    alone breaks a rule across fields, else every key of the combination that broke it."""
    for params in _sample_params(body.space):
        errors = _spec_errors(session, body, settings, extra, params)
        if not errors:
            continue
        out = []
        for item in errors:
            dotted = ".".join(str(p) for p in item["loc"][2:])  # after "body", "spec"
            owners = [k for k in body.space if dotted == k or dotted.startswith(k + ".")]
            if not owners:
                owners = [k for k in params if _spec_errors(session, body, settings, extra, {k: params[k]})]
            values = ", ".join(f"{k}={v!r}" for k, v in params.items())
            where = f"{dotted}: " if dotted else ""
            for owner in owners or list(params):
                out.append(
                    _space_error(owner, f"{params[owner]!r} is refused by the spec ({values}): {where}{item['msg']}")
                )
        return out
    return []


def _trial_extra(body_kind: str, pruner: dict[str, Any], objective: dict[str, Any]) -> dict[str, Any]:
    """What every trial's spec needs for the sweep to see its curve: the pretraining's kNN monitor
    (`runtime.knn_monitor_every`) when the pruner or the objective reads `knn_acc@1`."""
    cls = kinds_service.spec_class(body_kind)
    wants_knn = (pruner["type"] != "none" and pruner["metric"] == "knn_acc@1") or (
        objective["source"] == "trial" and objective["metric"] == "knn_acc@1"
    )
    runtime = _section(cls.model_fields["runtime"].annotation) if "runtime" in cls.model_fields else None
    if wants_knn and runtime is not None and "knn_monitor_every" in runtime.model_fields:
        return {"runtime": {"knn_monitor_every": pruner.get("every", 1)}}
    return {}


def _grid_size(space: dict[str, Any]) -> int:
    return math.prod(len(_grid_values(d)) for d in space.values())


def _grid_values(dim: Any) -> list[Any]:
    if dim["type"] == "choice":
        return list(dict.fromkeys(dim["values"]))
    return list(range(dim["low"], dim["high"] + 1, dim.get("step", 1)))


def validate(session: Session, body: SweepCreate, settings: Settings) -> dict[str, Any]:
    """Everything about a sweep that can be checked before its first trial; raises Invalid (422) with
    one entry per bad field, the space's entries at ["body", "space", <key>]. Returns the trial extras."""
    if body.kind not in kinds_service.kinds():
        raise invalid(("body", "kind"), f"unknown run kind '{body.kind}'; known: {', '.join(kinds_service.kinds())}")
    info = kinds_service.info(body.kind)
    if info.weights_field is not None or info.upload_field is not None:
        raise invalid(("body", "kind"), f"trials of a sweep train from scratch; '{body.kind}' needs a parent run")
    cls = kinds_service.spec_class(body.kind)
    errors: list[dict[str, Any]] = []
    for key, dim in body.space.items():
        field, problem = _field_of(cls, key)
        if problem:
            errors.append(_space_error(key, problem, "key_error"))
            continue
        errors += _check_dimension(key, dim, field, body.method)
    if (
        body.method == "grid"
        and not errors
        and _grid_size({k: v.model_dump() for k, v in body.space.items()}) > 100_000
    ):
        errors.append({"loc": ["body", "space"], "msg": "the grid has more than 100,000 points", "type": "value_error"})
    errors += _objective_errors(body)
    errors += _pruner_errors(body)
    if errors:
        raise Invalid(errors)
    # the base spec alone (spec errors are the spec's), then the space's extremes (cross-field rules)
    extra = _trial_extra(body.kind, body.pruner.model_dump(), body.objective.model_dump())
    runs_service.build_spec(session, RunCreate(kind=body.kind, preset=body.preset, spec=body.spec), settings, extra)
    errors = _sample_errors(session, body, settings, extra)
    if errors:
        raise Invalid(errors)
    return extra


def _objective_errors(body: SweepCreate) -> list[dict[str, Any]]:
    source = body.objective.source
    if source == "trial":
        if body.objective.eval_spec:
            return [
                {
                    "loc": ["body", "objective", "eval_spec"],
                    "msg": "eval_spec needs an evaluation source",
                    "type": "value_error",
                }
            ]
        return []
    if source not in kinds_service.kinds():
        return [
            {
                "loc": ["body", "objective", "source"],
                "type": "value_error",
                "msg": f"'{source}' is neither 'trial' nor a run kind ({', '.join(kinds_service.kinds())})",
            }
        ]
    weights = kinds_service.weights_field(source)
    if weights is None or source in ("export", "words", "import"):
        return [
            {
                "loc": ["body", "objective", "source"],
                "msg": f"'{source}' is not an evaluation of a checkpoint",
                "type": "value_error",
            }
        ]
    cls = kinds_service.spec_class(source)
    data = {**body.objective.eval_spec, weights: "/placeholder/checkpoint.pt"}
    if "kind" in cls.model_fields:
        data.setdefault("kind", source)
    if weights in body.objective.eval_spec:
        return [
            {
                "loc": ["body", "objective", "eval_spec", weights],
                "type": "value_error",
                "msg": f"{weights} is filled with the trial's checkpoint",
            }
        ]
    try:
        cls.model_validate(data)
    except Exception as err:  # a pydantic ValidationError or the library's ConfigError
        if hasattr(err, "errors"):
            return [
                {"loc": ["body", "objective", "eval_spec", *map(str, e["loc"])], "msg": e["msg"], "type": e["type"]}
                for e in err.errors()
            ]
        return [{"loc": ["body", "objective", "eval_spec"], "msg": str(err), "type": "value_error"}]
    return []


def _pruner_errors(body: SweepCreate) -> list[dict[str, Any]]:
    if body.pruner.type == "none":
        return []
    try:  # built and asked once on a two-trial study, so an option of the wrong type fails here, not later
        o = _optuna()
        pruner = make_pruner(body.pruner.model_dump())
        study = o.create_study(direction=body.direction, pruner=pruner)
        dist = {"x": o.distributions.FloatDistribution(0.0, 1.0)}
        study.add_trial(
            o.trial.create_trial(params={"x": 0.5}, distributions=dist, value=1.0, intermediate_values={1: 1.0})
        )
        study.add_trial(
            o.trial.create_trial(
                state=o.trial.TrialState.RUNNING, params={"x": 0.1}, distributions=dist, intermediate_values={1: 0.5}
            )
        )
        pruner.prune(study, study.get_trials(deepcopy=False)[-1])
    except (TypeError, ValueError, ArithmeticError) as err:
        return [{"loc": ["body", "pruner", "options"], "msg": f"{body.pruner.type}: {err}", "type": "value_error"}]
    return []


# -- Optuna ----------------------------------------------------------------------------------------


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions(space: dict[str, Any]) -> dict[str, Any]:
    o = _optuna()
    out = {}
    for key, dim in space.items():
        if dim["type"] == "choice":
            out[key] = o.distributions.CategoricalDistribution(list(dict.fromkeys(dim["values"])))
        elif dim["type"] == "uniform":
            out[key] = o.distributions.FloatDistribution(dim["low"], dim["high"])
        elif dim["type"] == "loguniform":
            out[key] = o.distributions.FloatDistribution(dim["low"], dim["high"], log=True)
        else:
            step = dim.get("step", 1)
            log = dim.get("log", False)
            out[key] = o.distributions.IntDistribution(dim["low"], dim["high"], log=log, step=1 if log else step)
    return out


def make_pruner(pruner: dict[str, Any]) -> Any:
    o = _optuna()
    options = dict(pruner.get("options") or {})
    if pruner["type"] == "median":
        return o.pruners.MedianPruner(**options)
    if pruner["type"] == "successive_halving":
        return o.pruners.SuccessiveHalvingPruner(**options)
    return o.pruners.NopPruner()


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number`: a function of the sweep's seed and the trial number only."""
    return (seed * 1_000_003 + number * 7_919 + 12_345) % (2**31 - 1)


def make_sampler(sweep: Sweep, number: int) -> Any:
    o = _optuna()
    seed = trial_seed(sweep.seed, number)
    if sweep.method == "grid":
        # the seed shuffles the grid's numbering once: it must be the sweep's, not the trial's, or grid
        # ids stored by earlier steps would name other points
        grid = {k: _grid_values(d) for k, d in sweep.space.items()}
        return o.samplers.GridSampler(grid, seed=trial_seed(sweep.seed, 0))
    if sweep.method == "random":
        return o.samplers.RandomSampler(seed=seed)
    # TPE models the history after a few random trials: a quarter of the budget, between 2 and 10
    return o.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, sweep.budget // 4)))


OPTUNA_STATE = {"running": "RUNNING", "complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL", "cancelled": "FAIL"}


def build_study(
    sweep: Sweep, trials: list[SweepTrial], curves: dict[int, dict[int, float]], number: int | None = None
) -> optuna.Study:
    """The sweep's study, in memory, from its rows: trial i of the study is trial number i."""
    o = _optuna()
    study = o.create_study(
        direction=sweep.direction,
        sampler=make_sampler(sweep, len(trials) if number is None else number),
        pruner=make_pruner(sweep.pruner),
    )
    dists = distributions(sweep.space)
    for trial in trials:
        state = getattr(o.trial.TrialState, OPTUNA_STATE[trial.state])
        value = trial.value if trial.state == "complete" else None
        if state == o.trial.TrialState.COMPLETE and value is None:
            state = o.trial.TrialState.FAIL
        params = {k: v for k, v in trial.params.items() if k in dists}
        study.add_trial(
            o.trial.create_trial(
                state=state,
                value=value,
                params=params,
                distributions={k: dists[k] for k in params},
                system_attrs=dict(trial.system_attrs or {}),
                intermediate_values=curves.get(trial.run_id or -1, {}),
            )
        )
    return study


def propose(
    sweep: Sweep, trials: list[SweepTrial], curves: dict[int, dict[int, float]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Optuna's params for the next trial (number len(trials)) and its bookkeeping (system attrs)."""
    study = build_study(sweep, trials, curves)
    trial = study.ask(fixed_distributions=distributions(sweep.space))
    frozen = study.get_trials(deepcopy=False)[-1]
    return dict(trial.params), dict(frozen.system_attrs)


# -- the controller --------------------------------------------------------------------------------


def marker(sweep_id: int, number: int) -> str:
    """The name of a trial's run: how a restarted controller finds a run its predecessor created."""
    return f"sweep{sweep_id}-trial{number}"


def _take_lease(session: Session, sweep_id: int, owner: str) -> bool:
    now = utcnow()
    taken = session.execute(
        update(Sweep)
        .where(
            Sweep.id == sweep_id,
            Sweep.state == "running",
            (Sweep.controller.is_(None)) | (Sweep.controller == owner) | (Sweep.controller_until < now),
        )
        .values(controller=owner, controller_until=now + timedelta(seconds=LEASE_S))
    ).rowcount
    session.commit()
    return bool(taken)


def _still_mine(session: Session, sweep_id: int, owner: str) -> bool:
    """Fencing before a trial's run is created: the sweep is still running and still ours."""
    now = utcnow()
    mine = session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.state == "running", Sweep.controller == owner)
        .values(controller_until=now + timedelta(seconds=LEASE_S))
    ).rowcount
    session.commit()
    return bool(mine)


def _curves(session: Session, run_ids: list[int], key: str) -> dict[int, dict[int, float]]:
    """Each run's intermediate curve: its i-th report of `key` is step i+1 (kNN monitor points are
    comparable across trials whatever their batch size, as every trial reports every `every` epochs)."""
    if not run_ids:
        return {}
    rows = session.execute(
        select(Metric.run_id, Metric.step, Metric.value)
        .where(Metric.run_id.in_(run_ids), Metric.key == key)
        .order_by(Metric.run_id, Metric.step)
    ).all()
    out: dict[int, dict[int, float]] = {}
    for run_id, _, value in rows:
        curve = out.setdefault(run_id, {})
        if math.isfinite(value):
            curve[len(curve) + 1] = float(value)
    return out


def _lookup(data: dict[str, Any] | None, metric: str) -> float | None:
    if not data:
        return None
    value: Any = data.get(metric)
    if value is None:
        value = data
        for part in metric.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def objective_value(run: Run, metric: str) -> float | None:
    """A finished run's score: its latest value of the metric (last_metrics), else its result's entry
    (a dotted path: `top1.20` of a kNN evaluation)."""
    found = _lookup(run.last_metrics, metric)
    return found if found is not None else _lookup(run.result, metric)


def _finish_trial(
    session: Session, trial: SweepTrial, state: str, value: float | None = None, note: str | None = None
) -> bool:
    changed = session.execute(
        update(SweepTrial)
        .where(SweepTrial.id == trial.id, SweepTrial.state == "running")
        .values(state=state, value=value, note=note, finished_at=utcnow())
    ).rowcount
    session.commit()
    return bool(changed)


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[-1][:500] if text and text.strip() else ""


def _start_trial_run(
    session: Session, sweep: Sweep, trial: SweepTrial, settings: Settings, enqueue: Enqueue, extra: dict[str, Any]
) -> None:
    """Create (or find, after a crash) the trial's run and link it."""
    name = marker(sweep.id, trial.number)
    existing = session.scalars(
        select(Run)
        .where(Run.name == name, Run.kind == sweep.kind, Run.created_at >= trial.created_at - timedelta(seconds=5))
        .order_by(Run.id)
    ).first()
    if existing is None:
        try:
            spec = runs_service.build_spec(
                session,
                RunCreate(kind=sweep.kind, preset=sweep.preset, spec=deep_update(sweep.base_spec, nest(trial.params))),
                settings,
                extra,
            )
        except Invalid as err:
            _finish_trial(session, trial, "failed", note=f"spec refused: {err.message}")
            return
        run = Run(
            kind=sweep.kind,
            name=name,
            preset=sweep.preset,
            spec=spec,
            parent_id=None,
            queue=kinds_service.queue_for(sweep.kind),
            launched_by=f"sweep #{sweep.id}",
        )
        session.add(run)
        session.flush()
        # the link and the run are one transaction (transitions.create commits both): a controller killed
        # in between leaves neither, and a trial another controller linked meanwhile gets no second run
        linked = session.execute(
            update(SweepTrial).where(SweepTrial.id == trial.id, SweepTrial.run_id.is_(None)).values(run_id=run.id)
        ).rowcount
        if not linked:
            session.rollback()
            session.refresh(trial)
            return
        runs_service.add_run_row(session, run, enqueue)
        session.refresh(trial)
        return
    session.execute(
        update(SweepTrial).where(SweepTrial.id == trial.id, SweepTrial.run_id.is_(None)).values(run_id=existing.id)
    )
    session.commit()
    session.refresh(trial)


def _start_eval(
    session: Session, sweep: Sweep, trial: SweepTrial, run: Run, settings: Settings, enqueue: Enqueue
) -> None:
    """The objective's evaluation child of a finished trial run (or the one a dead controller started)."""
    source = sweep.objective["source"]
    child = session.scalars(select(Run).where(Run.parent_id == run.id, Run.kind == source).order_by(Run.id)).first()
    if child is None:
        try:
            child = runs_service.create_run(
                session,
                RunCreate(kind=source, spec=dict(sweep.objective.get("eval_spec") or {}), parent_id=run.id),
                settings,
                enqueue,
                launched_by=f"sweep #{sweep.id}",
            )
        except Invalid as err:
            _finish_trial(session, trial, "failed", note=f"evaluation refused: {err.message}")
            return
    session.execute(
        update(SweepTrial)
        .where(SweepTrial.id == trial.id, SweepTrial.eval_run_id.is_(None))
        .values(eval_run_id=child.id)
    )
    session.commit()
    session.refresh(trial)


def _record(
    session: Session, sweep: Sweep, trial: SweepTrial, runs: dict[int, Run], settings: Settings, enqueue: Enqueue
) -> None:
    """A running trial whose run (or evaluation) ended: its objective, or why it failed."""
    run = runs.get(trial.run_id or -1)
    if run is None or run.state not in TERMINAL_STATES:
        return
    metric, source = sweep.objective["metric"], sweep.objective["source"]
    if run.state == RunState.FAILED:
        _finish_trial(session, trial, "failed", note=f"run {run.id} failed: {_first_line(run.error)}")
        return
    if run.state == RunState.CANCELLED:
        _finish_trial(session, trial, "failed", note=f"run {run.id} was cancelled")
        return
    if source == "trial":
        value = objective_value(run, metric)
        if value is None:
            _finish_trial(session, trial, "failed", note=f"run {run.id} reported no finite '{metric}'")
        else:
            _finish_trial(session, trial, "complete", value=value)
        return
    if trial.eval_run_id is None:
        _start_eval(session, sweep, trial, run, settings, enqueue)
        return
    child = runs.get(trial.eval_run_id) or session.get(Run, trial.eval_run_id)
    if child is None or child.state not in TERMINAL_STATES:
        return
    if child.state != RunState.SUCCEEDED:
        _finish_trial(session, trial, "failed", note=f"evaluation {child.id} {child.state}: {_first_line(child.error)}")
        return
    value = objective_value(child, metric)
    if value is None:
        keys = ", ".join(sorted((child.result or {}).keys()))
        _finish_trial(session, trial, "failed", note=f"evaluation {child.id} has no finite '{metric}' (result: {keys})")
    else:
        _finish_trial(session, trial, "complete", value=value)


def _prune(session: Session, sweep: Sweep, trials: list[SweepTrial], runs: dict[int, Run]) -> None:
    """Ask the pruner about every running trial with a new point on its curve; a pruned trial's run is
    cancelled (it stops at its next step with a checkpoint) and the trial is `pruned` at once."""
    candidates = [
        t for t in trials if t.state == "running" and t.run_id in runs and runs[t.run_id].state not in TERMINAL_STATES
    ]
    if not candidates:
        return
    curves = _curves(session, [t.run_id for t in trials if t.run_id], sweep.pruner["metric"])
    if not any(curves.get(t.run_id) for t in candidates):
        return
    study = build_study(sweep, trials, curves)
    frozen = study.get_trials(deepcopy=False)
    pruner = make_pruner(sweep.pruner)
    for trial in candidates:
        curve = curves.get(trial.run_id)
        if not curve:
            continue
        decision = pruner.prune(study, frozen[trial.number])
        attrs = dict(study.get_trials(deepcopy=False)[trial.number].system_attrs)
        if attrs != (trial.system_attrs or {}):
            session.execute(update(SweepTrial).where(SweepTrial.id == trial.id).values(system_attrs=attrs))
            session.commit()
        if decision:
            step, value = max(curve.items())
            note = f"pruned at report {step} ({sweep.pruner['metric']} = {value:.4g})"
            if _finish_trial(session, trial, "pruned", note=note):
                transitions.request_cancel(session, trial.run_id, f"pruned by sweep {sweep.id}: {note}")


def _best(sweep: Sweep, trials: list[SweepTrial]) -> SweepTrial | None:
    done = [t for t in trials if t.state == "complete" and t.value is not None]
    if not done:
        return None
    sign = 1 if sweep.direction == "maximize" else -1
    return max(done, key=lambda t: (sign * t.value, -t.number))


def _load(session: Session, sweep_id: int) -> tuple[list[SweepTrial], dict[int, Run]]:
    """The sweep's trials and their runs as the database has them now: one query each, replacing
    whatever the session held (another process, a worker, wrote them since)."""
    fresh = {"populate_existing": True}
    trials = list(
        session.scalars(
            select(SweepTrial)
            .where(SweepTrial.sweep_id == sweep_id)
            .order_by(SweepTrial.number)
            .execution_options(**fresh)
        )
    )
    ids = [i for t in trials for i in (t.run_id, t.eval_run_id) if i]
    runs = (
        {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(ids)).execution_options(**fresh))} if ids else {}
    )
    return trials, runs


def _occupied(trial: SweepTrial, runs: dict[int, Run]) -> bool:
    """A trial takes a parallel slot while it runs, and while a pruned run is still stopping."""
    if trial.state == "running":
        return True
    run = runs.get(trial.run_id or -1)
    return trial.state == "pruned" and run is not None and run.state not in TERMINAL_STATES


def step(session: Session, sweep_id: int, settings: Settings, enqueue: Enqueue, owner: str = CONTROLLER_ID) -> bool:
    """One idempotent controller step: record finished trials (start their evaluations), prune, start
    new trials up to `parallel` and the budget, finish the sweep when every trial is done. Returns False
    when another controller holds the sweep or it is not running."""
    if not _take_lease(session, sweep_id, owner):
        return False
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        return False
    session.refresh(sweep)
    extra = _trial_extra(sweep.kind, sweep.pruner, sweep.objective)
    trials, runs = _load(session, sweep_id)

    for trial in trials:  # a dead controller's half-made trial: find or create its run
        if trial.state == "running" and trial.run_id is None:
            if not _still_mine(session, sweep_id, owner):
                return False
            _start_trial_run(session, sweep, trial, settings, enqueue, extra)
    trials, runs = _load(session, sweep_id)
    for trial in trials:
        if trial.state == "running":
            _record(session, sweep, trial, runs, settings, enqueue)
    trials, runs = _load(session, sweep_id)
    if sweep.pruner.get("type", "none") != "none":
        _prune(session, sweep, trials, runs)
        trials, runs = _load(session, sweep_id)

    budget = min(sweep.budget, _grid_size(sweep.space)) if sweep.method == "grid" else sweep.budget
    while len(trials) < budget and sum(_occupied(t, runs) for t in trials) < sweep.parallel:
        curves = (
            _curves(session, [t.run_id for t in trials if t.run_id], sweep.pruner["metric"])
            if (sweep.pruner.get("type", "none") != "none")
            else {}
        )
        params, attrs = propose(sweep, trials, curves)
        trial = SweepTrial(sweep_id=sweep.id, number=len(trials), params=params, system_attrs=attrs, state="running")
        session.add(trial)
        try:
            session.commit()
        except IntegrityError:  # another controller numbered it first: it owns that trial
            session.rollback()
            return False
        if not _still_mine(session, sweep_id, owner):
            return False
        _start_trial_run(session, sweep, trial, settings, enqueue, extra)
        trials, runs = _load(session, sweep_id)

    best = _best(sweep, trials)
    values: dict[str, Any] = {"best_number": best.number if best else None, "best_value": best.value if best else None}
    if len(trials) >= budget and not any(_occupied(t, runs) for t in trials):  # pruned runs have stopped too
        values.update(state="finished", finished_at=utcnow(), controller=None, controller_until=None)
    session.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.state == "running").values(**values))
    session.commit()
    return True


# A full step at least this often even when nothing changed (it renews the lease, well inside LEASE_S).
FULL_STEP_S = 2.0


def _signatures(session: Session, sweep_ids: list[int]) -> dict[int, tuple[Any, ...]]:
    """What a step reacts to, per sweep, in one query: every trial's state and its run's and its
    evaluation's state and version (a version moves with every state or progress write, so a new point
    on a pruned curve shows too)."""
    evaluation = aliased(Run)
    rows = session.execute(
        select(SweepTrial.sweep_id, SweepTrial.number, SweepTrial.state, Run.state, Run.version, evaluation.state)
        .outerjoin(Run, Run.id == SweepTrial.run_id)
        .outerjoin(evaluation, evaluation.id == SweepTrial.eval_run_id)
        .where(SweepTrial.sweep_id.in_(sweep_ids))
        .order_by(SweepTrial.sweep_id, SweepTrial.number)
    ).all()
    out: dict[int, list[tuple[Any, ...]]] = {i: [] for i in sweep_ids}
    for row in rows:
        out[row[0]].append(tuple(row[1:]))
    return {i: tuple(v) for i, v in out.items()}


class Controller:
    """The API process's sweep controller: `tick()` steps every running sweep whose trials changed since
    its last step (and every sweep at least every FULL_STEP_S), so a tick with nothing to do costs one
    query and the tick can be short (what the controller adds between two trials is about half of it)."""

    def __init__(self, settings: Settings, enqueue: Enqueue, owner: str = CONTROLLER_ID) -> None:
        self.settings, self.enqueue, self.owner = settings, enqueue, owner
        self._seen: dict[int, tuple[tuple[Any, ...], float]] = {}

    def tick(self, session: Session) -> list[int]:
        ids = list(session.scalars(select(Sweep.id).where(Sweep.state == "running").order_by(Sweep.id)))
        now = time.monotonic()
        stepped = []
        for sweep_id, signature in _signatures(session, ids).items() if ids else []:
            seen = self._seen.get(sweep_id)
            if seen is not None and seen[0] == signature and now - seen[1] < FULL_STEP_S:
                continue
            try:
                if step(session, sweep_id, self.settings, self.enqueue, self.owner):
                    stepped.append(sweep_id)
            except Exception as err:  # one broken sweep must not starve the others: logged, retried next tick
                session.rollback()
                log.warning("sweep %s: controller step failed: %s", sweep_id, err)
                continue
            # the signature read before the step: anything that changed since (the step's own trials, a
            # run that ended meanwhile) differs from it and brings another step at the next tick
            self._seen[sweep_id] = (signature, now)
        for gone in set(self._seen) - set(ids):
            del self._seen[gone]
        return stepped


def control_all(session: Session, settings: Settings, enqueue: Enqueue, owner: str = CONTROLLER_ID) -> list[int]:
    """One full step of every running sweep this process may hold."""
    ids = session.scalars(select(Sweep.id).where(Sweep.state == "running").order_by(Sweep.id)).all()
    return [sweep_id for sweep_id in ids if step(session, sweep_id, settings, enqueue, owner)]


# -- the API's services ----------------------------------------------------------------------------


def create_sweep(session: Session, body: SweepCreate, settings: Settings, enqueue: Enqueue) -> Sweep:
    """Validate (422s name the field, nothing stored), store the sweep, start its first trials."""
    extra = validate(session, body, settings)
    budget = body.budget
    if body.method == "grid":
        budget = min(budget, _grid_size({k: v.model_dump() for k, v in body.space.items()}))
    sweep = Sweep(
        name=body.name or f"{body.preset or body.kind} sweep",
        kind=body.kind,
        preset=body.preset,
        base_spec=deep_update(body.spec, extra),
        space={k: v.model_dump() for k, v in body.space.items()},
        method=body.method,
        seed=body.seed,
        budget=budget,
        parallel=body.parallel,
        objective=body.objective.model_dump(),
        direction=body.direction,
        pruner=body.pruner.model_dump(),
        state="running",
    )
    session.add(sweep)
    session.commit()
    step(session, sweep.id, settings, enqueue)
    session.refresh(sweep)
    return sweep


def get_sweep(session: Session, sweep_id: int) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} does not exist")
    session.refresh(sweep)
    return sweep


def list_sweeps(
    session: Session, state: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[Sweep], int]:
    query = select(Sweep)
    if state:
        query = query.where(Sweep.state.in_(state.split(",")))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    return list(session.scalars(query.order_by(Sweep.id.desc()).limit(limit).offset(offset))), total


def cancel_sweep(session: Session, sweep_id: int) -> Sweep:
    """The sweep stops proposing; its running trials' runs (and evaluations) are cancelled."""
    sweep = get_sweep(session, sweep_id)
    changed = session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.state == "running")
        .values(state="cancelled", finished_at=utcnow(), controller=None, controller_until=None)
    ).rowcount
    session.commit()
    if not changed:
        session.refresh(sweep)
        raise Conflict(f"sweep {sweep_id} is already {sweep.state}")
    trials, runs = _load(session, sweep_id)
    for trial in trials:
        if trial.state in ("running", "pruned"):
            for run_id in (trial.run_id, trial.eval_run_id):
                if run_id and runs.get(run_id) is not None and runs[run_id].state not in TERMINAL_STATES:
                    transitions.request_cancel(session, run_id, f"sweep {sweep_id} cancelled")
            if trial.state == "running":
                _finish_trial(session, trial, "cancelled", note="sweep cancelled")
    session.refresh(sweep)
    return sweep


# fANOVA fits a random forest: computed once per number of complete trials, not at every poll
_IMPORTANCE_CACHE: dict[tuple[int, int], dict[str, float] | None] = {}


def importance(sweep: Sweep, trials: list[SweepTrial]) -> dict[str, float] | None:
    """Optuna's fANOVA importance of each param, once 2 trials are complete (None when it cannot be
    computed: too few trials, or a param that never varied)."""
    complete = [t for t in trials if t.state == "complete" and t.value is not None]
    if len(complete) < 2 or len(sweep.space) == 0:
        return None
    key = (sweep.id, len(complete))
    if key not in _IMPORTANCE_CACHE:
        o = _optuna()
        try:
            study = build_study(sweep, complete_only(trials), {}, number=0)
            found = o.importance.get_param_importances(study, evaluator=o.importance.FanovaImportanceEvaluator(seed=0))
            _IMPORTANCE_CACHE[key] = {k: float(v) for k, v in found.items() if math.isfinite(v)}
        except (RuntimeError, ValueError, ZeroDivisionError):
            _IMPORTANCE_CACHE[key] = None
    return _IMPORTANCE_CACHE[key]


def complete_only(trials: list[SweepTrial]) -> list[SweepTrial]:
    return [t for t in trials if t.state == "complete" and t.value is not None]


def _duration(
    trial: SweepTrial, run: Run | None, child: Run | None, now: datetime
) -> tuple[datetime | None, datetime | None, float | None]:
    start = run.started_at if run is not None and run.started_at else None
    end = trial.finished_at
    if end is None and trial.state != "running":
        end = (child or run).finished_at if (child or run) is not None else None
    if trial.state == "pruned" and run is not None and run.finished_at:
        end = run.finished_at
    if start is None:
        return None, end, None
    return start, end, max(0.0, ((end or now) - start).total_seconds())


def detail(session: Session, sweep: Sweep) -> dict[str, Any]:
    """The sweep with its trials (params, objective, state, duration), best trial and importances."""
    trials, runs = _load(session, sweep.id)
    now = utcnow()
    rows = []
    for trial in trials:
        run = runs.get(trial.run_id or -1)
        child = runs.get(trial.eval_run_id or -1)
        started, finished, duration = _duration(trial, run, child, now)
        rows.append(
            {
                "number": trial.number,
                "params": trial.params,
                "state": trial.state,
                "value": trial.value,
                "run_id": trial.run_id,
                "run_state": run.state if run else None,
                "eval_run_id": trial.eval_run_id,
                "eval_state": child.state if child else None,
                "started_at": started,
                "finished_at": finished,
                "duration_s": duration,
                "note": trial.note,
            }
        )
    best = _best(sweep, trials)
    counts = {state: sum(t.state == state for t in trials) for state in TRIAL_STATES}
    return {
        **{
            c: getattr(sweep, c)
            for c in (
                "id",
                "name",
                "kind",
                "preset",
                "base_spec",
                "space",
                "method",
                "seed",
                "budget",
                "parallel",
                "objective",
                "direction",
                "pruner",
                "state",
                "error",
                "best_number",
                "best_value",
                "created_at",
                "finished_at",
            )
        },
        "trials": rows,
        "counts": counts,
        "best": {"number": best.number, "value": best.value, "params": best.params, "run_id": best.run_id}
        if best
        else None,
        "importance": importance(sweep, trials),
    }
