r"""Latent diagnostics: is the latent space used, and what do its dimensions do?

For a model whose guide has an amortized posterior :math:`q(z | x)` (the
:class:`~ppvae.models.abilities.AmortizedPosterior` ability) over a continuous
:math:`z \in \mathbb{R}^D`:

* :func:`kl_per_dim` -- :math:`KL(q(z_u | x) \| p(z_u))` per latent dimension :math:`u`,
  averaged over the data points. In closed form when the guide and the prior are
  diagonal Gaussians; a Monte Carlo estimate :math:`E_q[\log q(z_u|x) - \log p(z_u)]`
  when both factorize over the dimensions otherwise; only the total
  :math:`KL(q(z|x) \| p(z))` (Monte Carlo) when either does not factorize (full-covariance
  guides, flows, mixture and VampPrior priors), since a per-dimension split of it is
  then not defined. Which one was computed is said in ``kl_method``.
* :func:`active_units` -- Burda, Grosse & Salakhutdinov (2016)'s activity
  :math:`A_u = \mathrm{Cov}_x(E_{q(z|x)}[z_u])`; unit :math:`u` is active when
  :math:`A_u >` :data:`ACTIVE_THRESHOLD` (0.01).
* :func:`mutual_information` -- :math:`I(x; z)` under the aggregate posterior
  :math:`q(z) = \frac1N \sum_n q(z | x_n)` (Hoffman & Johnson 2016, "ELBO surgery"):
  :math:`\hat I = \frac1N \sum_i [\log q(z_i|x_i) - \log \frac1N \sum_n q(z_i|x_n)]`,
  :math:`z_i \sim q(z|x_i)`; it lies in :math:`[0, \log N]`.
* :func:`elbo_split` -- the ELBO as reconstruction minus KL:
  :math:`E_q[\log p(x|z)] - E_q[\log q(z|x) - \log p(z)]`, per data point (Monte Carlo,
  over every observed and latent site of the programs).
* :func:`traversals` and :func:`interpolations` -- decoder means along one latent
  dimension (the others at the prior mean), and along straight lines between the
  posterior means of test points (models with the
  :class:`~ppvae.models.abilities.Decodes` ability whose decoder takes :math:`z`).

:class:`LatentDiagnostics` is the :func:`~ppvae.fit` callback that adds
:func:`latent_diagnostics` of the validation data to every epoch's record
(``metrics.jsonl``); ``ppvae train`` adds it for guides with an amortized posterior.

Example:
    >>> import torch
    >>> from ppvae.models.vae import build_vae
    >>> model, guide = build_vae(data_dim=6, latent_dim=3, hidden=(8,), likelihood="gaussian")
    >>> d = latent_diagnostics(model, guide, (torch.randn(50, 6),))
    >>> d["latent_dim"], d["kl_method"], len(d["kl_per_dim"])
    (3, 'closed_form', 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ppvae.distributions import ReparamDiagonalNormal
from ppvae.infer.callbacks import Callback
from ppvae.infer.programs import eval_mode
from ppvae.infer.rng import seeded
from ppvae.models.abilities import AmortizedPosterior, Decodes

if TYPE_CHECKING:
    from ppvae.infer.train import TrainState

__all__ = [
    "ACTIVE_THRESHOLD",
    "LatentDiagnostics",
    "latent_diagnostics",
    "kl_per_dim",
    "active_units",
    "mutual_information",
    "elbo_split",
    "posterior_means",
    "traversals",
    "interpolations",
    "traversal_dims",
    "decodes_latent",
]

#: Burda et al. (2016): a unit is active when :math:`\mathrm{Cov}_x(E_q[z_u|x]) >` this.
ACTIVE_THRESHOLD = 0.01
_MC_MEAN_DRAWS = 32


def _inputs(data) -> tuple[torch.Tensor, ...]:
    return tuple(data) if isinstance(data, (tuple, list)) else (data,)


def _chunks(inputs: Sequence[torch.Tensor], size: int):
    n = inputs[0].shape[0]
    for i in range(0, n, size):
        yield tuple(t[i : i + size] for t in inputs)


def _diag_normal(d) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(loc, scale)`` of a diagonal Gaussian over the last dimension, else None."""
    if isinstance(d, ReparamDiagonalNormal):
        return d.loc, d.scale
    if (
        isinstance(d, dist.Independent)
        and d.reinterpreted_batch_ndims == 1
        and type(d.base_dist) in (dist.Normal, torch.distributions.Normal)
    ):
        base = d.base_dist
        shape = d.batch_shape + d.event_shape
        return base.loc.expand(shape), base.scale.expand(shape)
    return None


