"""Helpers the zoo's model/guide builders share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ppvae.context import BuildContext
from ppvae.distributions import ReparamDiagonalNormal
from ppvae.errors import SpecError
from ppvae.networks import NETWORKS, NetworkConfig
from ppvae.nn import MLP, make_activation

__all__ = [
    "GaussianLayer",
    "Encoded",
    "on_trunk",
    "check_latent_dim",
    "check_sizes",
    "check_activation",
    "one_hot",
    "kind_name",
    "resolve_components",
    "resolve_network",
]


def check_sizes(where: str, sizes: Sequence[int], *, allow_empty: bool = True) -> None:
    """Every size at least 1 (and at least one size unless ``allow_empty``)."""
    if not allow_empty and not sizes:
        raise SpecError(f"{where} must list at least one size")
    if any(int(h) < 1 for h in sizes):
        raise SpecError(f"{where} sizes must be at least 1, got {list(sizes)}")


def check_latent_dim(latent_dim: int) -> None:
    """``model.latent_dim`` at least 1."""
    if latent_dim < 1:
        raise SpecError(f"model.latent_dim must be at least 1, got {latent_dim}")


def check_activation(name: str) -> None:
    make_activation(name)


def kind_name(cfg) -> str:
    """A component config's ``kind`` (its class name when it has none), for messages."""
    return getattr(cfg, "kind", type(cfg).__name__)


def resolve_components(prior, guide, likelihood) -> tuple:
    """The prior, guide and likelihood configs of a builder's arguments: a registered
    kind's name becomes its default config; a config object is kept as it is."""
    from ppvae.guides import GUIDES
    from ppvae.likelihoods import LIKELIHOODS
    from ppvae.priors import PRIORS

    return (
        PRIORS.get(prior)() if isinstance(prior, str) else prior,
        GUIDES.get(guide)() if isinstance(guide, str) else guide,
        LIKELIHOODS.get(likelihood)() if isinstance(likelihood, str) else likelihood,
    )


def resolve_network(
    network, data_dim: int, event_shape: Sequence[int] | None, what: str = "the data"
) -> tuple[NetworkConfig, tuple[int, ...]]:
    """The ``[network]`` config of a builder's argument (a registered kind's name becomes
    its default config) and the event shape of the points it reads (``(data_dim,)`` when
    none is given), refused in one sentence where the kind cannot read them."""
    config = NETWORKS.get(network)() if isinstance(network, str) else network
    shape = tuple(event_shape) if event_shape else (data_dim,)
    config.check_shape(shape, what)
    return config, shape


def one_hot(y: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    """One-hot float encoding of integer labels, in ``like``'s dtype and device."""
    return F.one_hot(y.long(), num_classes).to(like.dtype)


class GaussianLayer(nn.Module):
    r"""An MLP from an input to :math:`N(\mu, \mathrm{diag}\,\sigma^2)` over ``out`` dims,
    returned as ppvae's :class:`~ppvae.distributions.ReparamDiagonalNormal`."""

    def __init__(self, ctx: BuildContext, in_features: int, hidden: Sequence[int], out: int):
        super().__init__()
        self.out = out
        self.net = MLP(in_features, tuple(hidden), 2 * out, ctx.activation)

    def forward(self, h: torch.Tensor) -> ReparamDiagonalNormal:
        loc, raw = self.net(h).split(self.out, dim=-1)
        return ReparamDiagonalNormal(loc, F.softplus(raw) + 1e-4)


class Encoded(nn.Module):
    """A head on an encoder trunk's features: ``forward(x, *rest) = head(trunk(x), *rest)``
    (the trunk of an image network, :mod:`ppvae.networks`)."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor, *rest: torch.Tensor):  # noqa: D102
        return self.head(self.trunk(x), *rest)


def on_trunk(trunk: nn.Module | None, head: nn.Module) -> nn.Module:
    """``head`` on ``trunk``'s features (:class:`Encoded`); ``head`` itself without a trunk
    (an MLP reading the flat data)."""
    return head if trunk is None else Encoded(trunk, head)
