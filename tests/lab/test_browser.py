"""The dashboard in a real browser (Debian's chromium, headless, driven by Playwright): log in, launch a
run from the generated form (with inline validation first), watch the chart grow live, convert the
weights and download them, browse the visual-word gallery."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from obow_lab_client import LabClient
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


def log_in(page: Page, base: str, token: str) -> None:
    """The dashboard's login with an API token, landing on the runs list."""
    page.goto(f"{base}/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/$"))


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

    # the Fashion-MNIST preset, shortened to 2 epochs of 32 iterations (64 steps: long enough for the chart
    # to be seen growing on a fast CPU, where 16 could all land before its first read)
    page.select_option("#kind", "pretrain")
    page.select_option("#preset", "FashionMNIST/tiny")
    expect(page.locator('[data-path="data.batch_size"]')).to_have_value("32")  # the preset's values
    page.click("#advanced > summary")  # the fields below the basic ones are folded away
    epochs = page.locator('[data-path="optim.num_epochs"]')
    epochs.fill("0")
    expect(page.locator('[data-error-for="optim.num_epochs"]')).to_contain_text("≥ 1")  # checked as you type
    epochs.fill("2")
    expect(page.locator('[data-error-for="optim.num_epochs"]')).to_have_text("")
    for path, value in (
        ("data.epoch_size", "512"),
        ("data.batch_size", "16"),
        ("runtime.print_freq", "1"),
        ("runtime.workers", "0"),
        ("runtime.health_window", "4"),
        ("runtime.bn_recalibration_images", "0"),  # the run's last phase stays training
    ):
        page.fill(f'[data-path="{path}"]', value)
    page.select_option('[data-path="runtime.device"]', "cpu")
    page.fill('[data-path="name"]', "bad name!")
    page.click("#launch")
    expect(page.locator('[data-error-for="name"]')).to_contain_text("pattern")  # the server's 422, in place
    page.fill('[data-path="name"]', "browser-run")
    page.fill("#run-project", "browser-tests")
    page.fill("#run-tags", "ui, tiny ,")
    page.click("#launch")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    run_id = int(page.url.rsplit("/", 1)[1])
    with LabClient(live.url, live.token) as client:
        launched = client.run(run_id)
    assert (launched["project"], launched["tags"], launched["note"]) == ("browser-tests", ["ui", "tiny"], "")

    page.wait_for_function("() => { const c = document.querySelector('.chart'); return c && c.plot; }")
    first = _points(page)
    deadline = time.monotonic() + 90
    while _points(page) <= first:  # new points arrive over SSE while the run goes on
        assert time.monotonic() < deadline, "the chart did not update"
        time.sleep(0.2)
    expect(page.locator("#state")).to_have_text("succeeded", timeout=90_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.chart')]"
        ".some(c => c.dataset.title === 'loss' && c.plot.data[0].length >= 64)"
    )
    expect(page.locator("#progress-text")).to_have_text("Phase: training 64/64 iterations")
    # vocabulary health next to the losses: every 4 steps (health_window), temperature every step
    for title in ("words used", "usage entropy (normalised)", "queue age", "temperature μ"):
        expect(page.locator(f'.chart[data-title="{title}"]')).to_have_count(1)
    expect(page.locator("#cancel")).to_be_hidden()
    expect(page.locator("#retry")).to_be_hidden()

    page.select_option("#export-format", "safetensors")  # the tiny CPU backbone has no torchvision twin
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

    # visual words: a `words` child run from the run page, then its cached gallery, paged
    page.click("#generate-words")
    expect(page.locator("#words-state")).to_contain_text("cached: block3, block4", timeout=90_000)
    page.click("#words-link")
    page.wait_for_url(f"{live.url}/runs/{run_id}/words")
    expect(page.locator(".word")).to_have_count(16)
    expect(page.locator("#page-info")).to_contain_text("page 1 of")
    sheet = page.evaluate(
        "async () => { const s = getComputedStyle(document.querySelector('.patch')).backgroundImage;"
        " const r = await fetch(s.slice(5, -2)); return [r.status, r.headers.get('content-type')]; }"
    )
    assert sheet == [200, "image/png"]
    # the runs list's and run page's collapse badge reads the latest collapse_lev@i values
    assert page.evaluate(
        "() => Lab.collapsedLevels({'collapse_lev@1': 1, 'collapse_lev@0': 0, 'words_used_lev@1': 0.01})"
    ) == ["lev@1"]
    page.click("#next-page")
    expect(page.locator("#page-info")).to_contain_text("page 2 of")
    page.select_option('select[name="level"]', "block3")
    expect(page.locator('select[name="level"]')).to_have_value("block3")
    expect(page.locator(".patch").first).to_be_visible()
    page.goto(f"{live.url}/runs/{run_id}")

    # a torchvision ResNet-18 state dict uploaded from the runs list becomes an import run
    import torch
    import torchvision

    upload = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), upload)
    page.goto(f"{live.url}/")
    page.set_input_files("#import-file", str(upload))
    page.fill("#import-name", "mine")
    page.click('#import-form button[type="submit"]')
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    expect(page.locator("#state")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#artifacts")).to_contain_text("imported_mine.pt")

    # the compare page overlays the run's loss (the only run here)
    page.goto(f"{live.url}/compare?ids={run_id}&key=loss_total")
    page.wait_for_function(
        "() => { const c = document.querySelector('#compare-chart .chart'); return c && c.plot; }"
    )
    assert page.evaluate("() => document.querySelector('#compare-chart .chart').plot.data[1].length") >= 64
