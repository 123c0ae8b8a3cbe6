"""Importance-weighted and Rényi bounds: values, gradient estimators, minibatch scaling."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.infer
import pyro.poutine as poutine
import pytest
import torch
from pyro.nn import PyroModule
from pyro.poutine.messenger import Messenger

from ppvae.errors import SpecError
from ppvae.infer.bounds import (
    ESTIMATORS,
    IwaeConfig,
    PyroRenyi,
    PyroRenyiConfig,
    RenyiBound,
    RenyiConfig,
)
from ppvae.infer.importance import log_marginal_likelihood
from ppvae.infer.objectives import OBJECTIVES, build_objective
from ppvae.infer.traces import vectorized_traces


def _seeded(seed, fn, *args):
    torch.manual_seed(seed)
    return fn(*args)


# --------------------------------------------------------------------------------------
# registry and options


def test_kinds_are_registered_and_build():
    for kind in ("iwae", "renyi", "pyro_renyi"):
        assert kind in OBJECTIVES
    iwae = build_objective("iwae")
    assert isinstance(iwae, RenyiBound)
    assert (iwae.alpha, iwae.num_particles, iwae.estimator) == (0.0, 5, "reparam")
    renyi = build_objective(RenyiConfig(alpha=0.5, num_particles=3, estimator="dreg"))
    assert (renyi.alpha, renyi.num_particles, renyi.estimator) == (0.5, 3, "dreg")
    assert isinstance(build_objective("pyro_renyi"), PyroRenyi)


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda: IwaeConfig(num_particles=0), "objective.num_particles"),
        (
            lambda: IwaeConfig(estimator="x"),
            "objective.estimator must be one of reparam, stl, dreg, got 'x'",
        ),
        (lambda: RenyiConfig(alpha=-0.5), "objective.alpha"),
        (lambda: RenyiConfig(estimator="score"), "objective.estimator"),
        (lambda: PyroRenyiConfig(alpha=1.0), "objective.alpha"),
        (lambda: PyroRenyiConfig(num_particles=0), "objective.num_particles"),
    ],
)
def test_bad_options_are_spec_errors_naming_the_key(make, pattern):
    with pytest.raises(SpecError, match=pattern):
        make()


# --------------------------------------------------------------------------------------
# values


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_exact_posterior_bound_is_log_px(ppca, alpha, estimator):
    x = ppca.sample(4)
    loss = RenyiBound(alpha, num_particles=5, estimator=estimator)(ppca.model, ppca.exact_guide, x)
    assert float(loss) == pytest.approx(-float(ppca.log_px(x).sum()), abs=1e-4)


def test_iwae_with_one_particle_is_the_elbo(ppca):
    x, guide = ppca.sample(6), ppca.scaled_guide(1.5)
    iwae = _seeded(0, RenyiBound(0.0, 1), ppca.model, guide, x)
    elbo = _seeded(0, pyro.infer.Trace_ELBO().differentiable_loss, ppca.model, guide, x)
    assert float(iwae) == pytest.approx(float(elbo), rel=1e-6)


def test_renyi_alpha_zero_is_iwae_and_alpha_one_is_the_elbo(ppca):
    x, guide = ppca.sample(6), ppca.scaled_guide(1.5)
    iwae = _seeded(1, RenyiBound(0.0, 5), ppca.model, guide, x)
    renyi0 = _seeded(1, build_objective(RenyiConfig(alpha=0.0)), ppca.model, guide, x)
    assert float(renyi0) == float(iwae)
    elbo = pyro.infer.Trace_ELBO(num_particles=5, vectorize_particles=True)
    elbo.differentiable_loss(ppca.model, guide, x)  # let Pyro guess its plate nesting
    expected = _seeded(2, elbo.differentiable_loss, ppca.model, guide, x)
    renyi1 = _seeded(2, RenyiBound(1.0, 5), ppca.model, guide, x)
    assert float(renyi1) == pytest.approx(float(expected), rel=1e-6)


def test_iwae_bound_rises_with_k_and_stays_below_log_px(ppca):
    torch.manual_seed(3)
    x = ppca.sample(60)
    means = {}
    with torch.no_grad():
        for k in (1, 5, 50):
            objective = RenyiBound(0.0, k)
            losses = [float(objective(ppca.model, ppca.prior_guide, x)) for _ in range(3)]
            means[k] = -sum(losses) / (3 * len(x))
    estimate = log_marginal_likelihood(ppca.model, ppca.prior_guide, x, num_samples=3000)
    assert means[1] < means[5] - 0.1 < means[50] - 0.2
    assert means[50] < estimate.mean
    assert estimate.mean == pytest.approx(float(ppca.log_px(x).mean()), abs=0.15)


def test_renyi_agrees_with_pyro_renyi_elbo(ppca):
    torch.manual_seed(4)
    x, guide = ppca.sample(20), ppca.scaled_guide(1.5)
    ours_fn = RenyiBound(0.5, 5)
    pyros_fn = pyro.infer.RenyiELBO(alpha=0.5, num_particles=5)  # a Python loop
    with torch.no_grad():
        ours = torch.tensor([float(ours_fn(ppca.model, guide, x)) for _ in range(25)])
    pyros = torch.tensor([pyros_fn.loss(ppca.model, guide, x) for _ in range(25)])
    se = math.sqrt(ours.var() / 25 + pyros.var() / 25)
    assert abs(float(ours.mean() - pyros.mean())) < 4 * se
    # vectorized, same random numbers: the same value
    vectorized = pyro.infer.RenyiELBO(alpha=0.5, num_particles=5, vectorize_particles=True)
    vectorized.loss(ppca.model, guide, x)  # let Pyro guess its plate nesting
    expected = _seeded(5, vectorized.loss, ppca.model, guide, x)
    assert float(_seeded(5, ours_fn, ppca.model, guide, x)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_stl_and_dreg_have_the_value_of_reparam(ppca, alpha):
    x, guide = ppca.sample(5), ppca.scaled_guide(1.7)
    values = [
        float(_seeded(6, RenyiBound(alpha, 7, estimator), ppca.model, guide, x))
        for estimator in ESTIMATORS
    ]
    assert values[1] == pytest.approx(values[0], rel=1e-6)
    assert values[2] == pytest.approx(values[0], rel=1e-6)


# --------------------------------------------------------------------------------------
# gradients


class _Vae:
    """A tiny Bernoulli VAE as a PyroModule pair (6 pixels, 2 latents, 8 hidden)."""

    def __init__(self):
        pyro.clear_param_store()
        torch.manual_seed(7)

        class Decoder(PyroModule):
            def __init__(self):
                super().__init__()
                self.net = torch.nn.Sequential(
                    torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6)
                )

            def forward(self, x):
                with pyro.plate("data", x.shape[0]):
                    z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
                    pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(1), obs=x)

        class Encoder(PyroModule):
            def __init__(self):
                super().__init__()
                self.net = torch.nn.Sequential(
                    torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)
                )

            def forward(self, x):
                with pyro.plate("data", x.shape[0]):
                    loc, raw = self.net(x).chunk(2, -1)
                    scale = torch.nn.functional.softplus(raw) + 1e-3
                    pyro.sample("z", dist.Normal(loc, scale).to_event(1))

        self.model, self.guide = Decoder(), Encoder()
        self.x = torch.bernoulli(torch.full((5, 6), 0.4))

    def parameters(self):
        return [*self.model.named_parameters(), *self.guide.named_parameters()]


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_gradients_reach_every_parameter(alpha, estimator):
    vae = _Vae()
    objective = RenyiBound(alpha, 4, estimator)
    loss = objective.loss_and_grads(vae.model, vae.guide, vae.x)
    assert not loss.requires_grad and torch.isfinite(loss)
    for name, param in vae.parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def _grads(objective, pair, x, seed):
    for p in [*pair.model.parameters(), *pair.guide.parameters()]:
        p.grad = None
    torch.manual_seed(seed)
    objective(pair.model, pair.guide, x).backward()
    guide = {n: p.grad.clone() for n, p in pair.guide.named_parameters()}
    model = {n: p.grad.clone() for n, p in pair.model.named_parameters()}
    return guide, model


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_stl_and_dreg_guide_gradient_vanishes_at_the_exact_posterior(ppca, ppca_modules, alpha):
    x = ppca.sample(6)
    ref_guide, ref_model = _grads(RenyiBound(alpha, 5, "reparam"), ppca_modules, x, seed=8)
    assert max(g.abs().max() for g in ref_guide.values()) > 1e-2  # the score term's noise
    for estimator in ("stl", "dreg"):
        guide, model = _grads(RenyiBound(alpha, 5, estimator), ppca_modules, x, seed=8)
        for name, grad in guide.items():
            assert grad.abs().max() < 1e-4, (estimator, name, grad)
        for name, grad in model.items():  # equal weights: the model gradient is unchanged
            assert torch.allclose(grad, ref_model[name], atol=1e-4), (estimator, name)


class _OneDim:
    """z ~ N(0, 1), x ~ N(z, 1); guide N(m, s) with m, s away from the posterior."""

    def __init__(self):
        self.m = torch.tensor(0.8, requires_grad=True)
        self.log_s = torch.tensor(math.log(0.4), requires_grad=True)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.m, self.log_s.exp()))

    def mean_gradient(self, objective, x, repeats):
        grads = []
        for _ in range(repeats):
            self.m.grad = self.log_s.grad = None
            objective(self.model, self.guide, x).backward()
            grads.append(torch.stack([self.m.grad, self.log_s.grad]) / len(x))
        grads = torch.stack(grads)
        return grads.mean(0), grads.std(0) / math.sqrt(repeats)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_dreg_is_unbiased(alpha):
    torch.manual_seed(9)
    problem, x = _OneDim(), torch.ones(4000)
    ref, ref_se = problem.mean_gradient(RenyiBound(alpha, 5, "reparam"), x, 6)
    dreg, dreg_se = problem.mean_gradient(RenyiBound(alpha, 5, "dreg"), x, 6)
    assert ((dreg - ref).abs() < 4 * torch.sqrt(ref_se**2 + dreg_se**2) + 1e-4).all(), (
        ref,
        dreg,
        ref_se,
        dreg_se,
    )


# --------------------------------------------------------------------------------------
# minibatch scaling and global latents


class _ScaleDataPlate(Messenger):
    """Scale the sites inside the data plate by ``local`` and the others by ``other``."""

    def __init__(self, local: float, other: float = 1.0):
        super().__init__()
        self.local, self.other = local, other

    def _process_message(self, msg):
        if msg["type"] == "sample":
            inside = any(f.name == "data" for f in msg["cond_indep_stack"])
            msg["scale"] = (self.local if inside else self.other) * msg["scale"]


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_minibatch_scale_multiplies_the_per_point_bounds(ppca, alpha, estimator):
    x, guide, s = ppca.sample(4), ppca.scaled_guide(1.5), 250.0 / 4
    objective = RenyiBound(alpha, 6, estimator)
    plain = _seeded(10, objective, ppca.model, guide, x)
    scaled = _seeded(10, objective, poutine.scale(ppca.model, s), poutine.scale(guide, s), x)
    assert float(scaled) == pytest.approx(s * float(plain), rel=1e-5)


def test_global_terms_keep_their_own_scale(global_mean):
    x = torch.tensor([-1.0, 0.5, 2.0])
    objective = RenyiBound(0.0, 5)

    def loss(local, other):
        with _ScaleDataPlate(local, other):
            return float(_seeded(11, objective, global_mean.model, global_mean.guide, x))

    base, doubled_local, doubled_global = loss(1, 1), loss(2, 1), loss(1, 2)
    # loss = -(local_scale * sum_i L_i + global_scale * (log p(mu) - log q(mu)))
    assert loss(3, 1) == pytest.approx(base + 2 * (doubled_local - base), rel=1e-5)
    assert loss(1, 3) == pytest.approx(base + 2 * (doubled_global - base), rel=1e-5)
    assert loss(2, 2) == pytest.approx(doubled_local + doubled_global - base, rel=1e-5)


def test_global_latent_is_shared_by_the_particles_and_the_bound_holds(global_mean):
    torch.manual_seed(12)
    x = torch.tensor([-1.0, 0.5, 2.0, 0.1])
    n, gm = len(x), global_mean
    cov = (1 + gm.sigma**2) * torch.eye(n) + gm.s0**2 * torch.ones(n, n)
    log_joint = float(dist.MultivariateNormal(torch.zeros(n), covariance_matrix=cov).log_prob(x))
    with torch.no_grad():
        losses = torch.tensor(
            [float(RenyiBound(0.0, 20)(gm.model, gm.guide, x)) for _ in range(60)]
        )
    assert float(-losses.mean()) < log_joint + 4 * float(losses.std() / math.sqrt(60))
    # the global site is drawn once, the local one per particle
    _, guide_trace, _ = vectorized_traces(
        gm.model, gm.guide, (x,), {}, num_particles=7, plate="data", only_within="data"
    )
    assert guide_trace.nodes["mu"]["value"].shape == ()
    assert guide_trace.nodes["z"]["value"].shape == (7, n)
    for estimator in ESTIMATORS:
        mu_loc = torch.zeros((), requires_grad=True)

        def guide(x, mu_loc=mu_loc):
            mu = pyro.sample("mu", dist.Normal(mu_loc, gm.s0))
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal((mu + 4 * x) / 5, 0.45))

        RenyiBound(0.0, 5, estimator)(gm.model, guide, x).backward()
        assert mu_loc.grad is not None and torch.isfinite(mu_loc.grad)


# --------------------------------------------------------------------------------------
# refusals and Pyro's RenyiELBO


def test_non_reparameterized_guide_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(0.3))

    with pytest.raises(SpecError, match="'c'.*reparameterizable"):
        RenyiBound(0.0, 3)(model, guide, torch.zeros(2))


def test_pyro_renyi_loss_and_grads(ppca_modules, ppca):
    x = ppca.sample(5)
    objective = build_objective(PyroRenyiConfig(alpha=0.5, num_particles=3))
    loss = objective.loss(ppca_modules.model, ppca_modules.guide, x)
    assert isinstance(loss, torch.Tensor) and not loss.requires_grad
    value = objective.loss_and_grads(ppca_modules.model, ppca_modules.guide, x)
    assert isinstance(value, torch.Tensor) and not value.requires_grad
    assert torch.isfinite(value)
    for name, param in ppca_modules.model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Parameter(torch.zeros(ppca.k))

        def forward(self, x):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(self.loc, 1.0).to_event(1))

    # no param site anywhere: Pyro's RenyiELBO gives no gradient, and training refuses it
    from ppvae.infer.train import fit

    with pytest.raises(SpecError, match="gave no gradient to any parameter"):
        fit(ppca.model, Plain(), x, objective, epochs=1, progress=False, device="cpu")
