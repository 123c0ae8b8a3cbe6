r"""Likelihoods :math:`p(x | z)`: how decoder outputs become a distribution over data.

A likelihood is an ``nn.Module`` with ``params_per_dim`` (decoder outputs per data
feature) whose ``forward(out)`` maps decoder outputs ``(..., data_dim * params_per_dim)``
to a Pyro distribution with ``event_shape == (data_dim,)``, and whose ``mean(out)`` gives
the expected data (used for sample grids and reconstructions). The outputs are laid out
parameter-major, ``(params_per_dim, data_dim)`` flattened, unless the module sets
``params_last = True`` (``(data_dim, params_per_dim)``, as ``categorical256``); image
decoders (:mod:`ppvae.networks`) read this to lay out their channels. Options live in a frozen
dataclass registered in :data:`LIKELIHOODS`; its ``check_data`` refuses data the
likelihood cannot model, with one sentence saying what to change.

Kinds: ``bernoulli``, ``continuous_bernoulli`` and ``gaussian``; for 8-bit images
``categorical256`` (256 logits per pixel) and ``discretized_logistic`` (Salimans et al.
2017); for counts ``poisson`` and ``negative_binomial``.

Example:
    >>> import torch
    >>> from ppvae.context import BuildContext
    >>> lik = LIKELIHOODS.get("bernoulli")().build(BuildContext(data_dim=3, latent_dim=2))
    >>> d = lik(torch.zeros(3))
    >>> d.event_shape, round(float(d.log_prob(torch.tensor([0.0, 1.0, 1.0]))), 4)
    (torch.Size([3]), -2.0794)
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from ppvae.context import BuildContext
from ppvae.errors import DataError, SpecError
from ppvae.registry import Registry

__all__ = [
    "LIKELIHOODS",
    "LikelihoodConfig",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "data_scale",
    "Categorical256Likelihood",
    "DiscretizedLogisticLikelihood",
    "PoissonLikelihood",
    "NegativeBinomialLikelihood",
    "Categorical256",
    "DiscretizedLogistic",
]


class LikelihoodConfig(abc.ABC):
    """Options of one likelihood kind (the ``[likelihood]`` section)."""

    kind: str
    #: The values it models: ``"binary"`` ({0, 1}), ``"unit_interval"`` ([0, 1]),
    #: ``"real"``, ``"eight_bit"`` (256 levels in [0, 1]) or ``"counts"`` (0, 1, 2, ...);
    #: rules of other sections read it (M1+M2 feeds real values and needs ``"real"``).
    support: ClassVar[str] = "unknown"

    @abc.abstractmethod
    def build(self, ctx: BuildContext) -> nn.Module:
        """The likelihood module."""

    def check_data(self, x: torch.Tensor, *, binarized: bool, where: str) -> None:
        """Refuse data this likelihood cannot model (a :class:`DataError`).

        Args:
            x: a sample of the data (e.g. the training split).
            binarized: whether the data set is binarized (statically or dynamically).
            where: where the data came from, for the message.
        """
        if not torch.isfinite(x).all():
            raise DataError(f"{where} holds NaN or infinite values; clean the data first")


#: Registry of likelihood kinds: ``[likelihood] kind = "..."``.
LIKELIHOODS: Registry[LikelihoodConfig] = Registry("likelihood")


class _Bernoulli(nn.Module):
    params_per_dim = 1

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=out, validate_args=False).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)


@LIKELIHOODS.register("bernoulli")
@dataclass(frozen=True)
class BernoulliLikelihood(LikelihoodConfig):
    r"""Independent Bernoulli pixels on logits: :math:`p(x|z) = \prod_i
    \mathrm{Bern}(x_i; \sigma(f_i(z)))`. Needs binary data."""

    support: ClassVar[str] = "binary"

    def build(self, ctx: BuildContext) -> nn.Module:
        return _Bernoulli()

    def check_data(self, x: torch.Tensor, *, binarized: bool, where: str) -> None:
        super().check_data(x, binarized=binarized, where=where)
        if binarized:
            return
        if not ((x == 0) | (x == 1)).all():
            raise DataError(
                f"the bernoulli likelihood needs binary data but {where} has values other than "
                '0 and 1; set data.binarize = "static" or "dynamic", or use '
                'likelihood.kind = "continuous_bernoulli"'
            )


class _ContinuousBernoulli(nn.Module):
    params_per_dim = 1

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=out, validate_args=False).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return dist.ContinuousBernoulli(logits=out, validate_args=False).mean


@LIKELIHOODS.register("continuous_bernoulli")
@dataclass(frozen=True)
class ContinuousBernoulliLikelihood(LikelihoodConfig):
    r"""The continuous Bernoulli of Loaiza-Ganem & Cunningham (2019) for data in [0, 1]:
    the Bernoulli density with its normalizing constant, a proper density on [0, 1]."""

    support: ClassVar[str] = "unit_interval"

    def build(self, ctx: BuildContext) -> nn.Module:
        return _ContinuousBernoulli()

    def check_data(self, x: torch.Tensor, *, binarized: bool, where: str) -> None:
        super().check_data(x, binarized=binarized, where=where)
        if (x < 0).any() or (x > 1).any():
            raise DataError(
                f"the continuous_bernoulli likelihood needs data in [0, 1] but {where} has "
                'values outside it; rescale the data or use likelihood.kind = "gaussian"'
            )


def _inverse_softplus(value: torch.Tensor) -> torch.Tensor:
    """:math:`\\log(e^v - 1)`, stable for large and small ``v > 0``."""
    return value + torch.log(-torch.expm1(-value))


def data_scale(x: torch.Tensor | None, *, per_feature: bool) -> torch.Tensor:
    r"""The standard deviation of training inputs ``x`` ``[N, D]``, computed in float64.

    ``per_feature``: each feature's own :math:`s_j` (shape ``(D,)``, at least
    :math:`10^{-3}` of the pooled value, so constant features get a small positive
    scale); else the pooled :math:`s = (\frac1D \sum_j s_j^2)^{1/2}` (a scalar), the root
    mean square distance of a value from its feature's mean. Without data (``None``), a
    single point, or constant data: 1.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
        >>> data_scale(x, per_feature=True), data_scale(x, per_feature=False)
        (tensor([1., 2.]), tensor(1.5811))
    """
    if x is None or x.shape[0] < 2:
        return torch.ones(x.shape[-1]) if (per_feature and x is not None) else torch.tensor(1.0)
    var = x.detach().to("cpu", torch.float64).var(0, correction=0)
    pooled = float(var.mean().sqrt())
    if not pooled > 0:
        pooled = 1.0
    if not per_feature:
        return torch.tensor(pooled, dtype=torch.float32)
    return var.sqrt().clamp(min=1e-3 * pooled).to(torch.float32)


class _Gaussian(nn.Module):
    params_per_dim = 1

    def __init__(self, data_dim: int, scale: float | torch.Tensor, learn: str) -> None:
        super().__init__()
        self.learn = learn
        start = torch.as_tensor(scale).to(torch.float64)
        if learn == "pixel":
            start = start.expand(data_dim)
        raw = _inverse_softplus(start).float()
        if learn == "fixed":
            self.register_buffer("raw_scale", raw)
        else:
            self.raw_scale = nn.Parameter(raw)

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale) + 1e-6

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        return dist.Normal(out, self.scale.expand_as(out), validate_args=False).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out


#: ``scale`` values of the ``gaussian`` likelihood that take it from the training data.
SCALE_FROM_DATA = ("std", "feature_std")
#: What ``learn = "auto"`` becomes: fixed for a number, learned for a scale from the data.
_AUTO_LEARN = {"std": "global", "feature_std": "pixel"}


@LIKELIHOODS.register("gaussian")
@dataclass(frozen=True)
class GaussianLikelihood(LikelihoodConfig):
    r"""Independent Gaussian features, :math:`x_i | z \sim N(f_i(z), \sigma_i^2)`.

    By default :math:`\sigma` starts at the standard deviation of the training split and
    is learned: data of any scale get a likelihood of that scale from the first step (a
    fixed :math:`\sigma` far below the data's spread, such as the 0.1 that was the
    default before, costs hundreds of nats per point on data of unit scale and says
    nothing). An explicit number keeps the behaviour it always had: that fixed
    :math:`\sigma` (learned from there with ``learn = "global"`` or ``"pixel"``).

    Attributes:
        scale: where :math:`\sigma` starts: ``"std"`` (default) the pooled standard
            deviation of the training inputs, :math:`(\frac1D \sum_j s_j^2)^{1/2}`;
            ``"feature_std"`` each feature's own :math:`s_j`; or a positive number.
            Without data (a model built from Python with no data) ``"std"`` and
            ``"feature_std"`` start at 1. See :func:`data_scale`.
        learn: ``"fixed"`` keeps :math:`\sigma`; ``"global"`` learns one :math:`\sigma`;
            ``"pixel"`` learns one per feature; ``"auto"`` (default) means ``"global"``
            for ``scale = "std"``, ``"pixel"`` for ``"feature_std"`` and ``"fixed"`` for a
            number (:attr:`resolved_learn`).

    :math:`\sigma = \mathrm{softplus}(\rho) + 10^{-6}` with :math:`\rho` the parameter
    (or buffer) ``raw_scale``.

    Example:
        >>> from ppvae.context import BuildContext
        >>> x = torch.randn(500, 3) * 4.0
        >>> config = GaussianLikelihood()
        >>> config.scale, config.resolved_learn
        ('std', 'global')
        >>> lik = config.build(BuildContext(data_dim=3, latent_dim=2, data=x))
        >>> abs(float(lik.scale) - 4.0) < 0.5, lik.raw_scale.requires_grad
        (True, True)
        >>> GaussianLikelihood(scale=0.1).resolved_learn  # a number: fixed, as before
        'fixed'
    """

    support: ClassVar[str] = "real"

    scale: float | Literal["std", "feature_std"] = "std"
    learn: Literal["auto", "fixed", "global", "pixel"] = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.scale, str):
            if self.scale not in SCALE_FROM_DATA:
                raise SpecError(
                    'likelihood.scale must be a positive number, "std" or "feature_std", '
                    f"got {self.scale!r}"
                )
        elif isinstance(self.scale, bool) or not self.scale > 0:
            raise SpecError(f"likelihood.scale must be positive, got {self.scale}")
        if self.scale == "feature_std" and self.learn == "global":
            raise SpecError(
                'likelihood.scale = "feature_std" starts one scale per feature, which '
                'learn = "global" cannot hold; use learn = "pixel" (or "fixed"), or '
                'scale = "std"'
            )

    @property
    def resolved_learn(self) -> str:
        """``learn`` with ``"auto"`` resolved: ``"fixed"``, ``"global"`` or ``"pixel"``."""
        if self.learn != "auto":
            return self.learn
        return _AUTO_LEARN.get(self.scale, "fixed") if isinstance(self.scale, str) else "fixed"

    def build(self, ctx: BuildContext) -> nn.Module:
        if isinstance(self.scale, str):
            start = data_scale(ctx.data, per_feature=self.scale == "feature_std")
        else:
            start = torch.tensor(self.scale, dtype=torch.float64)
        return _Gaussian(ctx.data_dim, start, self.resolved_learn)


#: Grey levels of 8-bit data: pixel values are k / 255, k = 0 .. 255.
LEVELS = 256
_HALF_BIN = 0.5 / (LEVELS - 1)
_EMPTY = torch.Size()


def _level(value: torch.Tensor) -> torch.Tensor:
    """The grey level ``k`` (an integer tensor) of data ``k / 255`` in [0, 1]."""
    return (value * (LEVELS - 1)).round().clamp(0, LEVELS - 1).long()


class _Quantized(dist.TorchDistribution):
    """A distribution over the 256 grey levels ``k / 255`` of one pixel (batch shape: the
    pixels); subclasses give the log-probabilities of the levels."""

    support = constraints.unit_interval

    @property
    def mean(self) -> torch.Tensor:
        levels = torch.arange(LEVELS, device=self._device()) / (LEVELS - 1)
        grid = levels.view((LEVELS,) + (1,) * len(self.batch_shape))
        probs = self.log_prob(grid.expand((LEVELS,) + self.batch_shape)).exp()
        return (probs * grid).sum(0)

    def _device(self) -> torch.device:
        raise NotImplementedError


class Categorical256(_Quantized):
    r"""A categorical over the grey levels :math:`k/255` of each pixel, on ``logits`` of
    shape ``batch_shape + (256,)``; values are in [0, 1] (``sample`` returns
    :math:`k/255`, ``log_prob`` reads :math:`k = \mathrm{round}(255 x)`)."""

    arg_constraints = {"logits": constraints.independent(constraints.real, 1)}

    def __init__(self, logits: torch.Tensor, validate_args=None) -> None:
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        super().__init__(logits.shape[:-1], _EMPTY, validate_args=validate_args)

    def _device(self) -> torch.device:
        return self.logits.device

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Categorical256, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + (LEVELS,))
        super(Categorical256, new).__init__(batch_shape, _EMPTY, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        k = _level(value)
        shape = torch.broadcast_shapes(k.shape, self.batch_shape)
        logits = self.logits.expand(shape + (LEVELS,))
        return logits.gather(-1, k.expand(shape).unsqueeze(-1)).squeeze(-1)

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        k = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
        return k.to(self.logits.dtype) / (LEVELS - 1)


class DiscretizedLogistic(_Quantized):
    r"""A logistic of mean :math:`\mu` and scale :math:`s = e^{\log s}` discretized to the
    levels :math:`x = k/255` (bins of width :math:`1/255` centred on them, the edge bins
    open; Salimans et al. 2017):

    .. math::
        P(k) = \sigma\Big(\frac{x + \frac{1}{510} - \mu}{s}\Big)
        - \sigma\Big(\frac{x - \frac{1}{510} - \mu}{s}\Big),

    with :math:`\sigma(-\infty)` for the lower edge at :math:`k = 0` and :math:`\sigma(
    \infty)` for the upper at :math:`k = 255`, so the 256 probabilities sum to one. It
    is computed as :math:`\log\sigma(a) + \log\sigma(-b) + \log(1 - e^{b - a})` (since
    :math:`\sigma(a) - \sigma(b) = \sigma(a)\sigma(-b)(1 - e^{b-a})`), which stays finite
    for any :math:`\mu` and :math:`s`; :math:`\log s` is clamped below at -20.
    """

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, validate_args=None) -> None:
        self.loc, self.log_scale = torch.broadcast_tensors(loc, log_scale)
        super().__init__(self.loc.shape, _EMPTY, validate_args=validate_args)

    def _device(self) -> torch.device:
        return self.loc.device

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape)
        new.log_scale = self.log_scale.expand(batch_shape)
        super(DiscretizedLogistic, new).__init__(batch_shape, _EMPTY, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        k = _level(value)
        x = k.to(self.loc.dtype) / (LEVELS - 1)
        log_s = self.log_scale.clamp(min=-20.0)
        inv_s = torch.exp(-log_s)
        centred = x - self.loc
        a = inv_s * (centred + _HALF_BIN)
        b = inv_s * (centred - _HALF_BIN)
        log_cdf_a = -F.softplus(-a)  # log sigma(a): everything below the bin's top
        log_sf_b = -F.softplus(b)  # log (1 - sigma(b)): everything above its bottom
        # log(1 - e^{b - a}) with b - a = -2 h / s; for tiny widths it is log(2 h / s)
        log_width = math.log(2 * _HALF_BIN) - log_s
        t = log_width.clamp(min=-15.0).exp()
        log_gap = torch.where(log_width < -15.0, log_width, torch.log(-torch.expm1(-t)))
        middle = log_cdf_a + log_sf_b + log_gap
        return torch.where(k == 0, log_cdf_a, torch.where(k == LEVELS - 1, log_sf_b, middle))

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
        x = self.loc + self.log_scale.exp() * (u.log() - (-u).log1p())
        return _level(x).to(self.loc.dtype) / (LEVELS - 1)


class _LikelihoodWithData(LikelihoodConfig):
    """A likelihood whose data must pass ``_data_ok``; the message says what it needs."""

    _needs: str

    def _data_ok(self, x: torch.Tensor) -> bool:
        raise NotImplementedError

    def check_data(self, x: torch.Tensor, *, binarized: bool, where: str) -> None:
        super().check_data(x, binarized=binarized, where=where)
        if not self._data_ok(x):
            raise DataError(f"the {self.kind} likelihood needs {self._needs.format(where=where)}")


class _EightBit(_LikelihoodWithData):
    support: ClassVar[str] = "eight_bit"
    _needs = (
        "8-bit grey levels (multiples of 1/255 in [0, 1]) but {where} has other values; use "
        'uint8 images (e.g. data.kind = "mnist" or an npz of uint8) or likelihood.kind = '
        '"gaussian"'
    )

    def _data_ok(self, x: torch.Tensor) -> bool:
        scaled = x * (LEVELS - 1)
        in_range = bool(((x >= 0) & (x <= 1)).all())
        return in_range and bool(((scaled - scaled.round()).abs() <= 1e-3).all())


class _Categorical256(nn.Module):
    params_per_dim = LEVELS
    params_last = True  # (data_dim, LEVELS) logits

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.data_dim = data_dim

    def _pixels(self, out: torch.Tensor) -> Categorical256:
        return Categorical256(out.unflatten(-1, (self.data_dim, LEVELS)))

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        return self._pixels(out).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self._pixels(out).mean


@LIKELIHOODS.register("categorical256")
@dataclass(frozen=True)
class Categorical256Likelihood(_EightBit):
    r"""8-bit grey-scale pixels as categoricals over 256 levels: the decoder gives 256
    logits per pixel (laid out pixel by pixel), :math:`p(x_i = k/255 | z) =
    \mathrm{softmax}(f_i(z))_k`. Needs data that are multiples of 1/255 in [0, 1]."""

    def build(self, ctx: BuildContext) -> nn.Module:
        return _Categorical256(ctx.data_dim)


class _DiscretizedLogistic(nn.Module):
    params_per_dim = 2

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.data_dim = data_dim

    def _pixels(self, out: torch.Tensor) -> DiscretizedLogistic:
        loc, log_scale = out.unflatten(-1, (2, self.data_dim)).unbind(-2)
        return DiscretizedLogistic(loc, log_scale)

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        return self._pixels(out).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self._pixels(out).mean


@LIKELIHOODS.register("discretized_logistic")
@dataclass(frozen=True)
class DiscretizedLogisticLikelihood(_EightBit):
    r"""8-bit grey-scale pixels as discretized logistics (Salimans et al. 2017; Kingma et
    al. 2016): the decoder gives a mean :math:`\mu_i` and a log-scale per pixel (all
    means first, then all log-scales), see :class:`DiscretizedLogistic`. Needs data that
    are multiples of 1/255 in [0, 1]; ``mean`` is the exact expectation over the levels."""

    def build(self, ctx: BuildContext) -> nn.Module:
        return _DiscretizedLogistic(ctx.data_dim)


class _Counts(_LikelihoodWithData):
    support: ClassVar[str] = "counts"
    _needs = (
        "counts (non-negative integers) but {where} has other values; use count data (e.g. "
        "an npz of integers) or a likelihood for real values"
    )

    def _data_ok(self, x: torch.Tensor) -> bool:
        return bool(((x >= 0) & (x == x.round())).all())


class _Poisson(nn.Module):
    params_per_dim = 1

    def __init__(self, link: str) -> None:
        super().__init__()
        self.link = link

    def rate(self, out: torch.Tensor) -> torch.Tensor:
        return out.exp() if self.link == "exp" else F.softplus(out) + 1e-6

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        return dist.Poisson(self.rate(out), validate_args=False).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.rate(out)


@LIKELIHOODS.register("poisson")
@dataclass(frozen=True)
class PoissonLikelihood(_Counts):
    r"""Independent Poisson counts, :math:`x_i | z \sim \mathrm{Poisson}(\lambda_i(z))`.

    Attributes:
        link: :math:`\lambda = \mathrm{softplus}(f) + 10^{-6}` (``"softplus"``) or
            :math:`e^{f}` (``"exp"``, the canonical log link).
    """

    link: Literal["softplus", "exp"] = "softplus"

    def build(self, ctx: BuildContext) -> nn.Module:
        return _Poisson(self.link)


class _NegativeBinomial(nn.Module):
    params_per_dim = 2

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.data_dim = data_dim

    def _params(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_count, logits = out.unflatten(-1, (2, self.data_dim)).unbind(-2)
        return F.softplus(raw_count) + 1e-6, logits

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        total_count, logits = self._params(out)
        return dist.NegativeBinomial(total_count, logits=logits, validate_args=False).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        total_count, logits = self._params(out)
        return total_count * logits.exp()


@LIKELIHOODS.register("negative_binomial")
@dataclass(frozen=True)
class NegativeBinomialLikelihood(_Counts):
    r"""Independent negative binomial counts (over-dispersed Poisson): the decoder gives
    :math:`r_i = \mathrm{softplus}(\cdot) + 10^{-6}` (all first) and logits :math:`\ell_i`,

    .. math::
        p(x_i = k | z) = \binom{k + r_i - 1}{k} \sigma(-\ell_i)^{r_i} \sigma(\ell_i)^k,
        \qquad E[x_i | z] = r_i e^{\ell_i}.
    """

    def build(self, ctx: BuildContext) -> nn.Module:
        return _NegativeBinomial(ctx.data_dim)
