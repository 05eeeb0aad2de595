"""Weighted k-nearest-neighbour classification on L2-normalised features.

Each of the k nearest training features (cosine similarity s) votes for its label with weight
exp(s / T), the usual protocol for self-supervised features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from obow.config.eval import KnnSpec
from obow.errors import ConfigError
from obow.reporting import Reporter, check_stop


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


def run_knn(spec: KnnSpec, out_dir: Path, reporter: Reporter) -> dict[str, Any]:
    """kNN top-1 of the frozen student: training split as the memory bank, test split as queries."""
    from obow.data.multicrop import eval_transform
    from obow.eval.common import ViewDataset, load_eval_backbone, loader, open_split, resolve_device, write_results
    from obow.eval.features import extract_features

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.device)
    backbone = load_eval_backbone(spec.checkpoint, device).backbone
    train_src = open_split(spec, spec.train_split, spec.subset)
    test_src = open_split(spec, spec.test_split, spec.test_subset)
    if max(spec.k) > len(train_src):
        raise ConfigError(f"k ({max(spec.k)}) is larger than the memory bank ({len(train_src)} training images)")
    transform = eval_transform(spec.resize, spec.size, spec.mean, spec.std)
    feats = []
    for n, source in enumerate((train_src, test_src)):
        check_stop(reporter)
        feats.append(extract_features(backbone, loader(ViewDataset(source, transform), spec, False), device,
                                      progress=False))
        reporter.progress(n + 1, 2)
    (train_x, train_y), (test_x, test_y) = feats
    accs = {str(k): knn_accuracy(train_x, train_y, test_x, test_y, k, spec.temperature, train_src.num_classes)
            for k in spec.k}
    reporter.metrics(0, {f"knn_top1_k{k}": v for k, v in accs.items()})
    result = {"checkpoint": spec.checkpoint, "top1": accs, "temperature": spec.temperature,
              "train_images": len(train_src), "test_images": len(test_src), "spec": spec.model_dump(mode="json")}
    write_results(out_dir, "knn", result, [(k, spec.temperature, v) for k, v in accs.items()],
                  ["k", "temperature", "top1"])
    reporter.artifact(out_dir / "results.json", "results", {f"top1_k{k}": v for k, v in accs.items()})
    return result
