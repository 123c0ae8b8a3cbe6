"""Split and DataBundle: shape checks, accessors, is_binary, train_transform."""

from __future__ import annotations

import pytest
import torch

from ppvae.data import DataBundle, Split, dynamic_binarize, static_binarize
from ppvae.data.splits import carve, carved_size, random_subset
from ppvae.errors import DataError


def _bundle(x: torch.Tensor, binarize: str = "none") -> DataBundle:
    part = Split(x)
    return DataBundle("toy", part, part, part, binarize=binarize)


def test_split_shapes_and_subset():
    split = Split(torch.arange(12.0).reshape(4, 3), torch.tensor([3, 1, 0, 2]))
    assert len(split) == 4 and split.dim == 3
    sub = split.subset(torch.tensor([2, 0]))
    assert sub.x.tolist() == [[6.0, 7.0, 8.0], [0.0, 1.0, 2.0]]
    assert sub.y.tolist() == [0, 3]


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.zeros(4), None, "2-D tensor"),
        (torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.long), "1-D tensor"),
        (torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), "4 inputs but 3 labels"),
    ],
)
def test_split_rejects_bad_shapes(x, y, match, one_sentence):
    with pytest.raises(DataError, match=match) as info:
        Split(x, y)
    one_sentence(info)


def test_bundle_rejects_mismatched_dims_and_modes(one_sentence):
    a, b = Split(torch.zeros(2, 3)), Split(torch.zeros(2, 4))
    with pytest.raises(DataError, match="same D") as info:
        DataBundle("toy", a, b, a)
    one_sentence(info)
    with pytest.raises(DataError, match="allowed: none, static, dynamic") as info:
        DataBundle("toy", a, a, a, binarize="sometimes")
    one_sentence(info)


def test_is_binary():
    assert _bundle(torch.tensor([[0.0, 1.0], [1.0, 1.0]])).is_binary
    assert not _bundle(torch.tensor([[0.0, 0.5]])).is_binary
    assert _bundle(torch.tensor([[0.0, 0.5]]), binarize="dynamic").is_binary
    assert _bundle(torch.tensor([[0.0, 0.5]]), binarize="dynamic").train_transform is (
        dynamic_binarize
    )


def test_static_binarize_is_seeded():
    grey = torch.rand(50, 20, generator=torch.Generator().manual_seed(0))
    a, b = static_binarize(grey, seed=7), static_binarize(grey, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, static_binarize(grey, seed=8))
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert a.dtype == grey.dtype


def test_dynamic_binarize_mean_matches_grey_values():
    grey = torch.linspace(0, 1, 11).repeat(2000, 1)  # 2000 draws of each of 11 grey levels
    draw = dynamic_binarize(grey, torch.Generator().manual_seed(1))
    assert set(draw.unique().tolist()) == {0.0, 1.0}
    # standard error <= sqrt(0.25 / 2000) ~ 0.011
    assert (draw.mean(0) - grey[0]).abs().max() < 0.05
    assert draw[:, 0].sum() == 0 and draw[:, -1].sum() == 2000


def test_carve_sizes_and_disjointness():
    split = Split(torch.arange(100.0).reshape(100, 1))
    rest, carved = carve(split, 0.25, seed=3, what="valid", where="toy")
    assert (len(rest), len(carved)) == (75, 25)
    values = rest.x.flatten().tolist() + carved.x.flatten().tolist()
    assert sorted(values) == list(range(100))
    again = carve(split, 0.25, seed=3, what="valid", where="toy")[1]
    assert torch.equal(carved.x, again.x)
    assert carved_size(3, 0.01, what="valid", where="toy") == 1


def test_random_subset():
    split = Split(torch.arange(100.0).reshape(100, 1))
    sub = random_subset(split, 10, seed=0)
    assert len(sub) == 10 and len(set(sub.x.flatten().tolist())) == 10
    assert sub.x.flatten().tolist() != list(range(10))
    assert torch.equal(sub.x, random_subset(split, 10, seed=0).x)
    assert random_subset(split, 100, seed=0) is split
