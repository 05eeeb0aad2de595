"""The live sweep page in Chromium: a seeded 20-trial sweep draws its table, objective chart,
parallel-coordinates plot and importance bars without a page error, and "Promote best" opens the new-run
form filled with the best trial's spec. Starts a server: run under `flock /tmp/obow-live-tests.lock`."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import sync_playwright
from sqlalchemy import select

from benchmarks.serving import serve_in_thread
from benchmarks.sweep_controller import seed_sweep
from server.app import create_app
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.models import Run, SweepTrial
from server.core.settings import Settings
from server.services import tokens
from tests.lab.test_browser import ARGS, CHROMIUM, log_in


def test_the_sweep_page_draws_everything_and_promotes_the_best_trial(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    upgrade(url)
    maker = make_sessionmaker(make_engine(url))
    with maker() as session:
        token = tokens.create_token(session, "browser")
    sweep_id = seed_sweep(maker, 20)
    with maker() as session:
        best = min(session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep_id)), key=lambda t: t.value)
        best_lr = session.get(Run, best.run_id).spec["lr"]
    settings = Settings(home=tmp_path, database_url=url, secret_key_value="browser")
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/setup.sh"
    with serve_in_thread(create_app(settings, enqueue=lambda run: "x", sweep_every_s=0)) as base:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            log_in(page, base, token)
            page.click("nav >> text=Sweeps")
            page.wait_for_selector(f"#sweeps-body a[href='/sweeps/{sweep_id}']").click()
            page.wait_for_function("document.body.dataset.rendered === '20'")
            assert page.locator("#trials-body tr").count() == 20
            assert page.locator("#parallel polyline").count() == 20
            assert page.locator("#objective-chart canvas").count() >= 1
            assert page.locator("#importance .bar").count() == 3
            assert page.locator("#trials-body tr.best td").first.inner_text() == str(best.number)
            assert f"trial {best.number}" in page.locator("#best").inner_text()
            page.click("#promote")
            page.wait_for_url(re.compile(rf".*/runs/new\?from_run={best.run_id}$"))
            page.wait_for_selector('[data-path="lr"]')
            page.wait_for_function("document.querySelector('[data-path=\"lr\"]').value !== ''")
            assert abs(float(page.locator('[data-path="lr"]').input_value()) - best_lr) < 1e-12
            assert page.locator("#kind").input_value() == "faketrain"
            browser.close()
        assert errors == [], errors
