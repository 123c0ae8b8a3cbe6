r"""Likelihoods :math:`p(x | z)`: how decoder outputs become a distribution over data.

A likelihood is an ``nn.Module`` with ``params_per_dim`` (decoder outputs per data
feature) whose ``forward(out)`` maps decoder outputs ``(..., data_dim * params_per_dim)``
to a Pyro distribution with ``event_shape == (data_dim,)``, and whose ``mean(out)`` gives
the expected data (used for sample grids and reconstructions). Options live in a frozen
dataclass registered in :data:`LIKELIHOODS`; its ``check_data`` refuses data the
likelihood cannot model, with one sentence saying what to change.

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
from typing import Literal

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ppvae.context import BuildContext
from ppvae.errors import DataError, SpecError
from ppvae.registry import Registry

__all__ = [
    "LIKELIHOODS",
    "LikelihoodConfig",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
]


class LikelihoodConfig(abc.ABC):
    """Options of one likelihood kind (the ``[likelihood]`` section)."""

    kind: str

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

    def build(self, ctx: BuildContext) -> nn.Module:
        return _ContinuousBernoulli()

    def check_data(self, x: torch.Tensor, *, binarized: bool, where: str) -> None:
        super().check_data(x, binarized=binarized, where=where)
        if (x < 0).any() or (x > 1).any():
            raise DataError(
                f"the continuous_bernoulli likelihood needs data in [0, 1] but {where} has "
                'values outside it; rescale the data or use likelihood.kind = "gaussian"'
            )


class _Gaussian(nn.Module):
    params_per_dim = 1

    def __init__(self, data_dim: int, scale: float, learn: str) -> None:
        super().__init__()
        self.learn = learn
        raw = math.log(math.expm1(scale))  # softplus^-1
        if learn == "fixed":
            self.register_buffer("raw_scale", torch.tensor(raw))
        elif learn == "global":
            self.raw_scale = nn.Parameter(torch.tensor(raw))
        else:
            self.raw_scale = nn.Parameter(torch.full((data_dim,), raw))

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale) + 1e-6

    def forward(self, out: torch.Tensor) -> dist.Distribution:
        return dist.Normal(out, self.scale.expand_as(out), validate_args=False).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out


@LIKELIHOODS.register("gaussian")
@dataclass(frozen=True)
class GaussianLikelihood(LikelihoodConfig):
    r"""Independent Gaussian features, :math:`x_i | z \sim N(f_i(z), \sigma^2)`.

    Attributes:
        scale: :math:`\sigma` (the initial value when learned).
        learn: ``"fixed"`` keeps :math:`\sigma`; ``"global"`` learns one :math:`\sigma`;
            ``"pixel"`` learns one per feature.
    """

    scale: float = 0.1
    learn: Literal["fixed", "global", "pixel"] = "fixed"

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise SpecError(f"likelihood.scale must be positive, got {self.scale}")

    def build(self, ctx: BuildContext) -> nn.Module:
        return _Gaussian(ctx.data_dim, self.scale, self.learn)
