"""Vocabulary-health metrics on hand-built usage counts and a naive queue simulation."""

import math

import pytest
import torch

from obow.models.health import UsageWindow, mean_queue_age, usage_entropy, used_fraction


def test_used_fraction_and_entropy_hand_values():
    counts = torch.tensor([4, 0, 4, 0])
    assert used_fraction(counts) == 0.5
    assert usage_entropy(counts) == pytest.approx(math.log(2))
    assert usage_entropy(torch.tensor([1, 1, 1, 1])) == pytest.approx(math.log(4))
    assert usage_entropy(torch.tensor([7, 0, 0])) == 0.0
    assert usage_entropy(torch.zeros(3, dtype=torch.long)) == 0.0


@pytest.mark.parametrize(("k", "n", "steps"), [(8, 2, 0), (8, 2, 1), (8, 2, 3), (8, 2, 4), (8, 2, 11), (12, 4, 7)])
def test_queue_age_matches_a_simulated_fifo(k, n, steps):
    written_at = [None] * k
    ptr = 0
    for step in range(steps):
        for _ in range(n):
            written_at[ptr] = step
            ptr = (ptr + 1) % k
    ages = [steps if w is None else steps - 1 - w for w in written_at]
    assert mean_queue_age(k, n, steps) == pytest.approx(sum(ages) / k)


def test_usage_window_summarises_and_flags_collapse():
    window = UsageWindow([100], window=2, collapse_below=0.05)
    few = torch.zeros(100, dtype=torch.long)
    few[:3] = 5
    assert window.add([few]) is None
    summary = window.add([few])
    assert summary["words_used_lev@0"] == pytest.approx(0.03)
    assert summary["collapse_lev@0"] == 1.0
    assert summary["usage_entropy_lev@0"] == pytest.approx(math.log(3))
    healthy = torch.ones(100, dtype=torch.long)
    window.add([healthy])
    summary = window.add([healthy])
    assert summary["words_used_lev@0"] == 1.0 and summary["collapse_lev@0"] == 0.0
    assert summary["usage_entropy_norm_lev@0"] == pytest.approx(1.0)
