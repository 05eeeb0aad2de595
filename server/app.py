"""The FastAPI application factory: `create_app()` (uvicorn: `server.app:create_app --factory`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from server import api_docs
from server.api.guards import BodyLimit, TrustedHost
from server.api.routes import artifacts, compare, evaluations, imports, meta, runs, sweeps
from server.core.db import check_migrated, make_engine, make_sessionmaker
from server.core.errors import Invalid, ServiceError
from server.core.queue import CeleryEnqueuer
from server.core.resources import lab_dir
from server.core.settings import Settings
from server.pages import router as pages_router
from server.services import sweeps as sweeps_service
from server.services.notifier import RunNotifier
from server.services.redelivery import Redelivery
from server.services.runs import Enqueue, sweep_lost
from server.services.throttle import LoginThrottle
from server.sweep_pages import router as sweep_pages_router

STATIC_DIR = lab_dir("static")
# how often the API steps its running sweeps: what the controller adds between a trial's end and the
# next trial's start is at most this (plus the step itself)
SWEEP_CONTROL_S = 0.25
STREAM_READ_THREADS = 16
log = logging.getLogger("obow.lab")


async def _sweep_forever(app: FastAPI, every_s: float) -> None:
    """Re-queue runs whose worker died (stale heartbeat) and runs whose message the broker lost."""
    settings: Settings = app.state.settings
    redelivery = Redelivery()

    def lost() -> list[int]:
        with app.state.sessionmaker() as session:
            return sweep_lost(session, settings.heartbeat_timeout_s, app.state.enqueue)

    def redeliver() -> list[int]:
        pending_task_ids = getattr(app.state.enqueue, "pending_task_ids", None)
        pending = pending_task_ids() if pending_task_ids else None
        if pending is None:
            return []
        with app.state.sessionmaker() as session:
            return redelivery.sweep(session, pending, app.state.enqueue)

    while True:
        await asyncio.sleep(every_s)
        for name, step in (("lost", lost), ("redelivered", redeliver)):
            try:
                ids = await run_in_threadpool(step)
                if ids:
                    log.warning("re-queued %s runs %s", name, ids)
            except Exception as err:  # the sweeper must outlive a database or broker hiccup
                log.warning("%s-run sweep failed: %s", name, err)


async def _control_sweeps_forever(app: FastAPI, every_s: float) -> None:
    """Step every running sweep (record finished trials, prune, start new ones). Two API processes may
    both run this: a lease on each sweep row lets one step it at a time (`server.services.sweeps`)."""

    controller = sweeps_service.Controller(app.state.settings, app.state.enqueue)

    def control() -> list[int]:
        with app.state.sessionmaker() as session:
            return controller.tick(session)

    while True:
        await asyncio.sleep(every_s)
        try:
            await run_in_threadpool(control)
        except Exception as err:  # the controller must outlive a database or broker hiccup
            log.warning("sweep controller step failed: %s", err)


def create_app(
    settings: Settings | None = None, enqueue: Enqueue | None = None, sweep_every_s: float | None = None
) -> FastAPI:
    """Refuses to build on a database that is not at the latest migration (says how to fix it).

    The lost-run sweep runs every half heartbeat lease (at most every 30 s), so a dead worker's run is
    re-queued at most 1.5 leases after its last heartbeat; `sweep_every_s=0` turns it off (tests).
    The sweep controller looks every `SWEEP_CONTROL_S` (0.25 s; off, like the sweeper, with
    `sweep_every_s=0`: tests drive `server.services.sweeps.step` themselves)."""
    settings = settings or Settings()
    if sweep_every_s is None:
        sweep_every_s = min(30.0, settings.heartbeat_timeout_s / 2)
    engine = make_engine(settings.db_url, pool_size=settings.db_pool_size)
    check_migrated(engine)
    settings.artifact_root.mkdir(parents=True, exist_ok=True)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = (
            [asyncio.create_task(_sweep_forever(app, sweep_every_s)),
             asyncio.create_task(_control_sweeps_forever(app, SWEEP_CONTROL_S))]
            if sweep_every_s > 0 else []
        )
        yield
        for task in tasks:
            task.cancel()
        app.state.notifier.stop()
        app.state.stream_reads.shutdown(wait=False)
        engine.dispose()

    app = FastAPI(
        title="OBoW Lab",
        version="1",
        description="Runs, metrics, artifacts of OBoW pretraining, evaluation and export.",
        docs_url=None,  # served offline by `server.api_docs` (Swagger UI /api/docs, ReDoc /api/redoc)
        openapi_url="/api/v1/openapi.json",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    app.state.enqueue = enqueue or CeleryEnqueuer(settings.celery_broker_url)
    app.state.login_throttle = LoginThrottle()
    app.state.notifier = RunNotifier(settings.db_url)  # wakes SSE streams when their run's rows change
    # SSE streams read in threads of their own: behind 40 busy request threads (the shared pool's
    # limit) a woken stream would wait for a thread, and its delivery delay with it
    app.state.stream_reads = ThreadPoolExecutor(max_workers=STREAM_READ_THREADS, thread_name_prefix="sse-read")

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, err: ServiceError) -> JSONResponse:
        if isinstance(err, Invalid):
            return JSONResponse({"detail": err.errors}, status_code=422)
        return JSONResponse({"detail": err.message}, status_code=err.status_code)

    api_routers = (
        runs.router, compare.router, evaluations.router, sweeps.router, artifacts.router, imports.router,
        meta.router, meta.health_router,
    )
    for router in api_routers:
        app.include_router(router, prefix="/api/v1")
    api_docs.install(app, "/api/v1/openapi.json", "OBoW Lab")
    app.include_router(sweep_pages_router)
    app.include_router(pages_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # outermost last: the Host check first, then the body cap (uploads have their own, streamed to disk)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, exempt={"/api/v1/imports"})
    app.add_middleware(TrustedHost, allowed=settings.allowed_hosts)
    return app
