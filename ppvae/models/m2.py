r"""Semi-supervised learning with the M2 model of Kingma, Rezende, Mohamed & Welling (2014,
*Semi-Supervised Learning with Deep Generative Models*, NeurIPS), as a pair of Pyro
programs.

Model: :math:`y_n \sim \mathrm{Cat}(1/C)`, :math:`z_n \sim p(z)` (the ``[prior]``),
:math:`x_n | y_n, z_n \sim p(x | f_\theta(z_n, y_n))` (the ``[likelihood]``; the decoder
is an MLP on :math:`[z, \mathrm{onehot}(y)]`). Guide: a classifier
:math:`q_\phi(y | x)` (an MLP) and :math:`q_\phi(z | x, y)` (an encoder on
:math:`[x, \mathrm{onehot}(y)]`, ppvae's diagonal Gaussian or any ``[guide]`` kind).

One objective covers a minibatch that mixes both kinds of points; a label of ``-1``
(:data:`ppvae.data.UNLABELLED`) marks an unlabelled point. Per point the bound is

.. math::

    \mathcal L(x, y) &= E_{q(z|x,y)}[\log p(x|y,z) + \log p(y) + \log p(z)
        - \log q(z|x,y)] + \alpha' \log q(y|x)            &\text{(labelled)}\\
    \mathcal U(x) &= \sum_y q(y|x)\,\mathcal L_0(x, y) + \mathcal H[q(y|x)]
        &\text{(unlabelled)}

(:math:`\mathcal L_0` is :math:`\mathcal L` without the classification term). The sum
over :math:`y` is exact, by one of two routes (``sum_y``):

* ``"enumerate"``: the guide samples a site ``"y"`` marked for parallel enumeration, and
  ``TraceEnum_ELBO`` (objective ``enum_elbo``) sums it out. A labelled point's guide
  distribution is a point mass on its label, so its sum has one non-zero term and is
  :math:`\mathcal L(x, y)`: the label is observed through the guide.
* ``"explicit"``: the guide draws one :math:`z_c \sim q(z|x,c)` per class (site ``"z"``
  with event shape ``(C, latent_dim)``) and every site's log-density is the
  :math:`q(y|x)`-weighted sum over classes (:class:`ClassWeighted`), plus
  :math:`\log q(y|x)` weighted in the guide (the entropy). With a one-hot weight for
  labelled points this is the same bound, written without a discrete site, so the
  plain ``elbo``, ``meanfield_elbo``, ``iwae`` and ``renyi`` objectives all apply.
  Under ``iwae`` the log weight of particle :math:`k` is
  :math:`\sum_c q(c|x)[\log p(x, c, z_{kc}) - \log q(c|x) - \log q(z_{kc}|x, c)]`, which by
  Jensen's inequality is at most the log of the unbiased weight
  :math:`\sum_c p(x, c, z_{kc}) / q(z_{kc}|x, c)`; so
  :math:`\log \frac1K \sum_k e^{\log w_k}` is still a lower bound on :math:`\log p(x)`
  that does not decrease in :math:`K`, and :math:`q(y|x)` keeps learning from unlabelled
  points. (``ppvae evaluate`` on such a run therefore reports this bound, not an unbiased
  estimate of :math:`\log p(x)`; with ``sum_y = "enumerate"`` it samples :math:`y` and is
  unbiased.)

The classification term :math:`\alpha' \log q(y|x)` is a ``pyro.factor`` named ``"aux"``
in the model, inside the data plate, zero on unlabelled points. Kingma et al. add
:math:`\alpha\, E_{\tilde p_l}[-\log q(y|x)]` to the bound summed over the data set with
:math:`\alpha = 0.1 N`. ppvae's loss is the bound *per data point* (the sum divided by
:math:`N`), so the same objective gives each labelled point the weight
:math:`\alpha' = \texttt{aux\_weight} \cdot N / N_l` with ``aux_weight`` :math:`=
\alpha / N` (default 0.1, the paper's choice), :math:`N` the training examples and
:math:`N_l` the labelled ones.

``[model] m1_run = "runs/vae"`` stacks M2 on a trained VAE (Kingma et al.'s M1+M2): the
VAE's encoder means :math:`E_{q(z_1|x)}[z_1]` are M2's data (use a ``gaussian``
likelihood); the frozen VAE travels inside the model and guide, so both still take raw
images, and samples and reconstructions are decoded back to images by the VAE.

Example:
    >>> import torch
    >>> from ppvae.infer.objectives import build_objective
    >>> model, guide = build_m2(data_dim=6, num_classes=3, latent_dim=2, hidden=(8,),
    ...                         sum_y="explicit", aux_scale=1.0)
    >>> x, y = torch.rand(4, 6).round(), torch.tensor([0, -1, 2, -1])
    >>> loss = build_objective("elbo")(model, guide, x, y)
    >>> loss.shape, bool(torch.isfinite(loss))
    (torch.Size([]), True)
    >>> guide.predict_proba(x).shape, model.generate_by_class(2).shape
    (torch.Size([4, 3]), torch.Size([6, 6]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from ppvae.context import BuildContext
from ppvae.data.bundle import DataBundle, Split
from ppvae.data.semisupervised import UNLABELLED, hide_labels, semi_supervised_split
from ppvae.errors import DataError, SpecError
from ppvae.guides import ConditionalEncoder
from ppvae.models.abilities import AmortizedPosterior, Decodes
from ppvae.models.base import MODELS, ModelConfig, ModelContext, PretrainedRun
from ppvae.nn import MLP, broadcast_cat, make_activation

__all__ = [
    "M2",
    "M2Guide",
    "M2Config",
    "ClassWeighted",
    "ConditionalEncoder",
    "M1Features",
    "build_m2",
    "SUM_Y",
]

#: How the class variable is summed out: ``sum_y`` values.
SUM_Y = ("enumerate", "explicit")

_EMPTY = torch.Size()

# Logit of the classes a labelled point does not have: exp(-1e4) is exactly 0 in
# float32 and float64, and 0 * 1e4 = 0 (an infinite logit would give 0 * inf = NaN).
_OFF = -1e4

_cat = broadcast_cat


def _onehot(y: torch.Tensor, num_classes: int, like: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y.long(), num_classes).to(like.dtype)


class ClassWeighted(dist.TorchDistribution):
    r"""A weighted sum over classes of per-class log-densities:

    .. math::
        \log p(v) = \sum_c w_c \,(\log p_c(v_c) + b_c)

    for a ``base`` distribution with batch shape ``(..., C)`` (one distribution per
    class), weights :math:`w` and offsets :math:`b` broadcastable to it. The value holds
    one draw per class (event shape ``(C, *base.event_shape)``), or, with
    ``shared_value=True``, one value scored under every class (event shape
    ``base.event_shape``; used for the observed ``x``). Not a normalized density: it
    writes the explicit sum over :math:`y` of M2's bound as the log-densities of ordinary
    sites, so every ELBO-type objective applies. ``rsample`` draws every class's value.
    """

    arg_constraints: dict = {}

    def __init__(
        self,
        base: dist.Distribution,
        weights: torch.Tensor,
        offsets: torch.Tensor | None = None,
        *,
        shared_value: bool = False,
        validate_args=None,
    ) -> None:
        if offsets is None:
            offsets = torch.zeros((), dtype=weights.dtype, device=weights.device)
        shapes = [base.batch_shape, weights.shape, offsets.shape]
        full = torch.broadcast_shapes(*shapes)
        self.base = base.expand(full) if base.batch_shape != full else base
        self.weights = weights.expand(full)
        self.offsets = offsets.expand(full)
        self.shared_value = shared_value
        num_classes = full[-1:]
        event = base.event_shape if shared_value else num_classes + base.event_shape
        super().__init__(full[:-1], event, validate_args=False)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return bool(self.base.has_rsample) and not self.shared_value

    @property
    def support(self):  # type: ignore[override]
        return dist.constraints.real

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        c = self.weights.shape[-1:]
        return ClassWeighted(
            self.base.expand(batch_shape + c),
            self.weights.expand(batch_shape + c),
            self.offsets.expand(batch_shape + c),
            shared_value=self.shared_value,
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self.shared_value:
            value = value.unsqueeze(-1 - len(self.base.event_shape))
        return (self.weights * (self.base.log_prob(value) + self.offsets)).sum(-1)

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        if self.shared_value:
            raise NotImplementedError("ClassWeighted(shared_value=True) has no rsample")
        return self.base.rsample(sample_shape)

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        with torch.no_grad():
            draws = self.base.sample(sample_shape)
            if not self.shared_value:
                return draws
            # one class per point from the weights, that class's draw
            c = torch.distributions.Categorical(probs=self.weights).sample(sample_shape)
            event = self.base.event_shape
            index = c.reshape(c.shape + (1,) * (1 + len(event))).expand(c.shape + (1,) + event)
            return draws.gather(-1 - len(event), index).squeeze(-1 - len(event))


class M1Features(nn.Module):
    r"""A trained, frozen VAE (Kingma et al.'s M1) as a feature map for M2:
    ``encode(x)`` is the mean of :math:`q(z_1|x)`, ``decode(z_1)`` the expected data
    :math:`E[x|z_1]`. Its weights are not trained (``requires_grad`` is off) but are part
    of the M2 checkpoint."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        for p in self.parameters():
            p.requires_grad_(False)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder(x).mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.likelihood.mean(self.decoder(z))


class _Features(nn.Module):
    """Shared by model and guide: the data as M2 sees it (raw, or M1 features)."""

    def __init__(self, m1: M1Features | None) -> None:
        super().__init__()
        self.m1 = m1
        self.train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.m1 is None else self.m1.encode(x)

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.m1 is None else self.m1.decode(out)

    def train(self, mode: bool = True) -> _Features:
        # always in eval mode: nothing here trains (the M1 weights are frozen), and Pyro
        # warns about frozen parameters of modules in training mode
        return super().train(False)


def _class_weights(
    logits: torch.Tensor, y: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``w`` (one-hot on labelled points, ``q(y|x)`` on unlabelled ones) and
    ``log w`` where it matters (0 on labelled points)."""
    labelled = (y >= 0).unsqueeze(-1)
    log_q = torch.log_softmax(logits, -1)
    onehot = _onehot(y.clamp(min=0), num_classes, logits)
    weights = torch.where(labelled, onehot, log_q.exp())
    log_w = torch.where(labelled, torch.zeros_like(log_q), log_q)
    return weights, log_w


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
    ) -> None:
        super().__init__()
        if sum_y not in SUM_Y:
            raise SpecError(f"model.sum_y must be one of {', '.join(SUM_Y)}, got {sum_y!r}")
        self.prior = prior
        self.decoder = decoder
        self.likelihood = likelihood
        self.classifier = classifier
        self.features = features if features is not None else _Features(None)
        self.num_classes = num_classes
        self.sum_y = sum_y
        self.aux_scale = float(aux_scale)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        c = self.num_classes
        data = self.features(x)
        logits = self.classifier(data) if self.aux_scale or self.sum_y == "explicit" else None
        with pyro.plate("data", x.shape[0]):
            if self.sum_y == "enumerate":
                y_all = pyro.sample("y", dist.Categorical(logits=data.new_zeros(c)))
                z = pyro.sample("z", self.prior())
                out = self.decoder(_cat(z, _onehot(y_all, c, data)))
                pyro.sample("x", self.likelihood(out), obs=data)
            else:
                weights, _ = _class_weights(logits, y, c)
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
        return torch.softmax(self.classifier(self.features(x)), -1)

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
        out = self.decoder(_cat(z, _onehot(y.to(device), self.num_classes, z)))
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
        guess = self.classifier(data).argmax(-1)
        y = guess if y is None else torch.where(y >= 0, y.to(guess.device), guess)
        onehot = _onehot(y, self.num_classes, data)
        z = guide.encoder(data, onehot).mean
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
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.encoder = encoder
        self.features = features if features is not None else _Features(None)
        self.num_classes = num_classes
        self.sum_y = sum_y

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        c = self.num_classes
        data = self.features(x)
        logits = self.classifier(data)
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
                pyro.sample("z", self.encoder(data, _onehot(y_all, c, data)))
            else:
                weights, log_w = _class_weights(logits, y, c)
                eye = torch.eye(c, dtype=data.dtype, device=data.device)
                q = self.encoder(data.unsqueeze(-2), eye)
                pyro.sample("z", ClassWeighted(q, weights, log_w))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`q(y|x)`, shape ``(N, C)``."""
        return torch.softmax(self.classifier(self.features(x)), -1)

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
) -> tuple[M2, M2Guide]:
    """An M2 model/guide pair from sizes and component kinds (names or config objects).

    ``data_dim`` is the size of what M2 models (the M1 latent size when ``m1`` is given);
    ``aux_scale`` the weight :math:`\\alpha'` of :math:`\\log q(y|x)` per labelled point.
    """
    from ppvae.guides import GUIDES
    from ppvae.likelihoods import LIKELIHOODS
    from ppvae.priors import PRIORS

    hidden = tuple(hidden)
    prior_cfg = PRIORS.get(prior)() if isinstance(prior, str) else prior
    guide_cfg = GUIDES.get(guide)() if isinstance(guide, str) else guide
    lik_cfg = LIKELIHOODS.get(likelihood)() if isinstance(likelihood, str) else likelihood
    if prior_cfg.needs_posterior:
        raise SpecError(
            f"prior.kind = {getattr(prior_cfg, 'kind', type(prior_cfg).__name__)!r} is built on "
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
    )
    lik = lik_cfg.build(ctx)
    classifier = MLP(data_dim, hidden, num_classes, activation)
    encoder = guide_cfg.build_conditional(ctx, num_classes)
    decoder = MLP(
        latent_dim + num_classes, tuple(reversed(hidden)), data_dim * lik.params_per_dim, activation
    )
    features = _Features(m1)
    model = M2(
        prior_cfg.build(ctx), decoder, lik, classifier, num_classes, sum_y, aux_scale, features
    )
    return model, M2Guide(classifier, encoder, num_classes, sum_y, features)


@MODELS.register("m2")
@dataclass(frozen=True)
class M2Config(ModelConfig):
    r"""M2 (Kingma et al. 2014) trained on a training split of which ``num_labels``
    examples keep their labels.

    Attributes:
        latent_dim: size of :math:`z`.
        hidden: hidden layer sizes of the classifier, encoder and (reversed) decoder.
        activation: activation between layers.
        num_labels: labelled training examples, class-balanced
            (:func:`ppvae.data.semi_supervised_split`); the rest are unlabelled.
        label_seed: the draw of the labelled subset.
        aux_weight: :math:`\alpha / N` of Kingma et al. (their :math:`\alpha = 0.1 N`):
            each labelled point's :math:`\log q(y|x)` is weighted by
            ``aux_weight * N / num_labels`` in the per-point loss.
        sum_y: ``"enumerate"`` (needs ``objective.kind = "enum_elbo"``) or ``"explicit"``
            (any ELBO-type objective, ``iwae`` and ``renyi`` included).
        m1_run: a trained ``vae`` run folder: M2 then models that VAE's encoder means
            (M1+M2; use ``likelihood.kind = "gaussian"``). Empty: M2 on the data.
        labelled_repeat: :math:`r`, how many times each epoch visits every labelled point
            (the unlabelled ones once): with 100 labels among 11,000 images a batch of 100
            holds one labelled point on average, ``r = 10`` makes it about ten, as
            Kingma et al.'s code and Pyro's tutorial do by cycling the labelled set. The
            classification term of each visit is weighted ``aux_weight * N / (r *
            num_labels)`` so that :math:`\alpha` keeps its meaning; the labelled points'
            ELBO terms count :math:`r` times.

    :meth:`train_inputs` gives the training split its labels on the labelled subset and
    ``-1`` elsewhere; :meth:`inputs` gives any split ``-1`` everywhere: the validation ELBO
    (which picks ``best.pt``) and ``ppvae evaluate`` are the unsupervised bound and use no
    labels; accuracy is measured apart (:mod:`ppvae.semisupervised`).
    """

    needs_labels: ClassVar[bool] = True
    guide_form: ClassVar[str] = "q(z|x,y)"

    latent_dim: int = 50
    hidden: tuple[int, ...] = (500,)
    activation: str = "softplus"
    num_labels: int = 100
    label_seed: int = 0
    aux_weight: float = 0.1
    sum_y: Literal["enumerate", "explicit"] = "enumerate"
    m1_run: str = ""
    labelled_repeat: int = 1

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise SpecError(f"model.latent_dim must be at least 1, got {self.latent_dim}")
        if any(h < 1 for h in self.hidden):
            raise SpecError(f"model.hidden sizes must be at least 1, got {list(self.hidden)}")
        make_activation(self.activation)
        if self.num_labels < 1:
            raise SpecError(f"model.num_labels must be at least 1, got {self.num_labels}")
        if self.label_seed < 0:
            raise SpecError(f"model.label_seed must be non-negative, got {self.label_seed}")
        if not (self.aux_weight >= 0 and math.isfinite(self.aux_weight)):
            raise SpecError(
                f"model.aux_weight must be a finite non-negative number, got {self.aux_weight}"
            )
        if self.sum_y not in SUM_Y:
            raise SpecError(f"model.sum_y must be one of {', '.join(SUM_Y)}, got {self.sum_y!r}")
        if self.labelled_repeat < 1:
            raise SpecError(f"model.labelled_repeat must be at least 1, got {self.labelled_repeat}")

    @property
    def needs_enumeration(self) -> str:
        if self.sum_y != "enumerate":
            return ""
        return 'model.sum_y = "enumerate"'

    def check_spec(self, spec) -> None:
        """M1+M2 feeds real-valued features to the likelihood: it must model real values."""
        if self.m1_run and spec.likelihood.support != "real":
            raise SpecError(
                f"model.m1_run feeds real-valued VAE means to M2, which needs a likelihood of "
                f'real values such as likelihood.kind = "gaussian", not {spec.likelihood.kind!r} '
                f"(support {spec.likelihood.support!r})"
            )

    def pretrained_runs(self) -> dict[str, str]:
        """The M1 run (``m1_run``), when given."""
        return {"m1": self.m1_run} if self.m1_run else {}

    def label_mask(self, split: Split, num_classes: int) -> torch.Tensor:
        """The labelled subset of a training split (``num_labels``, ``label_seed``)."""
        return semi_supervised_split(split.y, self.num_labels, num_classes, self.label_seed)

    def inputs(self, split: Split) -> tuple[torch.Tensor, ...]:
        """``(x, y)`` with every label hidden (``y = -1``): the inputs of an evaluation."""
        return split.x, torch.full((len(split),), UNLABELLED, dtype=torch.long)

    def train_inputs(self, data: DataBundle) -> tuple[torch.Tensor, ...]:
        """``(x, y)`` of the training split with ``y = -1`` on unlabelled points: the
        labelled subset keeps its labels and is repeated ``labelled_repeat`` times."""
        split = data.train
        if split.y is None or not data.num_classes:
            raise DataError(
                f"model.kind = 'm2' needs labelled data but the {data.name} training data has no "
                "labels; use a data set with labels"
            )
        mask = self.label_mask(split, data.num_classes)
        x, y = split.x, hide_labels(split.y, mask)
        if self.labelled_repeat > 1:  # the labelled points again, r - 1 more times
            index = mask.nonzero().squeeze(-1).repeat(self.labelled_repeat - 1)
            x, y = torch.cat([x, split.x[index]]), torch.cat([y, split.y[index].long()])
        return x, y

    def build(self, ctx: ModelContext) -> tuple[M2, M2Guide]:
        if not ctx.has_labels:
            raise DataError(
                f"model.kind = 'm2' needs labelled data but the {ctx.data_name} training data has "
                "no labels; use a data set with labels"
            )
        mask = self.label_mask(ctx.train, ctx.num_classes)
        m1 = _m1_features(ctx.pretrained["m1"], ctx) if self.m1_run else None
        x = ctx.train.x[:512]
        if m1 is not None:
            x = m1.encode(x)
            ctx.check_data(x, features="M1 features")
        else:
            ctx.check_data(x)
        aux_scale = self.aux_weight * len(ctx.train) / (int(mask.sum()) * self.labelled_repeat)
        return build_m2(
            x.shape[-1],
            ctx.num_classes,
            self.latent_dim,
            self.hidden,
            self.activation,
            prior=ctx.prior,
            guide=ctx.guide,
            likelihood=ctx.likelihood,
            sum_y=self.sum_y,
            aux_scale=aux_scale,
            m1=m1,
        )


def _m1_features(run: PretrainedRun, ctx: ModelContext) -> M1Features:
    """The frozen encoder and decoder of a trained VAE run (Kingma et al.'s M1)."""
    model, guide = run.model, run.guide
    if not (
        isinstance(model, Decodes)
        and isinstance(guide, AmortizedPosterior)
        and isinstance(guide.posterior, nn.Module)  # q(z|x) alone, weights in the checkpoint
    ):
        raise SpecError(
            f"model.m1_run = {run.path!r} holds a {run.model_kind!r} run; M1+M2 needs a run of "
            "a model with one decoder and an amortized guide q(z|x), such as model kind 'vae'"
        )
    if run.data_dim != ctx.data_dim:
        raise SpecError(
            f"model.m1_run = {run.path!r} was trained on data of {run.data_dim} features but this "
            f"spec's data have {ctx.data_dim}; train the VAE on the same data"
        )
    m1 = M1Features(guide.posterior, model.decoder, model.likelihood).cpu()
    try:
        m1.encode(ctx.train.x[:2])
    except NotImplementedError:
        raise SpecError(
            f"model.m1_run = {run.path!r} has a guide of kind {run.guide_kind!r} whose mean is "
            'unknown; M1+M2 needs a guide with a mean such as "diagonal_normal"'
        ) from None
    return m1
