"""The compare page, the run page's charts and downloads, the new-run form's layout and the offline API
docs in Chromium. Two seeded runs: the spec-difference table shows exactly the keys that differ; the
overlaid chart switches x axis, smoothing (checked against a hand computation) and log scale, all kept
in the share link; the table's CSV downloads. Starts a server: run under `flock /tmp/obow-live-tests.lock`."""

from __future__ import annotations

import csv
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect, sync_playwright

from benchmarks.serving import serve_in_thread
from server.app import create_app
from server.core import metrics as metrics_service
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.models import Run
from server.core.settings import Settings
from server.services import tokens
from tests.lab.test_browser import ARGS, CHROMIUM, log_in

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STEPS = 40  # 20 steps an epoch, 2 epochs
DIFFERING = {"name", "optim.lr", "data.batch_size", "extra"}


def _seed(maker, name: str, spec: dict, loss) -> int:
    points = [("loss", s, float(loss(s)), T0.timestamp() + 3 * s) for s in range(1, STEPS + 1)]
    points += [("epoch", s, s / 20, T0.timestamp() + 3 * s) for s in range(5, STEPS + 1, 5)]
    points += [(k, s, 0.5, T0.timestamp() + s) for k in ("lr", "img_per_s", "sys/gpu_util", "odd_thing")
               for s in range(1, STEPS + 1)]
    with maker() as session:
        run = Run(kind="pretrain", name=name, spec=spec, queue="gpu", state="succeeded", started_at=T0,
                  finished_at=T0, progress_total=STEPS, progress_done=STEPS,
                  metric_keys=sorted({p[0] for p in points}), last_metrics={"loss": float(loss(STEPS))})
        session.add(run)
        session.flush()
        metrics_service.ingest(session, run.id, points)
        session.commit()
        return run.id


def _drawn(page: Page) -> dict:
    return page.evaluate("() => JSON.parse(document.getElementById('compare').dataset.drawn || '{}')")


