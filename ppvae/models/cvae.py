r"""The conditional VAE :math:`p(x, z | y) = p(z)\, p(x | z, y)` for a label :math:`y`
(Sohn, Lee & Yan 2015; Kingma et al. 2014's M2 with the label always observed).

Model: :math:`z \sim p(z)`, :math:`x | z, y \sim p(x | f([z, \mathrm{onehot}(y)]))`;
guide: :math:`z \sim q(z | [x, \mathrm{onehot}(y)])`. The forward programs take the batch
``(x, y)``. ``generate(n, condition=c)`` draws images of class ``c``
(``ppvae sample RUN --condition 3``); without a condition it cycles through the classes.

Example:
    >>> from ppvae.spec import parse_spec
    >>> from ppvae.run import build
    >>> spec = parse_spec({"model": {"kind": "cvae", "latent_dim": 2, "hidden": [16]},
    ...                    "data": {"binarize": "static", "limit": 32}})
    >>> data, model, guide = build(spec)
    >>> model.generate(4, condition=3).shape
    torch.Size([4, 64])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from ppvae.data import Split
from ppvae.errors import DataError
from ppvae.models._common import (
    GaussianLayer,
    check_activation,
    check_latent_dim,
    check_sizes,
    one_hot,
)
from ppvae.models.base import MODELS, ModelConfig, ModelContext

__all__ = ["CVAE", "CVAEGuide", "CVAEConfig"]


class CVAE(PyroModule):
    """:math:`p(z) p(x | z, y)`."""

    def __init__(self, prior: nn.Module, decoder: nn.Module, likelihood, num_classes: int):
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        self.num_classes = num_classes

    def _decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = one_hot(y, self.num_classes, z).expand(*z.shape[:-1], self.num_classes)
        return self.decoder(torch.cat([z, c], dim=-1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self._decode(z, y)), obs=x)
        return z

    @torch.no_grad()
    def generate(self, n: int, condition: int | None = None) -> torch.Tensor:
        """Expected data for ``n`` draws of :math:`z`, of class ``condition`` (or the
        classes in turn when None)."""
        z = self.prior().sample((n,))
        if condition is None:
            y = torch.arange(n, device=z.device) % self.num_classes
        else:
            if not 0 <= int(condition) < self.num_classes:
                raise DataError(
                    f"condition {condition} is not a class of this model; allowed: 0 to {self.num_classes - 1}"
                )
            y = torch.full((n,), int(condition), device=z.device)
        return self.likelihood.mean(self._decode(z, y))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, guide: CVAEGuide, y: torch.Tensor) -> torch.Tensor:
        """Expected data at the mean of :math:`q(z | x, y)`."""
        return self.likelihood.mean(self._decode(guide.posterior(x, y).mean, y))


class CVAEGuide(PyroModule):
    """:math:`q(z | x, y)`."""

    def __init__(
        self, encoder: GaussianLayer, num_classes: int, trunk: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        self.trunk = trunk

    def posterior(self, x: torch.Tensor, y: torch.Tensor):
        h = x if self.trunk is None else self.trunk(x)
        return self.encoder(torch.cat([h, one_hot(y, self.num_classes, h)], dim=-1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x, y))


@MODELS.register("cvae")
@dataclass(frozen=True)
class CVAEConfig(ModelConfig):
    """A VAE conditioned on the data's labels (the data set must have them); its guide
    :math:`q(z | x, y)` is a Gaussian layer (``[guide]`` is not used)."""

    uses: ClassVar[frozenset[str]] = frozenset({"network", "prior", "likelihood"})
    needs_labels: ClassVar[bool] = True
    guide_form: ClassVar[str] = "q(z|x,y)"

    latent_dim: int = 10
    hidden: tuple[int, ...] = (256,)
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_latent_dim(self.latent_dim)
        check_sizes("model.hidden", self.hidden)
        check_activation(self.activation)

    def inputs(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        return split.x, split.y

    def build(self, ctx: ModelContext) -> tuple[CVAE, CVAEGuide]:
        if not ctx.has_labels:
            raise DataError(
                f"model.kind = 'cvae' needs labels but the {ctx.data_name} data has none; "
                "use a data set with labels (digits, mnist, npz with y)"
            )
        ctx.check_data()
        k = ctx.num_classes
        parts = ctx.components(self.latent_dim, self.hidden, self.activation)
        lik = ctx.likelihood.build(parts)
        decoder = ctx.decoder(
            self.latent_dim + k, tuple(reversed(self.hidden)), lik, self.activation
        )
        model = CVAE(ctx.prior.build(parts), decoder, lik, k)
        trunk, features = ctx.encoder_trunk(self.activation)
        encoder = GaussianLayer(parts, features + k, self.hidden, self.latent_dim)
        return model, CVAEGuide(encoder, k, trunk)
