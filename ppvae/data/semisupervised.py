r"""Semi-supervised splits: a seeded, class-balanced labelled subset of a training split.

:func:`semi_supervised_split` picks ``num_labels`` examples to keep their labels,
``num_labels // num_classes`` per class, the remainder ``num_labels % num_classes``
going one each to the first classes of a seeded permutation of the classes; the other
examples are unlabelled. :func:`hide_labels` writes the labels of a mixed set as one
int64 tensor with the sentinel :data:`UNLABELLED` (``-1``) for hidden labels, so that one
minibatch holds labelled and unlabelled points side by side (the semi-supervised models
read ``y >= 0`` as "labelled").

Example:
    >>> import torch
    >>> y = torch.arange(20) % 4
    >>> mask = semi_supervised_split(y, num_labels=6, num_classes=4, seed=0)
    >>> int(mask.sum()), sorted(torch.bincount(y[mask], minlength=4).tolist())
    (6, [1, 1, 2, 2])
    >>> hide_labels(y, mask)[:8].tolist() == [int(v) if m else -1 for v, m in zip(y[:8], mask[:8])]
    True
"""

from __future__ import annotations

import torch

from ppvae.data.bundle import Split
from ppvae.data.transforms import derive_seed
from ppvae.errors import DataError, SpecError

__all__ = [
    "UNLABELLED",
    "semi_supervised_split",
    "class_quotas",
    "hide_labels",
    "labelled_part",
]

#: The label of a point whose label is hidden, in a mixed (labelled + unlabelled) batch.
UNLABELLED = -1

# The seed stream of the label draws (independent of the data splits' own streams).
_STREAM = int.from_bytes(b"labels", "little")


def class_quotas(num_labels: int, num_classes: int, seed: int) -> torch.Tensor:
    """Labelled examples per class: ``num_labels // num_classes`` each, plus one for the
    first ``num_labels % num_classes`` classes of a permutation drawn with ``seed``.

    Example:
        >>> class_quotas(12, 5, seed=0).sum().item(), sorted(class_quotas(12, 5, seed=0).tolist())
        (12, [2, 2, 2, 3, 3])
    """
    base, extra = divmod(num_labels, num_classes)
    quotas = torch.full((num_classes,), base, dtype=torch.int64)
    if extra:
        generator = torch.Generator().manual_seed(derive_seed(seed, _STREAM + 1))
        quotas[torch.randperm(num_classes, generator=generator)[:extra]] += 1
    return quotas


def semi_supervised_split(
    y: torch.Tensor | None, num_labels: int, num_classes: int, seed: int
) -> torch.Tensor:
    """A boolean mask over ``y`` that is True on a class-balanced labelled subset.

    Args:
        y: int64 labels ``0 .. num_classes - 1`` of the training examples, shape ``[N]``.
        num_labels: how many examples keep their label (at least ``num_classes``, at most
            ``N``).
        num_classes: the number of classes.
        seed: the draw; the same seed always gives the same subset.

    Raises:
        DataError: ``y`` is None (data without labels), holds labels outside
            ``0 .. num_classes - 1``, or a class has fewer examples than its quota.
        SpecError: ``num_labels`` is below ``num_classes`` or above ``N``.
    """
    if y is None:
        raise DataError(
            "semi-supervised learning needs labelled training data but the data set has no "
            "labels; use a data set with labels (digits, mnist, or npz with y)"
        )
    if isinstance(num_labels, bool) or not isinstance(num_labels, int):
        raise SpecError(f"model.num_labels must be an integer, got {num_labels!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError(f"model.label_seed must be a non-negative integer, got {seed!r}")
    n = int(y.shape[0])
    if num_classes < 1:
        raise DataError(f"semi-supervised learning needs at least one class, got {num_classes}")
    if num_labels > n:
        raise SpecError(
            f"model.num_labels = {num_labels} asks for more labels than the {n} training "
            f"examples; choose at most {n}"
        )
    if num_labels < num_classes:
        raise SpecError(
            f"model.num_labels = {num_labels} is fewer than the {num_classes} classes; "
            f"choose at least {num_classes} so that every class has a labelled example"
        )
    y = y.long().cpu()
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"the labels must lie in 0 .. {num_classes - 1} but range from {int(y.min())} "
            f"to {int(y.max())}"
        )
    quotas = class_quotas(num_labels, num_classes, seed)
    counts = torch.bincount(y, minlength=num_classes)
    short = (counts < quotas).nonzero().flatten()
    if len(short):
        c = int(short[0])
        raise DataError(
            f"class {c} has {int(counts[c])} training examples, too few for its "
            f"{int(quotas[c])} of the {num_labels} balanced labels; ask for fewer labels"
        )
    generator = torch.Generator().manual_seed(derive_seed(seed, _STREAM))
    order = torch.randperm(n, generator=generator)
    mask = torch.zeros(n, dtype=torch.bool)
    ranked = y[order]
    for c in range(num_classes):
        picks = order[ranked == c][: int(quotas[c])]
        mask[picks] = True
    return mask


def hide_labels(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Labels where ``mask`` is True and :data:`UNLABELLED` (``-1``) elsewhere (int64).

    Example:
        >>> hide_labels(torch.tensor([3, 1, 2]), torch.tensor([True, False, True])).tolist()
        [3, -1, 2]
    """
    return torch.where(mask, y.long(), torch.full_like(y, UNLABELLED, dtype=torch.long))


def labelled_part(split: Split, mask: torch.Tensor) -> Split:
    """The labelled examples of ``split`` (where ``mask`` is True), in their order."""
    return split.subset(mask.nonzero().flatten())
