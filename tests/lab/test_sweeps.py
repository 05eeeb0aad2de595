"""Sweeps in process: validation of the space (422s naming the key, nothing stored), the controller's
mechanics driven step by step with runs finished by hand through the state machine (objectives,
evaluation children, pruning, cancel, lease, a half-made trial after a crash), and seeded determinism.
The live tests (a real worker, the API killed mid-sweep) are in test_sweeps_live.py."""

from __future__ import annotations

import math
from typing import Any

import pytest
from sqlalchemy import func, select, text

from server.core import artifacts as artifact_store
from server.core import transitions
from server.core.artifacts import run_dir
from server.core.models import Metric, Run, Sweep, SweepTrial, utcnow
from server.services import sweeps as sweeps_service
from tests.lab.conftest import count_rows


def sweep_body(**over: Any) -> dict[str, Any]:
    body = {
        "kind": "faketrain",
        "spec": {"steps": 5},
        "space": {
            "lr": {"type": "loguniform", "low": 1e-3, "high": 1.0},
            "steps": {"type": "int", "low": 2, "high": 9},
        },
        "method": "random",
        "seed": 7,
        "budget": 4,
        "parallel": 2,
        "objective": {"metric": "final_loss"},
        "direction": "minimize",
    }
    body.update(over)
    return body


def create(lab, **over: Any) -> dict[str, Any]:
    response = lab.client.post("/api/v1/sweeps", json=sweep_body(**over), headers=lab.auth)
    assert response.status_code == 201, response.text
    return response.json()


def step(lab, sweep_id: int, owner: str = sweeps_service.CONTROLLER_ID) -> bool:
    with lab.session() as session:
        return sweeps_service.step(session, sweep_id, lab.settings, lab.enqueue, owner)


def trials(lab, sweep_id: int) -> list[SweepTrial]:
    with lab.session() as session:
        return list(
            session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep_id).order_by(SweepTrial.number))
        )


def finish(
    lab,
    run_id: int,
    state: str = "succeeded",
    result: dict | None = None,
    curve: list[float] | None = None,
    key: str = "loss",
    stop: bool = True,
) -> None:
    """Play a worker: claim the run, write its curve, end it (or leave it running with stop=False)."""
    with lab.session() as session:
        attempt = transitions.claim(session, run_id, "test-host", None, 1, 300)
        assert attempt is not None
        for i, value in enumerate(curve or []):
            session.add(Metric(run_id=run_id, key=key, step=i + 1, value=value, time=float(i)))
        if curve:
            transitions.fenced_update(session, run_id, attempt.id, last_metrics={key: curve[-1]})
        session.commit()
        if stop:
            transitions.finish(session, run_id, attempt.id, state, result=result)


def objective(params: dict[str, Any]) -> float:
    """A smooth made-up objective of the fake trainer's params: best near lr = 0.03."""
    return (math.log10(params["lr"]) + 1.5) ** 2 + 0.01 * params.get("steps", 0)


def drive(lab, sweep_id: int) -> list[dict[str, Any]]:
    """Finish every running trial with the made-up objective until the sweep ends; the params in order."""
    for _ in range(100):
        step(lab, sweep_id)
        with lab.session() as session:
            sweep = session.get(Sweep, sweep_id)
            if sweep.state != "running":
                break
        for trial in trials(lab, sweep_id):
            with lab.session() as session:
                run = session.get(Run, trial.run_id)
            if trial.state == "running" and run.state == "queued":
                finish(lab, trial.run_id, result={"final_loss": objective(trial.params)})
    return [t.params for t in trials(lab, sweep_id)]


