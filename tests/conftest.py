"""Shared fixtures: seeding and a clean Pyro parameter store around every test."""

from __future__ import annotations

import os
from pathlib import Path

import pyro
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed_and_clean_param_store():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield
    pyro.clear_param_store()


@pytest.fixture
def data_dir() -> Path:
    """``$PPVAE_DATA_DIR`` (the shared benchmark data); skips the test when unset."""
    value = os.environ.get("PPVAE_DATA_DIR")
    if not value:
        pytest.skip("PPVAE_DATA_DIR is not set: the shared data sets are not available")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"PPVAE_DATA_DIR={value} is not a folder")
    return path


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root (for specs in models/ and scripts in examples/)."""
    return REPO
