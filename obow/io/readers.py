"""The checkpoint reader registry: one explicit `layout -> reader` table per kind of result.

A registry is built in one statement from a complete mapping (every layout of `CHECKPOINT_LAYOUTS`
must have its reader, and nothing else may be listed), by the layer that knows how to build the result:
`obow.models.loading.BACKBONE_READERS` turns any supported file into a backbone. No reader registers
itself as a side effect of an import, so which files are understood is readable in one place and
loading never needs to import a higher layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Generic, TypeVar

import torch

from obow.errors import CheckpointError
from obow.io.checkpoint import load_file
from obow.io.layouts import CHECKPOINT_LAYOUTS, Identified, identify

T = TypeVar("T")
Reader = Callable[[Identified, Path], T]


class ReaderRegistry(Generic[T]):
    def __init__(self, what: str, readers: Mapping[str, Reader[T]]) -> None:
        missing = [layout for layout in CHECKPOINT_LAYOUTS if layout not in readers]
        unknown = [layout for layout in readers if layout not in CHECKPOINT_LAYOUTS]
        if missing or unknown:
            raise ValueError(f"{what} readers: missing layouts {missing}, unknown layouts {unknown}")
        self.what = what
        self._readers = dict(readers)

    @property
    def layouts(self) -> tuple[str, ...]:
        return tuple(self._readers)

    def read(self, path: Path | str, map_location: str | torch.device = "cpu") -> T:
        """Load `path` safely, identify its layout and hand it to that layout's reader."""
        path = Path(path)
        payload = load_file(path, map_location)
        found = identify(payload, path)
        if found is None:
            keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
            raise CheckpointError(
                f"'{path}' is in no known checkpoint format (top-level keys: {keys}); expected an OBoW Lab "
                f"checkpoint or, after `obow import`, an official OBoW file"
            )
        return self._readers[found.layout](found, path)
