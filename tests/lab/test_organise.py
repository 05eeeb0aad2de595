"""Organising runs, on SQLite and PostgreSQL: names, tags, notes and projects (create and PATCH), the
search grammar and sorting, grouping children, archive, disk usage and delete."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from server.core.artifacts import PINNED_DIR, run_dir
from server.core.models import Metric, Run
from tests.lab.conftest import artifact_files, count_rows
from worker.tasks import execute_run


def _submit(lab, **body) -> dict:
    response = lab.client.post("/api/v1/runs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def _ids(lab, **params) -> list[int]:
    response = lab.client.get("/api/v1/runs", params=params)
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["items"]]


def _set(lab, run_id: int, **values) -> None:
    """Write columns the worker writes (final metrics, state) directly: the search reads them."""
    with lab.session() as session:
        session.execute(update(Run).where(Run.id == run_id).values(**values))
        session.commit()


def test_create_and_patch_name_tags_note_project(lab):
    run = _submit(lab, kind="faketrain", name="  first try ", tags=["baseline", "fmnist", "baseline"],
                  note="*why*: check lr", project="lr-study")
    assert run["name"] == "first try" and run["tags"] == ["baseline", "fmnist"]
    assert run["project"] == "lr-study" and run["launched_by"] == "tests"
    assert run["note_html"] == "<p><em>why</em>: check lr</p>\n"
    patched = lab.client.patch(f"/api/v1/runs/{run['id']}", json={"name": "renamed", "tags": ["x"]})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["name"], body["tags"], body["project"]) == ("renamed", ["x"], "lr-study")
    assert body["note"] == "*why*: check lr"
    assert body["state"] == "queued" and body["spec"] == run["spec"]
    cleared = lab.client.patch(f"/api/v1/runs/{run['id']}", json={"project": "", "note": ""}).json()
    assert cleared["project"] == "" and cleared["note_html"] == "" and cleared["name"] == "renamed"
    # PATCH is a write: no token, no change
    assert lab.anon.patch(f"/api/v1/runs/{run['id']}", json={"name": "x"}).status_code == 401
    assert lab.client.patch("/api/v1/runs/424242", json={"name": "x"}).status_code == 404


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": ""}, ["body", "name"]),
        ({"name": "a\nb"}, ["body", "name"]),
        ({"name": "x" * 201}, ["body", "name"]),
        ({"tags": ["two words"]}, ["body", "tags", 0]),
        ({"tags": ["ok", "x" * 65]}, ["body", "tags", 1]),
        ({"tags": [f"t{i}" for i in range(33)]}, ["body", "tags"]),
        ({"note": "x" * 100_001}, ["body", "note"]),
        ({"project": "a\tb"}, ["body", "project"]),
        ({"state": "succeeded"}, ["body", "state"]),  # the state machine is the only writer of the state
        ({"spec": {}}, ["body", "spec"]),
        ({"archived": "maybe"}, ["body", "archived"]),
    ],
)
def test_patch_refuses_bad_fields(lab, body, loc):
    run = _submit(lab, kind="faketrain")
    response = lab.client.patch(f"/api/v1/runs/{run['id']}", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert lab.client.get(f"/api/v1/runs/{run['id']}").json()["name"] == run["name"]


def test_create_refuses_bad_organising_fields_and_ignores_a_forged_launcher(lab):
    for body, loc in (
        ({"tags": ["a b"]}, ["body", "tags", 0]),
        ({"name": "\x07"}, ["body", "name"]),
        ({"project": "p" * 201}, ["body", "project"]),
        ({"launched_by": "root"}, ["body", "launched_by"]),  # only the server says who launched a run
    ):
        response = lab.client.post("/api/v1/runs", json={"kind": "faketrain", **body})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == loc, response.text
    assert count_rows(lab, "runs") == 0


def test_hostile_notes_and_text_are_stored_but_rendered_inert(lab):
    run = _submit(lab, kind="faketrain")
    note = ('<script>alert(1)</script> <img src=x onerror=alert(2)> [a](javascript:alert(3)) '
            '[b](JaVa&#x73;cript:alert(4)) [c](data:text/html,x) [d](//evil.example) [ok](https://x.org/p)')
    body = lab.client.patch(f"/api/v1/runs/{run['id']}", json={"note": note}).json()
    html = body["note_html"]
    assert body["note"] == note
    assert "<script" not in html and "<img" not in html and html.count("<a ") == 1  # shown as text only
    assert '<a href="https://x.org/p" rel="nofollow noopener noreferrer">ok</a>' in html
    page = lab.client.get(f"/runs/{run['id']}").text
    assert "<script>alert(1)" not in page and "onerror=alert(2)>" not in page
    for raw in ('{"note": "\\ud800"}', '{"name": "a\\u0000b"}', '{"tags": ["\\udfff"]}'):
        response = lab.client.patch(
            f"/api/v1/runs/{run['id']}", content=raw, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 422, raw


def test_search_grammar(lab):
    a = _submit(lab, kind="faketrain", name="resnet-small", tags=["baseline"], project="p1", spec={"lr": 0.5})
    b = _submit(lab, kind="faketrain", name="other", tags=["ablation"], note="tried Resnet tweaks",
                project="p2", spec={"lr": 0.001})
    c = _submit(lab, kind="faketrain", name="third", project="my project", spec={"lr": 0.02})
    _set(lab, a["id"], state="succeeded", last_metrics={"knn_top1_k20": 85.5, "loss": 0.3})
    _set(lab, b["id"], state="failed", last_metrics={"knn_top1_k20": 60.0}, result={"top1": 71})
    _set(lab, c["id"], last_metrics={"knn_top1_k20": "n/a"})  # a text where a number is expected: no match
    assert _ids(lab, q="resnet") == [b["id"], a["id"]]  # name or note, any case
    assert _ids(lab, q="baseline") == [a["id"]]  # a tag, as a free word
    assert _ids(lab, q="tag:ablation") == [b["id"]]
    assert _ids(lab, q="tag:ablat") == []  # tag: is exact
    assert _ids(lab, q="state:succeeded,failed") == [b["id"], a["id"]]
    assert _ids(lab, q='project:"my project"') == [c["id"]]
    assert _ids(lab, q="kind:faketrain spec.lr>0.01") == [c["id"], a["id"]]
    assert _ids(lab, q="spec.lr<=0.001") == [b["id"]]
    assert _ids(lab, q="knn_top1_k20>80") == [a["id"]]
    assert _ids(lab, q="metric.knn_top1_k20>=60 resnet") == [b["id"], a["id"]]
    assert _ids(lab, q="top1=71") == [b["id"]]  # a result entry when there is no such metric
    assert _ids(lab, q="result.top1>70") == [b["id"]]
    assert _ids(lab, q="spec.kind=faketrain name:third") == [c["id"]]
    assert _ids(lab, q="by:tests") == [c["id"], b["id"], a["id"]]
    assert _ids(lab, q="100%_") == []  # LIKE wildcards are plain characters
    d = _submit(lab, kind="faketrain", name="d", tags=["naïve-Ünï", "back\\slash"])
    assert _ids(lab, q="Ünï") == _ids(lab, q="tag:naïve-Ünï") == _ids(lab, q="back\\\\slash") == [d["id"]]
    assert _ids(lab, q='"naïve-Ünï back"') == []
    lab.client.patch(f"/api/v1/runs/{d['id']}", json={"archived": True})
    # sorting: columns, metrics and spec values; missing values last
    assert _ids(lab, sort="-knn_top1_k20") == [a["id"], b["id"], c["id"]]
    assert _ids(lab, sort="knn_top1_k20") == [b["id"], a["id"], c["id"]]
    assert _ids(lab, sort="spec.lr") == [b["id"], c["id"], a["id"]]
    assert _ids(lab, sort="name") == [b["id"], a["id"], c["id"]]
    assert _ids(lab, sort="-project", q="knn_top1_k20>0") == [b["id"], a["id"]]


@pytest.mark.parametrize(
    ("params", "token"),
    [
        ({"q": "resnet colour:red"}, "colour:red"),
        ({"q": "state:finished"}, "state:finished"),
        ({"q": "lr>abc"}, "lr>abc"),
        ({"q": "lr>"}, "lr>"),
        ({"q": "optim.lr>>1"}, "optim.lr>>1"),
        ({"q": "lr>inf"}, "lr>inf"),
        ({"q": 'project:"unclosed'}, 'project:"unclosed'),
        ({"q": "spec.a'b>1"}, "spec.a'b>1"),
        ({"q": "parent:x"}, "parent:x"),
        ({"q": "archived:maybe"}, "archived:maybe"),
        ({"sort": "-spec.$where"}, "-spec.$where"),
    ],
)
def test_bad_queries_are_a_422_naming_the_token(lab, params, token):
    _submit(lab, kind="faketrain")
    response = lab.client.get("/api/v1/runs", params=params)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", next(iter(params))]
    assert f"'{token}'" in error["msg"]


def test_children_are_grouped_under_their_parent_and_archive_hides(lab):
    parent = _submit(lab, kind="faketrain", spec={"steps": 3})
    assert execute_run(parent["id"], lab.settings) == "succeeded"
    kids = [lab.client.post(f"/api/v1/runs/{parent['id']}/exports", json={"format": "torchvision"}).json()
            for _ in range(2)]
    lone = _submit(lab, kind="faketrain")
    top = lab.client.get("/api/v1/runs", params={"top_level": "true"}).json()
    assert [(r["id"], r["child_count"]) for r in top["items"]] == [(lone["id"], 0), (parent["id"], 2)]
    assert _ids(lab, parent_id=parent["id"]) == [kids[1]["id"], kids[0]["id"]]
    assert kids[0]["launched_by"] == "tests"
    archived = lab.client.patch(f"/api/v1/runs/{parent['id']}", json={"archived": True}).json()
    assert archived["archived_at"] is not None
    assert _ids(lab) == [lone["id"]]  # the parent and its children are hidden
    assert _ids(lab, q="is:archived") == [kids[1]["id"], kids[0]["id"], parent["id"]]
    assert len(_ids(lab, q="archived:any")) == 4
    assert len(_ids(lab, parent_id=parent["id"])) == 2  # an archived run's page still lists its children
    lab.client.patch(f"/api/v1/runs/{parent['id']}", json={"archived": False})
    assert len(_ids(lab)) == 4


def test_delete_removes_the_run_children_rows_and_files_only(lab):
    keep = _submit(lab, kind="faketrain", spec={"steps": 4})
    gone = _submit(lab, kind="faketrain", spec={"steps": 6})
    for run in (keep, gone):
        assert execute_run(run["id"], lab.settings) == "succeeded"
    child = lab.client.post(f"/api/v1/runs/{gone['id']}/exports", json={"format": "torchvision"}).json()
    assert execute_run(child["id"], lab.settings) == "succeeded"
    # a child of the kept run pins the kept run's checkpoint: deleting `gone` must not touch it
    other = lab.client.post(f"/api/v1/runs/{keep['id']}/exports", json={"format": "torchvision"}).json()
    root = lab.settings.artifact_root
    gone_pin = Path(child["spec"]["checkpoint"])
    assert gone_pin.parent.name == PINNED_DIR and Path(other["spec"]["checkpoint"]) != gone_pin
    kept_files = [p for p in artifact_files(root) if not p.is_relative_to(run_dir(root, gone["id"]))
                  and not p.is_relative_to(run_dir(root, child["id"])) and p != gone_pin]
    kept_bytes = {p: p.read_bytes() for p in kept_files}

    usage = lab.client.get(f"/api/v1/runs/{gone['id']}/usage").json()
    assert usage["run_ids"] == [gone["id"], child["id"]] and usage["active"] == []
    # 6 steps x 2 keys of its own, and whatever system points the worker sampled (timed: not counted here)
    with lab.session() as session:
        points = {i: session.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == i))
                  for i in (keep["id"], gone["id"], child["id"])}
    assert usage["metric_points"] == points[gone["id"]] + points[child["id"]] >= 12
    assert usage["log_lines"] > 0 and usage["artifacts"] >= 2
    assert usage["files"] >= 2 and usage["bytes"] > 0

    assert lab.anon.delete(f"/api/v1/runs/{gone['id']}").status_code == 401
    response = lab.client.delete(f"/api/v1/runs/{gone['id']}")
    assert response.status_code == 200, response.text
    assert response.json()["run_ids"] == usage["run_ids"] and response.json()["bytes"] == usage["bytes"]
    assert lab.client.get(f"/api/v1/runs/{gone['id']}").status_code == 404
    assert lab.client.get(f"/api/v1/runs/{child['id']}").status_code == 404
    assert not run_dir(root, gone["id"]).exists() and not run_dir(root, child["id"]).exists()
    with lab.session() as session:
        assert session.query(Run).count() == 2
    assert count_rows(lab, "metrics") == points[keep["id"]] and count_rows(lab, "artifacts") >= 1
    # everything else is as it was, byte for byte (the other child's pin too); the pin only `gone`'s
    # child used went with it
    assert {p: p.read_bytes() for p in artifact_files(root) if p.name != "SHA256SUMS"} == {
        p: b for p, b in kept_bytes.items() if p.name != "SHA256SUMS"
    }
    assert not gone_pin.exists()
    assert lab.client.get(f"/api/v1/runs/{other['id']}").json()["state"] == "queued"
    assert execute_run(other["id"], lab.settings) == "succeeded"  # its pinned weights are still there


def test_delete_is_refused_while_the_run_or_a_child_is_active(lab):
    parent = _submit(lab, kind="faketrain", spec={"steps": 3})
    assert execute_run(parent["id"], lab.settings) == "succeeded"
    child = lab.client.post(f"/api/v1/runs/{parent['id']}/exports", json={"format": "torchvision"}).json()
    folder = run_dir(lab.settings.artifact_root, parent["id"])
    files = artifact_files(folder)
    response = lab.client.delete(f"/api/v1/runs/{parent['id']}")
    assert response.status_code == 409 and str(child["id"]) in response.json()["detail"]
    assert lab.client.get(f"/api/v1/runs/{child['id']}/usage").json()["active"] == [child["id"]]
    assert artifact_files(folder) == files and lab.client.get(f"/api/v1/runs/{parent['id']}").status_code == 200
    running = _submit(lab, kind="faketrain")
    _set(lab, running["id"], state="running")
    assert lab.client.delete(f"/api/v1/runs/{running['id']}").status_code == 409
    lab.client.post(f"/api/v1/runs/{child['id']}/cancel")
    assert lab.client.delete(f"/api/v1/runs/{parent['id']}").status_code == 200
    assert not folder.exists()


def test_total_usage(lab):
    run = _submit(lab, kind="faketrain", spec={"steps": 3})
    assert execute_run(run["id"], lab.settings) == "succeeded"
    total = lab.client.get("/api/v1/usage").json()
    size = sum(p.stat().st_size for p in artifact_files(run_dir(lab.settings.artifact_root, run["id"])))
    assert total["runs"][0]["run_id"] == run["id"] and total["runs"][0]["bytes"] == size
    assert total["runs_bytes"] == size and total["total_bytes"] >= size
    assert lab.anon.get("/api/v1/usage").status_code == 401
