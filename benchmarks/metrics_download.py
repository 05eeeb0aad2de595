"""Full-resolution metrics download speed: `GET /runs/{id}/metrics.csv` and `.json` of one run with
1,000,000 points (4 keys), over real HTTP (uvicorn in a thread), on SQLite and on PostgreSQL (a scratch
database next to `test` on 127.0.0.1, dropped at the end). Median of `--repeats` downloads; the body is
read and dropped, as a download to disk does.

    python benchmarks/metrics_download.py                       # both backends, 1,000,000 points
    python benchmarks/metrics_download.py --backends sqlite --points 200000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import insert

from benchmarks.lab_storage import database
from benchmarks.serving import serve_in_thread
from server.app import create_app
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.models import Metric, Run
from server.core.settings import Settings
from server.services import tokens

KEYS = ("loss_total", "loss_crop32", "lr", "perp_b_lev@0")


def seed(maker, points: int) -> int:
    with maker() as session:
        run = Run(kind="pretrain", name="bench", spec={}, queue="gpu", state="succeeded", metric_keys=list(KEYS))
        session.add(run)
        session.flush()
        per_key = points // len(KEYS)
        for key in KEYS:
            for start in range(0, per_key, 100_000):
                session.execute(insert(Metric), [
                    {"run_id": run.id, "key": key, "step": s, "value": 1.0 / (s + 1), "time": 1.7e9 + s}
                    for s in range(start, min(per_key, start + 100_000))
                ])
        session.commit()
        return run.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for backend in args.backends.split(","):
            with database(backend, Path(scratch)) as url:
                upgrade(url)
                engine = make_engine(url)
                maker = make_sessionmaker(engine)
                run_id = seed(maker, args.points)
                with maker() as session:
                    token = tokens.create_token(session, "bench")
                settings = Settings(home=Path(scratch), database_url=url, secret_key_value="bench")
                with serve_in_thread(create_app(settings, enqueue=lambda run: "x", sweep_every_s=0)) as base:
                    for suffix in ("csv", "json"):
                        times, size = [], 0
                        for _ in range(args.repeats):
                            started, size = time.perf_counter(), 0
                            with httpx.stream("GET", f"{base}/api/v1/runs/{run_id}/metrics.{suffix}",
                                              headers={"Authorization": f"Bearer {token}"}, timeout=600) as r:
                                for chunk in r.iter_raw():
                                    size += len(chunk)
                            times.append(time.perf_counter() - started)
                        median = statistics.median(times)
                        rows.append((backend, suffix, args.points, size / 1e6, median, args.points / median))
                engine.dispose()
    print(f"{'backend':<11} {'format':<6} {'points':>9} {'MB':>7} {'median s':>9} {'points/s':>10}")
    for backend, suffix, points, mb, median, rate in rows:
        print(f"{backend:<11} {suffix:<6} {points:>9,} {mb:>7.1f} {median:>9.2f} {rate:>10,.0f}")


if __name__ == "__main__":
    main()
