"""The API server killed (SIGKILL) and restarted on the same port while a browser streams a run's
events: every stream resumes from its Last-Event-ID, without gaps or duplicates.

The server is a separate process (tests/lab/server_main.py, the production `obow lab serve`) on
PostgreSQL, so it really dies. The run's work is `execute_run` in a thread of this process: the
worker is not what is killed, and an in-process worker starts in milliseconds where a Celery process
costs seconds of this 2-core machine. Three consumers watch the same run through the restart: the
run page's own EventSource (run.js, instrumented before the page loads), a second raw EventSource
opened in the page, and an httpx client that reconnects by hand with Last-Event-ID. Each records
every event id and every metric point (key, step), so a duplicate is visible (the chart's step ->
value map would hide it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.settings import Settings
from server.schemas import RunCreate
from server.services import runs as runs_service
from server.services import tokens
from server.services.events import Cursor
from tests.lab.conftest import REDIS_URL, REPO, _free_port, _truncate
from tests.lab.test_browser import ARGS, CHROMIUM
from worker.tasks import execute_run

STEPS = 300
SPEC = {"steps": STEPS, "sleep_s": 0.04}  # about 12 s of run
KILL_AFTER_STEP = 60  # the raw stream has seen this step: well inside the run

# Wraps EventSource before run.js runs: every stream of the page records what it receives.
RECORDER = """
window.__streams = {};
window.__record = (name, source) => {
  const rec = { ids: [], points: [], opens: 0, errors: 0, ended: false };
  window.__streams[name] = rec;
  source.addEventListener("open", () => { rec.opens += 1; });
  source.addEventListener("error", () => { rec.errors += 1; });
  for (const type of ["metrics", "logs", "state", "end"]) {
    source.addEventListener(type, (e) => {
      rec.ids.push([type, e.lastEventId]);
      if (type === "metrics") for (const p of JSON.parse(e.data).points) rec.points.push([p[0], p[1]]);
      if (type === "end") { rec.ended = true; source.close(); }
    });
  }
  return source;
};
const NativeEventSource = window.EventSource;
window.EventSource = class extends NativeEventSource {
  constructor(url, options) { super(url, options); window.__record("page", this); }
};
"""


@dataclass
class Server:
    """`python -m tests.lab.server_main PORT` that can be killed and started again on its port."""

    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> float:
        """Start and wait until it answers; returns the seconds that took."""
        began = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.lab.server_main", str(self.port)],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )
        self.pids.append(self.proc.pid)
        while True:
            assert self.proc.poll() is None, f"the server exited: {self.log.read_text()[-2000:]}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/api/v1/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - began
            assert time.monotonic() - began < timeout, f"the server did not start: {self.log.read_text()[-2000:]}"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@dataclass
class Lab:
    server: Server
    settings: Settings
    token: str
    maker: object


@pytest.fixture
def restartable(pg_url, tmp_path) -> Iterator[Lab]:
    upgrade(pg_url)
    _truncate(pg_url)
    settings = Settings(
        home=tmp_path, database_url=pg_url, broker_url=REDIS_URL, artifact_root_dir=tmp_path / "artifacts",
        secret_key_value="sse-restart",
    )
    maker = make_sessionmaker(make_engine(pg_url))
    with maker() as session:
        token = tokens.create_token(session, "sse-restart")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": pg_url,
        "CELERY_BROKER_URL": REDIS_URL,  # never used: the test creates the run itself, nothing is enqueued
        "ARTIFACT_ROOT": str(settings.artifact_root),
        "OBOW_LAB_HOME": str(tmp_path),
        "OBOW_LAB_SECRET_KEY": "sse-restart",
        "OMP_NUM_THREADS": "1",
    }
    server = Server(_free_port(), env, tmp_path / "server.log")
    server.start()
    try:
        yield Lab(server, settings, token, maker)
    finally:
        server.kill()


# A slow network for the history read: its answer (computed now) reaches run.js seconds later, after
# live points newer than it; merging must keep those.
SLOW_HISTORY = """
const nativeFetch = window.fetch;
window.fetch = async (url, options) => {
  const response = await nativeFetch(url, options);
  if (String(url).includes("/metrics?")) await new Promise((done) => setTimeout(done, 2500));
  return response;
};
"""


@pytest.fixture
def new_page() -> Iterator[Callable[..., Page]]:
    """Pages of one headless chromium, each with the stream recorder (and any extra script) installed;
    no page may raise an error."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (installs Debian's chromium)")
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)

        def make(*scripts: str) -> Page:
            page = browser.new_context().new_page()
            for script in (RECORDER, *scripts):
                page.add_init_script(script)
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.set_default_timeout(30_000)
            return page

        yield make
        browser.close()
    assert errors == [], errors


