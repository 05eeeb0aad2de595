"""In-order feature passes leave torch's global random stream alone, so a monitored run trains on exactly
the images, views and vocabulary updates of the same run without its monitor."""

from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from obow.io.checkpoint import load_training_checkpoint
from obow.models.loaders import in_order_loader
from obow.reporting import RecordingReporter
from obow.train.checkpoint import latest_checkpoint
from obow.train.engine import run_pretrain
from tests.lib.test_pretrain import tiny_spec


def test_an_in_order_pass_draws_nothing_from_the_global_generator():
    data = TensorDataset(torch.arange(10.0), torch.arange(10))
    torch.manual_seed(3)
    before = torch.get_rng_state()
    batches = [x.tolist() for x, _ in in_order_loader(data, batch_size=4)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(torch.get_rng_state(), before)
    # what it guards against: a plain loader draws its workers' base seed from that stream on every pass
    list(DataLoader(data, batch_size=4, shuffle=False))
    assert not torch.equal(torch.get_rng_state(), before)


def test_the_knn_monitor_does_not_change_what_the_run_trains_on(tmp_path: Path):
    off = ["runtime.knn_monitor_every=null", "runtime.knn_monitor_at_start=false"]
    on = ["runtime.knn_monitor_every=1", "runtime.knn_monitor_at_start=true", "runtime.knn_monitor_train_size=64",
          "runtime.knn_monitor_test_size=32"]
    states = {}
    for name, monitor in (("off", off), ("on", on)):
        reporter = RecordingReporter()
        run_pretrain(tiny_spec("optim.num_epochs=1", *monitor), tmp_path / name, reporter)
        states[name] = load_training_checkpoint(latest_checkpoint(tmp_path / name))["model"]
        assert bool(reporter.series("knn_acc@1")) == (name == "on")
    assert states["on"].keys() == states["off"].keys()
    for key, value in states["off"].items():
        assert torch.equal(states["on"][key], value), key
