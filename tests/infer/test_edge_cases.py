"""Programs at the edges of the training core, each a number that was once silently wrong
or a legitimate program that was refused (from a review of the core)."""

from __future__ import annotations

import functools
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import ppvae
from ppvae.errors import SpecError
from ppvae.infer.batches import Stream
from ppvae.infer.bounds import IwaeConfig, RenyiBound
from ppvae.infer.callbacks import Callback
from ppvae.infer.config import TrainConfig
from ppvae.infer.lean import LeanElbo
from ppvae.infer.objectives import Elbo, ElboConfig, build_objective


@pytest.fixture(autouse=True)
def _fresh_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def test_a_users_scale_on_an_observed_site_weights_only_that_term_in_the_bounds():
    """IWAE with one particle is the ELBO, also with poutine.scale on one observed site."""
    x, y = torch.randn(8), torch.randn(8)

    def model(x, y):
        with pyro.plate("data", 8):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with poutine.scale(scale=10.0):
                pyro.sample("y", dist.Normal(z, 1.0), obs=y)
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, y):
        with pyro.plate("data", 8):
            pyro.sample("z", dist.Normal(x / 2, 0.7))

    iwae = build_objective(IwaeConfig(num_particles=1))
    torch.manual_seed(0)
    a = iwae(model, guide, x, y)
    torch.manual_seed(0)
    b = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x, y)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_a_pyro_param_created_after_the_first_batch_is_refused():
    calls = {"n": 0}

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        calls["n"] += 1
        a = pyro.param("a", torch.tensor(0.0))
        b = pyro.param("b", torch.tensor(0.0)) if calls["n"] > 20 else 0.0
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(a + b + x / 2, 0.7))

    x = torch.randn(32)
    state = ppvae.init(model, guide, "elbo", example_batch=(x,), config=TrainConfig(lr=0.1))
    with pytest.raises(SpecError, match="pyro.param 'b' first appeared after the first batch"):
        for _ in range(30):
            state, _ = ppvae.step(state, (x,))


def _good(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _good_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, 0.7))


LIN = torch.nn.Linear(1, 1)


def _mixing(x):  # a mean over dim 0 mixes the particles
    pyro.module("lin", LIN)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        mixed = LIN(z.reshape(-1, x.shape[0]).mean(0)[:, None])[:, 0]
        pyro.sample("x", dist.Normal(mixed, 1.0), obs=x)


def test_an_objective_used_before_still_checks_a_new_program():
    x = torch.randn(8)
    used = RenyiBound(0.0, 4)
    used(_good, _good_guide, x)
    with pytest.raises(SpecError, match="does not broadcast"):
        ppvae.init(_mixing, _good_guide, used, example_batch=(x,))


def test_streams_with_different_plate_nesting_share_an_elbo_instance():
    def loc():
        return pyro.param("loc", torch.zeros(3))

    def model0(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide0(x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(loc() + x / 2, 0.7).to_event(1))

    def model1(x):
        with pyro.plate("feat", 3, dim=-1), pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide1(x):
        with pyro.plate("feat", 3, dim=-1), pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(loc() + x / 2, 0.7))

    x0, x1 = torch.randn(16, 3), torch.randn(16, 3)
    history = ppvae.fit(model0, guide0, [Stream(x0), Stream(x1, model=model1, guide=guide1)],
                        Elbo(num_particles=2), epochs=1, batch_size=8, progress=False,
                        device="cpu")  # fmt: skip
    assert len(history) == 1 and history["train_loss"][0] > 0


