"""BoW target maths against hand examples and naive loops."""

import math

import pytest
import torch

from obow.models import bow_ops


def naive_distances(features: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    b, _, h, w = features.shape
    out = torch.empty(b, words.shape[0], h, w, dtype=torch.float64)
    for i in range(b):
        for k in range(words.shape[0]):
            for y in range(h):
                for x in range(w):
                    diff = features[i, :, y, x].double() - words[k].double()
                    out[i, k, y, x] = (diff * diff).sum()
    return out


def test_squared_distances_match_naive_loop():
    g = torch.Generator().manual_seed(0)
    features, words = torch.randn(2, 5, 3, 4, generator=g), torch.randn(7, 5, generator=g)
    got = bow_ops.squared_distances(features, words)
    assert torch.allclose(got.double(), naive_distances(features, words), atol=1e-4)


def test_local_average_matches_naive_loop():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6).sin()
    got = bow_ops.local_average(x)
    assert got.shape == (2, 3, 3, 4)
    for i in range(2):
        for c in range(3):
            for y in range(3):
                for xx in range(4):
                    expected = x[i, c, y : y + 3, xx : xx + 3].mean()
                    assert got[i, c, y, xx] == pytest.approx(float(expected), abs=1e-6)


def test_border_crop_drops_one_location_per_side():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert torch.equal(bow_ops.border_crop(x)[0, 0], x[0, 0, 1:5, 1:5])


def test_hand_computed_bow_example():
    # One image, 1 channel, 1x2 locations (after cropping), words at 0 and 2.
    features = torch.tensor([[[[0.0, 2.0]]]])  # values 0 and 2
    words = torch.tensor([[0.0], [2.0]])
    d = bow_ops.squared_distances(features, words)  # location0: [0, 4]; location1: [4, 0]
    assert d[0, :, 0, 0].tolist() == [0.0, 4.0] and d[0, :, 0, 1].tolist() == [4.0, 0.0]
    mu = torch.tensor([1.0])
    codes = bow_ops.soft_codes(d, inv_delta=0.5, mean_min_distance=mu)
    # softmax([-0, -2]) = [1/(1+e^-2), e^-2/(1+e^-2)]
    p = 1 / (1 + math.exp(-2))
    assert codes[0, 0, 0, 0].item() == pytest.approx(p, rel=1e-6)
    assert codes[0, 1, 0, 0].item() == pytest.approx(1 - p, rel=1e-6)
    bow = bow_ops.pool_bow(codes, "max")  # max over locations: [p, p] -> normalised [0.5, 0.5]
    assert bow[0].tolist() == pytest.approx([0.5, 0.5])
    bow_avg = bow_ops.pool_bow(codes, "avg")
    assert bow_avg[0].tolist() == pytest.approx([0.5, 0.5])


def test_queue_insert_fifo_with_wrap_around():
    queue = torch.zeros(6, 2)
    ptr = torch.zeros(1, dtype=torch.long)
    naive = [[0.0, 0.0] for _ in range(6)]
    naive_ptr = 0
    for step in range(5):
        entries = torch.full((4, 2), float(step + 1)) + torch.arange(4.0).view(4, 1) / 10
        bow_ops.queue_insert(queue, ptr, entries)
        for row in entries.tolist():
            naive[naive_ptr] = row
            naive_ptr = (naive_ptr + 1) % 6
        assert torch.allclose(queue, torch.tensor(naive))
        assert int(ptr) == naive_ptr


def test_queue_insert_rejects_more_entries_than_words():
    with pytest.raises(ValueError):
        bow_ops.queue_insert(torch.zeros(2, 1), torch.zeros(1, dtype=torch.long), torch.ones(3, 1))


def test_sample_one_per_image_picks_a_real_location():
    x = torch.randn(5, 4, 3, 3)
    picked = bow_ops.sample_one_per_image(x, torch.Generator().manual_seed(1))
    for i in range(5):
        locations = x[i].flatten(1).t()  # [9, 4]
        assert any(torch.equal(picked[i], loc) for loc in locations)


def test_global_average_candidates():
    x = torch.randn(3, 4, 5, 5)
    assert torch.allclose(bow_ops.vocabulary_candidates(x, "global_average"), x.mean(dim=(2, 3)))


def test_expand_target_is_image_major():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert bow_ops.expand_target(t, 3).tolist() == [[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]]


def test_bow_loss_equals_cross_entropy_minus_target_entropy():
    logits = torch.randn(4, 6)
    target = torch.softmax(torch.randn(4, 6), dim=1)
    ce = -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()
    entropy = -(target * target.log()).sum(1).mean()
    assert bow_ops.bow_loss(logits, target).item() == pytest.approx((ce - entropy).item(), abs=1e-5)


def test_perplexity_of_uniform_and_one_hot():
    k = 8
    uniform = torch.full((3, k), 1.0 / k)
    batch, image = bow_ops.bow_perplexity(uniform)
    assert batch.item() == pytest.approx(k, rel=1e-3) and image.item() == pytest.approx(k, rel=1e-3)
    one_hot = torch.eye(k)[:4]  # 4 images, 4 different words
    batch, image = bow_ops.bow_perplexity(one_hot)
    assert batch.item() == pytest.approx(4, rel=1e-3) and image.item() == pytest.approx(1, rel=1e-3)


def test_cosine_momentum_schedule_values():
    assert bow_ops.cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert bow_ops.cosine_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert bow_ops.cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)
    assert bow_ops.cosine_momentum(0.99, 25, 100) == pytest.approx(1 - 0.01 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_mean_min_distance_ema():
    mu = bow_ops.update_mean_min_distance(torch.tensor([0.5]), torch.tensor(10.0), 0.99)
    assert mu.item() == pytest.approx(0.99 * 0.5 + 0.01 * 10)
