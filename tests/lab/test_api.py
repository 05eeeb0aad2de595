"""REST API on SQLite and PostgreSQL: runs, validation, auth, cancel/retry, metrics, logs, SSE."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from obow import runs
from server.core import artifacts as artifact_store
from server.core.artifacts import run_dir
from server.core.models import Run
from tests.lab.conftest import count_rows
from worker.tasks import execute_run


def _submit(lab, **body) -> dict:
    response = lab.client.post("/api/v1/runs", json=body, headers=lab.auth)
    assert response.status_code == 201, response.text
    return response.json()


def test_pretrain_from_preset_is_stored_then_queued(lab):
    run = _submit(lab, kind="pretrain", preset="FashionMNIST/tiny", spec={"optim": {"num_epochs": 1}})
    assert run["state"] == "queued" and run["queue"] == "gpu"
    assert run["name"] == "FashionMNIST/tiny"
    assert run["spec"]["optim"]["num_epochs"] == 1 and run["spec"]["data"]["batch_size"] == 32
    assert lab.enqueue.sent == [(run["id"], "gpu")]
    detail = lab.client.get(f"/api/v1/runs/{run['id']}").json()
    assert detail["attempts"] == [] and detail["artifacts"] == [] and detail["children"] == []


def test_list_filters_and_pages(lab):
    ids = [_submit(lab, kind="faketrain", spec={"steps": 2})["id"] for _ in range(3)]
    lab.client.post(f"/api/v1/runs/{ids[0]}/cancel", headers=lab.auth)
    page = lab.client.get("/api/v1/runs", params={"limit": 2}).json()
    assert page["total"] == 3 and [r["id"] for r in page["items"]] == ids[::-1][:2]
    assert lab.client.get("/api/v1/runs", params={"offset": 2}).json()["items"][0]["id"] == ids[0]
    queued = lab.client.get("/api/v1/runs", params={"state": "queued", "kind": "faketrain"}).json()
    assert {r["id"] for r in queued["items"]} == set(ids[1:])
    assert lab.client.get("/api/v1/runs", params={"kind": "pretrain"}).json()["total"] == 0


def test_bad_spec_names_every_bad_field_and_writes_nothing(lab):
    response = lab.client.post(
        "/api/v1/runs",
        json={"kind": "pretrain", "preset": "FashionMNIST/tiny", "spec": {"optim": {"lr": -1, "lrr": 2}}},
        headers=lab.auth,
    )
    assert response.status_code == 422
    locs = [tuple(e["loc"]) for e in response.json()["detail"]]
    assert ("body", "spec", "optim", "lr") in locs and ("body", "spec", "optim", "lrr") in locs
    for body, loc in (
        ({"kind": "nope"}, ["body", "kind"]),
        ({"kind": "pretrain", "preset": "Nope/none"}, ["body", "preset"]),
        ({"kind": "export", "spec": {"format": "torchvision"}}, ["body", "parent_id"]),
        ({"kind": "export", "parent_id": 999999}, ["body", "parent_id"]),
        ({"kind": "import", "spec": {"source": "/etc/passwd"}}, ["body", "kind"]),
    ):
        response = lab.client.post("/api/v1/runs", json=body, headers=lab.auth)
        assert response.status_code == 422, body
        assert response.json()["detail"][0]["loc"] == loc
    assert count_rows(lab, "runs") == 0 and lab.enqueue.sent == []


def test_path_traversal_in_any_path_field_is_refused(lab):
    for spec in (
        {"data_dir": "../../etc"},
        {"data_dir": "/data/../../etc/passwd"},
        {"name": "../escape"},
        {"data_dir": "ok\x00"},
    ):
        response = lab.client.post("/api/v1/runs", json={"kind": "faketrain", "spec": spec}, headers=lab.auth)
        assert response.status_code == 422, spec
    response = lab.client.post(
        "/api/v1/runs", json={"kind": "export", "spec": {"checkpoint": "/etc/passwd"}}, headers=lab.auth
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "spec", "checkpoint"]
    assert count_rows(lab, "runs") == 0


def test_state_changes_need_a_token(lab):
    run = _submit(lab, kind="faketrain")
    for method, path, kwargs in (
        ("post", "/api/v1/runs", {"json": {"kind": "faketrain"}}),
        ("post", f"/api/v1/runs/{run['id']}/cancel", {}),
        ("post", f"/api/v1/runs/{run['id']}/retry", {}),
        ("post", f"/api/v1/runs/{run['id']}/exports", {"json": {"format": "torchvision"}}),
        ("post", "/api/v1/imports", {"content": b"{}"}),
    ):
        for headers in ({}, {"Authorization": "Bearer obow_wrong"}, {"Authorization": "Basic abc"}):
            response = getattr(lab.anon, method)(path, headers=headers, **kwargs)
            assert response.status_code == 401, (path, headers)
    # a dashboard session without its CSRF token is refused too
    login = lab.anon.post("/login", data={"token": lab.token}, follow_redirects=False)
    assert login.status_code == 303
    assert lab.anon.post(f"/api/v1/runs/{run['id']}/cancel").status_code == 403
    assert count_rows(lab, "runs") == 1
    assert lab.client.get(f"/api/v1/runs/{run['id']}").json()["state"] == "queued"


def test_unknown_run_is_404_everywhere(lab):
    for path in ("", "/metrics", "/logs", "/events", "/artifacts"):
        assert lab.client.get(f"/api/v1/runs/424242{path}").status_code == 404, path
    for path in ("/cancel", "/retry"):
        assert lab.client.post(f"/api/v1/runs/424242{path}", headers=lab.auth).status_code == 404


def test_cancel_and_retry(lab):
    run = _submit(lab, kind="faketrain", spec={"steps": 3})
    cancelled = lab.client.post(f"/api/v1/runs/{run['id']}/cancel", headers=lab.auth).json()
    assert cancelled["state"] == "cancelled"
    assert lab.client.post(f"/api/v1/runs/{run['id']}/cancel", headers=lab.auth).status_code == 409
    assert execute_run(run["id"], lab.settings) == "skipped"  # a late delivery does nothing
    retry = lab.client.post(f"/api/v1/runs/{run['id']}/retry", headers=lab.auth)
    assert retry.status_code == 201
    again = retry.json()
    assert again["retry_of_id"] == run["id"] and again["state"] == "queued" and again["spec"] == run["spec"]
    assert lab.client.post(f"/api/v1/runs/{again['id']}/retry", headers=lab.auth).status_code == 409


def test_broker_down_fails_the_run_visibly(lab):
    lab.enqueue.fail = True
    run = _submit(lab, kind="faketrain")
    assert run["state"] == "failed" and "could not enqueue" in run["error"]


def test_worker_records_metrics_logs_and_artifacts(lab):
    run = _submit(lab, kind="faketrain", spec={"steps": 30})
    assert execute_run(run["id"], lab.settings) == "succeeded"
    assert execute_run(run["id"], lab.settings) == "skipped"
    detail = lab.client.get(f"/api/v1/runs/{run['id']}").json()
    assert detail["state"] == "succeeded" and detail["result"] == {"final_loss": 1 / 30}
    assert (detail["progress_done"], detail["progress_total"]) == (30, 30)
    assert detail["metric_keys"] == ["loss", "lr"] and detail["last_metrics"]["loss"] == 1 / 30
    assert len(detail["attempts"]) == 1 and detail["attempts"][0]["outcome"] == "succeeded"
    series = lab.client.get(f"/api/v1/runs/{run['id']}/metrics", params={"keys": "loss"}).json()["series"]
    assert series[0]["steps"] == list(range(30)) and series[0]["values"][3] == 0.25
    logs = lab.client.get(f"/api/v1/runs/{run['id']}/logs").json()
    assert [line["message"] for line in logs][1:3] == ["step 0", "step 5"]
    assert lab.client.get(f"/api/v1/runs/{run['id']}/logs", params={"limit": 2}).json()[-1] == logs[-1]
    (artifact,) = lab.client.get(f"/api/v1/runs/{run['id']}/artifacts").json()
    assert artifact["kind"] == "checkpoint" and artifact["name"] == "checkpoint.json"


def test_failure_keeps_the_error(lab):
    run = _submit(lab, kind="faketrain", spec={"steps": 5, "fail_at": 2})
    assert execute_run(run["id"], lab.settings) == "failed"
    detail = lab.client.get(f"/api/v1/runs/{run['id']}").json()
    assert detail["error"] == "fail_at reached at step 2"
    assert detail["attempts"][0]["error"] == detail["error"]


def test_retry_resumes_from_the_failed_runs_checkpoint(lab):
    run = _submit(lab, kind="faketrain", spec={"steps": 10, "fail_at": 7, "checkpoint_every": 5})
    assert execute_run(run["id"], lab.settings) == "failed"
    (ckpt,) = lab.client.get(f"/api/v1/runs/{run['id']}/artifacts").json()
    assert ckpt["options"] == {"step": 5}
    retry = lab.client.post(f"/api/v1/runs/{run['id']}/retry", headers=lab.auth).json()
    assert execute_run(retry["id"], lab.settings) == "succeeded"
    logs = [line["message"] for line in lab.client.get(f"/api/v1/runs/{retry['id']}/logs").json()]
    assert "resuming from step 5" in logs
    steps = lab.client.get(f"/api/v1/runs/{retry['id']}/metrics", params={"keys": "loss"}).json()["series"][0]
    assert steps["steps"] == list(range(5, 10))
    # the old run's file is untouched and still downloadable
    assert lab.client.get(ckpt["download_url"]).json()["step"] == 5


def test_cancel_stops_a_running_run(lab):
    run = _submit(lab, kind="faketrain", spec={"steps": 1000, "sleep_s": 0.01})
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(execute_run(run["id"], lab.settings)))
    thread.start()
    deadline = time.monotonic() + 10
    while lab.client.get(f"/api/v1/runs/{run['id']}").json()["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert lab.client.post(f"/api/v1/runs/{run['id']}/cancel", headers=lab.auth).status_code == 200
    thread.join(timeout=10)
    assert outcome == ["cancelled"]
    detail = lab.client.get(f"/api/v1/runs/{run['id']}").json()
    assert detail["state"] == "cancelled" and detail["progress_done"] < 1000


def test_lost_run_is_requeued_and_resumes(lab):
    from server.core.artifacts import run_dir
    from server.services.runs import sweep_lost
    from worker.tasks import claim

    run = _submit(lab, kind="faketrain", spec={"steps": 10})
    maker = lab.client.app.state.sessionmaker
    assert claim(maker, run["id"], 60) is not None  # a worker took it, wrote a checkpoint at step 4, then died
    assert claim(maker, run["id"], 60) is None  # a live run is never claimed twice
    out = run_dir(lab.settings.artifact_root, run["id"])
    out.mkdir(parents=True)
    (out / "checkpoint.json").write_text(json.dumps({"step": 4, "weights": []}))
    with lab.session() as session:
        assert sweep_lost(session, 60, lab.enqueue) == []  # heartbeat still fresh
        old = datetime(2020, 1, 1, tzinfo=UTC)
        session.execute(update(Run).where(Run.id == run["id"]).values(heartbeat_at=old))
        session.commit()
        assert sweep_lost(session, 60, lab.enqueue) == [run["id"]]
    assert lab.client.get(f"/api/v1/runs/{run['id']}").json()["state"] == "lost"
    assert lab.enqueue.sent[-1] == (run["id"], "gpu")
    assert execute_run(run["id"], lab.settings) == "succeeded"
    logs = [line["message"] for line in lab.client.get(f"/api/v1/runs/{run['id']}/logs").json()]
    assert "resuming from step 4" in logs
    detail = lab.client.get(f"/api/v1/runs/{run['id']}").json()
    assert [a["outcome"] for a in detail["attempts"]] == ["lost", "succeeded"]
    series = lab.client.get(f"/api/v1/runs/{run['id']}/metrics", params={"keys": "loss"}).json()["series"]
    assert series[0]["steps"] == list(range(4, 10))


def test_cancel_of_a_run_whose_worker_died_ends_cancelled(lab):
    from server.services.runs import sweep_lost
    from worker.tasks import claim

    run = _submit(lab, kind="faketrain")
    assert claim(lab.client.app.state.sessionmaker, run["id"], 60)
    assert lab.client.post(f"/api/v1/runs/{run['id']}/cancel", headers=lab.auth).json()["state"] == "running"
    with lab.session() as session:
        session.execute(
            update(Run).where(Run.id == run["id"]).values(heartbeat_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
        session.commit()
        assert sweep_lost(session, 60, lab.enqueue) == []
    assert lab.client.get(f"/api/v1/runs/{run['id']}").json()["state"] == "cancelled"


def _sse(lab, run_id: int, last_event_id: str | None = None) -> list[tuple[str, str, dict]]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events, current = [], {}
    with lab.client.stream("GET", f"/api/v1/runs/{run_id}/events", headers=headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "event" in current:
                    events.append((current["id"], current["event"], json.loads(current["data"])))
                current = {}
                continue
            name, _, value = line.partition(": ")
            current[name] = value
    return events


def test_sse_streams_and_resumes_from_last_event_id(lab):
    run = _submit(lab, kind="faketrain", spec={"steps": 12})
    execute_run(run["id"], lab.settings)
    events = _sse(lab, run["id"], "0-0-0")
    names = [e[1] for e in events]
    assert names[-1] == "end" and "metrics" in names and "logs" in names and "state" in names
    points = [p for _, name, data in events if name == "metrics" for p in data["points"]]
    assert [p[1] for p in points if p[0] == "loss"] == list(range(12))
    assert events[-2][1] == "state" and events[-2][2]["state"] == "succeeded"
    # resuming after the first metrics event sends only what came later
    first_id = next(e[0] for e in events if e[1] == "metrics")
    metric_id = int(first_id.split("-")[0])
    resumed = _sse(lab, run["id"], f"{metric_id - 4}-{first_id.split('-')[1]}-{first_id.split('-')[2]}")
    again = [p for _, name, data in resumed if name == "metrics" for p in data["points"]]
    assert len(again) == 4 and again == points[-4:]
    # a new subscriber of a finished run gets its state and the end
    assert [e[1] for e in _sse(lab, run["id"])] == ["state", "end"]


def test_a_stream_resumes_from_an_id_made_before_its_first_state_event(lab):
    """A page renders the start cursor (version -1: it has not seen a state event yet); the first
    events after it carry that version ("12-4--1"). A reconnect with such an id must resume right
    after it, not fall back to "from now" (which lost the rest of the poll: here the logs)."""
    from server.services.events import start_cursor

    run = _submit(lab, kind="faketrain", spec={"steps": 12})
    with lab.session() as session:
        rendered = start_cursor(session)
    execute_run(run["id"], lab.settings)
    events = _sse(lab, run["id"], str(rendered))
    assert [e[1] for e in events] == ["metrics", "logs", "state", "end"]
    assert events[0][0].endswith("--1")  # the metrics came before the first state event of the stream
    resumed = _sse(lab, run["id"], events[0][0])
    assert [e[1] for e in resumed] == ["logs", "state", "end"]
    assert resumed[0][2] == events[1][2]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_export_option_the_format_ignores_is_a_422_naming_it(lab, monkeypatch):
    """The library's own export spec (not the test fake): caffe2 has no `plain` and torchvision no
    `rgb2bgr`; the 422 names the request's field, and nothing is stored."""
    from tests.lab.conftest import LIBRARY_KINDS

    monkeypatch.setitem(runs.RUN_KINDS, "export", LIBRARY_KINDS["export"])
    parent = _submit(lab, kind="faketrain")
    with lab.session() as session:
        target = run_dir(lab.settings.artifact_root, parent["id"]) / "checkpoint.json"
        target.parent.mkdir(parents=True)
        target.write_text("{}")
        artifact_store.record(session, lab.settings.artifact_root, parent["id"], target, "checkpoint", {})
        session.commit()
    before = count_rows(lab, "runs")
    for body, loc in (
        ({"format": "caffe2", "options": {"plain": True}}, ["body", "options", "plain"]),
        ({"format": "torchvision", "options": {"rgb2bgr": True}}, ["body", "options", "rgb2bgr"]),
        ({"format": "nope"}, ["body", "format"]),
    ):
        response = lab.client.post(f"/api/v1/runs/{parent['id']}/exports", json=body, headers=lab.auth)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == loc, response.json()
    assert count_rows(lab, "runs") == before
    ok = lab.client.post(
        f"/api/v1/runs/{parent['id']}/exports", json={"format": "caffe2", "options": {"rgb2bgr": True}},
        headers=lab.auth,
    )
    assert ok.status_code == 201, ok.text