# -- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("space", "method", "key", "words"),
    [
        ({"optim.lrr": {"type": "uniform", "low": 0.1, "high": 1}}, "random", "optim.lrr", "unknown key"),
        (
            {"model.bow_extractor_opts.inv_deltaa": {"type": "uniform", "low": 1, "high": 2}},
            "random",
            "model.bow_extractor_opts.inv_deltaa",
            "unknown key",
        ),
        ({"optim": {"type": "choice", "values": [1]}}, "random", "optim", "section"),
        ({"optim.lr": {"type": "uniform", "low": -0.1, "high": 1}}, "random", "optim.lr", "outside the field's bounds"),
        ({"optim.momentum": {"type": "uniform", "low": 0.5, "high": 1.0}}, "random", "optim.momentum", "< 1"),
        ({"data.batch_size": {"type": "int", "low": 0, "high": 64}}, "random", "data.batch_size", ">= 1"),
        ({"data.batch_size": {"type": "uniform", "low": 16, "high": 64}}, "random", "data.batch_size", "integer field"),
        ({"data.dataset_name": {"type": "int", "low": 1, "high": 3}}, "random", "data.dataset_name", "use choice"),
        ({"optim.lr": {"type": "loguniform", "low": 0.01, "high": 0.1}}, "grid", "optim.lr", "grid"),
        ({"optim.lr": {"type": "loguniform", "low": 0.0, "high": 0.1}}, "tpe", "optim.lr", "low > 0"),
        ({"optim.lr": {"type": "uniform", "low": 0.2, "high": 0.1}}, "tpe", "optim.lr", "below high"),
        (
            {"data.dataset_name": {"type": "choice", "values": ["FashionMNIST", "Nope"]}},
            "grid",
            "data.dataset_name",
            "refused by the spec",
        ),
        # a cross-field rule: 256 words is not a multiple of a batch of 48
        ({"data.batch_size": {"type": "choice", "values": [32, 48]}}, "grid", "data.batch_size", "multiple"),
    ],
)
def test_bad_spaces_are_422s_naming_the_key_and_store_nothing(lab, space, method, key, words):
    body = {
        "kind": "pretrain",
        "preset": "FashionMNIST/tiny",
        "space": space,
        "method": method,
        "budget": 4,
        "objective": {"metric": "knn_acc@1"},
    }
    response = lab.client.post("/api/v1/sweeps", json=body, headers=lab.auth)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(item["loc"][:3] == ["body", "space", key] and words in item["msg"] for item in detail), detail
    assert key in str(detail)
    assert count_rows(lab, "sweeps") == 0 and count_rows(lab, "runs") == 0 and lab.enqueue.sent == []


def test_other_bad_fields_are_named(lab):
    cases = [
        ({"objective": {"metric": "top1.20", "source": "nosuch"}}, ["body", "objective", "source"]),
        (
            {"objective": {"metric": "top1.20", "source": "knn", "eval_spec": {"k": "x"}}},
            ["body", "objective", "eval_spec", "k"],
        ),
        ({"pruner": {"type": "median", "options": {"n_startup_trials": -1}}}, ["body", "pruner", "options"]),
        ({"pruner": {"type": "median", "options": {"n_warmup_steps": "x"}}}, ["body", "pruner", "options"]),
        ({"pruner": {"type": "successive_halving", "options": {"bogus": 1}}}, ["body", "pruner", "options"]),
        ({"spec": {"optim": {"lr": -1}}}, ["body", "spec", "optim", "lr"]),
        ({"budget": 0}, ["body", "budget"]),
        ({"kind": "knn"}, ["body", "kind"]),
    ]
    for over, loc in cases:
        body = {
            "kind": "pretrain",
            "preset": "FashionMNIST/tiny",
            "budget": 2,
            "space": {"optim.lr": {"type": "loguniform", "low": 0.01, "high": 0.1}},
            "objective": {"metric": "knn_acc@1"},
            **over,
        }
        response = lab.client.post("/api/v1/sweeps", json=body, headers=lab.auth)
        assert response.status_code == 422, (over, response.text)
        assert any(item["loc"][: len(loc)] == loc for item in response.json()["detail"]), (over, response.text)
    assert count_rows(lab, "sweeps") == 0 and count_rows(lab, "runs") == 0


