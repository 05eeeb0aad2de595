"""Weighted k-nearest-neighbour classification on L2-normalised features.

Each of the k nearest training features (cosine similarity s) votes for its label with weight
exp(s / T), the usual protocol for self-supervised features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class scores [N_test, num_classes]; test features are processed in chunks to bound memory."""
    if k < 1 or k > len(train_feats):
        raise ValueError(f"k must be between 1 and the number of training features ({len(train_feats)}), got {k}")
    bank = F.normalize(train_feats.float(), dim=1)
    queries = F.normalize(test_feats.float(), dim=1)
    scores = []
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ bank.t()
        top_sims, top_idx = sims.topk(k, dim=1)
        weights = (top_sims / temperature).exp()
        votes = torch.zeros(len(sims), num_classes)
        votes.scatter_add_(1, train_labels[top_idx].long(), weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy in percent."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes)
    return float((scores.argmax(1) == test_labels.long()).float().mean() * 100)
