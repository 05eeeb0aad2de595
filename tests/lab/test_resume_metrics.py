"""A resumed attempt repeats the steps its predecessor ran after the last checkpoint: its points replace
those, in the raw table and in the downsampling blocks, so no step is ever counted twice."""

from __future__ import annotations

import random

from sqlalchemy import select, update

from server.core import metrics as metrics_service
from server.core import transitions
from server.core.models import MetricBlock, Run
from worker.tasks import execute_run


def _blocks(session, run_id: int) -> list[tuple]:
    rows = session.execute(
        select(
            MetricBlock.key,
            MetricBlock.level,
            MetricBlock.block,
            MetricBlock.count,
            MetricBlock.min_step,
            MetricBlock.max_step,
            MetricBlock.vmin,
            MetricBlock.vmax,
        )
        .where(MetricBlock.run_id == run_id)
        .order_by(MetricBlock.key, MetricBlock.level, MetricBlock.block)
    ).all()
    return [tuple(r) for r in rows]


def _new_run(session) -> int:
    return transitions.create(session, Run(kind="faketrain", name="r", spec={}, queue="gpu")).id


def test_supersede_leaves_the_blocks_a_fresh_ingest_of_the_kept_points_gives(lab):
    rng = random.Random(0)
    points = [(key, step, rng.uniform(-5, 5), 0.0) for step in range(10_000) for key in ("a", "b")]
    with lab.session() as session:
        run_id = _new_run(session)
        for start in range(0, len(points), 3000):  # several batches, as the reporter sends them
            metrics_service.ingest(session, run_id, points[start : start + 3000])
        # a block boundary (4096 * 2 = 8192), a mid-block step and the very first step
        for cut in (8192 + 700, 5000, 0):
            expected_dropped = sum(1 for p in points if p[0] == "a" and p[1] >= cut)
            assert metrics_service.supersede(session, run_id, "a", cut) == expected_dropped
            expected_left = [p for p in points if p[0] == "b" or p[1] < cut]
            reference = _new_run(session)
            metrics_service.ingest(session, reference, expected_left)
            session.flush()
            assert _blocks(session, run_id) == _blocks(session, reference), cut
            points = expected_left
        assert metrics_service.max_step(session, run_id, "a") is None
        assert metrics_service.max_step(session, run_id, "b") == 9999


def test_a_resumed_attempt_replaces_the_steps_after_the_checkpoint(lab):
    """First attempt: steps 0..6, checkpoint at 5, then its worker 'dies' (the run is marked lost as the
    sweeper would). The second attempt resumes at 5: every step appears once, with the new values."""
    run = lab.client.post(
        "/api/v1/runs",
        json={"kind": "faketrain", "spec": {"steps": 10, "fail_at": 7, "checkpoint_every": 5}},
        headers=lab.auth,
    ).json()
    assert execute_run(run["id"], lab.settings) == "failed"
    with lab.session() as session:
        session.execute(update(Run).where(Run.id == run["id"]).values(state="lost"))
        session.commit()
    first = lab.client.get(f"/api/v1/runs/{run['id']}/metrics", params={"keys": "loss"}).json()["series"][0]
    assert first["steps"] == list(range(7))
    assert execute_run(run["id"], lab.settings) == "succeeded"
    series = lab.client.get(f"/api/v1/runs/{run['id']}/metrics").json()["series"]
    for s in series:
        assert s["steps"] == list(range(10)), s["key"]
        assert s["total_points"] == 10
    logs = [line["message"] for line in lab.client.get(f"/api/v1/runs/{run['id']}/logs").json()]
    assert any(m.startswith("resumed at step 5: 4 points of 2 metric(s)") for m in logs), logs
    with lab.session() as session:
        level0 = [r for r in _blocks(session, run["id"]) if r[1] == 0]
    assert sorted((r[0], r[3]) for r in level0) == [("loss", 10), ("lr", 10)]
