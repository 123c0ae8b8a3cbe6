"""IDX files and the mnist kind: round trips with small files, header checks, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppvae.data import MnistConfig, read_idx
from ppvae.data.sources import IDX_IMAGES, IDX_LABELS
from ppvae.errors import DataError


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=7, dtype=np.uint8),
        rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=5, dtype=np.uint8),
    )


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(arrays, write_mnist, gz):
    train_x, train_y, test_x, test_y = arrays
    folder = write_mnist(*arrays, gz=gz)
    ext = ".gz" if gz else ""
    images = read_idx(folder / f"train-images-idx3-ubyte{ext}", magic=IDX_IMAGES)
    assert images.shape == (7, 28, 28) and np.array_equal(images, train_x)
    labels = read_idx(folder / f"train-labels-idx1-ubyte{ext}", magic=IDX_LABELS)
    assert np.array_equal(labels, train_y)

    bundle = MnistConfig(path=str(folder)).load()
    assert bundle.sizes == {"train": 6, "valid": 1, "test": 5}
    assert (bundle.image_shape, bundle.num_classes, bundle.dim) == ((28, 28), 10, 784)
    expected = torch.from_numpy(test_x.reshape(5, 784)).float() / 255
    assert torch.equal(bundle.test.x, expected)
    assert bundle.test.y.tolist() == test_y.tolist()
    # train + valid are the 7 training images with their labels, in a seeded order
    x = torch.cat([bundle.train.x, bundle.valid.x])
    y = torch.cat([bundle.train.y, bundle.valid.y])
    flat = train_x.reshape(7, 784)
    for row, label in zip(x, y, strict=True):
        index = [i for i in range(7) if np.array_equal(flat[i], np.rint(row.numpy() * 255))]
        assert len(index) == 1 and train_y[index[0]] == label
    assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_count_comes_from_the_header(write_bytes, idx_encode, tmp_path):
    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2)
    path = write_bytes(tmp_path / "x-idx3-ubyte.gz", idx_encode(images))
    assert read_idx(path, magic=IDX_IMAGES).shape == (3, 2, 2)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00\x00", "too few for an IDX header"),
        (IDX_LABELS.to_bytes(4, "big") + b"\x00\x00\x00\x07", "magic number 0x00000801"),
        (IDX_IMAGES.to_bytes(4, "big") + b"\x00\x00\x00\x07", "truncated inside its header"),
    ],
)
def test_bad_idx_headers(write_bytes, tmp_path, data, match, one_sentence):
    path = write_bytes(tmp_path / "bad-idx3-ubyte", data)
    with pytest.raises(DataError, match=match) as info:
        read_idx(path, magic=IDX_IMAGES)
    one_sentence(info)


@pytest.mark.parametrize("count", [6, 8, 0])
def test_idx_size_must_match_header(write_bytes, idx_encode, tmp_path, count, one_sentence):
    images = np.zeros((7, 28, 28), dtype=np.uint8)
    path = write_bytes(tmp_path / "x-idx3-ubyte.gz", idx_encode(images, count=count))
    with pytest.raises(DataError, match=r"its header announces shape") as info:
        read_idx(path, magic=IDX_IMAGES)
    one_sentence(info)
    assert str(path) in str(info.value)


def test_empty_idx(write_bytes, idx_encode, tmp_path, one_sentence):
    path = write_bytes(tmp_path / "x-idx1-ubyte", idx_encode(np.zeros(0, dtype=np.uint8)))
    with pytest.raises(DataError, match="is empty") as info:
        read_idx(path, magic=IDX_LABELS)
    one_sentence(info)


def test_truncated_gzip(write_bytes, idx_encode, tmp_path, one_sentence):
    import gzip

    data = gzip.compress(idx_encode(np.zeros((7, 28, 28), dtype=np.uint8)))
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read data file") as info:
        read_idx(path, magic=IDX_IMAGES)
    one_sentence(info)
    assert isinstance(info.value.__cause__, EOFError | OSError)


def test_missing_folder_and_file(arrays, write_mnist, tmp_path, one_sentence):
    with pytest.raises(DataError, match="MNIST folder .* does not exist") as info:
        MnistConfig(path=str(tmp_path / "nowhere")).load()
    one_sentence(info)
    folder = write_mnist(*arrays, gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte \(or .*\.gz\) is missing") as i:
        MnistConfig(path=str(folder)).load()
    one_sentence(i)


def test_label_count_and_range(arrays, write_mnist, one_sentence):
    train_x, train_y, test_x, test_y = arrays
    folder = write_mnist(train_x, train_y[:6], test_x, test_y)
    with pytest.raises(DataError, match="6 labels for 7 examples") as info:
        MnistConfig(path=str(folder)).load()
    one_sentence(info)
    bad = test_y.copy()
    bad[2] = 10
    folder = write_mnist(train_x, train_y, test_x, bad, gz=False)
    with pytest.raises(DataError, match=r"labels from \d+ to 10; allowed labels are 0 .. 9") as i:
        MnistConfig(path=str(folder)).load()
    one_sentence(i)


def test_image_size_must_be_28_by_28(write_mnist, one_sentence):
    small = np.zeros((7, 8, 8), dtype=np.uint8)
    labels = np.zeros(7, dtype=np.uint8)
    folder = write_mnist(small, labels, small, labels)
    with pytest.raises(DataError, match="MNIST images are 28x28") as info:
        MnistConfig(path=str(folder)).load()
    one_sentence(info)


def test_data_dir_variable(arrays, write_mnist, monkeypatch, one_sentence):
    monkeypatch.delenv("PPVAE_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="set PPVAE_DATA_DIR .* or set data.path") as info:
        MnistConfig().load()
    one_sentence(info)
    folder = write_mnist(*arrays)
    target = folder.parent / "mnist"
    folder.rename(target)
    monkeypatch.setenv("PPVAE_DATA_DIR", str(target.parent))
    assert MnistConfig().load().sizes == {"train": 6, "valid": 1, "test": 5}
