"""The lab's retry path checks checkpoints against `artifacts.sha256` (issue #16, item 6).

A retried pretraining resumes from the old run's newest checkpoint; if that file's bytes no longer
match the digest recorded when it was written, the worker says so (naming the file) and takes the
previous checkpoint instead of resuming into corrupt weights.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from server.core.models import Artifact, LogLine, Run
from tests.lib.test_checkpoint_integrity import corrupt
from worker.tasks import execute_run


@pytest.fixture(params=["sqlite"])
def backend(request) -> str:  # the retry copy is backend-neutral; the state machine is tested on both
    return request.param


SPEC = {
    "optim": {"num_epochs": 3, "permanent": 1},
    "data": {"epoch_size": 64, "batch_size": 16},
    "runtime": {"print_freq": 1, "workers": 0, "device": "cpu"},
}


def test_retry_skips_a_corrupt_checkpoint_for_the_previous_one(lab):
    run = lab.client.post(
        "/api/v1/runs", json={"kind": "pretrain", "preset": "FashionMNIST/tiny", "spec": SPEC}, headers=lab.auth
    ).json()
    assert execute_run(run["id"], lab.settings) == "succeeded"
    with lab.session() as session:
        paths = [a.path for a in session.query(Artifact).filter_by(run_id=run["id"], kind="checkpoint")]
        assert [p.rsplit("/", 1)[-1] for p in paths] == [f"checkpoint_000{e}.pt" for e in (1, 2, 3)]
        # as if it had failed: only failed or cancelled runs can be retried
        session.execute(update(Run).where(Run.id == run["id"]).values(state="failed"))
        session.commit()
    corrupt(lab.settings.artifact_root / paths[-1])

    retry = lab.client.post(f"/api/v1/runs/{run['id']}/retry", headers=lab.auth).json()
    assert execute_run(retry["id"], lab.settings) == "succeeded"
    with lab.session() as session:
        lines = [line.message for line in session.query(LogLine).filter_by(run_id=retry["id"])]
    assert any(paths[-1] in line and "corrupt" in line for line in lines), lines
    assert any("resumed from 'checkpoint_0002.pt'" in line for line in lines), lines
