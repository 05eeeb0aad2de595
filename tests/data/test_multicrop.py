"""Multi-crop geometry and determinism."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from obow.config import DataSpec, load_pretrain_config
from obow.data.multicrop import MultiCropDataset, collate_multicrop, grid_patches
from obow.data.sources import open_dataset


def test_grid_patches_without_jitter_are_exact_slices():
    image = torch.arange(3 * 40 * 40, dtype=torch.float32).view(3, 40, 40)
    torch.manual_seed(0)
    patches = grid_patches(image, patch_size=16, jitter=0, keep=9)
    offset = (40 - 16 - 0) // 2  # 12
    expected = {
        (i, j): image[:, i * offset : i * offset + 16, j * offset : j * offset + 16] for i in range(3) for j in range(3)
    }
    assert patches.shape == (9, 3, 16, 16)
    for patch in patches:
        assert any(torch.equal(patch, e) for e in expected.values())
    assert len({int(p[0, 0, 0]) for p in patches}) == 9  # all 9 distinct cells


def test_grid_patches_with_jitter_stay_in_their_cells():
    size, ps, jitter = 256, 96, 24
    image = torch.arange(size * size, dtype=torch.float64).view(1, size, size)
    offset = (size - ps - jitter) // 2
    assert offset == 68
    for seed in range(20):
        torch.manual_seed(seed)
        for patch in grid_patches(image, ps, jitter, keep=5):
            top_left = int(patch[0, 0, 0])
            y, x = divmod(top_left, size)
            i, j = round(y / offset), round(x / offset)  # nearest cell
            assert 0 <= y - i * offset <= jitter and 0 <= x - j * offset <= jitter


def test_views_have_the_configured_shapes():
    source = open_dataset("FashionMNIST", None, "test", subset=2)
    spec = load_pretrain_config("FashionMNIST/ResNet18s_OBoW_full_cpu")
    teacher, groups, _ = MultiCropDataset(source, spec.data)[0]
    assert teacher.shape == (3, 40, 40)
    assert [g.shape for g in groups] == [(2, 3, 32, 32)]  # the CPU preset trains without patches
    spec = load_pretrain_config("FashionMNIST/ResNet18s_OBoW_full_cpu", ["data.num_img_patches=5"])
    teacher, groups, _ = MultiCropDataset(source, spec.data)[0]
    assert [g.shape for g in groups] == [(2, 3, 32, 32), (5, 3, 16, 16)]
    imagenet = DataSpec(num_img_patches=5)
    photos = open_dataset("FoolboxImageNet", None, "train")
    teacher, groups, _ = MultiCropDataset(photos, imagenet)[0]
    assert teacher.shape == (3, 224, 224) and [g.shape for g in groups] == [(2, 3, 160, 160), (5, 3, 96, 96)]


def batches(dataset, workers: int):
    loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=collate_multicrop, shuffle=False)
    return list(loader)


def test_views_do_not_depend_on_workers_and_change_with_epoch():
    spec = load_pretrain_config("FashionMNIST/tiny")
    dataset = MultiCropDataset(open_dataset("FashionMNIST", None, "test", subset=1), spec.data, seed=5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    dataset[0]
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is left untouched
    a = batches(dataset, 0)
    b = batches(dataset, 2)
    for (ta, ga, la), (tb, gb, lb) in zip(a, b, strict=True):
        assert torch.equal(ta, tb) and torch.equal(la, lb)
        assert all(torch.equal(x, y) for x, y in zip(ga, gb, strict=True))
    dataset.set_epoch(1)
    c = batches(dataset, 0)
    assert not torch.equal(a[0][1][0], c[0][1][0])


@pytest.mark.parametrize("only_patches", [True, False])
def test_only_patches_replaces_the_crops(only_patches):
    d = DataSpec(teacher_resize=40, teacher_size=40, image_crop_size=32, num_img_patches=3, img_patch_preresize=40,
                 img_patch_size=16, img_patch_jitter=4, only_patches=only_patches)
    source = open_dataset("Synthetic", None, "test")
    _, groups, _ = MultiCropDataset(source, d)[0]
    assert [tuple(g.shape) for g in groups] == ([(3, 3, 16, 16)] if only_patches else [(2, 3, 32, 32), (3, 3, 16, 16)])
    assert np.isfinite(groups[0].numpy()).all()
