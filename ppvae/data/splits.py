"""Seeded splitting: carving a valid or test split out of the training data, and subsets.

Sizes are rounded to the nearest integer and every part keeps at least one example.
The same seed always gives the same parts, whatever the machine.

Example:
    >>> import torch
    >>> from ppvae.data.bundle import Split
    >>> data = Split(torch.arange(10.0).reshape(10, 1))
    >>> rest, carved = carve(data, 0.2, seed=0, what="test", where="toy")
    >>> len(rest), len(carved)
    (8, 2)
    >>> len(random_subset(rest, 3, seed=0))
    3
"""

from __future__ import annotations

import torch

from ppvae.data.bundle import Split
from ppvae.data.transforms import derive_seed
from ppvae.errors import DataError

__all__ = ["carve", "carved_size", "random_subset"]


def carved_size(n: int, fraction: float, *, what: str, where: str) -> int:
    """How many of ``n`` examples a ``fraction`` carves off: at least one, leaving one.

    Example:
        >>> carved_size(1797, 0.2, what="test", where="digits")
        359
    """
    size = max(1, int(n * fraction + 0.5))
    if n - size < 1:
        raise DataError(
            f"{where} has {n} examples, too few to carve a {what} split of fraction "
            f"{fraction:g} and keep training data; at least 2 examples are required"
        )
    return size


def carve(
    split: Split, fraction: float, *, seed: int, what: str, where: str
) -> tuple[Split, Split]:
    """Split ``split`` at random into ``(rest, carved)`` with ``len(carved) ~ fraction * N``.

    Both parts are in a seeded random order; ``what`` ("valid" or "test") and ``where``
    (the data set) only serve the error message when there are too few examples.
    """
    n = len(split)
    size = carved_size(n, fraction, what=what, where=where)
    generator = torch.Generator().manual_seed(derive_seed(seed, _stream(what)))
    order = torch.randperm(n, generator=generator)
    return split.subset(order[size:]), split.subset(order[:size])


def random_subset(split: Split, size: int, *, seed: int) -> Split:
    """A seeded random subset of ``size`` examples (all of them when ``size >= len(split)``)."""
    n = len(split)
    if size >= n:
        return split
    generator = torch.Generator().manual_seed(derive_seed(seed, _stream("subset")))
    return split.subset(torch.randperm(n, generator=generator)[:size])


def _stream(what: str) -> int:
    """A fixed integer per use of a seed, so that each use draws independently."""
    return int.from_bytes(what.encode()[:8], "little")
