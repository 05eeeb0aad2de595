"""Visual-word galleries and vocabulary health, as the lab sees them.

A gallery is a `words` child run (cpu queue) of a pretraining run; once it has succeeded its
artifacts are the cached gallery, read back through their database rows (never a path from a
request). Collapse is derived from the latest `collapse_lev@i` metrics the training logged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.core import kinds as kinds_service
from server.core.errors import NotFound, invalid
from server.core.models import Artifact, Run, RunState
from server.core.settings import Settings
from server.schemas import RunCreate, WordsCreate
from server.services import artifacts as artifacts_service
from server.services import runs as runs_service

COLLAPSE_PREFIX = "collapse_"
# the contact sheet's layout (obow/analysis/words.py contact_sheet): one row per word in index order
LABEL_PX = 64
PATCH_PX = 48
GAP_PX = 2


def collapsed_levels(last_metrics: Mapping[str, Any] | None) -> list[str]:
    """Levels whose latest `collapse_<level>` value is 1 (fewer words used than the threshold)."""
    out = []
    for key, value in (last_metrics or {}).items():
        if key.startswith(COLLAPSE_PREFIX) and isinstance(value, int | float) and value >= 0.5:
            out.append(key[len(COLLAPSE_PREFIX):])
    return sorted(out)


def create_words(
    session: Session, run_id: int, body: WordsCreate, settings: Settings, enqueue, launched_by: str | None = None
) -> Run:
    runs_service.get_run(session, run_id)
    if "words" not in kinds_service.kinds():
        raise invalid(("body",), "this installation has no 'words' run kind")
    spec = body.model_dump(exclude_none=True)
    return runs_service.create_run(
        session, RunCreate(kind="words", spec=spec, parent_id=run_id), settings, enqueue,
        launched_by=launched_by,
    )


def latest_words_run(session: Session, run_id: int, succeeded: bool = False) -> Run | None:
    query = select(Run).where(Run.parent_id == run_id, Run.kind == "words")
    if succeeded:
        query = query.where(Run.state == RunState.SUCCEEDED)
    return session.scalars(query.order_by(Run.id.desc())).first()


def _level_of(row: Artifact) -> str:
    return str((row.options or {}).get("level") or Path(row.path).stem.removeprefix("visual_words_"))


def gallery(session: Session, artifact_root: Path, run_id: int) -> dict[str, Any] | None:
    """The newest succeeded gallery of a run: {"run", "levels": {level: {"sheet_id", "index"}}}."""
    words_run = latest_words_run(session, run_id, succeeded=True)
    if words_run is None:
        return None
    rows = session.scalars(
        select(Artifact).where(Artifact.run_id == words_run.id, Artifact.kind.in_(("words", "words-index")))
    ).all()
    levels: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = levels.setdefault(_level_of(row), {})
        if row.kind == "words":
            entry["sheet_id"] = row.id
        else:
            _, path = artifacts_service.file_for_download(session, artifact_root, row.id)
            entry["index"] = json.loads(path.read_text())
    levels = {k: v for k, v in sorted(levels.items()) if "sheet_id" in v and "index" in v}
    return {"run": words_run, "levels": levels}


def page_of_words(
    index: Mapping[str, Any], page: int, per_page: int = 16, word: int | None = None
) -> dict[str, Any]:
    """One page of the gallery; `word` jumps to the page holding that word id. Each patch gets its
    offset in the contact sheet (row = position in the index, column = position in the row)."""
    words = list(index.get("words", []))
    found = None
    if word is not None:
        found = next((i for i, w in enumerate(words) if w["word"] == word), None)
        if found is not None:
            page = found // per_page
    pages = max(1, -(-len(words) // per_page))
    page = min(max(page, 0), pages - 1)
    items = []
    for row in range(page * per_page, min(len(words), (page + 1) * per_page)):
        entry = words[row]
        patches = [
            {**p, "x": LABEL_PX + col * (PATCH_PX + GAP_PX), "y": row * (PATCH_PX + GAP_PX)}
            for col, p in enumerate(entry.get("patches", []))
        ]
        items.append({"word": entry["word"], "usage": entry.get("usage"), "patches": patches})
    return {"page": page, "pages": pages, "items": items, "total": len(words),
            "missing": word is not None and found is None}


def image_for(session: Session, artifact_root: Path, artifact_id: int) -> Path:
    """A gallery's contact sheet by artifact id (other kinds are not served as images)."""
    row, path = artifacts_service.file_for_download(session, artifact_root, artifact_id)
    if row.kind != "words" or path.suffix != ".png":
        raise NotFound(f"artifact {artifact_id} is not a visual-word sheet")
    return path
