"""ppvae: deep latent variable models written as Pyro programs."""

__version__ = "0.1.0"
