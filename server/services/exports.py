"""Exports: a child run of kind `export` that converts a parent's latest checkpoint (cpu queue)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from server.core import kinds as kinds_service
from server.core.errors import Invalid, invalid
from server.core.models import Run
from server.core.settings import Settings
from server.schemas import ExportCreate, RunCreate
from server.services import runs as runs_service


def create_export(
    session: Session, run_id: int, body: ExportCreate, settings: Settings, enqueue, launched_by: str | None = None
) -> Run:
    runs_service.get_run(session, run_id)
    if "export" not in kinds_service.kinds():
        raise invalid(("body", "format"), "this installation has no 'export' run kind")
    spec = {**body.options, "format": body.format}
    try:
        return runs_service.create_run(
            session, RunCreate(kind="export", spec=spec, parent_id=run_id), settings, enqueue,
            launched_by=launched_by,
        )
    except Invalid as err:  # name the request's fields: `format` and `options.<name>`, not the spec's
        raise Invalid([{**e, "loc": _request_loc(e["loc"])} for e in err.errors]) from None


def _request_loc(loc: list) -> list:
    if loc[:2] != ["body", "spec"] or len(loc) < 3:
        return loc
    return ["body", "format"] if loc[2] == "format" else ["body", "options", *loc[2:]]
