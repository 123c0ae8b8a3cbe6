r"""Mixture models with a discrete latent class summed out exactly by enumeration.

With ``latent_dim > 0`` (a Gaussian-mixture VAE, e.g. Dilokthanakul et al. 2016 without
their extra latent): :math:`c \sim \mathrm{Cat}(\pi)`, :math:`z | c \sim N(\mu_c,
\mathrm{diag}\,\sigma_c^2)`, :math:`x | z \sim p(x | f(z))`; the guide samples only
:math:`z \sim q(z | x)`. With ``latent_dim = 0``, a plain mixture :math:`c \sim
\mathrm{Cat}(\pi)`, :math:`x | c \sim p(x | \theta_c)` fitted by maximum likelihood (an
empty guide). In both, the class site is marked ``infer={"enumerate": "parallel"}`` in the
model and ``objective.kind = "enum_elbo"`` (``TraceEnum_ELBO``) sums it out in one
vectorized pass, so the objective is exact in :math:`c`. ``model.cluster_probs(x, guide)``
gives :math:`p(c | x)` (at the guide's mean of :math:`z` for the VAE variant).

Example:
    >>> from ppvae.spec import parse_spec
    >>> from ppvae.run import build
    >>> spec = parse_spec({"model": {"kind": "mixture", "num_components": 3, "latent_dim": 0},
    ...                    "objective": {"kind": "enum_elbo"},
    ...                    "data": {"binarize": "static", "limit": 32}})
    >>> data, model, guide = build(spec)
    >>> model.cluster_probs(data.train.x[:5], guide).shape
    torch.Size([5, 3])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from ppvae.errors import SpecError
from ppvae.models._common import GaussianLayer, check_activation, check_sizes, on_trunk
from ppvae.models.base import MODELS, ModelConfig, ModelContext

__all__ = ["MixtureModel", "MixtureGuide", "MixtureConfig"]


class MixtureModel(PyroModule):
    """:math:`p(c) p(z | c) p(x | z)` (or :math:`p(c) p(x | c)` without ``z``)."""

    def __init__(
        self,
        num_components: int,
        latent_dim: int,
        decoder: nn.Module | None,
        likelihood,
        data_dim: int,
    ):
        super().__init__()
        self.num_components = num_components
        self.latent_dim = latent_dim
        self.likelihood = likelihood
        self.logits = nn.Parameter(torch.zeros(num_components))
        if latent_dim > 0:
            self.decoder = decoder
            self.locs = nn.Parameter(torch.randn(num_components, latent_dim))
            self.raw_scales = nn.Parameter(torch.zeros(num_components, latent_dim))
        else:
            self.decoder = None
            ppd = likelihood.params_per_dim
            self.component_params = nn.Parameter(0.1 * torch.randn(num_components, data_dim * ppd))

    def _z_given_c(self, c: torch.Tensor) -> dist.Distribution:
        return dist.Normal(self.locs[c], F.softplus(self.raw_scales[c]) + 1e-4).to_event(1)

    def forward(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample(
                "c", dist.Categorical(logits=self.logits), infer={"enumerate": "parallel"}
            )
            if self.decoder is not None:
                z = pyro.sample("z", self._z_given_c(c))
                out = self.decoder(z)
            else:
                out = self.component_params[c]
            pyro.sample("x", self.likelihood(out), obs=x)

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """Expected data for ``n`` ancestral draws (classes in proportion to :math:`\\pi`)."""
        c = dist.Categorical(logits=self.logits).sample((n,))
        if self.decoder is None:
            return self.likelihood.mean(self.component_params[c])
        return self.likelihood.mean(self.decoder(self._z_given_c(c).sample()))

    @torch.no_grad()
    def cluster_probs(self, x: torch.Tensor, guide: MixtureGuide) -> torch.Tensor:
        r""":math:`p(c | x)` for the plain mixture; :math:`p(c | z = E_q[z|x])` otherwise."""
        log_prior = torch.log_softmax(self.logits, -1)
        if self.decoder is None:
            params = self.component_params[:, None, :]  # (C, 1, D * ppd)
            log_lik = self.likelihood(params).log_prob(x)  # (C, N)
        else:
            z = guide.posterior(x).mean
            c = torch.arange(self.num_components, device=x.device)[:, None]
            log_lik = self._z_given_c(c).log_prob(z)
        return torch.softmax(log_prior[:, None] + log_lik, dim=0).T

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, guide: MixtureGuide) -> torch.Tensor:
        if self.decoder is None:
            c = self.cluster_probs(x, guide).argmax(-1)
            return self.likelihood.mean(self.component_params[c])
        return self.likelihood.mean(self.decoder(guide.posterior(x).mean))


class MixtureGuide(PyroModule):
    """:math:`q(z | x)`, or nothing for the plain mixture (the class is enumerated)."""

    def __init__(self, posterior: nn.Module | None) -> None:
        super().__init__()
        self.posterior = posterior

    def forward(self, x: torch.Tensor) -> None:
        if self.posterior is None:
            return
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x))


@MODELS.register("mixture")
@dataclass(frozen=True)
class MixtureConfig(ModelConfig):
    """A discrete class with (``latent_dim > 0``) or without a continuous latent; the
    class-conditional prior :math:`p(z | c)` and the Gaussian guide are its own (``[prior]``
    and ``[guide]`` are not used), and the class is summed out by an enumerating objective.

    Attributes:
        num_components: number of classes :math:`C`.
        latent_dim: size of :math:`z` (0: a plain mixture of the likelihood).
        hidden: encoder/decoder hidden sizes (with ``latent_dim > 0``).
        activation: activation name.
    """

    uses: ClassVar[frozenset[str]] = frozenset({"network", "likelihood"})

    num_components: int = 10
    latent_dim: int = 10
    hidden: tuple[int, ...] = (256,)
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.num_components < 1:
            raise SpecError(f"model.num_components must be at least 1, got {self.num_components}")
        if self.latent_dim < 0:
            raise SpecError(f"model.latent_dim must be non-negative, got {self.latent_dim}")
        check_sizes("model.hidden", self.hidden)
        check_activation(self.activation)

    @property
    def needs_enumeration(self) -> str:
        return "model.kind = 'mixture', whose class is summed out by enumeration,"

    def used_sections(self) -> tuple[frozenset[str], str]:
        """A plain mixture (``latent_dim = 0``) has no networks for ``[network]`` to shape."""
        if self.latent_dim == 0:
            return self.uses - {
                "network"
            }, "model.latent_dim = 0 (a plain mixture) builds no networks"
        return self.uses, ""

    def build(self, ctx: ModelContext) -> tuple[MixtureModel, MixtureGuide]:
        ctx.check_data()
        parts = ctx.components(max(self.latent_dim, 1), self.hidden, self.activation)
        lik = ctx.likelihood.build(parts)
        if self.latent_dim == 0:
            return MixtureModel(self.num_components, 0, None, lik, ctx.data_dim), MixtureGuide(None)
        decoder = ctx.decoder(self.latent_dim, tuple(reversed(self.hidden)), lik, self.activation)
        model = MixtureModel(self.num_components, self.latent_dim, decoder, lik, ctx.data_dim)
        trunk, features = ctx.encoder_trunk(self.activation)
        posterior = on_trunk(trunk, GaussianLayer(parts, features, self.hidden, self.latent_dim))
        return model, MixtureGuide(posterior)
