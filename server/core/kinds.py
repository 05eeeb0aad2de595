"""Run kinds as the lab sees them: straight from `obow.runs.RUN_KINDS` and the facts each spec class
declares about itself (`obow.config.kinds`: queue, weights field, upload field, path fields). A kind
added to the library appears in the API, the CLI and the dashboard form without a change here. Only
spec classes (pydantic) are imported, never an entry point (torch)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from obow import runs
from obow.config.kinds import KindInfo, PathRoot, kind_info, path_fields


def kinds() -> list[str]:
    return sorted(runs.RUN_KINDS)


def spec_class(kind: str) -> type[BaseModel]:
    return runs.spec_class(kind)


def info(kind: str) -> KindInfo:
    return kind_info(spec_class(kind))


def queue_for(kind: str) -> str:
    return info(kind).queue


def weights_field(kind: str) -> str | None:
    return info(kind).weights_field


def upload_field(kind: str) -> str | None:
    return info(kind).upload_field


def paths(kind: str) -> dict[tuple[str, ...], PathRoot]:
    return path_fields(spec_class(kind))


def json_schema(kind: str) -> dict[str, Any]:
    return spec_class(kind).model_json_schema()


def describe(kind: str) -> dict[str, Any]:
    """What `/api/v1/kinds` tells clients and the dashboard form about a kind."""
    return {
        **info(kind).as_dict(),
        "path_fields": {".".join(loc): root.value for loc, root in paths(kind).items()},
    }