def test_compare_runs_chart_controls_share_link_and_downloads(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    upgrade(url)
    maker = make_sessionmaker(make_engine(url))
    with maker() as session:
        token = tokens.create_token(session, "browser")
    same = {"num_epochs": 2, "lr_schedule_type": "cos"}
    a = _seed(maker, "a", {"name": "a", "optim": {**same, "lr": 0.1}, "data": {"batch_size": 32}}, lambda s: s)
    b = _seed(maker, "b", {"name": "b", "optim": {**same, "lr": 0.05}, "data": {"batch_size": 64}, "extra": 1},
              lambda s: 100.0 / s)
    settings = Settings(home=tmp_path, database_url=url, secret_key_value="browser")
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/setup.sh"
    with serve_in_thread(create_app(settings, enqueue=lambda run: "x", sweep_every_s=0)) as base:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            context = browser.new_context(viewport={"width": 1300, "height": 900}, accept_downloads=True)
            outside: list[str] = []  # no page may reach past this server (the docs included)
            context.route(re.compile(r"^(?!http://127\.0\.0\.1:\d+/).*"),
                          lambda route: (outside.append(route.request.url), route.abort()))
            page = context.new_page()
            page.set_default_timeout(20_000)
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            log_in(page, base, token)

            # a favicon, linked from every page and at the address browsers try anyway
            assert page.get_attribute('link[rel="icon"]', "href") == "/static/favicon.svg"
            icon = httpx.get(f"{base}/favicon.ico")  # (Playwright's routing leaves favicon requests alone)
            assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"

            # -- compare: the table shows exactly the differing spec keys -----------------------------
            page.goto(f"{base}/compare?runs={a},{b}&key=loss")
            page.wait_for_function("() => document.getElementById('compare').dataset.drawn")
            keys = page.eval_on_selector_all("#spec-diff tr[data-key]", "rows => rows.map(r => r.dataset.key)")
            assert set(keys) == DIFFERING and len(keys) == len(DIFFERING)
            expect(page.locator('#spec-diff tr[data-key="extra"] td.missing')).to_have_count(1)
            expect(page.locator("#spec-diff tr.section")).to_contain_text("4 keys differ, 2 the same")
            assert _drawn(page) == {"key": "loss", "x": "step", "smooth": 0, "log": False}
            data = page.evaluate("() => document.querySelector('#compare-chart .chart').plot.data")
            assert data[0] == list(range(1, STEPS + 1)) and data[1][:3] == [1, 2, 3]
            assert page.evaluate("() => document.querySelector('#compare-chart .chart').plot.axes[1].label") == "loss"

            # x axis: epochs from each run's `epoch` metric; then images seen (x batch size: 32 and 64)
            page.select_option("#compare-x", "epoch")
            page.wait_for_function("() => JSON.parse(document.getElementById('compare').dataset.drawn).x === 'epoch'")
            xs = page.evaluate("() => document.querySelector('#compare-chart .chart').plot.data[0]")
            assert abs(xs[0] - 0.05) < 1e-9 and abs(xs[-1] - 2.0) < 1e-9
            page.select_option("#compare-x", "images")
            page.wait_for_function("() => JSON.parse(document.getElementById('compare').dataset.drawn).x === 'images'")
            xs = page.evaluate("() => document.querySelector('#compare-chart .chart').plot.data[0]")
            assert xs[0] == 32 and xs[-1] == 64 * STEPS
            page.select_option("#compare-x", "epoch")
            page.wait_for_function("() => JSON.parse(document.getElementById('compare').dataset.drawn).x === 'epoch'")

            # smoothing: TensorBoard's debiased EMA, against a hand computation of 1, 2, 3 at weight 0.5
            hand = [1.0, (0.25 + 1.0) / 0.75, (0.625 + 1.5) / 0.875]
            ema = page.evaluate("() => Charts.ema([1, 2, 3], 0.5)")
            assert all(abs(x - y) < 1e-12 for x, y in zip(ema, hand, strict=True))
            assert page.evaluate("() => Charts.ema([1, null, 3], 0)") == [1, None, 3]
            page.fill("#compare-smooth", "0.5")
            page.wait_for_function("() => JSON.parse(document.getElementById('compare').dataset.drawn).smooth === 0.5")
            smoothed = page.evaluate("() => document.querySelector('#compare-chart .chart').plot.data[1].slice(0, 3)")
            assert all(abs(x - y) < 1e-9 for x, y in zip(smoothed, hand, strict=True))

            page.check("#compare-log")
            page.wait_for_function("() => JSON.parse(document.getElementById('compare').dataset.drawn).log")
            assert page.evaluate("() => document.querySelector('#compare-chart .chart').plot.scales.y.distr") == 3

            # the share link holds it all; opened afresh it draws the same
            link = page.input_value("#share-link")
            assert link == f"{base}/compare?runs={a},{b}&key=loss&x=epoch&smooth=0.5&log=1" == page.url
            other = context.new_page()
            other.goto(link)
            other.wait_for_function("() => document.getElementById('compare').dataset.drawn")
            assert _drawn(other) == {"key": "loss", "x": "epoch", "smooth": 0.5, "log": True}
            assert other.input_value("#compare-x") == "epoch" and other.is_checked("#compare-log")
            other.close()

            # the table's CSV: the same differing keys
            with page.expect_download() as info:
                page.click("#table-csv")
            saved = tmp_path / "table.csv"
            info.value.save_as(saved)
            assert info.value.suggested_filename == f"compare-{a}-{b}.csv"
            with open(saved, newline="") as handle:
                rows = list(csv.reader(handle))
            assert rows[0] == ["section", "key", f"#{a} a", f"#{b} b"]
            assert {r[1] for r in rows[1:] if r[0] == "spec"} == DIFFERING

            # -- the run page: panels by kind of quantity, axis labels, whole-number step ticks ------
            page.goto(f"{base}/runs/{a}")
            page.wait_for_function("() => document.querySelectorAll('#charts .chart, #sys-charts .chart').length >= 6")
            titles = page.eval_on_selector_all("#charts .chart", "boxes => boxes.map(b => b.dataset.title)")
            assert set(titles) == {"loss", "epoch", "learning rate", "throughput", "odd_thing"}
            labels = page.evaluate(
                "() => [...document.querySelectorAll('#charts .chart, #sys-charts .chart')]"
                ".map(b => [b.dataset.title, b.plot.axes[0].label, b.plot.axes[1].label, b.plot.axes[0]._splits])"
            )
            for title, x_label, y_label, splits in labels:
                assert x_label == ("seconds since start" if title.startswith("system:") else "step"), title
                assert y_label, title
                assert splits and all(float(v).is_integer() for v in splits), (title, splits)
            assert dict((t, y) for t, _, y, _ in labels)["system: utilisation (%) by seconds"] == "utilisation (%)"
            assert dict((t, y) for t, _, y, _ in labels)["throughput"] == "images / s"
            with page.expect_download() as info:
                page.click("#metrics-csv")
            assert info.value.suggested_filename == f"run-{a}-metrics.csv"
            info.value.save_as(tmp_path / "metrics.csv")
            assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 2 * STEPS + STEPS // 5 + 3 * STEPS

            # -- the new-run form: basic fields, the rest folded; an error scrolls to its field ---------
            page.goto(f"{base}/runs/new?kind=pretrain&preset=FashionMNIST/tiny")
            expect(page.locator('[data-path="data.batch_size"]')).to_have_value("32")
            basic = page.eval_on_selector_all("#basic-fields [data-mode]", "els => els.map(e => e.dataset.path)")
            assert basic == ["name", "data.dataset_name", "data.data_dir", "optim.num_epochs", "data.batch_size",
                             "optim.lr", "runtime.num_processes"]
            assert not page.evaluate("() => document.getElementById('advanced').open")
            expect(page.locator('[data-path="runtime.workers"]')).to_be_hidden()
            # a value only the server refuses, in the folded section: opened, scrolled to, focused
            page.click("#advanced > summary")
            page.fill('[data-path="data.image_crop_range"]', "[0.25, 0.8, 0.9]")
            page.click("#advanced > summary")
            page.evaluate("() => window.scrollTo(0, 0)")
            page.click("#launch")
            expect(page.locator('[data-error-for="data.image_crop_range"]')).not_to_have_text("")
            assert page.evaluate("() => document.getElementById('advanced').open")
            assert page.evaluate("() => document.activeElement.dataset.path") == "data.image_crop_range"
            expect(page.locator('[data-path="data.image_crop_range"]')).to_be_in_viewport()
            # a value the form refuses itself, in a basic field: focused the same way
            page.fill('[data-path="data.image_crop_range"]', "[0.25, 0.8]")
            page.fill('[data-path="optim.num_epochs"]', "0")
            page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
            page.click("#launch")
            assert page.evaluate("() => document.activeElement.dataset.path") == "optim.num_epochs"
            expect(page.locator('[data-path="optim.num_epochs"]')).to_be_in_viewport()

            # -- the API docs draw with no internet: Swagger UI and ReDoc from this server -------------
            page.goto(f"{base}/api/docs")
            expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
            expect(page.locator(".swagger-ui")).to_contain_text("/api/v1/compare")
            page.goto(f"{base}/api/redoc")
            expect(page.get_by_text("/api/v1/compare/series").first).to_be_attached()
            browser.close()
        assert outside == [], outside
        assert errors == [], errors
