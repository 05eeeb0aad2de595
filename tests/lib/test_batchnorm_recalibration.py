"""BatchNorm recalibration: against a hand computation, then at the end of a real pretraining run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from obow.config import load_pretrain_config
from obow.data.multicrop import eval_transform
from obow.data.sources import open_dataset
from obow.data.views import ViewDataset
from obow.io.checkpoint import load_training_checkpoint
from obow.models.batchnorm import recalibrate_batchnorm
from obow.models.obow import build_obow
from obow.reporting import RecordingReporter
from obow.train.checkpoint import latest_checkpoint
from obow.train.engine import run_pretrain
from obow.train.monitor import seeded_subset


def batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean, biased variance (what training-mode BN normalises with) and unbiased variance
    (what it averages into the running statistics) of [N, C, H, W], written out."""
    n = x.shape[0] * x.shape[2] * x.shape[3]
    mean = x.sum(dim=(0, 2, 3)) / n
    squares = ((x - mean[None, :, None, None]) ** 2).sum(dim=(0, 2, 3))
    return mean, squares / n, squares / (n - 1)


def test_statistics_are_the_batch_average_of_a_hand_computation():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5)
    ).double()
    for bn in (net[1], net[4]):  # stale statistics and a non-default momentum, to be replaced and kept
        bn.running_mean.fill_(7.0)
        bn.running_var.fill_(9.0)
        bn.momentum = 0.3
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    images = torch.randn(10, 3, 6, 6, dtype=torch.float64) * 2 + 1
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "tracked" not in k}
    net.eval()

    batches = recalibrate_batchnorm(net, TensorDataset(images, torch.zeros(10)), batch_size=4)

    # by hand: batches of 4, 4 and 2 images; each layer averages its batches' statistics with equal weight
    first_means, first_vars, second_means, second_vars = [], [], [], []
    for chunk in images.split(4):
        a = F.conv2d(chunk, net[0].weight, net[0].bias, padding=1)
        mean, biased, unbiased = batch_stats(a)
        first_means.append(mean)
        first_vars.append(unbiased)
        normalised = (a - mean[None, :, None, None]) / torch.sqrt(biased[None, :, None, None] + 1e-5)
        h = torch.relu(normalised * net[1].weight[None, :, None, None] + net[1].bias[None, :, None, None])
        b = F.conv2d(h, net[3].weight, net[3].bias)
        mean, _, unbiased = batch_stats(b)
        second_means.append(mean)
        second_vars.append(unbiased)
    assert batches == 3
    for bn, means, variances in ((net[1], first_means, first_vars), (net[4], second_means, second_vars)):
        torch.testing.assert_close(bn.running_mean, sum(means) / 3, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.running_var, sum(variances) / 3, rtol=1e-12, atol=1e-12)
        assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.3
    assert not net.training
    for name, value in net.state_dict().items():  # weights, biases: untouched
        if name in before:
            assert torch.equal(value, before[name]), name


def test_no_batchnorm_is_a_no_op():
    net = nn.Linear(3, 2)
    assert recalibrate_batchnorm(net, TensorDataset(torch.randn(4, 3), torch.zeros(4))) == 0


@pytest.mark.parametrize("recalibrate", [True, False])
def test_a_run_ends_with_the_student_recalibrated_on_clean_views(tmp_path: Path, recalibrate: bool):
    """A few tiny steps with `runtime.bn_recalibration_images`: the checkpoint's student statistics are
    those a recalibration of that student on the seeded clean views gives (they do not depend on the
    statistics before it); without the setting they are the training-crop averages, which differ."""
    count = 64
    overrides = ["data.epoch_size=64", "data.batch_size=16", "optim.num_epochs=1", "runtime.workers=0"]
    if recalibrate:
        overrides.append(f"runtime.bn_recalibration_images={count}")
    spec = load_pretrain_config("FashionMNIST/tiny", overrides)
    rep = RecordingReporter()
    run_pretrain(spec, tmp_path, rep)

    model = build_obow(spec)
    model.load_state_dict(load_training_checkpoint(latest_checkpoint(tmp_path))["model"])
    saved = {k: v.clone() for k, v in model.student.state_dict().items() if "running" in k}
    d = spec.data
    train = open_dataset(d.dataset_name, None, "train")
    views = ViewDataset(train, eval_transform(d.teacher_resize, d.teacher_size, d.mean, d.std),
                        seeded_subset(len(train), count, spec.runtime.seed + 2))
    recalibrate_batchnorm(model.student, views)
    again = {k: v for k, v in model.student.state_dict().items() if "running" in k}
    same = all(torch.allclose(saved[k], again[k], rtol=1e-5, atol=1e-6) for k in saved)
    logged = any("BatchNorm statistics re-estimated on 64 clean views" in msg for _, msg in rep.logs)
    assert same == recalibrate and logged == recalibrate
