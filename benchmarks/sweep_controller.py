"""Sweeps: what the controller adds between a trial's end and the next trial's start, and how fast a
100-trial sweep page draws its table and plots in Chromium.

    PYTHONPATH=.:client python benchmarks/sweep_controller.py            # 20 trials per backend, 5 page loads

1. Controller latency, on SQLite and PostgreSQL: the API (its real background controller, stepping every
   0.5 s) runs a random sweep with one trial at a time; the benchmark plays the worker (claims each trial
   run and finishes it through the state machine) and measures from that commit to the next trial's run
   row, created and enqueued by the controller. Target: < 1 s.
2. The sweep page of a finished 100-trial sweep (3 params), served by uvicorn on SQLite, loaded 5 times
   in Debian's Chromium (Playwright): time from navigation start until the trials table, the objective
   chart (uPlot), the parallel-coordinates SVG (100 polylines) and the importance bars are drawn.
   Target: < 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select

from benchmarks.lab_storage import database
from benchmarks.serving import serve_in_thread
from server.app import create_app
from server.core import transitions
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.models import Run, Sweep, SweepTrial
from server.core.settings import Settings
from server.services import sweeps as sweeps_service
from server.services import tokens
from tests.lab import fake_kinds

CHROMIUM = "/usr/bin/chromium"
SPACE = {"lr": {"type": "loguniform", "low": 1e-3, "high": 1.0}, "steps": {"type": "int", "low": 2, "high": 50}}


def p95(samples: list[float]) -> float:
    """Within the samples (a few dozen: the exclusive method would extrapolate beyond the maximum)."""
    return statistics.quantiles(samples, n=20, method="inclusive")[-1] if len(samples) >= 2 else samples[0]


def controller_latency(backend: str, trials: int) -> list[float]:
    with tempfile.TemporaryDirectory() as scratch_dir, database(backend, Path(scratch_dir)) as url:
        upgrade(url)
        maker = make_sessionmaker(make_engine(url))
        with maker() as session:
            token = tokens.create_token(session, "bench")
        settings = Settings(
            home=Path(scratch_dir), database_url=url, secret_key_value="bench", allowed_hosts_value="testserver"
        )
        app = create_app(settings, enqueue=lambda run: f"task-{run.id}", sweep_every_s=30)
        delays = []
        with TestClient(app) as client:  # its lifespan runs the background controller
            body = {
                "kind": "faketrain",
                "space": SPACE,
                "method": "random",
                "budget": trials,
                "parallel": 1,
                "objective": {"metric": "final_loss"},
                "direction": "minimize",
            }
            answer = client.post("/api/v1/sweeps", json=body, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 201, answer.text
            sweep = answer.json()
            for number in range(trials):
                run_id = wait_for_trial_run(maker, sweep["id"], number)
                with maker() as session:
                    attempt = transitions.claim(session, run_id, "bench", None, os.getpid(), 3600)
                    transitions.finish(
                        session, run_id, attempt.id, "succeeded", result={"final_loss": 1.0 / (number + 2)}
                    )
                ended = time.monotonic()
                if number + 1 < trials:
                    wait_for_trial_run(maker, sweep["id"], number + 1)
                    delays.append(time.monotonic() - ended)
        return delays


def wait_for_trial_run(maker, sweep_id: int, number: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        with maker() as session:
            run_id = session.scalar(
                select(SweepTrial.run_id).where(SweepTrial.sweep_id == sweep_id, SweepTrial.number == number)
            )
        if run_id is not None:
            return run_id
        if time.monotonic() > deadline:
            raise TimeoutError(f"trial {number} of sweep {sweep_id} was not started within {timeout} s")
        time.sleep(0.005)


def seed_sweep(maker, trials: int) -> int:
    """A finished sweep of `trials` complete trials (3 params), each with a run that ran."""
    space = {**SPACE, "momentum": {"type": "choice", "values": [0.0, 0.5, 0.9]}}
    with maker() as session:
        sweep = Sweep(
            name="bench",
            kind="faketrain",
            base_spec={},
            space=space,
            method="random",
            seed=0,
            budget=trials,
            parallel=4,
            objective={"metric": "final_loss", "source": "trial", "eval_spec": {}},
            direction="minimize",
            pruner={"type": "none", "metric": "loss", "every": 1, "options": {}},
            state="running",
        )
        session.add(sweep)
        session.commit()
        rows: list[SweepTrial] = []
        for number in range(trials):
            params, attrs = sweeps_service.propose(sweep, rows, {})
            run = transitions.create(
                session,
                Run(
                    kind="faketrain",
                    name=sweeps_service.marker(sweep.id, number),
                    spec={"lr": params["lr"]},
                    queue="gpu",
                ),
            )
            attempt = transitions.claim(session, run.id, "bench", None, os.getpid(), 3600)
            value = (params["lr"] - 0.05) ** 2 + 0.001 * params["steps"] + 0.01 * params["momentum"]
            transitions.finish(session, run.id, attempt.id, "succeeded", result={"final_loss": value})
            trial = SweepTrial(
                sweep_id=sweep.id,
                number=number,
                params=params,
                system_attrs=attrs,
                run_id=run.id,
                state="complete",
                value=value,
            )
            session.add(trial)
            session.commit()
            rows.append(trial)
        session.execute(Sweep.__table__.update().where(Sweep.id == sweep.id).values(state="finished"))
        session.commit()
        return sweep.id


def page_render(trials: int, loads: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    from tests.lab.test_browser import log_in

    with tempfile.TemporaryDirectory() as scratch_dir:
        url = f"sqlite:///{scratch_dir}/bench.db"
        upgrade(url)
        maker = make_sessionmaker(make_engine(url))
        with maker() as session:
            token = tokens.create_token(session, "bench")
        sweep_id = seed_sweep(maker, trials)
        settings = Settings(home=Path(scratch_dir), database_url=url, secret_key_value="bench")
        app = create_app(settings, enqueue=lambda run: "x", sweep_every_s=0)
        times = []
        with serve_in_thread(app) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            log_in(page, base, token)
            for _ in range(loads + 1):  # the first load warms the browser's and the server's caches
                page.goto(f"{base}/sweeps/{sweep_id}")
                page.wait_for_function(f"document.body.dataset.rendered === '{trials}'", timeout=30_000)
                drawn = page.evaluate(
                    """() => ({ms: Number(document.body.dataset.renderedMs),
                               rows: document.querySelectorAll('#trials-body tr').length,
                               lines: document.querySelectorAll('#parallel polyline').length,
                               chart: !!document.querySelector('#objective-chart canvas'),
                               bars: document.querySelectorAll('#importance .bar').length})"""
                )
                assert drawn["rows"] == trials and drawn["lines"] == trials and drawn["chart"], drawn
                assert drawn["bars"] == 3, drawn
                times.append(drawn["ms"] / 1000)
            assert errors == [], errors
            browser.close()
        return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per backend for the latency")
    parser.add_argument("--page-trials", type=int, default=100)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    fake_kinds.register()
    rows = []
    for backend in args.backends.split(","):
        delays = controller_latency(backend, args.trials)
        rows.append(
            (
                f"trial end -> next trial's run created and enqueued ({backend}, {len(delays)} gaps)",
                statistics.median(delays),
                p95(delays),
                max(delays),
                "< 1 s",
            )
        )
    times = page_render(args.page_trials, args.loads)
    rows.append(
        (
            f"{args.page_trials}-trial sweep page: navigation -> table and plots drawn ({len(times)} loads)",
            statistics.median(times),
            p95(times),
            max(times),
            "< 1 s",
        )
    )
    print("\n| measure | p50 | p95 | max | target |\n|---|---|---|---|---|")
    for name, p50, p95_, worst, target in rows:
        print(f"| {name} | {p50 * 1000:.0f} ms | {p95_ * 1000:.0f} ms | {worst * 1000:.0f} ms | {target} |")
    print(
        f"\nload: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
