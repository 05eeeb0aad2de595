"""Labelled subsets for semi-supervised fine-tuning: standard split lists or seeded, class-balanced ones.

The standard ImageNet 1%/10% lists (SimCLR's `1percent.txt`) hold one image file name per line; they
cannot be downloaded here, so a user who has them passes the file and images are matched by file
name. Without one, every class keeps round(p% of its images) (at least one), drawn by a seeded
generator, and the list is written beside the results so the run can be repeated or shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from obow.data.sources import FileListSource, ImageSource, SubsetSource
from obow.errors import DataError


def balanced_split(targets: Sequence[int], num_classes: int, percentage: float, seed: int) -> list[int]:
    """Sorted sample indices: from each class, round(percentage% of its size) (>= 1) chosen at random."""
    if not 0 < percentage <= 100:
        raise DataError(f"percentage must be in (0, 100], got {percentage}")
    labels = np.asarray(targets)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            continue
        n = max(1, round(len(members) * percentage / 100.0))
        keep += rng.permutation(members)[:n].tolist()
    return sorted(keep)


def image_names(source: ImageSource) -> list[str] | None:
    """File names of the images, or None for in-memory datasets (their samples are named by index)."""
    if isinstance(source, FileListSource):
        return [p.name for p in source.paths]
    if isinstance(source, SubsetSource):
        base = image_names(source.base)
        return None if base is None else [base[i] for i in source.indices]
    return None


def split_file_name(percentage: float, seed: int) -> str:
    return f"split_{percentage:g}pct_seed{seed}.txt"


def write_split(path: Path, source: ImageSource, indices: Sequence[int]) -> None:
    """One line per labelled sample: `<index>\\t<file name or index>`."""
    names = image_names(source)
    lines = [f"{i}\t{names[i] if names is not None else i}" for i in indices]
    Path(path).write_text("\n".join(lines) + "\n")


def read_split(path: Path, source: ImageSource) -> list[int]:
    """Indices named by a split file: file names (SimCLR lists, or our `<index>\\t<name>` lines) matched
    against the source's image file names, or plain sample indices for in-memory datasets."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file '{path}' does not exist")
    entries = [line.strip() for line in path.read_text().splitlines()]
    entries = [e.split("\t")[-1].strip() for e in entries if e and not e.startswith("#")]
    if not entries:
        raise DataError(f"split file '{path}' lists no images")
    names = image_names(source)
    if names is None:
        try:
            indices = sorted({int(e) for e in entries})
        except ValueError:
            raise DataError(f"split file '{path}' must list sample indices for this in-memory dataset "
                            f"(it has no file names)") from None
        bad = [i for i in indices if not 0 <= i < len(source)]
        if bad:
            raise DataError(f"split file '{path}' has indices outside 0..{len(source) - 1}: {bad[:5]}")
        return indices
    where = {name: i for i, name in enumerate(names)}
    missing = [e for e in entries if Path(e).name not in where]
    if missing:
        raise DataError(f"split file '{path}': {len(missing)} of {len(entries)} images are not in the training "
                        f"split (first: {', '.join(missing[:3])}); check --data-dir and --subset")
    return sorted({where[Path(e).name] for e in entries})
