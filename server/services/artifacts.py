"""Artifacts for the API: listing them, finding them for download, receiving uploads (the store itself,
recording files and resolving stored paths, is `server.core.artifacts`).

A download path always comes from the database row and must resolve (symlinks included) inside
ARTIFACT_ROOT; a row that points elsewhere is refused, never served.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core.artifacts import inside_root
from server.core.errors import Forbidden, NotFound, TooLarge
from server.core.models import Artifact
from server.schemas import ArtifactOut

SAFE_STEM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}")


def to_out(row: Artifact) -> ArtifactOut:
    return ArtifactOut(
        id=row.id,
        run_id=row.run_id,
        kind=row.kind,
        format=row.format,
        options=row.options or {},
        name=Path(row.path).name,
        sha256=row.sha256,
        size=row.size,
        created_at=row.created_at,
        download_url=f"/api/v1/artifacts/{row.id}/download",
    )


def list_for_run(session: Session, run_id: int) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.id)))


def file_for_download(session: Session, artifact_root: Path, artifact_id: int) -> tuple[Artifact, Path]:
    row = session.get(Artifact, artifact_id)
    if row is None:
        raise NotFound(f"artifact {artifact_id} does not exist")
    target = inside_root(artifact_root, row.path)
    if target is None:
        raise Forbidden(f"artifact {artifact_id} is not inside the artifact store")
    if not target.is_file():
        raise NotFound(f"artifact {artifact_id}'s file is missing from the artifact store")
    return row, target


async def save_upload(chunks: AsyncIterator[bytes], artifact_root: Path, max_bytes: int, stem: str) -> Path:
    """Stream an upload to a fresh directory under the root as `<stem>.pth` (`stem` is a validated plain
    name); over `max_bytes` it is deleted and refused. No client-supplied path is ever used."""
    if not SAFE_STEM.fullmatch(stem):
        raise Forbidden(f"'{stem}' is not a plain file name")
    target_dir = artifact_root / "uploads" / uuid.uuid4().hex
    target_dir.mkdir(parents=True)
    target = target_dir / f"{stem}.pth"
    written = 0
    try:
        with open(target, "wb") as handle:
            async for chunk in chunks:
                written += len(chunk)
                if written > max_bytes:
                    raise TooLarge(
                        f"upload is larger than the {max_bytes} byte limit (OBOW_LAB_MAX_UPLOAD_MB)"
                    )
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        target_dir.rmdir()
        raise
    return target
