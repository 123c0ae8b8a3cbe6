"""Semi-supervised splits: class balance, seeds, disjointness, and one-sentence errors."""

from __future__ import annotations

import re

import pytest
import torch

from ppvae.data import (
    UNLABELLED,
    Split,
    class_quotas,
    hide_labels,
    labelled_part,
    load_data,
    semi_supervised_split,
)
from ppvae.errors import DataError, PpvaeError, SpecError


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    """Unbalanced labels of 10 classes (class c has 30 + 3c examples), shuffled."""
    y = torch.cat([torch.full((30 + 3 * c,), c) for c in range(10)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]


@pytest.mark.parametrize("num_labels", [10, 50, 100, 123])
def test_split_is_class_balanced_with_the_remainder_spread(labels, num_labels):
    mask = semi_supervised_split(labels, num_labels, 10, seed=0)
    assert mask.dtype == torch.bool and mask.shape == labels.shape
    assert int(mask.sum()) == num_labels
    counts = torch.bincount(labels[mask], minlength=10)
    base = num_labels // 10
    assert set(counts.tolist()) <= {base, base + 1}
    assert int((counts == base + 1).sum()) == num_labels % 10
    assert torch.equal(counts, class_quotas(num_labels, 10, seed=0))


def test_split_is_reproducible_by_seed_and_differs_across_seeds(labels):
    a = semi_supervised_split(labels, 50, 10, seed=3)
    b = semi_supervised_split(labels, 50, 10, seed=3)
    c = semi_supervised_split(labels, 50, 10, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_labelled_and_unlabelled_parts_are_disjoint_and_cover_the_data(labels):
    mask = semi_supervised_split(labels, 40, 10, seed=0)
    x = torch.arange(len(labels), dtype=torch.float32).unsqueeze(-1)
    split = Split(x, labels)
    labelled = labelled_part(split, mask)
    unlabelled = split.subset((~mask).nonzero().flatten())
    ids_l, ids_u = set(labelled.x.flatten().tolist()), set(unlabelled.x.flatten().tolist())
    assert not ids_l & ids_u
    assert len(ids_l) + len(ids_u) == len(labels)
    assert torch.equal(labelled.y, labels[mask])


def test_mixed_labels_carry_the_sentinel_on_unlabelled_points(labels):
    mask = semi_supervised_split(labels, 20, 10, seed=0)
    mixed = hide_labels(labels, mask)
    assert UNLABELLED == -1
    assert mixed.dtype == torch.long
    assert torch.equal(mixed[mask], labels[mask])
    assert bool((mixed[~mask] == UNLABELLED).all())


def test_real_digits_split():
    data = load_data("digits")
    mask = semi_supervised_split(data.train.y, 50, data.num_classes, seed=0)
    assert torch.bincount(data.train.y[mask], minlength=10).tolist() == [5] * 10


def _one_sentence(err: Exception) -> None:
    text = str(err)
    assert isinstance(err, PpvaeError)
    assert text and "\n" not in text
    assert not re.search(r"[.;:!?]\s+[A-Z]", text), text  # no second sentence


@pytest.mark.parametrize(
    ("y", "num_labels", "num_classes", "seed", "error", "words"),
    [
        (None, 10, 10, 0, DataError, "has no labels"),
        (torch.arange(20) % 10, 21, 10, 0, SpecError, "more labels than the 20"),
        (torch.arange(20) % 10, 9, 10, 0, SpecError, "fewer than the 10 classes"),
        (torch.arange(20) % 5, 10, 10, 0, DataError, "class 5 has 0 training examples"),
        (torch.tensor([0] * 10 + [1] * 2), 10, 2, 0, DataError, "class 1 has 2 training"),
        (torch.tensor([0, 1, 7]), 2, 2, 0, DataError, "labels must lie in 0 .. 1"),
        (torch.arange(20) % 10, 10, 10, -1, SpecError, "label_seed"),
    ],
    ids=["no-labels", "too-many", "too-few", "empty-class", "short-class", "range", "seed"],
)
def test_bad_requests_raise_one_sentence(y, num_labels, num_classes, seed, error, words):
    with pytest.raises(error) as info:
        semi_supervised_split(y, num_labels, num_classes, seed)
    assert words in str(info.value)
    _one_sentence(info.value)
