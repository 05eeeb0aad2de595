"""Frozen-feature tools shared by the pretraining kNN monitor (`obow.train`) and the evaluations.

Kept in the models layer, below both users, so that training never imports the evaluation package:
`extract_features` runs a backbone over a labelled dataset; `knn_predict` / `knn_accuracy` are the
weighted k-nearest-neighbour classifier on L2-normalised features, where each of the k nearest
training features (cosine similarity s) votes for its label with weight exp(s / T), the usual
protocol for self-supervised features.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from obow.models.backbone import ResNetBackbone
from obow.models.loaders import in_order_loader
from obow.progress import Upcoming
from obow.reporting import Reporter, start_phase


@torch.no_grad()
def extract_features(
    backbone: ResNetBackbone,
    dataset: Dataset | DataLoader,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    progress: bool = True,
    workers: int = 0,
    reporter: Reporter | None = None,
    label: str = "extracting features",
    upcoming: Upcoming = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-pooled block4 features [N, C] (float32, CPU) and labels [N] of a labelled dataset, in order.

    The backbone is put in eval mode (BN running statistics) and restored to its previous mode after.
    With a `reporter`, the pass is a phase called `label`, counted in images and reported per batch.
    """
    loader = dataset if isinstance(dataset, DataLoader) else in_order_loader(dataset, batch_size, workers)
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    iterator = loader
    total = len(loader.dataset)  # type: ignore[arg-type]
    done = 0
    if reporter is not None:
        start_phase(reporter, label, total, "images", upcoming=upcoming)
    elif progress:
        from tqdm import tqdm

        iterator = tqdm(loader, desc="features", unit="batch", leave=False)
    try:
        for images, targets in iterator:
            out = backbone(images.to(device, non_blocking=True), taps=("pooled",))["pooled"]
            feats.append(out.float().cpu())
            labels.append(torch.as_tensor(targets))
            done += len(out)
            if reporter is not None:
                reporter.progress(done, total)
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
    chunk: int = 1024,
    on_chunk: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Class scores [N_test, num_classes]; test features are processed in chunks to bound memory.
    `on_chunk(n)` is told the number of queries of each chunk done (progress of a long scoring)."""
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
        if on_chunk is not None:
            on_chunk(len(sims))
    return torch.cat(scores)


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> float:
    """Top-1 accuracy in percent."""
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_predict(train_feats, train_labels, test_feats, k, temperature, num_classes, on_chunk=on_chunk)
    return float((scores.argmax(1) == test_labels.long()).float().mean() * 100)
