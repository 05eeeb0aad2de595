"""Organising runs in Chromium: edit name, tags and note on the run page (a hostile note stays inert),
search the list with the filter in the address (a reloaded link shows the same list), expand a parent's
children, archive, and delete after the confirmation that says what goes. Starts a server: run under
`flock /tmp/obow-live-tests.lock`."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

from benchmarks.serving import serve_in_thread
from server.app import create_app
from server.core.artifacts import run_dir
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.settings import Settings
from server.services import tokens
from tests.lab.test_browser import ARGS, CHROMIUM, log_in
from worker.tasks import execute_run


def test_edit_search_archive_and_delete_from_the_dashboard(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    upgrade(url)
    with make_sessionmaker(make_engine(url))() as session:
        token = tokens.create_token(session, "browser")
    settings = Settings(home=tmp_path, database_url=url, secret_key_value="browser",
                        artifact_root_dir=tmp_path / "artifacts")
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/setup.sh"
    with serve_in_thread(create_app(settings, enqueue=lambda run: "x", sweep_every_s=0)) as base:
        api = httpx.Client(base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {token}"})
        alpha = api.post("/runs", json={"kind": "faketrain", "name": "alpha", "project": "p1",
                                        "spec": {"steps": 4}}).json()
        beta = api.post("/runs", json={"kind": "faketrain", "name": "beta", "project": "p2"}).json()
        assert execute_run(alpha["id"], settings) == "succeeded"
        child = api.post(f"/runs/{alpha['id']}/exports", json={"format": "torchvision"}).json()
        assert execute_run(child["id"], settings) == "succeeded"

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.set_default_timeout(20_000)
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            log_in(page, base, token)

            # edit from the run page; the note is Markdown, its HTML and javascript: link stay text
            page.goto(f"{base}/runs/{alpha['id']}")
            expect(page.locator("#run-usage")).to_contain_text("with 1 child run")
            page.click("#edit-run")
            page.fill("#organise-form input[name=name]", "alpha-renamed")
            page.fill("#organise-form input[name=tags]", "fmnist, best")
            page.fill("#organise-form textarea[name=note]",
                      "**bold** <script>window.pwned = 1</script> [x](javascript:window.pwned=2)")
            page.click("#organise-form button[type=submit]")
            expect(page.locator("#run-name")).to_have_text("alpha-renamed")
            expect(page.locator("#run-note strong")).to_have_text("bold")
            expect(page.locator("#run-tags .tag")).to_have_text(["fmnist", "best"])
            assert page.locator("#run-note script, #run-note a").count() == 0
            assert page.evaluate("() => window.pwned === undefined")
            stored = api.get(f"/runs/{alpha['id']}").json()
            assert (stored["name"], stored["tags"]) == ("alpha-renamed", ["fmnist", "best"])
            assert stored["state"] == "succeeded"

            # a shared link with a query shows the same list; searching writes the address
            page.goto(f"{base}/?q=tag%3Afmnist")
            expect(page.locator("#search")).to_have_value("tag:fmnist")
            expect(page.locator("#runs-body tr")).to_have_count(1)
            expect(page.locator("#runs-body tr").first).to_contain_text("alpha-renamed")
            page.fill("#search", "project:p2")
            page.press("#search", "Enter")
            page.wait_for_url(re.compile(r".*\?q=project%3Ap2$"))
            expect(page.locator(f"#runs-body tr[data-run-id='{beta['id']}']")).to_have_count(1)
            expect(page.locator("#runs-body tr")).to_have_count(1)
            page.reload()
            expect(page.locator("#runs-body tr")).to_have_count(1)
            page.fill("#search", "colour:red")
            page.press("#search", "Enter")
            expect(page.locator("#search-error")).to_contain_text("colour:red")

            # without a query, children are grouped under their parent
            page.goto(f"{base}/")
            expect(page.locator("#runs-body tr")).to_have_count(2)
            page.click(f"tr[data-run-id='{alpha['id']}'] button.expand")
            expect(page.locator(f"#runs-body tr.child[data-run-id='{child['id']}']")).to_have_count(1)

            # archive hides it from the default list; the archived filter shows it
            page.goto(f"{base}/runs/{alpha['id']}")
            page.click("#archive-run")
            expect(page.locator("#archived-badge")).to_be_visible()
            page.goto(f"{base}/")
            expect(page.locator("#runs-body tr")).to_have_count(1)
            page.goto(f"{base}/?archived=yes")
            expect(page.locator(f"#runs-body tr[data-run-id='{alpha['id']}']")).to_have_count(1)

            # delete: the confirmation says what goes; "Keep it" keeps it, confirming removes it all
            page.goto(f"{base}/runs/{alpha['id']}")
            page.click("#delete-run")
            summary = page.locator("#delete-summary")
            expect(summary).to_contain_text(f"1 child run (#{child['id']})")
            holds = api.get(f"/runs/{alpha['id']}/usage").json()
            assert holds["metric_points"] >= 8  # the parent's 4 steps x 2 keys, and what the worker adds
            expect(summary).to_contain_text(f"{holds['metric_points']} metric points")
            expect(summary).to_contain_text(f"{holds['files']} files")
            page.click("#delete-cancel")
            assert api.get(f"/runs/{alpha['id']}").status_code == 200
            page.click("#delete-run")
            expect(page.locator("#delete-confirm")).to_be_enabled()
            page.click("#delete-confirm")
            page.wait_for_url(re.compile(r".*/$"))
            browser.close()
        assert errors == [], errors
        assert api.get(f"/runs/{alpha['id']}").status_code == 404
        assert api.get(f"/runs/{child['id']}").status_code == 404
        assert not run_dir(settings.artifact_root, alpha["id"]).exists()
        assert api.get(f"/runs/{beta['id']}").status_code == 200
