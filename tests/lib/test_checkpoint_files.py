"""Atomic checkpoint writes and validated reads."""

import errno
from pathlib import Path

import pytest
import torch

from obow.errors import CheckpointError
from obow.hashing import sha256_of
from obow.io.atomic import save_atomic
from obow.io.checkpoint import load_file
from obow.train import checkpoint as ckpt


def test_save_atomic_round_trip_and_sha(tmp_path: Path):
    path = tmp_path / "sub" / "c.pt"
    save_atomic({"a": torch.arange(3)}, path)
    assert torch.equal(load_file(path)["a"], torch.arange(3))
    assert len(sha256_of(path)) == 64
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]


def test_failed_write_keeps_previous_file_and_leaves_no_temp(tmp_path: Path, monkeypatch):
    path = tmp_path / "c.pt"
    save_atomic({"v": torch.tensor(1)}, path)

    def disk_full(obj, handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_atomic({"v": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert load_file(path)["v"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_truncated_empty_and_missing_files_are_clear_errors(tmp_path: Path):
    good = tmp_path / "good.pt"
    save_atomic({"w": torch.randn(100)}, good)
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_file(truncated)
    empty = tmp_path / "e.pt"
    empty.touch()
    with pytest.raises(CheckpointError, match="is empty"):
        load_file(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_file(tmp_path / "missing.pt")


def test_pickled_code_is_refused(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError):
        load_file(path)


def test_checkpoint_listing_orders_by_position(tmp_path: Path):
    for name in ("checkpoint_0002.pt", "checkpoint_0001_it5.pt", "checkpoint_0001.pt", "other.pt"):
        (tmp_path / name).touch()
    assert [(e, i) for e, i, _ in ckpt.list_checkpoints(tmp_path)] == [(1, 0), (1, 5), (2, 0)]
    assert ckpt.latest_checkpoint(tmp_path).name == "checkpoint_0002.pt"
    assert ckpt.checkpoint_name(3) == "checkpoint_0003.pt" and ckpt.checkpoint_name(3, 7) == "checkpoint_0003_it7.pt"
