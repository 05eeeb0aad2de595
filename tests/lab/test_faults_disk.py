"""A full or unwritable artifact root while a real pretraining checkpoints: the run fails with a clear
message, the previous checkpoint stays intact and loadable, nothing is left half-written or `running`,
metrics and logs (in the database, not on the artifact disk) are all kept, and a retry after the disk
is fixed resumes from the intact checkpoint and finishes.

The artifact root is a small tmpfs mounted by the test (root may ignore chmod, so "unwritable" is
`chattr +i`). The fault is injected from the reporter's `artifact()` right after the first checkpoint
is recorded, in the worker's own thread, so the next checkpoint is the first write to hit it whatever
the machine's speed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from obow import runs
from obow.io.checkpoint import load_training_checkpoint
from tests.lab.conftest import LIBRARY_KINDS, PRETRAIN, Lab
from worker import tasks
from worker.reporter import DbReporter

# 1 epoch of 4 iterations, a checkpoint after each: it1 (kept), it2 (the one the fault hits), ...
SPEC = {**PRETRAIN, "spec": {**PRETRAIN["spec"], "runtime": {**PRETRAIN["spec"]["runtime"], "save_every_iters": 1}}}
TMPFS_SIZE = "24m"  # a few tiny checkpoints (about 1 MB each) and their retry copy


@pytest.fixture
def backend() -> str:
    """PostgreSQL only (the production database): the subject here is the artifact disk, not the DB."""
    return "postgresql"


def _sh(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"{' '.join(argv)} failed (the test needs root, tmpfs and chattr): {done.stderr.strip()}")


@pytest.fixture
def disk_lab(lab: Lab, request) -> Iterator[Lab]:
    """The lab with the real `pretrain` kind and its ARTIFACT_ROOT on a fresh small tmpfs."""
    saved = dict(runs.RUN_KINDS)
    runs.RUN_KINDS.update(LIBRARY_KINDS)
    request.addfinalizer(lambda: (runs.RUN_KINDS.clear(), runs.RUN_KINDS.update(saved)))
    root = lab.settings.artifact_root
    root.mkdir(parents=True, exist_ok=True)
    # no free-space reserve: these faults hit the checkpoint write itself (the reserve check, which stops a
    # run earlier while the reason can still be recorded, is test_disk_full_home.py)
    lab.settings.min_free_mb = 0
    _sh("mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(root))
    try:
        yield lab
    finally:
        subprocess.run(["chattr", "-R", "-i", str(root)], capture_output=True)
        subprocess.run(["umount", "-l", str(root)], check=True)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem says ENOSPC; the disk is then really full."""
    filler = directory / "filler.bin"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    return filler


@contextlib.contextmanager
def after_first_checkpoint(monkeypatch, fault: Callable[[Path], None]) -> Iterator[list[Path]]:
    """Run `fault(checkpoint_path)` in the worker, just after the first checkpoint has been recorded."""
    seen: list[Path] = []

    class FaultyDisk(DbReporter):
        def artifact(self, path, kind, meta) -> None:
            super().artifact(path, kind, meta)
            if kind == "checkpoint" and not seen:
                seen.append(Path(path))
                fault(Path(path))

    monkeypatch.setattr(tasks, "DbReporter", FaultyDisk)
    yield seen
    monkeypatch.setattr(tasks, "DbReporter", DbReporter)


def execute(lab: Lab, run_id: int, timeout: float = 120) -> str:
    """The worker task in a thread, as a worker would run it; a hung run fails the test, not the session."""
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(tasks.execute_run(run_id, lab.settings)), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"run {run_id} still executing after {timeout} s"
    assert outcome, f"execute_run({run_id}) raised (see the captured output)"
    return outcome[0]


