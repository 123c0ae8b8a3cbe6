r"""A VAE with two stochastic layers (Burda, Grosse & Salakhutdinov 2016, Appendix C).

Model: :math:`z_2 \sim p(z_2)`, :math:`z_1 | z_2 \sim N(\mu(z_2), \sigma(z_2)^2)`,
:math:`x | z_1 \sim p(x | f(z_1))`. Guide (bottom-up): :math:`z_1 \sim q(z_1 | x)`,
:math:`z_2 \sim q(z_2 | z_1)`. Burda et al.'s MNIST architecture is
784-(200-200)-100-(100-100)-50 with tanh units: ``latent_dims = [100, 50]``,
``hidden = [200, 200]``, ``hidden2 = [100, 100]``.

Example:
    >>> import torch
    >>> from ppvae.spec import parse_spec
    >>> from ppvae.run import build
    >>> spec = parse_spec({"model": {"kind": "hvae", "latent_dims": [4, 2], "hidden": [16],
    ...                              "hidden2": [8]}, "data": {"binarize": "static", "limit": 32}})
    >>> data, model, guide = build(spec)
    >>> model.generate(3).shape
    torch.Size([3, 64])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from ppvae.errors import SpecError
from ppvae.models._common import GaussianLayer, check_activation, check_sizes, on_trunk
from ppvae.models.base import MODELS, ModelConfig, ModelContext

__all__ = ["HVAE", "HVAEGuide", "HVAEConfig"]


class HVAE(PyroModule):
    """:math:`p(z_2) p(z_1 | z_2) p(x | z_1)`."""

    def __init__(self, prior: nn.Module, z1_given_z2: nn.Module, decoder: nn.Module, likelihood):
        super().__init__()
        self.prior = prior
        self.z1_given_z2 = z1_given_z2
        self.decoder = decoder
        self.likelihood = likelihood

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.prior())
            z1 = pyro.sample("z1", self.z1_given_z2(z2))
            pyro.sample("x", self.likelihood(self.decoder(z1)), obs=x)
        return z1

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """Expected data for ``n`` ancestral draws of :math:`(z_2, z_1)`."""
        z2 = self.prior().sample((n,))
        z1 = self.z1_given_z2(z2).sample()
        return self.likelihood.mean(self.decoder(z1))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, guide: HVAEGuide) -> torch.Tensor:
        """Expected data at the mean of :math:`q(z_1 | x)`."""
        return self.likelihood.mean(self.decoder(guide.q_z1(x).mean))


class HVAEGuide(PyroModule):
    """:math:`q(z_1 | x) q(z_2 | z_1)`."""

    def __init__(self, q_z1: nn.Module, q_z2: nn.Module) -> None:
        super().__init__()
        self.q_z1 = q_z1
        self.q_z2 = q_z2

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", self.q_z1(x))
            pyro.sample("z2", self.q_z2(z1))


@MODELS.register("hvae")
@dataclass(frozen=True)
class HVAEConfig(ModelConfig):
    """Two stochastic layers; ``[prior]`` is the prior of the top layer ``z2``. The guide
    is built of Gaussian layers (``[guide]`` is not used).

    Attributes:
        latent_dims: sizes of ``z1`` (bottom) and ``z2`` (top).
        hidden: hidden sizes between ``x`` (the ``[network]``'s features) and ``z1``
            (both directions).
        hidden2: hidden sizes between ``z1`` and ``z2`` (both directions).
        activation: activation name.
    """

    uses: ClassVar[frozenset[str]] = frozenset({"network", "prior", "likelihood"})
    guide_form: ClassVar[str] = "q(z1|x) q(z2|z1)"

    latent_dims: tuple[int, ...] = (100, 50)
    hidden: tuple[int, ...] = (200, 200)
    hidden2: tuple[int, ...] = (100, 100)
    activation: str = "tanh"

    def __post_init__(self) -> None:
        if len(self.latent_dims) != 2:
            raise SpecError(
                f"model.latent_dims must list two sizes (z1, z2), got {list(self.latent_dims)}"
            )
        check_sizes("model.latent_dims", self.latent_dims)
        check_sizes("model.hidden", self.hidden)
        check_sizes("model.hidden2", self.hidden2)
        check_activation(self.activation)

    def build(self, ctx: ModelContext) -> tuple[HVAE, HVAEGuide]:
        ctx.check_data()
        d1, d2 = self.latent_dims
        parts = ctx.components(d2, self.hidden2, self.activation)
        lik = ctx.likelihood.build(parts)
        decoder = ctx.decoder(d1, tuple(reversed(self.hidden)), lik, self.activation)
        trunk, features = ctx.encoder_trunk(self.activation)
        model = HVAE(
            ctx.prior.build(parts),
            GaussianLayer(parts, d2, tuple(reversed(self.hidden2)), d1),
            decoder,
            lik,
        )
        guide = HVAEGuide(
            on_trunk(trunk, GaussianLayer(parts, features, self.hidden, d1)),
            GaussianLayer(parts, d1, self.hidden2, d2),
        )
        return model, guide
