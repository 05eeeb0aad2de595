"""Re-estimating a backbone's BatchNorm statistics on the views it will be evaluated on.

During OBoW pretraining the student's BN running statistics are an exponential average over the crop
batches it was trained on, alternating crop sizes (e.g. 32 px crops and 16 px patches), whereas every
downstream use (kNN, linear probes, exported weights) feeds it whole, clean teacher-size views. On small
images the two differ a lot (borders and padding make up much of a 2x2 map), so the statistics do not
match the evaluation inputs. Replacing them by plain averages over a pass of clean views ("precise BN")
removes that mismatch without touching a single weight.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from obow.models.loaders import in_order_loader
from obow.reporting import Reporter, start_phase


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(
    backbone: nn.Module,
    dataset: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    reporter: Reporter | None = None,
    label: str = "BatchNorm recalibration",
) -> int:
    """Set every BN layer's running mean and variance to the average over `dataset`'s batches.

    Each layer's statistics are the equal-weight average of its per-batch mean and unbiased variance
    (PyTorch's cumulative average, `momentum=None`) with the network in training mode, so each layer
    sees inputs normalised the way training normalised them. Weights, biases and the other buffers are
    untouched; the layers' momentum and the backbone's mode are restored. Returns the batches used.
    """
    layers = batchnorm_layers(backbone)
    if not layers:
        return 0
    loader = in_order_loader(dataset, batch_size)
    momenta = [layer.momentum for layer in layers]
    was_training = backbone.training
    total, done, batches = len(dataset), 0, 0  # type: ignore[arg-type]
    if reporter is not None:
        start_phase(reporter, label, total, "images")
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
        backbone.train()
        for images, _ in loader:
            backbone(images.to(device))
            batches += 1
            done += len(images)
            if reporter is not None:
                reporter.progress(done, total)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        backbone.train(was_training)
    return batches
