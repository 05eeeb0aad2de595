"""Reads need credentials, the Host header is checked, sessions are server-side and end, tokens are listed,
revoked and expire (through the real `obow lab token` command), failed logins back off, malformed
session cookies are nobody, every status a route answers is in the OpenAPI document, and bodies are
capped. On SQLite and PostgreSQL (the `lab` fixture), and against a real `obow lab serve` process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from benchmarks.lab_load import serve
from server.api.deps import SESSION_COOKIE
from server.app import create_app
from server.core.db import upgrade
from server.core.models import ApiToken, Run, WebSession, utcnow
from server.services import tokens
from server.services.throttle import LoginThrottle
from tests.lab.conftest import REPO, Recorder, count_rows
from worker.tasks import execute_run

OPEN_PATHS = {"/api/v1/healthz"}  # the one API route anyone may read
PAGES = ("/", "/runs/new", "/runs/{run_id}", "/compare", "/runs/{run_id}/words")


@pytest.fixture
def world(lab) -> dict[str, int]:
    run = lab.client.post("/api/v1/runs", json={"kind": "faketrain", "spec": {"steps": 3}}).json()
    assert execute_run(run["id"], lab.settings) == "succeeded"
    detail = lab.client.get(f"/api/v1/runs/{run['id']}").json()
    sweep = lab.client.post(
        "/api/v1/sweeps",
        json={"kind": "faketrain", "space": {"lr": {"type": "choice", "values": [0.1]}}, "budget": 1,
              "objective": {"metric": "final_loss"}, "direction": "minimize"},
    )
    assert sweep.status_code == 201, sweep.text
    return {"run": run["id"], "artifact": detail["artifacts"][0]["id"], "sweep": sweep.json()["id"]}


def _fill(path: str, world: dict[str, int]) -> str:
    return (
        path.replace("{run_id}", str(world["run"]))
        .replace("{artifact_id}", str(world["artifact"]))
        .replace("{name}", "FashionMNIST/tiny")
        .replace("{sweep_id}", str(world["sweep"]))
    )


def _operations(lab) -> list[tuple[str, str, dict]]:
    doc = lab.client.get("/api/v1/openapi.json").json()
    return [(method, path, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


# GET routes with a required query: what a reader sends them
QUERIES = {
    "/api/v1/compare": "?runs={run_id}",
    "/api/v1/compare.csv": "?runs={run_id}",
    "/api/v1/compare.json": "?runs={run_id}",
    "/api/v1/compare/series": "?runs={run_id}&key=loss",
}


def _get_routes(lab, world) -> list[str]:
    paths = [_fill(p + QUERIES.get(p, ""), world) for m, p, _ in _operations(lab) if m == "get" and p not in OPEN_PATHS]
    assert len(paths) >= 12, paths  # runs, run, metrics, logs, events, artifacts, words, downloads, meta
    return paths


def _readable(path: str) -> int:
    """What a reader gets: the artifact of `world` is a checkpoint, not a contact sheet (no image)."""
    return 404 if path.endswith("/image") else 200


def _login(client: TestClient, token: str) -> str:
    response = client.post("/login", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return re.search(r'name="csrf" content="([0-9a-f]+)"', client.get("/runs/new").text).group(1)


def _browser(lab) -> TestClient:
    return TestClient(lab.client.app)


# -- 12: reads need a token or a session; the Host header is checked ----------------------------------------
def test_every_read_needs_a_token_or_a_session(lab, world):
    gets = _get_routes(lab, world)
    for path in gets:
        for headers in ({}, {"Authorization": "Bearer obow_wrong"}, {"Authorization": "Basic eDp5"}):
            response = lab.anon.get(path, headers=headers)
            assert response.status_code == 401, (path, headers, response.status_code)
            assert response.headers["www-authenticate"] == "Bearer"
        assert lab.client.get(path).status_code == _readable(path), path  # the token reads everything
    for page in PAGES:
        response = lab.anon.get(_fill(page, world), follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next="), page
    # open: the health check, the login page, static files, the API docs
    for path in ("/api/v1/healthz", "/login", "/static/lab.js", "/api/docs", "/api/v1/openapi.json"):
        assert lab.anon.get(path).status_code == 200, path
    # a dashboard session reads the API (the page's fetch and EventSource send only the cookie)
    browser = _browser(lab)
    _login(browser, lab.token)
    for path in gets:
        assert browser.get(path).status_code == _readable(path), path
    for page in PAGES:
        assert browser.get(_fill(page, world), follow_redirects=False).status_code == 200, page
    print(f"\nGET routes refused without credentials: {len(gets)} API + {len(PAGES)} pages")


def test_public_read_opts_out(lab, world):
    lab.settings.public_read = True
    for path in _get_routes(lab, world):
        assert lab.anon.get(path).status_code == _readable(path), path
    for page in PAGES:
        assert lab.anon.get(_fill(page, world), follow_redirects=False).status_code == 200, page
    # writes still need the token; a wrong token on a read is still refused
    assert lab.anon.post("/api/v1/runs", json={"kind": "faketrain"}).status_code == 401
    assert lab.anon.get("/api/v1/runs", headers={"Authorization": "Bearer obow_wrong"}).status_code == 401


def test_a_foreign_host_header_is_refused(lab, world):
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends its own name."""
    before = count_rows(lab, "runs")
    for host in ("evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io", ""):
        for method, path in (("GET", "/api/v1/runs"), ("GET", "/"), ("GET", "/api/v1/healthz"),
                             ("POST", "/api/v1/runs"), ("GET", f"/api/v1/artifacts/{world['artifact']}/download")):
            response = lab.client.request(method, path, headers={"Host": host}, json={"kind": "faketrain"})
            assert response.status_code == 400, (host, path, response.status_code)
            assert "Host" in response.json()["detail"]
    assert count_rows(lab, "runs") == before
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "10.1.2.3:8000", "LOCALHOST"):
        assert lab.client.get("/api/v1/runs", headers={"Host": host}).status_code == 200, host


