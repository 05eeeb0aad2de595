"""Claims and redelivery: concurrent claims of one run (one wins), the broker inspection on a real Redis,
and the sweep that sends again the runs whose message the broker lost."""

from __future__ import annotations

import threading

import redis
from kombu import Consumer, Queue
from sqlalchemy import update

from server.core.models import Run
from server.core.queue import CeleryEnqueuer
from server.services.redelivery import Redelivery
from tests.lab.conftest import REDIS_SPARE_URL
from worker.tasks import claim, execute_run


def _submit(lab, **spec) -> dict:
    response = lab.client.post("/api/v1/runs", json={"kind": "faketrain", "spec": spec}, headers=lab.auth)
    assert response.status_code == 201, response.text
    return response.json()


def _contend(maker, run_id: int, contenders: int) -> tuple[list[bool], list[str]]:
    """`contenders` threads released together, each trying to claim the run."""
    barrier, results, errors = threading.Barrier(contenders), [], []

    def contend() -> None:
        barrier.wait()
        try:
            results.append(claim(maker, run_id, 60) is not None)
        except Exception as err:  # a lock error would be a lost claim: count it
            errors.append(repr(err))

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results, errors


def test_concurrent_claims_of_one_run_have_one_winner(lab):
    maker = lab.client.app.state.sessionmaker
    for _ in range(3):
        run = _submit(lab)
        results, errors = _contend(maker, run["id"], 8)
        assert errors == [] and sorted(results) == [False] * 7 + [True]
        assert execute_run(run["id"], lab.settings) == "skipped"  # taken, heartbeat fresh


def test_pending_task_ids_sees_waiting_and_unacknowledged_messages():
    url = REDIS_SPARE_URL
    client = redis.Redis.from_url(url)
    client.flushdb()
    enqueuer = CeleryEnqueuer(url)
    waiting = [Run(id=i, queue=q) for i, q in ((1, "gpu"), (2, "cpu"), (3, "gpu"))]
    ids = [enqueuer(run) for run in waiting]
    assert enqueuer.pending_task_ids() == set(ids)
    # a worker takes one (acks_late: unacknowledged while it runs): still held by the broker
    app = enqueuer._app
    with app.connection_for_read() as conn:
        received = []
        consumer = Consumer(conn, [Queue("gpu")], callbacks=[lambda body, msg: received.append(msg)])
        with consumer:
            conn.drain_events(timeout=5)
        assert len(received) == 1
        assert enqueuer.pending_task_ids() == set(ids)
        received[0].ack()
        assert enqueuer.pending_task_ids() == set(ids) - {received[0].headers["id"]}
    client.flushdb()
    assert enqueuer.pending_task_ids() == set()
    assert CeleryEnqueuer("sqla+sqlite:///x.db").pending_task_ids() is None


def test_redelivery_sends_again_what_the_broker_lost_on_the_second_sweep(lab):
    held, lost, cancelled, running = (_submit(lab) for _ in range(4))
    with lab.session() as session:
        session.execute(update(Run).where(Run.id == running["id"]).values(state="running"))
        session.execute(update(Run).where(Run.id == cancelled["id"]).values(cancel_requested=True))
        session.commit()
    pending = {f"task-{held['id']}"}
    sweeper = Redelivery()
    lab.enqueue.sent.clear()
    with lab.session() as session:
        assert sweeper.sweep(session, pending, lab.enqueue) == []  # missing once: maybe in flight
        assert sweeper.sweep(session, pending, lab.enqueue) == [lost["id"]]
    assert lab.enqueue.sent == [(lost["id"], "gpu")]
    logs = [line["message"] for line in lab.client.get(f"/api/v1/runs/{lost['id']}/logs").json()]
    assert any("queued again" in m for m in logs)
    # its new message is in the broker now: nothing more to send
    pending.add(f"task-{lost['id']}")
    with lab.session() as session:
        assert sweeper.sweep(session, pending, lab.enqueue) == []
        assert sweeper.sweep(session, pending, lab.enqueue) == []
    assert execute_run(lost["id"], lab.settings) == "succeeded"
