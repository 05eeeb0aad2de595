"""Exports: a child run of kind `export` that converts one of a parent's checkpoints (cpu queue).

A format the checkpoint's backbone cannot take (torchvision, Caffe2 or Detectron2 from a small-stem or
narrow ResNet) is refused here with a 422 naming `body.format` and the library's reason, rather than
queued to fail in the worker; `export_formats` tells the dashboard the same before it submits.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from obow.io.export_formats import EXPORT_FORMATS, backbone_error
from server.core import kinds as kinds_service
from server.core.errors import Invalid, invalid
from server.core.models import Artifact, Run
from server.core.settings import Settings
from server.schemas import ExportCreate, RunCreate
from server.services import backbones
from server.services import runs as runs_service


def _weights(session: Session, run: Run, artifact_id: int | None) -> Artifact | None:
    if artifact_id is not None:
        return runs_service.weights_artifact(session, run, artifact_id)
    return runs_service.latest_weights(session, run)


def export_formats(session: Session, run_id: int, artifact_id: int | None = None) -> dict[str, Any]:
    """Each format with `allowed` and `reason` for the run's newest (or the named) weights."""
    run = runs_service.get_run(session, run_id)
    backbone = backbones.of_weights(run, _weights(session, run, artifact_id))
    return {"backbone": backbone.as_dict() if backbone else None, "formats": backbones.export_formats(backbone)}


def create_export(
    session: Session, run_id: int, body: ExportCreate, settings: Settings, enqueue, launched_by: str | None = None
) -> Run:
    run = runs_service.get_run(session, run_id)
    if "export" not in kinds_service.kinds():
        raise invalid(("body", "format"), "this installation has no 'export' run kind")
    weights = _weights(session, run, body.artifact_id)
    backbone = backbones.of_weights(run, weights)
    if backbone is not None and body.format in EXPORT_FORMATS:
        reason = backbone_error(body.format, backbone.small_stem, backbone.width, backbone.block4_width)
        if reason:
            raise invalid(("body", "format"), reason, "format_not_possible")
    spec = {**body.options, "format": body.format}
    try:
        return runs_service.create_run(
            session, RunCreate(kind="export", spec=spec, parent_id=run_id), settings, enqueue,
            artifact_id=body.artifact_id,
            launched_by=launched_by,
        )
    except Invalid as err:  # name the request's fields: `format` and `options.<name>`, not the spec's
        raise Invalid([{**e, "loc": _request_loc(e["loc"])} for e in err.errors]) from None


def _request_loc(loc: list) -> list:
    if loc[:2] != ["body", "spec"] or len(loc) < 3:
        return loc
    return ["body", "format"] if loc[2] == "format" else ["body", "options", *loc[2:]]
