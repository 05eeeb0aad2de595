"""Checkpoint integrity without torch: a folder's `SHA256SUMS` (the `sha256sum` format, so
`sha256sum -c SHA256SUMS` checks a folder by hand) records each checkpoint's digest when it is written;
every load checks it. Torch-free so the lab's worker process can verify and record digests without
importing torch before it forks a run."""

from __future__ import annotations

import contextlib
from pathlib import Path

from obow.errors import CheckpointError
from obow.hashing import sha256_of
from obow.io.atomic import write_text_atomic

SUMS_NAME = "SHA256SUMS"


def recorded_sha256(path: Path) -> str | None:
    """The digest `SHA256SUMS` beside the file records for it, or None (no entry, unreadable list)."""
    path = Path(path)
    try:
        lines = (path.parent / SUMS_NAME).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        digest, _, name = line.partition("  ")
        if name == path.name and len(digest) == 64:
            return digest
    return None


def record_sha256(path: Path, digest: str | None = None) -> str:
    """Put `path`'s sha256 into its folder's `SHA256SUMS` (atomically), dropping entries whose file is gone."""
    path = Path(path)
    digest = digest or sha256_of(path)
    sums = path.parent / SUMS_NAME
    entries: dict[str, str] = {}
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in sums.read_text().splitlines():
            old, _, name = line.partition("  ")
            if name and (path.parent / name).is_file():
                entries[name] = old
    entries[path.name] = digest
    write_text_atomic(sums, "".join(f"{d}  {n}\n" for n, d in sorted(entries.items())))
    return digest


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError naming the file when its bytes differ from the recorded sha256."""
    path = Path(path)
    expected = recorded_sha256(path)
    if expected is None or not path.is_file():
        return
    actual = sha256_of(path)
    if actual != expected:
        raise CheckpointError(
            f"checkpoint '{path}' is corrupt: its sha256 is {actual[:12]}…, {SUMS_NAME} recorded "
            f"{expected[:12]}… when it was written"
        )


