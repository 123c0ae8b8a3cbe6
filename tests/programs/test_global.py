"""A hierarchical model with a global latent outside the data plate and ``pyro.param``
sites in model and guide (the shape of Pyro's sparse_gamma_def.py, small and Gaussian):
ppvae trains the sites as SVI does and leaves the trained values in Pyro's store."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from programs_helpers import StepLosses, svi_losses
from torch.distributions import constraints, transform_to

import ppvae

N = 24
POSITIVE = {"sigma", "mu_scale", "z_scale"}


def model(x):
    sigma = pyro.param("sigma", torch.tensor(1.5), constraint=constraints.positive)
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, sigma), obs=x)


def guide(x):
    mu_loc = pyro.param("mu_loc", torch.tensor(0.0))
    mu_scale = pyro.param("mu_scale", torch.tensor(1.0), constraint=constraints.positive)
    mu = pyro.sample("mu", dist.Normal(mu_loc, mu_scale))
    a = pyro.param("a", torch.tensor(0.5))
    z_scale = pyro.param("z_scale", torch.tensor(1.0), constraint=constraints.positive)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(a * x + (1 - a) * mu, z_scale))


def data():
    g = torch.Generator().manual_seed(0)
    return 2.0 + torch.randn(N, generator=g) * 1.3


def test_full_batch_fit_agrees_with_svi_and_leaves_params_in_the_store():
    x = data()
    rec = StepLosses()
    history = ppvae.fit(model, guide, x, epochs=8, batch_size=N, lr=0.05, seed=6,
                        shuffle=False, progress=False, callbacks=[rec])  # fmt: skip
    named = history.state.named_params()
    assert set(named) == {"sigma", "mu_loc", "mu_scale", "a", "z_scale"}
    trained = {}
    for name, value in named.items():
        constraint = constraints.positive if name in POSITIVE else constraints.real
        expected = transform_to(constraint)(value).detach()
        torch.testing.assert_close(pyro.param(name).detach(), expected)
        trained[name] = expected.clone()
    assert abs(float(trained["mu_loc"])) > 0.2  # it moved from 0 towards the data's mean
    # Pyro's SVI on the same full batch and seed: the same draws; ppvae's loss is per point
    # and its global site is scaled by 1/N like the local ones, so Adam takes the same steps
    reference = svi_losses(model, guide, [(x,)], epochs=8, seed=6, lr=0.05)
    torch.testing.assert_close(
        torch.tensor(rec.batch_sums()), torch.tensor(reference), rtol=2e-4, atol=1e-3
    )
    for name, value in trained.items():
        torch.testing.assert_close(pyro.param(name).detach(), value, rtol=1e-4, atol=1e-5)


def test_minibatches_weight_the_global_site_by_one_over_n():
    """One step on a batch of 8 of 24 points: the global site's terms are scaled by 1/24,
    the local ones by 1/8 (Pyro's own scaling of a subsampled plate, divided by N)."""
    x = data()
    state = ppvae.init(model, guide, "elbo", example_batch=(x[:8],), num_data=N,
                       config=ppvae.TrainConfig(seed=1))  # fmt: skip
    _, info = ppvae.step(state, (x[:8],))
    pyro.clear_param_store()  # the step moved the sites in the store: the initial values
    pyro.set_rng_seed(1)
    scaled_model = pyro.poutine.scale(model, scale=1.0)
    trace = pyro.poutine.trace(guide).get_trace(x[:8])
    model_trace = pyro.poutine.trace(pyro.poutine.replay(scaled_model, trace=trace)).get_trace(
        x[:8]
    )
    trace.compute_log_prob()
    model_trace.compute_log_prob()
    total = 0.0
    for sign, tr in ((1.0, model_trace), (-1.0, trace)):
        for name, site in tr.nodes.items():
            if site["type"] == "sample":
                weight = 1 / 24 if name == "mu" else 1 / 8
                total += sign * weight * float(site["log_prob_sum"].detach())
    assert abs(info["loss"] + total) < 1e-5 * max(1.0, abs(total))
