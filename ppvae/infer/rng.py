"""Random streams: seeded blocks that leave the global generators as they were, and
deterministic kernels for a block.

Example:
    >>> import torch
    >>> with seeded(3):
    ...     a = torch.rand(2)
    >>> with seeded(3):
    ...     b = torch.rand(2)
    >>> torch.equal(a, b)
    True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["seeded", "deterministic_algorithms"]


@contextlib.contextmanager
def seeded(seed: int | None, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the block on the global random streams seeded with ``seed`` (None: unseeded)
    and restore them afterwards: the CPU stream, and ``device``'s when it is a GPU
    (``torch.manual_seed`` seeds every device, so a GPU stream must be forked too, or
    training on CUDA would restart from the same noise after every validation pass)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels for the block (cuBLAS needs a fixed workspace for them);
    the previous setting is restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
