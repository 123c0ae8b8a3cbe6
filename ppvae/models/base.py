r"""The model-kind contract: ``[model] kind = "..."`` picks how prior, guide and likelihood
are assembled into a model/guide pair of Pyro programs.

A model kind is one frozen dataclass deriving from :class:`ModelConfig` and one
``@MODELS.register("name")`` line. What it declares, and what the rest of ppvae relies on:

* :attr:`ModelConfig.uses`: the component sections (``network``, ``prior``, ``guide``,
  ``likelihood``) it builds from. A section it does not use must be left at its default;
  anything else is refused when the spec is parsed (it would be silently ignored).
  :meth:`ModelConfig.used_sections` narrows it where the options decide (a plain mixture,
  ``latent_dim = 0``, has no networks for ``[network]``).
* Capability flags, read by the spec's cross-section rules instead of other sections'
  ``kind`` strings: :attr:`~ModelConfig.offers_posterior` (a prior with
  ``needs_posterior``, the VampPrior, may share its guide's :math:`q(z|x)`),
  :attr:`~ModelConfig.needs_labels` (refused on data that declare ``has_labels =
  False``), :attr:`~ModelConfig.needs_enumeration` (needs an objective that
  enumerates).
* :meth:`~ModelConfig.check_spec`: its own rules about the other sections (default: none).
* :meth:`~ModelConfig.inputs` / :meth:`~ModelConfig.train_inputs`: the tensors its
  programs take for a split (default ``(split.x,)``), and for training.
* :meth:`~ModelConfig.pretrained_runs`: trained run folders it builds on (default none);
  the layer above loads them into :attr:`ModelContext.pretrained`.
* :meth:`~ModelConfig.build`: the pair, from a small frozen :class:`ModelContext` (data
  facts and the component configs), not from the whole spec.

Optional abilities of the built programs (``generate``, ``reconstruct``, ...) are the
protocols of :mod:`ppvae.models.abilities`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ppvae.context import BuildContext
from ppvae.networks import MLPNetwork, NetworkConfig
from ppvae.registry import Registry

if TYPE_CHECKING:
    from ppvae.data import DataBundle, Split
    from ppvae.guides import GuideConfig
    from ppvae.infer.objectives import ObjectiveConfig
    from ppvae.likelihoods import LikelihoodConfig
    from ppvae.priors import PriorConfig

__all__ = ["MODELS", "ModelConfig", "ModelContext", "PretrainedRun", "COMPONENT_SECTIONS"]

#: The component sections a model kind may use.
COMPONENT_SECTIONS = ("network", "prior", "guide", "likelihood")


@dataclass(frozen=True)
class PretrainedRun:
    """A trained model/guide pair that a model kind builds on (e.g. M2's M1 VAE).

    Attributes:
        path: the run folder, as the spec names it.
        model: the trained model program (eval mode).
        guide: the trained guide program (eval mode).
        data_dim: features of one data point of the data it was trained on.
        model_kind: its ``[model] kind``, for messages.
        guide_kind: its ``[guide] kind``, for messages.
    """

    path: str
    model: nn.Module
    guide: nn.Module
    data_dim: int
    model_kind: str
    guide_kind: str


@dataclass(frozen=True, eq=False)
class ModelContext:
    """What :meth:`ModelConfig.build` needs: the data facts and the component configs.

    Attributes:
        data_name: the data set's name, for messages.
        data_dim: features of one flattened data point.
        train: the training split (for data checks against the likelihood, label subsets).
        prior, guide, likelihood, objective: the configs of those sections.
        network: the ``[network]`` config (default ``mlp``), which
            :meth:`encoder_trunk` and :meth:`decoder` build from.
        num_classes: number of label classes, when the data has labels.
        image_shape: the shape of one data point as an image, when it is one.
        event_shape: the shape of one data point before flattening (``(C, H, W)`` for
            images, ``(D,)`` for vectors; None: ``(data_dim,)``).
        binarized: whether the data are binarized (statically or dynamically).
        seed: the seed the weights are initialized from (already set when ``build`` runs).
        pretrained: the runs of :meth:`ModelConfig.pretrained_runs`, loaded, by name.
    """

    data_name: str
    data_dim: int
    train: Split
    prior: PriorConfig
    guide: GuideConfig
    likelihood: LikelihoodConfig
    objective: ObjectiveConfig
    network: NetworkConfig = field(default_factory=MLPNetwork)
    num_classes: int | None = None
    image_shape: tuple[int, ...] | None = None
    event_shape: tuple[int, ...] | None = None
    binarized: bool = False
    seed: int = 0
    pretrained: Mapping[str, PretrainedRun] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def has_labels(self) -> bool:
        """Whether the training split has labels (and the data a number of classes)."""
        return self.train.y is not None and bool(self.num_classes)

    def check_data(self, x: torch.Tensor | None = None, *, features: str = "") -> None:
        """Refuse data the likelihood cannot model: the training inputs, or ``x``, the
        ``features`` (named in the message) that the model sees in their place."""
        x = self.train.x if x is None else x
        where = f"the {self.data_name} training data" + (f" ({features})" if features else "")
        binarized = self.binarized and not features
        self.likelihood.check_data(x, binarized=binarized, where=where)

    def data_shape(self) -> tuple[int, ...]:
        """The event shape of one data point (``(data_dim,)`` when none was given)."""
        return tuple(self.event_shape) if self.event_shape else (self.data_dim,)

    def encoder_trunk(self, activation: str, shape: tuple[int, ...] | None = None):
        """The ``[network]``'s encoder trunk for the data (or for points of event shape
        ``shape``), and the number of features it gives: ``(None, data_dim)`` for MLPs,
        whose first layer reads the flat data."""
        shape = shape or self.data_shape()
        network = self.network
        what = f"the {self.data_name} data" if shape == self.data_shape() else "the model's inputs"
        network.check_shape(shape, what)
        trunk = network.build_trunk(shape, activation)
        return trunk, (trunk.out_features if trunk is not None else math.prod(shape))

    def decoder(
        self,
        in_features: int,
        hidden: tuple[int, ...],
        likelihood: nn.Module,
        activation: str,
        shape: tuple[int, ...] | None = None,
    ) -> nn.Module:
        """The ``[network]``'s decoder from ``in_features`` through ``hidden`` (in decoder
        order) to ``likelihood``'s parameters for the data (or points of ``shape``)."""
        shape = shape or self.data_shape()
        return self.network.build_decoder(in_features, hidden, shape, likelihood, activation)

    def components(
        self, latent_dim: int, hidden: tuple[int, ...] = (256,), activation: str = "relu"
    ) -> BuildContext:
        """The :class:`~ppvae.context.BuildContext` of this data for the component builders."""
        return BuildContext(
            data_dim=self.data_dim,
            latent_dim=latent_dim,
            hidden=tuple(hidden),
            activation=activation,
            num_classes=self.num_classes,
            image_shape=self.image_shape,
            data=self.train.x,
        )


