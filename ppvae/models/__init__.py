"""Model/guide pairs of the zoo, one module each, registered in :data:`MODELS`."""

from ppvae.models.base import MODELS, ModelConfig
from ppvae.models.vae import VAE, VAEConfig, VAEGuide, build_vae

__all__ = ["MODELS", "ModelConfig", "VAE", "VAEGuide", "VAEConfig", "build_vae"]
