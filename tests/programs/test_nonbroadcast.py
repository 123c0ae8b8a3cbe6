"""Programs that do not broadcast over a leading particle dimension (finding 3): an index
``z[:, 0:1]`` that silently picks the wrong entries under particles, a boolean mask, a
reshape by the batch size. The model is linear-Gaussian and the guide its exact
posterior, so every importance weight is p(x) and log p(x) is known in closed form."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from programs_helpers import S, W, exact_log_px, gaussian_data, posterior

import ppvae
from ppvae import PpvaeWarning, SpecError
from ppvae.infer.objectives import Elbo


def likelihood_loc(z, kind):
    """The decoder's mean from z of shape (B, 1) as the programs are written."""
    if kind == "index":  # under particles (P, B, 1) -> (P, 1, 1): point 0's z for all
        return z[:, 0:1] * W
    if kind == "mask":  # a boolean mask over the points: IndexError under particles
        keep = torch.ones(z.shape[-2], dtype=torch.bool)
        kept = torch.zeros_like(z)
        kept[keep] = z[keep]
        return kept * W
    if kind == "reshape":  # a reshape by the batch size: RuntimeError under particles
        return z.reshape(z.shape[-2], 1) * W
    raise AssertionError(kind)


def programs(kind):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(likelihood_loc(z, kind), S).to_event(1), obs=x)

    def guide(x):
        shift = pyro.param("shift", torch.tensor(0.0))
        loc, scale = posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc + shift, scale).to_event(1))

    return model, guide


KINDS = ["index", "mask", "reshape"]


@pytest.mark.parametrize("kind", KINDS)
def test_evaluator_warns_and_gives_the_exact_answer(kind):
    model, guide = programs(kind)
    x = gaussian_data(10)
    with pytest.warns(PpvaeWarning, match="does not broadcast"):
        result = ppvae.log_marginal_likelihood(model, guide, x, num_samples=4)
    torch.testing.assert_close(result.log_px, exact_log_px(x).double(), rtol=0, atol=1e-4)
    # forced one at a time: no check, no warning, the same exact answer
    forced = ppvae.log_marginal_likelihood(
        model, guide, x, num_samples=4, vectorize_particles=False
    )
    torch.testing.assert_close(forced.log_px, exact_log_px(x).double(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("objective", ["iwae", "renyi"])
def test_particle_bounds_refuse_in_one_sentence(kind, objective):
    model, guide = programs(kind)
    with pytest.raises(SpecError, match="does not broadcast over"):
        ppvae.fit(model, guide, gaussian_data(8), objective=objective, epochs=1, progress=False)


@pytest.mark.parametrize("kind", KINDS)
def test_elbo_with_particles_warns_and_matches_pyros_particle_loop(kind):
    model, guide = programs(kind)
    x = gaussian_data(8)
    with pytest.warns(PpvaeWarning, match="one at a time"):
        state = ppvae.init(model, guide, Elbo(num_particles=3), example_batch=(x,),
                           config=ppvae.TrainConfig(seed=7))  # fmt: skip
    _, info = ppvae.step(state, (x,))
    pyro.clear_param_store()  # the step moved "shift": Pyro starts from its initial value
    pyro.set_rng_seed(7)
    looped = pyro.infer.Trace_ELBO(num_particles=3, vectorize_particles=False).loss(model, guide, x)
    assert abs(info["loss"] * 8 - looped) < 1e-4 * abs(looped)
    # the exact posterior: each particle's ELBO is log p(x), so the loss is exact
    assert abs(info["loss"] + float(exact_log_px(x).mean())) < 1e-4
