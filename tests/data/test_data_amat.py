"""The .amat reader and the binarized_mnist kind: round trips, layouts, bad lines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppvae.data import BinarizedMnistConfig, read_amat
from ppvae.errors import DataError


@pytest.fixture
def arrays():
    rng = np.random.default_rng(1)
    return {
        split: rng.integers(0, 2, size=(n, 784), dtype=np.uint8)
        for split, n in (("train", 20), ("valid", 4), ("test", 3))
    }


@pytest.mark.parametrize("gz", [True, False])
def test_round_trip(arrays, write_bmnist, gz):
    folder = write_bmnist(arrays, gz=gz)
    bundle = BinarizedMnistConfig(path=str(folder)).load()
    assert bundle.sizes == {"train": 20, "valid": 4, "test": 3}
    assert (bundle.image_shape, bundle.num_classes, bundle.dim) == ((28, 28), None, 784)
    assert bundle.is_binary and bundle.train_transform is None
    for split, array in arrays.items():
        part = bundle.split(split)
        assert part.y is None and part.x.dtype == torch.float32
        assert torch.equal(part.x, torch.from_numpy(array).float())  # file order kept


def test_limit_is_a_seeded_random_subset(arrays, write_bmnist):
    folder = str(write_bmnist(arrays))
    a = BinarizedMnistConfig(path=folder, limit=5).load()
    b = BinarizedMnistConfig(path=folder, limit=5).load()
    c = BinarizedMnistConfig(path=folder, limit=5, split_seed=1).load()
    assert len(a.train) == 5 and torch.equal(a.train.x, b.train.x)
    assert not torch.equal(a.train.x, c.train.x)
    full = torch.from_numpy(arrays["train"]).float()
    assert not torch.equal(a.train.x, full[:5])
    rows = {tuple(r) for r in full.tolist()}
    assert all(tuple(r) in rows for r in a.train.x.tolist())
    assert len(a.valid) == 4 and len(a.test) == 3


@pytest.mark.parametrize(
    ("sep", "newline", "trailer"),
    [(" ", "\r\n", ""), ("\t", "\n", "\n\n"), ("  ", "\n", ""), (" ", " \n", "")],
)
def test_other_layouts(write_bytes, amat_encode, tmp_path, sep, newline, trailer):
    array = np.random.default_rng(2).integers(0, 2, size=(6, 784), dtype=np.uint8)
    data = amat_encode(array, sep=sep, newline=newline) + trailer.encode()
    path = write_bytes(tmp_path / "x.amat.gz", data)
    assert np.array_equal(read_amat(path), array)


def test_last_line_without_newline(write_bytes, amat_encode, tmp_path):
    array = np.eye(4, dtype=np.uint8)
    path = write_bytes(tmp_path / "x.amat", amat_encode(array)[:-1])
    assert np.array_equal(read_amat(path, width=4), array)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(0, 1), min_size=5, max_size=5), min_size=1, max_size=8),
    sep=st.sampled_from([" ", "\t", " \t "]),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_parse_any_spacing(tmp_path_factory, rows, sep, newline):
    array = np.array(rows, dtype=np.uint8)
    text = "".join(sep.join(map(str, row)) + newline for row in rows)
    path = tmp_path_factory.mktemp("amat") / "x.amat"
    path.write_text(text, newline="")
    assert np.array_equal(read_amat(path, width=5), array)


def _lines(n: int = 3, width: int = 784) -> list[str]:
    return [" ".join(["0"] * width) for _ in range(n)]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda lines: lines.__setitem__(1, lines[1] + " 1"), "line 2 holds 785 values"),
        (lambda lines: lines.__setitem__(2, lines[2][:-2]), "line 3 holds 783 values"),
        (lambda lines: lines.__setitem__(1, "2" + lines[1][1:]), "line 2 holds the character '2'"),
        (lambda lines: lines.__setitem__(0, lines[0][:-1] + "x"), "line 1 holds the character 'x'"),
        (lambda lines: lines.__setitem__(2, lines[2][:-1] + "0.5"), "character '.'"),
        (
            lambda lines: lines.__setitem__(1, "01" + lines[1][1:]),
            "line 2 holds a value of several",
        ),
    ],
)
def test_bad_lines(write_bytes, tmp_path, edit, match, one_sentence):
    lines = _lines()
    edit(lines)
    path = write_bytes(tmp_path / "bad.amat.gz", ("\n".join(lines) + "\n").encode())
    with pytest.raises(DataError, match=match) as info:
        read_amat(path)
    one_sentence(info)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n", "   \n"])
def test_empty_file(write_bytes, tmp_path, text, one_sentence):
    path = write_bytes(tmp_path / "empty.amat", text.encode())
    with pytest.raises(DataError, match="empty|no data") as info:
        read_amat(path)
    one_sentence(info)


def test_missing_and_truncated_files(arrays, write_bmnist, tmp_path, one_sentence):
    with pytest.raises(DataError, match="binarized MNIST folder .* does not exist") as info:
        BinarizedMnistConfig(path=str(tmp_path / "nowhere")).load()
    one_sentence(info)
    folder = write_bmnist(arrays)
    (folder / "binarized_mnist_valid.amat.gz").unlink()
    with pytest.raises(DataError, match=r"binarized_mnist_valid.amat \(or") as info:
        BinarizedMnistConfig(path=str(folder)).load()
    one_sentence(info)
    test_file = folder / "binarized_mnist_test.amat.gz"
    data = test_file.read_bytes()
    test_file.write_bytes(data[: len(data) - 12])
    with pytest.raises(DataError, match="cannot read data file") as info:
        read_amat(test_file)
    one_sentence(info)


def test_static_binarization_of_binary_data_changes_nothing(arrays, write_bmnist):
    folder = str(write_bmnist(arrays))
    plain = BinarizedMnistConfig(path=folder).load()
    for mode in ("static", "dynamic"):
        bundle = BinarizedMnistConfig(path=folder, binarize=mode).load()
        for split in ("train", "valid", "test"):
            assert torch.equal(bundle.split(split).x, plain.split(split).x)


def test_reads_bmnist_quickly(write_bytes, amat_encode, tmp_path):
    import time

    array = np.random.default_rng(3).integers(0, 2, size=(5000, 784), dtype=np.uint8)
    path = write_bytes(tmp_path / "big.amat.gz", amat_encode(array))
    start = time.perf_counter()
    values = read_amat(path)
    elapsed = time.perf_counter() - start
    assert np.array_equal(values, array)
    assert elapsed < 2.0  # ~0.05 s expected; 1/10 of binarized MNIST's training set
