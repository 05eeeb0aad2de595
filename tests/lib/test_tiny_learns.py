"""The test preset learns: `FashionMNIST/tiny`'s recipe, trained for half its steps, ends with a kNN
accuracy far above the same initial network with BatchNorm statistics of the same views.

The issue's stricter bar, above the initial network as it is evaluated untouched (BatchNorm statistics
still 0/1, an identity), is met by `FashionMNIST/demo` with the full probe (81.0 against 76.3, README
"Fashion-MNIST recipes"), not by tiny's settings; this test pins what tiny does reach, against the
network it starts from.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from obow.config import load_pretrain_config
from obow.data.multicrop import eval_transform
from obow.data.sources import open_dataset
from obow.data.views import ViewDataset
from obow.models.backbone import ResNetBackbone
from obow.models.batchnorm import recalibrate_batchnorm
from obow.reporting import RecordingReporter
from obow.train.engine import Trainer
from obow.train.monitor import knn_monitor


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # steady on a loaded machine; the recipe does not depend on it
    yield
    torch.set_num_threads(before)


def with_view_statistics(net: ResNetBackbone, spec, images: int = 1024) -> ResNetBackbone:
    """A copy whose BatchNorm running statistics are the averages over clean evaluation views of training
    images: the initial network as training would normalise it."""
    net = copy.deepcopy(net)
    d = spec.data
    source = open_dataset(d.dataset_name, d.data_dir, "train")
    views = ViewDataset(source, eval_transform(d.teacher_resize, d.teacher_size, d.mean, d.std),
                        range(30_000, 30_000 + images))
    recalibrate_batchnorm(net, views)
    return net.eval()


def test_tiny_recipe_learns_past_its_initial_network(tmp_path: Path, one_thread):
    spec = load_pretrain_config(
        "FashionMNIST/tiny",
        ["optim.num_epochs=1", "runtime.knn_monitor_train_size=2000", "runtime.knn_monitor_test_size=1000"],
    )
    trainer = Trainer(spec, tmp_path, RecordingReporter())
    initial = with_view_statistics(trainer.model.student, spec)
    before = knn_monitor(initial, spec, trainer.device)["knn_acc@1"]
    trainer.fit()
    assert trainer.state.global_iteration == 128
    after = knn_monitor(trainer.model.student, spec, trainer.device)["knn_acc@1"]
    assert after > before + 5.0, (before, after)
