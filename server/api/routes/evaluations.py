"""A run's evaluations as answers: launch defaults and their cost, result cards, the parent's table,
baselines, and which export formats its checkpoint can take."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from server.api.deps import READ_AUTH, DbDep, EnqueueDep, IdPath, SettingsDep, StrictJsonRoute, TokenDep
from server.api.responses import AUTHENTICATED, BODY, BY_ID, WRITE
from server.evaluation_schemas import CardOut, CostIn, CostOut, DefaultsOut, ExportFormatsOut
from server.schemas import INT32_MAX, RunOut
from server.services import evaluations as evaluations_service
from server.services import exports as exports_service
from server.services import runs as runs_service

router = APIRouter(
    prefix="/runs", tags=["evaluations"], route_class=StrictJsonRoute, dependencies=[READ_AUTH],
    responses=AUTHENTICATED,
)
KindQuery = Annotated[str, Query(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_\-]+$")]


@router.get("/{run_id}/evaluation-defaults", response_model=DefaultsOut, responses=BY_ID)
def evaluation_defaults(run_id: IdPath, db: DbDep, kind: KindQuery = "linear") -> DefaultsOut:
    """Spec values for a `kind` evaluation of this run (its data, view and normalisation, plus per-dataset
    CPU-sized settings), where they came from, and what they will cost."""
    return DefaultsOut.model_validate(evaluations_service.defaults(db, run_id, kind))


@router.post("/{run_id}/evaluation-cost", response_model=CostOut, responses={**WRITE, **BY_ID, **BODY})
def evaluation_cost(run_id: IdPath, body: CostIn, db: DbDep, _: TokenDep) -> CostOut:
    """The expected cost of an evaluation spec as the form holds it (nothing is stored; a POST like every
    other, so a session sends its CSRF token: only someone who may launch asks)."""
    return CostOut.model_validate(evaluations_service.estimate(db, run_id, body.kind, body.spec))


@router.get("/{run_id}/card", response_model=CardOut | None, responses=BY_ID)
def result_card(run_id: IdPath, db: DbDep) -> CardOut | None:
    """An evaluation's result card (null for other kinds)."""
    found = evaluations_service.card(db, runs_service.get_run(db, run_id))
    return CardOut.model_validate(found) if found else None


@router.get("/{run_id}/evaluations", response_model=list[CardOut], responses=BY_ID)
def evaluations(run_id: IdPath, db: DbDep) -> list[CardOut]:
    """The run's evaluations, newest first: numbers, protocol, checkpoint epoch and baselines."""
    return [CardOut.model_validate(c) for c in evaluations_service.table(db, run_id)]


@router.post("/{run_id}/baselines", status_code=201, response_model=list[RunOut], responses={**WRITE, **BY_ID})
def request_baselines(
    run_id: IdPath, db: DbDep, settings: SettingsDep, enqueue: EnqueueDep, _: TokenDep
) -> list[RunOut]:
    """Queue this evaluation's baselines that are neither cached nor on their way (an empty list: all are)."""
    run = runs_service.get_run(db, run_id)
    return [RunOut.model_validate(r) for r in evaluations_service.ensure_baselines(db, run, settings, enqueue)]


@router.get("/{run_id}/export-formats", response_model=ExportFormatsOut, responses=BY_ID)
def export_formats(
    run_id: IdPath, db: DbDep, artifact_id: Annotated[int | None, Query(ge=1, le=INT32_MAX)] = None
) -> ExportFormatsOut:
    """Every export format and whether the run's newest (or the named) weights can take it, with the reason."""
    return ExportFormatsOut.model_validate(exports_service.export_formats(db, run_id, artifact_id))
