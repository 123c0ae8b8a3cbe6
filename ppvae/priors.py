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

Example:
    >>> from ppvae.priors import PRIORS, BuildContext
    >>> prior = PRIORS.get("standard_normal")().build(BuildContext(data_dim=4, latent_dim=2))
    >>> prior().event_shape
    torch.Size([2])
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from torch import nn

from ppvae.context import BuildContext
from ppvae.registry import Registry

__all__ = ["PRIORS", "PriorConfig", "StandardNormalPrior", "BuildContext"]


class PriorConfig(abc.ABC):
    """Options of one prior kind (the ``[prior]`` section)."""

    kind: str

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
