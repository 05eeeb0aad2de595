"""Uploading an official OBoW checkpoint: stored (size-capped), then converted by an `import` run."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from server.api.deps import READ_AUTH, DbDep, EnqueueDep, SettingsDep, TokenDep
from server.api.responses import AUTHENTICATED, BODY, WRITE
from server.core.errors import TooLarge
from server.schemas import RunOut
from server.services import imports as imports_service

router = APIRouter(prefix="/imports", tags=["imports"], dependencies=[READ_AUTH], responses=AUTHENTICATED)


@router.post("", status_code=201, response_model=RunOut, responses={**WRITE, **BODY})
async def create_import(
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
    token: TokenDep,
    name: Annotated[
        str,
        Query(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$", description="A name for the run and the file"),
    ] = "import",
) -> RunOut:
    """The request body is the file itself (`Content-Type: application/octet-stream`)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise TooLarge(
            f"upload is larger than the {settings.max_upload_bytes} byte limit (OBOW_LAB_MAX_UPLOAD_MB)"
        )
    run = await imports_service.create_import(
        db, request.stream(), name, settings, enqueue, launched_by=token.name
    )
    return RunOut.model_validate(run)