class ModelConfig(abc.ABC):
    """Options of one model kind (the ``[model]`` section) and what the kind declares."""

    kind: str
    #: The component sections this kind builds from; each other one must stay at its default.
    uses: ClassVar[frozenset[str]] = frozenset(COMPONENT_SECTIONS)
    #: Whether the top-level latent has an amortized guide network q(z|x) that a prior
    #: declaring ``needs_posterior`` (the VampPrior) can share.
    offers_posterior: ClassVar[bool] = False
    #: Whether the kind trains on labels (refused on data declaring ``has_labels = False``).
    needs_labels: ClassVar[bool] = False
    #: What this kind's guide is, for messages (e.g. ``"q(z|x,y)"``).
    guide_form: ClassVar[str] = "q(z|x)"

    def used_sections(self) -> tuple[frozenset[str], str]:
        """The component sections these options use (default: :attr:`uses`), and why the
        others are unused when the options decide it (e.g. ``"model.latent_dim = 0
        builds no networks"``; empty: the kind never uses them)."""
        return self.uses, ""

    @property
    def needs_enumeration(self) -> str:
        """Why the model needs an objective that enumerates (it has discrete sites only
        enumeration sums out), naming the option responsible; empty: it does not."""
        return ""

    def check_spec(self, spec: Any) -> None:  # noqa: B027 - an optional hook
        """Refuse combinations of the other sections this kind cannot work with (a
        :class:`~ppvae.errors.SpecError`), beyond the declared flags. Default: none."""

    def pretrained_runs(self) -> dict[str, str]:
        """Trained run folders this kind builds on, by name (loaded into
        :attr:`ModelContext.pretrained` before :meth:`build`). Default: none."""
        return {}

    def inputs(self, split: Split) -> tuple[torch.Tensor, ...]:
        """The tensors the programs take for ``split`` when evaluating it (default ``(x,)``)."""
        return (split.x,)

    def train_inputs(self, data: DataBundle) -> tuple[torch.Tensor, ...]:
        """The tensors the programs are trained on (default: :meth:`inputs` of the
        training split)."""
        return self.inputs(data.train)

    @abc.abstractmethod
    def build(self, ctx: ModelContext) -> tuple[nn.Module, nn.Module]:
        """The ``(model, guide)`` pair for this context."""


#: Registry of model kinds: ``[model] kind = "..."``.
MODELS: Registry[ModelConfig] = Registry("model")
