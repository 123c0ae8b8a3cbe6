r"""Amortized guides :math:`q(z | x)`, one registry entry each.

A guide component is an ``nn.Module`` whose ``forward(x)`` maps a batch of data
``(..., data_dim)`` to a Pyro distribution over ``z`` with ``event_shape ==
(latent_dim,)``; the model's guide program samples it inside the data plate. Every guide
here is reparameterized.

Kinds: ``diagonal_normal``; ``full_normal`` (a Gaussian with a full Cholesky factor);
and the flows ``iaf``, ``planar``, ``radial`` and ``spline``, which push Gaussian noise
through transforms conditioned on the encoder's features (see
:class:`ppvae.flows.FlowEncoder`). Planar and radial flows cannot be inverted: their ``log_prob`` works
at the guide's own draws only (all an ELBO needs), not at arbitrary ``z``.

Example:
    >>> import torch
    >>> from ppvae.context import BuildContext
    >>> q = GUIDES.get("diagonal_normal")().build(BuildContext(data_dim=4, latent_dim=2, hidden=(8,)))
    >>> d = q(torch.zeros(3, 4))
    >>> d.batch_shape, d.event_shape, d.has_rsample
    (torch.Size([3]), torch.Size([2]), True)
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints
from torch.distributions.kl import register_kl

from ppvae.context import BuildContext
from ppvae.distributions import _HALF_LOG_2PI, ReparamDiagonalNormal
from ppvae.errors import SpecError
from ppvae.flows import FlowEncoder, check_count_bins, check_flow_options, flow_hidden_sizes, made
from ppvae.nn import MLP, broadcast_cat, make_activation
from ppvae.registry import Registry

__all__ = [
    "GUIDES",
    "GuideConfig",
    "DiagonalNormalGuide",
    "DiagonalNormalEncoder",
    "ConditionalEncoder",
    "ConcatEncoder",
    "ReparamFullNormal",
    "FullNormalEncoder",
    "FullNormalGuide",
    "IafGuide",
    "PlanarGuide",
    "RadialGuide",
    "SplineGuide",
]


class GuideConfig(abc.ABC):
    """Options of one guide kind (the ``[guide]`` section)."""

    kind: str
    #: Whether the guide maps each data point to its own q(z|x) (VampPrior needs it).
    amortized: bool = True
    #: Whether ``log_prob`` works at any ``z``, not only at the guide's own draws
    #: (VampPrior and the stl/dreg estimators need it; planar and radial flows lack it).
    log_prob_anywhere: bool = True
    #: Points of the mutual-information diagnostic (``ppvae evaluate``), which scores every
    #: point's draw under every point's q(z|x): N^2 densities at draws q did not make.
    #: Autoregressive flows invert one latent dimension at a time, so they take fewer.
    mutual_information_points: int = 2000

    @abc.abstractmethod
    def build(self, ctx: BuildContext) -> nn.Module:
        """The module mapping ``x`` to the distribution ``q(z | x)``."""

    def build_conditional(self, ctx: BuildContext, context_dim: int) -> nn.Module:
        """The module mapping ``(x, c)`` to :math:`q(z | x, c)`, for a context vector ``c``
        of ``context_dim`` features (e.g. a one-hot label); the leading dims of ``x`` and
        ``c`` broadcast. Default: :meth:`build` on the concatenation ``[x, c]``."""
        inner = dataclasses.replace(ctx, data_dim=ctx.data_dim + context_dim)
        return ConcatEncoder(self.build(inner))


#: Registry of guide kinds: ``[guide] kind = "..."``.
GUIDES: Registry[GuideConfig] = Registry("guide")


class DiagonalNormalEncoder(nn.Module):
    r"""An MLP encoder giving :math:`\mu(x)` and :math:`\sigma(x) = \mathrm{softplus}(\cdot)
    + \sigma_{min}`, returned as ppvae's :class:`~ppvae.distributions.ReparamDiagonalNormal`."""

    def __init__(self, ctx: BuildContext, min_scale: float) -> None:
        super().__init__()
        self.latent_dim = ctx.latent_dim
        self.net = MLP(ctx.data_dim, ctx.hidden, 2 * ctx.latent_dim, ctx.activation)
        self.min_scale = min_scale

    def forward(self, x: torch.Tensor) -> ReparamDiagonalNormal:
        loc, raw = self.net(x).split(self.latent_dim, dim=-1)
        return ReparamDiagonalNormal(loc, F.softplus(raw) + self.min_scale)


