"""Security of the lab, checked from the outside: every state-changing route needs credentials (derived
from the OpenAPI document, so a new route is covered the day it appears), sessions need CSRF, tokens are
stored hashed, no file outside ARTIFACT_ROOT is ever read or recorded, uploads are never unpickled, the
server binds to localhost by default, and secrets come from the environment only."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pickle
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from benchmarks.lab_load import serve
from obow import runs
from server import pages
from server.api.deps import SESSION_COOKIE
from server.app import create_app
from server.core import artifacts as artifact_store
from server.core.db import upgrade
from server.core.errors import Forbidden
from server.core.models import ApiToken, Artifact, Base
from server.core.settings import Settings
from server.services import tokens
from tests.lab.conftest import LIBRARY_KINDS, REPO, Recorder, artifact_files, upload
from worker.reporter import DbReporter
from worker.tasks import claim, execute_run

SAFE_METHODS = {"get", "head", "options"}
# Routes that must be in the document: if the schema came out empty or renamed, the test fails.
KNOWN_STATE_CHANGING = {
    ("post", "/api/v1/runs"),
    ("post", "/api/v1/runs/{run_id}/cancel"),
    ("post", "/api/v1/runs/{run_id}/retry"),
    ("post", "/api/v1/runs/{run_id}/exports"),
    ("post", "/api/v1/runs/{run_id}/words"),
    ("post", "/api/v1/imports"),
}
# A body each route would accept: a route that forgot its auth would then answer 2xx, not 422, and
# the test could not mistake a validation error for a refusal.
PLAUSIBLE: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/api/v1/runs"): {"json": {"kind": "faketrain", "spec": {"steps": 2}}},
    ("post", "/api/v1/runs/{run_id}/exports"): {"json": {"format": "torchvision"}},
    ("post", "/api/v1/runs/{run_id}/words"): {"json": {}},
    ("post", "/api/v1/runs/{run_id}/evaluation-cost"): {"json": {"kind": "knn", "spec": {}}},
    ("post", "/api/v1/sweeps"): {"json": {
        "kind": "faketrain", "space": {"lr": {"type": "choice", "values": [0.1, 0.2]}}, "method": "grid", "budget": 2,
        "objective": {"metric": "final_loss"}, "direction": "minimize",
    }},
    ("post", "/api/v1/imports"): {
        "content": b'{"step": 1, "weights": []}',
        "headers": {"Content-Type": "application/octet-stream"},
    },
}
BAD_CREDENTIALS = (
    {},
    {"Authorization": "Bearer obow_wrong"},
    {"Authorization": "Bearer "},
    {"Authorization": "Basic dXNlcjpwdw=="},
    {"Authorization": "obow_no_scheme"},
    {"Authorization": "Bearer a b"},
)


# -- helpers -------------------------------------------------------------------------------------------
def _finished(lab, **spec: Any) -> dict:
    run = lab.client.post("/api/v1/runs", json={"kind": "faketrain", "spec": spec}, headers=lab.auth).json()
    execute_run(run["id"], lab.settings)
    return lab.client.get(f"/api/v1/runs/{run['id']}").json()


@pytest.fixture
def world(lab) -> dict[str, int]:
    """Runs in every state a route acts on: a route that lacked auth would succeed on them."""
    trained = _finished(lab, steps=3)
    sweep = lab.client.post("/api/v1/sweeps", headers=lab.auth, **PLAUSIBLE[("post", "/api/v1/sweeps")]).json()
    queued = lab.client.post("/api/v1/runs", json={"kind": "faketrain"}, headers=lab.auth).json()
    cancelled = lab.client.post("/api/v1/runs", json={"kind": "faketrain"}, headers=lab.auth).json()
    assert lab.client.post(f"/api/v1/runs/{cancelled['id']}/cancel", headers=lab.auth).status_code == 200
    return {
        "trained": trained["id"],
        "queued": queued["id"],
        "cancelled": cancelled["id"],
        "artifact": trained["artifacts"][0]["id"],
        "sweep": sweep["id"],
    }


def _fill(path: str, world: dict[str, int], method: str = "get") -> str:
    """Path parameters filled with existing ids: cancel gets a queued run, retry and delete a cancelled one
    (a finished run without children)."""
    run = world["queued"] if path.endswith("/cancel") else world["cancelled"] if path.endswith("/retry") else None
    run = world["cancelled"] if method == "delete" else run
    filled = path.replace("{run_id}", str(run or world["trained"])).replace("{artifact_id}", str(world["artifact"]))
    filled = filled.replace("{name}", "FashionMNIST/tiny").replace("{sweep_id}", str(world["sweep"]))
    assert "{" not in filled, f"no value for a path parameter of {path}"
    return filled


def _operations(lab) -> list[tuple[str, str, dict]]:
    doc = lab.client.get("/api/v1/openapi.json").json()
    return [(method, path, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


def _state_changing(lab) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for method, path, op in _operations(lab):
        if method in SAFE_METHODS:
            continue
        kwargs = PLAUSIBLE.get((method, path))
        if kwargs is None:  # a route added later: a JSON object if it takes one, else nothing
            kwargs = {"json": {}} if "application/json" in op.get("requestBody", {}).get("content", {}) else {}
        out.append((method, path, kwargs))
    out.sort(key=lambda route: route[0] == "delete")  # a deletion last: the routes before need its run
    assert out, "the OpenAPI document lists no state-changing route"
    assert {(m, p) for m, p, _ in out} >= KNOWN_STATE_CHANGING
    return out


def _snapshot(lab) -> dict[str, Any]:
    """Every row of every table (but a token's last use) and every file under the artifact root."""
    tables = {}
    with lab.session() as session:
        for table in Base.metadata.sorted_tables:
            columns = [c for c in table.columns if c.name != "last_used_at"]
            tables[table.name] = sorted(repr(tuple(row)) for row in session.execute(select(*columns)))
    return {"tables": tables, "files": artifact_files(lab.settings.artifact_root)}


def _send(lab, method: str, path: str, kwargs: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    """Sent as a browser would (`lab.anon`: only the credentials in `headers` and its own cookies)."""
    merged = {**kwargs.get("headers", {}), **headers}
    rest = {k: v for k, v in kwargs.items() if k != "headers"}
    return lab.anon.request(method.upper(), path, headers=merged, **rest)


def _login(client: TestClient, token: str) -> str:
    """Log in on the dashboard; returns the page's CSRF token."""
    response = client.post("/login", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303
    return re.search(r'name="csrf" content="([0-9a-f]+)"', client.get("/").text).group(1)


def _raw_get(app, raw_path: bytes) -> tuple[int, bytes]:
    """A GET sent straight to the ASGI app, so `..` and odd encodings reach it as a raw client would send
    them (httpx normalises dot segments away); the path is decoded like uvicorn does."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": urllib.parse.unquote(raw_path.decode("latin-1")), "raw_path": raw_path, "query_string": b"",
        "root_path": "", "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80), "state": {},
    }
    status, body, requested = 0, b"", False

    async def main() -> None:
        done = asyncio.Event()

        async def receive() -> dict:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await done.wait()  # the client hangs up once the response is complete
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            nonlocal status, body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                body += message.get("body", b"")
                if not message.get("more_body"):
                    done.set()

        await asyncio.wait_for(app(scope, receive, send), timeout=20)

    asyncio.run(main())
    return status, body


# -- authentication of every state-changing route ----------------------------------------------------------
def test_every_state_changing_route_refuses_missing_or_bad_credentials(lab, world):
    routes = _state_changing(lab)
    before = _snapshot(lab)
    for method, path, kwargs in routes:
        url = _fill(path, world)
        for headers in BAD_CREDENTIALS:
            response = _send(lab, method, url, kwargs, headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers.get("www-authenticate") == "Bearer"
    assert _snapshot(lab) == before
    assert lab.enqueue.sent[-1][0] == world["cancelled"]  # nothing was queued after the setup
    print(f"\nstate-changing routes checked: {len(routes)} x {len(BAD_CREDENTIALS)} credentials")


def test_session_needs_the_csrf_header_on_every_state_changing_route(lab, world):
    """The dashboard's cookie alone (what a cross-site form or fetch would carry) never changes state: the
    page's X-CSRF-Token must come with it, and that of another session does not do."""
    routes = _state_changing(lab)
    other = TestClient(lab.client.app)
    with lab.session() as session:
        other_csrf = _login(other, tokens.create_token(session, "other"))
    csrf = _login(lab.anon, lab.token)
    assert other_csrf != csrf
    before = _snapshot(lab)
    for method, path, kwargs in routes:
        url = _fill(path, world)
        for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": "0" * 64}, {"X-CSRF-Token": other_csrf}):
            response = _send(lab, method, url, kwargs, headers)
            assert response.status_code == 403, (method, path, headers, response.text)
    assert _snapshot(lab) == before
    for method, path, kwargs in routes:
        response = _send(lab, method, _fill(path, world, method), kwargs, {"X-CSRF-Token": csrf})
        assert response.status_code in (200, 201), (method, path, response.text)
    other.close()


def test_get_routes_never_change_state(lab, world):
    ops = [(m, p) for m, p, _ in _operations(lab) if m == "get"]
    assert {"/api/v1/runs", "/api/v1/runs/{run_id}/events", "/api/v1/artifacts/{artifact_id}/download"} <= {
        p for _, p in ops
    }
    before = _snapshot(lab)
    for _, path in ops:
        url = _fill(path, world)  # {run_id}: the finished run, so its event stream ends
        for headers in ({}, lab.auth):
            response = lab.client.get(url, headers=headers)
            assert response.status_code < 500, (path, response.text)
    assert _snapshot(lab) == before


def test_dashboard_form_routes_login_and_logout(lab):
    """The dashboard's only non-API POSTs are /login and /logout; logout needs the session's CSRF token
    (form field or X-CSRF-Token header).

    /login has no CSRF token, on purpose: login CSRF would log a victim into the attacker's session, but
    here every token is an operator of the same lab with the same rights, so the attacker must already
    hold a valid token, and gains nothing the token does not already give; the session cookie is
    SameSite=Strict, so a cross-site page cannot then use it."""
    forms = {route.path for route in pages.router.routes if route.methods - {"GET", "HEAD"}}
    assert forms == {"/login", "/logout"}
    before = _snapshot(lab)
    browser = lab.anon
    assert browser.post("/login", data={"token": "obow_nope"}).status_code == 401
    login = browser.post("/login", data={"token": lab.token}, follow_redirects=False)
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    after = _snapshot(lab)  # logging in writes nothing but the token's last use and its session row
    assert len(after["tables"].pop("web_sessions")) == len(before["tables"].pop("web_sessions")) + 1
    assert after == before
    csrf = re.search(r'name="csrf" content="([0-9a-f]+)"', browser.get("/").text).group(1)
    for data, headers in (({}, {}), ({"csrf": "wrong"}, {}), ({}, {"X-CSRF-Token": "0" * 64})):
        response = browser.post("/logout", data=data, headers=headers, follow_redirects=False)
        assert response.status_code == 403, (data, headers)
        assert SESSION_COOKIE in browser.cookies
    ok = browser.post("/logout", headers={"X-CSRF-Token": csrf}, follow_redirects=False)
    assert ok.status_code == 303 and f'{SESSION_COOKIE}=""' in ok.headers["set-cookie"]
    csrf = _login(browser, lab.token)
    assert browser.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert SESSION_COOKIE not in browser.cookies


# -- tokens ------------------------------------------------------------------------------------------------
def test_tokens_are_stored_as_sha256_only_and_revocation_is_final(lab):
    with lab.session() as session:
        token = tokens.create_token(session, "hashed")
    digest = hashlib.sha256(token.encode()).hexdigest()
    secret_part = token.removeprefix(tokens.TOKEN_PREFIX)
    with lab.session() as session:
        hashes = session.scalars(select(ApiToken.token_hash)).all()
        assert digest in hashes
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)):
                for value in row:
                    assert secret_part not in str(value), (table.name, "holds the token text")
    csrf = _login(lab.anon, token)
    with lab.session() as session:
        session.execute(update(ApiToken).where(ApiToken.token_hash == digest).values(revoked=True))
        session.commit()
    assert lab.anon.post("/api/v1/runs", json={"kind": "faketrain"}, headers={"Authorization": f"Bearer {token}"}
                         ).status_code == 401
    # the session of a revoked token ends too: the cookie is no session any more
    response = lab.anon.post("/api/v1/runs", json={"kind": "faketrain"}, headers={"X-CSRF-Token": csrf})
    assert response.status_code == 401
    assert lab.anon.post("/login", data={"token": token}).status_code == 401
    assert lab.client.post("/api/v1/runs", json={"kind": "faketrain"}, headers=lab.auth).status_code == 201


# -- artifacts: nothing outside ARTIFACT_ROOT --------------------------------------------------------------
def _rows(lab, run_id: int, paths: dict[str, str], kind: str = "words") -> dict[str, int]:
    """Artifact rows as a tampered database (or a buggy worker) could hold them."""
    with lab.session() as session:
        ids = {}
        for label, path in paths.items():
            row = Artifact(run_id=run_id, kind=kind, options={}, path=path, sha256="0" * 64, size=1)
            session.add(row)
            session.flush()
            ids[label] = row.id
        session.commit()
    return ids


def test_no_artifact_route_serves_a_file_outside_the_root(lab, tmp_path):
    """Beyond test_artifacts (.., absolute, symlinked file on /download): a symlinked directory, the
    /image route, and ids that are paths."""
    run = _finished(lab)
    root = lab.settings.artifact_root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_text("not yours")
    os.symlink(outside, root / "runs" / "linked_dir")
    os.symlink(outside / "secret.png", root / "runs" / "link.png")
    ids = _rows(lab, run["id"], {
        "dir": "runs/linked_dir/secret.png",
        "file": "runs/link.png",
        "dotdot": "runs/../../outside/secret.png",
        "absolute": str(outside / "secret.png"),
        "encoded": "runs/%2e%2e/%2e%2e/outside/secret.png",
    })
    for label, artifact_id in ids.items():
        for route in ("download", "image"):
            response = lab.client.get(f"/api/v1/artifacts/{artifact_id}/{route}")
            assert response.status_code in (403, 404), (label, route)
            assert "not yours" not in response.text
    for bad in ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2F..%2Fetc%2Fpasswd", "%252e%252e%252fetc", "-1", "1.5"):
        for route in ("download", "image"):
            assert lab.client.get(f"/api/v1/artifacts/{bad}/{route}").status_code in (404, 422), (bad, route)


@pytest.mark.parametrize("backend", ["sqlite"])  # the static mount never touches the database
def test_static_mount_serves_only_its_own_files(lab):
    app = lab.client.app
    assert _raw_get(app, b"/static/lab.js")[0] == 200  # the helper itself works
    for raw in (
        b"/static/../settings.py",
        b"/static/../../server/settings.py",
        b"/static/..%2f..%2fserver/settings.py",
        b"/static/..%2fsettings.py",
        b"/static/%2e%2e/%2e%2e/server/settings.py",
        b"/static/%2e%2e%2fsettings.py",
        b"/static/%252e%252e%252fsettings.py",
        b"/static/..%5csettings.py",
        b"/static//etc/passwd",
        b"/static/%2fetc%2fpasswd",
        b"/static/" + str(REPO / "server" / "settings.py").encode(),
    ):
        status, body = _raw_get(app, raw)
        assert status in (400, 404), (raw, status)
        assert b"class Settings" not in body and b"root:" not in body, raw
    for url in ("/static/..%2f..%2fserver/settings.py", "/static/%2e%2e/%2e%2e/server/settings.py"):
        assert lab.client.get(url).status_code == 404  # and through a real HTTP client


@pytest.mark.parametrize("backend", ["sqlite"])
def test_worker_refuses_to_record_an_artifact_outside_the_root(lab, tmp_path):
    run = lab.client.post("/api/v1/runs", json={"kind": "faketrain"}, headers=lab.auth).json()
    root = lab.settings.artifact_root
    inside = artifact_store.run_dir(root, run["id"])
    inside.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "weights.pt").write_bytes(b"x")
    os.symlink(outside / "weights.pt", inside / "link.pt")
    os.symlink(outside, inside / "dir")
    (inside / "ok.pt").write_bytes(b"ok")
    maker = lab.client.app.state.sessionmaker
    reporter = DbReporter(maker, run["id"], claim(maker, run["id"], 60), root)
    try:
        for path in (outside / "weights.pt", inside / "link.pt", inside / "dir" / "weights.pt",
                     inside / ".." / ".." / ".." / "outside" / "weights.pt"):
            with pytest.raises(Forbidden, match="outside ARTIFACT_ROOT"):
                reporter.artifact(path, "checkpoint", {})
        reporter.artifact(inside / "ok.pt", "checkpoint", {})
    finally:
        reporter.close()
    (row,) = lab.client.get(f"/api/v1/runs/{run['id']}/artifacts").json()
    assert row["name"] == "ok.pt"


