r"""Turning raw arrays into model inputs: flatten, scale, check, binarize.

Readers hand over numpy arrays as stored on disk; these functions make float32 CPU tensors
of shape ``[N, D]`` out of them, check them (finite values, labels in range) and binarize
them. Binarization treats a grey value :math:`p \in [0, 1]` as the probability of a white
pixel and draws :math:`x \sim \mathrm{Bernoulli}(p)`:

* *static*: one draw per split, seeded, made once at load time;
* *dynamic*: a fresh draw of every training batch (:func:`dynamic_binarize`), as in
  Salakhutdinov & Murray (2008) and the IWAE paper (Burda et al., 2016).

Example:
    >>> import numpy as np
    >>> x = to_float32(np.full((2, 2, 2), 255, dtype=np.uint8), where="toy")
    >>> x.shape, x.dtype, float(x.max())
    (torch.Size([2, 4]), torch.float32, 1.0)
    >>> static_binarize(torch.tensor([[0.0, 1.0]]), seed=0)
    tensor([[0., 1.]])
"""

from __future__ import annotations

import numpy as np
import torch

from ppvae.errors import DataError

__all__ = [
    "BINARIZE_MODES",
    "flatten",
    "to_float32",
    "check_finite",
    "check_unit_interval",
    "check_labels",
    "derive_seed",
    "static_binarize",
    "dynamic_binarize",
]

#: The allowed values of the ``binarize`` option.
BINARIZE_MODES: tuple[str, str, str] = ("none", "static", "dynamic")

_NUMERIC_KINDS = "biuf"


def flatten(x: np.ndarray, *, where: str) -> np.ndarray:
    """Reshape ``[N, ...]`` to ``[N, D]`` (a 1-D array becomes ``[N, 1]``).

    Example:
        >>> flatten(np.zeros((3, 4, 5)), where="toy").shape
        (3, 20)
    """
    if x.ndim == 0:
        raise DataError(f"{where} is a scalar; an array of examples [N, ...] is required")
    n = x.shape[0]
    d = int(np.prod(x.shape[1:], dtype=np.int64)) if x.ndim > 1 else 1
    if n == 0 or d == 0:
        raise DataError(f"{where} is empty (shape {x.shape}); at least one example is required")
    return x.reshape(n, d)


def to_float32(x: np.ndarray, *, where: str, scale_uint8: bool = True) -> torch.Tensor:
    """A new float32 CPU tensor ``[N, D]`` from numeric ``x``; uint8 is divided by 255.

    Other integer, boolean and float arrays keep their values, as does uint8 with
    ``scale_uint8=False``. Non-numeric arrays and NaN or infinite values are a
    :class:`~ppvae.errors.DataError` naming ``where``.

    Example:
        >>> to_float32(np.array([[0, 51, 255]], dtype=np.uint8), where="toy")
        tensor([[0.0000, 0.2000, 1.0000]])
    """
    if x.dtype.kind not in _NUMERIC_KINDS:
        raise DataError(
            f"{where} has dtype {x.dtype}; numeric arrays (bool, integer or float) are required"
        )
    x = flatten(x, where=where)
    if not (x.flags.writeable and x.flags.c_contiguous):
        x = np.array(x, order="C")  # torch refuses to wrap read-only memory
    tensor = torch.from_numpy(x).to(torch.float32, copy=True)
    if x.dtype == np.uint8 and scale_uint8:
        tensor.div_(255.0)
    if x.dtype.kind == "f":
        check_finite(tensor, where=where)
    return tensor


def check_finite(x: torch.Tensor, *, where: str) -> None:
    """Raise :class:`~ppvae.errors.DataError` if ``x`` holds NaN or infinite values."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise DataError(
            f"{where} holds {bad} NaN or infinite values (float32); only finite values are allowed"
        )


def check_unit_interval(x: torch.Tensor, *, where: str) -> None:
    """Raise :class:`~ppvae.errors.DataError` unless every value of ``x`` is in [0, 1]."""
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise DataError(
            f"cannot binarize {where}: its values span [{float(x.min()):g}, {float(x.max()):g}] "
            "but binarization needs probabilities in [0, 1]; to model the values as they are, "
            'keep them with --set data.binarize=none (data.binarize = "none") and use a '
            'likelihood for real values such as likelihood.kind = "gaussian"'
        )


def check_labels(y: np.ndarray, *, n: int, where: str, num_classes: int = 0) -> torch.Tensor:
    """Int64 labels from ``y`` after checking dtype, length and range.

    Labels must be integers in ``0 .. num_classes - 1`` (with ``num_classes=0``: any
    non-negative integer) and there must be one per example (``n``).

    Example:
        >>> check_labels(np.array([2, 0, 1], dtype=np.uint8), n=3, where="toy", num_classes=3)
        tensor([2, 0, 1])
    """
    if y.dtype.kind not in "iu":
        raise DataError(
            f"{where} has dtype {y.dtype}; labels must be integers (store them with "
            "y.astype(np.int64))"
        )
    if y.ndim != 1:
        raise DataError(f"{where} has shape {y.shape}; labels must be a 1-D array [N]")
    if y.shape[0] != n:
        raise DataError(
            f"{where} holds {y.shape[0]} labels for {n} examples; x and y must have the same length"
        )
    if y.size:
        low, high = int(y.min()), int(y.max())
        limit = f"0 .. {num_classes - 1}" if num_classes > 0 else "non-negative integers"
        if low < 0 or (num_classes > 0 and high >= num_classes):
            raise DataError(
                f"{where} holds labels from {low} to {high}; allowed labels are {limit}"
            )
    return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))


def derive_seed(seed: int, *stream: int) -> int:
    """An independent 63-bit seed for one use (``stream``) of a user seed.

    Example:
        >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(0, 2)
        True
    """
    state = np.random.SeedSequence([seed, *stream]).generate_state(1, np.uint64)[0]
    return int(state) & (2**63 - 1)


def static_binarize(x: torch.Tensor, *, seed: int) -> torch.Tensor:
    """One seeded Bernoulli draw of grey values ``x`` in [0, 1], same dtype and device.

    Example:
        >>> a = static_binarize(torch.full((2, 3), 0.5), seed=1)
        >>> bool(torch.equal(a, static_binarize(torch.full((2, 3), 0.5), seed=1)))
        True
    """
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.bernoulli(x, generator=generator)


def dynamic_binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli draw of grey values ``x`` in [0, 1] (call once per training batch).

    ``generator`` lives on ``x``'s device; ``None`` uses torch's global generator.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> b = dynamic_binarize(torch.full((1, 1000), 0.3), g)
        >>> sorted(b.unique().tolist()), abs(b.mean().item() - 0.3) < 0.05
        ([0.0, 1.0], True)
    """
    return torch.bernoulli(x, generator=generator)
