"""Hostile request bodies and hostile stored rows (issue #16, items 1 and 8), on SQLite and PostgreSQL.

Item 1: invalid Unicode anywhere in a JSON body (a lone surrogate written as the JSON escape `\\ud800`,
NUL, bytes that are not UTF-8) is a 422 naming where it is, before anything is stored; and a row that
was stored with such text anyway (by hand, by an older version) never takes a list, a run, the parent's
page or the runs page down.
Item 8: numbers that are not finite, or beyond what a column or the library can hold, are 422s naming the
field, with nothing stored.
"""

from __future__ import annotations

import importlib
import json

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DataError

from tests.lab.conftest import count_rows

SURROGATE_BODIES = [
    # (raw JSON body, the loc the 422 must name)
    ('{"kind": "faketrain", "spec": {"data_dir": "/x\\ud800"}}', ["body", "spec", "data_dir"]),
    ('{"kind": "faketrain\\ud800"}', ["body", "kind"]),
    ('{"kind": "faketrain", "preset": "\\udfff"}', ["body", "preset"]),
    ('{"kind": "faketrain", "spec": {"name": "a\\ud83d"}}', ["body", "spec", "name"]),
    ('{"kind": "faketrain", "spec": {"x\\ud800": 1}}', ["body", "spec", "x\ufffd"]),
    ('{"kind": "faketrain", "unknown\\ud800": 1}', ["body", "unknown\ufffd"]),
    ('{"kind": "faketrain", "spec": {"name": "a\\u0000"}}', ["body", "spec", "name"]),
    ('{"kind": "pretrain", "spec": {"data": {"data_dir": ["\\ud800"]}}}', ["body", "spec", "data", "data_dir", 0]),
]


def _post(lab, body: str | bytes, path: str = "/api/v1/runs"):
    return lab.client.post(path, content=body, headers={**lab.auth, "Content-Type": "application/json"})


