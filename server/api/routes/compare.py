"""Comparing runs: the side-by-side table (spec differences, final metrics, results, evaluations) as
JSON, CSV or a JSON download, and one metric of every run on a chosen x axis for the overlaid chart."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from server.api.deps import READ_AUTH, DbDep
from server.api.responses import AUTHENTICATED, BY_ID
from server.compare_schemas import Axis, CompareOut, CompareSeriesOut, SeriesRun
from server.core import metrics as metrics_service
from server.schemas import PRINTABLE
from server.services import axes as axes_service
from server.services import compare as compare_service

router = APIRouter(tags=["compare"], dependencies=[READ_AUTH], responses=AUTHENTICATED)
RunsQuery = Annotated[
    str,
    Query(
        max_length=400,
        description=f"Comma-separated run ids, at most {compare_service.MAX_RUNS} (e.g. 1,2,3)",
    ),
]


def _download(body: str, media_type: str, ids: list[int], suffix: str) -> Response:
    name = f"compare-{'-'.join(map(str, ids))}.{suffix}"
    return Response(body, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/compare", response_model=CompareOut, responses=BY_ID)
def compare(runs: RunsQuery, db: DbDep) -> CompareOut:
    """The runs side by side: only the spec keys that differ (missing keys count), the latest value of
    every metric, each run's own result, and the results of its newest evaluation of each kind."""
    ids = compare_service.parse_ids(runs)
    return CompareOut.model_validate(compare_service.compare(db, ids).as_dict())


@router.get("/compare.csv", response_class=Response, responses={**BY_ID, 200: {"content": {"text/csv": {}}}})
def compare_csv(runs: RunsQuery, db: DbDep) -> Response:
    """The table as CSV: `section,key,<one column per run>`; a missing value is an empty cell."""
    ids = compare_service.parse_ids(runs)
    body = compare_service.to_csv(compare_service.compare(db, ids))
    return _download(body, "text/csv; charset=utf-8", ids, "csv")


@router.get("/compare.json", response_model=CompareOut, responses=BY_ID)
def compare_json(runs: RunsQuery, db: DbDep) -> Response:
    """`GET /compare` as a file to download."""
    ids = compare_service.parse_ids(runs)
    body = json.dumps(CompareOut.model_validate(compare_service.compare(db, ids).as_dict()).model_dump(mode="json"))
    return _download(body, "application/json", ids, "json")


@router.get("/compare/series", response_model=CompareSeriesOut, responses=BY_ID)
def compare_series(
    runs: RunsQuery,
    db: DbDep,
    key: Annotated[str, Query(min_length=1, max_length=100, pattern=PRINTABLE)],
    x: Annotated[Axis, Query(description="step, epoch, time (wall seconds since start) or images (seen)")] = "step",
    max_points: Annotated[int, Query(ge=2, le=20_000)] = 2000,
) -> CompareSeriesOut:
    """One metric of every run on the chosen x axis (downsampled like `/runs/{id}/metrics`, keeping each
    bucket's min and max); a run without the key, or without what the axis needs, has no points and a
    note saying why."""
    ids = compare_service.parse_ids(runs)
    out = []
    for run in compare_service.load_runs(db, ids):
        if key not in (run.metric_keys or []):
            out.append(SeriesRun(run_id=run.id, x=[], y=[], downsampled=False, total_points=0, note=f"no '{key}'"))
            continue
        steps, values, down, total = metrics_service.series(db, run.id, key, max_points)
        xs, note = axes_service.x_values(db, run, key, x, steps)
        pairs = [] if xs is None else [(a, v) for a, v in zip(xs, values, strict=True) if a is not None]
        out.append(
            SeriesRun(
                run_id=run.id, x=[p[0] for p in pairs], y=[p[1] for p in pairs],
                downsampled=down, total_points=total, note=note,
            )
        )
    return CompareSeriesOut(key=key, x_axis=x, x_label=axes_service.AXES[x], runs=out)
