"""Load: N concurrent clients for D seconds against the real server (`obow lab serve`, a uvicorn process)
on a seeded database, while a writer process streams metrics into RUNNING runs, so SSE streams carry
traffic. Compares variants (database, uvicorn workers, pool size) in one run.

    python benchmarks/lab_load.py                                  # 50 clients, 60 s, every variant
    python benchmarks/lab_load.py --clients 20 --duration 10 --variants pg
    python benchmarks/lab_load.py --think 0                        # closed loop, no pause: saturation

Three processes besides the database: the server, the writer (the worker's DbReporter, one flush per
step, as a worker with a short flush interval would) and the load driver (asyncio + httpx). Request
clients loop over GET /runs (filters, paging), GET /runs/{id}, GET /runs/{id}/metrics (2 keys of a
1,000,000-point run, downsampled to 2,000 points) and the same zoomed to 1,000 steps, pausing `--think`
seconds on average between requests (a dashboard refreshes its list every 3 s, so 0.5 s is a busy
user). SSE clients hold `GET /runs/{id}/events` open for a few seconds, then reconnect with
Last-Event-ID; each checks it gets every point exactly once, in step order, and the run's `end`.

Errors are any non-2xx answer, timeout, refused or dropped connection, an SSE point missing, repeated
or out of order, and an SSE client that never saw `end`. SSE delay is from the point's timestamp (set
just before the writer's commit, so it slightly over-counts) to its arrival, for points committed while
the stream was connected (catch-up after a reconnect is not a delivery delay).

Target (README): zero errors and p99 < 250 ms with 50 clients for 60 s on the 2-core machine with
PostgreSQL. The driver and the writer share the two cores with the server and the database, so the
latencies measured here are pessimistic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert, select, update

from benchmarks.lab_storage import KEYS, database, end_run, new_run
from benchmarks.serving import free_port
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.models import LogLine, Run, utcnow
from server.services import tokens
from worker.reporter import DbReporter

REPO = Path(__file__).resolve().parent.parent
LIVE_KEYS = ("loss_total", "lr")
REQUEST_MIX = {"list": 0.35, "detail": 0.25, "metrics": 0.2, "zoom": 0.2}
STATES = ("succeeded", "succeeded", "failed", "cancelled", "queued", "running")


@dataclass(frozen=True)
class Variant:
    name: str
    backend: str
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)


VARIANTS = {
    "pg": Variant("pg", "postgresql"),
    "pg-pool5": Variant("pg-pool5", "postgresql", env={"OBOW_LAB_DB_POOL_SIZE": "5"}),
    "pg-2w": Variant("pg-2w", "postgresql", workers=2),
    "sqlite": Variant("sqlite", "sqlite"),
    "sqlite-2w": Variant("sqlite-2w", "sqlite", workers=2),
}


@dataclass
class Seeded:
    big_run: int
    live_runs: list[int]
    run_ids: list[int]
    big_steps: int
    token: str = ""  # reads need a token (server.api.deps.require_reader)


# -- data ------------------------------------------------------------------------------------------------
def seed(url: str, scratch: Path, runs: int, big_points: int, live: int) -> Seeded:
    """A lab after some weeks of use: `runs` runs of several kinds and states (a few evaluations as children
    of pretraining runs), one finished run with `big_points` metric points and a log, and `live` RUNNING
    runs, empty, for the writer to fill."""
    upgrade(url)
    engine = make_engine(url)
    maker = make_sessionmaker(engine)
    big, big_attempt = new_run(maker)
    filler = DbReporter(maker, big, big_attempt, scratch, flush_every_s=3600, flush_points=50_000, heartbeat_s=3600)
    steps = big_points // len(KEYS)
    for step in range(steps):
        filler.metrics(step, {k: (step % 997) * 0.01 + i for i, k in enumerate(KEYS)})
        if step % 1000 == 0:
            filler.log(f"step {step}")
    filler.close()
    end_run(maker, big, big_attempt)
    with maker() as session:
        rows = []
        for i in range(runs):
            state = STATES[i % len(STATES)]
            rows.append(
                {
                    "kind": "pretrain" if i % 4 else "eval_linear",
                    "name": f"run {i}",
                    "spec": {"optim": {"lr": 0.05, "num_epochs": 10}, "data": {"dataset_name": "FashionMNIST"}},
                    "state": state,
                    "parent_id": big if i % 4 == 0 else None,
                    "queue": "gpu",
                    "metric_keys": list(KEYS),
                    "last_metrics": {k: 1.0 for k in KEYS},
                    "progress_done": 100,
                    "progress_total": 100 if state == "succeeded" else 200,
                    "result": {"top1": 0.8} if state == "succeeded" else None,
                    "error": "boom" if state == "failed" else None,
                }
            )
        session.execute(insert(Run), rows)
        session.commit()
    live_runs = []
    for _ in range(live):
        run_id, _ = new_run(maker)
        with maker() as session:
            session.execute(
                update(Run)
                .where(Run.id == run_id)
                .values(metric_keys=[], started_at=utcnow(), heartbeat_at=utcnow(), name="live")
            )
            session.execute(
                insert(LogLine), [{"run_id": run_id, "time": time.time(), "level": "info", "message": "go"}]
            )
            session.commit()
        live_runs.append(run_id)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    with maker() as session:
        run_ids = [r for (r,) in session.execute(Run.__table__.select().with_only_columns(Run.id))]
    with maker() as session:
        token = tokens.create_token(session, "load")
    engine.dispose()
    return Seeded(big, live_runs, run_ids, steps, token)


def write(url: str, scratch: str, run_ids: list[int], rate: float, duration: float) -> None:
    """The writer process: one step of LIVE_KEYS per run every 1/rate s, a log line every 10 steps, one
    transaction per step (DbReporter.flush), then the runs succeed, so every SSE stream ends."""
    engine = make_engine(url)
    maker = make_sessionmaker(engine)
    total = int(duration * rate)
    with maker() as session:
        owners = dict(session.execute(select(Run.id, Run.attempt_id).where(Run.id.in_(run_ids))).tuples().all())
    reporters = {
        r: DbReporter(maker, r, owners[r], Path(scratch), flush_every_s=3600, heartbeat_s=5) for r in run_ids
    }
    start = time.monotonic()
    for step in range(total):
        for reporter in reporters.values():
            reporter.metrics(step, {k: step * 0.001 + i for i, k in enumerate(LIVE_KEYS)})
            if step % 10 == 0:
                reporter.log(f"step {step}")
            reporter.progress(step + 1, total)
            reporter.flush()
        time.sleep(max(0.0, start + (step + 1) / rate - time.monotonic()))
    for reporter in reporters.values():
        reporter.close()
    for run_id in run_ids:
        end_run(maker, run_id, owners[run_id])
    engine.dispose()


# -- the load driver ---------------------------------------------------------------------------------------
@dataclass
class Tally:
    """What the driver measured; plain lists and dicts, so it crosses the process boundary as JSON."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    sse_delays: list[float] = field(default_factory=list)
    # points committed after the client sent its (re)connect but before the server answered: delivered
    # by the reconnect's catch-up; their delay includes connecting, authenticating and the first read
    sse_catchup_delays: list[float] = field(default_factory=list)
    sse_connects: int = 0
    sse_points: int = 0
    sse_ended: int = 0

    def error(self, what: str, detail: str) -> None:
        self.errors[what] += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(f"{what}: {detail}"[:300])


