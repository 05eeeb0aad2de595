import os

import pytest

# Two cores are shared by the whole suite: keep each test process from oversubscribing them. Under
# pytest-xdist (scripts/test.sh runs two workers) each worker gets one thread, so busy workers fill the
# two cores without OpenMP threads spinning against each other.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
THREADS = 1 if XDIST_WORKER else 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

# Modules that start live servers and Celery workers: one xdist worker runs them all, one after another.
# Each xdist worker has Redis databases of its own (tests/lab/conftest.py), so they could spread over both,
# but the pruned-trial test of test_sweeps_live times a prune against one short epoch of a live worker and
# failed that way when another live test ran beside it: they stay together until it holds. (The phase test
# of test_observe_live, which failed the same way, no longer depends on how far a sampled phase got.)
LIVE_BROKER_MODULES = {
    "test_browser", "test_dispatch", "test_faults", "test_hostile_worker", "test_integration",
    "test_observe_live", "test_sse_restart", "test_sweeps_live",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in LIVE_BROKER_MODULES:
            item.add_marker(pytest.mark.xdist_group("live-broker"))


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
