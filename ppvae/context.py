"""What a component builder needs to know about the data and the model around it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["BuildContext"]


@dataclass(frozen=True)
class BuildContext:
    """Sizes and shapes shared by the builders of priors, guides and likelihoods.

    Attributes:
        data_dim: number of features of one flattened data point.
        latent_dim: size of the latent vector ``z``.
        hidden: hidden layer sizes of the encoder and decoder networks.
        activation: activation name (see :data:`ppvae.nn.ACTIVATIONS`).
        num_classes: number of label classes, when the data has labels.
        image_shape: the shape of one data point as an image, when it is one.
        data: the training inputs the likelihood models (or a sample of them), for
            starting values taken from the data (e.g. the ``gaussian`` likelihood's
            scale); None when a model is built without data.
    """

    data_dim: int
    latent_dim: int
    hidden: tuple[int, ...] = (256,)
    activation: str = "relu"
    num_classes: int | None = None
    image_shape: tuple[int, ...] | None = None
    data: torch.Tensor | None = field(default=None, compare=False, repr=False)
