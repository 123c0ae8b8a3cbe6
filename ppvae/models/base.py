"""The model registry: ``[model] kind = "..."`` picks how prior, guide and likelihood are
assembled into a model/guide pair of Pyro programs."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from torch import nn

from ppvae.registry import Registry

if TYPE_CHECKING:
    from ppvae.data import DataBundle
    from ppvae.spec import Spec

__all__ = ["MODELS", "ModelConfig"]


class ModelConfig(abc.ABC):
    """Options of one model kind (the ``[model]`` section)."""

    kind: str

    @abc.abstractmethod
    def build(self, spec: Spec, data: DataBundle) -> tuple[nn.Module, nn.Module]:
        """The ``(model, guide)`` pair for this spec and data set."""


#: Registry of model kinds: ``[model] kind = "..."``.
MODELS: Registry[ModelConfig] = Registry("model")