def _per_dim_log_prob(d, z: torch.Tensor) -> torch.Tensor | None:
    """:math:`\\log d(z_u)` per dimension ``(..., D)`` when ``d`` factorizes, else None."""
    normal = _diag_normal(d)
    if normal is not None:
        return dist.Normal(*normal).log_prob(z)
    if isinstance(d, dist.Independent) and d.reinterpreted_batch_ndims == 1:
        return d.base_dist.log_prob(z)
    return None


def _top_site(model, guide, inputs) -> tuple[str, Any, Any, torch.Tensor]:
    """The guide's top-level latent site: its name, :math:`q(z|x)`, the model's
    :math:`p(z)` at that site and the guide's draw, for ``inputs`` (batch ``N``)."""
    q = guide.posterior(*inputs)
    n = inputs[0].shape[0]
    shape = torch.Size((n, *q.event_shape))
    guide_trace = poutine.trace(guide).get_trace(*inputs)
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if site["value"].shape == shape:
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*inputs)
            if name not in model_trace.nodes:
                break
            return name, site["fn"], model_trace.nodes[name]["fn"], site["value"]
    raise ValueError(
        "the guide has no sample site of shape [N, latent] matching its posterior(x): "
        "no latent diagnostics"
    )


def posterior_means(q, draws: int = _MC_MEAN_DRAWS) -> tuple[torch.Tensor, str]:
    """:math:`E_q[z]` of a batch of posteriors, and how it was computed (``"exact"``, or a
    Monte Carlo mean of ``draws`` draws where the distribution has no ``mean``)."""
    try:
        return q.mean, "exact"
    except NotImplementedError:
        return q.sample((draws,)).mean(0), f"monte_carlo ({draws} draws)"


def kl_per_dim(
    q, p, z: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, torch.Tensor, str]:
    r""":math:`KL(q(z_u|x) \| p(z_u))` per point and dimension ``(N, D)`` (None where it is
    not defined), the total :math:`KL(q(z|x) \| p(z))` per point ``(N,)`` and the method.

    ``z``: one draw of ``q`` per point, for the Monte Carlo estimates (drawn here if None).

    Example:
        >>> import torch, pyro.distributions as dist
        >>> q = dist.Normal(torch.tensor([[1.0, 0.0]]), torch.ones(1, 2)).to_event(1)
        >>> p = dist.Normal(torch.zeros(1, 2), torch.ones(1, 2)).to_event(1)
        >>> kl, total, how = kl_per_dim(q, p)
        >>> kl, total, how
        (tensor([[0.5000, 0.0000]]), tensor([0.5000]), 'closed_form')
    """
    nq, np_ = _diag_normal(q), _diag_normal(p)
    if nq is not None and np_ is not None:
        (mq, sq), (mp, sp) = nq, np_
        ratio = (sq / sp) ** 2
        kl = 0.5 * (ratio + ((mq - mp) / sp) ** 2 - 1.0 - ratio.log())
        return kl, kl.sum(-1), "closed_form"
    if z is None:
        z = q.sample()
    lq, lp = _per_dim_log_prob(q, z), _per_dim_log_prob(p, z)
    if lq is not None and lp is not None:
        kl = lq - lp
        return kl, kl.sum(-1), "monte_carlo"
    return None, q.log_prob(z) - p.log_prob(z), "monte_carlo_total"