def test_a_good_pretrain_sweep_sets_the_knn_monitor_and_starts_its_trials(lab):
    body = {
        "kind": "pretrain",
        "preset": "FashionMNIST/tiny",
        "spec": {"optim": {"num_epochs": 1}},
        "space": {
            "model.bow_extractor_opts.inv_delta": {"type": "loguniform", "low": 3, "high": 30},
            "data.batch_size": {"type": "choice", "values": [32, 64]},
        },
        "method": "tpe",
        "budget": 3,
        "parallel": 2,
        "objective": {"metric": "knn_acc@1"},
        "pruner": {"type": "median", "options": {"n_startup_trials": 1}},
    }
    response = lab.client.post("/api/v1/sweeps", json=body, headers=lab.auth)
    assert response.status_code == 201, response.text
    sweep = response.json()
    assert [t["number"] for t in sweep["trials"]] == [0, 1] and len(lab.enqueue.sent) == 2
    with lab.session() as session:
        for trial in sweep["trials"]:
            run = session.get(Run, trial["run_id"])
            assert run.name == f"sweep{sweep['id']}-trial{trial['number']}" and run.parent_id is None
            assert run.spec["runtime"]["knn_monitor_every"] == 1
            assert (
                run.spec["model"]["bow_extractor_opts"]["inv_delta"]
                == trial["params"]["model.bow_extractor_opts.inv_delta"]
            )
            assert run.spec["data"]["batch_size"] == trial["params"]["data.batch_size"]
            assert run.spec["optim"]["num_epochs"] == 1
    assert lab.anon.post("/api/v1/sweeps", json=body).status_code == 401
    listed = lab.client.get("/api/v1/sweeps").json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == sweep["id"]
    assert lab.client.get("/api/v1/sweeps/999").status_code == 404


# -- the controller ----------------------------------------------------------------------------------


def test_random_and_tpe_with_a_fixed_seed_propose_the_same_trials_twice(lab):
    for method, budget in (("random", 6), ("tpe", 12)):
        first = drive(lab, create(lab, method=method, budget=budget, parallel=2)["id"])
        second = drive(lab, create(lab, method=method, budget=budget, parallel=2)["id"])
        other = drive(lab, create(lab, method=method, budget=budget, parallel=2, seed=8)["id"])
        assert len(first) == budget and first == second, method
        assert other != first, method
        assert len({(p["lr"], p["steps"]) for p in first}) == budget


def test_tpe_converges_on_the_made_up_objective(lab):
    sweep = create(
        lab, method="tpe", budget=24, parallel=1, space={"lr": {"type": "loguniform", "low": 1e-4, "high": 1}}
    )
    drive(lab, sweep["id"])
    detail = lab.client.get(f"/api/v1/sweeps/{sweep['id']}").json()
    assert detail["state"] == "finished" and detail["counts"]["complete"] == 24
    assert detail["best"]["value"] < 0.05  # |log10(lr) + 1.5| < 0.22 found
    values = [t["value"] for t in detail["trials"]]
    assert min(values[12:]) <= min(values[:6])  # the modelled half does at least as well as the random start
    assert set(detail["importance"]) == {"lr"}


def test_grid_tries_each_point_once_and_clamps_the_budget(lab):
    sweep = create(
        lab,
        method="grid",
        budget=50,
        parallel=3,
        space={
            "lr": {"type": "choice", "values": [0.01, 0.1]},
            "steps": {"type": "int", "low": 2, "high": 6, "step": 2},
        },
    )
    assert sweep["budget"] == 6
    params = drive(lab, sweep["id"])
    assert sorted((p["lr"], p["steps"]) for p in params) == sorted((lr, s) for lr in (0.01, 0.1) for s in (2, 4, 6))
    with lab.session() as session:
        specs = sorted((r.spec["lr"], r.spec["steps"]) for r in session.scalars(select(Run)))
    assert specs == sorted((lr, s) for lr in (0.01, 0.1) for s in (2, 4, 6))


def test_parallel_budget_failures_and_the_best_trial(lab):
    sweep = create(lab, budget=3, parallel=2)
    first = trials(lab, sweep["id"])
    assert len(first) == 2 and len(lab.enqueue.sent) == 2
    step(lab, sweep["id"])
    assert len(trials(lab, sweep["id"])) == 2  # nothing ended: no third trial yet
    finish(lab, first[0].run_id, "failed")
    finish(lab, first[1].run_id, result={"final_loss": 0.25})
    step(lab, sweep["id"])
    rows = trials(lab, sweep["id"])
    assert [t.state for t in rows] == ["failed", "complete", "running"] and rows[1].value == 0.25
    assert "failed" in rows[0].note
    finish(lab, rows[2].run_id, result={"other": 1.0})  # no objective in its result: failed, says why
    step(lab, sweep["id"])
    detail = lab.client.get(f"/api/v1/sweeps/{sweep['id']}").json()
    assert detail["state"] == "finished" and detail["best"]["number"] == 1 and detail["best_value"] == 0.25
    assert "final_loss" in detail["trials"][2]["note"]
    assert detail["trials"][1]["duration_s"] is not None and detail["importance"] is None  # one complete trial