@GUIDES.register("diagonal_normal")
@dataclass(frozen=True)
class DiagonalNormalGuide(GuideConfig):
    r"""Mean-field Gaussian :math:`q(z|x) = N(z; \mu(x), \mathrm{diag}\,\sigma(x)^2)`,
    sampled as :math:`z = \mu + \sigma \epsilon` (ppvae's own reparameterization)."""

    min_scale: float = 1e-4

    def __post_init__(self) -> None:
        _check_min_scale(self.min_scale)

    def build(self, ctx: BuildContext) -> nn.Module:
        return DiagonalNormalEncoder(ctx, self.min_scale)

    def build_conditional(self, ctx: BuildContext, context_dim: int) -> nn.Module:
        """The same network on ``[x, c]``, its first layer split (:class:`ConditionalEncoder`)."""
        return ConditionalEncoder(
            ctx.data_dim, context_dim, ctx.latent_dim, ctx.hidden, ctx.activation, self.min_scale
        )


class ConcatEncoder(nn.Module):
    """A guide component built for inputs ``[x, c]``, called as ``forward(x, c)``."""

    def __init__(self, posterior: nn.Module) -> None:
        super().__init__()
        self.posterior = posterior

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> dist.Distribution:
        return self.posterior(broadcast_cat(x, context))


