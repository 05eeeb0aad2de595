"""The supervised epoch loop shared by the linear probe and semi-supervised fine-tuning.

Both train a classifier with cross-entropy and SGD, set the learning rate once per epoch, evaluate on
the test split every `eval_every` epochs (and after the last), and report the same per-epoch point.
They differ only in what a batch is (cached or computed features for the probe, images for
fine-tuning), in what the model is and in how the learning rates are set, which the caller passes in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from obow.config.eval import StepOrCosine
from obow.reporting import Reporter, check_stop, start_phase

# epoch (0-based) -> (inputs, labels) batches already on the model's device
Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


def train_classifier(
    model: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    steps_per_epoch: int,
    spec: StepOrCosine,
    set_lr: Callable[[int], dict[str, float]],
    evaluate: Callable[[], dict[str, float]],
    reporter: Reporter,
) -> list[dict[str, float]]:
    """Run `spec.epochs` epochs; returns the history, one point per epoch.

    `set_lr(epoch)` sets the optimizer's learning rates for that epoch and returns them as they should
    appear in the point (`{"lr": ...}`, plus `lr_head` for fine-tuning); `evaluate()` returns the test
    metrics (`top1`, `top5`). A stop request is honoured before every step.
    """
    criterion = nn.CrossEntropyLoss()
    history: list[dict[str, float]] = []
    total = spec.epochs * steps_per_epoch
    done = 0
    start_phase(reporter, "training", total, "iterations")
    for epoch in range(spec.epochs):
        point: dict[str, float] = {"epoch": epoch + 1, **set_lr(epoch)}
        t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        for inputs, labels in batches(epoch):
            check_stop(reporter)
            logits = model(inputs)
            loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            done += 1
            reporter.progress(done, total)
        point.update(loss=loss_sum / seen, train_top1=100.0 * correct / seen, epoch_seconds=time.perf_counter() - t0)
        if (epoch + 1) % spec.eval_every == 0 or epoch + 1 == spec.epochs:
            point.update(evaluate())  # may be a phase of its own (a pass over the test images)
            if epoch + 1 < spec.epochs:
                start_phase(reporter, "training", total, "iterations", done=done)
        history.append(point)
        reporter.metrics(epoch + 1, {k: v for k, v in point.items() if k != "epoch"})
        reporter.log("epoch {epoch}: loss {loss:.4f} train@1 {train_top1:.2f}".format(**point)
                     + (" test@1 {top1:.2f} test@5 {top5:.2f}".format(**point) if "top1" in point else ""))
    return history
