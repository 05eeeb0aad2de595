"""The run state machine (`server.core.transitions`): attempt ownership (fencing), the A/B race a stale
attempt used to win, and random interleavings of every transition from two attempts and the API,
checked against the machine's invariants, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from server.core import transitions
from server.core.models import TERMINAL_STATES, Attempt, Run, RunEvent, RunState, utcnow
from worker.reporter import DbReporter

FUTURE = datetime(2999, 1, 1, tzinfo=UTC)  # a cutoff every heartbeat is older than: "the lease ran out"


def _new(session) -> int:
    return transitions.create(session, Run(kind="faketrain", name="r", spec={}, queue="gpu")).id


def _claim(session, run_id: int, host: str) -> int | None:
    attempt = transitions.claim(session, run_id, host, None, 1, lease_s=3600)
    return attempt.id if attempt else None


def _taken_over(session) -> tuple[int, int, int]:
    """A run whose attempt A was swept to lost (its lease ran out) and then claimed by attempt B."""
    run_id = _new(session)
    a = _claim(session, run_id, "A")
    assert transitions.mark_lost(session, run_id, FUTURE, "no heartbeat") == RunState.LOST
    b = _claim(session, run_id, "B")
    assert a and b and a != b
    return run_id, a, b


def test_a_stale_attempt_cannot_finish_a_run_another_attempt_holds(lab):
    """A is swept to lost, B claims the run, then A's late finish("succeeded") arrives: it changes
    nothing, and A's heartbeat, metrics and artifacts are refused too; B finishes normally."""
    maker = lab.client.app.state.sessionmaker
    with maker() as session:
        run_id, a, b = _taken_over(session)
        assert not transitions.finish(session, run_id, a, "succeeded", None, {"stale": True})
        assert not transitions.heartbeat(session, run_id, a)
        run = session.get(Run, run_id)
        session.refresh(run)
        assert (run.state, run.attempt_id, run.result) == (RunState.RUNNING, b, None)

    stale = DbReporter(maker, run_id, a, lab.settings.artifact_root, heartbeat_s=None)
    stale.metrics(1, {"loss": 9.0})
    stale.log("from the stale attempt")
    stale.flush()
    assert stale.should_stop() and stale.lost_ownership
    stale.close()
    fresh = DbReporter(maker, run_id, b, lab.settings.artifact_root, heartbeat_s=None)
    fresh.metrics(1, {"loss": 1.0})
    fresh.close()
    assert not fresh.lost_ownership
    series = lab.client.get(f"/api/v1/runs/{run_id}/metrics", params={"keys": "loss"}).json()["series"][0]
    assert series["values"] == [1.0]
    logs = [line["message"] for line in lab.client.get(f"/api/v1/runs/{run_id}/logs").json()]
    assert "from the stale attempt" not in logs

    with maker() as session:
        assert transitions.finish(session, run_id, b, "succeeded", None, {"ok": 1})
        run = session.get(Run, run_id)
        session.refresh(run)
        assert (run.state, run.result, run.attempt_id) == (RunState.SUCCEEDED, {"ok": 1}, None)
        attempts = session.scalars(select(Attempt).where(Attempt.run_id == run_id).order_by(Attempt.id)).all()
        assert [(x.number, x.outcome) for x in attempts] == [(1, "lost"), (2, "succeeded")]
        events = session.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)).all()
        assert [(e.transition, e.from_state, e.to_state) for e in events] == [
            ("create", None, "queued"),
            ("claim", "queued", "running"),
            ("mark_lost", "running", "lost"),
            ("claim", "lost", "running"),
            ("finish", "running", "succeeded"),
        ]