def test_an_evaluation_child_scores_each_trial(lab):
    sweep = create(
        lab,
        budget=1,
        parallel=1,
        objective={"metric": "top1.20", "source": "knn", "eval_spec": {"k": [20]}},
        direction="maximize",
    )
    run_id = trials(lab, sweep["id"])[0].run_id
    checkpoint = run_dir(lab.settings.artifact_root, run_id) / "c.json"  # real bytes: the child pins them
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_text("{}")
    with lab.session() as session:
        artifact_store.record(session, lab.settings.artifact_root, run_id, checkpoint, "checkpoint", {})
        session.commit()
    finish(lab, run_id, result={"final_loss": 0.2})
    step(lab, sweep["id"])
    trial = trials(lab, sweep["id"])[0]
    assert trial.state == "running" and trial.eval_run_id is not None
    with lab.session() as session:
        child = session.get(Run, trial.eval_run_id)
        assert child.kind == "knn" and child.parent_id == run_id and child.spec["k"] == [20]
    step(lab, sweep["id"])  # idempotent: no second evaluation
    with lab.session() as session:
        assert session.scalar(select(func.count()).select_from(Run).where(Run.parent_id == run_id)) == 1
    finish(lab, trial.eval_run_id, result={"top1": {"20": 0.81}})
    step(lab, sweep["id"])
    detail = lab.client.get(f"/api/v1/sweeps/{sweep['id']}").json()
    assert detail["state"] == "finished" and detail["trials"][0]["value"] == 0.81
    assert detail["trials"][0]["eval_state"] == "succeeded"


def test_a_poor_trial_is_pruned_and_its_run_asked_to_stop(lab):
    sweep = create(
        lab,
        budget=4,
        parallel=2,
        direction="minimize",
        objective={"metric": "loss"},
        pruner={"type": "median", "metric": "loss", "options": {"n_startup_trials": 1}},
    )
    first = trials(lab, sweep["id"])
    finish(lab, first[0].run_id, curve=[1.0, 0.5, 0.2, 0.1])
    finish(lab, first[1].run_id, curve=[2.0, 1.5], stop=False)  # worse at reports 1 and 2, still running
    step(lab, sweep["id"])
    rows = trials(lab, sweep["id"])
    assert [t.state for t in rows[:2]] == ["complete", "pruned"] and rows[0].value == 0.1
    assert "pruned at report 2" in rows[1].note
    with lab.session() as session:
        run = session.get(Run, rows[1].run_id)
        assert run.cancel_requested and run.state == "running"  # it stops at its next step (the worker's part)
        cause = session.execute(
            text("SELECT cause FROM run_events WHERE run_id = :r AND transition = 'request_cancel'"), {"r": run.id}
        ).scalar_one()
    assert cause.startswith(f"pruned by sweep {sweep['id']}")
    assert len(rows) == 3  # trial 0's slot went to trial 2; the stopping run still holds the other
    step(lab, sweep["id"])
    assert len(trials(lab, sweep["id"])) == 3
    with lab.session() as session:
        transitions.finish(session, rows[1].run_id, run.attempt_id, "cancelled")
    step(lab, sweep["id"])
    assert len(trials(lab, sweep["id"])) == 4


def test_successive_halving_keeps_its_rungs_across_steps(lab):
    sweep = create(
        lab,
        budget=4,
        parallel=4,
        direction="minimize",
        objective={"metric": "loss"},
        pruner={"type": "successive_halving", "metric": "loss", "options": {"min_resource": 1, "reduction_factor": 2}},
    )
    rows = trials(lab, sweep["id"])
    finish(lab, rows[0].run_id, curve=[0.5, 0.4])
    step(lab, sweep["id"])
    finish(lab, rows[1].run_id, curve=[0.3], stop=False)
    finish(lab, rows[2].run_id, curve=[0.9], stop=False)
    step(lab, sweep["id"])
    rows = trials(lab, sweep["id"])
    assert any(key.startswith("completed_rung_") for key in rows[1].system_attrs)  # persisted for the next study
    assert rows[2].state == "pruned" and rows[1].state == "running"


