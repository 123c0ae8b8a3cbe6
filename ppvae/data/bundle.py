"""Containers for loaded data: one :class:`Split` per part, a :class:`DataBundle` per data set.

A split holds flattened float32 inputs ``x`` of shape ``[N, D]`` on the CPU and, when the
source has them, int64 labels ``y`` of shape ``[N]``. A bundle holds the train, valid and
test splits with what a model needs to know about them (input size, the shape of one point
before flattening, image shape, number of classes, how the data were binarized) and the
per-batch training transform.

Example:
    >>> import torch
    >>> from ppvae.data import DataBundle, Split
    >>> part = Split(torch.zeros(4, 6), torch.tensor([0, 1, 2, 1]))
    >>> bundle = DataBundle("toy", part, part, part, image_shape=(2, 3), num_classes=3)
    >>> len(bundle.split("valid")), bundle.dim, bundle.is_binary, bundle.train_transform
    (4, 6, True, None)
    >>> bundle.event_shape
    (1, 2, 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch

from ppvae.data.transforms import BINARIZE_MODES, dynamic_binarize
from ppvae.errors import DataError

__all__ = ["Split", "DataBundle", "SPLIT_NAMES"]

#: The names of a bundle's splits, in order.
SPLIT_NAMES: tuple[str, str, str] = ("train", "valid", "test")


@dataclass(frozen=True, eq=False)
class Split:
    """One part of a data set: inputs ``x`` (float32 ``[N, D]``) and optional labels ``y``.

    Example:
        >>> import torch
        >>> part = Split(torch.rand(5, 3), torch.arange(5))
        >>> len(part), part.dim, len(part.subset(torch.tensor([0, 2])))
        (5, 3, 2)
    """

    x: torch.Tensor
    y: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or self.x.dim() != 2:
            shape = tuple(self.x.shape) if isinstance(self.x, torch.Tensor) else type(self.x)
            raise DataError(f"split inputs x must be a 2-D tensor [N, D], got {shape}")
        if self.y is not None:
            if not isinstance(self.y, torch.Tensor) or self.y.dim() != 1:
                shape = tuple(self.y.shape) if isinstance(self.y, torch.Tensor) else type(self.y)
                raise DataError(f"split labels y must be a 1-D tensor [N], got {shape}")
            if self.y.shape[0] != self.x.shape[0]:
                raise DataError(
                    f"split has {self.x.shape[0]} inputs but {self.y.shape[0]} labels; "
                    "x and y must have the same length"
                )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        labels = "none" if self.y is None else str(self.y.dtype)
        return f"Split(n={len(self)}, dim={self.dim}, x={self.x.dtype}, y={labels})"

    @property
    def dim(self) -> int:
        """The number of features D of each flattened input."""
        return int(self.x.shape[1])

    def subset(self, index: torch.Tensor) -> Split:
        """The examples at ``index`` (an int64 tensor of positions), in that order."""
        return Split(self.x[index], None if self.y is None else self.y[index])


@dataclass(frozen=True, eq=False)
class DataBundle:
    """A loaded data set: train, valid and test splits plus what models need to know.

    ``event_shape`` is the shape of one data point before flattening into ``x``: ``(C, H,
    W)`` for images (``(1, 8, 8)`` for digits, ``(1, 28, 28)`` for MNIST, ``(3, H, W)`` for
    RGB images), the stored per-point shape for arrays; its product is always ``D``. Left
    None, it is derived from ``image_shape`` (``(H, W)`` gives ``(1, H, W)``) or else is
    ``(D,)``. ``image_shape`` is the shape of one input as a figure draws it (``(8, 8)``
    for digits, ``(28, 28)`` for MNIST, ``(3, H, W)`` for RGB) or None when the inputs are
    not images; left None, it is derived from an ``event_shape`` ``(1, H, W)`` (giving
    ``(H, W)``) or ``(3, H, W)``. ``num_classes`` is the number of label values or None
    without labels; ``binarize`` is ``"none"``, ``"static"`` or ``"dynamic"``.
    """

    name: str
    train: Split
    valid: Split
    test: Split
    image_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    binarize: str = "none"
    event_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.binarize not in BINARIZE_MODES:
            raise DataError(
                f"data set {self.name!r} has binarize={self.binarize!r}; "
                f"allowed: {', '.join(BINARIZE_MODES)}"
            )
        dims = {name: self.split(name).dim for name in SPLIT_NAMES}
        if len(set(dims.values())) != 1:
            raise DataError(
                f"data set {self.name!r} has splits of different input sizes {dims}; "
                "all splits must have the same D"
            )
        self._settle_shapes()

    def _settle_shapes(self) -> None:
        """Derive the missing one of ``event_shape`` and ``image_shape``; check both."""
        dim = self.dim
        for key in ("image_shape", "event_shape"):
            shape = getattr(self, key)
            if shape is None:
                continue
            shape = tuple(int(s) for s in shape)
            object.__setattr__(self, key, shape)
            if not shape or any(s < 1 for s in shape) or math.prod(shape) != dim:
                raise DataError(
                    f"data set {self.name!r} has {key} {shape}, which does not hold its "
                    f"{dim} features; the sizes must be positive and multiply to D = {dim}"
                )
        if self.event_shape is None:
            image = self.image_shape
            event = (1, *image) if image is not None and len(image) == 2 else image
            object.__setattr__(self, "event_shape", event or (dim,))
        elif self.image_shape is None and len(self.event_shape) == 3:
            channels = self.event_shape[0]
            if channels == 1:
                object.__setattr__(self, "image_shape", self.event_shape[1:])
            elif channels == 3:
                object.__setattr__(self, "image_shape", self.event_shape)

    def split(self, name: str) -> Split:
        """The split called ``name``: one of ``"train"``, ``"valid"``, ``"test"``."""
        if name not in SPLIT_NAMES:
            raise DataError(
                f"unknown split {name!r} of data set {self.name!r}; "
                f"allowed: {', '.join(SPLIT_NAMES)}"
            )
        return getattr(self, name)

    @property
    def dim(self) -> int:
        """The number of features D of each flattened input."""
        return self.train.dim

    @property
    def sizes(self) -> dict[str, int]:
        """The number of examples in each split, e.g. ``{"train": 1294, ...}``."""
        return {name: len(self.split(name)) for name in SPLIT_NAMES}

    @cached_property
    def is_binary(self) -> bool:
        """True when the data are (or are turned into) values in {0, 1}."""
        if self.binarize != "none":
            return True
        x = self.train.x
        return bool(((x == 0) | (x == 1)).all())

    @property
    def train_transform(self) -> Callable[..., torch.Tensor] | None:
        """What to apply to each training batch ``f(x, generator)``, or None.

        With ``binarize="dynamic"`` this is :func:`~ppvae.data.dynamic_binarize`, a fresh
        Bernoulli draw of every batch; otherwise the training inputs are used as they are.
        """
        return dynamic_binarize if self.binarize == "dynamic" else None
