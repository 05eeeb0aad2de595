"""`obow lab sweep create/status/cancel` over HTTP (the client) against a uvicorn server, with the shipped
Fashion-MNIST example; a bad space is refused with the key named. Nothing is trained (the enqueuer only
records). Starts a server: run under `flock /tmp/obow-live-tests.lock`."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import uvicorn
from click.testing import CliRunner

from server.app import create_app
from server.cli import lab as lab_cli
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.settings import Settings
from server.services import tokens
from tests.lab.conftest import _free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "obow" / "presets" / "FashionMNIST" / "sweeps" / "inv_delta.yaml"


def test_the_cli_creates_shows_and_cancels_the_shipped_example(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    upgrade(url)
    with make_sessionmaker(make_engine(url))() as session:
        token = tokens.create_token(session, "cli")
    sent: list[int] = []
    app = create_app(
        Settings(home=tmp_path, database_url=url, secret_key_value="cli"),
        enqueue=lambda run: sent.append(run.id) or "task",
        sweep_every_s=0,
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    env = {"OBOW_LAB_URL": f"http://127.0.0.1:{port}", "OBOW_LAB_TOKEN": token}
    runner = CliRunner()
    try:
        created = runner.invoke(lab_cli, ["sweep", "create", "--file", str(EXAMPLE)], env=env)
        assert created.exit_code == 0, created.output
        assert created.output.startswith("sweep 1 started: 1 trials running") and sent == [1]
        status = runner.invoke(lab_cli, ["sweep", "status", "1"], env=env)
        assert status.exit_code == 0, status.output
        assert "sweep 1 'tiny inv_delta': running, tpe, 1/8 trials, maximize knn_acc@1" in status.output
        assert "inv_delta" in status.output.splitlines()[1]
        bad = tmp_path / "bad.yaml"
        bad.write_text(
            EXAMPLE.read_text().replace("model.bow_extractor_opts.inv_delta:", "model.bow_extractor_opts.inv_dleta:")
        )
        refused = runner.invoke(lab_cli, ["sweep", "create", "--file", str(bad)], env=env)
        assert refused.exit_code != 0 and "body.space.model.bow_extractor_opts.inv_dleta: " in refused.output
        no_token = runner.invoke(
            lab_cli, ["sweep", "create", "--file", str(EXAMPLE)], env={**env, "OBOW_LAB_TOKEN": ""}
        )
        assert no_token.exit_code != 0 and "401" in no_token.output
        cancelled = runner.invoke(lab_cli, ["sweep", "cancel", "1", "--token", token, "--url", env["OBOW_LAB_URL"]])
        assert cancelled.exit_code == 0 and "cancelled" in cancelled.output
    finally:
        server.should_exit = True
