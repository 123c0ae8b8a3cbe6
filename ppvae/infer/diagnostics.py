r"""Diagnostics of importance weights: Kish ESS, PSIS :math:`\hat k`, delta-method errors.

All functions take **log** importance weights :math:`\log w_k` with the samples on the
last axis (any leading batch shape, e.g. one row per data point) and work in log space, so
weights around :math:`e^{-10^4}` are no problem.

* :func:`kish_ess` -- Kish's effective sample size (Kish 1965),
  :math:`\mathrm{ESS} = (\sum_k w_k)^2 / \sum_k w_k^2 = 1 / \sum_k \bar w_k^2` for the
  normalized weights :math:`\bar w_k = w_k / \sum_j w_j`. It lies in :math:`[1, K]`.
* :func:`log_mean_stderr` -- the standard error of :math:`\log \hat p`, with
  :math:`\hat p = \frac1K \sum_k w_k`, by the delta method:
  :math:`\mathrm{se}(\log \hat p) \approx \sqrt{\widehat{\mathrm{var}}(w) / K} / \bar w`,
  which in terms of the ESS is :math:`\sqrt{(K / \mathrm{ESS} - 1) / (K - 1)}` (unbiased
  sample variance). It is honest only when the weights have a finite variance, which is
  what :math:`\hat k < 0.5` indicates.
* :func:`psis_khat` -- the Pareto shape :math:`\hat k` of the upper tail of the weights
  (Pareto smoothed importance sampling, Vehtari, Simpson, Gelman, Yao & Gabry 2024,
  JMLR 25(72)). :math:`\hat k < 0.5`: good (finite variance); :math:`0.5 \le \hat k \le
  0.7`: usable; :math:`\hat k > 0.7`: the estimate is unreliable. With :math:`S` samples
  the 2024 threshold is :math:`\min(1 - 1/\log_{10} S, 0.7)` (:func:`khat_threshold`).
  A thin adapter over ArviZ: ``arviz.psislw`` (ArviZ < 1) takes log weights as they are;
  ``arviz_stats`` (ArviZ >= 1) negates its input, so it gets :math:`-\log w`.
* :func:`plot_khat` -- a PNG scatter plot of :math:`\hat k` per data point with the
  0.5 / 0.7 thresholds.

Example:
    >>> import torch
    >>> log_w = torch.zeros(2, 100)  # equal weights: ESS = K, no error
    >>> kish_ess(log_w).round()
    tensor([100., 100.], dtype=torch.float64)
    >>> log_mean_stderr(log_w)
    tensor([0., 0.], dtype=torch.float64)
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch

__all__ = [
    "KHAT_GOOD",
    "KHAT_BAD",
    "MIN_KHAT_SAMPLES",
    "kish_ess",
    "log_mean_stderr",
    "psis_khat",
    "khat_threshold",
    "plot_khat",
]

#: Below this :math:`\hat k` the weights have a finite variance (good).
KHAT_GOOD = 0.5
#: Above this :math:`\hat k` the importance-sampling estimate is unreliable.
KHAT_BAD = 0.7
#: PSIS fits a generalized Pareto distribution to the largest
#: :math:`\lceil\min(S/5, 3\sqrt S)\rceil` weights and needs at least 5 of them, i.e.
#: :math:`S \ge 21` samples; with fewer, :func:`psis_khat` returns NaN.
MIN_KHAT_SAMPLES = 21


def _as_tensor(log_w) -> torch.Tensor:
    """A float64 tensor (computations here are in double precision)."""
    if isinstance(log_w, torch.Tensor):
        return log_w.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(log_w, dtype=np.float64))


def kish_ess(log_w, dim: int = -1) -> torch.Tensor:
    r"""Kish's effective sample size :math:`(\sum_k w_k)^2 / \sum_k w_k^2` along ``dim``.

    Computed in log space as :math:`\exp(2\,\mathrm{LSE}(\log w) - \mathrm{LSE}(2 \log w))`.

    Example:
        >>> import math, torch
        >>> kish_ess(torch.tensor([0.0, 0.0, math.log(2.0)]))  # w = 1, 1, 2: 16 / 6
        tensor(2.6667, dtype=torch.float64)
    """
    log_w = _as_tensor(log_w)
    lse1 = torch.logsumexp(log_w, dim)
    lse2 = torch.logsumexp(2 * log_w, dim)
    ess = torch.exp(2 * lse1 - lse2).clamp(1.0, log_w.shape[dim])
    return torch.where(torch.isneginf(lse1), torch.zeros_like(ess), ess)


def log_mean_stderr(log_w, dim: int = -1) -> torch.Tensor:
    r"""Delta-method standard error of :math:`\log(\frac1K \sum_k w_k)` along ``dim``.

    :math:`\sqrt{\widehat{\mathrm{var}}(w) / K} / \bar w =
    \sqrt{(K / \mathrm{ESS} - 1) / (K - 1)}` with the unbiased sample variance; NaN for
    :math:`K = 1`.

    Example:
        >>> import torch
        >>> log_mean_stderr(torch.tensor([0.0, 0.0, 0.0, 0.0]))
        tensor(0., dtype=torch.float64)
    """
    log_w = _as_tensor(log_w)
    k = log_w.shape[dim]
    return _stderr_from_ess(kish_ess(log_w, dim), k)


def _stderr_from_ess(ess: torch.Tensor, num_samples: int) -> torch.Tensor:
    if num_samples < 2:
        return torch.full_like(ess, float("nan"))
    ratio = (num_samples / ess - 1.0).clamp(min=0.0)
    return torch.sqrt(ratio / (num_samples - 1))


def _psislw(log_w: np.ndarray) -> np.ndarray:
    """k-hat per row of ``log_w`` (samples on the last axis) through the installed ArviZ."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz's import banner and its k-hat warnings
        import arviz

        if int(arviz.__version__.split(".")[0]) < 1 and hasattr(arviz, "psislw"):
            _, khat = arviz.psislw(log_w)
        else:  # ArviZ >= 1: arviz-stats negates its input (it expects log-likelihoods)
            from arviz_stats.base import array_stats

            _, khat = array_stats.psislw(-log_w, r_eff=1.0, axis=-1)
    return np.asarray(khat, dtype=np.float64)


