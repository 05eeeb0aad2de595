"""Presets, run kinds with their JSON schemas, and the health check."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from obow.config import list_presets, preset_dict
from server.api.deps import READ_AUTH, DbDep
from server.api.responses import AUTHENTICATED, BY_ID
from server.core import kinds as kinds_service
from server.core.errors import NotFound
from server.schemas import KindOut, PresetOut

router = APIRouter(tags=["meta"], dependencies=[READ_AUTH], responses=AUTHENTICATED)
# open to anyone (load balancers, `docker compose` health checks): it tells nothing about the runs
health_router = APIRouter(tags=["meta"])


@router.get("/presets", response_model=list[PresetOut])
def presets() -> list[PresetOut]:
    return [PresetOut(name=n, kind=str(preset_dict(n).get("kind", "pretrain"))) for n in list_presets()]


@router.get("/presets/{name:path}", responses=BY_ID)
def preset(name: str) -> dict:
    """The preset's spec values (what the new-run form fills in)."""
    if name not in list_presets():
        raise NotFound(f"preset '{name}' does not exist; see GET /api/v1/presets")
    return preset_dict(name)


@router.get("/kinds", response_model=list[KindOut])
def kinds() -> list[KindOut]:
    return [
        KindOut(
            kind=k,
            **kinds_service.describe(k),
            needs_parent=kinds_service.weights_field(k) is not None,
            json_schema=kinds_service.json_schema(k),
        )
        for k in kinds_service.kinds()
    ]


@health_router.get("/healthz")
def healthz(db: DbDep) -> dict:
    db.execute(text("SELECT 1"))
    return {"status": "ok"}
