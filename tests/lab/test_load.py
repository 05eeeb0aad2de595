"""Correctness under load (not speed): the real server process on PostgreSQL, 20 clients for 10 s mixing
list, detail, metrics and SSE (benchmarks/lab_load.py, scaled down), while a writer process feeds two
RUNNING runs. Every answer must be a 2xx within 10 s, no stream may drop, and every SSE client, though
it reconnects every few seconds with Last-Event-ID, must get every point exactly once in step order and
then the run's `end`. Latencies are printed (pytest -s), never asserted: the speed target lives in the
benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.lab_load import HEADER, rows_of, run_load, seed, serve
from tests.lab.conftest import _truncate

CLIENTS, SSE_CLIENTS, DURATION_S = 20, 6, 10.0


@pytest.mark.slow
def test_twenty_clients_for_ten_seconds_without_an_error(pg_url: str, tmp_path: Path) -> None:
    from server.core.db import upgrade

    upgrade(pg_url)
    _truncate(pg_url)  # the session's database may hold other tests' rows
    seeded = seed(pg_url, tmp_path, runs=120, big_points=40_000, live=2)
    with serve(pg_url, tmp_path) as base:
        result = run_load(
            base, pg_url, tmp_path, seeded, CLIENTS, SSE_CLIENTS, DURATION_S, think=0.2, rate=10.0
        )
    print("\n" + "\n".join([HEADER, *rows_of("test", result, DURATION_S)]))

    assert result["errors"] == {}, result["error_samples"]
    assert result["sse_ended"] == SSE_CLIENTS  # each stream saw `end` after the last point
    # every SSE client checked its steps itself; together they got all 2 keys x 100 steps of their run
    assert result["sse_points"] >= SSE_CLIENTS * 2 * int(DURATION_S * 10.0)
    assert result["sse_connects"] > SSE_CLIENTS  # the reconnect path (Last-Event-ID) was exercised
    for kind in ("list", "detail", "metrics", "zoom"):
        assert result["latencies"][kind], f"no {kind} request was answered"
