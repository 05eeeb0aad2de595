"""Runs: create, list, read, cancel, retry, and a run's metrics, logs, live events and artifacts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from server.api.deps import READ_AUTH, DbDep, EnqueueDep, IdPath, SettingsDep, StrictJsonRoute, TokenDep
from server.api.responses import AUTHENTICATED, BODY, BY_ID, WRITE, errors
from server.core import metrics as metrics_service
from server.schemas import (
    INT32_MAX,
    INT64_MAX,
    PRINTABLE,
    ArtifactOut,
    ExportCreate,
    LogOut,
    MetricsOut,
    RunCreate,
    RunDetail,
    RunOut,
    RunPage,
    RunPatch,
    RunSummary,
    RunUsage,
    Series,
    WordsCreate,
)
from server.services import artifacts as artifacts_service
from server.services import evaluations as evaluations_service
from server.services import events as events_service
from server.services import exports as exports_service
from server.services import logs as logs_service
from server.services import metrics_export
from server.services import organise as organise_service
from server.services import runs as runs_service
from server.services import search as search_service
from server.services import words as words_service

# A stream reads at most this often however often the run's writer commits (see stream_events).
SSE_MIN_GAP_S = 0.05

router = APIRouter(
    prefix="/runs", tags=["runs"], route_class=StrictJsonRoute, dependencies=[READ_AUTH], responses=AUTHENTICATED
)


@router.post("", status_code=201, response_model=RunOut, responses={**WRITE, **BODY})
def create_run(body: RunCreate, db: DbDep, settings: SettingsDep, enqueue: EnqueueDep, token: TokenDep) -> RunOut:
    """Validate the spec (422 names each bad field), store the run, then queue it. `launched_by` is the
    name of the token (or of the dashboard session's token) that asked. A linear or kNN evaluation on
    built-in data also queues its baselines (raw pixels, random init) unless cached."""
    run = runs_service.create_run(db, body, settings, enqueue, launched_by=token.name)
    evaluations_service.ensure_baselines(db, run, settings, enqueue)
    return RunOut.model_validate(run)


@router.get("", response_model=RunPage)
def list_runs(
    db: DbDep,
    state: Annotated[str | None, Query(description="Comma-separated states", pattern=PRINTABLE)] = None,
    kind: Annotated[str | None, Query(description="Comma-separated kinds", pattern=PRINTABLE)] = None,
    parent_id: Annotated[int | None, Query(ge=1, le=INT32_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    q: Annotated[
        str | None,
        Query(
            max_length=search_service.MAX_QUERY_CHARS,
            description="Search: free words (name, tag, note), kind: state: project: tag: by: parent: "
            "archived:yes|any, spec comparisons (optim.lr>0.01), final metrics (knn_top1_k20>=80); see README",
        ),
    ] = None,
    sort: Annotated[
        str | None,
        Query(max_length=300, description="A column, spec key or metric; '-' in front: descending"),
    ] = None,
    top_level: Annotated[bool, Query(description="Only runs without a parent, each with its child_count")] = False,
) -> RunPage:
    """Archived runs are left out unless the query asks (`archived:yes`, `archived:any`)."""
    items, total = runs_service.list_runs(db, state, kind, parent_id, limit, offset, q, sort, top_level)
    return RunPage(items=[RunSummary.model_validate(r) for r in items], total=total, limit=limit, offset=offset)


@router.get("/{run_id}", response_model=RunDetail, responses=BY_ID)
def get_run(run_id: IdPath, db: DbDep) -> RunDetail:
    run = runs_service.get_run(db, run_id)
    children, _ = runs_service.list_runs(db, parent_id=run_id, limit=500)
    base = RunOut.model_validate(run).model_dump()
    return RunDetail(
        **base,
        attempts=run.attempts,
        artifacts=[artifacts_service.to_out(a) for a in run.artifacts],
        children=[RunSummary.model_validate(c) for c in children],
    )


@router.patch("/{run_id}", response_model=RunOut, responses={**WRITE, **BY_ID, **BODY})
def patch_run(run_id: IdPath, body: RunPatch, db: DbDep, _: TokenDep) -> RunOut:
    """Rename, retag, annotate, move to a project, archive or unarchive (with its children). Only the
    fields sent change; never the spec or the state."""
    return RunOut.model_validate(organise_service.patch_run(db, run_id, body))


@router.get("/{run_id}/usage", response_model=RunUsage, responses=BY_ID)
def run_usage(run_id: IdPath, db: DbDep, settings: SettingsDep) -> RunUsage:
    """The run with everything below it: runs, metric points, log lines, files and bytes (what a delete
    removes), and which of them are still active."""
    return organise_service.usage(db, settings.artifact_root, run_id)


@router.delete("/{run_id}", response_model=RunUsage, responses={**WRITE, **BY_ID, **errors(409)})
def delete_run(run_id: IdPath, db: DbDep, settings: SettingsDep, _: TokenDep) -> RunUsage:
    """Delete the run, its children (and theirs), their metrics, logs and artifact files; 409 while any
    of them is queued, running or lost, or is a trial of a running sweep. Answers what was removed."""
    return organise_service.delete_run(db, settings.artifact_root, run_id)


@router.post("/{run_id}/cancel", response_model=RunOut, responses={**WRITE, **BY_ID, **errors(409)})
def cancel_run(run_id: IdPath, db: DbDep, _: TokenDep) -> RunOut:
    return RunOut.model_validate(runs_service.cancel_run(db, run_id))


@router.post(
    "/{run_id}/retry", status_code=201, response_model=RunOut, responses={**WRITE, **BY_ID, **errors(409)}
)
def retry_run(run_id: IdPath, db: DbDep, enqueue: EnqueueDep, _: TokenDep) -> RunOut:
    return RunOut.model_validate(runs_service.retry_run(db, run_id, enqueue))


@router.get("/{run_id}/metrics", response_model=MetricsOut, responses=BY_ID)
def get_metrics(
    run_id: IdPath,
    db: DbDep,
    keys: Annotated[str | None, Query(description="Comma-separated keys (default: all)", pattern=PRINTABLE)] = None,
    max_points: Annotated[int, Query(ge=2, le=100_000)] = 2000,
    step_min: Annotated[int | None, Query(ge=-INT64_MAX, le=INT64_MAX)] = None,
    step_max: Annotated[int | None, Query(ge=-INT64_MAX, le=INT64_MAX)] = None,
) -> MetricsOut:
    run = runs_service.get_run(db, run_id)
    wanted = metrics_service.keys_in(keys.split(",") if keys else None, run.metric_keys or [])
    out = []
    for key in wanted:
        steps, values, down, total = metrics_service.series(db, run_id, key, max_points, step_min, step_max)
        out.append(Series(key=key, steps=steps, values=values, downsampled=down, total_points=total))
    return MetricsOut(run_id=run_id, series=out)


def _metrics_download(request: Request, run_id: int, chunks, media_type: str, suffix: str) -> StreamingResponse:
    return StreamingResponse(
        chunks(request.app.state.sessionmaker, run_id),
        media_type=media_type,
        headers={"Content-Disposition": f'attachment; filename="run-{run_id}-metrics.{suffix}"'},
    )


@router.get(
    "/{run_id}/metrics.csv", response_class=StreamingResponse, responses={**BY_ID, 200: {"content": {"text/csv": {}}}}
)
def get_metrics_csv(run_id: IdPath, request: Request, db: DbDep) -> StreamingResponse:
    """Every stored point at full resolution, `key,step,value,time` (Unix seconds), ordered by key and
    step; streamed page by page, so a run of millions of points downloads in flat memory."""
    runs_service.get_run(db, run_id)
    return _metrics_download(request, run_id, metrics_export.csv_chunks, "text/csv; charset=utf-8", "csv")


@router.get(
    "/{run_id}/metrics.json",
    response_class=StreamingResponse,
    responses={**BY_ID, 200: {"content": {"application/json": {}}}},
)
def get_metrics_json(run_id: IdPath, request: Request, db: DbDep) -> StreamingResponse:
    """Every stored point at full resolution: `{"run_id", "columns": ["key", "step", "value", "time"],
    "points": [[key, step, value, time], ...]}`, streamed like the CSV."""
    runs_service.get_run(db, run_id)
    return _metrics_download(request, run_id, metrics_export.json_chunks, "application/json", "json")


@router.get("/{run_id}/logs", response_model=list[LogOut], responses=BY_ID)
def get_logs(
    run_id: IdPath,
    db: DbDep,
    after_id: Annotated[int | None, Query(ge=0, le=INT64_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> list[LogOut]:
    runs_service.get_run(db, run_id)
    return [
        LogOut(id=r.id, time=r.time, level=r.level, message=r.message)
        for r in logs_service.read(db, run_id, after_id, limit)
    ]


@router.get("/{run_id}/artifacts", response_model=list[ArtifactOut], responses=BY_ID)
def get_artifacts(run_id: IdPath, db: DbDep) -> list[ArtifactOut]:
    runs_service.get_run(db, run_id)
    return [artifacts_service.to_out(a) for a in artifacts_service.list_for_run(db, run_id)]


@router.post(
    "/{run_id}/exports", status_code=201, response_model=RunOut, responses={**WRITE, **BY_ID, **BODY}
)
def create_export(
    run_id: IdPath, body: ExportCreate, db: DbDep, settings: SettingsDep, enqueue: EnqueueDep, token: TokenDep
) -> RunOut:
    """Convert the run's latest checkpoint: an `export` child run on the cpu queue."""
    return RunOut.model_validate(
        exports_service.create_export(db, run_id, body, settings, enqueue, launched_by=token.name)
    )


@router.post(
    "/{run_id}/words", status_code=201, response_model=RunOut, responses={**WRITE, **BY_ID, **BODY}
)
def create_words(
    run_id: IdPath, body: WordsCreate, db: DbDep, settings: SettingsDep, enqueue: EnqueueDep, token: TokenDep
) -> RunOut:
    """A `words` child run (cpu queue) drawing the visual-word gallery of the run's latest checkpoint."""
    run = words_service.create_words(db, run_id, body, settings, enqueue, launched_by=token.name)
    return RunOut.model_validate(run)


@router.get("/{run_id}/words", responses=BY_ID)
def get_words(run_id: IdPath, db: DbDep, settings: SettingsDep) -> dict:
    """The newest words child (any state) and, when one has succeeded, its gallery's levels."""
    runs_service.get_run(db, run_id)
    latest = words_service.latest_words_run(db, run_id)
    found = words_service.gallery(db, settings.artifact_root, run_id)
    return {
        "latest": RunOut.model_validate(latest).model_dump(mode="json") if latest else None,
        "gallery_run_id": found["run"].id if found else None,
        "levels": {
            level: {"sheet_id": v["sheet_id"], "words": len(v["index"].get("words", []))}
            for level, v in (found["levels"].items() if found else [])
        },
    }


@router.get("/{run_id}/events", response_class=StreamingResponse, responses=BY_ID)
async def stream_events(
    run_id: IdPath,
    request: Request,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[
        str | None,
        Query(
            description="Start after this event id (pages pass the id of "
            "their first render; a reconnect's Last-Event-ID wins)"
        ),
    ] = None,
) -> StreamingResponse:
    """Server-Sent Events: `metrics`, `logs` and `state`; reconnecting with `Last-Event-ID` resumes.
    Without either id the stream starts from now. It ends once the run is finished and all was sent."""
    maker = request.app.state.sessionmaker

    def first_cursor() -> events_service.Cursor:
        with maker() as session:
            runs_service.get_run(session, run_id)
            return (
                events_service.Cursor.parse(last_event_id)
                or events_service.Cursor.parse(after)
                or events_service.start_cursor(session)
            )

    def poll(cursor: events_service.Cursor):
        with maker() as session:
            return events_service.poll(session, run_id, cursor)

    cursor = await run_in_threadpool(first_cursor)
    notifier = request.app.state.notifier
    reads = request.app.state.stream_reads

    async def body() -> AsyncIterator[str]:
        """Read, send, then sleep until the run's rows change (a notification) or the safety-net poll
        interval passes. The event is cleared before each read, so a change committed during the read
        wakes the next wait at once: nothing is missed between a read and the wait."""
        nonlocal cursor
        woken = notifier.subscribe(run_id)
        try:
            yield "retry: 2000\n\n"
            quiet_since = time.monotonic()
            while True:
                woken.clear()
                read_at = time.monotonic()
                events, cursor, finished = await asyncio.get_running_loop().run_in_executor(reads, poll, cursor)
                for name, data, after in events:
                    yield f"id: {after}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
                if finished:
                    yield f"id: {cursor}\nevent: end\ndata: {{}}\n\n"
                    return
                if events:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= 15:
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"
                if await request.is_disconnected():
                    return
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.sse_poll_s):
                        await woken.wait()
                # coalesce bursts (a writer committing many times a second): at most one read per
                # SSE_MIN_GAP_S per stream, the delay it adds is at most that gap
                gap = SSE_MIN_GAP_S - (time.monotonic() - read_at)
                if gap > 0:
                    await asyncio.sleep(gap)
        finally:
            notifier.unsubscribe(run_id, woken)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
