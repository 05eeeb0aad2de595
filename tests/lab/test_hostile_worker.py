"""Text the worker stores never makes a run loop (issue #16, item 3).

A library's error messages, log lines, metric names, artifact metadata and results may hold NUL (which
PostgreSQL's text refuses), lone surrogates (which no database or JSON answer holds) and NaN (which
PostgreSQL's json refuses). The lab core's store functions make them storable; a run whose outcome
could not be recorded would stay `running`, be declared lost and re-executed on every lease. Checked
in-process on SQLite and PostgreSQL, and with a real Celery worker on Redis + PostgreSQL.
"""

from __future__ import annotations

import time

import pytest

from obow_lab_client import LabClient
from server.core.models import Artifact, Attempt, LogLine, Run
from tests.lab.conftest import start_live
from worker.tasks import execute_run

CLEAN = "nul \\0 surrogate \ufffd rtl \u202e emoji \U0001f600"


def _check_stored(session, run_id: int, state: str) -> Run:
    run = session.get(Run, run_id)
    assert run.state == state, run.error
    assert run.attempt_count == 1
    attempts = session.query(Attempt).filter_by(run_id=run_id).all()
    assert [a.outcome for a in attempts] == [state]
    messages = [line.message for line in session.query(LogLine).filter_by(run_id=run_id)]
    assert any(CLEAN in message for message in messages), messages
    assert {"lo\\0ss\ufffd0", "lo\\0ss\ufffd1"} <= set(run.metric_keys)
    options = [a.options for a in session.query(Artifact).filter_by(run_id=run_id)]
    assert any(o.get("note") == CLEAN and o.get("nan") is None and o.get(CLEAN) == 1 for o in options), options
    return run


def test_hostile_text_from_the_library_is_stored_cleaned_in_process(lab):
    ok = lab.client.post(
        "/api/v1/runs",
        json={"kind": "faketrain", "spec": {"steps": 6, "checkpoint_every": 2, "hostile_text": True}},
        headers=lab.auth,
    ).json()
    bad = lab.client.post(
        "/api/v1/runs",
        json={"kind": "faketrain", "spec": {"steps": 6, "checkpoint_every": 2, "fail_at": 3, "hostile_text": True}},
        headers=lab.auth,
    ).json()
    assert execute_run(ok["id"], lab.settings) == "succeeded"
    assert execute_run(bad["id"], lab.settings) == "failed"
    with lab.session() as session:
        run = _check_stored(session, ok["id"], "succeeded")
        assert run.result == {"final_loss": 1 / 6, "note": CLEAN, CLEAN: [None, None]}
        run = _check_stored(session, bad["id"], "failed")
        assert run.error == f"fail_at reached at step 3: {CLEAN}"
        assert session.query(Attempt).filter_by(run_id=bad["id"]).one().error == run.error
    for run_id in (ok["id"], bad["id"]):  # and every answer about them is readable
        assert lab.client.get(f"/api/v1/runs/{run_id}", headers=lab.auth).status_code == 200
        assert lab.client.get(f"/api/v1/runs/{run_id}/logs", headers=lab.auth).status_code == 200
        assert lab.client.get(f"/api/v1/runs/{run_id}/metrics", headers=lab.auth).status_code == 200


@pytest.fixture
def live(request, tmp_path):
    with start_live(request, tmp_path, "redis+postgresql", heartbeat_timeout_s=4.0) as running:
        yield running


def test_hostile_text_never_makes_a_run_loop_with_a_real_worker(live):
    """Real worker process (isolated run child), Redis broker, PostgreSQL: each run ends after exactly
    one attempt, and stays so for two more heartbeat leases (a run left `running` would be re-queued)."""
    with LabClient(live.url, live.token) as client:
        ok = client.submit("faketrain", spec={"steps": 6, "checkpoint_every": 2, "hostile_text": True})
        bad = client.submit("faketrain", spec={"steps": 6, "checkpoint_every": 2, "fail_at": 3, "hostile_text": True})
        deadline = time.monotonic() + 60
        while {client.run(r["id"])["state"] for r in (ok, bad)} - {"succeeded", "failed"}:
            assert time.monotonic() < deadline, [client.run(r["id"])["state"] for r in (ok, bad)]
            time.sleep(0.2)
        time.sleep(8.0)  # two leases: a lost run would have been re-queued and attempted again
        done, failed = client.run(ok["id"]), client.run(bad["id"])
    assert done["state"] == "succeeded", (done["error"], live.worker_log.read_text()[-3000:])
    assert done["result"] == {"final_loss": 1 / 6, "note": CLEAN, CLEAN: [None, None]}
    assert failed["state"] == "failed" and failed["error"] == f"fail_at reached at step 3: {CLEAN}"
    for run in (done, failed):
        assert len(run["attempts"]) == 1 and run["attempts"][0]["outcome"] == run["state"]