def _flat_tail(flat: torch.Tensor) -> torch.Tensor:
    """Rows whose largest weights, the ones PSIS fits a Pareto tail to, are all equal."""
    num = flat.shape[-1]
    tail = math.ceil(min(num / 5.0, 3.0 * math.sqrt(num)))
    top = flat.topk(min(tail, num), dim=-1).values
    return (top[:, 0] - top[:, -1]) <= 1e-12 * (1.0 + top[:, 0].abs())


def psis_khat(log_w, dim: int = -1) -> torch.Tensor:
    r"""Pareto :math:`\hat k` of the importance weights along ``dim`` (PSIS, Vehtari et
    al. 2024).

    Returns NaN where there are fewer than :data:`MIN_KHAT_SAMPLES` samples (no tail to
    fit) or a weight is NaN, and 0 where all weights are equal, or the largest
    :math:`\lceil\min(S/5, 3\sqrt S)\rceil` of them are (no tail at all: the proposal is
    exact up to rounding; ArviZ < 1 answers inf there and arviz-stats raises, so neither
    is asked).

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> log_w = -0.5 * torch.randn(1, 4000) ** 2  # bounded weights
        >>> bool(psis_khat(log_w) < 0.5)
        True
    """
    log_w = _as_tensor(log_w).movedim(dim, -1)
    batch_shape, num = log_w.shape[:-1], log_w.shape[-1]
    flat = log_w.reshape(-1, num)
    khat = torch.full((flat.shape[0],), float("nan"), dtype=torch.float64)
    if num >= MIN_KHAT_SAMPLES and flat.shape[0] > 0:
        top = flat.max(-1).values
        spread = top - flat.min(-1).values
        nan = torch.isnan(flat).any(-1)
        constant = ((spread <= 1e-12 * (1.0 + top.abs())) | _flat_tail(flat)) & ~nan
        valid = ~nan & ~torch.isinf(top) & ~constant
        if valid.any():
            khat[valid] = torch.as_tensor(_psislw(flat[valid].cpu().numpy()))
        khat[constant & ~torch.isinf(top)] = 0.0
    return khat.reshape(batch_shape)


def khat_threshold(num_samples: int) -> float:
    r"""The sample-size dependent :math:`\hat k` threshold :math:`\min(1 - 1/\log_{10}
    S, 0.7)` of Vehtari et al. (2024).

    Example:
        >>> khat_threshold(100)
        0.5
    """
    if num_samples <= 10:
        return 0.0
    return min(1.0 - 1.0 / math.log10(num_samples), KHAT_BAD)


def plot_khat(khat, path: str | os.PathLike, *, title: str | None = None) -> None:
    r"""Save a PNG scatter plot of :math:`\hat k` per data point with the 0.5 / 0.7 lines.

    Draws on matplotlib's Agg canvas (no display; pyplot's backend is left alone). NaN
    values are left out.

    Example:
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "khat.png")
        >>> plot_khat(torch.tensor([0.1, 0.6, 0.9]), path)
        >>> os.path.getsize(path) > 0
        True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = _as_tensor(khat).reshape(-1).cpu().numpy().astype(np.float64)
    index = np.arange(values.size)
    finite = np.isfinite(values)
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)  # the Agg backend, whatever pyplot's backend is
    ax = fig.add_subplot(1, 1, 1)
    colours = np.where(
        values > KHAT_BAD, "tab:red", np.where(values > KHAT_GOOD, "tab:orange", "tab:blue")
    )
    ax.scatter(index[finite], values[finite], s=8, c=colours[finite])
    ax.axhline(KHAT_GOOD, color="tab:orange", linestyle="--", linewidth=1, label="k = 0.5")
    ax.axhline(KHAT_BAD, color="tab:red", linestyle="--", linewidth=1, label="k = 0.7")
    ax.set_xlabel("data point")
    ax.set_ylabel(r"Pareto $\hat k$")
    bad = int((values[finite] > KHAT_BAD).sum())
    ax.set_title(title or f"PSIS k-hat: {bad} of {values.size} points above 0.7")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png", dpi=100)
