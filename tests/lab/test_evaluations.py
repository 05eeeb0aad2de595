"""From runs to answers (issue #13, items 6, 7, 8, 10), through the API on SQLite and PostgreSQL:
evaluation defaults taken from the parent and their cost, the headline per kind, result cards and the
parent's table, baselines queued once per protocol (and computed by a worker), export formats the
checkpoint cannot take refused at submit, and Convert of a chosen checkpoint."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from server.core import artifacts as artifact_store
from server.core.artifacts import run_dir
from server.core.models import Artifact, Run, utcnow
from tests.lab.conftest import count_rows
from worker.tasks import execute_run


def _submit(lab, **body) -> dict:
    response = lab.client.post("/api/v1/runs", json=body, headers=lab.auth)
    assert response.status_code == 201, response.text
    return response.json()


def _parent(lab, spec: dict | None = None, epochs: tuple[int, ...] = (1,)) -> tuple[dict, list[int]]:
    """A queued tiny pretraining with fake checkpoint files recorded as its artifacts (never executed:
    the evaluations here are only submitted, or are baselines, which need no weights)."""
    parent = _submit(lab, kind="pretrain", preset="FashionMNIST/tiny", spec=spec or {})
    ids = []
    with lab.session() as session:
        for epoch in epochs:
            target = run_dir(lab.settings.artifact_root, parent["id"]) / f"checkpoint_{epoch:04d}.pt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f"weights of epoch {epoch}".encode())
            row = artifact_store.record(session, lab.settings.artifact_root, parent["id"], target, "checkpoint",
                                        {"epoch": epoch, "format": "obow-lab/pretrain"})
            session.flush()
            ids.append(row.id)
        session.commit()
    return parent, ids


def _set(lab, run_id: int, **values) -> None:
    with lab.session() as session:
        session.execute(update(Run).where(Run.id == run_id).values(**values))
        session.commit()


def test_evaluation_defaults_follow_the_parent_and_state_their_cost(lab):
    parent, _ = _parent(lab)
    got = lab.client.get(f"/api/v1/runs/{parent['id']}/evaluation-defaults", params={"kind": "linear"})
    assert got.status_code == 200, got.text
    body = got.json()
    spec = body["spec"]
    # the parent's data, teacher view and normalisation, plus the CPU-sized Fashion-MNIST settings
    assert (spec["dataset"], spec["data_dir"], spec["resize"], spec["size"]) == ("FashionMNIST", None, 40, 40)
    assert spec["mean"] == [0.286] * 3 and spec["test_split"] == "test"
    assert (spec["subset"], spec["test_subset"], spec["precache"], spec["epochs"]) == (1000, 500, True, 10)
    assert "checkpoint" not in spec
    cost = body["cost"]
    assert cost["images"] == 1000 * 10 * 2 + 500 * 10  # two cached views per train image, the test split once
    assert cost["speed"] is None and cost["seconds"] is None and "time unknown" in cost["text"]
    knn = lab.client.get(f"/api/v1/runs/{parent['id']}/evaluation-defaults", params={"kind": "knn"}).json()
    assert knn["spec"]["k"] == [20] and knn["cost"]["images"] == 10_000 + 2_000

    # the parent's training speed, then a finished evaluation's measured speed, give the time
    _set(lab, parent["id"], last_metrics={"img_per_s": 100.0})
    cost = lab.client.get(f"/api/v1/runs/{parent['id']}/evaluation-defaults", params={"kind": "knn"}).json()["cost"]
    assert cost["seconds"] == pytest.approx(120.0) and cost["speed"]["run_id"] == parent["id"]
    child = _submit(lab, kind="knn", parent_id=parent["id"], spec=knn["spec"])
    now = utcnow()
    _set(lab, child["id"], state="succeeded", started_at=now - timedelta(seconds=20), finished_at=now)
    cost = lab.client.post(
        f"/api/v1/runs/{parent['id']}/evaluation-cost", json={"kind": "linear", "spec": {**spec, "precache": False}}
    ).json()
    assert cost["speed"] == {"img_per_s": pytest.approx(600.0), "source": f"measured by evaluation #{child['id']}",
                             "run_id": child["id"]}
    assert cost["images"] == 1000 * 10 * 10 + 500 * 10 and cost["seconds"] == pytest.approx(105_000 / 600)


def test_defaults_and_cost_refuse_bad_input_naming_the_field(lab):
    parent, _ = _parent(lab)
    base = f"/api/v1/runs/{parent['id']}"
    assert lab.client.get("/api/v1/runs/424242/evaluation-defaults", params={"kind": "knn"}).status_code == 404
    for kind in ("export", "pretrain", "nope", "\x00", "k" * 41, "../knn"):
        response = lab.client.get(f"{base}/evaluation-defaults", params={"kind": kind})
        assert response.status_code == 422, (kind, response.text)
        assert response.json()["detail"][0]["loc"] == ["query", "kind"]
    for spec, loc in (
        ({"subset": -1}, ["body", "spec", "subset"]),
        ({"epochs": 1e308}, ["body", "spec", "epochs"]),
        ({"lr": "inf"}, ["body", "spec", "lr"]),
        ({"size": 64, "resize": 32}, ["body", "spec"]),
        ({"bogus": 1}, ["body", "spec", "bogus"]),
        ({"dataset": "/etc/passwd"}, ["body", "spec", "dataset"]),
        ({"test_subset": 2**64}, ["body", "spec", "test_subset"]),
    ):
        response = lab.client.post(f"{base}/evaluation-cost", json={"kind": "linear", "spec": spec})
        assert response.status_code == 422, (spec, response.text)
        assert response.json()["detail"][0]["loc"] == loc, response.json()
    assert lab.client.post(f"{base}/evaluation-cost", json={"kind": "export", "spec": {}}).status_code == 422
    for raw in ('{"kind": "knn", "spec": {"dataset": "\\ud800"}}', '{"kind": "knn\\u0000", "spec": {}}',
                '{"kind": "knn", "spec": {"lr": NaN}}'):
        response = lab.client.post(f"{base}/evaluation-cost", content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, (raw, response.text)
    bad = lab.client.post(f"{base}/evaluation-cost", json={"kind": "knn", "spec": {}, "extra": 1})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "extra"]
    # a folder of the user's: the count is unknown and says so
    cost = lab.client.post(f"{base}/evaluation-cost", json={"kind": "knn", "spec": {"dataset": "ImageFolder"}}).json()
    assert cost["images"] is None and "known once it is read" in cost["text"]


def test_headline_card_table_and_baselines_queued_once(lab):
    parent, (artifact_id,) = _parent(lab, epochs=(2,))
    defaults = lab.client.get(
        f"/api/v1/runs/{parent['id']}/evaluation-defaults", params={"kind": "linear"}
    ).json()["spec"]
    before = count_rows(lab, "runs")
    linear = _submit(lab, kind="linear", parent_id=parent["id"], spec=defaults)
    # a linear evaluation on built-in data queues its two baselines: raw pixels and a random tiny ResNet
    with lab.session() as session:
        baselines = session.scalars(select(Run).where(Run.kind == "baseline").order_by(Run.id)).all()
        assert [b.spec["features"] for b in baselines] == ["raw_pixels", "random_init"]
        assert baselines[0].name == "baseline linear raw_pixels FashionMNIST"
        assert (baselines[1].spec["small_stem"], baselines[1].spec["width"]) == (True, 0.125)
        assert all(b.queue == "cpu" and b.spec["evaluation"]["subset"] == 1000 for b in baselines)
        baseline_ids = [b.id for b in baselines]
    assert count_rows(lab, "runs") == before + 3
    # the same protocol again (another checkpoint, say): the baselines are on their way, none is added
    again = _submit(lab, kind="linear", parent_id=parent["id"], spec={**defaults, "workers": 1})
    assert count_rows(lab, "runs") == before + 4

    result = {"top1": 71.25, "top5": 98.5, "train_images": 10000, "test_images": 5000,
              "history": [{"epoch": 10, "train_top1": 93.0, "top1": 71.25}]}
    _set(lab, linear["id"], state="succeeded", result=result, last_metrics={"train_top1": 93.0, "top1": 71.25})
    _set(lab, baseline_ids[0], state="succeeded", result={"headline": 80.5, "top1": 80.5})

    listed = {r["id"]: r for r in lab.client.get("/api/v1/runs", params={"kind": "linear"}).json()["items"]}
    assert listed[linear["id"]]["headline"] == {"key": "top1", "label": "test top-1", "value": 71.25, "unit": "%"}
    assert listed[again["id"]]["headline"] is None  # queued: nothing to show yet

    card = lab.client.get(f"/api/v1/runs/{linear['id']}/card").json()
    assert [(n["key"], n["value"]) for n in card["numbers"]] == [("top1", 71.25), ("top5", 98.5)]
    assert card["checkpoint"] == {"run_id": parent["id"], "epoch": 2, "name": "checkpoint_0002.pt",
                                  "artifact_id": artifact_id}
    assert card["protocol"].startswith("linear probe on FashionMNIST (10000 train / 5000 test images, 40 px)")
    raw, random = card["baselines"]
    assert (raw["features"], raw["run_id"], raw["value"], raw["delta"]) == (
        "raw_pixels", baseline_ids[0], 80.5, pytest.approx(-9.25))
    assert (random["run_id"], random["state"], random["value"]) == (baseline_ids[1], "queued", None)

    table = lab.client.get(f"/api/v1/runs/{parent['id']}/evaluations").json()
    assert [row["run_id"] for row in table] == [again["id"], linear["id"]]
    assert table[1]["headline"]["value"] == 71.25 and table[1]["checkpoint"]["epoch"] == 2
    assert lab.client.get(f"/api/v1/runs/{parent['id']}/card").json() is None  # a pretraining has no card
    # asking again queues nothing: every baseline of the protocol exists
    assert lab.client.post(f"/api/v1/runs/{linear['id']}/baselines", headers=lab.auth).json() == []
    assert lab.anon.post(f"/api/v1/runs/{linear['id']}/baselines").status_code == 401


def test_export_the_backbone_cannot_take_is_a_422_at_submit(lab):
    parent, _ = _parent(lab)  # the tiny preset: small stem, width 1/8
    before = count_rows(lab, "runs")
    for fmt in ("torchvision", "caffe2", "detectron2"):
        response = lab.client.post(f"/api/v1/runs/{parent['id']}/exports", json={"format": fmt}, headers=lab.auth)
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "format"]
        assert "small_stem=True, width=0.125" in error["msg"] and "safetensors" in error["msg"]
    assert count_rows(lab, "runs") == before
    formats = lab.client.get(f"/api/v1/runs/{parent['id']}/export-formats").json()
    assert formats["backbone"] == {"arch": "resnet18", "small_stem": True, "width": 0.125}
    assert {k: v["allowed"] for k, v in formats["formats"].items()} == {
        "torchvision": False, "caffe2": False, "detectron2": False, "safetensors": True}
    assert "7x7 stem" in formats["formats"]["torchvision"]["reason"]
    ok = lab.client.post(f"/api/v1/runs/{parent['id']}/exports", json={"format": "safetensors"}, headers=lab.auth)
    assert ok.status_code == 201, ok.text
    # a stock ResNet parent takes torchvision
    stock, _ = _parent(lab, spec={"model": {"feature_extractor_opts": {"small_stem": False, "width": 1.0}},
                                  "data": {"teacher_resize": 256, "teacher_size": 224}})
    ok = lab.client.post(f"/api/v1/runs/{stock['id']}/exports", json={"format": "torchvision"}, headers=lab.auth)
    assert ok.status_code == 201, ok.text


def test_convert_converts_the_checkpoint_it_names(lab):
    """The Convert button of a row sends that row's artifact id: the export reads that checkpoint, not
    the newest one (before, every row's button exported the newest)."""
    parent, (older, newer) = _parent(lab, epochs=(1, 2))
    with lab.session() as session:
        digests = {a.id: a.sha256 for a in session.scalars(select(Artifact).where(Artifact.run_id == parent["id"]))}
    child = lab.client.post(f"/api/v1/runs/{parent['id']}/exports",
                            json={"format": "safetensors", "artifact_id": older}, headers=lab.auth)
    assert child.status_code == 201, child.text
    pinned = Path(child.json()["spec"]["checkpoint"])
    assert pinned.name.startswith(digests[older])
    assert hashlib.sha256(pinned.read_bytes()).hexdigest() == digests[older]
    default = lab.client.post(f"/api/v1/runs/{parent['id']}/exports", json={"format": "safetensors"},
                              headers=lab.auth).json()
    assert Path(default["spec"]["checkpoint"]).name.startswith(digests[newer])
    _, (foreign,) = _parent(lab)
    for bad in (foreign, 424242):
        response = lab.client.post(f"/api/v1/runs/{parent['id']}/exports",
                                   json={"format": "safetensors", "artifact_id": bad}, headers=lab.auth)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "artifact_id"]
    for bad in (0, -1, 2**31, "1; drop", 1.5):
        response = lab.client.post(f"/api/v1/runs/{parent['id']}/exports",
                                   json={"format": "safetensors", "artifact_id": bad}, headers=lab.auth)
        assert response.status_code == 422, bad


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_worker_computes_a_baseline_once_and_the_card_reads_it(lab):
    """Real baseline runs (kNN on the synthetic data, raw pixels and a random tiny ResNet) executed by the
    worker's task; a second evaluation of the same protocol finds them cached and queues nothing."""
    parent, _ = _parent(lab, spec={"data": {"dataset_name": "Synthetic"}})
    spec = {"subset": 8, "test_subset": 4, "k": [5], "workers": 0, "device": "cpu"}
    knn = _submit(lab, kind="knn", parent_id=parent["id"], spec=spec)
    # the API fills what the request leaves unset from the parent: its data and its teacher view
    assert (knn["spec"]["dataset"], knn["spec"]["size"], knn["spec"]["mean"]) == ("Synthetic", 40, [0.286] * 3)
    with lab.session() as session:
        baselines = session.scalars(select(Run.id).where(Run.kind == "baseline").order_by(Run.id)).all()
    assert len(baselines) == 2
    for run_id in baselines:
        assert execute_run(run_id, lab.settings) == "succeeded"
    details = [lab.client.get(f"/api/v1/runs/{i}").json() for i in baselines]
    for detail in details:
        assert detail["result"]["train_images"] == 32 and detail["result"]["test_images"] == 16
        assert detail["headline"]["value"] == detail["result"]["top1"]["5"]
    _set(lab, knn["id"], state="succeeded", result={"top1": {"5": 90.0}, "train_images": 32, "test_images": 16})
    card = lab.client.get(f"/api/v1/runs/{knn['id']}/card").json()
    assert [b["value"] for b in card["baselines"]] == [d["result"]["top1"]["5"] for d in details]
    assert [b["delta"] for b in card["baselines"]] == [pytest.approx(90.0 - d["result"]["top1"]["5"]) for d in details]
    before = count_rows(lab, "runs")
    _submit(lab, kind="knn", parent_id=parent["id"], spec=spec)
    assert count_rows(lab, "runs") == before + 1  # the evaluation only: both baselines are cached
