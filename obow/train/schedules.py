"""Learning-rate schedules of the original solver, as pure functions of the position in training."""

from __future__ import annotations

import math

from obow.config.pretrain import OptimSpec


def cosine(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate(optim: OptimSpec, epoch: int, iteration_in_epoch: int, iters_per_epoch: int) -> float:
    """lr at a 0-based epoch and iteration.

    `cos` and `step_lr` change once per epoch; `cos_warmup` rises linearly per iteration from 0 during
    the warm-up epochs, then follows a per-epoch cosine over the remaining epochs.
    """
    if optim.lr_schedule_type == "cos":
        return cosine(optim.lr, optim.end_lr, epoch / optim.num_epochs)
    if optim.lr_schedule_type == "cos_warmup":
        warm = optim.warmup_epochs
        if epoch < warm:
            done = epoch * iters_per_epoch + iteration_in_epoch
            return optim.lr * done / (warm * iters_per_epoch)
        return cosine(optim.lr, optim.end_lr, (epoch - warm) / (optim.num_epochs - warm))
    if optim.lr_schedule_type == "step_lr":
        passed = sum(1 for milestone in optim.lr_schedule if milestone <= epoch)
        return optim.lr * optim.lr_decay**passed
    raise ValueError(f"unknown lr schedule '{optim.lr_schedule_type}'")
