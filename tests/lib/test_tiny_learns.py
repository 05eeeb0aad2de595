"""The demo preset shows the method working: `FashionMNIST/tiny`, trained as shipped, ends with a kNN
accuracy above the same network at initialisation (same seed, same evaluation, fixed subsets)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from obow.config import load_pretrain_config
from obow.models.obow import build_obow
from obow.reporting import RecordingReporter
from obow.train.engine import Trainer
from obow.train.monitor import knn_monitor


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # steady on a loaded machine; the recipe does not depend on it
    yield
    torch.set_num_threads(before)


def test_tiny_preset_ends_above_its_initialisation(tmp_path: Path, one_thread):
    # the recipe as shipped; only the monitor's subsets are set here (2,000 train images as the memory
    # bank, 1,000 test queries, both seeded)
    spec = load_pretrain_config(
        "FashionMNIST/tiny", ["runtime.knn_monitor_train_size=2000", "runtime.knn_monitor_test_size=1000"]
    )
    torch.manual_seed(spec.runtime.seed)
    initial = build_obow(spec).student
    trainer = Trainer(spec, tmp_path, RecordingReporter())
    assert all(torch.equal(a, b) for a, b in zip(initial.state_dict().values(),
                                                 trainer.model.student.state_dict().values(), strict=True))
    before = knn_monitor(initial, spec, trainer.device)["knn_acc@1"]
    trainer.fit()
    after = knn_monitor(trainer.model.student, spec, trainer.device)["knn_acc@1"]
    assert after > before + 1.0, (before, after)