def active_units(
    means: torch.Tensor, threshold: float = ACTIVE_THRESHOLD
) -> tuple[int, torch.Tensor]:
    r"""The number of active units and the activity :math:`A_u =
    \mathrm{Cov}_x(E_q[z_u|x])` per dimension, from posterior means ``(N, D)``.

    Example:
        >>> import torch
        >>> means = torch.stack([torch.linspace(-1, 1, 11), torch.zeros(11)], 1)
        >>> active_units(means)[0]
        1
    """
    activity = means.double().var(0, unbiased=True) if means.shape[0] > 1 else means[0] * 0
    return int((activity > threshold).sum()), activity


def latent_diagnostics(
    model,
    guide,
    data,
    *,
    batch_size: int = 1000,
    threshold: float = ACTIVE_THRESHOLD,
) -> dict[str, Any]:
    r"""KL per dimension, active units and activity of ``data`` (a tensor or the tuple of
    the programs' inputs), with the guide's top-level latent.

    Returns a JSON-ready dict: ``latent_dim``, ``latent_site``, ``points``,
    ``kl_per_dim`` (mean over points, a list; None when the guide or prior does not
    factorize), ``kl`` (the total, mean over points), ``kl_method`` (``closed_form``,
    ``monte_carlo``: one draw per point, or ``monte_carlo_total``), ``active_units``,
    ``activity`` (a list) and ``active_threshold``, ``posterior_mean`` (``exact`` or
    Monte Carlo). Uses the random streams as they are: wrap it in a seeded block.
    """
    inputs = _inputs(data)
    if not isinstance(guide, AmortizedPosterior):
        raise TypeError("latent diagnostics need a guide with posterior(x) (AmortizedPosterior)")
    kls, totals, means = [], [], []
    method = how_mean = site = None
    with torch.no_grad():
        for chunk in _chunks(inputs, batch_size):
            site, q, p, z = _top_site(model, guide, chunk)
            kl, total, method = kl_per_dim(q, p, z)
            if kl is not None:
                kls.append(kl.double().cpu())
            totals.append(total.double().cpu())
            mean, how_mean = posterior_means(q)
            means.append(mean.double().cpu())
    means_all = torch.cat(means)
    count, activity = active_units(means_all, threshold)
    kl_dims = torch.cat(kls).mean(0).tolist() if kls and method != "monte_carlo_total" else None
    return {
        "latent_site": site,
        "latent_dim": int(means_all.shape[-1]),
        "points": int(means_all.shape[0]),
        "kl_per_dim": kl_dims,
        "kl": float(torch.cat(totals).mean()),
        "kl_method": method,
        "active_units": count,
        "activity": activity.tolist(),
        "active_threshold": threshold,
        "posterior_mean": how_mean,
    }


def mutual_information(
    guide, data, *, max_points: int = 2000, chunk_size: int = 200
) -> tuple[float, int]:
    r"""Hoffman & Johnson (2016)'s estimate of :math:`I(x; z)` under the aggregate
    posterior of the first ``max_points`` points of ``data``, and the number of points
    :math:`N` used (the estimate is at most :math:`\log N`).

    The guide's ``log_prob`` must be right at any :math:`z` (not only at its own draws:
    planar and radial flows are not). Uses the random streams as they are.

    Example:
        >>> import torch, pyro.distributions as dist
        >>> class Exact:  # q(z|x) = N(x, 0.1^2): z nearly determines x
        ...     def posterior(self, x):
        ...         return dist.Normal(x, 0.1).to_event(1)
        >>> mi, n = mutual_information(Exact(), torch.randn(400, 1))
        >>> 1.5 < mi <= math.log(n)
        True
    """
    inputs = tuple(t[:max_points] for t in _inputs(data))
    n = inputs[0].shape[0]
    with torch.no_grad():
        q = guide.posterior(*inputs)
        z = q.sample()  # (N, D)
        own = q.log_prob(z)
        terms = []
        for i in range(0, n, chunk_size):
            # (c, N, D) against the batch (N,): expanded, not broadcast, because conditional
            # flows expand their context (N, H) to the value's batch shape
            zi = z[i : i + chunk_size].unsqueeze(1).expand(-1, n, -1)
            cross = q.log_prob(zi)  # (c, N)
            if cross.shape != (zi.shape[0], n):
                raise ValueError(
                    f"the guide's log_prob does not broadcast over points (shape {tuple(cross.shape)})"
                )
            terms.append(own[i : i + chunk_size] - (torch.logsumexp(cross, 1) - math.log(n)))
    return float(torch.cat(terms).double().mean()), n


