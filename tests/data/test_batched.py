"""The batched view pipeline against torchvision and against the PIL path's parameter distributions."""

import pytest
import torch
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from obow.config import DataSpec, load_pretrain_config
from obow.data import batched
from obow.data.sources import open_dataset

N = 2000  # draws per distribution comparison


def ks_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the two empirical CDFs."""
    grid = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a.sort().values, grid, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, grid, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


@pytest.mark.parametrize(
    ("height", "width", "scale"), [(300, 400, (0.08, 0.6)), (256, 256, (0.6, 1.0)), (28, 28, (0.25, 0.8))]
)
def test_crop_boxes_follow_torchvision_random_resized_crop(height, width, scale):
    image = torch.zeros(3, height, width)
    torch.manual_seed(0)
    theirs = torch.tensor(
        [T.RandomResizedCrop.get_params(image, scale, [3 / 4, 4 / 3]) for _ in range(N)], dtype=torch.float64
    )
    g = torch.Generator().manual_seed(1)
    ours = torch.tensor(
        [batched.resized_crop_box(torch.rand(batched.BOX_DRAWS, generator=g), height, width, scale) for _ in range(N)],
        dtype=torch.float64,
    )
    for boxes in (ours, theirs):  # every box lies inside the image
        top, left, h, w = boxes.unbind(1)
        assert bool(((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width) & (h > 0)).all())
    area = lambda b: b[:, 2] * b[:, 3] / (height * width)  # noqa: E731
    log_ratio = lambda b: torch.log(b[:, 3] / b[:, 2])  # noqa: E731
    centre_y = lambda b: (b[:, 0] + b[:, 2] / 2) / height  # noqa: E731
    centre_x = lambda b: (b[:, 1] + b[:, 3] / 2) / width  # noqa: E731
    for stat in (area, log_ratio, centre_y, centre_x):
        assert ks_statistic(stat(ours), stat(theirs)) < 0.06  # 5% critical value at n=m=2000 is 0.043


def test_colour_and_flip_parameters_have_the_pil_path_distributions():
    d = DataSpec(num_img_patches=5)
    params = [batched.sample_params(seed, 375, 500, d) for seed in range(N)]
    crops = [p.crops for p in params]
    jitter = torch.cat([c.jitter for c in crops]).double()
    factors = torch.cat([c.factors for c in crops])[jitter.bool()]
    assert jitter.mean() == pytest.approx(d.cjitter_p, abs=0.03)
    b, c, s, h = d.cjitter
    for col, (lo, hi) in enumerate([(1 - b, 1 + b), (1 - c, 1 + c), (1 - s, 1 + s), (-h, h)]):
        values = factors[:, col].double()
        assert lo <= float(values.min()) and float(values.max()) <= hi
        draws = torch.rand(len(values), generator=torch.Generator().manual_seed(col), dtype=torch.float64)
        uniform = lo + (hi - lo) * draws
        assert ks_statistic(values, uniform) < 0.06
    orders = torch.cat([c.order for c in crops])
    assert bool((orders.sort(dim=1).values == torch.arange(4)).all())  # permutations
    assert len({tuple(o) for o in orders.tolist()}) == 24  # all 4! orders occur
    assert torch.cat([c.gray for c in crops]).double().mean() == pytest.approx(d.gray_p, abs=0.03)
    assert torch.cat([c.blur for c in crops]).double().mean() == pytest.approx(d.gaussian_blur_p, abs=0.03)
    sigma = torch.cat([c.sigma for c in crops]).double()
    assert float(sigma.min()) >= 0.1 and float(sigma.max()) <= 2.0
    assert float(sigma.mean()) == pytest.approx(1.05, abs=0.03)
    assert torch.cat([c.flip for c in crops]).double().mean() == pytest.approx(0.5, abs=0.03)
    assert sum(p.teacher_flip for p in params) / N == pytest.approx(0.5, abs=0.03)
    assert not any(bool(p.patch_source.blur.any()) for p in params)  # the patches are never blurred
    offsets = torch.stack([p.grid_offsets for p in params])
    assert int(offsets.min()) == 0 and int(offsets.max()) == d.img_patch_jitter
    assert set(offsets.flatten().tolist()) == set(range(d.img_patch_jitter + 1))
    keep = torch.stack([p.keep for p in params])
    assert keep.shape == (N, 5) and all(len(set(k)) == 5 for k in keep.tolist())
    assert torch.bincount(keep.flatten(), minlength=9).double().div(5 * N).sub(1 / 9).abs().max() < 0.01


def test_batched_colour_ops_match_torchvision_per_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 20, 24, generator=g)
    f = torch.tensor([0.6, 0.9, 1.0, 1.1, 1.4, 0.75])
    hue = torch.tensor([-0.1, -0.03, 0.0, 0.02, 0.07, 0.1])
    for ours, theirs, factors in (
        (batched.adjust_brightness, TF.adjust_brightness, f),
        (batched.adjust_contrast, TF.adjust_contrast, f),
        (batched.adjust_saturation, TF.adjust_saturation, f),
        (batched.adjust_hue, TF.adjust_hue, hue),
    ):
        got = ours(x.clone(), factors)
        want = torch.stack([theirs(x[i], float(factors[i])) for i in range(6)])
        assert torch.allclose(got, want, atol=1e-5), ours.__name__
    gray = batched.random_grayscale(x, torch.tensor([True, False] * 3))
    assert torch.allclose(gray[0], TF.rgb_to_grayscale(x[0], num_output_channels=3), atol=1e-6)
    assert torch.equal(gray[1], x[1])


def test_colour_jitter_applies_each_image_its_own_order():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    factors = torch.tensor([[1.3, 0.7, 1.2, 0.05], [1.3, 0.7, 1.2, 0.05]])
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    got = batched.colour_jitter(x, torch.tensor([True, True]), factors, order)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(2):
        want = x[i]
        for op in order[i].tolist():
            want = ops[op](want, float(factors[i, op]))
        assert torch.allclose(got[i], want, atol=1e-5)
    untouched = batched.colour_jitter(x, torch.tensor([False, False]), factors, order)
    assert torch.equal(untouched, x)


def test_blur_matches_torchvision_gaussian_blur():
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.5, 1.3, 2.0])
    got = batched.gaussian_blur(x, torch.tensor([True, True, False]), sigma, max_sigma=2.0)
    for i in range(2):
        want = TF.gaussian_blur(x[i], kernel_size=[13, 13], sigma=[float(sigma[i])] * 2)
        assert torch.allclose(got[i], want, atol=1e-5)
    assert torch.equal(got[2], x[2])


def test_grid_patches_batch_cuts_the_jittered_cells():
    size, patch, jitter = 40, 16, 4
    x = torch.arange(2 * 3 * size * size, dtype=torch.float32).view(2, 3, size, size)
    offsets = torch.randint(0, jitter + 1, (2, 9, 2), generator=torch.Generator().manual_seed(3))
    keep = torch.tensor([[0, 4, 8], [7, 2, 5]])
    got = batched.grid_patches_batch(x, offsets, keep, patch, jitter)
    o = (size - patch - jitter) // 2
    assert got.shape == (2, 3, 3, patch, patch)
    for n in range(2):
        for slot, cell in enumerate(keep[n].tolist()):
            y = (cell // 3) * o + int(offsets[n, cell, 0])
            xx = (cell % 3) * o + int(offsets[n, cell, 1])
            assert torch.equal(got[n, slot], x[n, :, y : y + patch, xx : xx + patch])


def views(dataset, spec, positions):
    images, _labels, seeds = batched.collate_raw([dataset[(i, p)] for i, p in positions])
    return batched.BatchedMultiCrop(spec)(batched.decode(images, torch.device("cpu")), seeds)


def test_fixed_seed_gives_the_same_views_and_the_epoch_changes_them():
    spec = load_pretrain_config("FashionMNIST/tiny", [  # one crop and two patches: both kinds of view
        "data.num_img_crops=1", "data.num_img_patches=2", "data.img_patch_preresize=40", "data.img_patch_size=16",
        "data.img_patch_jitter=4",
    ]).data
    dataset = batched.RawImageDataset(open_dataset("FashionMNIST", None, "test", subset=1), seed=5)
    positions = [(i, i) for i in range(4)]
    before = torch.get_rng_state()
    t1, g1 = views(dataset, spec, positions)
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is untouched
    t2, g2 = views(batched.RawImageDataset(dataset.source, seed=5), spec, positions)
    assert torch.equal(t1, t2) and all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))
    assert t1.shape == (4, 3, 40, 40) and [tuple(g.shape) for g in g1] == [(4, 1, 3, 32, 32), (4, 2, 3, 16, 16)]
    dataset.set_epoch(1)
    _t3, g3 = views(dataset, spec, positions)
    assert not torch.equal(g1[0], g3[0])
    # a sample's views do not depend on its batch-mates
    _t4, g4 = views(batched.RawImageDataset(dataset.source, seed=5), spec, positions[2:])
    assert torch.equal(g4[0], g1[0][2:])


def test_imagenet_sized_photos_give_the_configured_views():
    d = DataSpec(num_img_patches=5)
    dataset = batched.RawImageDataset(open_dataset("FoolboxImageNet", None, "train"), seed=0, decode_in_worker=False)
    teacher, groups = views(dataset, d, [(i, i) for i in range(3)])
    assert teacher.shape == (3, 3, 224, 224)
    assert [tuple(g.shape) for g in groups] == [(3, 2, 3, 160, 160), (3, 5, 3, 96, 96)]
    for t in (teacher, *groups):  # normalised: roughly zero-mean, unit-scale, finite
        assert torch.isfinite(t).all() and abs(float(t.mean())) < 1.0 and 0.2 < float(t.std()) < 2.0