def submit(lab: Lab) -> int:
    response = lab.client.post("/api/v1/runs", json=SPEC, headers=lab.auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def detail(lab: Lab, run_id: int) -> dict:
    return lab.client.get(f"/api/v1/runs/{run_id}").json()


def loss_steps(lab: Lab, run_id: int) -> list[int]:
    series = lab.client.get(f"/api/v1/runs/{run_id}/metrics", params={"keys": "loss_total"}).json()["series"]
    return series[0]["steps"] if series else []


def log_messages(lab: Lab, run_id: int) -> list[str]:
    return [line["message"] for line in lab.client.get(f"/api/v1/runs/{run_id}/logs").json()]


def assert_failed_keeping_previous(lab: Lab, run_id: int, first: Path, reason: tuple[str, ...]) -> dict:
    """The shared expectations of a checkpoint write that the disk refused."""
    run = detail(lab, run_id)
    assert run["state"] == "failed", run
    error = run["error"]
    assert "cannot write checkpoint" in error and "checkpoint_0000_it2.pt" in error, error
    assert any(r in error for r in reason), error
    assert f"the previous checkpoint '{first.name}' is intact" in error, error
    assert "Traceback" not in error and "\n" not in error
    (attempt,) = run["attempts"]
    assert attempt["outcome"] == "failed" and attempt["ended_at"] and attempt["error"] == error
    # the artifact row still points at the first checkpoint, whose bytes are the recorded ones
    (ckpt,) = [a for a in run["artifacts"] if a["kind"] == "checkpoint"]
    assert ckpt["name"] == first.name and first.is_file()
    assert hashlib.sha256(first.read_bytes()).hexdigest() == ckpt["sha256"] and first.stat().st_size == ckpt["size"]
    payload = load_training_checkpoint(first)
    assert (payload["epoch"], payload["iteration"]) == (0, 1)
    # nothing torn: no temp file, no partial it2 checkpoint
    root = lab.settings.artifact_root
    assert list(root.rglob(".checkpoint_*.tmp")) == []
    assert not (first.parent / "checkpoint_0000_it2.pt").exists()
    # metrics and logs up to the failure are all in the database: iterations 1 and 2 were computed
    assert loss_steps(lab, run_id) == [1, 2]
    logs = log_messages(lab, run_id)
    assert any("it 1/4" in m for m in logs) and any("it 2/4" in m for m in logs), logs
    return run


def test_disk_full_keeps_the_previous_checkpoint_and_the_retry_loses_nothing(disk_lab, monkeypatch):
    lab, root = disk_lab, disk_lab.settings.artifact_root
    filler: list[Path] = []
    run_id = submit(lab)
    with after_first_checkpoint(monkeypatch, lambda _: filler.append(fill(root))) as seen:
        assert execute(lab, run_id) == "failed"
    assert filler and seen
    assert_failed_keeping_previous(lab, run_id, seen[0], ("No space left on device",))

    # the operator frees space and retries: the retry starts from the intact it1 checkpoint
    filler[0].unlink()
    retry = lab.client.post(f"/api/v1/runs/{run_id}/retry", headers=lab.auth)
    assert retry.status_code == 201, retry.text
    retry_id = retry.json()["id"]
    assert execute(lab, retry_id) == "succeeded", detail(lab, retry_id)["error"]
    done = detail(lab, retry_id)
    assert (done["progress_done"], done["progress_total"]) == (4, 4)
    assert "resumed from 'checkpoint_0000_it1.pt' (epoch 0, iteration 1)" in log_messages(lab, retry_id)
    assert loss_steps(lab, retry_id) == [2, 3, 4]  # with the failed run's [1, 2]: every iteration
    (final,) = [a for a in done["artifacts"] if a["kind"] == "checkpoint"]
    assert final["name"] == "checkpoint_0001.pt"
    assert load_training_checkpoint(root / "runs" / str(retry_id) / final["name"])["iteration"] == 4
    # the failed run's checkpoint is untouched by the retry (copied, not moved)
    assert hashlib.sha256(seen[0].read_bytes()).hexdigest() == detail(lab, run_id)["artifacts"][0]["sha256"]
    assert list(root.rglob(".checkpoint_*.tmp")) == []


def test_unwritable_run_folder_keeps_the_previous_checkpoint(disk_lab, monkeypatch):
    lab = disk_lab
    run_id = submit(lab)
    with after_first_checkpoint(monkeypatch, lambda ckpt: _sh("chattr", "+i", str(ckpt.parent))) as seen:
        assert execute(lab, run_id) == "failed"
    assert_failed_keeping_previous(lab, run_id, seen[0], ("Operation not permitted", "Permission denied"))


def test_unwritable_artifact_root_fails_the_run_before_it_starts(disk_lab):
    lab, root = disk_lab, disk_lab.settings.artifact_root
    run_id = submit(lab)
    _sh("chattr", "+i", str(root))
    assert execute(lab, run_id) == "failed"
    run = detail(lab, run_id)
    folder = root / "runs" / str(run_id)
    assert run["error"] == (
        f"cannot prepare the run's folder '{folder}': Operation not permitted (check ARTIFACT_ROOT: free space "
        f"and write permission)"
    )
    (attempt,) = run["attempts"]
    assert attempt["outcome"] == "failed" and attempt["ended_at"]
    assert lab.client.get("/api/v1/runs", params={"state": "running"}).json()["total"] == 0
    assert not folder.exists() and run["artifacts"] == [] and loss_steps(lab, run_id) == []


def test_full_artifact_root_fails_the_run_before_it_starts(disk_lab):
    """The folder can still be made (tmpfs directories take no blocks) but not the first file in it."""
    lab, root = disk_lab, disk_lab.settings.artifact_root
    run_id = submit(lab)
    fill(root)
    assert execute(lab, run_id) == "failed"
    run = detail(lab, run_id)
    folder = root / "runs" / str(run_id)
    assert run["error"] == (
        f"cannot write to the output folder '{folder}': No space left on device (free space and write permission)"
    )
    assert run["attempts"][0]["outcome"] == "failed"
    assert not any("Traceback" in m for m in log_messages(lab, run_id))
    assert [p.name for p in folder.iterdir()] == []  # no empty spec.yaml, no temp file