def elbo_split(model, guide, data, *, batch_size: int = 1000, draws: int = 1) -> dict[str, float]:
    r"""The ELBO per data point as ``reconstruction`` :math:`E_q[\log p(x|z)]` (every
    observed site) minus ``kl`` :math:`E_q[\log q(z|x) - \log p(z)]` (every latent site),
    Monte Carlo with ``draws`` draws per point; ``elbo`` is their difference."""
    inputs = _inputs(data)
    n = inputs[0].shape[0]
    recon = kl = 0.0
    with torch.no_grad():
        for _ in range(draws):
            for chunk in _chunks(inputs, batch_size):
                gt = poutine.trace(guide).get_trace(*chunk)
                mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace(*chunk)
                gt.compute_log_prob()
                mt.compute_log_prob()
                for site in mt.nodes.values():
                    if site["type"] != "sample" or site_is_subsample(site):
                        continue
                    value = float(site["log_prob_sum"])
                    if site["is_observed"]:
                        recon += value
                    else:
                        kl -= value
                for site in gt.nodes.values():
                    latent = site["type"] == "sample" and not site["is_observed"]
                    if latent and not site_is_subsample(site):
                        kl += float(site["log_prob_sum"])
    recon, kl = recon / (n * draws), kl / (n * draws)
    return {"reconstruction": recon, "kl": kl, "elbo": recon - kl, "draws": draws}


