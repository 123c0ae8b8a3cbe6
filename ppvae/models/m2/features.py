r"""M2's view of the data: raw, or the features of a trained, frozen VAE (Kingma et
al.'s M1, ``[model] m1_run``), which travels inside M2's model and guide."""

from __future__ import annotations

import torch
from torch import nn

from ppvae.errors import SpecError
from ppvae.models.abilities import AmortizedPosterior, Decodes
from ppvae.models.base import ModelContext, PretrainedRun

__all__ = ["M1Features", "Features", "m1_features"]


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


class Features(nn.Module):
    """Shared by model and guide: the data as M2 sees it (raw, or M1 features)."""

    def __init__(self, m1: M1Features | None) -> None:
        super().__init__()
        self.m1 = m1
        self.train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.m1 is None else self.m1.encode(x)

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.m1 is None else self.m1.decode(out)

    def train(self, mode: bool = True) -> Features:
        # always in eval mode: nothing here trains (the M1 weights are frozen), and Pyro
        # warns about frozen parameters of modules in training mode
        return super().train(False)


def m1_features(run: PretrainedRun, ctx: ModelContext) -> M1Features:
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