def _request_path(kind: str, rng: random.Random, seeded: Seeded) -> str:
    if kind == "list":
        filters = rng.choice(
            ["", "&state=running", "&state=succeeded,failed", "&kind=pretrain", f"&parent_id={seeded.big_run}"]
        )
        return f"/api/v1/runs?limit=50&offset={rng.choice([0, 0, 0, 50, 100, 200])}{filters}"
    if kind == "detail":
        return f"/api/v1/runs/{rng.choice([seeded.big_run, *seeded.live_runs, *seeded.run_ids])}"
    if kind == "metrics":
        return f"/api/v1/runs/{seeded.big_run}/metrics?keys={KEYS[0]},{KEYS[1]}&max_points=2000"
    lo = rng.randrange(0, max(1, seeded.big_steps - 1000))
    return f"/api/v1/runs/{seeded.big_run}/metrics?keys={KEYS[0]}&max_points=2000&step_min={lo}&step_max={lo + 999}"


async def _requester(base: str, seeded: Seeded, deadline: float, think: float, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    kinds, weights = list(REQUEST_MIX), list(REQUEST_MIX.values())
    headers = {"Authorization": f"Bearer {seeded.token}"}
    async with httpx.AsyncClient(base_url=base, timeout=10.0, headers=headers) as client:
        await asyncio.sleep(rng.uniform(0, think * 2))  # not all at once
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            path = _request_path(kind, rng, seeded)
            start = time.perf_counter()
            try:
                response = await client.get(path)
                if response.status_code >= 300:
                    tally.error(f"{kind} HTTP {response.status_code}", f"{path} {response.text[:200]}")
                else:
                    tally.latencies[kind].append((time.perf_counter() - start) * 1000)
            except httpx.HTTPError as err:
                tally.error(f"{kind} {type(err).__name__}", path)
            await asyncio.sleep(rng.uniform(0, think * 2))


async def _sse_client(
    base: str, run_id: int, deadline: float, drain_s: float, seed: int, tally: Tally, token: str = ""
) -> None:
    """Holds the stream 2-8 s, reconnects with Last-Event-ID, until the run's `end` (or `deadline + drain_s`).
    Checks that, per key, the steps arrive 0, 1, 2, ... exactly once and that all steps written arrived."""
    rng = random.Random(seed)
    cursor = "0-0-0"  # from the run's first point: every step must arrive
    expect: dict[str, int] = {}
    progress_done = 0
    hard_stop = deadline + drain_s
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(10.0, read=20.0), headers=headers) as client:
        while time.monotonic() < hard_stop:
            hold_until = time.monotonic() + rng.uniform(2, 8)
            tally.sse_connects += 1
            requested_at = time.time()
            name, data, event_id = "message", "", None
            try:
                async with client.stream(
                    "GET", f"/api/v1/runs/{run_id}/events", headers={"Last-Event-ID": cursor}
                ) as response:
                    # connected once the server answered: points committed before that arrive as the
                    # reconnect's catch-up, which is not a delivery delay
                    connected_at = time.time()
                    if response.status_code != 200:
                        tally.error(f"sse HTTP {response.status_code}", (await response.aread()).decode()[:200])
                        await asyncio.sleep(1)
                        continue
                    async for line in response.aiter_lines():
                        if line.startswith("id: "):
                            event_id = line[4:]
                        elif line.startswith("event: "):
                            name = line[7:]
                        elif line.startswith("data: "):
                            data = line[6:]
                        elif line == "" and data:
                            now = time.time()
                            payload = json.loads(data)
                            if name == "metrics":
                                for key, step, _, when in payload["points"]:
                                    if step != expect.get(key, 0):
                                        tally.error(
                                            "sse order",
                                            f"run {run_id} {key}: got {step}, expected {expect.get(key, 0)}",
                                        )
                                    expect[key] = step + 1
                                    tally.sse_points += 1
                                    if when >= connected_at:
                                        tally.sse_delays.append((now - when) * 1000)
                                    elif when >= requested_at:
                                        tally.sse_catchup_delays.append((now - when) * 1000)
                            elif name == "state":
                                progress_done = payload["progress_done"]
                            elif name == "end":
                                missing = {k: progress_done - n for k, n in expect.items() if n != progress_done}
                                if missing or set(expect) != set(LIVE_KEYS):
                                    tally.error("sse missing", f"run {run_id}: {progress_done} steps, got {expect}")
                                tally.sse_ended += 1
                                return
                            cursor = event_id or cursor
                            name, data = "message", ""
                        if time.monotonic() > hold_until:
                            break  # a reconnect on purpose
                    else:
                        tally.error("sse dropped", f"run {run_id}: the stream closed without `end`")
            except httpx.HTTPError as err:
                tally.error(f"sse {type(err).__name__}", f"run {run_id}")
                await asyncio.sleep(0.5)
    tally.error("sse no end", f"run {run_id}: no `end` within {drain_s} s after the load")


