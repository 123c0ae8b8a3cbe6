r"""Optional abilities of model and guide programs, as runtime-checkable protocols.

ppvae asks ``isinstance(run.model, Generates)``, never ``hasattr``: a program (ppvae's
or a user's, of any class) has an ability when it has the members below. Like every
:func:`typing.runtime_checkable` protocol, ``isinstance`` checks that the members exist;
their signatures are the contract written here.

Example:
    >>> from ppvae.models.vae import build_vae
    >>> model, guide = build_vae(data_dim=6, latent_dim=2, hidden=(8,))
    >>> isinstance(model, Generates), isinstance(model, GeneratesByClass)
    (True, False)
    >>> isinstance(model, Reconstructs), isinstance(guide, AmortizedPosterior)
    (True, True)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from pyro.distributions import Distribution

__all__ = [
    "Generates",
    "GeneratesByClass",
    "Reconstructs",
    "Classifies",
    "class_probabilities",
    "accuracy_percent",
    "Clusters",
    "AmortizedPosterior",
    "LayeredPosterior",
    "Decodes",
    "LabelSubset",
]


@runtime_checkable
class Generates(Protocol):
    """A model that draws data: ``generate(n)`` gives ``n`` expected data points
    :math:`E[x | z]`, :math:`z` from the prior, shape ``(n, data_dim)``."""

    def generate(self, n: int) -> torch.Tensor: ...


@runtime_checkable
class GeneratesByClass(Protocol):
    """A conditional model over ``num_classes`` labels: ``generate(n, condition=c)``
    draws data of class ``c`` (``ppvae sample --condition``)."""

    num_classes: int

    def generate(self, n: int, condition: int | None = None) -> torch.Tensor: ...


@runtime_checkable
class Reconstructs(Protocol):
    """A model that reconstructs data through a guide: ``reconstruct(x, guide, *context)``
    gives :math:`E[x | z]` at the guide's mean of :math:`z`, shape of ``x``; ``context``
    are the other inputs of the programs (e.g. labels)."""

    def reconstruct(self, x: torch.Tensor, guide: Any, *context: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Classifies(Protocol):
    """A program with a classifier: ``predict_proba(x)`` gives class probabilities of
    shape ``(N, num_classes)``."""

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def class_probabilities(guide: Classifies, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """``guide.predict_proba`` over ``x`` in batches, on the guide's device, as CPU float
    ``(N, num_classes)`` (``ppvae classify`` and ``ppvae evaluate`` of an M2 run)."""
    device = next((p.device for p in guide.parameters()), torch.device("cpu"))
    parts = [
        guide.predict_proba(x[i : i + batch_size].to(device)).cpu()
        for i in range(0, len(x), batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros(0)


def accuracy_percent(predicted: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    """The share of ``predicted`` labels equal to ``labels``, in percent; None without
    labels."""
    if labels is None or not len(labels):
        return None
    return 100.0 * float((predicted == labels).float().mean())


@runtime_checkable
class Clusters(Protocol):
    """A model with a discrete class: ``cluster_probs(x, guide)`` gives :math:`p(c | x)`,
    shape ``(N, num_components)``."""

    def cluster_probs(self, x: torch.Tensor, guide: Any) -> torch.Tensor: ...


@runtime_checkable
class AmortizedPosterior(Protocol):
    """A guide whose top-level latent is amortized: ``posterior(x, *context)`` returns
    the distribution :math:`q(z | x)`, batch shape ``(N,)``."""

    def posterior(self, x: torch.Tensor, *context: torch.Tensor) -> Distribution: ...


@runtime_checkable
class LayeredPosterior(Protocol):
    """A guide of stacked latents whose bottom layer is amortized: ``q_z1(x)`` returns
    :math:`q(z_1 | x)`."""

    def q_z1(self, x: torch.Tensor) -> Distribution: ...


@runtime_checkable
class Decodes(Protocol):
    """A model with one decoder network from :math:`z` to likelihood parameters and the
    likelihood module that maps them to :math:`p(x | z)` (``likelihood.mean(out)``)."""

    decoder: torch.nn.Module
    likelihood: torch.nn.Module


@runtime_checkable
class LabelSubset(Protocol):
    """A model config trained on a labelled subset of its training split
    (``model.num_labels``, ``model.label_seed``): ``label_mask(split, num_classes)`` is
    that subset (semi-supervised experiments vary both)."""

    num_labels: int
    label_seed: int

    def label_mask(self, split: Any, num_classes: int) -> torch.Tensor: ...
