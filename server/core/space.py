"""Free space on the disks a run writes to (torch-free).

When the disk under the lab's home fills up, the run's next checkpoint fails, and with SQLite on the
same disk so does every commit: the error could not even be recorded and the run stayed `running`. The
worker's reporter checks before every batch it stores and before every checkpoint, and stops the run
while `OBOW_LAB_MIN_FREE_MB` are still free: enough to record why.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer can still use on `folder`'s filesystem (None: cannot tell)."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        stats = os.statvfs(probe)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def low_space(folders: Iterable[Path], min_free_bytes: int) -> str | None:
    """A one-line reason when any folder's disk has less than `min_free_bytes` free, else None."""
    for folder in folders:
        free = free_bytes(folder)
        if free is not None and free < min_free_bytes:
            return (
                f"the disk of '{folder}' is almost full ({free / 2**20:.1f} MB free, the lab keeps "
                f"{min_free_bytes / 2**20:.0f} MB, OBOW_LAB_MIN_FREE_MB): the run stopped before writing "
                f"more; free space, then retry it (it resumes from its last checkpoint)"
            )
    return None
