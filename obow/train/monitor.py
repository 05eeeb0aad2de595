"""Representation-quality monitor during pretraining: kNN accuracy of the student on held-out data.

Runs on rank 0 every `runtime.knn_monitor_every` epochs over fixed, seeded subsets of the training
split (the memory bank) and of the held-out split, so successive values form a comparable curve.
"""

from __future__ import annotations

import torch

from obow.config.pretrain import PretrainSpec
from obow.data.multicrop import eval_transform
from obow.data.sources import open_dataset
from obow.data.views import ViewDataset
from obow.models.backbone import ResNetBackbone
from obow.models.features import extract_features, knn_accuracy
from obow.reporting import Reporter


def seeded_subset(n: int, size: int, seed: int) -> list[int]:
    """`size` distinct indices below `n`, sorted, the same for a seed on every machine."""
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[: min(size, n)].tolist())


def clean_views(spec: PretrainSpec, split: str, size: int, seed: int) -> ViewDataset:
    """`size` seeded images of a split as the evaluation sees them: whole, clean teacher-size views."""
    d = spec.data
    source = open_dataset(d.dataset_name, d.data_dir, split, d.subset if split == "train" else None)
    transform = eval_transform(d.teacher_resize, d.teacher_size, d.mean, d.std)
    return ViewDataset(source, transform, seeded_subset(len(source), size, seed))


def knn_monitor(
    student: ResNetBackbone, spec: PretrainSpec, device: torch.device, reporter: Reporter | None = None
) -> dict[str, float]:
    """kNN top-1 of the student on fixed subsets; its two feature passes are phases of the reporter's run."""
    d, r = spec.data, spec.runtime
    if d.val_split == "none":
        return {}
    bank = clean_views(spec, "train", r.knn_monitor_train_size, r.seed)
    queries = clean_views(spec, d.val_split, r.knn_monitor_test_size, r.seed + 1)
    # extract_features runs the student in eval mode and gives it back in the mode it found it
    bank_x, bank_y = extract_features(student, bank, device, batch_size=256, progress=False, reporter=reporter,
                                      label="kNN monitor: bank features")
    query_x, query_y = extract_features(student, queries, device, batch_size=256, progress=False,
                                        reporter=reporter, label="kNN monitor: query features")
    acc = knn_accuracy(bank_x, bank_y, query_x, query_y, k=20, temperature=0.07, num_classes=bank.source.num_classes)
    return {"knn_acc@1": acc}
