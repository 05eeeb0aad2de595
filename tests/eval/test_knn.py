import math

import pytest
import torch

from obow.models.features import knn_accuracy, knn_predict


def naive_knn_scores(train_x, train_y, test_x, k, t, num_classes):
    scores = []
    for q in test_x:
        sims = []
        for x, y in zip(train_x, train_y, strict=True):
            cos = float(q @ x) / (float(q.norm()) * float(x.norm()))
            sims.append((cos, int(y)))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for cos, y in sims[:k]:
            votes[y] += math.exp(cos / t)
        scores.append(votes)
    return torch.tensor(scores)


def test_knn_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(40, 6, generator=g), torch.randn(9, 6, generator=g)
    train_y = torch.randint(0, 3, (40,), generator=g)
    got = knn_predict(train_x, train_y, test_x, k=5, temperature=0.1, num_classes=3, chunk=4)
    assert torch.allclose(got, naive_knn_scores(train_x, train_y, test_x, 5, 0.1, 3), rtol=1e-4)


def test_knn_accuracy_on_separable_clusters():
    centers = torch.eye(3) * 10
    train_x = torch.cat([centers[i] + torch.randn(10, 3) * 0.1 for i in range(3)])
    train_y = torch.arange(3).repeat_interleave(10)
    test_x = centers + 0.05
    assert knn_accuracy(train_x, train_y, test_x, torch.arange(3), k=5) == 100.0


def test_k_out_of_range():
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(torch.randn(3, 2), torch.zeros(3), torch.randn(1, 2), k=4, temperature=0.1, num_classes=1)
