"""Checkpoints are verified against the sha256 recorded when they were written (issue #16, item 6).

A checkpoint whose bytes changed on disk used to load (torch does not check), and the run failed later
blaming the learning rate. Now every load checks the folder's SHA256SUMS: a mismatch names the file, and
resume falls back to the previous checkpoint.
"""

from pathlib import Path

import pytest
import torch

from obow.config import load_pretrain_config
from obow.errors import CheckpointError
from obow.io.checkpoint import load_file, load_training_checkpoint
from obow.io.sums import SUMS_NAME, recorded_sha256
from obow.reporting import RecordingReporter
from obow.train.checkpoint import list_checkpoints
from obow.train.engine import run_pretrain

TINY = ["data.epoch_size=64", "data.batch_size=16", "runtime.print_freq=1", "runtime.workers=0"]


def corrupt(path: Path) -> None:
    """Flip bytes in the middle of the file (tensor data): the zip container still opens."""
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    path.write_bytes(bytes(raw))


def test_a_corrupt_newest_checkpoint_is_named_and_resume_falls_back_to_the_previous(tmp_path: Path):
    spec = load_pretrain_config("FashionMNIST/tiny", [*TINY, "optim.num_epochs=3", "optim.permanent=1"])
    run_pretrain(spec, tmp_path, RecordingReporter())
    files = [p for _, _, p in list_checkpoints(tmp_path)]
    assert [p.name for p in files] == ["checkpoint_0001.pt", "checkpoint_0002.pt", "checkpoint_0003.pt"]
    assert all(recorded_sha256(p) is not None for p in files)
    original = load_training_checkpoint(files[-1])["model"]

    corrupt(files[-1])
    with pytest.raises(CheckpointError, match=r"checkpoint '.*checkpoint_0003\.pt' is corrupt"):
        load_training_checkpoint(files[-1])
    with pytest.raises(CheckpointError, match="is corrupt"):  # every reader, evaluations and exports too
        load_file(files[-1])

    again = RecordingReporter()
    run_pretrain(spec, tmp_path, again)
    warnings = [msg for level, msg in again.logs if level == "warning"]
    assert any("checkpoint_0003.pt" in msg and "corrupt" in msg for msg in warnings), again.logs
    assert any("resumed from 'checkpoint_0002.pt'" in msg for _, msg in again.logs), again.logs
    # epoch 3 was trained again from epoch 2's checkpoint: the same weights as before the corruption
    redone = load_training_checkpoint(files[-1])["model"]
    for key, value in original.items():
        assert torch.equal(value, redone[key]), key
    assert recorded_sha256(files[-1]) is not None and (tmp_path / SUMS_NAME).is_file()


def test_files_without_a_recorded_digest_still_load(tmp_path: Path):
    """Imported and older files have no SHA256SUMS entry: they load as before."""
    path = tmp_path / "weights.pt"
    torch.save({"network": {"w": torch.ones(2)}}, path)
    assert torch.equal(load_file(path)["network"]["w"], torch.ones(2))
