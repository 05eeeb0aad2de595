"""Presets, run kinds with their JSON schemas, and the health check."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text

from obow.config import list_presets, preset_dict
from server.api.deps import READ_AUTH, DbDep, SettingsDep
from server.api.responses import AUTHENTICATED, BY_ID
from server.core import kinds as kinds_service
from server.core import workers as worker_rows
from server.core.errors import NotFound
from server.core.queue import QUEUES
from server.schemas import KindOut, PresetOut, UsageTotal
from server.services import organise as organise_service

router = APIRouter(tags=["meta"], dependencies=[READ_AUTH], responses=AUTHENTICATED)
# open to anyone (load balancers, `docker compose` health checks): it tells nothing about the runs
health_router = APIRouter(tags=["meta"])


@router.get("/usage", response_model=UsageTotal)
def usage(db: DbDep, settings: SettingsDep) -> UsageTotal:
    """Disk use of the artifact store: total, by folder (runs, pinned weights, uploads) and the largest
    run folders."""
    return organise_service.total_usage(db, settings.artifact_root)


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


class QueueHealthOut(BaseModel):
    last_seen_at: str | None  # ISO time of the freshest beat of a worker consuming the queue; null: never
    workers: int  # workers of the queue seen within the heartbeat lease


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    queues: dict[str, QueueHealthOut]


@health_router.get("/healthz", response_model=HealthOut)
def healthz(db: DbDep, settings: SettingsDep) -> HealthOut:
    """`ok` when the database answers and every queue has a worker seen within the heartbeat lease
    (`OBOW_LAB_HEARTBEAT_TIMEOUT_S`); `degraded` (still HTTP 200: the API itself serves, and a load
    balancer must not take it out of rotation because a GPU node is down) when a queue has none, so runs
    sent to it wait. A database that does not answer is a 500."""
    db.execute(text("SELECT 1"))
    health = worker_rows.queue_health(db, QUEUES, settings.heartbeat_timeout_s)
    status = "ok" if all(h.workers for h in health.values()) else "degraded"
    return HealthOut(status=status, queues={q: QueueHealthOut(**h.as_dict()) for q, h in health.items()})
