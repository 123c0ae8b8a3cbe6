r"""Amortized guides :math:`q(z | x)`, one registry entry each.

A guide component is an ``nn.Module`` whose ``forward(x)`` maps a batch of data
``(..., data_dim)`` to a Pyro distribution over ``z`` with ``event_shape ==
(latent_dim,)``; the model's guide program samples it inside the data plate. Every guide
here is reparameterized.

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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ppvae.context import BuildContext
from ppvae.distributions import ReparamDiagonalNormal
from ppvae.errors import SpecError
from ppvae.nn import MLP
from ppvae.registry import Registry

__all__ = ["GUIDES", "GuideConfig", "DiagonalNormalGuide", "DiagonalNormalEncoder"]


class GuideConfig(abc.ABC):
    """Options of one guide kind (the ``[guide]`` section)."""

    kind: str
    #: Whether the guide maps each data point to its own q(z|x) (VampPrior needs it).
    amortized: bool = True

    @abc.abstractmethod
    def build(self, ctx: BuildContext) -> nn.Module:
        """The module mapping ``x`` to the distribution ``q(z | x)``."""


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
        if not self.min_scale >= 0:
            raise SpecError(f"guide.min_scale must be non-negative, got {self.min_scale}")

    def build(self, ctx: BuildContext) -> nn.Module:
        return DiagonalNormalEncoder(ctx, self.min_scale)
