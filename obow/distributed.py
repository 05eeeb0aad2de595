"""torch.distributed helpers that degrade to no-ops in a single process.

In the bottom layer because both the models (the vocabulary all-reduces its statistics and gathers its
queue entries) and the training engine (process groups, barriers) use them.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / world_size()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value


def gather_concat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank along dim 0, in rank order (no gradient)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Make every rank start from rank `src`'s buffers (the random initial vocabularies)."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_process_group(rank_: int, world: int, backend: str, init_method: str) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group(backend=backend, init_method=init_method, rank=rank_, world_size=world)


def barrier() -> None:
    if is_distributed():
        dist.barrier()
