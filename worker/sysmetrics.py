"""System metrics of a running attempt, next to its training metrics.

A daemon thread samples every few seconds: CPU % and resident memory summed over the attempt's process
and all its descendants (DataLoader workers, DDP ranks), through psutil; and, when NVML answers (an
NVIDIA driver and the `nvidia-ml-py` package), each visible GPU's utilisation and used memory. The points
go through the reporter's metric path under `sys/` (`sys/cpu_percent`, `sys/rss_mb`, `sys/gpu0_util`,
`sys/gpu0_mem_mb`), keyed by seconds since the run's first attempt began, so charts and CSV exports get
them like any metric. Without psutil or a GPU the corresponding keys are simply absent.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

PREFIX = "sys/"


class Sink(Protocol):
    def system_metrics(self, values: Mapping[str, float], when: float | None = None) -> None: ...


class ProcessTree:
    """CPU % and RSS of a process and its descendants. psutil measures CPU % between two calls on the
    same Process object, so the objects are kept from one sample to the next (a new child's first
    sample counts 0)."""

    def __init__(self, pid: int | None = None) -> None:
        import psutil

        self._psutil = psutil
        self._root = psutil.Process(pid or os.getpid())
        self._known: dict[int, Any] = {}
        self.sample()  # primes cpu_percent

    def sample(self) -> dict[str, float]:
        psutil = self._psutil
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return {}
        cpu, rss, alive = 0.0, 0, {}
        for proc in procs:
            proc = self._known.get(proc.pid, proc)
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss
            except psutil.Error:  # exited between the listing and the read
                continue
            alive[proc.pid] = proc
        self._known = alive
        return {f"{PREFIX}cpu_percent": cpu, f"{PREFIX}rss_mb": rss / 2**20, f"{PREFIX}processes": float(len(alive))}


def visible_gpu_indices(count: int, env: Mapping[str, str] | None = None) -> list[int]:
    """NVML indices of the GPUs this process may use, in CUDA order: CUDA_VISIBLE_DEVICES when it lists
    indices, every device otherwise (UUIDs or an unset variable)."""
    value = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return list(range(count))
    picked: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            return list(range(count))
        if int(part) < count and int(part) not in picked:
            picked.append(int(part))
    return picked


class Gpus:
    """Per-GPU utilisation (%) and used memory (MiB) through NVML, numbered as CUDA numbers them."""

    def __init__(self, nvml: Any, indices: list[int]) -> None:
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]

    @classmethod
    def open(cls, module: str = "pynvml") -> Gpus | None:
        """None when there is no NVML (no package, no driver, no device): a CPU worker just has no GPU keys."""
        try:
            nvml = importlib.import_module(module)
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
        except Exception:
            return None
        indices = visible_gpu_indices(count)
        if not indices:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()
            return None
        try:
            return cls(nvml, indices)
        except Exception:
            return None

    def models(self) -> list[str]:
        names = []
        for handle in self._handles:
            try:
                name = self._nvml.nvmlDeviceGetName(handle)
            except Exception:
                continue
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return names

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for n, handle in enumerate(self._handles):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:  # a device that fell off the bus, a driver reload: skip it this time
                continue
            out[f"{PREFIX}gpu{n}_util"] = float(util.gpu)
            out[f"{PREFIX}gpu{n}_mem_mb"] = float(memory.used) / 2**20
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


class SystemSampler:
    """Samples every `interval_s` seconds into `sink.system_metrics` until stopped."""

    def __init__(
        self,
        sink: Sink,
        interval_s: float = 5.0,
        gpus: Callable[[], Gpus | None] = Gpus.open,
    ) -> None:
        self._sink = sink
        self._interval = interval_s
        self._stop = threading.Event()
        try:
            self._tree: ProcessTree | None = ProcessTree()
        except Exception:  # no psutil: no CPU keys
            self._tree = None
        self._gpus = gpus()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="system-metrics")

    def sample(self) -> dict[str, float]:
        values: dict[str, float] = {}
        if self._tree is not None:
            values.update(self._tree.sample())
        if self._gpus is not None:
            values.update(self._gpus.sample())
        return values

    def start(self) -> SystemSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                values = self.sample()
                if values:
                    self._sink.system_metrics(values)
            except Exception:  # never let the sampler take the run down
                pass

    def stop(self) -> None:
        """Stop and take one last sample, so even a run shorter than the interval has a point."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            values = self.sample()
            if values:
                self._sink.system_metrics(values)
        if self._gpus is not None:
            self._gpus.close()
