"""ArviZ 0.x and 1.x: the k-hat adapter and ImportanceResult's container, with whichever
ArviZ is installed (CI: 0.23 on Python 3.11; README's Development section gives the
command that runs this file under Python 3.12 with ArviZ 1.x)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ppvae.infer.diagnostics import psis_khat
from ppvae.infer.importance import ImportanceResult


def _arviz_major() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz

    return int(arviz.__version__.split(".")[0])


def _result(n: int = 3) -> ImportanceResult:
    values = torch.arange(n, dtype=torch.float64)
    return ImportanceResult(
        -values, -values - 1, values / 10, values + 1, values / 5, num_samples=30,
        num_khat_samples=30,
    )  # fmt: skip


def test_to_inference_data_returns_the_installed_arviz_container():
    data = _result().to_inference_data()
    if _arviz_major() >= 1:
        import xarray

        assert isinstance(data, xarray.DataTree)
        assert list(data.children) == ["importance"]
    else:
        import arviz

        assert isinstance(data, arviz.InferenceData)
        assert data.groups() == ["importance"]
    group = data.importance
    for name in ("log_px", "elbo", "stderr", "ess", "khat"):
        assert group[name].dims == ("data",)
        assert np.allclose(group[name].values, getattr(_result(), name).numpy())
    assert group.attrs["num_samples"] == 30 and group.attrs["num_khat_samples"] == 30
    assert group.attrs["mean"] == pytest.approx(-1.0)


def test_khat_of_a_flat_tail_is_zero_under_any_arviz():
    """An exact guide gives weights equal up to rounding: the largest ones, which PSIS fits
    a tail to, are all equal. ArviZ 0.x says inf there and arviz-stats raises."""
    row = torch.zeros(30, dtype=torch.float64)
    row[[0, 5]], row[1] = -9.5e-7, -1.9e-6
    khat = psis_khat(torch.stack([row, row - 3.0]))
    assert torch.equal(khat, torch.zeros(2, dtype=torch.float64))


def test_khat_heavy_and_light_tails_under_the_installed_arviz():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(2, 2000, generator=g, dtype=torch.float64)
    log_w = torch.stack([-0.9 * u[0].log(), -0.2 * u[1].log()])  # Pareto tails, k = 0.9, 0.2
    khat = psis_khat(log_w)
    assert khat[0] > 0.7 and khat[1] < 0.5
