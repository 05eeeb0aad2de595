"""The API process never imports torch, nor the worker's tasks: it validates with pydantic specs and
sends tasks by name. Checked in a fresh interpreter (the test session itself has torch loaded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
from fastapi.testclient import TestClient
from server.app import create_app
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.services.tokens import create_token
from server.core.settings import Settings

home = Path(tempfile.mkdtemp())
settings = Settings(home=home, secret_key_value="x", allowed_hosts_value="testserver")
upgrade(settings.db_url)
with make_sessionmaker(make_engine(settings.db_url))() as session:
    token = create_token(session, "t")
sent = []
app = create_app(settings, enqueue=lambda run: sent.append(run.id) or "task", sweep_every_s=0)
with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
    auth = {}
    run = client.post("/api/v1/runs", json={"kind": "pretrain", "preset": "FashionMNIST/tiny"}, headers=auth)
    for path in ("/", "/runs/new", "/api/v1/kinds", f"/runs/{run.json()['id']}", "/api/v1/presets"):
        assert client.get(path).status_code == 200, path
heavy = sorted(m for m in sys.modules if m in ("torch", "torchvision") or m.split(".")[0] == "worker")
print(json.dumps({"status": run.status_code, "sent": sent, "heavy": heavy}))
"""


def test_api_process_stays_light():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"status": 201, "sent": [1], "heavy": []}
