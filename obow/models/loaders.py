"""Data loaders that read a dataset in order without touching torch's global random stream.

A `DataLoader` draws a base seed for its workers from torch's global generator every time an iterator
is created, even with `shuffle=False` and no workers. Training draws its augmentations and vocabulary
updates from that global stream, so a feature pass in the middle of a run (the kNN monitor, BN
recalibration) shifted every draw after it: switching the monitor on or off changed what the network
trained on, and a run with its monitor did not repeat the same run without it. Every in-order pass
outside the training loader goes through `in_order_loader`, which gives the loader a private generator.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def in_order_loader(dataset: Dataset, batch_size: int, workers: int = 0) -> DataLoader:
    """Batches of `dataset` in index order; iterating it leaves torch's global random state as it was."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        # fixed: a worker's seed then depends on nothing outside this pass
        generator=torch.Generator().manual_seed(0),
    )
