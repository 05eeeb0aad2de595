"""Where a pretraining run keeps its checkpoints: `checkpoint_EEEE[_itN].pt` in the run's folder.

The file format itself (reading, the format names) is `obow.io.checkpoint`; writing goes through
`obow.io.atomic.save_atomic`. This module only names, lists and picks the run's checkpoint files.
"""

from __future__ import annotations

import re
from pathlib import Path

from obow.errors import CheckpointError
from obow.io.sums import verify_checkpoint
from obow.reporting import Reporter

CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)(?:_it(\d+))?\.pt$")


def checkpoint_name(epoch: int, iteration_in_epoch: int | None = None) -> str:
    suffix = f"_it{iteration_in_epoch}" if iteration_in_epoch else ""
    return f"checkpoint_{epoch:04d}{suffix}.pt"


def list_checkpoints(exp_dir: Path) -> list[tuple[int, int, Path]]:
    """(completed epochs, iterations into the next epoch, path), oldest first."""
    found = []
    for entry in Path(exp_dir).glob("checkpoint_*.pt"):
        match = CHECKPOINT_RE.match(entry.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2) or 0), entry))
    return sorted(found)


def latest_checkpoint(exp_dir: Path) -> Path | None:
    found = list_checkpoints(exp_dir)
    return found[-1][2] if found else None


def usable_checkpoint(exp_dir: Path, reporter: Reporter | None = None) -> Path | None:
    """The newest checkpoint whose bytes match their recorded sha256. A corrupt one is skipped with a
    warning naming it, and the run resumes from the one before (which the next save replaces anyway)."""
    for _, _, path in reversed(list_checkpoints(exp_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            if reporter is not None:
                reporter.log(f"{err}; resuming from the previous checkpoint instead", "warning")
            continue
        return path
    return None
