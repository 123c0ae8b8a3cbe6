"""Spec-level checks of the data options: plain field types, defaults, SpecErrors."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from ppvae.data import DATASETS, DataConfig, load_data
from ppvae.errors import SpecError

PLAIN = (int, float, bool, str, tuple[int, ...])


@pytest.mark.parametrize("kind", sorted(DATASETS))
def test_fields_are_plain_with_defaults(kind):
    cls = DATASETS.get(kind)
    assert issubclass(cls, DataConfig) and cls.kind == kind
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        assert hints[field.name] in PLAIN, (kind, field.name)
        assert field.default is not dataclasses.MISSING, (kind, field.name)
    config = cls(path="x.npz") if kind in ("npz", "images") else cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limit = 3  # type: ignore[misc]


def test_option_names():
    common = ["binarize", "valid_fraction", "test_fraction", "split_seed", "binarize_seed", "limit"]
    names = {kind: [f.name for f in dataclasses.fields(DATASETS.get(kind))] for kind in DATASETS}
    assert names["digits"] == common
    assert names["mnist"] == [*common, "path"]
    assert names["binarized_mnist"] == [*common, "path"]
    assert names["npz"] == [*common, "path", "x_key", "y_key", "image_shape", "num_classes"]
    assert names["images"] == [*common, "path", "height", "width", "channels"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"valid_fraction": 1.5}, r"data.valid_fraction must be in \(0, 1\), got 1.5"),
        ({"test_fraction": 0.0}, r"data.test_fraction must be in \(0, 1\), got 0.0"),
        ({"binarize": "yes"}, "data.binarize must be one of 'none', 'static', 'dynamic'"),
        ({"limit": -1}, "data.limit must be 0"),
        ({"split_seed": "1"}, "data.split_seed must be an integer, got '1'"),
        ({"limit": True}, "data.limit must be an integer"),
        ({"valid_fraction": "0.1"}, "data.valid_fraction must be a number"),
    ],
)
def test_bad_common_options(kwargs, match, one_sentence):
    with pytest.raises(SpecError, match=match) as info:
        DATASETS.get("digits")(**kwargs)
    one_sentence(info)


def test_ints_pass_as_floats():
    config = DATASETS.get("digits")(valid_fraction=0.5, test_fraction=0.5)
    assert DATASETS.get("mnist")(path="").valid_fraction == 0.1
    assert isinstance(config.test_fraction, float)
    npz = DATASETS.get("npz")(path="a.npz", image_shape=[2, 3])
    assert npz.image_shape == (2, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "data.path is required for data kind 'npz'"),
        ({"path": "a.npz", "image_shape": (0, 3)}, "data.image_shape must hold positive sizes"),
        ({"path": "a.npz", "image_shape": (2.5,)}, "data.image_shape must be a list of integers"),
        ({"path": "a.npz", "num_classes": -2}, "data.num_classes must be 0"),
    ],
)
def test_bad_npz_options(kwargs, match, one_sentence):
    with pytest.raises(SpecError, match=match) as info:
        DATASETS.get("npz")(**kwargs)
    one_sentence(info)


def test_unknown_kind(one_sentence):
    with pytest.raises(SpecError, match="unknown dataset kind 'cifar'") as info:
        load_data("cifar")
    one_sentence(info)
    with pytest.raises(TypeError):
        load_data(3)  # type: ignore[arg-type]
