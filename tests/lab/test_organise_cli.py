"""`obow lab runs ...` and the Python client's organising methods over HTTP against a uvicorn server:
search (a bad query names its token), edit, archive, usage, delete with its confirmation. Starts a
server: run under `flock /tmp/obow-live-tests.lock`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from benchmarks.serving import serve_in_thread
from obow_lab_client import LabClient, LabError
from server.app import create_app
from server.cli import lab as lab_cli
from server.core.artifacts import run_dir
from server.core.db import make_engine, make_sessionmaker, upgrade
from server.core.settings import Settings
from server.services import tokens
from worker.tasks import execute_run


def test_cli_and_client_search_edit_archive_usage_delete(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    upgrade(url)
    with make_sessionmaker(make_engine(url))() as session:
        token = tokens.create_token(session, "cli")
    settings = Settings(home=tmp_path, database_url=url, secret_key_value="cli", artifact_root_dir=tmp_path / "a")
    with serve_in_thread(create_app(settings, enqueue=lambda run: "x", sweep_every_s=0)) as base:
        env = {"OBOW_LAB_URL": base, "OBOW_LAB_TOKEN": token}
        cli = CliRunner()
        with LabClient(base, token) as client:
            first = client.submit("faketrain", spec={"steps": 3, "lr": 0.5}, name="first", tags=["a"], project="p")
            second = client.submit("faketrain", spec={"lr": 0.01}, name="second")
            assert execute_run(first["id"], settings) == "succeeded"
            assert first["launched_by"] == "cli"
            assert [r["id"] for r in client.search("tag:a")["items"]] == [first["id"]]
            assert [r["id"] for r in client.search(sort="spec.lr")["items"]] == [second["id"], first["id"]]
            with pytest.raises(LabError) as refused:
                client.search("lr>>1")
            assert refused.value.status == 422 and "'lr>>1'" in str(refused.value.detail)

            listed = cli.invoke(lab_cli, ["runs", "--query", "spec.lr>0.1"], env=env)
            assert listed.exit_code == 0, listed.output
            assert "first" in listed.output and "second" not in listed.output and "1-1 of 1" in listed.output
            bad = cli.invoke(lab_cli, ["runs", "-q", "colour:red"], env=env)
            assert bad.exit_code != 0 and "colour:red" in bad.output and "known:" in bad.output

            edited = cli.invoke(lab_cli, ["runs", "edit", str(second["id"]), "--name", "renamed", "--tag", "x",
                                          "--tag", "y", "--note", "# why"], env=env)
            assert edited.exit_code == 0, edited.output
            after = client.run(second["id"])
            assert (after["name"], after["tags"], after["note"]) == ("renamed", ["x", "y"], "# why")
            assert after["note_html"] == "<h1>why</h1>\n"
            refused_edit = cli.invoke(lab_cli, ["runs", "edit", str(second["id"]), "--tag", "two words"], env=env)
            assert refused_edit.exit_code != 0 and "tags.0" in refused_edit.output

            assert cli.invoke(lab_cli, ["runs", "archive", str(second["id"])], env=env).exit_code == 0
            assert [r["id"] for r in client.search()["items"]] == [first["id"]]
            assert client.search("archived:yes")["total"] == 1
            client.unarchive(second["id"])
            assert client.search()["total"] == 2

            usage = cli.invoke(lab_cli, ["runs", "usage", str(first["id"])], env=env)
            points = client.usage(first["id"])["metric_points"]
            assert usage.exit_code == 0 and f"{points:,} metric points" in usage.output and points >= 6, usage.output
            assert client.usage()["runs"][0]["run_id"] == first["id"]
            busy = cli.invoke(lab_cli, ["runs", "delete", str(second["id"])], env=env)  # still queued
            assert busy.exit_code != 0 and "cancel them first" in busy.output
            kept = cli.invoke(lab_cli, ["runs", "delete", str(first["id"])], env=env, input="n\n")
            assert kept.exit_code != 0 and client.run(first["id"])["id"] == first["id"]
            gone = cli.invoke(lab_cli, ["runs", "delete", str(first["id"])], env=env, input="y\n")
            assert gone.exit_code == 0 and "deleted run" in gone.output, gone.output
            assert not run_dir(settings.artifact_root, first["id"]).exists()
            with pytest.raises(LabError) as missing:
                client.run(first["id"])
            assert missing.value.status == 404
