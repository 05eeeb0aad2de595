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
    browser = lab.anon  # a browser: no token, only the cookies it is given
    for page in ("/", "/runs/new", f"/runs/{run['id']}", f"/compare?ids={run['id']}", f"/runs/{run['id']}/words"):
        response = browser.get(page, follow_redirects=False)
        assert response.status_code == 303, page  # no session: to the login page, and back afterwards
        assert response.headers["location"].startswith("/login?next=%2F"), response.headers["location"]
    login_page = browser.get("/", follow_redirects=True)
    assert login_page.url.path == "/login" and 'name="next" value="/"' in login_page.text

    bad = browser.post("/login", data={"token": "obow_nope"})
    assert bad.status_code == 401 and "Unknown, revoked or expired token" in bad.text
    login = browser.post("/login", data={"token": lab.token, "next": "//evil.example"}, follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/"
    page = browser.get("/")
    assert page.status_code == 200 and "Log out" in page.text
    new = browser.get("/runs/new")
    assert "FashionMNIST/tiny" in new.text and "FashionMNIST/ResNet18s_OBoW_full_cpu" in new.text
    assert "Launching runs needs a login" not in new.text
    csrf = re.search(r'name="csrf" content="([0-9a-f]+)"', new.text).group(1)
    detail = browser.get(f"/runs/{run['id']}")
    assert detail.status_code == 200 and f"#{run['id']}" in detail.text
    assert browser.get("/runs/9999").status_code == 404
    assert "Compare runs" in browser.get(f"/compare?ids={run['id']}").text
    export_form = browser.get(f"/runs/new?kind=export&parent={run['id']}").text
    assert f'<option value="{run["id"]}" selected>#{run["id"]} fake (faketrain, succeeded)' in export_form
    assert '<option value="import"' not in export_form  # imports start from an upload
    assert browser.get("/static/vendor/uPlot.iife.min.js").status_code == 200
    # a script's bearer token reads the pages too
    assert lab.client.get("/", follow_redirects=False).status_code == 200

    # the session works for the JSON API with the CSRF header, and only with it
    ok = browser.post(f"/api/v1/runs/{run['id']}/retry", headers={"X-CSRF-Token": "0" * 64})
    assert ok.status_code == 403
    ok = browser.post("/api/v1/runs", json={"kind": "faketrain"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201
    assert browser.post("/logout", data={"csrf": "wrong"}).status_code == 403
    assert browser.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert browser.get("/", follow_redirects=False).status_code == 303
