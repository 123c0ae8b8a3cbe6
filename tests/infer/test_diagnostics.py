"""Kish ESS, delta-method standard error, PSIS k-hat adapter and the k-hat plot."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch

from ppvae.infer.diagnostics import (
    KHAT_BAD,
    KHAT_GOOD,
    khat_threshold,
    kish_ess,
    log_mean_stderr,
    plot_khat,
    psis_khat,
)


def test_kish_ess_on_hand_made_weights():
    log = torch.log
    assert float(kish_ess(log(torch.tensor([1.0, 1.0, 2.0])))) == pytest.approx(16 / 6)
    assert float(kish_ess(log(torch.tensor([3.0, 0.0, 0.0, 0.0])))) == pytest.approx(1.0)
    assert float(kish_ess(torch.zeros(50))) == pytest.approx(50.0)
    assert float(kish_ess(torch.full((4,), -math.inf))) == 0.0
    # samples on another axis, and log weights far below exp's range
    w = torch.tensor([[1.0, 2.0], [1.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    log_w = log(w) - 1e4
    assert torch.allclose(kish_ess(log_w, dim=0), torch.tensor([16 / 6, 3.0], dtype=torch.float64))


def test_log_mean_stderr_is_the_delta_method():
    torch.manual_seed(0)
    log_w = torch.randn(3, 400, dtype=torch.float64)
    w = log_w.exp()
    expected = torch.sqrt(w.var(-1, correction=1) / 400) / w.mean(-1)
    assert torch.allclose(log_mean_stderr(log_w), expected, rtol=1e-9)
    assert torch.allclose(log_mean_stderr(log_w - 1e4), expected, rtol=1e-6)
    assert torch.isnan(log_mean_stderr(torch.zeros(1)))


def _pareto_log_weights(shape: float, n: int, rows: int = 4, seed: int = 0):
    """log w for w = U^(-shape): a Pareto tail P(w > t) = t^(-1/shape), k = shape."""
    g = torch.Generator().manual_seed(seed)
    return -shape * torch.log(torch.rand(rows, n, generator=g, dtype=torch.float64))


def test_psis_khat_recovers_the_pareto_shape():
    light = psis_khat(_pareto_log_weights(0.3, 4000))
    heavy = psis_khat(_pareto_log_weights(1.2, 4000))
    assert light.shape == (4,)
    assert (light - 0.3).abs().max() < 0.15 and (light < KHAT_GOOD).all()
    assert (heavy > KHAT_BAD).all()


def test_psis_khat_edge_cases():
    assert torch.isnan(psis_khat(torch.randn(3, 20))).all()  # no tail to fit
    assert (psis_khat(torch.full((2, 100), -7.0)) == 0).all()  # equal weights
    assert torch.isnan(psis_khat(torch.tensor([[float("nan")] + [0.0] * 99])))[0]
    log_w = _pareto_log_weights(0.3, 200, rows=6).reshape(2, 3, 200)
    assert psis_khat(log_w).shape == (2, 3)
    assert torch.allclose(psis_khat(log_w.movedim(-1, 0), dim=0), psis_khat(log_w))


def test_psis_adapter_negates_for_arviz_stats(monkeypatch):
    """ArviZ >= 1 (arviz-stats) expects log-likelihoods and negates them: pass -log w."""
    seen = {}

    def fake_psislw(ary, r_eff=1.0, axis=-1):
        seen["input"] = np.array(ary)
        return ary, np.full(ary.shape[:-1], 0.25)

    arviz = types.ModuleType("arviz")
    arviz.__version__ = "1.0.0"
    base = types.ModuleType("arviz_stats.base")
    base.array_stats = types.SimpleNamespace(psislw=fake_psislw)
    monkeypatch.setitem(sys.modules, "arviz", arviz)
    monkeypatch.setitem(sys.modules, "arviz_stats", types.ModuleType("arviz_stats"))
    monkeypatch.setitem(sys.modules, "arviz_stats.base", base)
    log_w = _pareto_log_weights(0.3, 100, rows=2)
    khat = psis_khat(log_w)
    assert torch.allclose(khat, torch.full((2,), 0.25, dtype=torch.float64))
    assert np.allclose(seen["input"], -log_w.numpy())


def test_khat_threshold():
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(10**6) == pytest.approx(0.7)
    assert khat_threshold(1000) == pytest.approx(1 - 1 / 3)


def test_plot_khat_writes_a_png(tmp_path):
    path = tmp_path / "khat.png"
    plot_khat(torch.tensor([0.1, 0.55, 0.9, float("nan")]), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
