"""Neural building blocks: multilayer perceptrons that broadcast over leading dimensions.

Every network here maps ``(..., in_features) -> (..., out_features)``, so the same module
serves a batch ``(B, D)``, vectorized particles ``(K, B, D)`` and enumerated discrete
latents ``(C, 1, B, D)`` without reshaping.

Example:
    >>> import torch
    >>> net = MLP(4, (8, 8), 3)
    >>> net(torch.zeros(5, 2, 4)).shape
    torch.Size([5, 2, 3])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ppvae.errors import SpecError

__all__ = ["MLP", "ACTIVATIONS", "make_activation", "broadcast_cat"]

#: Activation functions selectable by name in specs (``model.activation``).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name; an unknown name is a :class:`SpecError`."""
    if name not in ACTIVATIONS:
        raise SpecError(
            f"unknown activation {name!r} in model.activation; allowed: {', '.join(sorted(ACTIVATIONS))}"
        )
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Linear layers with an activation between them (none after the last).

    Args:
        in_features: input size.
        hidden: sizes of the hidden layers (may be empty: a single linear map).
        out_features: output size.
        activation: name from :data:`ACTIVATIONS`.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
    ) -> None:
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(make_activation(activation))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(x)


def broadcast_cat(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate on the last dim after broadcasting the leading dims (e.g. data of shape
    ``(B, 1, D)`` with one-hot labels ``(C, C)`` gives ``(B, C, D + C)``)."""
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(batch + t.shape[-1:]) for t in tensors], -1)
