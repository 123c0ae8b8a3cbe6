r"""The ``m2`` model kind: M2 trained on a training split of which ``num_labels`` examples
keep their labels (the labelled subset, its repetition, and the weight of the
classification term per labelled point)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from ppvae.data.bundle import DataBundle, Split
from ppvae.data.semisupervised import UNLABELLED, hide_labels, semi_supervised_split
from ppvae.errors import DataError, SpecError
from ppvae.models._common import check_activation, check_latent_dim, check_sizes
from ppvae.models.base import MODELS, ModelConfig, ModelContext
from ppvae.models.m2.features import m1_features
from ppvae.models.m2.programs import M2, SUM_Y, M2Guide, build_m2

__all__ = ["M2Config"]


@MODELS.register("m2")
@dataclass(frozen=True)
class M2Config(ModelConfig):
    r"""M2 (Kingma et al. 2014) trained on a training split of which ``num_labels``
    examples keep their labels.

    Attributes:
        latent_dim: size of :math:`z`.
        hidden: hidden layer sizes of the classifier, encoder and (reversed) decoder (after
            the ``[network]``'s encoder trunk, which the classifier and encoder share).
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
        check_latent_dim(self.latent_dim)
        check_sizes("model.hidden", self.hidden)
        check_activation(self.activation)
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
        m1 = m1_features(ctx.pretrained["m1"], ctx) if self.m1_run else None
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
            data=x,
            network=ctx.network,
            event_shape=None if m1 is not None else ctx.data_shape(),
        )
