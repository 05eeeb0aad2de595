"""Exports: a child run of kind `export` that converts a parent's latest checkpoint (cpu queue)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from server.core import kinds as kinds_service
from server.core.errors import invalid
from server.core.models import Run
from server.core.settings import Settings
from server.schemas import ExportCreate, RunCreate
from server.services import runs as runs_service


def create_export(session: Session, run_id: int, body: ExportCreate, settings: Settings, enqueue) -> Run:
    runs_service.get_run(session, run_id)
    if "export" not in kinds_service.kinds():
        raise invalid(("body", "format"), "this installation has no 'export' run kind")
    spec = {**body.options, "format": body.format}
    return runs_service.create_run(
        session, RunCreate(kind="export", spec=spec, parent_id=run_id), settings, enqueue
    )
