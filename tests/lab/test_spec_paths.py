"""Spec paths never read server files (issue #16, item 2), on SQLite and PostgreSQL.

Every path-like field (data folders, split, label and class files, cache folders) must resolve, symlinks
followed, inside the allowed roots: checked at submit (a 422 naming the field and the roots, nothing
stored) and again in the worker (a symlink swapped after submit). The library's readers of such files
name the file and line numbers in their errors, never what the file holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from obow.data.sources import ArraySource, FileListSource
from obow.errors import ObowError
from server.core.models import Run
from tests.lab.conftest import count_rows
from worker.tasks import execute_run

SECRET = "DATABASE_URL=postgresql://lab:hunter2@db/obow"


def _parent(lab) -> int:
    run = lab.client.post("/api/v1/runs", json={"kind": "faketrain", "spec": {"steps": 2}}, headers=lab.auth).json()
    assert execute_run(run["id"], lab.settings) == "succeeded"
    return run["id"]


def _refused(lab, body: dict, loc: list, *, roots: bool = True) -> None:
    response = lab.client.post("/api/v1/runs", json=body, headers=lab.auth)
    assert response.status_code == 422, (body, response.text)
    errors = response.json()["detail"]
    assert errors[0]["loc"] == loc, errors
    if roots:  # the message says where paths may point
        assert any(str(root) in errors[0]["msg"] for root in lab.settings.data_roots + lab.settings.cache_roots)


def test_paths_outside_the_data_roots_are_422s_naming_the_field_and_roots(lab, tmp_path):
    data_root = lab.settings.home / "data"
    (data_root / "fmnist").mkdir(parents=True)
    (data_root / "escape").symlink_to("/etc")  # inside a root by name, outside once resolved
    (data_root / "splits.txt").symlink_to("/proc/self/environ")
    parent = _parent(lab)
    before = count_rows(lab, "runs")
    sent = list(lab.enqueue.sent)
    child = {"parent_id": parent}
    for kind, spec, loc in (
        ("semisup", {"split_file": "/proc/self/environ"}, ["split_file"]),
        ("semisup", {"split_file": str(data_root / "splits.txt")}, ["split_file"]),
        ("semisup", {"data_dir": "/etc"}, ["data_dir"]),
        ("linear", {"data_dir": "/proc/self"}, ["data_dir"]),
        ("linear", {"data_dir": str(data_root / "escape")}, ["data_dir"]),
        ("knn", {"data_dir": str(data_root / "escape" / "passwd")}, ["data_dir"]),
        ("knn", {"data_dir": str(data_root / ".." / ".." / "etc")}, ["data_dir"]),
        ("svm", {"labels_file": "/etc/shadow"}, ["labels_file"]),
        ("fewshot", {"novel_classes_file": "/proc/self/cmdline"}, ["novel_classes_file"]),
        ("linear", {"cache_dir": "/tmp/elsewhere"}, ["cache_dir"]),
        ("words", {"data_dir": "/root"}, ["data_dir"]),
    ):
        _refused(lab, {"kind": kind, "spec": spec, **child}, ["body", "spec", *loc])
    _refused(lab, {"kind": "semisup", "spec": {"split_file": "data/splits.txt"}, **child},
             ["body", "spec", "split_file"])  # relative data paths are refused too
    _refused(lab, {"kind": "linear", "spec": {"cache_dir": "../../other_run"}, **child},
             ["body", "spec", "cache_dir"], roots=False)
    _refused(lab, {"kind": "pretrain", "preset": "FashionMNIST/tiny", "spec": {"data": {"data_dir": "/etc"}}},
             ["body", "spec", "data", "data_dir"])
    assert count_rows(lab, "runs") == before and lab.enqueue.sent == sent

    ok = lab.client.post(
        "/api/v1/runs",
        json={"kind": "linear", "parent_id": parent, "spec": {"data_dir": str(data_root / "fmnist"), "cache_dir": "c"}},
        headers=lab.auth,
    )
    assert ok.status_code == 201, ok.text


def test_the_worker_refuses_a_path_made_to_point_outside_after_submit(lab):
    data_root = lab.settings.home / "data"
    (data_root / "real").mkdir(parents=True)
    link = data_root / "current"
    link.symlink_to(data_root / "real")
    run = lab.client.post(
        "/api/v1/runs", json={"kind": "faketrain", "spec": {"steps": 3, "data_dir": str(link)}}, headers=lab.auth
    ).json()
    assert run["state"] == "queued"
    link.unlink()
    link.symlink_to("/proc/self")  # swapped between submit and the worker
    assert execute_run(run["id"], lab.settings) == "failed"
    with lab.session() as session:
        stored = session.get(Run, run["id"])
        assert "data_dir" in stored.error and "OBOW_LAB_DATA_ROOTS" in stored.error
        assert stored.progress_done == 0 and not stored.metric_keys  # the library never started


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_split_file_errors_name_lines_never_contents(tmp_path):
    from obow.eval.splits import read_split

    environ = _file(tmp_path, "environ", f"HOME=/root\n{SECRET}\nOBOW_LAB_SECRET_KEY=s3cr3t\n")
    folder = FileListSource([tmp_path / "a.png", tmp_path / "b.png"], [0, 1], ["x", "y"])
    memory = ArraySource(__import__("numpy").zeros((4, 2, 2), dtype="uint8"), [0, 1, 0, 1], ["x", "y"])
    for source in (folder, memory):
        with pytest.raises(ObowError) as err:
            read_split(environ, source)
        message = str(err.value)
        assert "hunter2" not in message and "s3cr3t" not in message and "HOME" not in message
        assert str(environ) in message and "line" in message
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(ObowError) as err:
        read_split(binary, folder)
    assert "hunter2" not in str(err.value) and "UTF-8" in str(err.value)
    assert read_split(_file(tmp_path, "ok", "0\ta.png\n# comment\n"), folder) == [0]


def test_label_and_class_file_errors_never_quote_entries(tmp_path):
    from obow.config.eval import FewshotSpec
    from obow.eval.fewshot import novel_classes
    from obow.eval.svm import label_matrix

    folder = FileListSource([tmp_path / "a.png"], [0], ["x"])
    labels = _file(tmp_path, "labels.json", json.dumps({"classes": ["x"], "labels": {"a.png": [SECRET]}}))
    with pytest.raises(ObowError) as err:
        label_matrix(folder, str(labels), "train")
    assert "hunter2" not in str(err.value) and "a.png" in str(err.value) and "entry 0" in str(err.value)
    novel = _file(tmp_path, "novel.json", json.dumps({"novel_classes": ["x", SECRET]}))
    spec = FewshotSpec(checkpoint="c.pt", novel_classes_file=str(novel))
    with pytest.raises(ObowError) as err:
        novel_classes(spec, ["x", "y"])
    assert "hunter2" not in str(err.value) and "entry 1" in str(err.value)
    not_json = _file(tmp_path, "environ.json", SECRET)
    for call in (lambda: label_matrix(folder, str(not_json), "train"),
                 lambda: novel_classes(FewshotSpec(checkpoint="c.pt", novel_classes_file=str(not_json)), ["x"])):
        with pytest.raises(ObowError) as err:
            call()
        assert "hunter2" not in str(err.value)
