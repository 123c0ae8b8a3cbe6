r"""Normalizing-flow building blocks shared by :mod:`ppvae.priors` and :mod:`ppvae.guides`.

A flow pushes a base sample :math:`\epsilon \sim q_0` through invertible maps,
:math:`z = T_K \circ \dots \circ T_1(\epsilon)`, and scores it by the change of variables

.. math::
    \log q(z) = \log q_0(\epsilon) - \sum_k \log \left| \det
    \frac{\partial T_k}{\partial z_{k-1}} \right| .

The maps are Pyro's (:mod:`pyro.distributions.transforms`); this module holds what the
priors and guides share: masked autoregressive networks (MADE, Germain et al. 2015) with
alternating variable orders, the resolution of ``flow_hidden`` sizes, and
:class:`FlowDistribution`, Pyro's ``TransformedDistribution`` with a Monte Carlo
``mean`` and a clear error where a flow cannot be inverted.

The transform objects are made afresh by each call of a prior or guide (from networks
that live in ``nn.ModuleList``\ s), so the ``x <-> y`` caches of Pyro's transforms
(``cache_size=1``) live exactly as long as the distribution that drew the sample.

Example:
    >>> import torch, pyro.distributions as dist
    >>> import pyro.distributions.transforms as T
    >>> net = made(2, [8], step=0)
    >>> q = FlowDistribution(dist.Normal(torch.zeros(2), 1.0).to_event(1),
    ...                      [T.AffineAutoregressive(net)])
    >>> z = q.rsample((5,))
    >>> z.shape, q.log_prob(z).shape
    (torch.Size([5, 2]), torch.Size([5]))
    >>> bool(torch.allclose(q.log_prob(z), q.log_prob(z.clone()), atol=1e-5))  # inverted
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch import nn

from ppvae.context import BuildContext
from ppvae.distributions import ReparamDiagonalNormal
from ppvae.errors import SpecError
from ppvae.nn import MLP, make_activation

__all__ = [
    "FlowDistribution",
    "FlowEncoder",
    "made",
    "flow_hidden_sizes",
    "check_flow_options",
    "check_count_bins",
    "MEAN_SAMPLES",
]

#: Number of draws behind :attr:`FlowDistribution.mean` (flows have no closed-form mean).
MEAN_SAMPLES = 64


class FlowDistribution(dist.TransformedDistribution):
    r"""Pyro's ``TransformedDistribution`` with two additions.

    * ``mean`` is a Monte Carlo estimate from :data:`MEAN_SAMPLES` reparameterized
      draws (a flow has no closed-form mean); it is what reconstructions use.
    * ``log_prob`` at a point the distribution did not draw itself needs the inverse of
      every transform. Planar and radial flows have none: there a
      ``NotImplementedError`` says so (Pyro raises a bare ``KeyError``). Log-densities
      at the distribution's own draws (all the ELBO needs) always work: Pyro caches
      ``x <-> y`` for each transform.
    """

    @property
    def mean(self) -> torch.Tensor:
        return self.rsample((MEAN_SAMPLES,)).mean(0)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        try:
            return super().log_prob(value)
        except KeyError as err:
            raise NotImplementedError(
                "this flow (planar or radial) has no inverse, so its log-density is only "
                "available at the samples it drew itself"
            ) from err


def made(
    input_dim: int,
    hidden: Sequence[int],
    *,
    step: int,
    context_dim: int = 0,
    param_dims: Sequence[int] = (1, 1),
) -> ConditionalAutoRegressiveNN:
    r"""A masked autoregressive network over ``input_dim`` variables.

    The variable order is the identity for even ``step`` and reversed for odd ones, so
    stacked steps alternate (the reversal of Kingma et al. 2016) deterministically; the
    order is a buffer of the network, saved in its ``state_dict``. With ``context_dim``
    the network also reads a context vector (conditional flows). One variable is
    allowed (its outputs then depend on the context or biases only).
    """
    order = torch.arange(input_dim)
    if step % 2:
        order = order.flip(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input_dim = 1.*")
        if context_dim:
            return ConditionalAutoRegressiveNN(
                input_dim, context_dim, list(hidden), param_dims=list(param_dims), permutation=order
            )
        return AutoRegressiveNN(
            input_dim, list(hidden), param_dims=list(param_dims), permutation=order
        )


def flow_hidden_sizes(
    flow_hidden: Sequence[int], ctx: BuildContext, where: str, *, autoregressive: bool
) -> list[int]:
    """The hidden sizes of a flow's networks: ``flow_hidden``, or the model's hidden sizes
    when empty (or ``[10 * latent_dim]`` when the model has none either).

    Autoregressive networks need every size at least ``latent_dim``: a smaller one is a
    :class:`~ppvae.errors.SpecError` naming ``where`` (e.g. ``"guide.flow_hidden"``).
    """
    sizes = list(flow_hidden) or list(ctx.hidden) or [10 * ctx.latent_dim]
    if autoregressive and min(sizes) < ctx.latent_dim:
        raise SpecError(
            f"{where} sizes must be at least model.latent_dim = {ctx.latent_dim} for "
            f"autoregressive flows, got {sizes}"
        )
    return sizes


#: The longest flow a spec may ask for.
MAX_FLOW_STEPS = 1000


def check_flow_options(section: str, num_steps: int, flow_hidden: Sequence[int]) -> None:
    """The range checks every flow's options share (one :class:`SpecError` sentence)."""
    if num_steps < 1:
        raise SpecError(f"{section}.num_steps must be at least 1, got {num_steps}")
    if num_steps > MAX_FLOW_STEPS:
        # every step is a module of its own: a huge flow eats the machine before it fails
        raise SpecError(
            f"{section}.num_steps must be at most {MAX_FLOW_STEPS:,} (published flows use tens), "
            f"got {num_steps:,}"
        )
    if any(h < 1 for h in flow_hidden):
        raise SpecError(f"{section}.flow_hidden sizes must be at least 1, got {list(flow_hidden)}")


