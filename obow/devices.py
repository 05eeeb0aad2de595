"""Choosing the torch device from a spec's `device` setting ("auto", "cpu" or "cuda")."""

from __future__ import annotations

import torch

from obow.errors import ConfigError


def resolve_device(wanted: str, local_rank: int = 0, setting: str = "device") -> torch.device:
    """"auto" takes a GPU when one is visible; "cuda" without a GPU is the user's error, named by `setting`.

    `local_rank` picks the GPU of a process among several (round-robin over the visible ones).
    """
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError(f"{setting} is 'cuda' but no GPU is visible; use {_cpu_hint(setting)}")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _cpu_hint(setting: str) -> str:
    return "--device cpu" if setting == "device" else f"{setting}=cpu"