# -- uploads are never unpickled ---------------------------------------------------------------------------
class _Shell:
    """Unpickling calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Stateful:
    """A custom class whose __setstate__ writes the marker: what a full unpickler would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).write_text("pwned")


def _payloads(marker: Path, tmp_path: Path) -> dict[str, bytes]:
    saved = tmp_path / "custom.pt"
    torch.save({"network": {"conv.weight": torch.zeros(1)}, "extra": _Stateful(marker)}, saved)
    zipped = tmp_path / "shell.pt"
    torch.save({"state_dict": _Shell(marker)}, zipped)
    return {
        "raw pickle, os.system": pickle.dumps(_Shell(marker), protocol=2),
        "torch.save, custom class": saved.read_bytes(),
        "torch.save, os.system": zipped.read_bytes(),
    }


@pytest.fixture
def real_import(request) -> Iterator[None]:
    """The library's own import kind (it torch.loads the upload), in place of the fake one."""
    saved = runs.RUN_KINDS["import"]
    runs.RUN_KINDS["import"] = LIBRARY_KINDS["import"]
    yield
    runs.RUN_KINDS["import"] = saved


@pytest.mark.parametrize("backend", ["sqlite"])  # the loading is in the worker, not the database
def test_malicious_pickles_are_refused_and_never_run(lab, tmp_path, real_import):
    lab.settings.max_upload_mb = 1.0
    marker = tmp_path / "pwned"
    for label, payload in _payloads(marker, tmp_path).items():
        assert len(payload) < lab.settings.max_upload_bytes
        response = upload(lab, payload, "evil")
        assert response.status_code == 201, response.text
        run_id = response.json()["id"]
        assert execute_run(run_id, lab.settings) == "failed", label
        run = lab.client.get(f"/api/v1/runs/{run_id}").json()
        assert "cannot be read" in run["error"] and "weights" in run["error"].lower(), (label, run["error"])
        assert not marker.exists(), f"{label}: the upload's code ran"
        assert not any(a["kind"] == "checkpoint" for a in run["artifacts"]), label


