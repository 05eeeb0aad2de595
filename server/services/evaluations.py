"""Evaluations as answers: defaults that fit the parent, their expected cost, the result card of an
evaluation run, a parent's table of its evaluations, and the baselines they are read against.

Everything here is torch-free: the defaults and image counts are library facts (`obow.config.eval_defaults`),
the numbers come from the stored results through each kind's table (`server.core.headlines`), and the
baselines are runs of kind `baseline` that a worker computes once per protocol (`obow.eval.baselines`);
their spec is the cache key (`obow.config.eval.baseline_key`), their result the cached number.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from obow.config.eval import BASELINE_PROTOCOLS, EVAL_SPECS, BaselineSpec, EvalSpec, baseline_key, protocol_of
from obow.config.eval_defaults import DATASET_SIZES, evaluation_defaults, images_to_process
from server.core import kinds as kinds_service
from server.core.errors import Invalid, ServiceError, invalid
from server.core.headlines import headline_of, numbers_of
from server.core.models import Artifact, Run, RunState
from server.core.settings import Settings
from server.schemas import RunCreate
from server.services import backbones
from server.services import runs as runs_service

log = logging.getLogger(__name__)
# built-in data whose baselines the lab computes by itself (a user's folder could be any size)
BASELINE_DATASETS = tuple(name for name in DATASET_SIZES if name != "FoolboxImageNet")
FEATURES = {"raw_pixels": "raw pixels", "random_init": "random init"}
LIVE = (RunState.QUEUED, RunState.RUNNING, RunState.LOST, RunState.SUCCEEDED)


def is_evaluation(kind: str) -> bool:
    return kind in EVAL_SPECS and kind in kinds_service.kinds()


def _evaluation_kind(kind: str) -> str:
    if not is_evaluation(kind):
        raise invalid(("query", "kind"), f"'{kind}' is not an evaluation kind; use one of {', '.join(EVAL_SPECS)}")
    return kind


# -- defaults and cost ------------------------------------------------------------------------------


def _validated(kind: str, values: dict[str, Any], loc: tuple[str, ...]) -> EvalSpec:
    try:
        return EVAL_SPECS[kind].model_validate({**values, "kind": kind, "checkpoint": "-"})
    except ValidationError as err:
        raise Invalid([{"loc": [*loc, *item["loc"]], "msg": item["msg"], "type": item["type"]}
                       for item in err.errors()]) from None


def measured_speed(session: Session, parent: Run) -> dict[str, Any] | None:
    """Images per second of the parent's newest finished evaluation (its image count over its wall time),
    else the parent's own training speed (`img_per_s`: a training image costs more than an evaluation's,
    so that estimate errs long), else None."""
    children = session.scalars(
        select(Run).where(Run.parent_id == parent.id, Run.state == RunState.SUCCEEDED, Run.kind.in_(EVAL_SPECS))
        .order_by(Run.finished_at.desc()).limit(10)
    ).all()
    for child in children:
        if child.started_at is None or child.finished_at is None:
            continue
        seconds = (child.finished_at - child.started_at).total_seconds()
        try:
            spec = EVAL_SPECS[child.kind].model_validate(child.spec).model_dump(mode="json")
            images = images_to_process(child.kind, spec).images
        except ValidationError:
            continue
        if images and seconds > 0:
            return {"img_per_s": images / seconds, "source": f"measured by evaluation #{child.id}", "run_id": child.id}
    speed = (parent.last_metrics or {}).get("img_per_s")
    if isinstance(speed, int | float) and not isinstance(speed, bool) and speed > 0:
        return {"img_per_s": float(speed), "source": f"training speed of run #{parent.id} (errs long)",
                "run_id": parent.id}
    return None


def cost(session: Session, parent: Run, kind: str, spec: EvalSpec) -> dict[str, Any]:
    counted = images_to_process(kind, spec.model_dump(mode="json"))
    speed = measured_speed(session, parent)
    seconds = counted.images / speed["img_per_s"] if counted.images is not None and speed else None
    if counted.images is None:
        text = counted.parts[0]
    elif seconds is None:
        text = f"{counted.images:,} images to process; time unknown (no speed measured yet)"
    else:
        text = (f"{counted.images:,} images to process; about {_duration(seconds)} at "
                f"{speed['img_per_s']:.0f} img/s ({speed['source']})")
    return {"images": counted.images, "parts": counted.parts, "speed": speed, "seconds": seconds, "text": text}


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def defaults(session: Session, parent_id: int, kind: str) -> dict[str, Any]:
    """`GET /runs/{id}/evaluation-defaults`: the spec values, where they came from, and their cost."""
    parent = runs_service.get_run(session, parent_id)
    kind = _evaluation_kind(kind)
    values, notes = evaluation_defaults(kind, parent.kind, parent.spec)
    spec = _validated(kind, values, ("spec",))
    shown = {k: v for k, v in spec.model_dump(mode="json").items() if k not in ("checkpoint", "kind")}
    return {"kind": kind, "parent_id": parent.id, "spec": shown, "notes": notes,
            "cost": cost(session, parent, kind, spec)}


def estimate(session: Session, parent_id: int, kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """`POST /runs/{id}/evaluation-cost`: the cost of a spec as the form holds it (422 naming a bad field)."""
    parent = runs_service.get_run(session, parent_id)
    if not is_evaluation(kind):
        raise invalid(("body", "kind"), f"'{kind}' is not an evaluation kind; use one of {', '.join(EVAL_SPECS)}")
    values = {k: v for k, v in values.items() if k not in ("checkpoint", "kind")}
    return cost(session, parent, kind, _validated(kind, values, ("body", "spec")))


# -- checkpoint, protocol, result card --------------------------------------------------------------


def checkpoint_of(session: Session, run: Run) -> dict[str, Any] | None:
    """The weights an evaluation read: its pinned file is named by its sha256, which finds the artifact
    (run, epoch, file name) it was pinned from."""
    field = kinds_service.weights_field(run.kind) if run.kind in kinds_service.kinds() else None
    path = (run.spec or {}).get(field) if field else None
    if not isinstance(path, str):
        return None
    digest = Path(path).name.split(".")[0]
    found = session.scalars(
        select(Artifact).where(Artifact.sha256 == digest).order_by(Artifact.id.desc())
    ).first() if len(digest) == 64 else None
    if found is None:
        return {"run_id": run.parent_id, "epoch": None, "name": Path(path).name, "artifact_id": None}
    epoch = (found.options or {}).get("epoch")
    return {"run_id": found.run_id, "epoch": epoch if isinstance(epoch, int) else None,
            "name": Path(found.path).name, "artifact_id": found.id}


def protocol_text(kind: str, spec: dict[str, Any], result: dict[str, Any] | None) -> str:
    """The protocol in one line, with the image counts the run really used when it has finished."""
    result = result or {}
    try:
        parsed = EVAL_SPECS[kind].model_validate({**spec, "checkpoint": "-"}) if kind in EVAL_SPECS else None
    except ValidationError:
        parsed = None
    if parsed is None:
        return kind
    s = parsed
    counted = images_to_process(kind, s.model_dump(mode="json"))
    train, test = result.get("train_images"), result.get("test_images")
    sizes = f"{train} train / {test} test images" if train is not None and test is not None else (
        "; ".join(counted.parts[:2]) if counted.images is not None else "full splits")
    view = f"{s.size} px"
    if kind == "linear":
        extra = [f"{s.epochs} epochs", f"lr {s.lr:g}" + (" cosine" if s.cos_schedule else "")]
        if s.precache:
            extra.append(f"cached features ({s.cache_views})")
        if s.batch_norm:
            extra.append("BN")
        return f"linear probe on {s.dataset} ({sizes}, {view}), " + ", ".join(extra)
    if kind == "knn":
        return f"weighted kNN on {s.dataset} ({sizes}, {view}), k={','.join(map(str, s.k))}, T={s.temperature:g}"
    if kind == "semisup":
        return f"fine-tuning on {s.percentage:g}% labels of {s.dataset} ({sizes}, {view}), {s.epochs} epochs"
    if kind == "fewshot":
        return (f"{s.n_way}-way {','.join(map(str, s.k_shot))}-shot on {s.dataset} {s.split} ({view}), "
                f"{s.episodes} episodes, {s.n_query} queries per class")
    return f"linear SVMs on {s.dataset} ({sizes}, {view}), {s.folds}-fold CV over {len(s.costs)} costs"


def card(session: Session, run: Run, with_baselines: bool = True) -> dict[str, Any] | None:
    """An evaluation's result card: its numbers, headline, protocol, checkpoint and baselines."""
    if not is_evaluation(run.kind):
        return None
    headline = headline_of(run.kind, run.result, run.last_metrics)
    return {
        "run_id": run.id,
        "kind": run.kind,
        "state": run.state,
        "headline": headline,
        "numbers": numbers_of(run.kind, run.result, run.last_metrics),
        "protocol": protocol_text(run.kind, run.spec or {}, run.result),
        "checkpoint": checkpoint_of(session, run),
        "baselines": baselines_for(session, run, headline) if with_baselines else [],
    }


