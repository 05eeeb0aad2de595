"""SSE delay: time from a worker's committed metric write to its arrival at a client of
`GET /runs/{id}/events`, with the API served by uvicorn, on SQLite and on PostgreSQL.

    python benchmarks/lab_sse.py                 # 100 writes, 10 per second, both backends

Target: p95 < 500 ms. The stream wakes at the writer's commit (PostgreSQL NOTIFY; in this benchmark the
writer shares the API's process, so on SQLite the in-process notifier) and reads then; the worker's own
batching (1 s) comes on top in a real run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.lab_storage import database, new_run, p95
from benchmarks.serving import serve_in_thread
from server.app import create_app
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.settings import Settings
from worker.reporter import DbReporter


def measure(backend: str, writes: int, rate: float) -> list[float]:
    with tempfile.TemporaryDirectory() as scratch_dir, database(backend, Path(scratch_dir)) as url:
        scratch = Path(scratch_dir)
        upgrade(url)
        engine = make_engine(url)
        maker = make_sessionmaker(engine)
        run_id, attempt_id = new_run(maker)
        settings = Settings(home=scratch, database_url=url, secret_key_value="bench", public_read=True)
        app = create_app(settings, enqueue=lambda run: "x", sweep_every_s=0)
        with serve_in_thread(app) as base:
            delays = _stream_and_write(base, maker, run_id, attempt_id, scratch, writes, rate)
        engine.dispose()
        return delays


def _stream_and_write(
    base: str, maker, run_id: int, attempt_id: int, scratch: Path, writes: int, rate: float
) -> list[float]:
    """Commits `writes` points at `rate` while one SSE client listens; the delay of each point."""
    committed: dict[int, float] = {}
    delays: list[float] = []
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream(
            "GET", f"{base}/api/v1/runs/{run_id}/events", timeout=None
        ) as resp:
            for line in resp.iter_lines():
                connected.set()
                if line.startswith("data: ") and '"points"' in line:
                    now = time.time()
                    for _, step, _, _ in json.loads(line[6:])["points"]:
                        delays.append((now - committed[step]) * 1000)
                if len(delays) >= writes:
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    connected.wait(10)
    reporter = DbReporter(maker, run_id, attempt_id, scratch, flush_every_s=3600, heartbeat_s=3600)
    for step in range(writes):
        reporter.metrics(step, {"probe": float(step)})
        committed[step] = time.time()  # before the commit: a pushed event can arrive before flush returns
        reporter.flush()
        time.sleep(1 / rate)
    listener.join(timeout=30)
    reporter.close()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--writes", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="writes per second")
    args = parser.parse_args()
    print(f"{'backend':<11} {'events':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for backend in args.backends.split(","):
        delays = measure(backend, args.writes, args.rate)
        print(
            f"{backend:<11} {len(delays):>6} {statistics.median(delays):>8.0f} {p95(delays):>8.0f} {max(delays):>8.0f}"
        )


if __name__ == "__main__":
    main()
