"""Epoch order and rank sharding: every sample once per epoch, resumable at a batch offset."""

import torch

from obow.train.data import ShardedEpochSampler, epoch_order


def test_epoch_order_is_a_seeded_permutation():
    a, b = epoch_order(50, seed=3, epoch=0), epoch_order(50, seed=3, epoch=0)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(50))
    assert not torch.equal(a, epoch_order(50, seed=3, epoch=1))
    assert not torch.equal(a, epoch_order(50, seed=4, epoch=0))


def test_epoch_size_resamples_to_a_fixed_length():
    order = epoch_order(10, seed=0, epoch=0, epoch_size=25)
    assert len(order) == 25 and set(order.tolist()) == set(range(10))


def test_ranks_partition_each_global_batch():
    order = epoch_order(40, seed=1, epoch=2)
    world, per_rank = 2, 4
    shards = [[i for i, _ in ShardedEpochSampler(order, r, world, per_rank)] for r in range(world)]
    assert len(shards[0]) == len(shards[1]) == 20
    assert sorted(shards[0] + shards[1]) == list(range(40))
    for step in range(5):  # global batch `step` = rank0's 4 then rank1's 4 consecutive entries of the order
        chunk = order[step * 8 : (step + 1) * 8].tolist()
        assert shards[0][step * 4 : step * 4 + 4] == chunk[:4]
        assert shards[1][step * 4 : step * 4 + 4] == chunk[4:]


def test_drop_last_and_start_offset():
    order = epoch_order(43, seed=0, epoch=0)
    full = list(ShardedEpochSampler(order, 0, 1, 8))
    assert len(full) == 40  # the incomplete last batch is dropped
    assert [p for _, p in full] == list(range(40))
    resumed = list(ShardedEpochSampler(order, 0, 1, 8, start_batch=3))
    assert resumed == full[24:]


def test_an_image_drawn_twice_in_a_resampled_epoch_gets_different_views():
    from obow.config import load_pretrain_config
    from obow.data.multicrop import MultiCropDataset
    from obow.data.sources import open_dataset

    spec = load_pretrain_config("FashionMNIST/tiny")
    dataset = MultiCropDataset(open_dataset("FashionMNIST", None, "test", subset=1), spec.data)
    first, second = dataset[(3, 3)], dataset[(3, 13)]
    assert first[2] == second[2] and not torch.equal(first[1][0], second[1][0])
    assert torch.equal(dataset[(3, 3)][1][0], first[1][0])