def _prior_moments(
    model, guide, x_like: tuple[torch.Tensor, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation per dimension of the model's prior at the guide's top
    latent site (Monte Carlo where the prior has no closed-form moments)."""
    _, _, p, _ = _top_site(model, guide, x_like)
    try:
        mean, std = p.mean, p.stddev
    except NotImplementedError:
        draws = p.sample((256,))
        mean, std = draws.mean(0), draws.std(0)
    return mean[0], std[0]


def _decode(model, z: torch.Tensor) -> torch.Tensor:
    if not isinstance(model, Decodes):
        raise TypeError("the model has no decoder and likelihood (Decodes): no decoded figures")
    return model.likelihood.mean(model.decoder(z))


def traversals(
    model,
    guide,
    data,
    *,
    dims: Sequence[int],
    steps: int = 9,
    span: float = 3.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Decoder means :math:`E[x|z]` with :math:`z_u` = prior mean + :math:`t` prior
    standard deviations, :math:`t \in [-\mathrm{span}, \mathrm{span}]` in ``steps``
    steps, and every other dimension at the prior mean: one row per dimension in
    ``dims``. Returns the images ``(len(dims) * steps, data_dim)`` and the offsets
    :math:`t`. ``data``: a few points of the programs' inputs (to find the prior)."""
    inputs = tuple(t[:2] for t in _inputs(data))
    with torch.no_grad():
        mean, std = _prior_moments(model, guide, inputs)
        offsets = torch.linspace(-span, span, steps, device=mean.device)
        rows = []
        for u in dims:
            z = mean.expand(steps, -1).clone()
            z[:, u] = mean[u] + offsets * std[u]
            rows.append(z)
        images = _decode(model, torch.cat(rows))
    return images, offsets.cpu()


def interpolations(
    model, guide, data, *, pairs: int = 4, steps: int = 8, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Rows of ``[x_a, decoded z(t_1) ... z(t_steps), x_b]``: the decoder means along the
    straight line :math:`z(t) = (1 - t) \mu_a + t \mu_b`, :math:`t \in [0, 1]`, between
    the posterior means of ``pairs`` pairs of points of ``data`` (drawn with
    ``generator``), beside the two data points themselves. Shape ``(pairs * (steps + 2),
    data_dim)``."""
    inputs = _inputs(data)
    n = inputs[0].shape[0]
    idx = torch.randperm(n, generator=generator)[: 2 * pairs]
    if idx.numel() < 2:
        raise ValueError("interpolations need at least two data points")
    chosen = tuple(t[idx.to(t.device)] for t in inputs)
    with torch.no_grad():
        mu, _ = posterior_means(guide.posterior(*chosen))
        t = torch.linspace(0.0, 1.0, steps, device=mu.device).unsqueeze(1)
        rows = []
        x = chosen[0]
        for a in range(0, mu.shape[0] - 1, 2):
            line = (1 - t) * mu[a] + t * mu[a + 1]
            decoded = _decode(model, line)
            rows.append(
                torch.cat([x[a : a + 1].to(decoded), decoded, x[a + 1 : a + 2].to(decoded)])
            )
    return torch.cat(rows)


def decodes_latent(model, guide, data) -> bool:
    """Whether the model's decoder maps the guide's :math:`z` alone to data (a model with
    :class:`~ppvae.models.abilities.Decodes` whose decoder takes no context besides
    :math:`z`), tried on one point of ``data``."""
    if not isinstance(model, Decodes) or not isinstance(guide, AmortizedPosterior):
        return False
    inputs = tuple(t[:1] for t in _inputs(data))
    try:
        with torch.no_grad():
            mu, _ = posterior_means(guide.posterior(*inputs))
            out = _decode(model, mu)
    except (RuntimeError, ValueError, TypeError):
        return False
    return out.shape[0] == 1 and out.shape[-1] == inputs[0].shape[-1]


def traversal_dims(model, guide, data, *, limit: int = 10) -> list[int]:
    """The ``limit`` latent dimensions with the largest KL per dimension (the activity
    where the KL per dimension is not defined) on ``data``, in increasing order."""
    diag = latent_diagnostics(model, guide, data)
    score = diag["kl_per_dim"] if diag["kl_per_dim"] is not None else diag["activity"]
    order = sorted(range(len(score)), key=lambda u: -score[u])[:limit]
    return sorted(order)


class LatentDiagnostics(Callback):
    """Add :func:`latent_diagnostics` of ``data`` (the validation inputs) to every
    epoch's record, on fixed random draws (``seed``) and in eval mode, leaving the
    training's random streams and the modules' modes as they were.

    :func:`~ppvae.fit` runs the callbacks it is given before its metrics log, so the keys
    are written to ``metrics.jsonl`` with the epoch's record. The keys: ``kl_per_dim``,
    ``kl``, ``kl_method``, ``active_units``, ``activity``, ``latent_dim`` (see
    :func:`latent_diagnostics`), all under ``"latent"``, and ``active_units`` at the top.
    """

    def __init__(
        self,
        model,
        guide,
        data,
        *,
        seed: int = 0,
        batch_size: int = 1000,
    ) -> None:
        self.model, self.guide = model, guide
        self.data = _inputs(data)
        self.seed = seed
        self.batch_size = batch_size

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if not state.is_main_process:
            return
        device = _device_of(self.model, self.guide)
        data = tuple(t.to(device) for t in self.data)
        rng = pyro.util.get_rng_state()
        try:
            with (
                seeded(self.seed, device),
                eval_mode(self.model, self.guide),
                state.scope(),
            ):
                diag = latent_diagnostics(self.model, self.guide, data, batch_size=self.batch_size)
        finally:
            pyro.util.set_rng_state(rng)
        diag = {k: v for k, v in diag.items() if k != "points"}
        record["active_units"] = diag["active_units"]
        record["latent"] = diag  # fit runs this before its metrics log: written with it


def _device_of(*modules) -> torch.device:
    for module in modules:
        if isinstance(module, torch.nn.Module):
            for param in module.parameters():
                return param.device
    return torch.device("cpu")