# -- 13: server-side sessions; `obow lab token list | revoke | create --expires-in` ------------------------
def test_a_copied_cookie_dies_with_its_session(lab, world):
    browser, thief = _browser(lab), _browser(lab)
    csrf = _login(browser, lab.token)
    thief.cookies.set(SESSION_COOKIE, browser.cookies[SESSION_COOKIE])
    assert thief.get("/api/v1/runs").status_code == 200
    assert browser.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert thief.get("/api/v1/runs").status_code == 401
    assert thief.get("/", follow_redirects=False).status_code == 303
    assert thief.post("/api/v1/runs", json={"kind": "faketrain"}, headers={"X-CSRF-Token": csrf}).status_code == 401
    with lab.session() as session:
        (row,) = session.scalars(select(WebSession)).all()
        assert row.ended_at is not None

    # sessions expire on their own (OBOW_LAB_SESSION_HOURS), whatever the cookie's max-age says
    lab.settings.session_hours = 4 / 3600
    logged_in = time.monotonic()
    _login(browser, lab.token)
    with lab.session() as session:
        newest = session.scalars(select(WebSession).order_by(WebSession.id.desc())).first()
        assert abs((newest.expires_at - newest.created_at).total_seconds() - 4) < 0.5
    assert browser.get("/api/v1/runs").status_code == 200
    time.sleep(max(0.0, logged_in + 4.5 - time.monotonic()))
    assert browser.get("/api/v1/runs").status_code == 401
    assert browser.get("/runs/new", follow_redirects=False).status_code == 303


