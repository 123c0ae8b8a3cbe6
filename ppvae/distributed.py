"""Data-parallel training with ``torch.distributed`` (torchrun, DistributedDataParallel).

ppvae does not launch processes itself: start it with ``torchrun``, which sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``::

    torchrun --nproc_per_node=2 -m ppvae train models/vae.toml          # one machine
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29500 --rdzv_id=vae -m ppvae train models/vae_bmnist.toml

:func:`ppvae.fit` then joins the process group (gloo on CPU, NCCL on CUDA, one GPU per
local rank), wraps the objective in ``DistributedDataParallel`` so gradients are averaged
across processes, gives each process its share of every global batch (``batch_size`` is
the *global* batch size, so a spec means the same thing on any number of processes),
reduces the training loss across processes, and lets only rank 0 write files.

Example (a single process is "not distributed"):
    >>> current() is None
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "current", "init_from_env", "is_main_process", "barrier", "all_reduce_sum"]


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and local rank of this process in the process group."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: torch.device) -> DistInfo | None:
    """Join the process group described by torchrun's environment variables, once.

    Returns None for a single process (no ``WORLD_SIZE`` > 1 and no group initialized).
    On CUDA each process uses the GPU of its local rank.
    """
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if _env_world_size() <= 1:
            return None
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return current()


def current() -> DistInfo | None:
    """This process's :class:`DistInfo` when a process group of size > 1 is running."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return None
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def is_main_process() -> bool:
    """True in a single process and on rank 0 of a group."""
    info = current()
    return info is None or info.is_main


def barrier() -> None:
    """Wait for every process of the group (no-op for a single process)."""
    if current() is not None:
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over the processes (returned unchanged for a single process)."""
    if current() is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()
