"""The artifact store: files under ARTIFACT_ROOT, one row each with sha256 and size.

Stored paths are relative to the root and never come from a request; every read resolves them
(symlinks included) and refuses anything that lands outside the root.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from obow.hashing import sha256_of
from obow.io.sums import record_sha256
from server.core.errors import Forbidden
from server.core.models import Artifact
from server.core.text import clean_json


def run_dir(artifact_root: Path, run_id: int) -> Path:
    return artifact_root / "runs" / str(run_id)


def _json_safe(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The library's artifact metadata as every backend stores it: objects as text, NUL, lone
    surrogates and NaN made storable (a refused row would fail the run's checkpoint write)."""
    return clean_json(json.loads(json.dumps(dict(meta), default=str)))


def record(
    session: Session, artifact_root: Path, run_id: int, path: Path, kind: str, meta: Mapping[str, Any]
) -> Artifact:
    """Store a row for a file under the root (sha256 and size measured now). No commit."""
    root = artifact_root.resolve()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root):
        raise Forbidden(f"artifact {path} is outside ARTIFACT_ROOT {root}")
    meta = _json_safe(meta)
    row = Artifact(
        run_id=run_id,
        kind=kind,
        format=str(meta.get("format")) if meta.get("format") is not None else None,
        options=meta,
        path=resolved.relative_to(root).as_posix(),
        sha256=sha256_of(resolved),
        size=resolved.stat().st_size,
    )
    session.add(row)
    return row


def forget_deleted(session: Session, artifact_root: Path, run_id: int, kind: str) -> None:
    """Drop rows whose file the run itself removed (pretraining keeps only its newest checkpoint)."""
    for row in session.scalars(select(Artifact).where(Artifact.run_id == run_id, Artifact.kind == kind)):
        if not (artifact_root / row.path).exists():
            session.delete(row)


def inside_root(artifact_root: Path, stored: str) -> Path | None:
    """The file a stored path names, or None when it is absolute or resolves outside the root."""
    root = artifact_root.resolve()
    relative = Path(stored)
    target = (root / relative).resolve()
    if relative.is_absolute() or not target.is_relative_to(root):
        return None
    return target


PINNED_DIR = "pinned"


def pin(artifact_root: Path, stored: str, sha256: str) -> Path:
    """A file a child run can read for as long as it needs, whatever its parent does meanwhile.

    A running pretraining deletes its previous checkpoint when it writes the next one, so an evaluation
    or export that named the parent's file could find it gone. The file is hard-linked (no copy, same
    bytes) into `ARTIFACT_ROOT/pinned/<sha256><suffix>`: content-addressed, so children of the same
    checkpoint share one link; its digest goes into that folder's SHA256SUMS, which the library checks
    on load. Where no hard link can be made (another filesystem) it is copied and the copy verified.
    Raises FileNotFoundError when the file is already gone, ValueError when its bytes are not the ones
    recorded."""
    source = inside_root(artifact_root, stored)
    if source is None:
        raise Forbidden(f"artifact {stored} is outside ARTIFACT_ROOT")
    folder = artifact_root.resolve() / PINNED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{sha256}{source.suffix}"
    if target.is_file():
        return target
    temp = folder / f".{sha256}.{uuid.uuid4().hex}.tmp"
    try:
        try:
            os.link(source, temp)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(source, temp)
            if sha256_of(temp) != sha256:
                raise ValueError(f"artifact {stored} changed since it was recorded") from None
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    record_sha256(target, sha256)
    return target
