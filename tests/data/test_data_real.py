"""The shared data sets in $PPVAE_DATA_DIR (skipped when the variable is unset)."""

from __future__ import annotations

import os
import time

import pytest
import torch

from ppvae.data import BinarizedMnistConfig, MnistConfig

pytestmark = pytest.mark.data

MNIST_TRAIN_CLASS_COUNTS = [1250, 1409, 1216, 1288, 1234, 1082, 1255, 1330, 1178, 1242]


@pytest.fixture(scope="module", autouse=True)
def _require_data_dir() -> str:
    root = os.environ.get("PPVAE_DATA_DIR", "")
    if not root:
        pytest.skip(
            "PPVAE_DATA_DIR is not set: point it at the shared data folder (../shared/data)"
        )
    return root


def test_mnist():
    bundle = MnistConfig().load()
    assert bundle.sizes == {"train": 11236, "valid": 1248, "test": 10000}
    y = torch.cat([bundle.train.y, bundle.valid.y])
    assert torch.bincount(y, minlength=10).tolist() == MNIST_TRAIN_CLASS_COUNTS
    assert bundle.test.y.bincount(minlength=10).sum() == 10000
    assert (bundle.image_shape, bundle.num_classes, bundle.dim) == ((28, 28), 10, 784)
    x = bundle.train.x
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert not bundle.is_binary
    assert 0.12 < float(bundle.test.x.mean()) < 0.14  # MNIST's mean pixel is ~0.13


def test_mnist_static_binarization():
    bundle = MnistConfig(binarize="static", limit=1000).load()
    assert bundle.is_binary and len(bundle.train) == 1000
    assert set(bundle.test.x.unique().tolist()) == {0.0, 1.0}


def test_binarized_mnist_loads_fast():
    start = time.perf_counter()
    bundle = BinarizedMnistConfig().load()
    elapsed = time.perf_counter() - start
    assert bundle.sizes == {"train": 50000, "valid": 10000, "test": 10000}
    assert bundle.is_binary and bundle.image_shape == (28, 28) and bundle.train.y is None
    assert 0.12 < float(bundle.train.x.mean()) < 0.14
    assert elapsed < 5.0, f"binarized MNIST took {elapsed:.2f} s to load"
    print(f"binarized MNIST loaded in {elapsed:.2f} s")
