import os

import pytest

# Two cores are shared by the whole suite: keep each test process from oversubscribing them. Under
# pytest-xdist (scripts/test.sh runs two workers) each worker gets one thread, so busy workers fill the
# two cores without OpenMP threads spinning against each other.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
THREADS = 1 if XDIST_WORKER else 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:
        yield
        return
    torch.set_num_threads(THREADS)
    yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A real (one short epoch) OBoW Lab training checkpoint of the tiny Fashion-MNIST preset."""
    from obow.config import load_pretrain_config
    from obow.reporting import NullReporter
    from obow.train.checkpoint import latest_checkpoint
    from obow.train.engine import run_pretrain

    out = tmp_path_factory.mktemp("tiny_run")
    spec = load_pretrain_config(
        "FashionMNIST/tiny", ["data.epoch_size=64", "data.batch_size=16", "optim.num_epochs=1", "runtime.workers=0"]
    )
    run_pretrain(spec, out, NullReporter())
    return latest_checkpoint(out)
