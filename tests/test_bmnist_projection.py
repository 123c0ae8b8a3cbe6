"""The projection of budget-stopped runs in ``benchmarks/bmnist.py`` (pure functions)."""

from __future__ import annotations

import importlib.util
import sys

import pytest


@pytest.fixture(scope="module")
def bmnist(repo):
    sys.path.insert(0, str(repo / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bmnist_bench", repo / "benchmarks" / "bmnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(curve, stopped_by="time budget", nll=95.0):
    return {
        "curve": [{"epoch": e, "valid_elbo": v} for e, v in curve],
        "stopped_by": stopped_by,
        "best_valid_elbo": max(v for _, v in curve),
        "nll": nll,
    }


def test_an_exact_a_plus_b_over_epoch_curve_gives_its_asymptote(bmnist):
    a, b = 90.0, 40.0
    curve = [(e, -(a + b / e)) for e in range(1, 21)]
    p = bmnist.projection(_result(curve))
    assert p["asymptote_neg_valid_elbo"] == pytest.approx(a, abs=1e-9)
    gain = (a + b / 20) - a  # best -ELBO (epoch 20) minus the asymptote
    assert p["further_gain"] == pytest.approx(gain, abs=1e-9)
    assert p["nll"] == pytest.approx(95.0 - gain, abs=1e-9)


def test_no_projection_for_early_stopping_short_or_rising_curves(bmnist):
    curve = [(e, -(90 + 40 / e)) for e in range(1, 21)]
    assert bmnist.projection(_result(curve, stopped_by="early stopping")) is None
    assert bmnist.projection(_result(curve[:6])) is None  # 3 points in its second half
    assert bmnist.projection(_result(curve[:8])) is not None  # 4 points
    worse = [(e, -(90 - 40 / e)) for e in range(1, 21)]  # -ELBO rising: no further gain
    p = bmnist.projection(_result(worse))
    assert p["further_gain"] == 0.0 and p["nll"] == 95.0


def test_curve_text_spreads_points_and_keeps_the_last(bmnist):
    curve = [{"epoch": e, "valid_elbo": -100.0 + e} for e in range(1, 14)]
    text = bmnist._curve_text(curve, points=4)
    assert text.startswith("1: 99.0") and text.endswith("13: 87.0")
    assert text.split(", ") == ["1: 99.0", "5: 95.0", "9: 91.0", "13: 87.0"]
    text = bmnist._curve_text(curve[:12], points=4)  # step 3: 1, 4, 7, 10, then the last
    assert [t.split(":")[0] for t in text.split(", ")] == ["1", "4", "7", "10", "12"]
