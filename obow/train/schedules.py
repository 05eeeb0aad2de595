"""Learning-rate schedules, as pure functions of the position in training.

Two families: the original solver's per-epoch schedules (`learning_rate`), and the per-iteration
schedule of a run whose length is fixed in steps (`fitted_learning_rate`), which a time-budgeted run
uses once it has measured how many steps its budget allows (`steps_within_budget`): a budget then
ends with the lr at `end_lr` and the teacher momentum at 1, instead of cutting a 10-epoch cosine
off in its second epoch.
"""

from __future__ import annotations

import math

from obow.config.pretrain import OptimSpec


def cosine(start: float, end: float, progress: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_factor(warmup_iters: int, global_iteration: int) -> float:
    """Linear warm-up multiplier: (i + 1) / W over the first W iterations, then 1."""
    if warmup_iters <= 0:
        return 1.0
    return min(1.0, (global_iteration + 1) / warmup_iters)


def learning_rate(optim: OptimSpec, epoch: int, iteration_in_epoch: int, iters_per_epoch: int) -> float:
    """lr at a 0-based epoch and iteration.

    `cos` and `step_lr` change once per epoch (`cos` times the `warmup_iters` ramp, if any);
    `cos_warmup` rises linearly per iteration from 0 during the warm-up epochs, then follows a per-epoch
    cosine over the remaining epochs.
    """
    if optim.lr_schedule_type == "cos":
        ramp = warmup_factor(optim.warmup_iters, epoch * iters_per_epoch + iteration_in_epoch)
        return ramp * cosine(optim.lr, optim.end_lr, epoch / optim.num_epochs)
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


def fitted_learning_rate(optim: OptimSpec, iteration: int, total_iterations: int) -> float:
    """lr at a 0-based iteration of a `cos` run of exactly `total_iterations` steps, per iteration.

    The `warmup_iters` ramp first (it does not depend on the length, so the steps taken before the
    length is known follow the same curve), then a cosine from `lr` that reaches `end_lr` on the last
    step (iteration total − 1).
    """
    if optim.lr_schedule_type != "cos":
        raise ValueError("a schedule fitted to a step count needs optim.lr_schedule_type 'cos'")
    warm = min(optim.warmup_iters, max(total_iterations - 1, 0))
    if iteration < warm:
        return optim.lr * warmup_factor(warm, iteration)
    span = total_iterations - 1 - warm
    progress = 1.0 if span <= 0 else min(1.0, (iteration - warm) / span)
    return cosine(optim.lr, optim.end_lr, progress)


def steps_within_budget(done: int, seconds_per_step: float, remaining_s: float, cap: int) -> int:
    """Total steps of a run that has done `done` steps, runs at `seconds_per_step` and has `remaining_s`
    seconds left: as many more whole steps as fit, never more than `cap` (the nominal length) in all and
    never fewer than one more step."""
    if seconds_per_step <= 0 or not math.isfinite(seconds_per_step):
        return cap
    more = int(max(remaining_s, 0.0) // seconds_per_step)
    return max(min(done + 1, cap), min(cap, done + more))
