"""A run's metrics out at full resolution: CSV (quoting, exact floats, every point, pages crossed) and
JSON; a large run streams over real HTTP in many chunks with flat memory; the client saves both."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc

import httpx
import pytest
from sqlalchemy import insert, select

from benchmarks.serving import serve_in_thread
from obow_lab_client import LabClient, LabError
from server.core.models import Metric
from server.services import metrics_export
from tests.lab.test_compare import make_run

HOSTILE_KEYS = ["a,b", 'q"uote', "new\nline", "cr\rx", "=cmd()", "üñí", ""]


def _stored(lab, run_id: int) -> list[tuple[str, int, float, float]]:
    with lab.session() as session:
        rows = session.execute(
            select(Metric.key, Metric.step, Metric.value, Metric.time)
            .where(Metric.run_id == run_id)
            .order_by(Metric.key, Metric.step, Metric.id)
        ).all()
    return [tuple(r) for r in rows]


def test_csv_and_json_hold_every_point_exactly(lab, monkeypatch):
    monkeypatch.setattr(metrics_export, "PAGE", 700)  # many pages, and pages that split one step's points
    points = [("loss", s, 1 / (s + 3), 1.7e9 + s / 7) for s in range(3000)]
    points += [(k, s, -s * 0.1, 1.7e9) for k in HOSTILE_KEYS for s in range(3)]
    points += [("dup", 5, 1.0, 1.0)] * 3  # the same step logged three times: all three come out
    run_id = make_run(lab, "r", {}, points=points)
    other = make_run(lab, "other", {}, points=[("loss", 1, 9.0, 1.0)])  # never mixed in

    response = lab.client.get(f"/api/v1/runs/{run_id}/metrics.csv")
    assert response.status_code == 200 and response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == f'attachment; filename="run-{run_id}-metrics.csv"'
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["key", "step", "value", "time"]
    parsed = [(k, int(s), float(v), float(t)) for k, s, v, t in rows[1:]]
    expected = [("'=cmd()" if k == "=cmd()" else k, s, v, t) for k, s, v, t in _stored(lab, run_id)]
    assert parsed == expected and len(parsed) == len(points)  # full resolution, floats round-trip
    assert {"a,b", 'q"uote', "new\nline", "cr\rx", "'=cmd()", "üñí", ""} <= {p[0] for p in parsed}

    download = lab.client.get(f"/api/v1/runs/{run_id}/metrics.json")
    assert download.headers["content-disposition"] == f'attachment; filename="run-{run_id}-metrics.json"'
    body = download.json()
    assert body["run_id"] == run_id and body["columns"] == ["key", "step", "value", "time"]
    assert [tuple(p) for p in body["points"]] == _stored(lab, run_id)

    # pages of 2 over steps logged several times: a page's end falls inside each group of equal steps
    monkeypatch.setattr(metrics_export, "PAGE", 2)
    repeats = [("k", s, float(i), 0.0) for i, s in enumerate([1, 1, 1, 2, 3, 3, 3, 3, 3, 4])] + [("j", 7, 1.0, 0.0)]
    grouped = make_run(lab, "repeats", {}, points=repeats)
    body = lab.client.get(f"/api/v1/runs/{grouped}/metrics.json").json()
    assert [tuple(p) for p in body["points"]] == _stored(lab, grouped) and len(body["points"]) == 11

    empty = make_run(lab, "empty", {})
    assert lab.client.get(f"/api/v1/runs/{empty}/metrics.csv").text == "key,step,value,time\r\n"
    assert lab.client.get(f"/api/v1/runs/{empty}/metrics.json").json()["points"] == []
    for suffix in ("csv", "json"):
        assert lab.client.get(f"/api/v1/runs/999999/metrics.{suffix}").status_code == 404
        assert lab.client.get(f"/api/v1/runs/0/metrics.{suffix}").status_code == 422
        assert lab.anon.get(f"/api/v1/runs/{run_id}/metrics.{suffix}").status_code == 401
    assert other != run_id


def _insert(lab, run_id: int, n: int) -> None:
    with lab.session() as session:
        for start in range(0, n, 50_000):
            session.execute(insert(Metric), [
                {"run_id": run_id, "key": "loss", "step": s, "value": s * 0.5, "time": 1.7e9 + s}
                for s in range(start, min(n, start + 50_000))
            ])
        session.commit()


def _stream(base: str, lab, run_id: int) -> tuple[int, int, int]:
    """(chunks, bytes, peak Python memory of this process, server and client) of one download."""
    chunks = size = 0
    tracemalloc.start()
    try:
        with httpx.stream("GET", f"{base}/api/v1/runs/{run_id}/metrics.csv", headers=lab.auth, timeout=60) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():  # read and dropped, as a download to disk does
                chunks += 1
                size += len(chunk)
        return chunks, size, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("backend", ["postgresql"])  # the large run: on the production database only
def test_a_large_run_streams_in_flat_memory_and_the_client_saves_it(lab, tmp_path):
    n = 120_000
    small, large = (make_run(lab, name, {}, last={"loss": 0.0}) for name in ("small", "large"))
    _insert(lab, small, n // 10)
    _insert(lab, large, n)
    with serve_in_thread(lab.client.app) as base:
        _stream(base, lab, small)  # warm-up: one-time allocations (caches, connections) are not counted
        _, small_size, small_peak = _stream(base, lab, small)
        chunks, size, peak = _stream(base, lab, large)
        assert size > 9 * small_size and size > 3_000_000
        assert chunks >= n // metrics_export.PAGE  # sent page by page, not as one body
        # ten times the points, the same memory: a page at a time, never the whole body
        assert peak < small_peak + 1_000_000, (peak, small_peak, size)

        with LabClient(base, lab.token) as client:
            saved = client.download_metrics(large, tmp_path / "m.csv")
            saved_json = client.download_metrics(large, tmp_path / "m.json", fmt="json")
            assert [r["id"] for r in client.compare([large, small])["runs"]] == [large, small]
            table = client.download_comparison([large, small], tmp_path / "t.csv")
            assert table.read_text().startswith(f"section,key,#{large} large,#{small} small")
            on_images = client.compare_series([small], "loss", x="images")["runs"][0]
            assert on_images["x"] == [] and "batch size" in on_images["note"]
            with pytest.raises(LabError) as refused:
                client.compare([])
            assert refused.value.status == 422
    with open(saved, newline="") as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == n + 1 and rows[-1] == ["loss", str(n - 1), repr((n - 1) * 0.5), repr(1.7e9 + n - 1)]
    assert len(json.loads(saved_json.read_text())["points"]) == n
