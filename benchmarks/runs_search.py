"""Runs list search speed: `GET /api/v1/runs?q=...&sort=...` over 10,000 runs with a full pretraining
spec, tags, notes, projects and final metrics, on PostgreSQL (a scratch database next to `test` on
127.0.0.1, dropped at the end) and optionally SQLite. Each search is timed through the API in-process
(routing, validation, serialisation included): p50 and p95 of `--repeat` requests after warm-up; and
the p95 of the service call alone (`list_runs`: the SQL and loading the page's rows); each the median
over `--rounds` rounds (a shared machine's hiccups land in one round, not in the table).

    python benchmarks/runs_search.py                       # PostgreSQL, 10,000 runs
    python benchmarks/runs_search.py --backends sqlite,postgresql --runs 2000

Target: p95 < 100 ms on PostgreSQL for every search.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs

from fastapi.testclient import TestClient
from sqlalchemy import insert

from benchmarks.lab_storage import database, p95, timed
from obow.config import preset_dict
from server.app import create_app
from server.core import kinds
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.models import Run
from server.core.settings import Settings
from server.services import runs as runs_service

SEARCHES = (
    ("default list (top level, newest first)", "top_level=true"),
    ("free text (name, tag, note)", "q=resnet"),
    ("tag + state", "q=tag:baseline%20state:succeeded"),
    ("project + kind", "q=project:p7%20kind:pretrain"),
    ("spec comparison optim.lr>0.05", "q=optim.lr%3E0.05"),
    ("metric comparison knn_top1_k20>80", "q=knn_top1_k20%3E80"),
    ("sort by metric -knn_top1_k20", "sort=-knn_top1_k20"),
    ("sort by spec value optim.lr", "sort=optim.lr"),
    ("text + metric + sort by metric", "q=resnet%20knn_top1_k20%3E50&sort=-knn_top1_k20"),
    ("archived only", "q=is:archived"),
)
WORDS = ("resnet", "wide", "baseline", "ablation", "tiny", "long", "cosine", "warmup")


def fill(maker, runs: int, seed: int = 0) -> None:
    """`runs` runs like a busy lab's: a full pretraining spec each, 2-3 tags, a note for one in four,
    20 projects, ~25 final metric keys; one in five is an evaluation child of an earlier run."""
    rng = random.Random(seed)
    preset = preset_dict("FashionMNIST/tiny")
    preset.pop("kind", None)
    spec = kinds.spec_class("pretrain").model_validate({**preset, "name": "bench"}).model_dump(mode="json")
    batch = []
    with maker() as session:
        for i in range(runs):
            lr = round(10 ** rng.uniform(-3, -0.5), 5)
            run_spec = {**spec, "optim": {**spec.get("optim", {}), "lr": lr}}
            metrics = {f"perp_b_lev@{k}": rng.random() for k in range(3)}
            metrics |= {f"loss_{k}": rng.random() for k in ("total", "crop32", "crop64", "lev0", "lev1")}
            metrics |= {f"m{k}": rng.random() for k in range(15)}
            metrics["knn_top1_k20"] = rng.uniform(40, 90)
            child = i > 10 and i % 5 == 0
            batch.append(
                {
                    "kind": "knn" if child else "pretrain",
                    "name": f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{i}",
                    "spec": run_spec,
                    "parent_id": rng.randrange(1, i) if child else None,
                    "state": ("succeeded", "failed", "cancelled", "succeeded")[i % 4],
                    "metric_keys": sorted(metrics),
                    "last_metrics": metrics,
                    "result": {"top1": metrics["knn_top1_k20"]},
                    "tags": rng.sample(WORDS, rng.randint(2, 3)),
                    "note": f"tried {rng.choice(WORDS)} with lr {lr}\n\n* more notes" if i % 4 == 0 else "",
                    "project": f"p{i % 20}",
                    "launched_by": "bench",
                    "archived_at": None,
                }
            )
            if len(batch) == 1000:
                session.execute(insert(Run), batch)
                session.commit()
                batch = []
                print(f"  filled {i + 1:,} runs", file=sys.stderr, flush=True)
        if batch:
            session.execute(insert(Run), batch)
            session.commit()


def bench(backend: str, runs: int, repeat: int, rounds: int) -> list[tuple[str, str, float, float, int, float]]:
    rows = []
    with tempfile.TemporaryDirectory() as scratch_dir, database(backend, Path(scratch_dir)) as url:
        upgrade(url)
        engine = make_engine(url)
        maker = make_sessionmaker(engine)
        fill(maker, runs)
        if backend == "postgresql":  # as autovacuum would leave it, so that it does not run during timing
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE runs")
        settings = Settings(
            home=Path(scratch_dir), database_url=url, secret_key_value="bench", public_read=True,
            allowed_hosts_value="testserver",
        )
        with TestClient(create_app(settings, enqueue=lambda run: "x", sweep_every_s=0)) as client:
            for _label, params in SEARCHES:  # the app's start-up work (its first requests) out of the way
                for _ in range(3):
                    client.get(f"/api/v1/runs?limit=50&{params}")
            for label, params in SEARCHES:
                path = f"/api/v1/runs?limit=50&{params}"
                total = client.get(path).json()["total"]
                query = {k: v[0] for k, v in parse_qs(params).items()}
                measured = []  # per round: p50 and p95 through the API, p95 of the service alone
                for _ in range(rounds):
                    lat = timed(client, path, repeat, warmup=3)
                    with maker() as session:  # the service alone: the SQL, without HTTP and JSON
                        service = []
                        for _ in range(repeat):
                            start = time.perf_counter()
                            runs_service.list_runs(session, q=query.get("q"), sort=query.get("sort"),
                                                   top_level="top_level" in query, limit=50)
                            service.append((time.perf_counter() - start) * 1000)
                            session.expunge_all()
                    measured.append((statistics.median(lat), p95(lat), p95(service)))
                p50_ms, p95_ms, service_ms = (statistics.median(m[i] for m in measured) for i in range(3))
                rows.append((backend, label, p50_ms, p95_ms, total, service_ms))
                print(f"  {backend} {label}: p95 {p95_ms:.1f} ms", file=sys.stderr, flush=True)
        engine.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="postgresql")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="the table shows the median over rounds")
    args = parser.parse_args()
    rows = []
    for backend in args.backends.split(","):
        print(f"{backend}: filling {args.runs:,} runs", file=sys.stderr, flush=True)
        rows += bench(backend, args.runs, args.repeat, args.rounds)
    width = max(len(r[1]) for r in rows)
    print(f"{'backend':<11} {'search (limit 50)':<{width}}  {'matches':>7}  {'p50 ms':>7}  {'p95 ms':>7}"
          f"  {'p95 SQL only':>12}")
    for backend, label, p50, p95_ms, total, service in rows:
        print(f"{backend:<11} {label:<{width}}  {total:>7,}  {p50:>7.1f}  {p95_ms:>7.1f}  {service:>12.1f}")
    worst = max((r for r in rows if r[0] == "postgresql"), key=lambda r: r[3], default=None)
    if worst is not None:
        print(f"worst PostgreSQL p95: {worst[3]:.1f} ms ({worst[1]}); target < 100 ms")


if __name__ == "__main__":
    main()