def check_count_bins(section: str, count_bins: int) -> None:
    """Splines need at least two bins."""
    if count_bins < 2:
        raise SpecError(f"{section}.count_bins must be at least 2, got {count_bins}")


#: ``make_step(step, context_dim)`` -> one conditional transform module.
StepFactory = Callable[[int, int], nn.Module]


class FlowEncoder(nn.Module):
    r"""Features :math:`h(x)` (the activated last hidden layer of an MLP; ``x`` itself
    without hidden layers), a diagonal Gaussian :math:`N(\mu(h), \sigma(h)^2)` and flow
    steps conditioned on :math:`h`.

    With ``standard_base=False`` the flow moves the Gaussian, :math:`z = T_K \circ \dots
    \circ T_1(\mu + \sigma \epsilon)` (IAF, planar, radial: Kingma et al. 2016; Rezende &
    Mohamed 2015); with ``True`` it moves :math:`\epsilon \sim N(0, I)` and the Gaussian's
    affine map comes last, :math:`z = \mu + \sigma \odot T(\epsilon)` (splines, which act
    on :math:`[-3, 3]`). Returns a :class:`~ppvae.flows.FlowDistribution`.
    """

    def __init__(
        self,
        ctx: BuildContext,
        make_step: StepFactory,
        num_steps: int,
        min_scale: float,
        *,
        standard_base: bool = False,
    ) -> None:
        super().__init__()
        self.latent_dim, self.min_scale, self.standard_base = (
            ctx.latent_dim,
            min_scale,
            standard_base,
        )
        if ctx.hidden:
            *inner, last = ctx.hidden
            body = MLP(ctx.data_dim, inner, last, ctx.activation)
            self.features = nn.Sequential(body, make_activation(ctx.activation))
            self.context_dim = last
        else:
            self.features, self.context_dim = nn.Identity(), ctx.data_dim
        self.head = nn.Linear(self.context_dim, 2 * ctx.latent_dim)
        self.flows = nn.ModuleList(make_step(i, self.context_dim) for i in range(num_steps))

    def forward(self, x: torch.Tensor) -> FlowDistribution:
        h = self.features(x)
        loc, raw = self.head(h).split(self.latent_dim, dim=-1)
        scale = F.softplus(raw) + self.min_scale
        transforms = [flow.condition(h) for flow in self.flows]
        if self.standard_base:
            base = ReparamDiagonalNormal(torch.zeros_like(loc), torch.ones_like(scale))
            transforms.append(T.AffineTransform(loc, scale, event_dim=1, cache_size=1))
        else:
            base = ReparamDiagonalNormal(loc, scale)
        return FlowDistribution(base, transforms)
