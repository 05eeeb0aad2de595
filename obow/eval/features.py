"""Frozen-feature extraction shared by every evaluation and by the pretraining monitor."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from obow.models.backbone import ResNetBackbone


@torch.no_grad()
def extract_features(
    backbone: ResNetBackbone,
    dataset: Dataset | DataLoader,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    progress: bool = True,
    workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global-pooled block4 features [N, C] (float32, CPU) and labels [N] of a labelled dataset, in order.

    The backbone is put in eval mode (BN running statistics) and restored to its previous mode after.
    """
    loader = dataset if isinstance(dataset, DataLoader) else DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers
    )
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    iterator = loader
    if progress:
        from tqdm import tqdm

        iterator = tqdm(loader, desc="features", unit="batch", leave=False)
    try:
        for images, targets in iterator:
            out = backbone(images.to(device, non_blocking=True), taps=("pooled",))["pooled"]
            feats.append(out.float().cpu())
            labels.append(torch.as_tensor(targets))
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)
