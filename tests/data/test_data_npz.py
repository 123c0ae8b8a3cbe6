"""The npz kind: round trips of uint8/float/labelled data, image shapes, bad archives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppvae.data import NpzConfig, read_npz
from ppvae.errors import DataError


def _sorted_rows(x: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(tuple(row) for row in x.tolist())


def _all_x(bundle) -> torch.Tensor:
    return torch.cat([bundle.train.x, bundle.valid.x, bundle.test.x])


def test_uint8_images_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 4, 5), dtype=np.uint8)
    y = rng.integers(0, 3, size=50)
    path = tmp_path / "images.npz"
    np.savez_compressed(path, x=x, y=y)
    bundle = NpzConfig(path=str(path)).load()
    assert bundle.sizes == {"train": 36, "valid": 4, "test": 10}
    assert (bundle.image_shape, bundle.dim, bundle.num_classes) == ((4, 5), 20, 3)
    expected = torch.from_numpy(x.reshape(50, 20)).float() / 255
    assert _sorted_rows(_all_x(bundle)) == _sorted_rows(expected)
    # each row keeps its label
    pairs = {tuple(r): int(l) for r, l in zip(expected.tolist(), y.tolist(), strict=True)}
    for part in (bundle.train, bundle.valid, bundle.test):
        for row, label in zip(part.x.tolist(), part.y.tolist(), strict=True):
            assert pairs[tuple(row)] == label


def test_float_features_kept_as_they_are(tmp_path):
    x = np.linspace(-3, 3, 40 * 3).reshape(40, 3)
    path = tmp_path / "features.npz"
    np.savez(path, x=x)
    bundle = NpzConfig(path=str(path), test_fraction=0.25, valid_fraction=0.2).load()
    assert bundle.sizes == {"train": 24, "valid": 6, "test": 10}
    assert bundle.image_shape is None and bundle.num_classes is None and bundle.train.y is None
    assert _sorted_rows(_all_x(bundle)) == _sorted_rows(torch.from_numpy(x).float())
    assert not bundle.is_binary


def test_options_keys_shape_classes(tmp_path):
    x = np.zeros((10, 12), dtype=np.float32)
    x[::2] = 1.0
    path = tmp_path / "custom.npz"
    np.savez(path, inputs=x, classes=np.arange(10) % 2)
    config = NpzConfig(path=str(path), x_key="inputs", y_key="classes", image_shape=(3, 4),
                       num_classes=5)  # fmt: skip
    bundle = config.load()
    assert (bundle.image_shape, bundle.num_classes, bundle.is_binary) == ((3, 4), 5, True)
    with pytest.raises(DataError, match=r"data.image_shape \[5, 5\] has 25 pixels"):
        NpzConfig(path=str(path), x_key="inputs", image_shape=(5, 5)).load()
    with pytest.raises(DataError, match="allowed labels are 0 .. 0"):
        NpzConfig(path=str(path), x_key="inputs", y_key="classes", num_classes=1).load()


def test_bool_and_int_inputs(tmp_path):
    path = tmp_path / "ints.npz"
    np.savez(path, x=np.ones((5, 2), dtype=bool))
    assert torch.equal(NpzConfig(path=str(path)).load().train.x, torch.ones(3, 2))
    np.savez(path, x=np.full((5, 2), 7, dtype=np.int64))
    assert float(NpzConfig(path=str(path)).load().train.x.max()) == 7.0


def test_binarize_npz(tmp_path, one_sentence):
    rng = np.random.default_rng(0)
    path = tmp_path / "grey.npz"
    np.savez(path, x=rng.random((30, 6)))
    bundle = NpzConfig(path=str(path), binarize="static").load()
    assert set(_all_x(bundle).unique().tolist()) == {0.0, 1.0}
    np.savez(path, x=rng.random((30, 6)) * 2)
    with pytest.raises(DataError, match=r"cannot binarize .* needs probabilities in \[0, 1\]") as i:
        NpzConfig(path=str(path), binarize="dynamic").load()
    one_sentence(i)


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


BAD_ARCHIVES = [
    ({"y": np.zeros(3)}, "has no array 'x'; it holds 'y'"),
    ({"x": np.array([["a", "b"], ["c", "d"]])}, "dtype <U1; numeric arrays"),
    ({"x": np.array([[1.0, np.nan], [0.0, 1.0]])}, "1 NaN or infinite values"),
    ({"x": np.array([[1.0, np.inf], [-np.inf, 1.0]])}, "2 NaN or infinite values"),
    ({"x": np.array([[1e300, 0.0], [0.0, 1.0]])}, "NaN or infinite values \\(float32\\)"),
    ({"x": np.zeros((0, 4))}, r"is empty \(shape \(0, 4\)\)"),
    ({"x": np.zeros((4, 0))}, "is empty"),
    ({"x": np.float64(3.0)}, "is a scalar"),
    ({"x": np.zeros((4, 2)), "y": np.arange(3)}, "3 labels for 4 examples"),
    ({"x": np.zeros((4, 2)), "y": np.array([0, 1, -1, 2])}, "labels from -1 to 2"),
    ({"x": np.zeros((4, 2)), "y": np.array([0.0, 1.0, 1.0, 0.0])}, "labels must be integers"),
    ({"x": np.zeros((4, 2)), "y": np.zeros((4, 1), dtype=int)}, "must be a 1-D array"),
    ({"x": np.zeros((4, 2), dtype=complex)}, "dtype complex128"),
]


@pytest.mark.parametrize(("arrays", "match"), BAD_ARCHIVES)
def test_bad_archives(tmp_path, arrays, match, one_sentence):
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match) as info:
        NpzConfig(path=str(path)).load()
    one_sentence(info)
    assert str(path) in str(info.value)


def test_object_arrays_are_refused(tmp_path, one_sentence):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([[1, None], [2, 3]], dtype=object))
    with pytest.raises(DataError, match="holds Python objects; numeric arrays") as info:
        read_npz(path)
    one_sentence(info)
    assert isinstance(info.value.__cause__, ValueError)


def test_unreadable_files(tmp_path, one_sentence):
    with pytest.raises(DataError, match="npz file .* does not exist") as info:
        NpzConfig(path=str(tmp_path / "missing.npz")).load()
    one_sentence(info)
    with pytest.raises(DataError, match="is a folder"):
        read_npz(tmp_path)
    text = tmp_path / "notes.npz"
    text.write_text("not an archive\n")
    with pytest.raises(DataError, match="cannot read npz file") as info:
        read_npz(text)
    one_sentence(info)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(DataError, match="holds a single array, not an .npz archive") as info:
        read_npz(single)
    one_sentence(info)


def test_truncated_archive(tmp_path, one_sentence):
    path = tmp_path / "big.npz"
    np.savez_compressed(path, x=np.random.default_rng(0).random((200, 50)))
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 30, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(DataError, match="cannot read") as info:
            read_npz(path)
        one_sentence(info)
