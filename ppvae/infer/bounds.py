r"""Importance-weighted and Rényi bounds as differentiable losses, written on Pyro traces.

With :math:`K` particles :math:`z_{ik} \sim q(z | x_i)` per data point and log weights
:math:`\log w_{ik} = \log p(x_i, z_{ik}) - \log q(z_{ik} | x_i)`, the Rényi bound of order
:math:`\alpha \ge 0` (Li & Turner 2016, *Rényi Divergence Variational Inference*, NeurIPS)
is, per data point,

.. math::

    \mathcal L_\alpha(x_i) = \frac{1}{1-\alpha} \log \frac1K \sum_{k=1}^K w_{ik}^{1-\alpha},

which is the importance-weighted bound of Burda, Grosse & Salakhutdinov (2016,
*Importance Weighted Autoencoders*, ICLR) for :math:`\alpha = 0`,
:math:`\log \frac1K \sum_k w_{ik}`, and the ELBO :math:`\frac1K \sum_k \log w_{ik}` in the
limit :math:`\alpha = 1` (computed exactly as that mean). The loss is
:math:`-\sum_i s\,\mathcal L_\alpha(x_i)`, with :math:`s` the scale of the data-plate sites
(e.g. :math:`N/B` on minibatches): the per-point bounds are computed from the *unscaled*
per-point log-densities and then multiplied by :math:`s`.

**Global latents** (sites outside the data plate) are drawn once per call and shared by
the :math:`K` particles; they enter as in the ELBO, :math:`\log p(\theta) - \log q(\theta)`
with their own scale, so that the loss is the negative of a lower bound on
:math:`\log p(x_{1:N})`: :math:`E_{q(\theta)}[\log \frac{p(\theta)}{q(\theta)} + \sum_i
\mathcal L_0(x_i | \theta)]`. Latent sites of the model that the guide does not sample are
drawn from their prior and drop out of the weights.

Gradient estimators (every guide site must be reparameterized), with normalized weights
:math:`v_k = w_k^{1-\alpha} / \sum_j w_j^{1-\alpha}` and the path derivative
:math:`\nabla^{\mathrm{path}}_\phi \log w_k = \frac{\partial \log w_k}{\partial z_k}
\frac{d z_k}{d \phi}` (distribution parameters of :math:`q` held fixed):

* ``"reparam"``: the gradient of the bound itself, :math:`\sum_k v_k \nabla \log w_k`.
* ``"stl"``, "sticking the landing" (Roeder, Wu & Duvenaud 2017, NeurIPS): the score term
  :math:`-\partial_\phi \log q_\phi(z)` is dropped, i.e. :math:`\log q` is evaluated with
  stopped distribution parameters: :math:`\sum_k v_k \nabla^{\mathrm{path}} \log w_k`.
  Zero variance for the guide when :math:`q` is the exact posterior. (Biased for
  :math:`\alpha < 1`, as Tucker et al. show for IWAE.)
* ``"dreg"``, doubly reparameterized (Tucker, Lawson, Gu & Maddison 2018, *Doubly
  Reparameterized Gradient Estimators for Monte Carlo Objectives*, ICLR 2019): the score
  term is rewritten by the reparameterization identity
  :math:`E_q[f(z)\,\partial_\phi \log q_\phi(z)] = E_\epsilon[\partial_z f\, dz/d\phi]`,
  giving the unbiased guide gradient :math:`\sum_k (\alpha v_k + (1-\alpha) v_k^2)
  \nabla^{\mathrm{path}}_\phi \log w_k` (:math:`\sum_k v_k^2 \nabla^{\mathrm{path}}` for
  IWAE, the STL gradient for :math:`\alpha = 1`); the model gradient stays
  :math:`\sum_k v_k \nabla_\theta \log p(x, z_k)`.

For ``stl`` and ``dreg`` the loss value is still the negative bound (the surrogate enters
as ``value + (surrogate - surrogate.detach())``). They apply to the local (data-plate)
guide sites; global guide sites use the plain reparameterized gradient. ``stl`` costs one
more guide run, ``dreg`` one more guide and one more model run.

``pyro_renyi`` wraps Pyro's own :class:`pyro.infer.RenyiELBO`, which has no
differentiable loss: use its :meth:`PyroRenyi.loss_and_grads`.

Example:
    >>> import torch, pyro, pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):  # the exact posterior: the bound is log p(x) for any K
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
    >>> from ppvae.infer.objectives import build_objective
    >>> loss = build_objective("iwae")(model, guide, torch.zeros(3))
    >>> round(float(loss), 4)  # -3 log N(0; 0, 2)
    3.7965
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pyro.infer
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites

from ppvae.errors import SpecError
from ppvae.infer.objectives import (
    OBJECTIVES,
    Objective,
    ObjectiveConfig,
    ObjectiveContext,
    check_num_particles,
)
from ppvae.infer.traces import (
    ParticlePlate,
    broadcast_problem,
    eval_mode,
    in_plate,
    one_particle_log_weights,
    pad,
    reduce_local,
    scored_sites,
    site_log_prob,
    site_weights,
    vectorized_traces,
    weight_terms,
)

__all__ = [
    "ESTIMATORS",
    "RenyiBound",
    "PyroRenyi",
    "IwaeConfig",
    "RenyiConfig",
    "PyroRenyiConfig",
]

#: Gradient estimators of :class:`RenyiBound`.
ESTIMATORS = ("reparam", "stl", "dreg")


def _check_estimator(estimator) -> None:
    if estimator not in ESTIMATORS:
        raise SpecError(
            f"objective.estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}"
        )


def _check_alpha(alpha, *, allow_one: bool = True) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise SpecError(f"objective.alpha must be a finite number, got {alpha!r}")
    if alpha < 0:
        raise SpecError(f"objective.alpha must be >= 0 (a lower bound), got {alpha!r}")
    if not allow_one and alpha == 1:
        raise SpecError(
            "objective.alpha must not be 1 for pyro_renyi (Pyro's RenyiELBO); use kind "
            "'elbo' or 'renyi' with alpha = 1"
        )


def _local_sum(trace, names: set[str], layout, plate: str, sign: float = 1.0):
    """Unscaled per-point log-density of the data-plate sites ``names`` of ``trace``."""
    total = 0.0
    for name in names:
        site = trace.nodes[name]
        lp = pad(site_log_prob(site, scaled=False), layout.rank, name)
        total = total + sign * reduce_local(lp, layout)
    return total


class RenyiBound(Objective):
    r"""The Rényi bound :math:`\mathcal L_\alpha` (IWAE for :math:`\alpha = 0`, the ELBO
    for :math:`\alpha = 1`) as a loss: :math:`-\sum_i s\,\mathcal L_\alpha(x_i)` minus
    the global terms.

    Args:
        alpha: the order :math:`\alpha \ge 0`.
        num_particles: :math:`K`, drawn vectorized in a particle plate.
        estimator: ``"reparam"``, ``"stl"`` or ``"dreg"`` (see the module docstring).
        plate: name of the data plate (default: the context's, see
            :meth:`~ppvae.infer.objectives.Objective.with_context`).

    Example:
        >>> import torch, pyro, pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> loc = torch.zeros((), requires_grad=True)
        >>> def guide(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(loc, 1.0))
        >>> loss = RenyiBound(alpha=0.0, num_particles=10, estimator="dreg")(
        ...     model, guide, torch.ones(4))
        >>> loss.backward()
        >>> bool(torch.isfinite(loc.grad))
        True
    """

    def __init__(
        self,
        alpha: float = 0.0,
        num_particles: int = 5,
        estimator: str = "reparam",
        *,
        plate: str | None = None,
    ) -> None:
        _check_alpha(alpha)
        check_num_particles(num_particles)
        _check_estimator(estimator)
        self.alpha = float(alpha)
        self.num_particles = num_particles
        self.estimator = estimator
        if plate is not None:
            self.context = ObjectiveContext(plate=plate)
        self._nesting: int | None = None

    def __repr__(self) -> str:
        return (
            f"RenyiBound(alpha={self.alpha}, num_particles={self.num_particles}, "
            f"estimator={self.estimator!r})"
        )

    def _bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """Per-point bound from log weights of shape (K, B)."""
        if self.alpha == 1.0:
            return log_w.mean(0)
        beta = 1.0 - self.alpha
        return (torch.logsumexp(beta * log_w, 0) - math.log(log_w.shape[0])) / beta

    def _normalized(self, log_w: torch.Tensor) -> torch.Tensor:
        """The normalized weights v_k (detached), shape (K, B)."""
        log_w = log_w.detach()
        if self.alpha == 1.0:
            return torch.full_like(log_w, 1.0 / log_w.shape[0])
        return torch.softmax((1.0 - self.alpha) * log_w, 0)

    def loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        k = self.num_particles
        try:
            model_trace, guide_trace, layout = vectorized_traces(
                model,
                guide,
                args,
                kwargs,
                num_particles=k,
                plate=self.context.plate,
                nesting=self._nesting,
                only_within=self.context.plate,
            )
        except (RuntimeError, ValueError, IndexError, TypeError) as error:
            if self._nesting is not None:
                raise
            # the first call: is it the particle dimension the programs cannot take?
            one_particle_log_weights(model, guide, args, kwargs, self.context.plate)
            self._refuse(f"it fails with a particle dimension ({type(error).__name__}: {error})")
        first = self._nesting is None
        self._nesting = layout.max_plate_nesting
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample" and not site["is_observed"] and not site["fn"].has_rsample:
                raise SpecError(
                    f"guide site {name!r} ({type(site['fn']).__name__}) is not "
                    f"reparameterizable; the {self._kind()} objective needs rsample at every "
                    f"guide site (use an ELBO objective for discrete latents)"
                )
        # each data-plate site's weight beyond minibatching: a KL weight on the latent
        # sites, a user's poutine.scale; they weight the terms inside the importance weights
        scale, weights = site_weights(model_trace, guide_trace, layout, self.context.plate)
        if weights and self.estimator != "reparam":
            raise SpecError(
                f"weighted sites in the data plate ({', '.join(sorted(weights))}: a KL weight "
                f"from train.beta or KL warm-up, or a poutine.scale) need the {self._kind()} "
                f"objective's estimator = 'reparam', not {self.estimator!r}"
            )
        local, glob = weight_terms(
            model_trace,
            guide_trace,
            layout,
            self.context.plate,
            scaled_globals=True,
            site_weights=weights,
        )
        points = local.shape[1]
        log_w = local.expand(k, points)
        if first:  # vectorized particles are checked, not assumed
            problem = self._broadcast_problem(model, guide, args, kwargs, layout)
            if problem is not None:
                self._refuse(problem)
        glob = glob.sum()
        value = (scale * self._bound(log_w)).sum() + glob
        if self.estimator == "reparam":
            return -value
        surrogate = (
            scale
            * self._surrogate(model, guide, args, kwargs, model_trace, guide_trace, layout, log_w)
        ).sum()
        surrogate = surrogate + glob
        return -(value.detach() + surrogate - surrogate.detach())

    def _kind(self) -> str:
        return "iwae" if self.alpha == 0 else "renyi"

    def with_context(self, context: ObjectiveContext) -> Objective:
        """A copy for other programs: their plate nesting is found and their broadcasting
        checked anew."""
        other = super().with_context(context)
        other._nesting = None
        return other

    def _broadcast_problem(self, model, guide, args, kwargs, layout) -> str | None:
        """A vectorized run of two particles in eval mode (dropout would draw new masks in
        the replay), against the same draws one particle at a time; the random streams
        are left as they were."""
        plate = self.context.plate
        cuda = [a.device for a in args if isinstance(a, torch.Tensor) and a.is_cuda][:1]
        with torch.random.fork_rng(devices=cuda), torch.no_grad(), eval_mode(model, guide):
            model_trace, guide_trace, layout = vectorized_traces(
                model, guide, args, kwargs, num_particles=2, plate=plate,
                nesting=layout.max_plate_nesting, only_within=plate,
            )  # fmt: skip
            local, glob = weight_terms(
                model_trace, guide_trace, layout, plate, scaled_globals=False
            )
            log_w = (local + glob[:, None]).expand(2, local.shape[1])
            return broadcast_problem(
                model, guide, args, kwargs, model_trace, guide_trace, layout, plate, log_w
            )

    def _refuse(self, problem: str) -> None:
        first = problem.strip().splitlines()[0] if problem.strip() else problem
        raise SpecError(
            f"the {self._kind()} objective draws its {self.num_particles} particles in a plate "
            f"left of the programs' plates, and the model or guide does not broadcast over "
            f"it ({first}); index from the right (x[..., t]) and let distributions broadcast, "
            "or train with elbo"
        )

    def _surrogate(self, model, guide, args, kwargs, model_trace, guide_trace, layout, log_w):
        """Per-point surrogate (B,) whose gradient is the stl / dreg estimate."""
        plate = self.context.plate
        k = log_w.shape[0]
        local_guide = {
            name
            for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and in_plate(site, plate)
        }
        # values with the local latents detached, the global ones live
        values: dict[str, torch.Tensor] = {
            name: site["value"].detach() if name in local_guide else site["value"]
            for name, site in guide_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"]
        }
        guide_bar = _conditioned_trace(guide, values, args, kwargs, k, layout, plate)
        # log q at the detached local values: its gradient is the score term
        log_q_bar = _local_sum(guide_bar, local_guide, layout, plate)
        log_w_stl = log_w + log_q_bar  # path derivative only, same value as log_w
        v = self._normalized(log_w)
        if self.estimator == "stl":
            return (v * log_w_stl).sum(0)
        # dreg: the model gradient from sum_k v_k log p(x, z_bar_k); the guide gradient
        # from sum_k c_k (log w_stl - log p(x, z_bar)) with c = alpha v + (1 - alpha) v^2
        scored = {
            site["name"]
            for site, _, is_guide in scored_sites(model_trace, guide_trace)
            if not is_guide and in_plate(site, plate)
        }
        model_values = dict(values)
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and not site["is_observed"] and name not in values:
                model_values[name] = site["value"].detach()
        model_bar = _conditioned_trace(model, model_values, args, kwargs, k, layout, plate)
        log_p_bar = _local_sum(model_bar, scored, layout, plate)
        c = self.alpha * v + (1.0 - self.alpha) * v**2
        return (v * log_p_bar + c * (log_w_stl - log_p_bar)).sum(0)


def _conditioned_trace(fn, values: Mapping[str, torch.Tensor], args, kwargs, k, layout, plate):
    """Trace of ``fn`` with its sample sites fixed to ``values``, in the same particle
    layout as the main traces; log-probs computed."""
    with ParticlePlate(k, layout.particle_dim, only_within=plate):
        trace = poutine.trace(poutine.condition(fn, data=dict(values))).get_trace(*args, **kwargs)
    trace = prune_subsample_sites(trace)
    trace.compute_log_prob()
    return trace


class PyroRenyi(Objective):
    r"""Pyro's :class:`pyro.infer.RenyiELBO` (no differentiable loss).

    :meth:`loss_and_grads` calls ``RenyiELBO.loss_and_grads`` (which runs ``backward``)
    and returns the loss as a detached tensor; :meth:`loss` returns ``RenyiELBO.loss`` as
    a tensor without gradient. Pyro only backpropagates when its traces hold ``param``
    sites (a ``PyroModule``, ``pyro.module`` or ``pyro.param``); a pair without any gives
    no gradient and is refused by :func:`ppvae.init` (use kind ``renyi``). Pyro computes the weights
    per data point when every site is in the data plate; with global latents it weights
    the whole batch jointly. Pyro uses the *scaled* log-densities inside the log-sum-exp,
    so under minibatch scaling its loss is not the scaled bound (kind ``renyi`` is).

    Example:
        >>> objective = PyroRenyi(pyro.infer.RenyiELBO(alpha=0.5, num_particles=2))
    """

    def __init__(self, elbo: pyro.infer.RenyiELBO) -> None:
        self.elbo = elbo

    def __repr__(self) -> str:
        return f"PyroRenyi(alpha={self.elbo.alpha}, num_particles={self.elbo.num_particles})"

    def loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return torch.as_tensor(float(self.elbo.loss(model, guide, *args, **kwargs)))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return torch.as_tensor(float(self.elbo.loss_and_grads(model, guide, *args, **kwargs)))


class _BoundConfig(ObjectiveConfig):
    """Capability flags of the bounds, from their gradient estimator."""

    estimator: str

    @property
    def supports_kl_warmup(self) -> bool:  # the latent terms of the weights are scaled
        return self.estimator == "reparam"

    @property
    def needs_guide_log_prob_anywhere(self) -> bool:  # stl/dreg re-evaluate log q
        return self.estimator in ("stl", "dreg")


@OBJECTIVES.register("iwae")
@dataclass(frozen=True)
class IwaeConfig(_BoundConfig):
    r"""The importance-weighted bound :math:`\log \frac1K \sum_k w_k` (Burda et al. 2016).

    ``estimator``: ``"reparam"``, ``"stl"`` (Roeder et al. 2017) or ``"dreg"`` (Tucker et
    al. 2018).
    """

    num_particles: int = 5
    estimator: str = "reparam"

    def __post_init__(self) -> None:
        check_num_particles(self.num_particles)
        _check_estimator(self.estimator)

    def build(self) -> Objective:
        return RenyiBound(alpha=0.0, num_particles=self.num_particles, estimator=self.estimator)


@OBJECTIVES.register("renyi")
@dataclass(frozen=True)
class RenyiConfig(_BoundConfig):
    r"""The Rényi bound :math:`\frac{1}{1-\alpha} \log \frac1K \sum_k w_k^{1-\alpha}`
    (Li & Turner 2016); ``alpha = 0`` is IWAE, ``alpha = 1`` the ELBO."""

    alpha: float = 0.0
    num_particles: int = 5
    estimator: str = "reparam"

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        check_num_particles(self.num_particles)
        _check_estimator(self.estimator)

    def build(self) -> Objective:
        return RenyiBound(
            alpha=self.alpha, num_particles=self.num_particles, estimator=self.estimator
        )


@OBJECTIVES.register("pyro_renyi")
@dataclass(frozen=True)
class PyroRenyiConfig(ObjectiveConfig):
    r"""Pyro's own ``RenyiELBO(alpha, num_particles)`` (``alpha != 1``), trained through
    ``loss_and_grads``."""

    alpha: float = 0.0
    num_particles: int = 2
    vectorize_particles: bool = True

    def __post_init__(self) -> None:
        _check_alpha(self.alpha, allow_one=False)
        check_num_particles(self.num_particles)

    def build(self) -> Objective:
        return PyroRenyi(
            pyro.infer.RenyiELBO(
                alpha=self.alpha,
                num_particles=self.num_particles,
                vectorize_particles=self.vectorize_particles and self.num_particles > 1,
            )
        )