# -- network binding ---------------------------------------------------------------------------------------
def _listening(port: int) -> set[str]:
    """Local addresses in LISTEN state on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for name in ("tcp", "tcp6"):
        table = Path(f"/proc/net/{name}")
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@contextlib.contextmanager
def _serve(tmp_path: Path, extra_env: dict[str, str]) -> Iterator[int]:
    """`obow lab serve` as a process on a migrated SQLite file, with only `extra_env` of the lab's settings."""
    db = tmp_path / "lab.db"
    if not db.exists():
        upgrade(f"sqlite:///{db}")
    with serve(f"sqlite:///{db}", tmp_path, env=extra_env) as base:
        yield int(base.rsplit(":", 1)[1])


def test_server_binds_to_localhost_unless_told_otherwise(tmp_path):
    with _serve(tmp_path, {}) as port:
        assert _listening(port) == {"0100007F"}  # 127.0.0.1, and nothing else
    with _serve(tmp_path, {"OBOW_LAB_HOST": "0.0.0.0"}) as port:
        assert _listening(port) == {"00000000"}


# -- secrets -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite"])
def test_session_signing_key_comes_from_the_environment(lab, monkeypatch, tmp_path):
    key = "env-secret-" + "k" * 32
    monkeypatch.setenv("OBOW_LAB_SECRET_KEY", key)
    settings = Settings(
        home=tmp_path / "home", database_url=lab.url, artifact_root_dir=tmp_path / "art",
        allowed_hosts_value="testserver",
    )
    assert settings.secret_key == key and not (tmp_path / "home" / "secret_key").exists()
    app = create_app(settings, enqueue=Recorder(), sweep_every_s=0)
    with TestClient(app) as client:
        csrf = _login(client, lab.token)
        cookie = client.cookies[SESSION_COOKIE]
        assert client.post("/api/v1/runs", json={"kind": "faketrain"}, headers={"X-CSRF-Token": csrf}
                           ).status_code == 201
        # the session's stored hash is keyed with the secret key: the same cookie, on an app of the same
        # database with another key (the lab fixture's), is nobody, and a rotated key ends every session
        lab.anon.cookies.set(SESSION_COOKIE, cookie)
        forged_csrf = {"X-CSRF-Token": tokens.csrf_token("test-secret", cookie)}
        response = lab.anon.post("/api/v1/runs", json={"kind": "faketrain"}, headers=forged_csrf)
        assert response.status_code == 401
        assert lab.anon.get("/", follow_redirects=False).status_code == 303
        assert 'name="csrf" content=""' in lab.anon.get("/login").text


