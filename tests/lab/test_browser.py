"""The dashboard in a real browser (Debian's chromium, headless, driven by Playwright): log in, launch a
run from the generated form (with inline validation first), watch the chart grow live, convert the
weights and download them."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from server.client import LabClient
from tests.lab.conftest import Live, start_live

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def live(request, tmp_path) -> Iterator[Live]:
    with start_live(request, tmp_path, "sqlite-broker+sqlite") as running:
        yield running


@pytest.fixture
def page(tmp_path) -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (installs Debian's chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(accept_downloads=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        yield page
        browser.close()
        assert errors == [], errors


def _points(page: Page) -> int:
    return page.evaluate(
        "() => { const c = document.querySelector('.chart'); return c && c.plot ? c.plot.data[0].length : 0; }"
    )


def test_launch_watch_convert_download(live, page, tmp_path):
    page.set_default_timeout(30_000)
    page.goto(f"{live.url}/login?next=/runs/new")
    page.fill('input[name="token"]', live.token)
    page.click('button[type="submit"]')
    page.wait_for_url(f"{live.url}/runs/new")

    page.select_option("#kind", "faketrain")
    steps = page.locator('[data-path="steps"]')
    steps.fill("0")
    expect(page.locator('[data-error-for="steps"]')).to_contain_text("≥ 1")  # checked as you type
    steps.fill("40")
    expect(page.locator('[data-error-for="steps"]')).to_have_text("")
    page.fill('[data-path="sleep_s"]', "0.1")
    page.fill('[data-path="name"]', "bad name!")
    page.click("#launch")
    expect(page.locator('[data-error-for="name"]')).to_contain_text("pattern")  # the server's 422, in place
    page.fill('[data-path="name"]', "browser-run")
    page.click("#launch")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    run_id = int(page.url.rsplit("/", 1)[1])

    page.wait_for_function("() => { const c = document.querySelector('.chart'); return c && c.plot; }")
    first = _points(page)
    deadline = time.monotonic() + 30
    while _points(page) <= max(first, 5):  # new points arrive over SSE while the run goes on
        assert time.monotonic() < deadline, "the chart did not update"
        time.sleep(0.2)
    expect(page.locator("#state")).to_have_text("succeeded", timeout=60_000)
    page.wait_for_function("() => document.querySelector('.chart').plot.data[0].length === 40")
    expect(page.locator("#progress-text")).to_have_text("40 / 40")

    page.select_option("#export-format", "safetensors")
    page.click('#export-form button[type="submit"]')
    link = page.locator("a.export-download")
    expect(link).to_be_visible(timeout=60_000)
    with page.expect_download() as info:
        link.click()
    saved = tmp_path / "weights.bin"
    info.value.save_as(saved)
    with LabClient(live.url, live.token) as client:
        (export,) = client.run(run_id)["children"]
        (artifact,) = client.artifacts(export["id"])
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == artifact["sha256"]
    assert artifact["format"] == "safetensors"
