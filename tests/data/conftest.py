"""Fixtures of the data tests: writers of small IDX, .amat and .npz files in tmp_path."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest

from ppvae.errors import PpvaeError


def _write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=1)
    path.write_bytes(data)
    return path


def idx_bytes(array: np.ndarray, magic: int | None = None, count: int | None = None) -> bytes:
    """IDX encoding of a uint8 array; ``magic``/``count`` override the header."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x800 + array.ndim if magic is None else magic
    shape = list(array.shape)
    if count is not None:
        shape[0] = count
    header = magic.to_bytes(4, "big") + b"".join(s.to_bytes(4, "big") for s in shape)
    return header + array.tobytes()


def amat_bytes(array: np.ndarray, sep: str = " ", newline: str = "\n") -> bytes:
    """``.amat`` text of a 0/1 array, one row a line."""
    array = np.asarray(array, dtype=np.uint8)
    if sep == " " and newline == "\n" and array.size:  # fast path for big arrays
        out = np.full((array.shape[0], 2 * array.shape[1]), ord(" "), dtype=np.uint8)
        out[:, 0::2] = array + ord("0")
        out[:, -1] = ord("\n")
        return out.tobytes()
    lines = (sep.join(str(int(v)) for v in row) for row in np.asarray(array))
    return "".join(line + newline for line in lines).encode()


@pytest.fixture
def write_bytes():
    """``write_bytes(path, data)``: write ``data``, gzip-compressed when path ends in .gz."""
    return _write


@pytest.fixture
def write_mnist(tmp_path):
    """``write_mnist(train_images, train_labels, test_images, test_labels, gz=True)``."""

    def write(train_x, train_y, test_x, test_y, *, gz: bool = True) -> Path:
        folder = tmp_path / ("mnist_gz" if gz else "mnist_plain")
        folder.mkdir(exist_ok=True)
        ext = ".gz" if gz else ""
        for name, array in (
            ("train-images-idx3-ubyte", train_x),
            ("train-labels-idx1-ubyte", train_y),
            ("t10k-images-idx3-ubyte", test_x),
            ("t10k-labels-idx1-ubyte", test_y),
        ):
            _write(folder / f"{name}{ext}", idx_bytes(array))
        return folder

    return write


@pytest.fixture
def write_bmnist(tmp_path):
    """``write_bmnist({"train": a, "valid": b, "test": c}, gz=True)`` -> the folder."""

    def write(arrays: dict[str, np.ndarray], *, gz: bool = True) -> Path:
        folder = tmp_path / ("bmnist_gz" if gz else "bmnist_plain")
        folder.mkdir(exist_ok=True)
        ext = ".amat.gz" if gz else ".amat"
        for split, array in arrays.items():
            _write(folder / f"binarized_mnist_{split}{ext}", amat_bytes(array))
        return folder

    return write


def assert_one_sentence(error: BaseException) -> None:
    """A ppvae error whose message is one sentence on one line."""
    message = str(error)
    assert isinstance(error, PpvaeError)
    assert message and "\n" not in message, message
    assert not re.search(r"\.\s+[A-Z]", message), message


@pytest.fixture
def one_sentence():
    """``one_sentence(excinfo)``: check a ``pytest.raises`` result holds one sentence."""
    return lambda excinfo: assert_one_sentence(excinfo.value)


@pytest.fixture
def idx_encode():
    """``idx_encode(array, magic=None, count=None)``: the IDX bytes of a uint8 array."""
    return idx_bytes


@pytest.fixture
def amat_encode():
    """``amat_encode(array, sep=" ", newline="\\n")``: the .amat text of a 0/1 array."""
    return amat_bytes
