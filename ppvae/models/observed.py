r"""Fully observed models, fitted by maximum likelihood with the same engine.

With no latent site the guide is empty and every ELBO objective is the exact
log-likelihood, so ``ppvae train`` does maximum likelihood and ``ppvae evaluate`` reports
the exact :math:`\log p` (all importance weights equal).

* ``density``: a factorized density :math:`p(x) = \prod_i p(x_i | \theta_i)` with one set
  of likelihood parameters per feature (the ``[likelihood]`` kind), a baseline for the
  latent variable models.
* ``classifier``: :math:`p(y | x) = \mathrm{Cat}(\mathrm{softmax}(\mathrm{NN}(x)))` on
  labelled data; the batch is ``(x, y)``.

Example:
    >>> from ppvae.spec import parse_spec
    >>> from ppvae.run import build
    >>> spec = parse_spec({"model": {"kind": "classifier", "hidden": [16]}, "data": {"limit": 32}})
    >>> data, model, guide = build(spec)
    >>> model.predict_proba(data.test.x[:3]).shape
    torch.Size([3, 10])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from ppvae.context import BuildContext
from ppvae.data import Split
from ppvae.errors import DataError
from ppvae.models._common import check_activation, check_sizes, on_trunk
from ppvae.models.base import MODELS, ModelConfig, ModelContext
from ppvae.nn import MLP

__all__ = ["FactorizedDensity", "Classifier", "EmptyGuide", "DensityConfig", "ClassifierConfig"]


class EmptyGuide(PyroModule):
    """The guide of a model without latent sites: it samples nothing."""

    def forward(self, *args: torch.Tensor) -> None:
        return None


class FactorizedDensity(PyroModule):
    r""":math:`p(x) = \prod_i p(x_i | \theta_i)`."""

    def __init__(self, likelihood: nn.Module, data_dim: int) -> None:
        super().__init__()
        self.likelihood = likelihood
        self.params = nn.Parameter(torch.zeros(data_dim * likelihood.params_per_dim))

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", self.likelihood(self.params.expand(x.shape[0], -1)), obs=x)

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """``n`` independent draws from :math:`p(x)`."""
        return self.likelihood(self.params.expand(n, -1)).sample().float()


class Classifier(PyroModule):
    r""":math:`p(y | x) = \mathrm{Cat}(\mathrm{softmax}(\mathrm{NN}(x)))`."""

    def __init__(self, net: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Categorical(logits=self.net(x)), obs=y)

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities :math:`p(y | x)`, shape ``(N, num_classes)``."""
        return torch.softmax(self.net(x), dim=-1)


@MODELS.register("density")
@dataclass(frozen=True)
class DensityConfig(ModelConfig):
    """A factorized density of the ``[likelihood]`` kind, one parameter set per feature
    (no latent: ``[prior]`` and ``[guide]`` are not used)."""

    uses: ClassVar[frozenset[str]] = frozenset({"likelihood"})

    def build(self, ctx: ModelContext) -> tuple[FactorizedDensity, EmptyGuide]:
        ctx.check_data()
        parts = BuildContext(
            data_dim=ctx.data_dim, latent_dim=1, image_shape=ctx.image_shape, data=ctx.train.x
        )
        return FactorizedDensity(ctx.likelihood.build(parts), ctx.data_dim), EmptyGuide()


@MODELS.register("classifier")
@dataclass(frozen=True)
class ClassifierConfig(ModelConfig):
    """A classifier :math:`p(y|x)`: the ``[network]``'s trunk, then an MLP (needs labelled
    data; no latent and a categorical likelihood of its own: ``[prior]``, ``[guide]`` and
    ``[likelihood]`` are not used)."""

    uses: ClassVar[frozenset[str]] = frozenset({"network"})
    needs_labels: ClassVar[bool] = True

    hidden: tuple[int, ...] = (256,)
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_sizes("model.hidden", self.hidden)
        check_activation(self.activation)

    def inputs(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        return split.x, split.y

    def build(self, ctx: ModelContext) -> tuple[Classifier, EmptyGuide]:
        if not ctx.has_labels:
            raise DataError(
                f"model.kind = 'classifier' needs labels but the {ctx.data_name} data has none; "
                "use a data set with labels (digits, mnist, npz with y)"
            )
        trunk, features = ctx.encoder_trunk(self.activation)
        net = on_trunk(trunk, MLP(features, self.hidden, ctx.num_classes, self.activation))
        return Classifier(net, ctx.num_classes), EmptyGuide()
