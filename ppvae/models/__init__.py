"""Model/guide pairs of the zoo, one module each, registered in :data:`MODELS`.

``vae`` (one stochastic layer), ``hvae`` (two), ``cvae`` (conditioned on a label),
``mixture`` (a discrete class summed out by enumeration), ``density`` and ``classifier``
(fully observed, maximum likelihood).
``m2`` is semi-supervised classification (Kingma et al. 2014) on partially labelled data.

The contract every kind follows is :class:`ModelConfig` (:mod:`ppvae.models.base`); the
optional abilities of the built programs are the protocols of :mod:`ppvae.models.abilities`.
"""

from ppvae.models import abilities
from ppvae.models.base import MODELS, ModelConfig, ModelContext, PretrainedRun
from ppvae.models.cvae import CVAE, CVAEConfig, CVAEGuide
from ppvae.models.hvae import HVAE, HVAEConfig, HVAEGuide
from ppvae.models.m2 import M2, M2Config, M2Guide, build_m2  # registers "m2"
from ppvae.models.mixture import MixtureConfig, MixtureGuide, MixtureModel
from ppvae.models.observed import (
    Classifier,
    ClassifierConfig,
    DensityConfig,
    EmptyGuide,
    FactorizedDensity,
)
from ppvae.models.vae import VAE, VAEConfig, VAEGuide, build_vae

__all__ = [
    "MODELS",
    "ModelConfig",
    "ModelContext",
    "PretrainedRun",
    "abilities",
    "VAE",
    "VAEGuide",
    "VAEConfig",
    "build_vae",
    "HVAE",
    "HVAEGuide",
    "HVAEConfig",
    "CVAE",
    "CVAEGuide",
    "CVAEConfig",
    "MixtureModel",
    "MixtureGuide",
    "MixtureConfig",
    "FactorizedDensity",
    "Classifier",
    "EmptyGuide",
    "DensityConfig",
    "ClassifierConfig",
    "M2",
    "M2Guide",
    "M2Config",
    "build_m2",
]
