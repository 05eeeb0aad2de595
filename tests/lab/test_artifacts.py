"""Exports, imports and downloads: checksums, ranges, and every way a download or upload can go wrong."""

from __future__ import annotations

import hashlib
import json
import os

from server.core.models import Artifact
from tests.lab.conftest import artifact_files, count_rows, upload
from worker.tasks import execute_run


def _trained(lab, steps: int = 3) -> dict:
    run = lab.client.post(
        "/api/v1/runs", json={"kind": "faketrain", "spec": {"steps": steps}}, headers=lab.auth
    )
    assert run.status_code == 201
    assert execute_run(run.json()["id"], lab.settings) == "succeeded"
    return lab.client.get(f"/api/v1/runs/{run.json()['id']}").json()


def test_export_downloads_with_checksum_length_and_range(lab):
    parent = _trained(lab)
    response = lab.client.post(
        f"/api/v1/runs/{parent['id']}/exports",
        json={"format": "safetensors", "options": {"rgb_to_bgr": True}},
        headers=lab.auth,
    )
    assert response.status_code == 201, response.text
    export = response.json()
    assert export["kind"] == "export" and export["queue"] == "cpu" and export["parent_id"] == parent["id"]
    ckpt = parent["artifacts"][0]
    # the parent's checkpoint, pinned for the child under its sha256 (test_pinned_weights.py)
    assert export["spec"]["checkpoint"].endswith(f"pinned/{ckpt['sha256']}.json")
    assert lab.enqueue.sent[-1] == (export["id"], "cpu")
    assert execute_run(export["id"], lab.settings) == "succeeded"
    (artifact,) = lab.client.get(f"/api/v1/runs/{export['id']}/artifacts").json()
    assert artifact["kind"] == "export" and artifact["format"] == "safetensors"
    assert artifact["options"]["rgb_to_bgr"] is True

    download = lab.client.get(artifact["download_url"])
    assert download.status_code == 200
    body = download.content
    assert hashlib.sha256(body).hexdigest() == artifact["sha256"] == download.headers["x-content-sha256"]
    assert int(download.headers["content-length"]) == len(body) == artifact["size"]
    assert body.startswith(b"fake-export safetensors\n")
    assert "attachment" in download.headers["content-disposition"]
    part = lab.client.get(artifact["download_url"], headers={"Range": "bytes=2-9"})
    assert part.status_code == 206 and part.content == body[2:10]
    children = lab.client.get(f"/api/v1/runs/{parent['id']}").json()["children"]
    assert [c["id"] for c in children] == [export["id"]] and ckpt["kind"] == "checkpoint"


def test_export_needs_a_checkpoint_and_a_known_format(lab):
    run = lab.client.post("/api/v1/runs", json={"kind": "faketrain"}, headers=lab.auth).json()
    response = lab.client.post(f"/api/v1/runs/{run['id']}/exports", json={"format": "onnx"}, headers=lab.auth)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "parent_id"]
    parent = _trained(lab)
    for body, loc in (
        ({"format": "onnx"}, ["body", "format"]),
        ({"format": "../x"}, ["body", "format"]),
        ({"format": "torchvision", "options": {"checkpoint": "/etc/passwd"}}, ["body", "options", "checkpoint"]),
    ):
        response = lab.client.post(f"/api/v1/runs/{parent['id']}/exports", json=body, headers=lab.auth)
        assert response.status_code == 422, body
        assert response.json()["detail"][0]["loc"] == loc
    assert (
        lab.client.post(
            "/api/v1/runs/999/exports", json={"format": "torchvision"}, headers=lab.auth
        ).status_code
        == 404
    )
    assert count_rows(lab, "runs") == 2


def test_download_refuses_foreign_missing_and_escaping_files(lab, tmp_path):
    parent = _trained(lab)
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    root = lab.settings.artifact_root
    os.symlink(outside, root / "runs" / "link.txt")
    with lab.session() as session:
        rows = {}
        for label, path in (
            ("dotdot", "../secret.txt"),
            ("absolute", str(outside)),
            ("symlink", "runs/link.txt"),
            ("missing", "runs/nothing-here.pt"),
        ):
            row = Artifact(run_id=parent["id"], kind="export", options={}, path=path, sha256="0" * 64, size=1)
            session.add(row)
            session.flush()
            rows[label] = row.id
        session.commit()
    for label in ("dotdot", "absolute", "symlink"):
        response = lab.client.get(f"/api/v1/artifacts/{rows[label]}/download")
        assert response.status_code == 403, label
        assert "not yours" not in response.text
    assert lab.client.get(f"/api/v1/artifacts/{rows['missing']}/download").status_code == 404
    assert lab.client.get("/api/v1/artifacts/987654/download").status_code == 404
    assert lab.client.get("/api/v1/artifacts/..%2F..%2Fetc%2Fpasswd/download").status_code in (404, 422)


def test_import_upload_then_evaluate_from_it(lab):
    payload = json.dumps({"step": 7, "weights": [1.0, 2.0]}).encode()
    response = upload(lab, payload, "official")
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["kind"] == "import" and run["queue"] == "cpu" and run["name"] == "official"
    (uploaded,) = lab.client.get(f"/api/v1/runs/{run['id']}/artifacts").json()
    assert uploaded["kind"] == "import" and uploaded["name"] == "official.pth"
    assert uploaded["sha256"] == hashlib.sha256(payload).hexdigest()
    assert execute_run(run["id"], lab.settings) == "succeeded"
    export = lab.client.post(
        f"/api/v1/runs/{run['id']}/exports", json={"format": "torchvision"}, headers=lab.auth
    )
    assert export.status_code == 201
    imported = lab.client.get(f"/api/v1/runs/{run['id']}/artifacts").json()[-1]
    assert imported["name"] == "imported.json"
    assert export.json()["spec"]["checkpoint"].endswith(f"pinned/{imported['sha256']}.json")


def test_oversize_or_unauthorised_upload_writes_nothing(lab):
    big = b"{" + b"0" * (lab.settings.max_upload_bytes + 10)
    headers = {**lab.auth, "Content-Type": "application/octet-stream"}
    response = lab.client.post("/api/v1/imports", content=big, headers=headers)
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    def chunked():  # no Content-Length: the cap is enforced while streaming
        for start in range(0, len(big), 1024):
            yield big[start : start + 1024]

    response = lab.client.post("/api/v1/imports", content=chunked(), headers=headers)
    assert response.status_code == 413
    assert lab.anon.post("/api/v1/imports", content=b"{}").status_code == 401
    bad_name = lab.client.post("/api/v1/imports", params={"name": "../x"}, content=b"{}", headers=headers)
    assert bad_name.status_code == 422
    assert count_rows(lab, "runs") == 0 and count_rows(lab, "artifacts") == 0
    assert artifact_files(lab.settings.artifact_root) == []