class ConditionalEncoder(nn.Module):
    r""":math:`q(z | x, c) = N(\mu, \mathrm{diag}\,\sigma^2)` from an MLP on :math:`[x, c]`,
    returned as :class:`~ppvae.distributions.ReparamDiagonalNormal`.

    The first layer is split into :math:`W_x x + W_c c` so that the :math:`x` part is
    computed once per point, not once per context: with ``c`` the one-hot classes of M2,
    the same network, ``C`` times cheaper in its largest layer. ``forward(x, c)``
    broadcasts the leading dims of both (e.g. ``x`` of shape ``(B, 1, D)`` with ``(C, C)``
    one-hots gives ``(B, C)`` distributions; ``(B, D)`` with ``(C, 1, C)`` gives ``(C, B)``).
    """

    def __init__(
        self,
        data_dim: int,
        context_dim: int,
        latent_dim: int,
        hidden: Sequence[int],
        activation: str = "relu",
        min_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        hidden = tuple(hidden)
        first = hidden[0] if hidden else 2 * latent_dim
        self.latent_dim = latent_dim
        self.min_scale = min_scale
        self.x_layer = nn.Linear(data_dim, first)
        self.y_layer = nn.Linear(context_dim, first, bias=False)
        self.rest = (
            nn.Sequential(
                make_activation(activation), MLP(first, hidden[1:], 2 * latent_dim, activation)
            )
            if hidden
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> ReparamDiagonalNormal:
        h = self.x_layer(x) + self.y_layer(context)
        loc, raw = self.rest(h).split(self.latent_dim, dim=-1)
        return ReparamDiagonalNormal(loc, F.softplus(raw) + self.min_scale)


def _check_min_scale(min_scale: float) -> None:
    if not min_scale >= 0:
        raise SpecError(f"guide.min_scale must be non-negative, got {min_scale}")


_EMPTY = torch.Size()


class ReparamFullNormal(dist.TorchDistribution):
    r"""A Gaussian with a full covariance :math:`LL^\top`, sampled as :math:`z = \mu +
    L\epsilon` with :math:`L` lower triangular with a positive diagonal:

    .. math::
        \log q(z) = \sum_i \log N(\epsilon_i; 0, 1) - \sum_i \log L_{ii},
        \qquad \epsilon = L^{-1}(z - \mu).

    Args:
        loc: :math:`\mu`, shape ``batch_shape + (d,)``.
        scale_tril: :math:`L`, shape ``batch_shape + (d, d)``.
    """

    arg_constraints = {"loc": constraints.real_vector, "scale_tril": constraints.lower_cholesky}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale_tril: torch.Tensor, validate_args=None) -> None:
        d = loc.shape[-1]
        batch = torch.broadcast_shapes(loc.shape[:-1], scale_tril.shape[:-2])
        self.loc = loc.expand(batch + (d,))
        self.scale_tril = scale_tril.expand(batch + (d, d))
        super().__init__(batch, torch.Size([d]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ReparamFullNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        d = self.event_shape[0]
        new.loc = self.loc.expand(batch_shape + (d,))
        new.scale_tril = self.scale_tril.expand(batch_shape + (d, d))
        super(ReparamFullNormal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return self.scale_tril.pow(2).sum(-1)

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + (self.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        diff = value - self.loc
        d = diff.shape[-1]
        batch = torch.broadcast_shapes(diff.shape[:-1], self.scale_tril.shape[:-2])
        eps = torch.linalg.solve_triangular(
            self.scale_tril.expand(batch + (d, d)),
            diff.expand(batch + (d,)).unsqueeze(-1),
            upper=False,
        ).squeeze(-1)
        log_p_eps = (-0.5 * eps.pow(2) - _HALF_LOG_2PI).sum(-1)
        return log_p_eps - self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def entropy(self) -> torch.Tensor:
        d = self.event_shape[0]
        log_diag = self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return d * (0.5 + _HALF_LOG_2PI) + log_diag


@register_kl(ReparamFullNormal, torch.distributions.Independent)
def _kl_full_independent(q, p):
    base = p.base_dist
    if not isinstance(base, torch.distributions.Normal) or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    var_p = base.scale.pow(2)
    trace = (q.variance / var_p).sum(-1)
    maha = ((q.loc - base.loc).pow(2) / var_p).sum(-1)
    log_det = var_p.log().sum(-1) - 2 * q.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + maha - q.loc.shape[-1] + log_det)


class FullNormalEncoder(nn.Module):
    r"""An MLP giving :math:`\mu(x)` and the :math:`d(d+1)/2` entries of :math:`L(x)`: the
    diagonal through :math:`\mathrm{softplus}(\cdot) + \sigma_{min}`, the strictly lower
    part as is."""

    def __init__(self, ctx: BuildContext, min_scale: float) -> None:
        super().__init__()
        d = self.latent_dim = ctx.latent_dim
        self.net = MLP(ctx.data_dim, ctx.hidden, d * (d + 3) // 2, ctx.activation)
        self.min_scale = min_scale
        rows, cols = torch.tril_indices(d, d, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, x: torch.Tensor) -> ReparamFullNormal:
        d = self.latent_dim
        loc, raw, off = self.net(x).split([d, d, d * (d - 1) // 2], dim=-1)
        tril = torch.zeros(*off.shape[:-1], d, d, dtype=off.dtype, device=off.device)
        tril[..., self.rows, self.cols] = off
        tril = tril + torch.diag_embed(F.softplus(raw) + self.min_scale)
        return ReparamFullNormal(loc, tril)


@GUIDES.register("full_normal")
@dataclass(frozen=True)
class FullNormalGuide(GuideConfig):
    r"""A Gaussian with full covariance, :math:`q(z|x) = N(z; \mu(x), L(x) L(x)^\top)`,
    sampled as :math:`z = \mu + L\epsilon` (:class:`ReparamFullNormal`)."""

    min_scale: float = 1e-4

    def __post_init__(self) -> None:
        _check_min_scale(self.min_scale)

    def build(self, ctx: BuildContext) -> nn.Module:
        return FullNormalEncoder(ctx, self.min_scale)


@dataclass(frozen=True)
class _FlowGuide(GuideConfig):
    """Options every flow guide shares; subclasses say what one step is."""

    num_steps: int = 2
    flow_hidden: tuple[int, ...] = ()
    min_scale: float = 1e-4

    _autoregressive = True
    _standard_base = False
    mutual_information_points = 200  # the inverse takes latent_dim passes

    def __post_init__(self) -> None:
        check_flow_options("guide", self.num_steps, self.flow_hidden)
        _check_min_scale(self.min_scale)

    @abc.abstractmethod
    def _step(self, d: int, hidden: list[int], step: int, context_dim: int) -> nn.Module:
        """One conditional transform module over ``d`` variables."""

    def build(self, ctx: BuildContext) -> nn.Module:
        hidden = flow_hidden_sizes(
            self.flow_hidden, ctx, "guide.flow_hidden", autoregressive=self._autoregressive
        )
        d = ctx.latent_dim
        return FlowEncoder(
            ctx,
            lambda step, c: self._step(d, hidden, step, c),
            self.num_steps,
            self.min_scale,
            standard_base=self._standard_base,
        )


@GUIDES.register("iaf")
@dataclass(frozen=True)
class IafGuide(_FlowGuide):
    r"""Inverse autoregressive flow (Kingma et al. 2016): :math:`z_0 = \mu + \sigma
    \epsilon`, then :math:`K` steps :math:`z_k = s_k \odot z_{k-1} + (1 - s_k) \odot m_k`
    with :math:`(m_k, \mathrm{logit}\, s_k) = \mathrm{MADE}_k(z_{k-1}, h(x))` (the paper's
    numerically stable update), variable orders alternating; :math:`\log q(z) = \log
    q_0(z_0) - \sum_k \sum_i \log s_{k,i}`.

    Attributes:
        num_steps: :math:`K`.
        flow_hidden: hidden sizes of each MADE; empty: the model's hidden sizes.
        min_scale: floor of :math:`\sigma`.
    """

    num_steps: int = 2

    def _step(self, d: int, hidden: list[int], step: int, context_dim: int) -> nn.Module:
        net = made(d, hidden, step=step, context_dim=context_dim)
        return T.ConditionalAffineAutoregressive(net, stable=True)


@GUIDES.register("planar")
@dataclass(frozen=True)
class PlanarGuide(_FlowGuide):
    r"""Planar flow (Rezende & Mohamed 2015) on :math:`z_0 = \mu + \sigma\epsilon`:
    :math:`z_k = z_{k-1} + \hat u_k \tanh(w_k^\top z_{k-1} + b_k)` with
    :math:`(u_k, w_k, b_k)` from a network of :math:`h(x)` and :math:`\hat u_k` such that
    :math:`w_k^\top \hat u_k \ge -1` (invertible). There is no closed-form inverse:
    ``log_prob`` works only at the guide's own draws.

    Attributes:
        num_steps: :math:`K`.
        flow_hidden: hidden sizes of each step's network; empty: the model's hidden sizes.
        min_scale: floor of :math:`\sigma`.
    """

    num_steps: int = 8
    _autoregressive = False
    log_prob_anywhere = False

    def _step(self, d: int, hidden: list[int], step: int, context_dim: int) -> nn.Module:
        return T.conditional_planar(d, context_dim, hidden)


@GUIDES.register("radial")
@dataclass(frozen=True)
class RadialGuide(_FlowGuide):
    r"""Radial flow (Rezende & Mohamed 2015) on :math:`z_0 = \mu + \sigma\epsilon`:
    :math:`z_k = z_{k-1} + \beta_k h(\alpha_k, r)(z_{k-1} - z_{0,k})` with :math:`r =
    \|z_{k-1} - z_{0,k}\|`, :math:`h = 1 / (\alpha + r)`, parameters from a network of
    :math:`h(x)` constrained so that :math:`\beta_k \ge -\alpha_k`. There is no
    closed-form inverse: ``log_prob`` works only at the guide's own draws.

    Attributes:
        num_steps: :math:`K`.
        flow_hidden: hidden sizes of each step's network; empty: the model's hidden sizes.
        min_scale: floor of :math:`\sigma`.
    """

    num_steps: int = 8
    _autoregressive = False
    log_prob_anywhere = False

    def _step(self, d: int, hidden: list[int], step: int, context_dim: int) -> nn.Module:
        return T.conditional_radial(d, context_dim, hidden)


@GUIDES.register("spline")
@dataclass(frozen=True)
class SplineGuide(_FlowGuide):
    r"""Neural spline flow: :math:`\epsilon \sim N(0, I)` through :math:`K`
    autoregressive linear rational splines (Durkan et al. 2019; Dolatabadi et al. 2020)
    on :math:`[-3, 3]` whose knots come from a MADE of :math:`(\epsilon_{<i}, h(x))`, then
    :math:`z = \mu(x) + \sigma(x) \odot T(\epsilon)`.

    Attributes:
        num_steps: :math:`K`.
        count_bins: spline segments.
        flow_hidden: hidden sizes of each MADE; empty: the model's hidden sizes.
        min_scale: floor of :math:`\sigma`.
    """

    num_steps: int = 2
    count_bins: int = 8
    _standard_base = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count_bins("guide", self.count_bins)

    def _step(self, d: int, hidden: list[int], step: int, context_dim: int) -> nn.Module:
        k = self.count_bins
        net = made(d, hidden, step=step, context_dim=context_dim, param_dims=(k, k, k - 1, k))
        return T.ConditionalSplineAutoregressive(d, net, count_bins=k, bound=3.0, order="linear")
