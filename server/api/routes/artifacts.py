"""Artifact downloads: the file is found through the database row, never from the request."""

from __future__ import annotations

import base64

from fastapi import APIRouter
from fastapi.responses import FileResponse

from server.api.deps import READ_AUTH, DbDep, IdPath, SettingsDep
from server.api.responses import AUTHENTICATED, BY_ID, errors
from server.services import artifacts as artifacts_service
from server.services import words as words_service

router = APIRouter(prefix="/artifacts", tags=["artifacts"], dependencies=[READ_AUTH], responses=AUTHENTICATED)
# a row pointing outside the artifact store is refused (403), a missing row or file is a 404
FILE = {**BY_ID, **errors(403)}


@router.get("/{artifact_id}/download", response_class=FileResponse, responses=FILE)
def download(artifact_id: IdPath, db: DbDep, settings: SettingsDep) -> FileResponse:
    """The file with Content-Length, Range support and its sha256 (`X-Content-SHA256`, `Repr-Digest`)."""
    row, path = artifacts_service.file_for_download(db, settings.artifact_root, artifact_id)
    digest = base64.b64encode(bytes.fromhex(row.sha256)).decode()
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=path.name,
        headers={"X-Content-SHA256": row.sha256, "Repr-Digest": f"sha-256=:{digest}:"},
    )


@router.get("/{artifact_id}/image", response_class=FileResponse, responses=FILE)
def image(artifact_id: IdPath, db: DbDep, settings: SettingsDep) -> FileResponse:
    """A visual-word contact sheet as an inline PNG (the gallery positions patches on it with CSS)."""
    path = words_service.image_for(db, settings.artifact_root, artifact_id)
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
