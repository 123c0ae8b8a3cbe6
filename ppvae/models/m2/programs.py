r"""M2's model/guide pair: the generative model :math:`p(y) p(z) p(x | y, z)` with the
classification term, and the guide :math:`q(y|x)\,q(z|x,y)`, summing over :math:`y` by
enumeration or explicitly (:mod:`ppvae.models.m2.weighting`); see :mod:`ppvae.models.m2`
for the bound."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from ppvae.context import BuildContext
from ppvae.errors import SpecError
from ppvae.models._common import kind_name, one_hot, resolve_components, resolve_network
from ppvae.models.m2.features import Features, M1Features
from ppvae.models.m2.weighting import ClassWeighted, class_weights
from ppvae.networks import NetworkConfig
from ppvae.nn import MLP, broadcast_cat

__all__ = ["M2", "M2Guide", "build_m2", "SUM_Y"]

#: How the class variable is summed out: ``sum_y`` values.
SUM_Y = ("enumerate", "explicit")

# Logit of the classes a labelled point does not have: exp(-1e4) is exactly 0 in
# float32 and float64, and 0 * 1e4 = 0 (an infinite logit would give 0 * inf = NaN).
_OFF = -1e4

_cat = broadcast_cat


class M2(PyroModule):
    r"""The generative model :math:`p(y) p(z) p(x | y, z)` of M2, with the classification
    term. ``forward(x, y)`` takes labels with ``-1`` for unlabelled points.

    Args:
        prior: module returning :math:`p(z)`.
        decoder: network from :math:`[z, \mathrm{onehot}(y)]` to likelihood parameters.
        likelihood: module mapping decoder outputs to :math:`p(x|y,z)`.
        classifier: the guide's network for :math:`q(y|x)` logits (shared with the guide:
            the explicit sum and the classification term need it).
        num_classes: :math:`C`.
        sum_y: ``"enumerate"`` or ``"explicit"``.
        aux_scale: :math:`\alpha'`, the weight of :math:`\log q(y|x)` per labelled point.
        features: the data map (raw data, or M1 features).
    """

    def __init__(
        self,
        prior: nn.Module,
        decoder: nn.Module,
        likelihood: nn.Module,
        classifier: nn.Module,
        num_classes: int,
        sum_y: str = "enumerate",
        aux_scale: float = 0.0,
        features: nn.Module | None = None,
        trunk: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if sum_y not in SUM_Y:
            raise SpecError(f"model.sum_y must be one of {', '.join(SUM_Y)}, got {sum_y!r}")
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        self.classifier = classifier
        self.features = features if features is not None else Features(None)
        self.trunk = trunk
        self.num_classes = num_classes
        self.sum_y = sum_y
        self.aux_scale = float(aux_scale)

    def encoded(self, data: torch.Tensor) -> torch.Tensor:
        """What the classifier and the encoder read: the image trunk's features of the
        data (shared with the guide), or the data themselves."""
        return data if self.trunk is None else self.trunk(data)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        c = self.num_classes
        data = self.features(x)
        needs_logits = self.aux_scale or self.sum_y == "explicit"
        logits = self.classifier(self.encoded(data)) if needs_logits else None
        with pyro.plate("data", x.shape[0]):
            if self.sum_y == "enumerate":
                y_all = pyro.sample("y", dist.Categorical(logits=data.new_zeros(c)))
                z = pyro.sample("z", self.prior())
                out = self.decoder(_cat(z, one_hot(y_all, c, data)))
                pyro.sample("x", self.likelihood(out), obs=data)
            else:
                weights, _ = class_weights(logits, y, c)
                log_py = data.new_full((c,), -math.log(c))
                z = pyro.sample("z", ClassWeighted(self.prior(), weights, log_py))
                eye = torch.eye(c, dtype=data.dtype, device=data.device)
                out = self.decoder(_cat(z, eye))
                pyro.sample(
                    "x", ClassWeighted(self.likelihood(out), weights, shared_value=True), obs=data
                )
            if self.aux_scale:
                labelled = y >= 0
                log_q = torch.log_softmax(logits, -1).gather(-1, y.clamp(min=0).unsqueeze(-1))
                log_q = log_q.squeeze(-1)
                pyro.factor(
                    "aux", self.aux_scale * torch.where(labelled, log_q, torch.zeros_like(log_q))
                )

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`q(y|x)`, shape ``(N, C)``."""
        return torch.softmax(self.classifier(self.encoded(self.features(x))), -1)

    @torch.no_grad()
    def generate(
        self, n: int, y: torch.Tensor | None = None, condition: int | None = None
    ) -> torch.Tensor:
        r"""Expected data :math:`E[x | y, z]` for ``n`` draws :math:`z \sim p(z)` and
        :math:`y \sim p(y)`, or the given labels ``y`` of shape ``(n,)``, or all of class
        ``condition`` (``ppvae sample --condition``)."""
        device = next(iter(self.decoder.parameters())).device
        if condition is not None:
            if not 0 <= condition < self.num_classes:
                raise SpecError(
                    f"the class to condition on must be in 0 .. {self.num_classes - 1}, "
                    f"got {condition}"
                )
            y = torch.full((n,), condition, device=device)
        if y is None:
            y = torch.randint(self.num_classes, (n,), device=device)
        z = self.prior().sample((n,))
        out = self.decoder(_cat(z, one_hot(y.to(device), self.num_classes, z)))
        return self.features.decode(self.likelihood.mean(out))

    @torch.no_grad()
    def generate_by_class(self, per_class: int) -> torch.Tensor:
        """``per_class`` samples of every class, class by class: shape
        ``(C * per_class, D)`` (a grid with ``per_class`` columns has one row per class)."""
        device = next(iter(self.decoder.parameters())).device
        y = torch.arange(self.num_classes, device=device).repeat_interleave(per_class)
        return self.generate(len(y), y)

    @torch.no_grad()
    def reconstruct(
        self, x: torch.Tensor, guide: M2Guide, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        r""":math:`E[x | y, z]` at the mean of :math:`q(z|x,y)`, ``y`` the classifier's
        guess where not given (None, or ``-1`` entries)."""
        data = self.features(x)
        h = guide.encoded(data)
        guess = self.classifier(h).argmax(-1)
        y = guess if y is None else torch.where(y >= 0, y.to(guess.device), guess)
        onehot = one_hot(y, self.num_classes, data)
        z = guide.encoder(h, onehot).mean
        return self.features.decode(self.likelihood.mean(self.decoder(_cat(z, onehot))))


class M2Guide(PyroModule):
    r"""The guide :math:`q(y|x)\,q(z|x,y)` of M2; ``forward(x, y)`` as the model's."""

    def __init__(
        self,
        classifier: nn.Module,
        encoder: nn.Module,
        num_classes: int,
        sum_y: str = "enumerate",
        features: nn.Module | None = None,
        trunk: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.encoder = encoder
        self.features = features if features is not None else Features(None)
        self.trunk = trunk
        self.num_classes = num_classes
        self.sum_y = sum_y

    def encoded(self, data: torch.Tensor) -> torch.Tensor:
        """What the classifier and the encoder read (see :meth:`M2.encoded`)."""
        return data if self.trunk is None else self.trunk(data)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        c = self.num_classes
        data = self.features(x)
        h = self.encoded(data)
        logits = self.classifier(h)
        with pyro.plate("data", x.shape[0]):
            if self.sum_y == "enumerate":
                labelled = (y >= 0).unsqueeze(-1)
                point_mass = torch.full_like(logits, _OFF).scatter(
                    -1, y.clamp(min=0).unsqueeze(-1), 0.0
                )
                q_logits = torch.where(labelled, point_mass, logits)
                y_all = pyro.sample(
                    "y", dist.Categorical(logits=q_logits), infer={"enumerate": "parallel"}
                )
                pyro.sample("z", self.encoder(h, one_hot(y_all, c, data)))
            else:
                weights, log_w = class_weights(logits, y, c)
                eye = torch.eye(c, dtype=data.dtype, device=data.device)
                q = self.encoder(h.unsqueeze(-2), eye)
                pyro.sample("z", ClassWeighted(q, weights, log_w))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`q(y|x)`, shape ``(N, C)``."""
        return torch.softmax(self.classifier(self.encoded(self.features(x))), -1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable class under :math:`q(y|x)`, shape ``(N,)``."""
        return self.predict_proba(x).argmax(-1)


def build_m2(
    data_dim: int,
    num_classes: int,
    latent_dim: int,
    hidden: Sequence[int] = (500,),
    activation: str = "softplus",
    *,
    prior="standard_normal",
    guide="diagonal_normal",
    likelihood="bernoulli",
    sum_y: str = "enumerate",
    aux_scale: float = 0.0,
    m1: M1Features | None = None,
    data: torch.Tensor | None = None,
    network: NetworkConfig | str = "mlp",
    event_shape: Sequence[int] | None = None,
) -> tuple[M2, M2Guide]:
    """An M2 model/guide pair from sizes and component kinds (names or config objects).

    ``data_dim`` is the size of what M2 models (the M1 latent size when ``m1`` is given);
    ``aux_scale`` the weight :math:`\\alpha'` of :math:`\\log q(y|x)` per labelled point;
    ``data`` what the likelihood models (a sample), for data-dependent starting values;
    ``network`` (a :mod:`ppvae.networks` kind) reads and draws data of ``event_shape``
    (default ``(data_dim,)``); its encoder trunk is shared by :math:`q(y|x)` and
    :math:`q(z|x,y)`.
    """
    hidden = tuple(hidden)
    prior_cfg, guide_cfg, lik_cfg = resolve_components(prior, guide, likelihood)
    if prior_cfg.needs_posterior:
        raise SpecError(
            f"prior.kind = {kind_name(prior_cfg)!r} is built on "
            "an amortized guide q(z|x), which M2 "
            "does not have (its guide is q(z|x,y)); use a prior such as "
            '"standard_normal", "mixture" or "flow"'
        )
    ctx = BuildContext(
        data_dim=data_dim,
        latent_dim=latent_dim,
        hidden=hidden,
        activation=activation,
        num_classes=num_classes,
        data=data,
    )
    what = "the M1 features M2 models" if m1 is not None else "the data"
    net, shape = resolve_network(network, data_dim, event_shape, what)
    lik = lik_cfg.build(ctx)
    trunk = net.build_trunk(shape, activation)
    reads = dataclasses.replace(ctx, data_dim=trunk.out_features) if trunk is not None else ctx
    classifier = MLP(reads.data_dim, hidden, num_classes, activation)
    encoder = guide_cfg.build_conditional(reads, num_classes)
    decoder = net.build_decoder(
        latent_dim + num_classes, tuple(reversed(hidden)), shape, lik, activation
    )
    features = Features(m1)
    model = M2(
        prior_cfg.build(ctx),
        decoder,
        lik,
        classifier,
        num_classes,
        sum_y,
        aux_scale,
        features,
        trunk,
    )
    return model, M2Guide(classifier, encoder, num_classes, sum_y, features, trunk)
