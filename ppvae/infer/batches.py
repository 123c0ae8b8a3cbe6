"""Training data as batches: in-memory tensors split on dim 0 (shuffled with a seeded
generator, split between processes under DDP) or a ``Dataset`` through a ``DataLoader``.

Example:
    >>> import torch
    >>> x = torch.arange(10.0)
    >>> [b[0].tolist() for b in in_order(as_tensors(x), 4)]
    [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0]]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ppvae.distributed import DistInfo
from ppvae.errors import DataError

__all__ = ["Batch", "Stream", "Source", "as_tensors", "in_order", "shuffled", "interleave", "move"]

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


@dataclass
class Stream:
    r"""A source of training batches for :func:`ppvae.fit`, optionally with programs and an
    objective of its own (e.g. the labelled points of a semi-supervised model, trained
    with a classification term, beside the unlabelled ones).

    Args:
        batches: in-memory tensors (a tensor or tuple of tensors with data points on dim
            0: batched and shuffled by ppvae), a ``torch.utils.data.Dataset``, or any
            re-iterable of ready batches (a ``DataLoader``, a list): each batch a tensor,
            a tuple of positional arguments, a dict of keyword arguments or a pair
            ``(args, kwargs)``.
        num_data: the number of data points the stream's batches cover in an epoch (taken
            from the tensors, the Dataset or ``loader.dataset`` when not given).
        model, guide, objective: the stream's programs and objective (default: fit's).

    Every step on a stream scales its data-plate sites by one over the batch's points and
    the other sites by one over the points of all streams, so an epoch over all streams
    estimates the full-data bound per data point, as one stream holding all points would.
    """

    batches: Any
    num_data: int | None = None
    model: Callable | None = None
    guide: Callable | None = None
    objective: Any = None


def move(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor (or anything with ``.to``, e.g. a PackedSequence) on
    ``device``, through tuples, lists and dicts."""
    to = getattr(batch, "to", None)
    if callable(to) and not isinstance(batch, list | dict):  # tensors, PackedSequence
        return to(device)
    if isinstance(batch, tuple) and hasattr(batch, "_make"):  # other named tuples
        return batch._make(move(b, device) for b in batch)
    if isinstance(batch, tuple | list):
        return type(batch)(move(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move(v, device) for k, v in batch.items()}
    return batch


class Source:
    """One stream's batches, epoch after epoch: ``epoch(state_epoch)`` yields
    ``(batch, global_size)`` with ``global_size`` the global batch size under DDP (None
    otherwise)."""

    def __init__(
        self,
        stream: Stream,
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator,
        device: torch.device,
        dinfo: DistInfo | None,
        seed: int,
        what: str,
    ) -> None:
        self.device, self.dinfo = device, dinfo
        self.tensors = as_tensors(stream.batches, what)
        self.loader = self.iterable = None
        world = 1 if dinfo is None else dinfo.world_size
        self.world = world
        self.generator = generator if shuffle else None
        self.batch_size = batch_size
        data = stream.batches
        if self.tensors is not None:
            self.tensors = tuple(t.to(device) for t in self.tensors)
            self.num_data = self.tensors[0].shape[0]
            self.length = math.ceil(self.num_data / batch_size)
        elif isinstance(data, torch.utils.data.Dataset) and not isinstance(
            data, torch.utils.data.IterableDataset
        ):
            if len(data) == 0:
                raise DataError(f"{what} is empty")
            self.sampler = None
            if dinfo is not None:
                self.sampler = torch.utils.data.DistributedSampler(
                    data, num_replicas=world, rank=dinfo.rank, shuffle=shuffle, seed=seed
                )
            self.loader = torch.utils.data.DataLoader(
                data,
                batch_size=max(1, batch_size // world),
                shuffle=self.sampler is None and shuffle,
                sampler=self.sampler,
                generator=generator if self.sampler is None and shuffle else None,
            )
            self.num_data = len(data)
            self.length = len(self.loader)
        elif isinstance(data, Iterable) and not isinstance(data, str | bytes):
            if isinstance(data, list | tuple) and any(
                not isinstance(b, torch.Tensor | tuple | list | dict) for b in data
            ):
                raise DataError(
                    f"{what} must be tensors, a Dataset or an iterable of batches (tensors, "
                    f"tuples or dicts), got a {type(data).__name__} of "
                    f"{type(next(b for b in data if not isinstance(b, torch.Tensor | tuple | list | dict))).__name__}"
                )
            if iter(data) is data:
                raise DataError(
                    f"{what} is an iterator, which one epoch would use up; pass a re-iterable "
                    "(a list of batches or a DataLoader)"
                )
            if dinfo is not None:
                raise DataError(
                    f"{what}: distributed training takes tensors or a Dataset (ppvae splits "
                    "them between processes), not ready-made batches"
                )
            self.iterable = data
            num = stream.num_data
            if num is None and hasattr(data, "dataset"):
                num = len(data.dataset)
            if num is None:
                raise DataError(
                    f"{what} is an iterable of batches whose number of data points ppvae "
                    "cannot tell; give it as Stream(batches, num_data=N)"
                )
            self.num_data = num
            self.length = len(data) if hasattr(data, "__len__") else None
        else:
            raise DataError(
                f"{what} must be tensors, a Dataset or an iterable of batches, got "
                f"{type(data).__name__}"
            )
        if (
            stream.num_data is not None
            and stream.num_data != self.num_data
            and self.iterable is None
        ):
            raise DataError(
                f"{what}: num_data = {stream.num_data} but the data holds {self.num_data} points"
            )

    def first(self) -> Any:
        """A first batch (in order, not shuffled), on the device."""
        if self.tensors is not None:
            return next(in_order(self.tensors, self.batch_size))
        source = self.loader if self.loader is not None else self.iterable
        try:
            batch = next(iter(source))
        except StopIteration:
            raise DataError("the training data yields no batch") from None
        return move(batch, self.device)

    def epoch(self, epoch: int) -> Iterator[tuple[Any, int | None]]:
        ddp = self.dinfo is not None
        if self.tensors is not None:
            for batch, size in shuffled(
                self.tensors, self.batch_size, self.generator, self.device, self.dinfo
            ):
                yield batch, size if ddp else None
            return
        if self.loader is not None:
            if self.sampler is not None:
                self.sampler.set_epoch(epoch)
            for batch in self.loader:
                batch = move(batch, self.device)
                yield batch, (_first_dim(batch) * self.world if ddp else None)
            return
        for batch in self.iterable:
            yield move(batch, self.device), None


def _first_dim(batch: Any) -> int:
    for t in batch if isinstance(batch, tuple | list) else (batch,):
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return t.shape[0]
    raise DataError("a Dataset must yield tensors or tuples of tensors")


def interleave(
    epochs: Sequence[Iterator], lengths: Sequence[int | None]
) -> Iterator[tuple[int, Any]]:
    """``(stream index, item)`` from several iterators, spread evenly over the epoch by
    their lengths (round robin among those of unknown length)."""
    iterators = list(epochs)
    done = [0] * len(iterators)
    active = list(range(len(iterators)))
    while active:
        i = min(
            active,
            key=lambda j: (done[j] + 1) / lengths[j] if lengths[j] else float(done[j] + 1),
        )
        try:
            item = next(iterators[i])
        except StopIteration:
            active.remove(i)
            continue
        done[i] += 1
        yield i, item
