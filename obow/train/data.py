"""The pretraining input pipeline as the engine sees it: a loader per (epoch, start iteration).

The order of samples is a seeded permutation per epoch, split across ranks; a resumed epoch skips the
batches already done instead of replaying them. Together with per-sample seeded augmentation
(`MultiCropDataset`), this makes every batch a pure function of (seed, epoch, iteration).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler

from obow.config.pretrain import PretrainSpec
from obow.data.batched import BatchedMultiCrop, RawImageDataset, collate_raw, decode
from obow.data.multicrop import MultiCropDataset, collate_multicrop
from obow.data.sources import open_dataset


def epoch_order(num_samples: int, seed: int, epoch: int, epoch_size: int | None = None) -> torch.Tensor:
    """The global sample order of an epoch; `epoch_size` resamples (with wrap-around) to a fixed length."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if epoch_size is None:
        return torch.randperm(num_samples, generator=g)
    reps = -(-epoch_size // num_samples)
    return torch.cat([torch.randperm(num_samples, generator=g) for _ in range(reps)])[:epoch_size]


class ShardedEpochSampler(Sampler[tuple[int, int]]):
    """This rank's share of the epoch order, whole global batches only, starting at a batch offset.

    Yields (sample index, position in the epoch): the position seeds the sample's augmentations.
    """

    def __init__(self, order: torch.Tensor, rank: int, world: int, per_rank_batch: int, start_batch: int = 0):
        global_batch = per_rank_batch * world
        usable = (len(order) // global_batch) * global_batch
        positions = torch.arange(usable).view(-1, world, per_rank_batch)[:, rank, :]  # [batches, per_rank_batch]
        mine = positions[start_batch:].reshape(-1)
        self.indices = order[mine].tolist()
        self.positions = mine.tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self.indices, self.positions, strict=True))

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class PretrainData:
    spec: PretrainSpec
    dataset: MultiCropDataset | RawImageDataset
    num_samples: int
    rank: int
    world: int
    views: BatchedMultiCrop | None = None  # the batched pipeline's view maker (None: PIL views in the loader)

    def device_batch(self, batch: tuple, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """(teacher, crop groups, labels): the loader's batch, or for the batched pipeline the views made
        from the raw images on `device` (decoded there when they arrive encoded)."""
        if self.views is None:
            return batch
        images, labels, seeds = batch
        teacher, groups = self.views(decode(images, device), seeds)
        return teacher, groups, labels

    @property
    def per_rank_batch(self) -> int:
        return self.spec.data.batch_size // self.world

    @property
    def iters_per_epoch(self) -> int:
        n = self.spec.data.epoch_size or self.num_samples
        iters = n // self.spec.data.batch_size
        cap = self.spec.runtime.max_iters_per_epoch
        return min(iters, cap) if cap else iters

    def loader(self, epoch: int, start_iteration: int = 0) -> DataLoader:
        self.dataset.set_epoch(epoch)
        order = epoch_order(self.num_samples, self.spec.runtime.seed, epoch, self.spec.data.epoch_size)
        order = order[: self.iters_per_epoch * self.spec.data.batch_size]
        sampler = ShardedEpochSampler(order, self.rank, self.world, self.per_rank_batch, start_iteration)
        workers = self.spec.runtime.workers
        return DataLoader(
            self.dataset,
            batch_size=self.per_rank_batch,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_multicrop if self.views is None else collate_raw,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
            # its own generator: creating an iterator must not draw from the global RNG the model uses,
            # or a resumed run would be shifted by one draw
            generator=torch.Generator().manual_seed(sample_seed_for_loader(self.spec.runtime.seed, epoch)),
        )


def sample_seed_for_loader(seed: int, epoch: int) -> int:
    return (seed * 7_919 + epoch * 104_729) % (2**31)


def build_pretrain_data(spec: PretrainSpec, rank: int = 0, world_size: int = 1) -> PretrainData:
    from obow.errors import ConfigError

    if spec.data.batch_size % world_size:
        raise ConfigError(
            f"data.batch_size ({spec.data.batch_size}) must split evenly over {world_size} processes"
        )
    source = open_dataset(spec.data.dataset_name, spec.data.data_dir, "train", spec.data.subset)
    if spec.runtime.data_pipeline == "batched":
        on_gpu = spec.runtime.device != "cpu" and torch.cuda.is_available()
        raw = RawImageDataset(source, seed=spec.runtime.seed, decode_in_worker=not on_gpu)
        return PretrainData(spec, raw, len(source), rank, world_size, BatchedMultiCrop(spec.data))
    dataset = MultiCropDataset(source, spec.data, seed=spec.runtime.seed)
    return PretrainData(spec, dataset, len(source), rank, world_size)
