"""The one dataset-view wrapper: images of a source, through a transform, with their label or index.

Evaluations (labelled views, optionally of a subset), the pretraining kNN monitor (seeded subsets) and
the visual-word gallery (views named by image index, so a patch can be traced back to its image) all
read a source through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from torch.utils.data import Dataset

from obow.data.sources import ImageSource


class ViewDataset(Dataset):
    """`(transform(image), label)` per sample, or `(transform(image), source index)` with target="index".

    `indices` restricts (and orders) the samples; without it every image of the source is used.
    """

    def __init__(
        self,
        source: ImageSource,
        transform: Callable,
        indices: Sequence[int] | None = None,
        target: Literal["label", "index"] = "label",
    ) -> None:
        self.source, self.transform, self.target = source, transform, target
        self.indices = list(indices) if indices is not None else None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.source)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        index = self.indices[i] if self.indices is not None else i
        image, label = self.source[index]
        return self.transform(image), index if self.target == "index" else label

    @property
    def targets(self) -> list[int]:
        if self.indices is None:
            return list(self.source.targets)
        return [self.source.targets[i] for i in self.indices]
