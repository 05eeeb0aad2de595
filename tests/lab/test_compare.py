"""The comparison API: spec differences (only the keys that differ, missing keys shown as missing),
final metrics, results and evaluation results side by side, the table as CSV/JSON, one metric on the
step/epoch/time/images axes, and hostile run ids."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from server.core import metrics as metrics_service
from server.core.models import Run
from server.services.compare import MAX_RUNS, flatten
from tests.lab.conftest import Lab

T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def make_run(lab: Lab, name: str, spec: dict[str, Any], *, kind: str = "pretrain", state: str = "succeeded",
             parent_id: int | None = None, result: dict | None = None, last: dict | None = None,
             points: list[tuple[str, int, float, float]] = (), progress_total: int = 0) -> int:
    """A run row as a finished worker leaves it (state, result, metrics), written directly."""
    with lab.session() as session:
        run = Run(kind=kind, name=name, spec=spec, queue="gpu", state=state, parent_id=parent_id, result=result,
                  last_metrics=last or {}, metric_keys=sorted({p[0] for p in points} | set(last or {})),
                  progress_total=progress_total, progress_done=progress_total,
                  started_at=datetime.fromtimestamp(T0, UTC))
        session.add(run)
        session.flush()
        metrics_service.ingest(session, run.id, list(points))
        session.commit()
        return run.id


SPEC_A = {"name": "a", "optim": {"lr": 0.1, "num_epochs": 2}, "data": {"batch_size": 32, "mean": [0.5]},
          "flag": True, "only_a": 1, "same_list": [1, 2]}
SPEC_B = {"name": "b", "optim": {"lr": 0.05, "num_epochs": 2}, "data": {"batch_size": 32, "mean": [0.4]},
          "flag": 1, "nullable": None, "same_list": [1, 2]}


def test_flatten_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": {}, "f": None}) == {"a.b": 1, "a.c.d": [1], "e": {}, "f": None}


def test_spec_differences_metrics_results_and_evaluations(lab):
    a = make_run(lab, "a", SPEC_A, last={"loss": 1.5, "top1": 50.0}, result={"epochs": 2, "path": "/x"})
    b = make_run(lab, "b", SPEC_B, last={"loss": 1.25})
    make_run(lab, "knn-old", {"k": 20}, kind="knn", parent_id=a, result={"top1": {"20": 40.0}})
    newest = make_run(lab, "knn", {"k": 20}, kind="knn", parent_id=a, result={"top1": {"20": 61.5}, "checkpoint": "/c"})
    make_run(lab, "knn-failed", {"k": 20}, kind="knn", parent_id=a, state="failed", result={"top1": {"20": 1.0}})
    make_run(lab, "export", {}, kind="export", parent_id=b, result={"sha256": 3})  # not an evaluation

    body = lab.client.get("/api/v1/compare", params={"runs": f"{a},{b},{a}"}).json()  # a repeated id counts once
    assert [r["id"] for r in body["runs"]] == [a, b]
    diff = {row["key"]: (row["values"], row["present"]) for row in body["spec_diff"]}
    assert diff == {
        "name": (["a", "b"], [True, True]),
        "optim.lr": ([0.1, 0.05], [True, True]),
        "data.mean": ([[0.5], [0.4]], [True, True]),
        "flag": ([True, 1], [True, True]),  # true and 1 are not the same value
        "only_a": ([1, None], [True, False]),  # missing in b
        "nullable": ([None, None], [False, True]),  # missing in a, a real null in b
    }
    assert body["same_spec_keys"] == 3  # optim.num_epochs, data.batch_size, same_list
    metrics = {row["key"]: (row["values"], row["present"]) for row in body["metrics"]}
    assert metrics == {"loss": ([1.5, 1.25], [True, True]), "top1": ([50.0, None], [True, False])}
    assert [(r["key"], r["values"]) for r in body["results"]] == [("epochs", [2, None])]  # numbers only
    (evaluation,) = body["evaluations"]
    assert evaluation == {"section": "evaluation", "key": "knn.top1.20", "values": [61.5, None],
                          "present": [True, False], "sources": [newest, None]}
    assert body["runs"][0]["evaluations"] == {"knn": newest} and body["runs"][1]["evaluations"] == {}

    # one run alone: nothing differs
    alone = lab.client.get("/api/v1/compare", params={"runs": str(a)}).json()
    assert alone["spec_diff"] == [] and alone["same_spec_keys"] == 8


def test_table_downloads_csv_and_json(lab):
    a = make_run(lab, 'comma, "quote"\nline', {**SPEC_A, "cmd": "=HYPERLINK(1)"}, last={"loss": 0.1 + 0.2})
    b = make_run(lab, "b", SPEC_B, last={"loss": 1.0})
    response = lab.client.get("/api/v1/compare.csv", params={"runs": f"{a},{b}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == f'attachment; filename="compare-{a}-{b}.csv"'
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["section", "key", f'#{a} comma, "quote"\nline', f"#{b} b"]  # quoted, intact
    by_key = {(r[0], r[1]): r[2:] for r in rows[1:]}
    assert by_key[("spec", "cmd")] == ["'=HYPERLINK(1)", ""]  # a formula is not run; missing is empty
    assert by_key[("spec", "only_a")] == ["1", ""]
    assert by_key[("spec", "nullable")] == ["", "null"]
    assert by_key[("spec", "data.mean")] == ["[0.5]", "[0.4]"]
    assert float(by_key[("metric", "loss")][0]) == 0.1 + 0.2  # full precision
    assert all(section in {"spec", "metric", "result", "evaluation"} for section, _ in by_key)
    assert ("spec", "optim.num_epochs") not in by_key  # the same in both: not in the table

    download = lab.client.get("/api/v1/compare.json", params={"runs": f"{a},{b}"})
    assert download.headers["content-disposition"] == f'attachment; filename="compare-{a}-{b}.json"'
    assert download.json() == lab.client.get("/api/v1/compare", params={"runs": f"{a},{b}"}).json()


HOSTILE_IDS = ["", " ", "1,abc", "1,,2", "0", "-1", "1.5", "99999999999", "\uff11", "1\x00", "%ED%A0%80", "%FF", "1;2",
               "x" * 401, ",".join(str(i) for i in range(1, MAX_RUNS + 2))]


def test_hostile_run_ids_are_422_naming_runs(lab):
    """Percent-escapes are sent as they are: bytes that are no UTF-8 (a lone surrogate's, 0xFF)."""
    for runs in HOSTILE_IDS:
        query = f"runs={runs}" if runs.startswith("%") else urlencode({"runs": runs})
        for path in ("/api/v1/compare", "/api/v1/compare.csv", "/api/v1/compare.json", "/api/v1/compare/series"):
            response = lab.client.get(f"{path}?{query}&key=loss")
            assert response.status_code == 422, (path, runs, response.text)
            assert any(item["loc"] == ["query", "runs"] for item in response.json()["detail"]), response.text


def test_unknown_ids_are_404_naming_the_id_and_reads_need_credentials(lab):
    a = make_run(lab, "a", SPEC_A)
    for path in ("/api/v1/compare", "/api/v1/compare.csv", "/api/v1/compare.json", "/api/v1/compare/series"):
        response = lab.client.get(path, params={"runs": f"{a},424242", "key": "loss"})
        assert response.status_code == 404 and response.json() == {"detail": "run 424242 does not exist"}
        assert lab.anon.get(path, params={"runs": str(a), "key": "loss"}).status_code == 401
    missing = lab.client.get("/api/v1/compare", params={"runs": ",".join(str(a) for _ in range(MAX_RUNS + 5))})
    assert missing.status_code == 200  # repeats of one id are one run


def test_series_on_each_x_axis(lab):
    loss = [("loss", s, 10.0 / s, T0 + 2.0 * s) for s in range(1, 21)]
    epoch = [("epoch", s, s / 10, T0 + 2.0 * s) for s in (5, 10, 15, 20)]  # 10 steps an epoch
    a = make_run(lab, "a", {"data": {"batch_size": 32}, "optim": {"num_epochs": 2}}, points=loss + epoch,
                 progress_total=20)
    # no epoch metric: its epoch count over its total steps (4 epochs of 10 steps)
    b = make_run(lab, "b", {"batch_size": 16, "epochs": 4}, points=loss[:5], progress_total=40)
    c = make_run(lab, "c", {"other": 1}, points=loss[:3])  # no batch size, no epochs
    d = make_run(lab, "d", {"other": 1}, points=[("acc", 1, 0.5, T0)])  # no loss at all

    def series(x: str) -> dict[int, dict]:
        response = lab.client.get("/api/v1/compare/series", params={"runs": f"{a},{b},{c},{d}", "key": "loss", "x": x})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["x_axis"] == x and body["key"] == "loss"
        return {r["run_id"]: r for r in body["runs"]}

    steps = series("step")
    assert steps[a]["x"] == list(range(1, 21)) and steps[a]["y"] == [10.0 / s for s in range(1, 21)]
    assert steps[d]["x"] == [] and steps[d]["note"] == "no 'loss'"
    epochs = series("epoch")
    assert epochs[a]["x"] == pytest.approx([s / 10 for s in range(1, 21)])  # interpolated, 0..5 from (0, 0)
    assert epochs[b]["x"] == pytest.approx([s / 10 for s in range(1, 6)])
    assert epochs[c]["x"] == [] and "epoch" in epochs[c]["note"]
    images = series("images")
    assert images[a]["x"] == [32.0 * s for s in range(1, 21)] and images[b]["x"] == [16.0 * s for s in range(1, 6)]
    assert images[c]["x"] == [] and "batch size" in images[c]["note"]
    times = series("time")  # seconds since the run started
    assert times[a]["x"] == pytest.approx([2.0 * s for s in range(1, 21)])
    assert times[c]["y"] == [10.0, 5.0, 10.0 / 3]

    for params in ({"x": "wall"}, {"key": ""}, {"key": "a\x00b"}, {"key": "k" * 101}, {"max_points": 1}):
        response = lab.client.get("/api/v1/compare/series", params={"runs": str(a), "key": "loss", **params})
        assert response.status_code == 422, params
