"""Run kinds as the server sees them: straight from `obow.runs.RUN_KINDS`, so a kind added to the
library appears in the API and the dashboard form without a change here. Only spec classes (pydantic)
are imported, never an entry point (torch)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from obow import runs

# Kinds that never need a GPU go to the cpu queue; everything else (training, evaluations) to gpu.
CPU_KINDS = frozenset({"export", "import", "words"})  # words: a short inference pass
# Spec fields an evaluation/export reads its starting weights from, filled from the parent run.
CHECKPOINT_FIELDS = ("checkpoint",)
# Spec fields an import reads the uploaded file from.
SOURCE_FIELDS = ("source", "checkpoint", "path", "input")


def kinds() -> list[str]:
    return sorted(runs.RUN_KINDS)


def spec_class(kind: str) -> type[BaseModel]:
    return runs.spec_class(kind)


def queue_for(kind: str) -> str:
    return "cpu" if kind in CPU_KINDS else "gpu"


def checkpoint_field(kind: str) -> str | None:
    fields = spec_class(kind).model_fields
    return next((name for name in CHECKPOINT_FIELDS if name in fields), None)


def source_field(kind: str) -> str | None:
    fields = spec_class(kind).model_fields
    return next((name for name in SOURCE_FIELDS if name in fields), None)


def json_schema(kind: str) -> dict[str, Any]:
    return spec_class(kind).model_json_schema()
