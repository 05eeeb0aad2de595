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


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 convolutions run natively on `device`: a GPU of compute capability 8.0 or newer,
    or a CPU with AVX512-BF16 or AMX (oneDNN's test). Elsewhere torch falls back to generic kernels."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 path either
        return False


def check_precision(precision: str, device: torch.device, setting: str = "runtime.precision") -> None:
    """bf16 is a speed setting: where the hardware lacks it, torch emulates it with generic kernels that
    ran the ResNet18 step 10-27x slower than fp32 (an AVX2-only CPU; README, "Library benchmarks").
    Such a run is refused at its start, with the fix, instead of silently taking hours."""
    if precision == "bf16" and not native_bf16(device):
        where = "this GPU (compute capability < 8.0)" if device.type == "cuda" else (
            "this CPU (it has neither AVX512-BF16 nor AMX)"
        )
        raise ConfigError(
            f"{setting} is 'bf16' but {where} has no native bfloat16, so torch would emulate it (on an "
            f"AVX2-only CPU that made the training step 10-27x slower than float32); use {setting}=fp32 "
            "(on a CPU, runtime.channels_last=true is the speed setting that remains)"
        )
