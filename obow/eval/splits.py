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


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{what} '{path}' is not a UTF-8 text file (byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{what} '{path}' cannot be read: {err.strerror or type(err).__name__}") from None


def read_split(path: Path, source: ImageSource) -> list[int]:
    """Indices named by a split file: file names (SimCLR lists, or our `<index>\\t<name>` lines) matched
    against the source's image file names, or plain sample indices for in-memory datasets.

    Errors name the file and line numbers, never what the lines hold: a split file is a path from a
    request, and quoting it would show whatever file it points at (a worker's environment, a key)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file '{path}' does not exist")
    numbered = [(number, line.strip()) for number, line in enumerate(_read_lines(path, "split file"), 1)]
    numbered = [(n, e.split("\t")[-1].strip()) for n, e in numbered if e and not e.startswith("#")]
    if not numbered:
        raise DataError(f"split file '{path}' lists no images")
    names = image_names(source)
    if names is None:
        not_numbers = [n for n, e in numbered if not e.lstrip("-").isdigit()]
        if not_numbers:
            raise DataError(f"split file '{path}' must list sample indices for this in-memory dataset "
                            f"(it has no file names); line {not_numbers[0]} is not a number")
        bad = [n for n, e in numbered if not 0 <= int(e) < len(source)]
        if bad:
            raise DataError(f"split file '{path}' has indices outside 0..{len(source) - 1} "
                            f"(lines {', '.join(map(str, bad[:5]))})")
        return sorted({int(e) for _, e in numbered})
    where = {name: i for i, name in enumerate(names)}
    missing = [n for n, e in numbered if Path(e).name not in where]
    if missing:
        raise DataError(f"split file '{path}': {len(missing)} of {len(numbered)} images are not in the training "
                        f"split (lines {', '.join(map(str, missing[:3]))}); check --data-dir and --subset")
    return sorted({where[Path(e).name] for _, e in numbered})