def _cli(lab, *args: str) -> subprocess.CompletedProcess:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OBOW_LAB_")},
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": lab.url,
        "OBOW_LAB_HOME": str(lab.settings.home),
    }
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "token", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def test_token_list_revoke_and_expiry_through_the_cli(lab, world):
    created = _cli(lab, "create", "--name", "expiring", "--expires-in", "2")
    assert created.returncode == 0, created.stderr
    expiring = created.stdout.strip().splitlines()[-1]
    assert expiring.startswith("obow_")
    browser = _browser(lab)
    csrf = _login(browser, lab.token)

    listed = _cli(lab, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split() == ["ID", "NAME", "CREATED", "LAST", "USED", "EXPIRES", "STATE"]
    rows = {line.split()[1]: line for line in lines[1:]}
    assert set(rows) == {"tests", "expiring"}
    assert rows["expiring"].rstrip().endswith("active") and " UTC" in rows["expiring"]
    assert lab.token not in listed.stdout and expiring not in listed.stdout
    with lab.session() as session:
        for hashed in session.scalars(select(ApiToken.token_hash)):
            assert hashed not in listed.stdout
        tests_id = session.scalars(select(ApiToken.id).where(ApiToken.name == "tests")).one()
        expiring_id = session.scalars(select(ApiToken.id).where(ApiToken.name == "expiring")).one()

    # expiry: refused from then on, on the API and the login form, and its sessions with it
    other = _browser(lab)
    _login(other, expiring)
    assert lab.anon.get("/api/v1/runs", headers={"Authorization": f"Bearer {expiring}"}).status_code == 200
    with lab.session() as session:
        session.execute(
            update(ApiToken).where(ApiToken.id == expiring_id).values(expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    assert lab.anon.get("/api/v1/runs", headers={"Authorization": f"Bearer {expiring}"}).status_code == 401
    assert other.get("/api/v1/runs").status_code == 401
    assert lab.anon.post("/login", data={"token": expiring}).status_code == 401
    assert _cli(lab, "list").stdout.strip().splitlines()[-1].rstrip().endswith("expired")

    # revoke: the token and every session logged in with it end at once
    assert browser.get("/api/v1/runs").status_code == 200
    revoked = _cli(lab, "revoke", str(tests_id))
    assert revoked.returncode == 0 and f"revoked token {tests_id}" in revoked.stdout, revoked.stderr
    assert lab.client.get("/api/v1/runs").status_code == 401
    assert browser.get("/api/v1/runs").status_code == 401
    assert browser.post("/api/v1/runs", json={"kind": "faketrain"}, headers={"X-CSRF-Token": csrf}).status_code == 401
    assert "revoked" in [line.split()[-1] for line in _cli(lab, "list").stdout.splitlines()]
    for bad in ("424242", "99999999999"):
        missing = _cli(lab, "revoke", bad)
        assert missing.returncode == 2 and "no token with id" in missing.stderr, missing.stderr
    assert _cli(lab, "create", "--expires-in", "0").returncode == 2


# -- 15: a malformed session cookie is no session ----------------------------------------------------------
MALFORMED_COOKIES = (
    "99999999999999999999999999." + "a" * 43,  # beyond any integer column
    "2147483648." + "a" * 43,  # one past the 32-bit id
    "9" * 5000,
    "-1." + "a" * 43,
    "0." + "a" * 43,
    "1",
    ".",
    "1.",
    "1.short",
    "١٢." + "a" * 43,  # Arabic-Indic digits: str.isdigit() says yes
    "1.1.1." + "a" * 40,
    "abc.def",
    "",
)


def test_a_malformed_session_cookie_is_no_session(lab, world):
    browser = _browser(lab)
    gets = _get_routes(lab, world)
    checked = 0
    for cookie in MALFORMED_COOKIES:
        browser.cookies.clear()
        raw = {"Cookie": f"{SESSION_COOKIE}={cookie}".encode()}  # as bytes: httpx sends them as they are
        for page in [*PAGES, "/login"]:
            response = browser.get(_fill(page, world), headers=raw, follow_redirects=False)
            assert response.status_code == (200 if page == "/login" else 303), (cookie[:30], page, response.text[:200])
            checked += 1
        for path in gets:
            assert browser.get(path, headers=raw).status_code == 401, (cookie[:30], path)
            checked += 1
        response = browser.post("/api/v1/runs", json={"kind": "faketrain"}, headers={**raw, "X-CSRF-Token": "x"})
        assert response.status_code == 401
        response = browser.post("/logout", data={"csrf": "x"}, headers=raw, follow_redirects=False)
        assert response.status_code == 403
    print(f"\nmalformed cookies x routes: {checked} answers, none a 500")


# -- 14: failed logins back off per address ----------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite"])  # the throttle is in the API process, not the database
def test_login_burst_is_throttled_in_process(lab):
    lab.client.app.state.login_throttle = LoginThrottle()
    answers = [lab.anon.post("/login", data={"token": f"obow_guess{i}"}).status_code for i in range(30)]
    assert answers[:5] == [401] * 5 and answers[5:] == [429] * 25, answers
    # the bearer route shares the count: a guess by header is refused the same way
    assert lab.anon.get("/api/v1/runs", headers={"Authorization": "Bearer obow_x"}).status_code == 429


@contextlib.contextmanager
def _server(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """`obow lab serve` as a process on a migrated SQLite file; yields its URL and a token."""
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    upgrade(url)
    from server.core.db import make_engine, make_sessionmaker

    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        token = tokens.create_token(session, "served")
    engine.dispose()
    with serve(url, tmp_path, env=env) as base:
        yield base, token


def test_failed_logins_back_off_on_a_real_server(tmp_path):
    with _server(tmp_path) as (base, token), httpx.Client(base_url=base, timeout=10) as client:
        statuses, started = [], time.monotonic()
        for i in range(60):
            statuses.append(client.post("/login", data={"token": f"obow_wrong{i}"}).status_code)
        burst_s = time.monotonic() - started
        refused = statuses.count(429)
        assert statuses[:5] == [401] * 5 and refused >= 50, statuses
        locked = client.post("/login", data={"token": token}, follow_redirects=False)
        assert locked.status_code == 429  # even the right token waits: a guess must not learn anything
        wait = int(locked.headers["retry-after"])
        assert 1 <= wait <= 300
        bearer = client.get("/api/v1/runs", headers={"Authorization": "Bearer obow_wrong"})
        assert bearer.status_code == 429 and bearer.headers["retry-after"]
        time.sleep(wait + 0.2)
        ok = client.post("/login", data={"token": token}, follow_redirects=False)
        assert ok.status_code == 303, ok.text
        assert client.get("/api/v1/runs").status_code == 200  # the session cookie reads
        # the back-off doubles: after the success it starts over at 5 free failures
        again = [client.post("/login", data={"token": "obow_nope"}).status_code for _ in range(6)]
        assert again == [401] * 5 + [429], again
        print(f"\n60 wrong logins in {burst_s:.2f} s: {statuses.count(401)} checked (401), {refused} refused "
              f"(429); Retry-After {wait} s; the right token logged in after it")


def test_real_server_needs_a_token_and_checks_the_host(tmp_path):
    with _server(tmp_path) as (base, token), httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/api/v1/healthz").status_code == 200
        assert client.get("/api/v1/runs").status_code == 401
        assert client.get("/", follow_redirects=False).status_code == 303
        auth = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/runs", headers=auth).status_code == 200
        port = base.rsplit(":", 1)[1]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
            assert client.get("/api/v1/runs", headers={**auth, "Host": host}).status_code == 200
        rebound = client.get("/api/v1/runs", headers={**auth, "Host": f"evil.example:{port}"})
        assert rebound.status_code == 400
    with _server(tmp_path, {"OBOW_LAB_ALLOWED_HOSTS": "lab.example.org"}) as (base, token), httpx.Client(
        base_url=base, timeout=10
    ) as client:
        auth = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/runs", headers={**auth, "Host": "lab.example.org"}).status_code == 200
        assert client.get("/api/v1/runs", headers={**auth, "Host": "localhost"}).status_code == 400
    with _server(tmp_path, {"OBOW_LAB_PUBLIC_READ": "1"}) as (base, token), httpx.Client(base_url=base) as client:
        assert client.get("/api/v1/runs").status_code == 200
        assert client.post("/api/v1/runs", json={"kind": "pretrain"}).status_code == 401


# -- 16: every status a route answers is in the OpenAPI document -------------------------------------------
def _required(method: str, path: str, op: dict) -> set[str]:
    """What each route can answer, by what it is: authenticated, changing state, by id, with a body."""
    codes: set[str] = set()
    if path not in OPEN_PATHS:
        codes |= {"401", "429"}
    if method != "get":
        codes |= {"403", "413"}  # a session without its CSRF token; any body over the cap
    if "{" in path:
        codes |= {"404", "422"}
    if path.endswith(("/cancel", "/retry")):
        codes.add("409")
    if "requestBody" in op or path == "/api/v1/imports":
        codes |= {"413", "422"}
    if op.get("parameters"):
        codes.add("422")
    return codes


def test_openapi_documents_every_status_a_route_answers(lab, world):
    ops = sorted(_operations(lab), key=lambda op: op[0] == "delete")  # deleting the world's run last
    assert len(ops) >= 19
    missing = {}
    for method, path, op in ops:
        documented = set(op["responses"])
        for code in documented - {"200", "201"}:
            assert "application/json" in op["responses"][code].get("content", {}), (method, path, code)
        lacking = _required(method, path, op) - documented
        if lacking:
            missing[f"{method.upper()} {path}"] = sorted(lacking)
    assert not missing, missing

    # and what the routes actually answer, provoked: no credentials, a session without CSRF, unknown ids,
    # finished runs, bodies over the cap, malformed bodies, a locked-out address
    observed: dict[tuple[str, str], set[str]] = {}
    browser = _browser(lab)
    _login(browser, lab.token)
    cancelled = lab.client.post("/api/v1/runs", json={"kind": "faketrain"}).json()["id"]
    lab.client.post(f"/api/v1/runs/{cancelled}/cancel")
    big = b'{"kind": "faketrain", "spec": {"name": "' + b"a" * (lab.settings.max_body_bytes + 10) + b'"}}'
    for method, path, _ in ops:
        if path in OPEN_PATHS:
            continue
        seen = observed.setdefault((method, path), set())
        url = _fill(path, world)
        send = lab.client.get if method == "get" else lab.client.post if method == "post" else (
            lambda target, _m=method.upper(), **kw: lab.client.request(_m, target, **kw)
        )
        seen.add(str(lab.anon.request(method.upper(), url).status_code))
        if method != "get":
            seen.add(str(browser.request(method.upper(), url, json={}).status_code))  # no CSRF: 403
            body = {"content": big, "headers": {"Content-Type": "application/json"}}
            if path == "/api/v1/imports":
                body = {"content": b"x" * (lab.settings.max_upload_bytes + 10)}
            seen.add(str(lab.client.request(method.upper(), url, **body).status_code))
            seen.add(str(send(url, content=b"{nope", headers={"Content-Type": "application/json"}).status_code))
        if "{run_id}" in path or "{artifact_id}" in path:
            seen.add(str(send(path.replace("{run_id}", "424242").replace("{artifact_id}", "424242")).status_code))
            seen.add(str(send(path.replace("{run_id}", "x").replace("{artifact_id}", "x")).status_code))
        if "{name}" in path:
            seen.add(str(send(path.replace("{name}", "no/such")).status_code))
        if path.endswith("/cancel"):
            seen.add(str(send(url).status_code))  # a finished run: 409
        if path.endswith("/retry"):
            seen.add(str(send(path.replace("{run_id}", str(world["run"]))).status_code))  # succeeded: 409
    lab.client.app.state.login_throttle = LoginThrottle(free=0, base_delay_s=60)
    lab.anon.get("/api/v1/runs", headers={"Authorization": "Bearer obow_wrong"})
    for method, path, _ in ops:
        if path not in OPEN_PATHS:
            response = lab.anon.request(method.upper(), _fill(path, world), headers={"Authorization": "Bearer x"})
            observed[(method, path)].add(str(response.status_code))
    documented = {(m, p): set(op["responses"]) for m, p, op in ops}
    undocumented = {
        f"{m.upper()} {p}": sorted(codes - documented[(m, p)] - {"200", "201"}) for (m, p), codes in observed.items()
    }
    assert not {k: v for k, v in undocumented.items() if v}, undocumented
    assert {"401", "403", "404", "409", "413", "422", "429"} <= set().union(*observed.values())
    print(f"\n{len(ops)} operations; statuses provoked: {sorted(set().union(*observed.values()))}")


# -- 9: bodies are capped; lists leave out the spec --------------------------------------------------------
def test_a_10_mb_spec_is_refused_before_anything_is_stored(lab):
    spec = {"kind": "faketrain", "spec": {"name": "a" * (10 * 1024 * 1024)}}
    body = json.dumps(spec).encode()
    for attempt in ("declared", "chunked"):
        content: Any = body if attempt == "declared" else (body[i : i + 65536] for i in range(0, len(body), 65536))
        response = lab.client.post("/api/v1/runs", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == 413, (attempt, response.status_code)
        assert "OBOW_LAB_MAX_BODY_KB" in response.json()["detail"]
    for route in ("/api/v1/runs/1/exports", "/api/v1/runs/1/words", "/login"):
        assert lab.client.post(route, content=body, headers={"Content-Type": "application/json"}).status_code == 413
    assert count_rows(lab, "runs") == 0 and lab.enqueue.sent == []
    # under the cap: an ordinary body goes through; the upload route keeps its own cap (test_artifacts)
    assert lab.client.post("/api/v1/runs", json={"kind": "faketrain", "spec": {"steps": 2}}).status_code == 201


def test_the_runs_list_stays_small_with_large_specs(lab):
    blob = "x" * 200_000
    with lab.session() as session:
        for i in range(12):
            session.add(Run(kind="faketrain", name=f"big {i}", spec={"kind": "faketrain", "blob": blob}, queue="gpu"))
        session.commit()
        first = session.scalars(select(Run.id).order_by(Run.id)).first()
    listed = lab.client.get("/api/v1/runs", params={"limit": 50})
    assert listed.status_code == 200 and len(listed.json()["items"]) == 12
    assert len(listed.content) < 12 * 1000, len(listed.content)  # 12 x 200 KB of spec left out
    assert all("spec" not in item for item in listed.json()["items"])
    detail = lab.client.get(f"/api/v1/runs/{first}")
    assert detail.json()["spec"]["blob"] == blob  # one run keeps its spec
    print(f"\nGET /runs with 12 runs of 200 KB specs: {len(listed.content)} bytes")


def test_the_body_cap_is_a_setting(lab):
    lab_app = create_app(
        lab.settings.model_copy(update={"max_body_kb": 1.0}), enqueue=Recorder(), sweep_every_s=0
    )
    with TestClient(lab_app, headers={"Authorization": f"Bearer {lab.token}"}) as client:
        spec = {"kind": "faketrain", "spec": {"name": "a" * 2000}}
        assert client.post("/api/v1/runs", json=spec).status_code == 413
        assert client.post("/api/v1/runs", json={"kind": "faketrain"}).status_code == 201


def test_the_bind_host_of_the_command_line_is_an_allowed_name(monkeypatch):
    """`obow lab serve --host lab-box` answers `Host: lab-box` (also in `--workers N` processes, which
    read the environment); the default names stay."""
    from server.cli import _settings_binding

    monkeypatch.delenv("OBOW_LAB_ALLOWED_HOSTS", raising=False)
    monkeypatch.delenv("OBOW_LAB_HOST", raising=False)
    assert "lab-box" not in _settings_binding(None).allowed_hosts
    settings = _settings_binding("lab-box")
    assert os.environ["OBOW_LAB_HOST"] == "lab-box"
    assert {"lab-box", "localhost", "127.0.0.1", "::1"} <= set(settings.allowed_hosts)
    wildcard = _settings_binding("0.0.0.0")
    assert socket.gethostname().lower() in wildcard.allowed_hosts