def test_the_supervisor_stops_an_attempt_that_lost_its_run(lab):
    """The worker process learns from a refused heartbeat that it lost the run; its outcome is not
    recorded (the run belongs to the new attempt)."""
    from worker.supervisor import LOST_RUN, supervise

    maker = lab.client.app.state.sessionmaker
    with maker() as session:
        run_id, a, b = _taken_over(session)

    def endless():
        import time

        time.sleep(60)
        return "succeeded", None, None

    started = utcnow()
    outcome = supervise(maker, run_id, a, endless, grace_s=0.5, heartbeat_s=0.1, shutting_down=lambda: False)
    assert outcome[0] == LOST_RUN
    assert utcnow() - started < timedelta(seconds=10)
    with maker() as session:
        run = session.get(Run, run_id)
        assert (run.state, run.attempt_id) == (RunState.RUNNING, b)


# -- random interleavings ------------------------------------------------------------------------------
ACTORS = ("A", "B")
ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(
            ["claim", "heartbeat", "finish_ok", "finish_failed", "interrupt", "mark_lost", "cancel", "requeue",
             "expire"]
        ),
        st.sampled_from(ACTORS),
    ),
    min_size=1,
    max_size=25,
)


def _check_invariants(session, run_id: int, held: dict[str, int | None], history: list[str]) -> None:
    run = session.get(Run, run_id)
    session.refresh(run)
    attempts = session.scalars(select(Attempt).where(Attempt.run_id == run_id).order_by(Attempt.id)).all()
    events = session.scalars(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)).all()
    # one owner at a time: exactly the running run names an attempt, and it is an open one
    open_attempts = [a for a in attempts if a.ended_at is None]
    if run.state == RunState.RUNNING:
        assert run.attempt_id is not None and [a.id for a in open_attempts] == [run.attempt_id], history
    else:
        assert run.attempt_id is None and open_attempts == [], history
    # attempts numbered 1..n without gaps, and the run counts them
    assert [a.number for a in attempts] == list(range(1, len(attempts) + 1)), history
    assert run.attempt_count == len(attempts), history
    # every state change is an event, chained: each starts where the previous ended
    chain = [e for e in events if e.from_state != e.to_state or e.transition == "create"]
    assert chain[0].transition == "create" and chain[-1].to_state == run.state, history
    for before, after in itertools.pairwise(chain):
        assert after.from_state == before.to_state, history
    # terminal states stay terminal: nothing after the first terminal event
    terminal_at = [i for i, e in enumerate(events) if e.to_state in TERMINAL_STATES]
    if terminal_at:
        assert terminal_at == [len(events) - 1] and run.state == events[-1].to_state, history


def _drive(maker, actions) -> None:
    with maker() as session:
        run_id = _new(session)
    held: dict[str, int | None] = dict.fromkeys(ACTORS)
    history: list[str] = []
    for action, actor in actions:
        history.append(f"{actor}:{action}")
        with maker() as session:
            mine = held[actor]
            before = session.get(Run, run_id).state
            if action == "claim":
                attempt = _claim(session, run_id, actor)
                if attempt is not None:
                    held[actor] = attempt
            elif action == "heartbeat" and mine:
                transitions.heartbeat(session, run_id, mine)
            elif action in ("finish_ok", "finish_failed") and mine:
                state = "succeeded" if action == "finish_ok" else "failed"
                owner = session.get(Run, run_id).attempt_id
                applied = transitions.finish(session, run_id, mine, state, "x\x00y" if state == "failed" else None)
                assert applied == (owner == mine and before == RunState.RUNNING), history
            elif action == "interrupt" and mine:
                transitions.interrupt(session, run_id, mine, "shutdown")
            elif action == "mark_lost":
                transitions.mark_lost(session, run_id, FUTURE, "lease")
            elif action == "cancel":
                transitions.request_cancel(session, run_id)
            elif action == "requeue":
                transitions.requeue(session, run_id, "task", "redelivery")
            elif action == "expire":  # the lease runs out without the sweeper: the next claim takes over
                session.execute(
                    update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow() - timedelta(hours=2))
                )
                session.commit()
            after = session.get(Run, run_id)
            session.refresh(after)
            if before in TERMINAL_STATES:
                assert after.state == before, history
            _check_invariants(session, run_id, held, history)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_random_interleavings_keep_the_invariants(lab):
    maker = lab.client.app.state.sessionmaker

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(ACTIONS)
    def run(actions):
        _drive(maker, actions)

    run()
