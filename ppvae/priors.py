r"""Priors :math:`p(z)` over a latent vector, one registry entry each.

A prior is an ``nn.Module`` whose ``forward()`` returns a Pyro distribution with
``event_shape == (latent_dim,)`` and an empty (or broadcastable) batch shape; the model
samples it inside its data plate. Options live in a frozen dataclass registered in
:data:`PRIORS`; its ``build(ctx)`` returns the module.

Adding a prior (the whole of it)::

    @PRIORS.register("laplace")
    @dataclass(frozen=True)
    class LaplacePrior(PriorConfig):
        scale: float = 1.0

        def build(self, ctx):
            return _Fixed(dist.Laplace(torch.zeros(ctx.latent_dim), self.scale).to_event(1))

Kinds: ``standard_normal``; ``mixture`` (a learned mixture of diagonal Gaussians);
``vamp`` (the VampPrior, built on the guide's own posterior network); ``flow`` (a learned
masked autoregressive flow on a standard normal).

Example:
    >>> from ppvae.priors import PRIORS, BuildContext
    >>> prior = PRIORS.get("standard_normal")().build(BuildContext(data_dim=4, latent_dim=2))
    >>> prior().event_shape
    torch.Size([2])
    >>> mix = PRIORS.get("mixture")(num_components=3).build(BuildContext(data_dim=4, latent_dim=2))
    >>> p = mix()
    >>> p.batch_shape, p.event_shape, p.log_prob(torch.zeros(5, 7, 2)).shape
    (torch.Size([]), torch.Size([2]), torch.Size([5, 7]))
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Literal

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from ppvae.context import BuildContext
from ppvae.distributions import _HALF_LOG_2PI, ReparamDiagonalNormal
from ppvae.errors import SpecError
from ppvae.flows import check_count_bins, check_flow_options, flow_hidden_sizes, made
from ppvae.registry import Registry

__all__ = [
    "PRIORS",
    "PriorConfig",
    "StandardNormalPrior",
    "MixturePrior",
    "VampPrior",
    "VampPriorDistribution",
    "FlowPrior",
    "BuildContext",
]


class PriorConfig(abc.ABC):
    """Options of one prior kind (the ``[prior]`` section)."""

    kind: str
    #: Whether ``build`` takes the guide's posterior network (``build(ctx, posterior=q)``);
    #: :func:`ppvae.models.vae.build_vae` then builds the guide first and passes it.
    needs_posterior: bool = False

    @abc.abstractmethod
    def build(self, ctx: BuildContext) -> nn.Module:
        """The prior module; ``module()`` returns the distribution :math:`p(z)`."""


#: Registry of prior kinds: ``[prior] kind = "..."``.
PRIORS: Registry[PriorConfig] = Registry("prior")


class _StandardNormal(nn.Module):
    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


@PRIORS.register("standard_normal")
@dataclass(frozen=True)
class StandardNormalPrior(PriorConfig):
    r""":math:`p(z) = N(z; 0, I)`."""

    def build(self, ctx: BuildContext) -> nn.Module:
        return _StandardNormal(ctx.latent_dim)


_SOFTPLUS_INV_1 = math.log(math.expm1(1.0))
_MIN_SCALE = 1e-4


class _Mixture(nn.Module):
    def __init__(self, latent_dim: int, num_components: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, latent_dim))
        self.raw_scales = nn.Parameter(torch.full((num_components, latent_dim), _SOFTPLUS_INV_1))

    def forward(self) -> dist.Distribution:
        scales = F.softplus(self.raw_scales) + _MIN_SCALE
        components = dist.Normal(self.locs, scales).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


@PRIORS.register("mixture")
@dataclass(frozen=True)
class MixturePrior(PriorConfig):
    r"""A learned mixture of diagonal Gaussians,
    :math:`p(z) = \sum_{c=1}^{C} \pi_c\, N(z; \mu_c, \mathrm{diag}\,\sigma_c^2)`, with
    :math:`\pi = \mathrm{softmax}(\text{logits})` and :math:`\sigma_c =
    \mathrm{softplus}(\cdot) + 10^{-4}`. Means start at :math:`N(0, I)` draws, scales at 1,
    weights equal.

    Attributes:
        num_components: :math:`C`.
    """

    num_components: int = 10

    def __post_init__(self) -> None:
        if self.num_components < 1:
            raise SpecError(f"prior.num_components must be at least 1, got {self.num_components}")

    def build(self, ctx: BuildContext) -> nn.Module:
        return _Mixture(ctx.latent_dim, self.num_components)


_EMPTY = torch.Size()


def _diagonal_normal_table(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r""":math:`\log N(z_n; \mu_c, \mathrm{diag}\,\sigma_c^2)` for every ``z`` (``(..., D)``) and
    component ``c`` (``loc``, ``scale``: ``(C, D)``), shape ``(..., C)``, by two matrix
    products, :math:`-\frac12 [z^2 \cdot \sigma^{-2} - 2 z \cdot \mu \sigma^{-2} + \sum
    \mu^2 \sigma^{-2}] - \sum \log \sigma - \frac D2 \log 2\pi`, without the
    ``(..., C, D)`` tensor of differences (which for 5,000 importance samples of 100 points
    and 500 pseudo-inputs is 10 GB of float32). The products run in float64: the three
    terms cancel where ``z`` is near :math:`\mu_c`, the components that matter.

    Example:
        >>> z, loc, scale = torch.randn(4, 3), torch.randn(5, 3), torch.rand(5, 3) + 0.5
        >>> direct = torch.distributions.Normal(loc, scale).log_prob(z[:, None]).sum(-1)
        >>> torch.allclose(_diagonal_normal_table(z, loc, scale), direct, atol=1e-5)
        True
    """
    flat = z.reshape(-1, z.shape[-1]).double()
    precision = scale.double().pow(-2)  # (C, D)
    quad = (
        flat.pow(2) @ precision.T
        - 2.0 * flat @ (loc.double() * precision).T
        + (loc.double().pow(2) * precision).sum(-1)
    )
    out = -0.5 * quad - scale.double().log().sum(-1) - z.shape[-1] * _HALF_LOG_2PI
    return out.to(z.dtype).reshape(*z.shape[:-1], loc.shape[0])


class VampPriorDistribution(dist.TorchDistribution):
    r"""The VampPrior :math:`p(z) = \frac1C \sum_{c=1}^C q(z | u_c)` (Tomczak & Welling
    2018): a uniform mixture of the guide's posteriors at the pseudo-inputs :math:`u_c`.

    ``log_prob`` is :math:`\mathrm{logsumexp}_c \log q(z | u_c) - \log C` (the posterior
    is evaluated at all :math:`C` pseudo-inputs once per distribution object);
    ``rsample`` picks :math:`c` uniformly and draws :math:`z \sim q(z | u_c)`, which is
    reparameterized because the weights are fixed.

    Args:
        posterior: the guide's network, ``posterior(x)`` a distribution over ``z``.
        pseudo_inputs: :math:`u`, shape ``(C, data_dim)``.
        latent_dim: size of ``z``.
        batch_shape: usually empty; the model's plate expands it.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        posterior: nn.Module,
        pseudo_inputs: torch.Tensor,
        latent_dim: int,
        batch_shape: torch.Size = _EMPTY,
        validate_args=None,
    ) -> None:
        self.posterior = posterior
        self.pseudo_inputs = pseudo_inputs
        self._components: dist.Distribution | None = None
        super().__init__(torch.Size(batch_shape), torch.Size([latent_dim]), validate_args)

    @property
    def components(self) -> dist.Distribution:
        """:math:`q(z | u_c)` for every pseudo-input, batch shape ``(C,)``."""
        if self._components is None:
            self._components = self.posterior(self.pseudo_inputs)
        return self._components

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(VampPriorDistribution, _instance)
        new.posterior = self.posterior
        new.pseudo_inputs = self.pseudo_inputs
        new._components = self._components
        super(VampPriorDistribution, new).__init__(
            torch.Size(batch_shape), self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        num = self.pseudo_inputs.shape[0]
        components = self.components
        if isinstance(components, ReparamDiagonalNormal):
            log_q = _diagonal_normal_table(value, components.loc, components.scale)
        else:
            z = value.unsqueeze(-2).expand(*value.shape[:-1], num, value.shape[-1])
            log_q = components.log_prob(z)
        lp = torch.logsumexp(log_q, -1) - math.log(num)
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        u = self.pseudo_inputs
        index = torch.randint(u.shape[0], shape, device=u.device)
        return self.posterior(u[index]).rsample()


class _Vamp(nn.Module):
    def __init__(self, posterior: nn.Module, ctx: BuildContext, num_pseudo_inputs: int) -> None:
        super().__init__()
        self.posterior = posterior  # the guide's own module: shared weights
        self.latent_dim = ctx.latent_dim
        self.pseudo_inputs = nn.Parameter(
            0.05 + 0.01 * torch.randn(num_pseudo_inputs, ctx.data_dim)
        )

    def forward(self) -> VampPriorDistribution:
        return VampPriorDistribution(self.posterior, self.pseudo_inputs, self.latent_dim)


@PRIORS.register("vamp")
@dataclass(frozen=True)
class VampPrior(PriorConfig):
    r"""The VampPrior (Tomczak & Welling 2018), :math:`p(z) = \frac1C \sum_c q_\phi(z|u_c)`,
    a uniform mixture of the guide's posteriors at :math:`C` learned pseudo-inputs.

    In a VAE the prior holds the guide's posterior network itself (one set of weights,
    trained by both terms of the ELBO; ``needs_posterior``), so it needs an amortized
    guide whose density can be evaluated at any ``z`` (not ``planar`` or ``radial``).
    The pseudo-inputs start at :math:`N(0.05, 0.01^2)` draws per feature, as in the
    authors' MNIST code, and are unconstrained.

    Attributes:
        num_pseudo_inputs: :math:`C`.
    """

    num_pseudo_inputs: int = 500
    needs_posterior = True

    def __post_init__(self) -> None:
        if self.num_pseudo_inputs < 1:
            raise SpecError(
                f"prior.num_pseudo_inputs must be at least 1, got {self.num_pseudo_inputs}"
            )

    def build(self, ctx: BuildContext, posterior: nn.Module | None = None) -> nn.Module:
        """The prior on ``posterior`` (the guide's network, as
        :func:`~ppvae.models.vae.build_vae` passes it). Built alone, without one, it makes
        its own diagonal-normal encoder from ``ctx`` (a VampPrior whose encoder is not
        shared with any guide)."""
        if posterior is None:
            from ppvae.guides import DiagonalNormalEncoder

            posterior = DiagonalNormalEncoder(ctx, min_scale=1e-4)
        return _Vamp(posterior, ctx, self.num_pseudo_inputs)


class _Flow(nn.Module):
    def __init__(
        self, latent_dim: int, num_steps: int, transform: str, hidden: list[int], count_bins: int
    ) -> None:
        super().__init__()
        self.latent_dim, self.transform, self.count_bins = latent_dim, transform, count_bins
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        k = count_bins
        param_dims = (1, 1) if transform == "affine" else (k, k, k - 1, k)
        self.nets = nn.ModuleList(
            made(latent_dim, hidden, step=i, param_dims=param_dims) for i in range(num_steps)
        )

    def _step(self, net: nn.Module) -> T.Transform:
        # density direction z -> eps (one network pass); made afresh so caches die with it
        if self.transform == "affine":
            return T.AffineAutoregressive(net)
        return T.SplineAutoregressive(self.latent_dim, net, count_bins=self.count_bins)

    def forward(self) -> dist.Distribution:
        base = dist.Normal(self.loc, self.scale).to_event(1)
        # sampling direction eps -> z: the inverses, last step first
        return dist.TransformedDistribution(base, [self._step(n).inv for n in reversed(self.nets)])


@PRIORS.register("flow")
@dataclass(frozen=True)
class FlowPrior(PriorConfig):
    r"""A learned normalizing-flow prior: :math:`\epsilon = T_K \circ \dots \circ T_1(z)`
    with :math:`\epsilon \sim N(0, I)`, so :math:`\log p(z) = \log N(T(z); 0, I) + \sum_k
    \log |\det \partial T_k|`.

    Each :math:`T_k` is a masked autoregressive map (MAF, Papamakarios et al. 2017): an
    affine one, :math:`\epsilon_i = \mu_i(z_{<i}) + e^{s_i(z_{<i})} z_i`, or a monotone
    linear rational spline of each :math:`z_i` (Dolatabadi et al. 2020) on :math:`[-3, 3]`,
    identity outside. Variable orders alternate between steps.
    ``log_prob`` takes one network pass per step; sampling inverts them (``latent_dim``
    passes per step).

    Attributes:
        num_steps: :math:`K`.
        transform: ``"affine"`` or ``"spline"``.
        count_bins: spline segments (``transform = "spline"``).
        flow_hidden: hidden sizes of each MADE network; empty: the model's hidden sizes.
    """

    num_steps: int = 4
    transform: Literal["affine", "spline"] = "affine"
    count_bins: int = 8
    flow_hidden: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_flow_options("prior", self.num_steps, self.flow_hidden)
        check_count_bins("prior", self.count_bins)

    def build(self, ctx: BuildContext) -> nn.Module:
        hidden = flow_hidden_sizes(self.flow_hidden, ctx, "prior.flow_hidden", autoregressive=True)
        return _Flow(ctx.latent_dim, self.num_steps, self.transform, hidden, self.count_bins)
