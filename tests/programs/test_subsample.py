"""A program that subsamples its own data plate, ``pyro.plate("data", N, subsample=idx)``
(as Pyro's tutorials on minibatching write it): Pyro scales its local sites by N/B, and
ppvae must not scale them again (finding 5)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from programs_helpers import S, W, exact_log_px, gaussian_data, posterior

import ppvae

N, B = 20, 5


def model_subsampled(x, idx):
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    with pyro.plate("data", N, subsample=idx):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide_subsampled(x, idx):
    loc = pyro.param("loc", torch.tensor(0.3))
    mu = pyro.sample("mu", dist.Normal(loc, 0.5))
    with pyro.plate("data", N, subsample=idx):
        pyro.sample("z", dist.Normal((x + mu) / 2, 0.6))


def model_plain(x, idx):
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide_plain(x, idx):
    loc = pyro.param("loc", torch.tensor(0.3))
    mu = pyro.sample("mu", dist.Normal(loc, 0.5))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal((x + mu) / 2, 0.6))


def first_loss(model, guide, batch, seed=3):
    state = ppvae.init(model, guide, "elbo", example_batch=batch, num_data=N,
                       config=ppvae.TrainConfig(seed=seed))  # fmt: skip
    return ppvae.step(state, batch)[1]["loss"]


def test_subsampled_plate_is_scaled_once():
    x = torch.randn(N, generator=torch.Generator().manual_seed(0)) + 1.0
    idx = torch.arange(5, 10)
    batch = (x[idx], idx)
    subsampled = first_loss(model_subsampled, guide_subsampled, batch)
    pyro.clear_param_store()  # the step moved "loc" in the store: start both from 0.3
    plain = first_loss(model_plain, guide_plain, batch)
    assert abs(subsampled - plain) < 1e-5 * abs(plain)
    # and both are Pyro's own minibatch estimate (N/B on local sites) divided by N
    pyro.set_rng_seed(3)
    pyro_loss = pyro.infer.Trace_ELBO().loss(model_subsampled, guide_subsampled, *batch)
    assert abs(subsampled * N - pyro_loss) < 1e-4 * abs(pyro_loss)


def test_fit_with_subsampled_plate_equals_fit_without():
    x = torch.randn(N, generator=torch.Generator().manual_seed(1)) + 1.0
    idx = torch.arange(N)
    runs = []
    for model, guide in ((model_subsampled, guide_subsampled), (model_plain, guide_plain)):
        pyro.clear_param_store()
        history = ppvae.fit(model, guide, (x, idx), epochs=3, batch_size=B, lr=0.05, seed=2,
                            progress=False)  # fmt: skip
        runs.append((history["train_loss"], pyro.param("loc").item()))
    (loss_a, loc_a), (loss_b, loc_b) = runs
    torch.testing.assert_close(torch.tensor(loss_a), torch.tensor(loss_b), rtol=1e-5, atol=1e-6)
    assert abs(loc_a - loc_b) < 1e-5 and abs(loc_a - 0.3) > 1e-3


def test_subsampled_exact_posterior_loss_is_minus_mean_log_px():
    """With the exact posterior as guide the ELBO of every point is log p(x_i): the first
    step's loss on a batch is -mean log p(x_b) exactly (scaled once, not N/B too much)."""
    n = 12
    x = gaussian_data(n)

    def model(x, idx):
        with pyro.plate("data", n, subsample=idx):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z * W, S).to_event(1), obs=x)

    def guide(x, idx):
        shift = pyro.param("shift", torch.tensor(0.0))
        loc, scale = posterior(x)
        with pyro.plate("data", n, subsample=idx):
            pyro.sample("z", dist.Normal(loc + shift, scale).to_event(1))

    idx = torch.tensor([2, 7, 9, 11])
    state = ppvae.init(model, guide, "elbo", example_batch=(x[idx], idx), num_data=n)
    _, info = ppvae.step(state, (x[idx], idx))
    expected = -float(exact_log_px(x[idx]).mean())
    assert abs(info["loss"] - expected) < 1e-4