async def _drive(base: str, seeded: Seeded, clients: int, sse_clients: int, duration: float, think: float) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + duration
    tasks = [
        _sse_client(base, seeded.live_runs[i % len(seeded.live_runs)], deadline, 15.0, 1000 + i, tally, seeded.token)
        for i in range(sse_clients)
    ]
    tasks += [_requester(base, seeded, deadline, think, i, tally) for i in range(clients - sse_clients)]
    await asyncio.gather(*tasks)
    return tally


def drive(base: str, seeded: Seeded, clients: int, sse_clients: int, duration: float, think: float, out) -> None:
    """The load process: runs the clients, sends the tally back as JSON through `out` (a pipe end)."""
    tally = asyncio.run(_drive(base, seeded, clients, sse_clients, duration, think))
    out.send(json.dumps(tally.__dict__))


# -- the server ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def serve(url: str, home: Path, workers: int = 1, env: dict[str, str] | None = None) -> Iterator[str]:
    """`obow lab serve` in its own process group; yields its base URL once /healthz answers."""
    port = free_port()
    log = open(home / "server.log", "wb")  # noqa: SIM115 (closed below, after the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=REPO,
        env={  # the caller's lab settings (OBOW_LAB_HOST, ...) are not inherited: `env` says what differs
            **{k: v for k, v in os.environ.items() if not k.startswith("OBOW_LAB_")},
            "PYTHONPATH": str(REPO),
            "DATABASE_URL": url,
            "OBOW_LAB_HOME": str(home),
            "OBOW_LAB_SECRET_KEY": "load",
            **(env or {}),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {(home / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/api/v1/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def run_load(
    base: str,
    url: str,
    scratch: Path,
    seeded: Seeded,
    clients: int,
    sse_clients: int,
    duration: float,
    think: float,
    rate: float,
) -> dict[str, Any]:
    """The writer and the driver as two fresh processes (spawned: no state inherited from this one)."""
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(target=write, args=(url, str(scratch), seeded.live_runs, rate, duration))
    receive, send = ctx.Pipe(duplex=False)
    driver = ctx.Process(target=drive, args=(base, seeded, clients, sse_clients, duration, think, send))
    writer.start()
    time.sleep(0.5)
    started = time.monotonic()
    driver.start()
    while not receive.poll(1.0):  # a driver that died (an import error, a crash) must not hang us
        if not driver.is_alive():
            writer.terminate()
            raise RuntimeError(f"the load driver exited with {driver.exitcode} before reporting")
    result = json.loads(receive.recv())
    elapsed = time.monotonic() - started
    driver.join(timeout=30)
    writer.join(timeout=60)
    if writer.exitcode != 0:
        result.setdefault("errors", {})["writer failed"] = 1
    result["elapsed"] = elapsed
    return result


# -- the table ---------------------------------------------------------------------------------------------
def quantile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _quantiles(samples: list[float]) -> str:
    return " ".join(f"{v:>7.1f}" for v in (*(quantile(samples, q) for q in (0.5, 0.95, 0.99)), max(samples, default=0)))


def rows_of(variant: str, result: dict[str, Any], duration: float) -> list[str]:
    errors = sum(result["errors"].values())
    out = []
    everything = [x for lat in result["latencies"].values() for x in lat]
    for kind in [*REQUEST_MIX, "all"]:
        lat = everything if kind == "all" else result["latencies"].get(kind, [])
        failed = (
            errors if kind == "all" else sum(n for what, n in result["errors"].items() if what.startswith(kind + " "))
        )
        out.append(
            f"{variant:<10} {kind:<8} {len(lat) + failed:>7} {failed:>6} {len(lat) / duration:>7.1f} " + _quantiles(lat)
        )
    delays = result["sse_delays"]
    sse_errors = sum(n for what, n in result["errors"].items() if what.startswith("sse"))
    out.append(
        f"{variant:<10} {'sse':<8} {result['sse_connects']:>7} {sse_errors:>6} {result['sse_points'] / duration:>7.1f} "
        + _quantiles(delays)
        + f"   streams ended {result['sse_ended']}"
    )
    catchup = result["sse_catchup_delays"]
    out.append(
        f"{variant:<10} {'sse+rc':<8} {len(delays) + len(catchup):>7} {'':>6} {'':>7} "
        + _quantiles(delays + catchup)
        + "   counting points committed while a reconnect was pending"
    )
    return out


HEADER = f"{'variant':<10} {'request':<8} {'count':>7} {'errors':>6} {'per s':>7} " + " ".join(
    f"{h:>7}" for h in ("p50 ms", "p95 ms", "p99 ms", "max ms")
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--sse-clients", type=int, default=None, help="of --clients (default a fifth)")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--think", type=float, default=0.5, help="mean pause between a client's requests, s")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--big", type=int, default=1_000_000, help="points of the run the metrics reads")
    parser.add_argument("--live", type=int, default=2, help="RUNNING runs the writer feeds")
    parser.add_argument("--rate", type=float, default=5.0, help="steps per second per live run")
    args = parser.parse_args()
    sse_clients = args.sse_clients if args.sse_clients is not None else args.clients // 5
    print(
        f"{args.clients} clients ({sse_clients} SSE), {args.duration:.0f} s, think {args.think} s, "
        f"{args.runs} runs + a {args.big:,}-point run, {args.live} live runs at {args.rate} steps/s; "
        "'per s' is answers/s (SSE: points/s received), SSE latency = delay commit -> client",
        flush=True,
    )
    table = [HEADER]
    for name in args.variants.split(","):
        variant = VARIANTS[name]
        with tempfile.TemporaryDirectory() as scratch_dir, database(variant.backend, Path(scratch_dir)) as url:
            scratch = Path(scratch_dir)
            seeded = seed(url, scratch, args.runs, args.big, args.live)
            with serve(url, scratch, variant.workers, variant.env) as base:
                result = run_load(
                    base, url, scratch, seeded, args.clients, sse_clients, args.duration, args.think, args.rate
                )
        table += rows_of(name, result, args.duration)
        for sample in result["error_samples"]:
            table.append(f"{'':<10} error: {sample}")
        print("\n".join([HEADER, *rows_of(name, result, args.duration)]), flush=True)
    print()
    print("\n".join(table))


if __name__ == "__main__":
    main()
