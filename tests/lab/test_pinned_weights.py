"""A child of a still-running pretraining keeps its weights (issue #16, item 7), on SQLite and PostgreSQL.

The parent writes a new checkpoint file and deletes the previous one, as the real trainer does; an
export (or evaluation) submitted in between named the file that the parent then deleted, and failed.
Now the lab pins the weights at submit (a content-addressed hard link under ARTIFACT_ROOT/pinned).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

from server.core.models import Artifact
from worker.tasks import execute_run


def _wait(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_an_export_of_a_running_pretraining_survives_its_checkpoint_rotation(lab):
    parent = lab.client.post(
        "/api/v1/runs",
        json={"kind": "faketrain", "spec": {"steps": 60, "sleep_s": 0.05, "checkpoint_every": 3, "rotate": True}},
        headers=lab.auth,
    ).json()
    outcome: list[str] = []
    trainer = threading.Thread(target=lambda: outcome.append(execute_run(parent["id"], lab.settings)))
    trainer.start()
    try:
        def newest() -> Artifact | None:
            with lab.session() as session:
                return session.query(Artifact).filter_by(run_id=parent["id"]).order_by(Artifact.id.desc()).first()

        _wait(lambda: newest() is not None)
        child = lab.client.post(
            f"/api/v1/runs/{parent['id']}/exports", json={"format": "safetensors"}, headers=lab.auth
        )
        assert child.status_code == 201, child.text
        named = Path(child.json()["spec"]["checkpoint"])
        assert named.parent == (lab.settings.artifact_root / "pinned").resolve()
        pinned_bytes = named.read_bytes()
        assert named.name.startswith(hashlib.sha256(pinned_bytes).hexdigest())
        with lab.session() as session:
            source = session.query(Artifact).filter_by(run_id=parent["id"], sha256=named.stem).one()
        original = lab.settings.artifact_root / source.path
        _wait(lambda: not original.exists())  # the parent moved on and deleted the file the child came from
    finally:
        trainer.join(timeout=60)
    assert outcome == ["succeeded"]
    assert execute_run(child.json()["id"], lab.settings) == "succeeded"
    detail = lab.client.get(f"/api/v1/runs/{child.json()['id']}", headers=lab.auth).json()
    exported = lab.settings.artifact_root / "runs" / str(detail["id"]) / "weights_safetensors.bin"
    assert exported.read_bytes() == b"fake-export safetensors\n" + pinned_bytes
    assert json.loads(pinned_bytes)["step"] == int(original.stem.split("_")[1])
    # the pinned folder holds the one content-addressed link and the digest list the library checks
    assert sorted(p.name for p in named.parent.iterdir()) == sorted([named.name, "SHA256SUMS"])