def log_in(page: Page, url: str, token: str, run_id: int) -> None:
    page.goto(f"{url}/login?next=/runs/{run_id}")
    page.fill('input[name="token"]', token)
    page.click('button[type="submit"]')
    page.wait_for_url(f"{url}/runs/{run_id}")


def create_run(lab: Lab) -> int:
    """The run row, queued, without a broker: the test's own thread is its worker."""
    with lab.maker() as session:
        run = runs_service.create_run(
            session, RunCreate(kind="faketrain", spec=SPEC), lab.settings, lambda run: "in-process"
        )
        return run.id


@dataclass
class Stream:
    """What one consumer received: event (type, id) pairs, metric (key, step) pairs, connections made."""

    ids: list[tuple[str, str]] = field(default_factory=list)
    points: list[tuple[str, int]] = field(default_factory=list)
    opens: int = 0
    errors: int = 0
    ended: bool = False


def follow_with_httpx(url: str, run_id: int, out: Stream, deadline: float, token: str) -> None:
    """An SSE client by hand (a script with its token): on a dropped connection, reconnect with the last
    id it saw."""
    last = "0-0-0"  # from the start of the run
    while not out.ended and time.monotonic() < deadline:
        try:
            with httpx.stream(
                "GET", f"{url}/api/v1/runs/{run_id}/events", timeout=10,
                headers={"Last-Event-ID": last, "Authorization": f"Bearer {token}"},
            ) as response:
                assert response.status_code == 200, response.status_code
                out.opens += 1
                event: dict[str, str] = {}
                for line in response.iter_lines():
                    if line:
                        name, _, value = line.partition(": ")
                        event[name] = value
                        continue
                    if "event" in event:
                        last = event["id"]
                        out.ids.append((event["event"], last))
                        if event["event"] == "metrics":
                            out.points += [(p[0], p[1]) for p in json.loads(event["data"])["points"]]
                        if event["event"] == "end":
                            out.ended = True
                            return
                    event = {}
        except httpx.TransportError:
            out.errors += 1
            time.sleep(0.5)


def parse_id(text: str) -> tuple[int, ...]:
    """(metric id, log id, run version) as the server reads a reconnect's Last-Event-ID."""
    return dataclasses.astuple(Cursor.parse(text))


def is_cursor(text: str) -> bool:
    """An id the server takes back on a reconnect as itself (else the stream restarts "from now"); the
    version is -1 only before the stream's first state event (a page's start cursor)."""
    cursor = Cursor.parse(text)
    return cursor is not None and str(cursor) == text and cursor.version >= -1


def assert_exact(name: str, stream: Stream, from_start: bool = True) -> None:
    """Every step of each key once, in order, up to the last (from step 0 unless the stream started
    mid-run); ids strictly increasing (each part non-decreasing; `end` repeats the last id)."""
    assert stream.ended, f"{name}: no end event"
    assert len(stream.points) == len(set(stream.points)), f"{name}: duplicated points"
    for key in ("loss", "lr"):
        steps = [step for k, step in stream.points if k == key]
        first = 0 if from_start else steps[0]
        assert steps == list(range(first, STEPS)), f"{name} {key}: {len(steps)} points, first problems: " + str(
            [(i, s) for i, s in enumerate(steps, first) if s != i][:5]
        )
    bad = [(n, t, i) for n, (t, i) in enumerate(stream.ids) if not is_cursor(i)]
    assert not bad, f"{name}: ids that are not cursors {bad[:5]}"
    ids = [parse_id(i) for t, i in stream.ids if t != "end"]
    for before, after in itertools.pairwise(ids):
        assert all(a >= b for a, b in zip(after, before, strict=True)) and after != before, (name, before, after)
    assert stream.ids[-1] == ("end", stream.ids[-2][1]), name


