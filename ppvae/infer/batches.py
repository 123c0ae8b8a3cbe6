"""Training data as batches: in-memory tensors split on dim 0 (shuffled with a seeded
generator, split between processes under DDP) or a ``Dataset`` through a ``DataLoader``.

Example:
    >>> import torch
    >>> x = torch.arange(10.0)
    >>> [b[0].tolist() for b in in_order(as_tensors(x), 4)]
    [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0]]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ppvae.distributed import DistInfo
from ppvae.errors import DataError

__all__ = ["Batch", "as_tensors", "in_order", "shuffled"]

Batch = tuple[torch.Tensor, ...]


def as_tensors(data: Any, what: str = "data") -> Batch | None:
    """A tensor or tuple of tensors as a tuple (all with the same first dimension); None
    for anything else (e.g. a ``Dataset``)."""
    if isinstance(data, torch.Tensor):
        data = (data,)
    if isinstance(data, tuple | list) and data and all(isinstance(t, torch.Tensor) for t in data):
        n = data[0].shape[0] if data[0].dim() else None
        if n is None or any(t.dim() == 0 or t.shape[0] != n for t in data):
            raise DataError(f"the tensors of {what} must share their first (data point) dimension")
        if n == 0:
            raise DataError(f"{what} is empty")
        if any(t.device.type == "meta" for t in data):
            raise DataError(f"{what} is on the meta device (shapes only, no values)")
        return tuple(data)
    return None


def in_order(tensors: Batch, batch_size: int) -> Iterator[Batch]:
    """Consecutive batches, in order."""
    n = tensors[0].shape[0]
    for i in range(0, n, batch_size):
        yield tuple(t[i : i + batch_size] for t in tensors)


def shuffled(
    tensors: Batch,
    batch_size: int,
    generator: torch.Generator | None,
    device: torch.device,
    dinfo: DistInfo | None,
) -> Iterator[tuple[Batch, int]]:
    """Batches of in-memory tensors, as ``(this process's part, global size)``, in the
    order of a permutation drawn from ``generator`` (None: in order).

    Every process draws the same permutation; with several processes each global batch
    of ``batch_size`` points is split into one part per process (a final global batch
    smaller than the number of processes is dropped)."""
    n = tensors[0].shape[0]
    world = 1 if dinfo is None else dinfo.world_size
    if generator is None and world == 1:
        for batch in in_order(tensors, batch_size):
            yield batch, batch[0].shape[0]
        return
    if generator is None:
        perm = torch.arange(n, device=device)
    else:
        perm = torch.randperm(n, generator=generator).to(device)
    for i in range(0, n, batch_size):
        idx = perm[i : i + batch_size]
        size = idx.shape[0]
        if world > 1:
            if size < world:
                continue
            idx = torch.tensor_split(idx, world)[dinfo.rank]
        yield tuple(t.index_select(0, idx) for t in tensors), size