def table(session: Session, parent_id: int) -> list[dict[str, Any]]:
    """A run's evaluations, newest first, as cards (numbers, not paths)."""
    runs_service.get_run(session, parent_id)
    children = session.scalars(
        select(Run).where(Run.parent_id == parent_id, Run.kind.in_(EVAL_SPECS)).order_by(Run.id.desc()).limit(200)
    ).all()
    return [c for c in (card(session, child) for child in children) if c is not None]


# -- baselines --------------------------------------------------------------------------------------


def baseline_specs(session: Session, run: Run) -> list[BaselineSpec]:
    """The baselines an evaluation is read against: its protocol (linear, kNN) on the same built-in
    data, with raw pixels and with a random network of the evaluated architecture (when known)."""
    if run.kind not in BASELINE_PROTOCOLS or not isinstance(run.spec, dict):
        return []
    try:
        spec = EVAL_SPECS[run.kind].model_validate(run.spec)
    except ValidationError:
        return []
    if spec.dataset not in BASELINE_DATASETS:
        return []
    evaluation = {**protocol_of(spec), "workers": 0}
    common = {"protocol": run.kind, "dataset": spec.dataset, "data_dir": spec.data_dir, "evaluation": evaluation}
    out = [BaselineSpec(features="raw_pixels", **common)]
    weights = checkpoint_of(session, run)
    artifact = session.get(Artifact, weights["artifact_id"]) if weights and weights["artifact_id"] else None
    source = session.get(Run, artifact.run_id) if artifact is not None else (
        session.get(Run, run.parent_id) if run.parent_id else None)
    backbone = backbones.of_weights(source, artifact) if source is not None else None
    if backbone is not None:
        out.append(BaselineSpec(features="random_init", **common, **backbone.as_dict()))
    return out


