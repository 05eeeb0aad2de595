"""How many intra-op threads a CPU training process gives torch.

torch starts one thread per core, but a training process also has its loader workers (one process each)
and, with `runtime.num_processes`, sibling ranks on the same cores. Oversubscribed, OpenMP threads spin
waiting for each other (the suite saw steps 30x slower on a loaded 2-core machine). On a quiet 2-core
machine the CPU preset ran as fast with 1 thread beside its loader worker as with 2 (README).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(cores: int, processes: int, loader_workers: int) -> int:
    """One thread per core left to each training process once its loader workers have theirs."""
    return max(1, cores // processes - loader_workers)


@contextlib.contextmanager
def training_threads(requested: int | None, on_cpu: bool, processes: int, loader_workers: int) -> Iterator[int]:
    """Set torch's intra-op threads for the run and give back the caller's count afterwards.

    `requested` (runtime.threads) always wins. Otherwise a CPU run takes `default_threads`, unless the
    environment already chose (OMP_NUM_THREADS) or torch already has fewer threads than that; a GPU run
    keeps torch's count.
    """
    before = torch.get_num_threads()
    chosen = before
    if requested:
        chosen = requested
    elif on_cpu and "OMP_NUM_THREADS" not in os.environ:
        chosen = min(before, default_threads(available_cores(), processes, loader_workers))
    torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        torch.set_num_threads(before)
