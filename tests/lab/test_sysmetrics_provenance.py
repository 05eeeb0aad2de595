"""System metrics (process tree through psutil, GPUs through a fake NVML module) and provenance parts
(git checkout reading, seeds) without a worker; tests/lab/test_observe_live.py has the real run."""

from __future__ import annotations

import subprocess
import sys
import time
import types

import pytest

from worker import provenance
from worker.sysmetrics import Gpus, ProcessTree, SystemSampler, visible_gpu_indices


def fake_nvml(name: str, count: int = 3, fail_init: bool = False) -> types.ModuleType:
    """The part of nvidia-ml-py the sampler uses: device i runs at 10·i % and uses i GiB."""
    nvml = types.ModuleType(name)
    nvml.calls = []

    def init() -> None:
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: nvml.calls.append("shutdown")
    nvml.nvmlDeviceGetCount = lambda: count
    nvml.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    nvml.nvmlDeviceGetName = lambda h: f"Fake GPU {h[1]}".encode()
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=10 * h[1], memory=0)
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=h[1] * 2**30, total=8 * 2**30)
    sys.modules[name] = nvml
    return nvml


def test_gpus_through_nvml_in_cuda_order(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    nvml = fake_nvml("fake_nvml_ok")
    gpus = Gpus.open("fake_nvml_ok")
    assert gpus is not None and gpus.models() == ["Fake GPU 2", "Fake GPU 0"]
    assert gpus.sample() == {"sys/gpu0_util": 20.0, "sys/gpu0_mem_mb": 2048.0,
                             "sys/gpu1_util": 0.0, "sys/gpu1_mem_mb": 0.0}
    gpus.close()
    assert nvml.calls == ["shutdown"]


def test_no_nvml_is_no_gpu_keys(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake_nvml("fake_nvml_broken", fail_init=True)
    assert Gpus.open("fake_nvml_broken") is None  # a driver-less machine
    assert Gpus.open("no_such_nvml_module") is None  # the package is not installed
    fake_nvml("fake_nvml_none", count=0)
    assert Gpus.open("fake_nvml_none") is None
    sink = Sink()
    sampler = SystemSampler(sink, 60, gpus=lambda: None)
    assert not [k for k in sampler.sample() if "gpu" in k]


def test_visible_gpu_indices():
    assert visible_gpu_indices(4, {}) == [0, 1, 2, 3]
    assert visible_gpu_indices(4, {"CUDA_VISIBLE_DEVICES": "3, 1,3"}) == [3, 1]
    assert visible_gpu_indices(4, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpu_indices(2, {"CUDA_VISIBLE_DEVICES": "0,7"}) == [0]
    assert visible_gpu_indices(2, {"CUDA_VISIBLE_DEVICES": "GPU-1234abcd"}) == [0, 1]


class Sink:
    def __init__(self) -> None:
        self.samples: list[dict[str, float]] = []

    def system_metrics(self, values, when=None) -> None:
        self.samples.append(dict(values))


def test_process_tree_counts_children():
    tree = ProcessTree()
    alone = tree.sample()
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(150 * 2**20); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while True:
            with_child = tree.sample()
            if with_child["sys/rss_mb"] - alone["sys/rss_mb"] > 140 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert with_child["sys/processes"] == alone["sys/processes"] + 1
        assert with_child["sys/rss_mb"] - alone["sys/rss_mb"] > 140
    finally:
        child.kill()
        child.wait()
    assert tree.sample()["sys/processes"] == alone["sys/processes"]


def test_sampler_samples_on_its_own_thread_and_once_more_at_stop():
    sink = Sink()
    fake_nvml("fake_nvml_sampler", count=1)
    sampler = SystemSampler(sink, 0.05, gpus=lambda: Gpus.open("fake_nvml_sampler")).start()
    time.sleep(0.4)
    sampler.stop()
    count = len(sink.samples)
    assert count >= 3
    assert {"sys/cpu_percent", "sys/rss_mb", "sys/gpu0_util", "sys/gpu0_mem_mb"} <= set(sink.samples[-1])
    time.sleep(0.15)
    assert len(sink.samples) == count  # stopped


def test_git_commit_of_a_worktree_and_outside_a_checkout(tmp_path):
    commit = "a" * 40
    main = tmp_path / "repo" / ".git"
    (main / "worktrees" / "wt").mkdir(parents=True)
    (main / "packed-refs").write_text(f"# pack-refs with: peeled\n{commit} refs/heads/feature\n")
    wt_git = main / "worktrees" / "wt"
    (wt_git / "HEAD").write_text("ref: refs/heads/feature\n")
    (wt_git / "commondir").write_text("../..\n")
    checkout = tmp_path / "wt"
    (checkout / "pkg").mkdir(parents=True)
    (checkout / ".git").write_text(f"gitdir: {wt_git}\n")
    info = provenance.git_commit(checkout / "pkg")
    assert info is not None and info["commit"] == commit and info["branch"] == "feature"
    (main / "HEAD").write_text("b" * 40 + "\n")  # a detached main checkout
    assert provenance.git_commit(tmp_path / "repo")["commit"] == "b" * 40
    assert provenance.git_commit(tmp_path / "elsewhere") is None


@pytest.mark.parametrize(("spec", "seed"), [
    ({"seed": 7}, 7), ({"runtime": {"seed": 3}}, 3), ({"format": "torchvision"}, None), ({"seed": "x"}, None),
])
def test_seed_of(spec, seed):
    assert provenance.seed_of(spec) == seed


def test_collect_without_a_gpu_or_checkout(tmp_path):
    from obow.config.eval import KnnSpec

    prov = provenance.collect("knn", KnnSpec(checkpoint="/w/c.pt", seed=5), lambda: [], code_dir=tmp_path)
    assert prov["seed"] == 5 and prov["spec"]["k"] == [20] and prov["spec"]["seed"] == 5
    assert prov["gpus"] == [] and prov["git"] is None and "torch" in prov


def test_reporter_stores_hostile_phases_provenance_and_system_points(lab):
    """What the library and the environment hand the reporter is stored cleaned, and the API answers."""
    from worker.reporter import DbReporter
    from worker.tasks import claim

    run = lab.client.post("/api/v1/runs", json={"kind": "faketrain"}, headers=lab.auth).json()
    maker = lab.client.app.state.sessionmaker
    reporter = DbReporter(maker, run["id"], claim(maker, run["id"], 60), lab.settings.artifact_root, heartbeat_s=None)
    hostile = "caching \ud800 fea\x00tures " + "x" * 10_000
    try:
        assert reporter.record_provenance(
            {"host": "h\ud800\x00st", "cuda_visible_devices": "\udcff", "seed": 2**63, "rate": float("nan")}
        )
        reporter.phase(hostile, 10**15, "im\x00ages", upcoming=[("n\ud800ext", 5, "images")])
        reporter.progress(3, 10**15)
        reporter.system_metrics(
            {"sys/cpu_percent": 12.5, "sys/rss_mb": float("nan"), "sys/gpu0_util": float("inf")},
            when=reporter.origin + 7.9,
        )
        reporter.flush()
    finally:
        reporter.close()
    detail = lab.client.get(f"/api/v1/runs/{run['id']}")
    assert detail.status_code == 200
    phase = detail.json()["phase"]
    assert phase["label"].startswith("caching \ufffd fea") and len(phase["label"]) <= 200
    assert "\x00" not in phase["label"] + phase["unit"] and phase["upcoming"] == ["n\ufffdext"]
    assert (phase["done"], phase["total"]) == (3, 10**15)
    (attempt,) = detail.json()["attempts"]
    prov = attempt["provenance"]
    assert prov["host"].startswith("h\ufffd") and "\x00" not in prov["host"] and prov["rate"] is None
    assert prov["seed"] == 2**63
    series = lab.client.get(f"/api/v1/runs/{run['id']}/metrics", params={"keys": "sys/cpu_percent"}).json()
    assert series["series"][0]["steps"] == [7] and series["series"][0]["values"] == [12.5]
    keys = lab.client.get(f"/api/v1/runs/{run['id']}").json()["metric_keys"]
    assert keys == ["sys/cpu_percent"]  # non-finite samples are not stored