def test_cancel_cancels_the_running_trials(lab):
    sweep = create(lab, budget=5, parallel=2)
    rows = trials(lab, sweep["id"])
    finish(lab, rows[0].run_id, stop=False)  # one running, one still queued
    response = lab.client.post(f"/api/v1/sweeps/{sweep['id']}/cancel", headers=lab.auth)
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert [t["state"] for t in response.json()["trials"]] == ["cancelled", "cancelled"]
    with lab.session() as session:
        assert session.get(Run, rows[0].run_id).cancel_requested
        assert session.get(Run, rows[1].run_id).state == "cancelled"
    assert not step(lab, sweep["id"])
    assert len(trials(lab, sweep["id"])) == 2
    assert lab.client.post(f"/api/v1/sweeps/{sweep['id']}/cancel", headers=lab.auth).status_code == 409
    assert lab.anon.post(f"/api/v1/sweeps/{sweep['id']}/cancel").status_code == 401


def test_one_controller_at_a_time_and_a_half_made_trial_is_completed_not_duplicated(lab):
    sweep = create(lab, budget=4, parallel=1)
    assert not step(lab, sweep["id"], owner="another-process")  # the creating process holds the lease
    with lab.session() as session:
        session.execute(text("UPDATE sweeps SET controller_until = :t"), {"t": utcnow()})
        session.commit()
    assert step(lab, sweep["id"], owner="another-process")  # expired: taken over
    first = trials(lab, sweep["id"])[0]
    finish(lab, first.run_id, result={"final_loss": 0.5})
    # a controller that died after numbering trial 1 and creating its run, before linking them
    params, attrs = None, None
    with lab.session() as session:
        s = session.get(Sweep, sweep["id"])
        params, attrs = sweeps_service.propose(s, [session.get(SweepTrial, first.id)], {})
        session.execute(text("UPDATE sweep_trials SET state = 'complete', value = 0.5 WHERE id = :i"), {"i": first.id})
        session.add(SweepTrial(sweep_id=s.id, number=1, params=params, system_attrs=attrs, state="running"))
        orphan = Run(
            kind="faketrain", name=sweeps_service.marker(s.id, 1), spec={"steps": 2, "lr": params["lr"]}, queue="gpu"
        )
        transitions.create(session, orphan)
    step(lab, sweep["id"], owner="another-process")
    rows = trials(lab, sweep["id"])
    assert rows[1].run_id == orphan.id and len(rows) == 2
    with lab.session() as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 2
    # the same with no run yet: the next step creates it, once
    with lab.session() as session:
        session.execute(text("UPDATE sweep_trials SET state = 'complete', value = 0.4 WHERE number = 1"))
        session.add(SweepTrial(sweep_id=sweep["id"], number=2, params=params, system_attrs=attrs, state="running"))
        session.commit()
    step(lab, sweep["id"], owner="another-process")
    step(lab, sweep["id"], owner="another-process")
    rows = trials(lab, sweep["id"])
    assert rows[2].run_id is not None and len(rows) == 3
    with lab.session() as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 3
    # two trials with the same number can never exist
    with lab.session() as session, pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        session.add(SweepTrial(sweep_id=sweep["id"], number=2, params={}, system_attrs={}, state="running"))
        session.commit()


def test_the_background_controller_steps_only_when_a_trial_changed(lab):
    sweep = create(lab, budget=3, parallel=1)
    controller = sweeps_service.Controller(lab.settings, lab.enqueue)
    with lab.session() as session:
        assert controller.tick(session) == [sweep["id"]]  # first sight: a full step
        assert controller.tick(session) == []  # nothing changed: one query, no step
    finish(lab, trials(lab, sweep["id"])[0].run_id, result={"final_loss": 0.3})
    with lab.session() as session:
        assert controller.tick(session) == [sweep["id"]]
    assert [t.state for t in trials(lab, sweep["id"])] == ["complete", "running"]
    with lab.session() as session:
        assert controller.tick(session) == [sweep["id"]]  # its own new trial changed the signature
        assert controller.tick(session) == []
