r"""Importance-sampled estimates of :math:`\log p(x)` per data point, with diagnostics.

For each data point :math:`x_i` and :math:`K` samples :math:`z_{ik} \sim q(z | x_i)` from
the guide,

.. math::

    \log \hat p(x_i) = \log \frac1K \sum_{k=1}^K w_{ik}, \qquad
    \log w_{ik} = \log p(x_i, z_{ik}) - \log q(z_{ik} | x_i),

an estimator whose exponential is unbiased for :math:`p(x_i)` and which is a stochastic
lower bound on :math:`\log p(x_i)` converging to it as :math:`K \to \infty` (Burda, Grosse
& Salakhutdinov 2016, *Importance Weighted Autoencoders*, ICLR; the standard
:math:`K = 5000` evaluation of deep latent variable models).

The log weight of a point sums, over the sample sites of the traces, the unscaled
:math:`\log p - \log q` of the sites inside the data plate at that point (summed over the
event and any nested plates) plus the sum over all sites outside the data plate (global
latents: each particle draws its own, so the estimate is of the per-point marginal
:math:`p(x_i) = \int p(\theta) p(x_i | \theta)\,d\theta`). Latent sites of the model that
the guide does not sample are drawn from their prior and drop out of the weight.

The :math:`K` samples are drawn *vectorized*, ``chunk_size`` at a time, by running guide
and model once inside a particle plate (left of every plate of the model, as Pyro's
``vectorize_particles`` does). Chunks are combined with a streaming log-sum-exp (running
maximum and rescaled sums of :math:`w` and :math:`w^2` in float64), exact and stable for
:math:`K` up to :math:`10^6` and log weights of any magnitude.

Memory: about ``batch_size x chunk_size x`` (the size of one trace: latents and network
activations) for the traces, plus ``batch_size x min(K, max_khat_samples)`` float64 log
weights kept for :math:`\hat k`. Defaults: ``batch_size = min(N, 128)`` and ``chunk_size``
such that ``batch_size * chunk_size <= 2**15``.

Diagnostics per point (:mod:`ppvae.infer.diagnostics`): the Kish effective sample size,
the delta-method standard error of :math:`\log \hat p(x_i)` (both from the streaming sums,
over all :math:`K` samples) and the PSIS Pareto :math:`\hat k` (from the first
``min(K, max_khat_samples)`` samples, which are as random as any others).

Example:
    >>> import torch, pyro, pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):  # the exact posterior: every weight equals p(x)
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
    >>> result = log_marginal_likelihood(model, guide, torch.zeros(3), num_samples=100)
    >>> result.log_px  # log N(0; 0, 2)
    tensor([-1.2655, -1.2655, -1.2655], dtype=torch.float64)
    >>> result.ess.round()
    tensor([100., 100., 100.], dtype=torch.float64)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites

from ppvae.errors import DataError, PpvaeWarning
from ppvae.infer.diagnostics import _stderr_from_ess, khat_threshold, psis_khat
from ppvae.infer.isolation import isolated_param_store
from ppvae.infer.traces import (
    broadcast_problem,
    data_errors,
    eval_mode,
    one_particle_log_weights,
    shape_text,
    vectorized_traces,
    weight_terms,
)

__all__ = ["ImportanceResult", "log_marginal_likelihood", "DEFAULT_MAX_KHAT_SAMPLES"]

#: Default number of log weights per data point kept for the PSIS k-hat.
DEFAULT_MAX_KHAT_SAMPLES = 5000
#: Default bound on ``batch_size * chunk_size`` (particle-points per vectorized trace).
_DEFAULT_TRACE_POINTS = 2**15
_DEFAULT_BATCH_SIZE = 128


# --------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ImportanceResult:
    r"""Per-data-point importance-sampling estimates (CPU float64 tensors of shape ``(N,)``).

    Attributes:
        log_px: :math:`\log \frac1K \sum_k w_k`, the estimate of :math:`\log p(x_i)`.
        elbo: :math:`\frac1K \sum_k \log w_k`, the ELBO of the point estimated with the
            same :math:`K` samples (``log_px - elbo`` estimates :math:`KL(q \| p(z|x))`).
        stderr: delta-method standard error of ``log_px``,
            :math:`\sqrt{\widehat{\mathrm{var}}(w)/K} / \bar w` (NaN for :math:`K = 1`).
        ess: Kish effective sample size :math:`(\sum_k w_k)^2 / \sum_k w_k^2`, in
            :math:`[1, K]`.
        khat: PSIS Pareto :math:`\hat k` (< 0.5 good, > 0.7 unreliable; NaN with fewer
            than 21 samples).
        num_samples: :math:`K`, importance samples per data point.
        num_khat_samples: how many of them :math:`\hat k` was computed from.

    Reliability: a point's estimate is unreliable when its :math:`\hat k` exceeds
    :attr:`khat_threshold` (:math:`\min(1 - 1/\log_{10} S, 0.7)`, Vehtari et al. 2024):
    its weights are so heavy-tailed that :math:`\log \hat p(x_i)` is likely too low by
    an amount its ``stderr`` does not show. When more than :attr:`UNRELIABLE_SHARE` of
    the points are so, :attr:`reliable` is False and :attr:`warning` says what to do
    (``ppvae evaluate`` prints it); nothing is raised, since a short-trained guide is a
    legitimate thing to evaluate.

    Example:
        >>> import torch
        >>> khat = torch.tensor([0.2, 0.9, 1.1, 0.3], dtype=torch.float64)
        >>> r = ImportanceResult(*[torch.zeros(4)] * 4, khat, num_samples=1000,
        ...                      num_khat_samples=1000)
        >>> r.reliable, round(r.khat_share_above, 2)
        (False, 0.5)
        >>> r.warning[:61]
        'log p(x) is unreliable: 50.0% of the 4 points have a PSIS k-h'
    """

    #: The share of points with :math:`\hat k` above the threshold beyond which the
    #: estimate is flagged as unreliable.
    UNRELIABLE_SHARE: ClassVar[float] = 0.1

    log_px: torch.Tensor
    elbo: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    num_samples: int
    num_khat_samples: int

    @property
    def num_points(self) -> int:
        """Number of data points."""
        return int(self.log_px.shape[0])

    @property
    def mean(self) -> float:
        r"""Mean of :math:`\log \hat p(x_i)` over the data points (minus the test NLL)."""
        return float(self.log_px.mean())

    @property
    def sem(self) -> float:
        """Standard error of :attr:`mean` over the data points (NaN for one point)."""
        n = self.num_points
        if n < 2:
            return float("nan")
        return float(self.log_px.std(correction=1) / math.sqrt(n))

    @property
    def khat_threshold(self) -> float:
        r"""The :math:`\hat k` above which a point's estimate is unreliable, for the
        :attr:`num_khat_samples` it was computed from."""
        return khat_threshold(self.num_khat_samples)

    @property
    def khat_share_above(self) -> float | None:
        r"""The share of points whose :math:`\hat k` exceeds :attr:`khat_threshold`
        (among those with a finite :math:`\hat k`); None when none has one (fewer than
        21 samples)."""
        finite = self.khat[torch.isfinite(self.khat)]
        if not finite.numel():
            return None
        return float((finite > self.khat_threshold).double().mean())

    @property
    def reliable(self) -> bool | None:
        """False when more than :attr:`UNRELIABLE_SHARE` of the points have a
        :math:`\\hat k` above :attr:`khat_threshold`; None when :math:`\\hat k` is unknown."""
        share = self.khat_share_above
        return None if share is None else share <= self.UNRELIABLE_SHARE

    @property
    def warning(self) -> str:
        """What to make of an unreliable estimate and what to do; empty otherwise."""
        if self.reliable is not False:
            return ""
        return (
            f"log p(x) is unreliable: {self.khat_share_above:.1%} of the {self.num_points} points "
            f"have a PSIS k-hat above {self.khat_threshold:.2f} (more than "
            f"{self.UNRELIABLE_SHARE:.0%}), so their importance weights are heavy-tailed and the "
            "estimate is likely too low by more than its standard error; use more importance "
            "samples, or a guide closer to the posterior (train longer, an iwae objective, a "
            "flow guide)"
        )

    def to_inference_data(self):
        """The per-point values in the installed ArviZ's container: an
        :class:`arviz.InferenceData` under ArviZ < 1, an :class:`xarray.DataTree` (what
        ArviZ >= 1 uses in its place) under ArviZ >= 1.

        They are in one custom group, ``importance``: variables ``log_px``, ``elbo``,
        ``stderr``, ``ess`` and ``khat`` on dimension ``data``, with attributes
        ``num_samples``, ``num_khat_samples``, ``mean`` and ``sem``; ``.importance`` gives
        the group with either container. (They are estimates per point, not posterior
        draws, so they are not put in ArviZ's ``log_likelihood`` group.)

        Example:
            >>> import torch
            >>> r = ImportanceResult(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.ones(2),
            ...                      torch.zeros(2), num_samples=1, num_khat_samples=1)
            >>> r.to_inference_data().importance["log_px"].shape
            (2,)
        """
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # arviz's import banner
            import arviz
            import xarray

        data = {
            name: (("data",), getattr(self, name).detach().cpu().numpy())
            for name in ("log_px", "elbo", "stderr", "ess", "khat")
        }
        dataset = xarray.Dataset(
            data,
            coords={"data": list(range(self.num_points))},
            attrs={
                "num_samples": self.num_samples,
                "num_khat_samples": self.num_khat_samples,
                "mean": self.mean,
                "sem": self.sem,
            },
        )
        if int(arviz.__version__.split(".")[0]) >= 1:  # ArviZ 1: xarray's DataTree
            return xarray.DataTree.from_dict({"importance": dataset})
        return arviz.InferenceData(importance=dataset)

    def __repr__(self) -> str:
        return (
            f"ImportanceResult(num_points={self.num_points}, num_samples={self.num_samples}, "
            f"mean={self.mean:.4f}, sem={self.sem:.4f}"
            + ("" if self.reliable is not False else ", reliable=False")
            + ")"
        )


def _as_args(data) -> tuple:
    if isinstance(data, torch.Tensor):
        return (data,)
    if isinstance(data, (tuple, list)):
        return tuple(data)
    raise DataError(
        f"data must be a tensor or a tuple of tensors with the data points on dim 0, "
        f"got {type(data).__name__}"
    )


def _num_points(args: tuple) -> int:
    sizes = {a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.dim() > 0}
    if not sizes:
        raise DataError(
            f"data must hold at least one tensor with the data points on dim 0, "
            f"got shapes {shape_text(args)}"
        )
    if len(sizes) > 1:
        raise DataError(
            f"the data tensors disagree on the number of data points: shapes {shape_text(args)}"
        )
    (n,) = sizes
    if n == 0:
        raise DataError("data holds no data points (dim 0 has size 0)")
    return n


def _check_positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# --------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------


class _Accumulator:
    """Streaming log-sum-exp of w and w^2 per point, plus the first log weights kept."""

    def __init__(self, points: int, keep: int, device) -> None:
        dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        self.dtype = dtype
        self.max = torch.full((points,), -math.inf, dtype=dtype, device=device)
        self.sum1 = torch.zeros(points, dtype=dtype, device=device)
        self.sum2 = torch.zeros(points, dtype=dtype, device=device)
        self.sum_log = torch.zeros(points, dtype=dtype, device=device)
        self.kept = torch.empty(points, keep, dtype=dtype, device=device)
        self.num_kept = 0

    def update(self, log_w: torch.Tensor) -> None:
        """Add a chunk of log weights of shape (chunk, points)."""
        log_w = log_w.to(self.dtype)
        new_max = torch.maximum(self.max, log_w.max(0).values)
        shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
        rescale = torch.exp(self.max - shift)
        centred = log_w - shift
        self.sum1 = self.sum1 * rescale + torch.exp(centred).sum(0)
        self.sum2 = self.sum2 * rescale**2 + torch.exp(2 * centred).sum(0)
        self.max = new_max
        self.sum_log = self.sum_log + log_w.sum(0)
        room = self.kept.shape[1] - self.num_kept
        if room > 0:
            take = log_w[:room].T
            self.kept[:, self.num_kept : self.num_kept + take.shape[1]] = take
            self.num_kept += take.shape[1]

    def log_sum(self) -> torch.Tensor:
        return self.max + torch.log(self.sum1)

    def ess(self, num_samples: int) -> torch.Tensor:
        ess = torch.exp(2 * torch.log(self.sum1) - torch.log(self.sum2)).clamp(1.0, num_samples)
        return torch.where(self.sum1 > 0, ess, torch.zeros_like(ess))


def _device_of(batch: tuple) -> torch.device:
    return next((a.device for a in batch if isinstance(a, torch.Tensor)), torch.device("cpu"))


def _warn_about_guide(guide_trace) -> None:
    """Guide sites under which importance weights do not estimate p(x) as expected."""
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        fn = site["fn"]
        base = getattr(fn, "base_dist", fn)
        if isinstance(base, dist.Delta):
            warnings.warn(
                f"guide site {name!r} is a Delta (a point mass): importance weights then "
                f"estimate p(x, {name}) at that point, not log p(x)",
                PpvaeWarning,
                stacklevel=4,
            )
        elif fn.support.is_discrete:
            warnings.warn(
                f"guide site {name!r} is discrete and sampled, not summed out: the estimate "
                f"of log p(x) is valid only where q({name}|x) covers the posterior's support, "
                "and its error bars may be optimistic",
                PpvaeWarning,
                stacklevel=4,
            )


def _vectorized_pass(model, guide, batch, plate, num_samples, chunk_size, acc, layout, check):
    """Accumulate ``num_samples`` log weights drawn ``chunk_size`` at a time in a particle
    plate; returns the layout, or None when ``check`` finds (on the first chunk) that
    the programs do not broadcast over the particle dimension."""
    for c0 in range(0, num_samples, chunk_size):
        chunk = min(chunk_size, num_samples - c0)
        try:
            model_trace, guide_trace, layout = vectorized_traces(
                model, guide, batch, {}, num_particles=chunk, plate=plate,
                nesting=None if layout is None else layout.max_plate_nesting,
            )  # fmt: skip
            local, glob = weight_terms(
                model_trace, guide_trace, layout, plate, scaled_globals=False
            )
        except (RuntimeError, ValueError, IndexError, TypeError) as error:
            if not check:
                raise
            # it may be the particle dimension the programs cannot take: try one at a time
            one_particle_log_weights(model, guide, batch, {}, plate)  # raises when not
            _warn_loop(f"it fails with a particle dimension ({type(error).__name__}: {error})")
            return None
        log_w = (local + glob[:, None]).expand(chunk, acc.max.shape[0])
        if check and c0 == 0:
            _warn_about_guide(guide_trace)
            problem = broadcast_problem(
                model, guide, batch, {}, model_trace, guide_trace, layout, plate, log_w
            )
            if problem is not None:
                _warn_loop(problem)
                return None
        acc.update(log_w)
    return layout


def _warn_loop(problem: str) -> None:
    first = problem.strip().splitlines()[0] if problem.strip() else problem
    warnings.warn(
        "the model or guide does not broadcast over a leading particle dimension ("
        f"{first}); log p(x) is computed one sample at a time (slower; pass "
        "vectorize_particles=False to skip this check)",
        PpvaeWarning,
        stacklevel=4,
    )


def _looped_pass(model, guide, batch, plate, num_samples, chunk_size, acc) -> None:
    """Accumulate ``num_samples`` log weights, one draw (one run of the programs as
    written) at a time."""
    rows: list[torch.Tensor] = []
    for k in range(num_samples):
        log_w = one_particle_log_weights(model, guide, batch, {}, plate)
        if k == 0:
            with poutine.block():
                guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(*batch))
            _warn_about_guide(guide_trace)
        rows.append(log_w)
        if len(rows) == chunk_size or k == num_samples - 1:
            acc.update(torch.stack(rows))
            rows = []


def _progress(progress, n: int) -> Callable[[int | None], None]:
    """``report(points_done)`` after every batch (None: the end) for ``progress``."""
    if callable(progress):
        return lambda done: None if done is None else progress(done, n)
    if not progress:
        return lambda done: None
    import sys

    if sys.stdout.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="log p(x)", unit="point", mininterval=0.5)
        seen = [0]

        def update(done):
            if done is None:
                bar.close()
                return
            bar.update(done - seen[0])
            seen[0] = done

        return update
    return progress_lines(n, sys.stdout)


#: Seconds between two progress lines (none at all for a shorter evaluation).
LINE_INTERVAL = 5.0


def progress_lines(n: int, stream) -> Callable[[int | None], None]:
    """``report(points_done)`` writing ``log p(x): 256/500 points, 5.1 s`` to ``stream`` at
    most every :data:`LINE_INTERVAL` seconds, and the last line when any was written."""
    import time

    start = last = time.perf_counter()
    wrote = [False]

    def line(done):
        nonlocal last
        now = time.perf_counter()
        if done is None or (now - last < LINE_INTERVAL and done < n):
            return
        if done == n and not wrote[0] and now - start < LINE_INTERVAL:
            return  # a short evaluation: silent
        last = now
        wrote[0] = True
        print(f"log p(x): {done}/{n} points, {now - start:.1f} s", file=stream, flush=True)

    return line


def log_marginal_likelihood(
    model,
    guide,
    data,
    *,
    num_samples: int = 1000,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    plate: str = "data",
    device: str | torch.device | None = None,
    progress: bool | Callable[[int, int], None] = False,
    max_khat_samples: int = DEFAULT_MAX_KHAT_SAMPLES,
    vectorize_particles: bool = True,
) -> ImportanceResult:
    r"""Estimate :math:`\log p(x_i)` for every data point by importance sampling.

    .. math::

        \log \hat p(x_i) = \log \frac1K \sum_{k=1}^K
            \frac{p(x_i, z_{ik})}{q(z_{ik} | x_i)}, \quad z_{ik} \sim q(\cdot | x_i)

    (Burda et al. 2016). Runs under :func:`torch.no_grad` with model and guide in eval
    mode (their previous modes are restored).

    Args:
        model, guide: Pyro programs (callables, usually ``PyroModule``) taking the batch as
            positional arguments, with the data observed in the plate named ``plate``
            whose size is the batch size.
        data: a tensor, or a tuple of tensors passed as positional arguments (``None``
            entries are passed through), with the data points on dim 0.
        num_samples: :math:`K`, importance samples per data point.
        batch_size: data points per trace (default ``min(N, 128)``).
        chunk_size: samples drawn at once per trace (default: ``2**15 // batch_size``,
            at most :math:`K`). Memory grows with ``batch_size * chunk_size``.
        plate: name of the data plate.
        device: device the data batches are moved to (model and guide must be there).
        progress: True: a tqdm bar over batches on a terminal, and elsewhere (a pipe, a
            log file) a line ``log p(x): 256/500 points, 5.1 s`` every five seconds or so
            (none for a shorter evaluation); a callable ``f(points_done, points)`` is
            called after every batch instead.
        max_khat_samples: log weights kept per point for the PSIS :math:`\hat k` (all when
            :math:`K` is smaller); memory ``batch_size * min(K, max_khat_samples)``.
        vectorize_particles: draw ``chunk_size`` samples at once in a particle plate left
            of the programs' plates. On the first batch the vectorized log weights of two
            samples are checked against the same draws replayed one at a time; a program
            that does not broadcast over that dimension (a mask, an index ``x[:, t]``, a
            batch shape that drops it) is then run one sample at a time, with a
            :class:`~ppvae.errors.PpvaeWarning`. False: always one at a time.

    Warns:
        PpvaeWarning: when a guide site is a ``Delta`` (a point mass: the weights then
        estimate :math:`p(x, z^*)`, not :math:`p(x)`) or a sampled discrete site.

    Returns:
        An :class:`ImportanceResult` of per-point CPU float64 tensors.

    Raises:
        DataError: when the data is empty or does not fit the model or guide.
        SpecError: when no site is inside the data plate.

    Example:
        >>> import torch, pyro, pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def prior_guide(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> _ = torch.manual_seed(0)
        >>> r = log_marginal_likelihood(model, prior_guide, torch.zeros(4), num_samples=2000)
        >>> bool(((r.log_px + 1.2655).abs() < 4 * r.stderr).all())
        True
    """
    _check_positive("num_samples", num_samples)
    _check_positive("batch_size", batch_size, allow_none=True)
    _check_positive("chunk_size", chunk_size, allow_none=True)
    _check_positive("max_khat_samples", max_khat_samples)
    args = _as_args(data)
    n = _num_points(args)
    batch_size = min(n, batch_size or _DEFAULT_BATCH_SIZE)
    if chunk_size is None:
        chunk_size = max(1, _DEFAULT_TRACE_POINTS // batch_size)
    chunk_size = min(chunk_size, num_samples)
    keep = min(num_samples, max_khat_samples)

    report = _progress(progress, n)
    outputs: dict[str, list[torch.Tensor]] = {"log_px": [], "elbo": [], "ess": [], "khat": []}
    layout = None
    vectorized: bool | None = None if vectorize_particles else False  # None: not checked yet
    starts = range(0, n, batch_size)
    with torch.no_grad(), eval_mode(model, guide), isolated_param_store(inherit=True):
        for start in starts:
            batch = tuple(
                a[start : start + batch_size].to(device)
                if isinstance(a, torch.Tensor) and a.dim() > 0
                else a
                for a in args
            )
            points = min(batch_size, n - start)
            with data_errors(batch):
                acc = _Accumulator(points, keep, _device_of(batch))
                if vectorized is not False:
                    layout = _vectorized_pass(
                        model, guide, batch, plate, num_samples, chunk_size, acc, layout,
                        check=vectorized is None,
                    )  # fmt: skip
                    if layout is None:  # the programs do not broadcast over particles
                        vectorized = False
                        acc = _Accumulator(points, keep, acc.max.device)
                    else:
                        vectorized = True
                if vectorized is False:
                    _looped_pass(model, guide, batch, plate, num_samples, chunk_size, acc)
            outputs["log_px"].append((acc.log_sum() - math.log(num_samples)).cpu().double())
            outputs["elbo"].append((acc.sum_log / num_samples).cpu().double())
            outputs["ess"].append(acc.ess(num_samples).cpu().double())
            outputs["khat"].append(psis_khat(acc.kept[:, : acc.num_kept].cpu()))
            report(min(start + batch_size, n))
    report(None)
    ess = torch.cat(outputs["ess"])
    return ImportanceResult(
        log_px=torch.cat(outputs["log_px"]),
        elbo=torch.cat(outputs["elbo"]),
        stderr=_stderr_from_ess(ess, num_samples),
        ess=ess,
        khat=torch.cat(outputs["khat"]).double(),
        num_samples=num_samples,
        num_khat_samples=keep,
    )
