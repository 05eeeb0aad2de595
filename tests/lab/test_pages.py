"""Dashboard pages render from the database; logging in gives a session and a CSRF token."""

from __future__ import annotations

import re

import pytest

from worker.tasks import execute_run


@pytest.fixture(params=["sqlite"])
def backend(request) -> str:  # pages are backend-neutral: SQLite is enough
    return request.param


def test_pages_render_and_login_flow(lab):
    run = lab.client.post(
        "/api/v1/runs", json={"kind": "faketrain", "spec": {"steps": 4}}, headers=lab.auth
    ).json()
    execute_run(run["id"], lab.settings)
    page = lab.client.get("/")
    assert page.status_code == 200 and "Log in" in page.text and 'name="csrf" content=""' in page.text
    new = lab.client.get("/runs/new")
    assert "Launching runs needs a login" in new.text and "FashionMNIST/tiny" in new.text
    assert "FashionMNIST/ResNet18s_OBoW_full_cpu" in new.text
    detail = lab.client.get(f"/runs/{run['id']}")
    assert detail.status_code == 200 and f"#{run['id']}" in detail.text
    assert lab.client.get("/runs/9999").status_code == 404
    assert "Compare runs" in lab.client.get(f"/compare?ids={run['id']}").text
    export_form = lab.client.get(f"/runs/new?kind=export&parent={run['id']}").text
    assert f'<option value="{run["id"]}" selected>#{run["id"]} fake (faketrain, succeeded)' in export_form
    assert '<option value="import"' not in export_form  # imports start from an upload
    assert lab.client.get("/static/vendor/uPlot.iife.min.js").status_code == 200

    bad = lab.client.post("/login", data={"token": "obow_nope"})
    assert bad.status_code == 401 and "Unknown or revoked token" in bad.text
    login = lab.client.post(
        "/login", data={"token": lab.token, "next": "//evil.example"}, follow_redirects=False
    )
    assert login.status_code == 303 and login.headers["location"] == "/"
    page = lab.client.get("/runs/new")
    csrf = re.search(r'name="csrf" content="([0-9a-f]+)"', page.text).group(1)
    assert "Launching runs needs a login" not in page.text
    # the session works for the JSON API with the CSRF header, and only with it
    ok = lab.client.post(f"/api/v1/runs/{run['id']}/retry", headers={"X-CSRF-Token": "0" * 64})
    assert ok.status_code == 403
    ok = lab.client.post("/api/v1/runs", json={"kind": "faketrain"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201
    assert lab.client.post("/logout", data={"csrf": "wrong"}).status_code == 403
    assert lab.client.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
