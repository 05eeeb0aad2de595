"""The one atomic-write helper: temp file in the same folder, fsync, rename, fsync the folder.

Checkpoints, exports, result records and spec files all go through `write_atomic`, so a crash or a
full disk at any point leaves either the previous file or the complete new one, never a torn file.
torch is imported only by `save_atomic`, so the text and bytes writers stay usable without it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable; silently skipped where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(handle)` on a temp file in the same folder, fsync, then rename over `path`.

    On failure (disk full, permissions, an exception in `write`) the temp file is removed and the error
    propagates; the previous file at `path`, if any, is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """UTF-8 text through `write_atomic` (records, YAML settings, spec files)."""
    write_atomic(path, lambda handle: handle.write(text.encode()))


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through `write_atomic`: the old checkpoint survives a failed or interrupted save."""
    import torch  # here, not at the top: the byte and text writers must not pull torch in

    write_atomic(path, lambda handle: torch.save(obj, handle))
