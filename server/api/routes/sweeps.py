"""Sweeps: create (validated against the kind's spec class, 422 naming each bad key), list, read (trials,
best, importance), cancel (its running trials are cancelled too). Thin: the work is in
`server.services.sweeps`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from server.api.deps import READ_AUTH, DbDep, EnqueueDep, IdPath, SettingsDep, StrictJsonRoute, TokenDep
from server.api.responses import AUTHENTICATED, BODY, BY_ID, WRITE, errors
from server.schemas import INT64_MAX, PRINTABLE
from server.services import sweeps as sweeps_service
from server.sweep_schemas import SweepCreate, SweepDetail, SweepOut, SweepPage

router = APIRouter(
    prefix="/sweeps", tags=["sweeps"], route_class=StrictJsonRoute, dependencies=[READ_AUTH], responses=AUTHENTICATED
)


@router.post("", status_code=201, response_model=SweepDetail, responses={**WRITE, **BODY})
def create_sweep(body: SweepCreate, db: DbDep, settings: SettingsDep, enqueue: EnqueueDep, _: TokenDep) -> SweepDetail:
    """Validate the space against the kind's spec (unknown key, range outside the field's bounds, wrong
    type, a range in a grid sweep: 422 at ["body", "space", <key>]), store the sweep, start its first trials."""
    sweep = sweeps_service.create_sweep(db, body, settings, enqueue)
    return SweepDetail.model_validate(sweeps_service.detail(db, sweep))


@router.get("", response_model=SweepPage)
def list_sweeps(
    db: DbDep,
    state: Annotated[str | None, Query(description="Comma-separated states", pattern=PRINTABLE)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
) -> SweepPage:
    items, total = sweeps_service.list_sweeps(db, state, limit, offset)
    return SweepPage(items=[SweepOut.model_validate(s) for s in items], total=total, limit=limit, offset=offset)


@router.get("/{sweep_id}", response_model=SweepDetail, responses=BY_ID)
def get_sweep(sweep_id: IdPath, db: DbDep) -> SweepDetail:
    return SweepDetail.model_validate(sweeps_service.detail(db, sweeps_service.get_sweep(db, sweep_id)))


@router.post("/{sweep_id}/cancel", response_model=SweepDetail, responses={**WRITE, **BY_ID, **errors(409)})
def cancel_sweep(sweep_id: IdPath, db: DbDep, _: TokenDep) -> SweepDetail:
    sweep = sweeps_service.cancel_sweep(db, sweep_id)
    return SweepDetail.model_validate(sweeps_service.detail(db, sweep))