def find_baseline(session: Session, spec: BaselineSpec) -> Run | None:
    """The newest baseline run with this key that succeeded, else one still on its way."""
    key = baseline_key(spec)
    found = None
    for row in session.scalars(
        select(Run).where(Run.kind == "baseline", Run.state.in_(LIVE)).order_by(Run.id.desc())
    ):
        try:
            same = baseline_key(BaselineSpec.model_validate(row.spec)) == key
        except ValidationError:
            continue
        if same and row.state == RunState.SUCCEEDED:
            return row
        found = found or (row if same else None)
    return found


def ensure_baselines(session: Session, run: Run, settings: Settings, enqueue) -> list[Run]:
    """Queue the evaluation's baselines that are neither cached nor on their way (once per protocol)."""
    if "baseline" not in kinds_service.kinds():
        return []
    made = []
    for spec in baseline_specs(session, run):
        if find_baseline(session, spec) is None:
            body = RunCreate(kind="baseline", spec=spec.model_dump(mode="json"))
            try:
                made.append(runs_service.create_run(
                    session, body, settings, enqueue, name=f"baseline {spec.protocol} {spec.features} {spec.dataset}"
                ))
            except ServiceError as err:  # the evaluation itself is queued: a baseline is never its failure
                log.warning("baseline %s of run %s not queued: %s", spec.features, run.id, err.message)
    return made


def baselines_for(session: Session, run: Run, headline: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for spec in baseline_specs(session, run):
        found = find_baseline(session, spec)
        value = headline_of("baseline", found.result, None) if found is not None else None
        delta = headline["value"] - value["value"] if headline and value else None
        out.append({"features": spec.features, "label": FEATURES[spec.features],
                    "run_id": found.id if found else None, "state": found.state if found else None,
                    "value": value["value"] if value else None, "delta": delta})
    return out