def test_a_guide_with_its_own_score_function_terms_goes_through_pyro():
    from pyro.distributions.testing.rejection_gamma import ShapeAugmentedGamma

    x = torch.rand(5) + 0.5
    c = torch.tensor(1.5, requires_grad=True)

    def model(x):
        with pyro.plate("data", 5):
            r = pyro.sample("r", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Exponential(r), obs=x)

    def guide(x):
        with pyro.plate("data", 5):
            pyro.sample("r", ShapeAugmentedGamma(c.expand(5), torch.ones(5)))

    lean = LeanElbo(1)
    torch.manual_seed(0)
    lean(model, guide, (x,), {})
    torch.manual_seed(1)
    (ga,) = torch.autograd.grad(lean(model, guide, (x,), {}), c)
    torch.manual_seed(1)
    (gb,) = torch.autograd.grad(pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x), c)
    assert lean.routes() == {"pyro": 1} and torch.equal(ga, gb)


def test_extending_a_cosine_schedule_midway_is_refused(tmp_path):
    settings = dict(batch_size=16, progress=False, lr=0.1, lr_schedule="cosine", device="cpu")

    def guide(x):
        a = pyro.param("a", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(a + x / 2, 0.7))

    x = torch.randn(32)
    ppvae.fit(_good, guide, x, epochs=2, out_dir=tmp_path / "a", **settings)
    with pytest.raises(SpecError, match="cannot be stretched midway"):
        ppvae.fit(_good, guide, x, epochs=6, out_dir=tmp_path / "b",
                  resume_from=tmp_path / "a" / "checkpoints" / "last.pt", **settings)  # fmt: skip


def test_dropout_does_not_fool_the_particle_check():
    enc = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2))
    dec = torch.nn.Linear(2, 3)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(enc(x), 1.0).to_event(1))

    x = torch.randn(16, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "does not broadcast" warning
        for objective in (ElboConfig(num_particles=2), IwaeConfig(num_particles=2)):
            ppvae.init(model, guide, objective, example_batch=(x,))
    assert enc.training  # and the modes are as they were


def test_an_interrupted_fit_still_puts_the_trained_params_back():
    class Stop(Callback):
        def on_epoch_end(self, state, record):
            if state.epoch == 2:
                raise KeyboardInterrupt

    def guide(x):
        a = pyro.param("a", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(a + x / 2, 0.7))

    with pytest.raises(KeyboardInterrupt):
        ppvae.fit(_good, guide, torch.randn(32) + 3, epochs=5, batch_size=16, lr=0.1,
                  progress=False, device="cpu", callbacks=[Stop()])  # fmt: skip
    assert "a" in pyro.get_param_store() and float(pyro.param("a").detach()) != 0.0


def test_random_subsampling_takes_the_lean_route_with_the_guides_indices():
    data = torch.randn(100, 2)
    loc = torch.zeros(100, 2, requires_grad=True)

    def model(data):
        with pyro.plate("data", 100, subsample_size=10) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=data[idx])

    def guide(data):
        with pyro.plate("data", 100, subsample_size=10) as idx:
            pyro.sample("z", dist.Normal(loc[idx] + data[idx], 1.0).to_event(1))

    lean = LeanElbo(1)
    for seed in (0, 1):
        torch.manual_seed(seed)
        ours = lean(model, guide, (data,), {})
        torch.manual_seed(seed)
        ref = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, data)
        assert float(ours) == pytest.approx(float(ref), rel=1e-6)
    assert lean.routes() == {"lean": 1}


def test_distributed_training_refuses_parameters_it_cannot_synchronize():
    def guide(x):
        s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, s))

    with pytest.raises(SpecError, match="synchronizes the parameters of the model and guide"):
        ppvae.init(_good, guide, "elbo", example_batch=(torch.randn(8),), world_size=2,
                   ddp=functools.partial(lambda module: module))  # fmt: skip


def test_networks_held_in_lists_and_dicts_of_an_object_are_found():
    from ppvae.infer.programs import modules_of

    class Holder:
        def __init__(self):
            self.layers = [torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)]
            self.heads = {"loc": torch.nn.Linear(2, 1)}

        def guide(self, x):
            pass

    holder = Holder()
    found = modules_of(holder.guide)
    assert {id(m) for m in found} == {id(m) for m in (*holder.layers, holder.heads["loc"])}
