import math

import pytest

from obow.config import OptimSpec
from obow.train.schedules import learning_rate


def test_cos_is_per_epoch_from_lr_to_end():
    o = OptimSpec(lr=0.05, num_epochs=80, lr_schedule_type="cos")
    assert learning_rate(o, 0, 0, 10) == pytest.approx(0.05)
    assert learning_rate(o, 0, 9, 10) == pytest.approx(0.05)  # constant inside an epoch
    assert learning_rate(o, 40, 0, 10) == pytest.approx(0.025)
    assert learning_rate(o, 20, 0, 10) == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_cos_warmup_rises_per_iteration_then_cosine():
    o = OptimSpec(lr=0.03, end_lr=3e-5, num_epochs=200, warmup_epochs=10, lr_schedule_type="cos_warmup")
    assert learning_rate(o, 0, 0, 100) == 0.0
    assert learning_rate(o, 0, 50, 100) == pytest.approx(0.03 * 50 / 1000)
    assert learning_rate(o, 9, 99, 100) == pytest.approx(0.03 * 999 / 1000)
    assert learning_rate(o, 10, 0, 100) == pytest.approx(0.03)
    assert learning_rate(o, 105, 0, 100) == pytest.approx(3e-5 + (0.03 - 3e-5) * 0.5)


def test_step_lr():
    o = OptimSpec(lr=10, num_epochs=50, lr_schedule_type="step_lr", lr_schedule=[15, 30, 45], lr_decay=0.1)
    assert [learning_rate(o, e, 0, 1) for e in (0, 14, 15, 30, 49)] == pytest.approx([10, 10, 1, 0.1, 0.01])
