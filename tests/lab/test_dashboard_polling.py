"""The dashboard's live refresh never piles up requests: with every runs-list answer delayed 5 s (a slow
database, a loaded server), the runs page keeps at most one list request in flight, starts none while one
is pending, and waits longer between requests (back-off); the run page's detail refresh does the same.

Real chromium (Playwright) against a real uvicorn server; the delay is an ASGI wrapper in front of the
app, which also counts, on the server's side, how many list requests are in flight at once. Before, the
runs page refreshed on a 3 s `setInterval` whatever the previous request was doing: 10 requests started
in 30 s, two or three in flight at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from playwright.sync_api import Page, sync_playwright

from benchmarks.serving import serve_in_thread
from server.app import create_app
from server.services import tokens
from tests.lab.test_browser import ARGS, CHROMIUM

DELAY_S = 5.0
WATCH_S = 30.0


@dataclass
class Slow:
    """ASGI wrapper: GET requests whose path matches `path` wait `delay` s; spans and concurrency kept."""

    app: object
    path: str
    delay: float = DELAY_S
    active: int = 0
    most_active: int = 0
    spans: list[tuple[float, float]] = field(default_factory=list)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        start = time.monotonic()
        try:
            await asyncio.sleep(self.delay)
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.spans.append((start, time.monotonic()))


@pytest.fixture
def page() -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (installs Debian's chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_context().new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        yield page
        browser.close()
        assert errors == [], errors


def _serve(app) -> Iterator[str]:
    with serve_in_thread(app) as url:
        yield url


def _browser_spans(page: Page, path: str) -> list[list[float]]:
    """Start and end times (ms, page clock) of the page's requests to `path` (any query), from the
    browser's own resource timing (a request still pending has no entry yet)."""
    return page.evaluate(
        "(p) => performance.getEntriesByType('resource').filter(e => new URL(e.name).pathname === p)"
        ".map(e => [e.startTime, e.responseEnd])",
        path,
    )


def _gaps(spans: list[tuple[float, float]]) -> list[float]:
    """Pause between each answer and the next request (negative: a request started while one was pending)."""
    ordered = sorted(spans)
    return [start - end for (_, end), (start, _) in itertools.pairwise(ordered)]


def _relative(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    t0 = min(start for start, _ in spans)
    return [(round(a - t0, 1), round(b - t0, 1)) for a, b in sorted(spans)]


def _check(slow: Slow, browser: list[list[float]], watched: list[tuple[float, float]], what: str) -> None:
    assert slow.most_active == 1, f"{what}: {slow.most_active} requests in flight at once: {slow.spans}"
    assert min(_gaps(slow.spans)) >= 0, f"{what}: a request started while another was pending: {slow.spans}"
    assert min(_gaps([tuple(s) for s in browser])) >= 0, f"{what}: the browser overlapped requests: {browser}"
    gaps = _gaps(watched)  # slow answers: each pause longer than the one before
    assert len(gaps) >= 2 and all(b > a + 1 for a, b in itertools.pairwise(gaps)), f"{what}: {gaps}"


@pytest.mark.parametrize("backend", ["sqlite"])  # the page's behaviour, not the database's
def test_runs_page_keeps_one_list_request_in_flight(lab, page):
    for _ in range(3):
        created = lab.client.post("/api/v1/runs", json={"kind": "faketrain"}, headers=lab.auth)
        assert created.status_code == 201, created.text
    slow = Slow(create_app(lab.settings, enqueue=lab.enqueue, sweep_every_s=0), "/api/v1/runs")
    for url in _serve(slow):
        page.goto(f"{url}/login?next=/")
        page.fill('input[name="token"]', lab.token)
        page.click('button[type="submit"]')
        page.wait_for_selector("tr[data-run-id]", timeout=DELAY_S * 1000 + 15_000)
        page.wait_for_timeout(WATCH_S * 1000)
        watched = list(slow.spans)
        # a filter change (here between two requests) fetches at once, still one at a time
        page.select_option('#filters select[name="state"]', "queued")
        page.wait_for_timeout(DELAY_S * 1000 + 3000)
        browser = _browser_spans(page, "/api/v1/runs")
    print(f"runs page: {len(slow.spans)} list requests, spans {_relative(slow.spans)}")
    _check(slow, browser, watched, "runs page")
    assert len(watched) <= 4  # before: 10 started in 30 s
    assert len(slow.spans) == len(watched) + 1 and slow.active == 0  # the filter change: one request


@pytest.mark.parametrize("backend", ["sqlite"])
def test_run_page_keeps_one_detail_request_in_flight(lab, page):
    created = lab.client.post("/api/v1/runs", json={"kind": "faketrain"}, headers=lab.auth)
    run_id = created.json()["id"]  # queued: not finished, so the page keeps refreshing its detail
    slow = Slow(create_app(lab.settings, enqueue=lab.enqueue, sweep_every_s=0), f"/api/v1/runs/{run_id}")
    for url in _serve(slow):
        page.goto(f"{url}/login?next=/runs/{run_id}")
        page.fill('input[name="token"]', lab.token)
        page.click('button[type="submit"]')
        page.wait_for_timeout(WATCH_S * 1000)
        browser = _browser_spans(page, f"/api/v1/runs/{run_id}")
    print(f"run page: {len(slow.spans)} detail requests, spans {_relative(slow.spans)}")
    _check(slow, browser, slow.spans, "run page")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_page_whose_session_ended_goes_to_the_login_page(lab, page):
    """Revoking the token behind a dashboard session (or its expiry, or a logout in another tab) turns the
    next refresh into a 401: the page goes to the login page, which brings the user back, instead of
    showing 'HTTP 401' on every refresh."""
    lab.client.post("/api/v1/runs", json={"kind": "faketrain"}, headers=lab.auth)
    app = create_app(lab.settings, enqueue=lab.enqueue, sweep_every_s=0)
    for url in _serve(app):
        page.goto(f"{url}/login?next=/?state=queued")
        page.fill('input[name="token"]', lab.token)
        page.click('button[type="submit"]')
        page.wait_for_selector("tr[data-run-id]", timeout=15_000)
        with app.state.sessionmaker() as db:
            for row in tokens.list_tokens(db):
                tokens.revoke_token(db, row.id)
        page.wait_for_url("**/login?next=*", timeout=15_000)
        assert parse_qs(urlparse(page.url).query)["next"] == ["/?state=queued"]
        assert page.locator('input[name="token"]').is_visible()
