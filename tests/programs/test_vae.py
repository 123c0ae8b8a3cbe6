"""A VAE written as Pyro's examples/vae/vae.py writes it: a plain class holding an encoder
and a decoder, ``model`` and ``guide`` methods registering them with ``pyro.module``, a
plate named "data". ppvae must train it as Pyro's SVI does and evaluate it in eval mode."""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import torch
from programs_helpers import StepLosses, agree, looped_log_px, set_modes, svi_losses
from torch import nn
from torch.nn import functional as F

import ppvae

D, Z, H = 12, 2, 16


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D, H)
        self.fc21 = nn.Linear(H, Z)
        self.fc22 = nn.Linear(H, Z)

    def forward(self, x):
        hidden = F.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self, p_drop: float = 0.2) -> None:
        super().__init__()
        self.fc1 = nn.Linear(Z, H)
        self.drop = nn.Dropout(p_drop)
        self.fc21 = nn.Linear(H, D)

    def forward(self, z):
        hidden = self.drop(F.softplus(self.fc1(z)))
        return torch.sigmoid(self.fc21(hidden))


class VAE:
    """Not an nn.Module: the networks are attributes, registered in model and guide."""

    def __init__(self) -> None:
        self.encoder = Encoder()
        self.decoder = Decoder()

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], Z)))
            z_scale = x.new_ones(torch.Size((x.shape[0], Z)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def binary_data(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(3, D, generator=g)
    which = torch.randint(0, 3, (n,), generator=g)
    return (torch.rand(n, D, generator=g) < prototypes[which]).float()


def test_fit_agrees_with_svi_step_by_step_and_trains_the_networks():
    torch.manual_seed(0)
    vae = VAE()
    twin = copy.deepcopy(vae)
    before = copy.deepcopy(vae.decoder.state_dict())
    x = binary_data(48)
    rec = StepLosses()
    history = ppvae.fit(
        vae.model, vae.guide, x, epochs=3, batch_size=16, lr=0.02, seed=5,
        shuffle=False, progress=False, callbacks=[rec],
    )  # fmt: skip
    reference = svi_losses(
        twin.model, twin.guide, [(b,) for b in x.split(16)], epochs=3, seed=5, lr=0.02
    )
    assert len(rec.losses) == len(reference) == 9
    # the same draws, batches and Adam steps: Pyro's batch sums, ppvae's per point
    torch.testing.assert_close(
        torch.tensor(rec.batch_sums()), torch.tensor(reference), rtol=2e-4, atol=1e-3
    )
    assert history["train_loss"][0] == sum(rec.batch_sums()[:3]) / 48
    # the networks trained, and as Pyro's SVI trained its copy
    assert not torch.equal(before["fc1.weight"], vae.decoder.fc1.weight)
    for a, b in zip(vae.decoder.parameters(), twin.decoder.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    for a, b in zip(vae.encoder.parameters(), twin.encoder.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    # the networks of methods are named in the state
    names = history.state.named_params()
    assert any(n.endswith("fc21.weight") for n in names) and len(names) == 10


def test_fit_reproduces_ppvae_shuffle_as_documented():
    torch.manual_seed(0)
    vae = VAE()
    twin = copy.deepcopy(vae)
    x = binary_data(32)
    rec = StepLosses()
    ppvae.fit(vae.model, vae.guide, x, epochs=2, batch_size=16, lr=0.02, seed=3,
              progress=False, callbacks=[rec])  # fmt: skip
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(2):
        perm = torch.randperm(32, generator=g)
        batches += [(x[perm[i : i + 16]],) for i in range(0, 32, 16)]
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    svi = pyro.infer.SVI(twin.model, twin.guide, pyro.optim.Adam({"lr": 0.02}),
                         pyro.infer.Trace_ELBO())  # fmt: skip
    reference = [svi.step(*b) for b in batches]
    torch.testing.assert_close(
        torch.tensor(rec.batch_sums()), torch.tensor(reference), rtol=2e-4, atol=1e-3
    )


def test_evaluator_agrees_with_one_at_a_time_sampler_in_eval_mode():
    torch.manual_seed(0)
    vae = VAE()
    x = binary_data(48)
    ppvae.fit(vae.model, vae.guide, x, epochs=4, batch_size=16, lr=0.02, progress=False)
    nets = [vae.encoder, vae.decoder]
    set_modes(nets, True)
    seen: list[bool] = []
    hook = vae.decoder.drop.register_forward_hook(lambda m, i, o: seen.append(m.training))
    before = copy.deepcopy(vae.decoder.state_dict())
    points = x[:6]
    try:
        result = ppvae.log_marginal_likelihood(vae.model, vae.guide, points, num_samples=600)
    finally:
        hook.remove()
    assert seen and not any(seen), "dropout ran in training mode during evaluation"
    assert vae.decoder.training and vae.decoder.drop.training and vae.encoder.training
    for k, v in vae.decoder.state_dict().items():
        assert torch.equal(v, before[k])
    set_modes(nets, False)
    pyro.set_rng_seed(11)
    log_px, stderr = looped_log_px(vae.model, vae.guide, (points,), 600)
    ok, worst = agree(result.log_px, log_px, result.stderr, stderr)
    assert ok, (result.log_px, log_px, worst)
    # and the estimates are log-probabilities of 12 binary pixels: in (-12 log 2 - slack, 0)
    assert bool((result.log_px < 0).all()) and bool((result.log_px > -20).all())
    # with dropout left on, the decoder would give other numbers: eval mode matters here
    set_modes(nets, True)
    pyro.set_rng_seed(11)
    noisy, _ = looped_log_px(vae.model, vae.guide, (points,), 50)
    assert not torch.allclose(noisy, log_px, atol=1e-3)