def recorded(page: Page, name: str) -> Stream:
    rec = page.evaluate(f"() => window.__streams[{json.dumps(name)}]")
    return Stream([tuple(i) for i in rec["ids"]], [tuple(p) for p in rec["points"]], rec["opens"], rec["errors"],
                  rec["ended"])


def chart_steps(page: Page, title: str) -> list[int]:
    return page.evaluate(
        "(title) => [...document.querySelectorAll('.chart')].find((c) => c.dataset.title === title).plot.data[0]",
        title,
    )


def test_streams_resume_after_the_server_is_killed_and_restarted(restartable, new_page):
    lab, server = restartable, restartable.server
    run_id = create_run(lab)
    page = new_page()  # opened before the run starts: its stream carries every point
    log_in(page, server.url, lab.token, run_id)
    page.wait_for_function("() => window.__streams.page && window.__streams.page.opens === 1")
    page.evaluate(
        "(url) => window.__record('raw', new EventSource(url))", f"/api/v1/runs/{run_id}/events?after=0-0-0"
    )
    page.wait_for_function("() => window.__streams.raw.opens === 1")

    deadline = time.monotonic() + 50
    by_hand = Stream()
    reader = threading.Thread(
        target=follow_with_httpx, args=(server.url, run_id, by_hand, deadline, lab.token), daemon=True
    )
    reader.start()
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(execute_run(run_id, lab.settings)), daemon=True)
    worker.start()

    # a second page opened mid-run, whose history read answers late: history and stream must join up
    page.wait_for_function("() => window.__streams.raw.points.some(([k, s]) => k === 'loss' && s >= 20)")
    late = new_page(SLOW_HISTORY)
    log_in(late, server.url, lab.token, run_id)
    late.wait_for_function("() => window.__streams.page && window.__streams.page.opens === 1")
    late.wait_for_function(  # its (slow) history has arrived: the kill must not be what stops it
        "() => [...document.querySelectorAll('.chart')].some((c) => c.dataset.title === 'loss' && c.plot"
        " && c.plot.data[0][0] === 0)"
    )

    page.wait_for_function(
        f"() => window.__streams.raw.points.some(([k, s]) => k === 'loss' && s >= {KILL_AFTER_STEP})"
    )
    seen_before = page.evaluate("() => window.__streams.raw.points.length")
    first_pid = server.proc.pid
    killed = time.monotonic()
    server.kill()
    time.sleep(1.0)
    startup_s = server.start()
    page.wait_for_function("() => window.__streams.raw.opens >= 2 && window.__streams.page.opens >= 2")
    resumed_s = time.monotonic() - killed
    still_running = worker.is_alive()

    worker.join(timeout=max(1, deadline - time.monotonic()))
    assert outcome == ["succeeded"]
    reader.join(timeout=max(1, deadline - time.monotonic()))
    for each in (page, late):
        expect(each.locator("#state")).to_have_text("succeeded")
        each.wait_for_function("() => Object.values(window.__streams).every((s) => s.ended)")

    assert server.pids[1] != first_pid and server.proc.poll() is None  # really a new server process
    streams = {"page": recorded(page, "page"), "raw": recorded(page, "raw"), "httpx": by_hand}
    streams["late page"] = recorded(late, "page")
    for name, stream in streams.items():
        assert stream.opens == 2 and stream.errors >= 1, (name, stream.opens, stream.errors)  # one reconnect
        assert_exact(name, stream, from_start=name != "late page")
    assert 0 < seen_before < len(streams["raw"].points)  # the kill really fell inside the stream
    assert streams["late page"].points[0][1] > 0  # ... and the late page really started mid-run

    # the charts the pages drew (history + stream): every step of loss once
    assert chart_steps(page, "loss") == list(range(STEPS))
    assert chart_steps(late, "loss") == list(range(STEPS))
    print(
        f"\nSSE restart: server up {startup_s:.2f} s after its start, streams resumed {resumed_s:.2f} s after "
        f"the kill (run still going: {still_running}); {seen_before} points before it, "
        f"{len(streams['raw'].points)} per stream, late page's stream from step {streams['late page'].points[0][1]}"
    )
