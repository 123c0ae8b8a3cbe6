r"""The variational autoencoder as a pair of Pyro programs (Kingma & Welling 2014).

Model: :math:`z_n \sim p(z)`, :math:`x_n | z_n \sim p(x | f_\theta(z_n))`;
guide: :math:`z_n \sim q_\phi(z | x_n)`, both inside the plate ``"data"``. The prior,
the guide's distribution and the likelihood are pluggable modules (see
:mod:`ppvae.priors`, :mod:`ppvae.guides`, :mod:`ppvae.likelihoods`); the networks are MLPs or the
image networks of :mod:`ppvae.networks`.

Example:
    >>> import torch
    >>> from ppvae.models.vae import build_vae
    >>> model, guide = build_vae(data_dim=6, latent_dim=2, hidden=(16,))
    >>> from ppvae.infer.objectives import build_objective
    >>> loss = build_objective("elbo")(model, guide, torch.ones(5, 6))
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    >>> model.generate(3).shape
    torch.Size([3, 6])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import pyro
import torch
from pyro.nn import PyroModule
from torch import nn

from ppvae.context import BuildContext
from ppvae.errors import SpecError
from ppvae.models._common import (
    check_activation,
    check_latent_dim,
    check_sizes,
    kind_name,
    on_trunk,
    resolve_components,
    resolve_network,
)
from ppvae.models.base import MODELS, ModelConfig, ModelContext
from ppvae.networks import NetworkConfig

__all__ = ["VAE", "VAEGuide", "VAEConfig", "build_vae", "check_components"]


class VAE(PyroModule):
    """The generative model :math:`p(z) p(x|z)`.

    Args:
        prior: module returning :math:`p(z)` (event shape ``(latent_dim,)``).
        decoder: network from ``z`` to likelihood parameters.
        likelihood: module mapping decoder outputs to :math:`p(x|z)`.
    """

    def __init__(self, prior: nn.Module, decoder: nn.Module, likelihood: nn.Module) -> None:
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
        return z

    @torch.no_grad()
    def generate(self, n: int) -> torch.Tensor:
        """Expected data :math:`E[x | z]` for ``n`` draws :math:`z \\sim p(z)`."""
        z = self.prior().sample((n,))
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, guide: VAEGuide) -> torch.Tensor:
        """Expected data :math:`E[x | z]` at the guide's mean of :math:`q(z|x)`."""
        return self.likelihood.mean(self.decoder(guide.posterior(x).mean))


class VAEGuide(PyroModule):
    """The amortized guide :math:`q(z|x)`; ``posterior(x)`` returns the distribution."""

    def __init__(self, posterior: nn.Module) -> None:
        super().__init__()
        self.posterior = posterior

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.posterior(x))


def build_vae(
    data_dim: int,
    latent_dim: int,
    hidden: Sequence[int] = (256,),
    activation: str = "relu",
    *,
    prior="standard_normal",
    guide="diagonal_normal",
    likelihood="bernoulli",
    data: torch.Tensor | None = None,
    network: NetworkConfig | str = "mlp",
    event_shape: Sequence[int] | None = None,
) -> tuple[VAE, VAEGuide]:
    """A VAE model/guide pair from component kinds (names or config objects); ``data``
    (the training inputs) gives data-dependent starting values such as a Gaussian
    likelihood's scale; ``network`` (a :mod:`ppvae.networks` kind) reads and draws data
    of ``event_shape`` (e.g. ``(1, 8, 8)``; default ``(data_dim,)``)."""
    ctx = BuildContext(
        data_dim=data_dim,
        latent_dim=latent_dim,
        hidden=tuple(hidden),
        activation=activation,
        data=data,
    )
    prior_cfg, guide_cfg, lik_cfg = resolve_components(prior, guide, likelihood)
    check_components(prior_cfg, guide_cfg)
    net, shape = resolve_network(network, data_dim, event_shape)
    lik = lik_cfg.build(ctx)
    decoder = net.build_decoder(latent_dim, tuple(reversed(ctx.hidden)), shape, lik, activation)
    trunk = net.build_trunk(shape, activation)
    features = replace(ctx, data_dim=trunk.out_features) if trunk is not None else ctx
    if prior_cfg.needs_posterior:  # e.g. the VampPrior: shared weights
        posterior = on_trunk(trunk, guide_cfg.build(features))
        prior_module = prior_cfg.build(ctx, posterior=posterior)
    else:
        prior_module = prior_cfg.build(ctx)
        posterior = on_trunk(trunk, guide_cfg.build(features))
    return VAE(prior_module, decoder, lik), VAEGuide(posterior)


def check_components(prior, guide) -> None:
    """Refuse prior/guide configs that cannot work together (a :class:`SpecError`).

    A prior built on the guide's posterior (``needs_posterior``, the VampPrior) needs an
    amortized guide (``amortized``) whose density can be evaluated at any ``z``
    (``log_prob_anywhere``).
    """
    if prior.needs_posterior:
        if not guide.amortized:
            raise SpecError(
                f"prior.kind = {kind_name(prior)!r} is built on the guide's posterior network and "
                f"needs an amortized guide, but guide.kind = {kind_name(guide)!r} is not amortized; "
                'use an amortized guide such as "diagonal_normal"'
            )
        if not guide.log_prob_anywhere:
            raise SpecError(
                f"prior.kind = {kind_name(prior)!r} evaluates the guide's density at any z, which "
                f"guide.kind = {kind_name(guide)!r} cannot (it has no inverse); use "
                '"diagonal_normal", "full_normal", "iaf" or "spline"'
            )


@MODELS.register("vae")
@dataclass(frozen=True)
class VAEConfig(ModelConfig):
    """A VAE: an encoder (the ``[network]``'s trunk, then MLP layers of ``hidden``) giving
    the ``[guide]``'s :math:`q(z|x)`, and a decoder (``hidden`` reversed, then the
    ``[network]``'s image layers) giving the ``[likelihood]``'s parameters.

    Attributes:
        latent_dim: size of ``z``.
        hidden: MLP sizes between the encoder's features and ``z`` (both directions).
        activation: activation name.
    """

    offers_posterior: ClassVar[bool] = True

    latent_dim: int = 10
    hidden: tuple[int, ...] = (256,)
    activation: str = "relu"

    def __post_init__(self) -> None:
        check_latent_dim(self.latent_dim)
        check_sizes("model.hidden", self.hidden)
        check_activation(self.activation)

    def check_spec(self, spec) -> None:
        """Refuse prior/guide combinations that cannot work together."""
        check_components(spec.prior, spec.guide)

    def build(self, ctx: ModelContext) -> tuple[VAE, VAEGuide]:
        ctx.check_data()
        return build_vae(
            ctx.data_dim,
            self.latent_dim,
            self.hidden,
            self.activation,
            prior=ctx.prior,
            guide=ctx.guide,
            likelihood=ctx.likelihood,
            data=ctx.train.x,
            network=ctx.network,
            event_shape=ctx.data_shape(),
        )
