"""Lab storage speed: metric ingestion (points/s) through the worker's reporter, `GET /runs/{id}/metrics`
latency on a run with 1,000,000 points, and `GET /runs` latency with 10,000 runs, on SQLite and on
PostgreSQL (a scratch database next to `test` on 127.0.0.1, dropped at the end).

    python benchmarks/lab_storage.py                  # both backends
    python benchmarks/lab_storage.py --backends sqlite --points 200000

Targets: >= 50,000 points/s ingestion on PostgreSQL; metrics and list p95 < 100 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from fastapi.testclient import TestClient
from sqlalchemy import insert

from server.app import create_app
from server.core import transitions
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.models import Run
from server.core.settings import Settings
from worker.reporter import DbReporter

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
KEYS = ("loss_total", "loss_crop32", "lr", "perp_b_lev@0")


@contextlib.contextmanager
def database(backend: str, scratch: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{scratch / 'bench.db'}"
        return
    name = f"obow_lab_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_run(maker) -> tuple[int, int]:
    """A running run owned by a fresh attempt, as a worker holds it: (run id, attempt id)."""
    with maker() as session:
        run = transitions.create(session, Run(kind="pretrain", name="bench", spec={}, queue="gpu"))
        attempt = transitions.claim(session, run.id, "bench", None, os.getpid(), 3600)
        return run.id, attempt.id


def end_run(maker, run_id: int, attempt_id: int) -> None:
    with maker() as session:
        transitions.finish(session, run_id, attempt_id, "succeeded")


def ingest(maker, root: Path, points: int) -> float:
    """Points/s through DbReporter (the worker's path: batched, one transaction per flush)."""
    run_id, attempt_id = new_run(maker)
    reporter = DbReporter(maker, run_id, attempt_id, root, flush_every_s=1.0, flush_points=10_000, heartbeat_s=60)
    steps = points // len(KEYS)
    start = time.perf_counter()
    for step in range(steps):
        reporter.metrics(step, {k: step * 0.001 + i for i, k in enumerate(KEYS)})
    reporter.close()
    return steps * len(KEYS) / (time.perf_counter() - start)


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1] if len(samples) >= 2 else samples[0]


def timed(client: TestClient, path: str, repeat: int, warmup: int = 3) -> list[float]:
    """Latencies (ms) of `repeat` requests after `warmup` untimed ones (steady state, warm caches)."""
    for _ in range(warmup):
        client.get(path)
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        out.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text
    return out


def bench(backend: str, points: int, big: int, runs: int, repeat: int) -> list[tuple[str, str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        with database(backend, scratch) as url:
            upgrade(url)
            engine = make_engine(url)
            maker = make_sessionmaker(engine)
            rates = sorted(ingest(maker, scratch, points // 3) for _ in range(3))
            rows.append(
                (
                    backend,
                    f"ingestion via reporter (3 x {points // 3:,} points)",
                    f"median {rates[1]:,.0f} points/s (min {rates[0]:,.0f}, max {rates[2]:,.0f})",
                )
            )

            big_run, big_attempt = new_run(maker)
            filler = DbReporter(
                maker, big_run, big_attempt, scratch, flush_every_s=60, flush_points=50_000, heartbeat_s=600
            )
            for step in range(big // len(KEYS)):
                filler.metrics(step, {k: (step % 997) * 0.01 + i for i, k in enumerate(KEYS)})
            filler.close()
            end_run(maker, big_run, big_attempt)
            with maker() as session:
                session.execute(
                    insert(Run),
                    [
                        {
                            "kind": "pretrain",
                            "name": f"r{i}",
                            "spec": {},
                            "state": ("succeeded", "failed", "running")[i % 3],
                            "metric_keys": [],
                            "last_metrics": {"loss": 1.0},
                        }
                        for i in range(runs)
                    ],
                )
                session.commit()
            if backend == "postgresql":
                with engine.begin() as conn:
                    conn.exec_driver_sql("ANALYZE")
            settings = Settings(
                home=scratch, database_url=url, secret_key_value="bench", public_read=True,
                allowed_hosts_value="testserver",
            )
            with TestClient(create_app(settings, enqueue=lambda run: "x", sweep_every_s=0)) as client:
                q = f"/api/v1/runs/{big_run}/metrics?keys={','.join(KEYS[:2])}&max_points=2000"
                lat = timed(client, q, repeat)
                rows.append(
                    (
                        backend,
                        f"GET metrics, 2 keys of a {big:,}-point run",
                        f"p50 {statistics.median(lat):.1f} ms, p95 {p95(lat):.1f} ms",
                    )
                )
                zoom = f"/api/v1/runs/{big_run}/metrics?keys=loss_total&max_points=2000&step_min=100000&step_max=101000"
                lat = timed(client, zoom, repeat)
                rows.append(
                    (
                        backend,
                        "GET metrics, zoomed to 1,000 steps",
                        f"p50 {statistics.median(lat):.1f} ms, p95 {p95(lat):.1f} ms",
                    )
                )
                lat = timed(client, "/api/v1/runs?limit=50", repeat)
                rows.append(
                    (
                        backend,
                        f"GET runs (limit 50) of {runs + 2:,}",
                        f"p50 {statistics.median(lat):.1f} ms, p95 {p95(lat):.1f} ms",
                    )
                )
                lat = timed(client, "/api/v1/runs?limit=50&state=running&offset=1000", repeat)
                rows.append(
                    (
                        backend,
                        "GET runs, state filter, offset 1000",
                        f"p50 {statistics.median(lat):.1f} ms, p95 {p95(lat):.1f} ms",
                    )
                )
            engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--points", type=int, default=600_000, help="points for the ingestion rate")
    parser.add_argument(
        "--big", type=int, default=1_000_000, help="points of the run the metrics query reads"
    )
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    rows = []
    for backend in args.backends.split(","):
        rows += bench(backend, args.points, args.big, args.runs, args.repeat)
    width = max(len(r[1]) for r in rows)
    print(f"{'backend':<11} {'measure':<{width}}  result")
    for backend, what, result in rows:
        print(f"{backend:<11} {what:<{width}}  {result}")


if __name__ == "__main__":
    main()
