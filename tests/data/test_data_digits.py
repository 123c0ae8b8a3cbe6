"""The digits data set end to end: sizes, disjoint seeded splits, values, binarization."""

from __future__ import annotations

import pytest
import torch

from ppvae.data import DATASETS, DataBundle, DigitsConfig, Split, load_data
from ppvae.errors import DataError


def _rows(split: Split) -> set[tuple[float, ...]]:
    return {tuple(row) for row in split.x.tolist()}


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_data("digits")


def test_sizes_follow_the_fractions(digits):
    # test = round(0.2 * 1797) = 359, valid = round(0.1 * 1438) = 144
    assert digits.sizes == {"train": 1294, "valid": 144, "test": 359}
    assert sum(digits.sizes.values()) == 1797
    other = DigitsConfig(valid_fraction=0.25, test_fraction=0.5).load()
    assert other.sizes == {"train": 673, "valid": 225, "test": 899}  # 0.25 * 898 = 224.5


def test_bundle_facts(digits):
    assert digits.name == "digits"
    assert digits.dim == 64
    assert digits.image_shape == (8, 8)
    assert digits.num_classes == 10
    assert digits.binarize == "none"
    assert digits.train_transform is None
    assert not digits.is_binary
    for name in ("train", "valid", "test"):
        split = digits.split(name)
        assert split.x.dtype == torch.float32 and split.x.device.type == "cpu"
        assert split.y.dtype == torch.int64
        assert split.x.shape == (len(split), 64)
        assert float(split.x.min()) >= 0.0 and float(split.x.max()) <= 1.0
        assert set(split.y.tolist()) <= set(range(10))
    assert float(digits.train.x.max()) == 1.0
    # pixel values 0..16 scaled by 1/16
    assert torch.equal(digits.train.x * 16, torch.round(digits.train.x * 16))
    assert set(digits.train.y.tolist()) == set(range(10))


def test_splits_are_disjoint_and_cover_the_data(digits):
    from sklearn.datasets import load_digits

    source = load_digits()
    all_pairs = sorted(
        (tuple((row / 16).tolist()), int(label))
        for row, label in zip(source.data, source.target, strict=True)
    )
    parts = [digits.split(name) for name in ("train", "valid", "test")]
    pairs = sorted(
        (tuple(row), int(label))
        for part in parts
        for row, label in zip(part.x.double().tolist(), part.y.tolist(), strict=True)
    )
    # the three splits are a partition of the 1,797 (image, label) pairs: same multiset
    assert pairs == all_pairs


def test_seeded_reproducibility(digits):
    again = load_data(DigitsConfig())
    for name in ("train", "valid", "test"):
        assert torch.equal(digits.split(name).x, again.split(name).x)
        assert torch.equal(digits.split(name).y, again.split(name).y)
    other = DigitsConfig(split_seed=1).load()
    assert other.sizes == digits.sizes
    assert not torch.equal(other.test.y, digits.test.y)


def test_limit_keeps_a_seeded_subset_of_train_only(digits):
    small = DigitsConfig(limit=50).load()
    assert small.sizes == {"train": 50, "valid": 144, "test": 359}
    assert _rows(small.train) <= _rows(digits.train)
    assert torch.equal(small.test.x, digits.test.x)
    assert torch.equal(small.train.x, DigitsConfig(limit=50).load().train.x)
    assert DigitsConfig(limit=5000).load().sizes == digits.sizes


def test_static_binarization(digits):
    a = DigitsConfig(binarize="static", binarize_seed=3).load()
    b = DigitsConfig(binarize="static", binarize_seed=3).load()
    c = DigitsConfig(binarize="static", binarize_seed=4).load()
    assert a.is_binary and a.train_transform is None
    for name in ("train", "valid", "test"):
        x = a.split(name).x
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(x, b.split(name).x)
        assert not torch.equal(x, c.split(name).x)
        assert torch.equal(a.split(name).y, digits.split(name).y)
    # a Bernoulli draw of each grey value: the overall means agree
    assert abs(float(a.train.x.mean()) - float(digits.train.x.mean())) < 0.01
    # pixels that are exactly 0 or 1 stay so
    grey = digits.train.x
    assert torch.all(a.train.x[grey == 0] == 0) and torch.all(a.train.x[grey == 1] == 1)


def test_dynamic_binarization(digits):
    bundle = DigitsConfig(binarize="dynamic").load()
    static = DigitsConfig(binarize="static").load()
    assert bundle.is_binary and bundle.binarize == "dynamic"
    # train keeps grey values; valid and test are drawn once, exactly as the static draw
    assert torch.equal(bundle.train.x, digits.train.x)
    assert torch.equal(bundle.valid.x, static.valid.x)
    assert torch.equal(bundle.test.x, static.test.x)
    transform = bundle.train_transform
    assert transform is not None
    grey = bundle.train.x[:100]
    generator = torch.Generator().manual_seed(0)
    first, second = transform(grey, generator), transform(grey, generator)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    draws = torch.stack([transform(grey, generator) for _ in range(1000)])
    assert (draws.mean(0) - grey).abs().max() < 0.08
    replay = transform(grey, torch.Generator().manual_seed(0))
    assert torch.equal(replay, first)


def test_registry_and_kind_strings():
    assert set(DATASETS) == {"digits", "mnist", "binarized_mnist", "npz", "images"}
    assert DATASETS.get("digits") is DigitsConfig
    assert DigitsConfig.kind == "digits"
    assert load_data("digits").sizes == DigitsConfig().load().sizes


def test_unknown_split_name(digits, one_sentence):
    with pytest.raises(DataError, match="allowed: train, valid, test") as info:
        digits.split("validation")
    one_sentence(info)


def test_too_few_examples_to_carve():
    from ppvae.data import carve

    with pytest.raises(DataError, match="too few to carve a test split") as info:
        carve(Split(torch.zeros(1, 3)), 0.5, seed=0, what="test", where="toy")
    assert "\n" not in str(info.value)
