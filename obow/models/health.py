"""Vocabulary health: is the online vocabulary used, or collapsing onto a few words?

Assignment counts (nearest word of every teacher location) are accumulated over a window of steps;
at the end of each window the fraction of words used and the entropy of their usage are reported.
A collapsing vocabulary shows as a falling used fraction long before the loss says anything.
"""

from __future__ import annotations

import math

import torch


def used_fraction(counts: torch.Tensor) -> float:
    """Share of words that were the nearest word of at least one location."""
    return float((counts > 0).float().mean())


def usage_entropy(counts: torch.Tensor) -> float:
    """Entropy (nats) of the word-usage distribution; log(K) when every word is used equally."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts.double() / total
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def mean_queue_age(num_words: int, per_step: int, steps: int) -> float:
    """Mean age, in steps, of the queue entries after `steps` FIFO writes of `per_step` entries.

    Entries never overwritten are as old as the run. Derived from the counters alone, so it needs no
    extra state and survives resume.
    """
    if steps <= 0:
        return 0.0
    inserted = steps * per_step
    ages = []
    for slot in range(num_words):
        if inserted <= slot:
            ages.append(steps)
            continue
        last_write = slot + ((inserted - 1 - slot) // num_words) * num_words
        ages.append(steps - 1 - last_write // per_step)
    return sum(ages) / num_words


class UsageWindow:
    """Accumulates per-level assignment counts and summarises them every `window` steps."""

    def __init__(self, num_words: list[int], window: int, collapse_below: float) -> None:
        self.num_words, self.window, self.collapse_below = num_words, window, collapse_below
        self.counts = [torch.zeros(k, dtype=torch.long) for k in num_words]
        self.steps = 0

    def add(self, level_counts: list[torch.Tensor]) -> dict[str, float] | None:
        for acc, counts in zip(self.counts, level_counts, strict=True):
            acc += counts.to(acc.device)
        self.steps += 1
        if self.steps < self.window:
            return None
        summary: dict[str, float] = {}
        for i, (acc, k) in enumerate(zip(self.counts, self.num_words, strict=True)):
            frac = used_fraction(acc)
            summary[f"words_used_lev@{i}"] = frac
            summary[f"usage_entropy_lev@{i}"] = usage_entropy(acc)
            summary[f"usage_entropy_norm_lev@{i}"] = usage_entropy(acc) / math.log(k) if k > 1 else 1.0
            summary[f"collapse_lev@{i}"] = 1.0 if frac < self.collapse_below else 0.0
            acc.zero_()
        self.steps = 0
        return summary