def test_no_secret_in_any_response_or_the_openapi_document(lab, world):
    with lab.session() as session:
        token_hash = session.scalars(select(ApiToken.token_hash)).first()
    secrets_ = {lab.settings.secret_key, lab.token, lab.token.removeprefix(tokens.TOKEN_PREFIX), token_hash}
    csrf = _login(lab.client, lab.token)
    texts = [lab.client.get("/api/v1/openapi.json").text, lab.client.get("/api/docs").text]
    for method, path, _ in _operations(lab):
        if method == "get":
            texts.append(lab.client.get(_fill(path, world)).text)
    for method, path, kwargs in _state_changing(lab):
        texts.append(_send(lab, method, _fill(path, world), kwargs, {"X-CSRF-Token": csrf}).text)
    for page in ("/", "/runs/new", f"/runs/{world['trained']}", "/compare", "/login"):
        texts.append(lab.client.get(page).text)
    assert len(texts) > 20
    for body in texts:
        for secret in secrets_:
            assert secret not in body


def test_compose_file_and_settings_hold_no_literal_secret():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    envs = [compose["x-lab-env"]] + [s.get("environment") or {} for s in compose["services"].values()]
    assert compose["x-lab-env"]["OBOW_LAB_SECRET_KEY"].startswith("${OBOW_LAB_SECRET_KEY:?")
    checked = 0
    for env in envs:
        for name, value in env.items():
            if re.search(r"SECRET|PASSWORD|TOKEN|KEY", name):
                checked += 1
                # required from .env (`:?`), never a literal nor a default (`:-`)
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), (name, value)
            for var in re.findall(r"\$\{([A-Z_]*(?:SECRET|PASSWORD|TOKEN|KEY)[A-Z_]*)(:?[-?])", str(value)):
                assert var[1] == ":?", (name, value)
    assert checked >= 2
    assert "SECRET" not in (REPO / "Dockerfile").read_text().upper()
    # settings.py: no default key; an unset key is generated per home, random, readable only by its owner
    assert Settings.model_fields["secret_key_value"].default is None
    source = (REPO / "server" / "core" / "settings.py").read_text()
    assert not re.search(r"secret\w*\s*[:=][^\n]*['\"][A-Za-z0-9_\-]{8,}['\"]", source, re.IGNORECASE)


def test_generated_secret_key_is_random_and_private(tmp_path, monkeypatch):
    monkeypatch.delenv("OBOW_LAB_SECRET_KEY", raising=False)
    first, second = Settings(home=tmp_path / "a"), Settings(home=tmp_path / "b")
    assert first.secret_key != second.secret_key and len(first.secret_key) >= 32
    assert (tmp_path / "a" / "secret_key").stat().st_mode & 0o077 == 0
    assert Settings(home=tmp_path / "a").secret_key == first.secret_key  # kept across restarts