@pytest.mark.parametrize("body,loc", SURROGATE_BODIES)
def test_invalid_unicode_anywhere_in_a_body_is_a_422_naming_it(lab, body, loc):
    response = _post(lab, body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert count_rows(lab, "runs") == 0 and lab.enqueue.sent == []
    assert lab.client.get("/api/v1/runs", headers=lab.auth).json()["total"] == 0


def test_bytes_that_are_not_utf8_are_a_422(lab):
    response = _post(lab, b'{"kind": "faketrain", "spec": {"name": "\xff\xfe"}}')
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"
    assert count_rows(lab, "runs") == 0


def test_invalid_unicode_in_export_and_words_bodies(lab):
    parent = lab.client.post("/api/v1/runs", json={"kind": "faketrain", "spec": {"steps": 2}}, headers=lab.auth)
    run_id = parent.json()["id"]
    exports = _post(lab, '{"format": "torchvision", "options": {"k\\ud800": "v"}}', f"/api/v1/runs/{run_id}/exports")
    assert exports.status_code == 422 and exports.json()["detail"][0]["loc"][:2] == ["body", "options"]
    words = _post(lab, '{"levels": ["block\\ud800"]}', f"/api/v1/runs/{run_id}/words")
    assert words.status_code == 422 and words.json()["detail"][0]["loc"] == ["body", "levels", 0]
    assert count_rows(lab, "runs") == 1


def _store_hostile_row(lab, run_id: int, child_id: int) -> bool:
    """Write what the checks now refuse straight into the database: lone surrogates and NUL in the JSON
    columns (SQLite's and PostgreSQL's `json` keep `\\ud800` and `\\u0000` escapes; PostgreSQL's `jsonb`,
    which runs.spec, result and last_metrics are since migration 0007_organise, refuse them), NaN and Infinity
    where SQLite keeps them, invalid UTF-8 bytes in SQLite text columns, a JSON column that is not JSON.
    Returns whether the search columns hold the hostile values (False: the database refused them)."""
    nasty = json.dumps({"data_dir": "/x\ud800", "n\x00ul": "a\x00b", "list": ["\udfff"]})
    with lab.session() as session:
        postgres = session.get_bind().dialect.name == "postgresql"
        cast = "CAST(:v AS json)" if postgres else ":v"
        binary = "CAST(:v AS jsonb)" if postgres else ":v"
        if postgres:
            with pytest.raises(DataError):
                session.execute(text(f"UPDATE runs SET spec = {binary} WHERE id = :id"), {"v": nasty, "id": run_id})
            session.rollback()
        for rid in (run_id, child_id):
            if not postgres:
                session.execute(
                    text(f"UPDATE runs SET spec = {cast}, result = {cast} WHERE id = :id"), {"v": nasty, "id": rid}
                )
            session.execute(
                text(f"UPDATE runs SET metric_keys = {cast} WHERE id = :id"),
                {"v": json.dumps(["lo\ud800ss"]), "id": rid},
            )
            if not postgres:
                session.execute(
                    text(f"UPDATE runs SET last_metrics = {cast} WHERE id = :id"),
                    {"v": json.dumps({"lo\ud800ss": 1.0, "x": "\udfff"}), "id": rid},
                )
        if not postgres:  # SQLite keeps whatever it is given
            session.execute(
                text("UPDATE runs SET name = CAST(X'66ff00fe' AS TEXT), error = CAST(X'c3' AS TEXT), "
                     "result = 'not json {', last_metrics = '{\"loss\": NaN, \"lr\": Infinity}' WHERE id = :id"),
                {"id": child_id},
            )
            session.execute(
                text(
                    "INSERT INTO log_lines (run_id, time, level, message) "
                    "VALUES (:id, 1.0, 'info', CAST(X'ff00' AS TEXT))"
                ),
                {"id": run_id},
            )
        session.commit()
    return not postgres


def test_a_stored_row_that_cannot_be_serialised_never_takes_a_list_down(lab):
    parent = lab.client.post("/api/v1/runs", json={"kind": "faketrain", "spec": {"steps": 2}}, headers=lab.auth).json()
    from worker.tasks import execute_run

    assert execute_run(parent["id"], lab.settings) == "succeeded"
    child = lab.client.post("/api/v1/runs", json={"kind": "export", "parent_id": parent["id"]}, headers=lab.auth).json()
    in_search_columns = _store_hostile_row(lab, parent["id"], child["id"])

    listing = lab.client.get("/api/v1/runs", headers=lab.auth)
    assert listing.status_code == 200 and listing.json()["total"] == 2
    stored = {r["id"]: r for r in listing.json()["items"]}[parent["id"]]
    spec = lab.client.get(f"/api/v1/runs/{parent['id']}", headers=lab.auth).json()["spec"]  # lists leave it out
    assert stored["metric_keys"] == ["lo\ufffdss"]
    if in_search_columns:
        assert spec["data_dir"] == "/x\ufffd" and spec["n\\0ul"] == "a\\0b"
        assert stored["last_metrics"] == {"lo\ufffdss": 1.0}
    for rid in (parent["id"], child["id"]):
        detail = lab.client.get(f"/api/v1/runs/{rid}", headers=lab.auth)
        assert detail.status_code == 200, detail.text
    detail = lab.client.get(f"/api/v1/runs/{parent['id']}", headers=lab.auth).json()
    assert [c["id"] for c in detail["children"]] == [child["id"]]
    assert lab.client.get(f"/api/v1/runs/{parent['id']}/logs", headers=lab.auth).status_code == 200
    assert lab.client.get("/api/v1/runs", params={"parent_id": parent["id"]}, headers=lab.auth).status_code == 200
    lab.client.post("/login", data={"token": lab.token})  # pages may need a session
    for page in ("/", f"/runs/{parent['id']}", f"/runs/{child['id']}", f"/compare?ids={parent['id']}",
                 f"/runs/new?kind=export&parent={parent['id']}"):
        response = lab.client.get(page)
        assert response.status_code == 200, page
    assert "data_dir" in lab.client.get(f"/runs/{parent['id']}").text


# -- item 8: numbers ---------------------------------------------------------------------------------

NUMBER_CASES = [
    # (kind, preset, spec, loc of the 422)
    ("pretrain", "FashionMNIST/tiny", {"optim": {"num_epochs": 1e26}}, ["optim", "num_epochs"]),
    ("pretrain", "FashionMNIST/tiny", {"optim": {"num_epochs": 10**30}}, ["optim", "num_epochs"]),
    ("pretrain", "FashionMNIST/tiny", {"optim": {"lr": "inf"}}, ["optim", "lr"]),
    ("pretrain", "FashionMNIST/tiny", {"optim": {"lr": "Infinity"}}, ["optim", "lr"]),
    ("pretrain", "FashionMNIST/tiny", {"optim": {"lr": "nan"}}, ["optim", "lr"]),
    ("pretrain", "FashionMNIST/tiny", {"optim": {"weight_decay": "-inf"}}, ["optim", "weight_decay"]),
    ("pretrain", "FashionMNIST/tiny", {"data": {"batch_size": 2**40}}, ["data", "batch_size"]),
    ("pretrain", "FashionMNIST/tiny", {"data": {"mean": [0.5, "nan", 0.5]}}, ["data", "mean", 1]),
    ("pretrain", "FashionMNIST/tiny", {"runtime": {"seed": 2**64}}, ["runtime", "seed"]),
    ("pretrain", "FashionMNIST/tiny", {"runtime": {"time_budget_s": "inf"}}, ["runtime", "time_budget_s"]),
    ("pretrain", "FashionMNIST/tiny", {"model": {"bow_extractor_opts": {"inv_delta": "inf"}}},
     ["model", "bow_extractor_opts", "inv_delta"]),
    ("pretrain", "FashionMNIST/tiny", {"optim": {"lr_schedule": [10**20]}}, ["optim", "lr_schedule", 0]),
    ("faketrain", None, {"lr": "inf"}, ["lr"]),
    ("faketrain", None, {"sleep_s": "NaN"}, ["sleep_s"]),
]


@pytest.mark.parametrize("kind,preset,spec,loc", NUMBER_CASES)
def test_non_finite_and_huge_numbers_are_422s_naming_the_field(lab, kind, preset, spec, loc):
    body = {"kind": kind, "spec": spec, **({"preset": preset} if preset else {})}
    response = lab.client.post("/api/v1/runs", json=body, headers=lab.auth)
    assert response.status_code == 422, response.text
    locs = [e["loc"] for e in response.json()["detail"]]
    assert any(found[: 2 + len(loc)] == ["body", "spec", *loc] for found in locs), locs
    assert count_rows(lab, "runs") == 0 and lab.enqueue.sent == []


def test_numbers_of_evaluation_and_words_children_are_bounded(lab):
    from worker.tasks import execute_run

    parent = lab.client.post("/api/v1/runs", json={"kind": "faketrain", "spec": {"steps": 2}}, headers=lab.auth).json()
    assert execute_run(parent["id"], lab.settings) == "succeeded"
    before = count_rows(lab, "runs")
    for kind, spec, loc in (
        ("linear", {"epochs": 1e26}, ["epochs"]),
        ("linear", {"lr": "inf"}, ["lr"]),
        ("semisup", {"lr_head": "nan"}, ["lr_head"]),
        ("fewshot", {"episodes": 10**12}, ["episodes"]),
        ("knn", {"temperature": "Infinity"}, ["temperature"]),
        ("svm", {"costs": [1.0, "inf"]}, ["costs", 1]),
        ("knn", {"seed": -1}, ["seed"]),
    ):
        response = lab.client.post(
            "/api/v1/runs", json={"kind": kind, "parent_id": parent["id"], "spec": spec}, headers=lab.auth
        )
        assert response.status_code == 422, (kind, response.text)
        assert response.json()["detail"][0]["loc"][: 2 + len(loc)] == ["body", "spec", *loc], response.text
    words = lab.client.post(f"/api/v1/runs/{parent['id']}/words", json={"max_images": 2**40}, headers=lab.auth)
    assert words.status_code == 422 and words.json()["detail"][0]["loc"] == ["body", "max_images"]
    assert count_rows(lab, "runs") == before


def test_every_numeric_field_of_every_spec_class_has_finite_bounds():
    """Read from the JSON schemas the API publishes (`/kinds`, the form): every integer and number, list
    items and per-level alternatives included, has a lower and an upper bound."""
    from tests.lab.conftest import LIBRARY_KINDS

    unbounded = []

    def walk(node, where, defs):
        if isinstance(node, dict):
            if "$ref" in node:
                walk(defs[node["$ref"].split("/")[-1]], where, defs)
                return
            if node.get("type") in ("integer", "number"):
                low = "minimum" in node or "exclusiveMinimum" in node
                high = "maximum" in node or "exclusiveMaximum" in node
                if not (low and high):
                    unbounded.append(where)
            for key, value in node.items():
                if key != "$defs":
                    walk(value, f"{where}.{key}", defs)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}[{index}]", defs)

    for kind in LIBRARY_KINDS:
        module, name = LIBRARY_KINDS[kind][0].split(":")
        schema = getattr(importlib.import_module(module), name).model_json_schema()
        walk(schema, kind, schema.get("$defs", {}))
    assert unbounded == []
