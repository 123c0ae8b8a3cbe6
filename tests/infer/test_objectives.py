"""Objectives against closed forms on a conjugate Gaussian model.

Model: :math:`z \\sim N(0, I_D)`, :math:`x | z \\sim N(a z, s^2 I_D)`; exact posterior
:math:`N(a x / (a^2 + s^2), s^2 / (a^2 + s^2))`, marginal :math:`N(0, a^2 + s^2)`. With a
Gaussian guide :math:`N(m, v)` the ELBO is a closed form too.
"""

from __future__ import annotations

import contextlib
import math

import pyro
import pyro.distributions as dist
import pyro.infer
import pytest
import torch

from ppvae.distributions import ReparamDiagonalNormal
from ppvae.errors import SpecError
from ppvae.infer.isolation import isolated_param_store
from ppvae.infer.objectives import OBJECTIVES, Elbo, Objective, PyroElbo, build_objective

with contextlib.suppress(ImportError):  # registers iwae, renyi, pyro_renyi where present
    import ppvae.infer.bounds  # noqa: F401

A, S, D = 1.3, 0.7, 3
#: Multiplies the guide's mean, so that losses require grad (TraceEnum_ELBO insists).
ONE = torch.ones((), requires_grad=True)


def make_model(a: float = A, s: float = S):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(a * z, s).to_event(1), obs=x)

    return model


model = make_model()


def exact_guide(x):
    var = S**2 / (A**2 + S**2)
    with pyro.plate("data", x.shape[0]):
        loc = ONE * A * x / (A**2 + S**2)
        pyro.sample("z", ReparamDiagonalNormal(loc, torch.full_like(x, var**0.5)))


def make_guide(shift: float, scale: float, a: float = A, s: float = S):
    """The exact posterior mean shifted by ``shift``, with standard deviation ``scale``."""

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = ONE * a * x / (a**2 + s**2) + shift
            pyro.sample("z", ReparamDiagonalNormal(loc, torch.full_like(x, scale)))

    return guide


def log_px(x):
    return dist.Normal(0.0, math.sqrt(A**2 + S**2)).log_prob(x).sum()


def closed_form_elbo(x, shift, scale, a=A, s=S):
    m = a * x / (a**2 + s**2) + shift
    v = scale**2
    e_lik = -0.5 * math.log(2 * math.pi * s**2) - ((x - a * m) ** 2 + a**2 * v) / (2 * s**2)
    e_prior = -0.5 * math.log(2 * math.pi) - (m**2 + v) / 2
    entropy = 0.5 * math.log(2 * math.pi * math.e * v)
    return (e_lik + e_prior + entropy).sum()


@pytest.fixture
def x():
    return torch.randn(4, D, generator=torch.Generator().manual_seed(3)) * 1.5


def _value(objective, m, g, x, seed):
    torch.manual_seed(seed)
    with isolated_param_store():
        return float(objective.loss(m, g, x).detach())


def _analytic_kl(objective) -> bool:
    return isinstance(objective, PyroElbo) and isinstance(
        objective.elbo, pyro.infer.TraceMeanField_ELBO
    )


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
@pytest.mark.parametrize("kind", list(OBJECTIVES))
def test_exact_posterior_gives_minus_log_px(kind, x):
    """With the exact posterior every weight p(x, z) / q(z | x) equals p(x): the ELBO and
    every importance-weighted or Rényi bound equal log p(x), whatever the draws. (With an
    analytic KL only the expectation is exact: E_q[log p(x|z)] is still sampled.)"""
    expected = -float(log_px(x))
    objective = build_objective(kind)
    values = [_value(objective, model, exact_guide, x, seed) for seed in range(3)]
    if _analytic_kl(objective):
        values = [_value(objective, model, exact_guide, x, seed) for seed in range(100)]
        mean, se = torch.tensor(values).mean(), torch.tensor(values).std() / 100**0.5
        assert abs(float(mean) - expected) < 4 * float(se)
        return
    assert values == pytest.approx([expected] * 3, rel=1e-5)


@pytest.mark.parametrize("num_particles", [1, 3])
@pytest.mark.parametrize("vectorize", [True, False])
def test_elbo_exact_for_any_particles(num_particles, vectorize, x):
    cfg = OBJECTIVES.get("elbo")(num_particles=num_particles, vectorize_particles=vectorize)
    assert _value(cfg.build(), model, exact_guide, x, 0) == pytest.approx(
        -float(log_px(x)), rel=1e-5
    )


def _draws(objective, guide, x, n, m=model):
    values = torch.tensor([_value(objective, m, guide, x, seed) for seed in range(n)])
    return values.double()


def test_elbo_and_meanfield_elbo_are_unbiased_and_analytic_kl_lowers_variance(x):
    # a weak likelihood (a small) and a guide far from the prior: the KL term dominates
    a, s, shift, scale = 0.2, 1.0, 1.5, 0.5
    m, guide = make_model(a, s), make_guide(shift, scale, a, s)
    target = -float(closed_form_elbo(x, shift, scale, a, s))
    n = 120
    mc = _draws(build_objective("elbo"), guide, x, n, m)
    mf = _draws(build_objective("meanfield_elbo"), guide, x, n, m)
    for values in (mc, mf):
        se = float(values.std()) / math.sqrt(n)
        assert abs(float(values.mean()) - target) < 4 * se + 1e-4
    assert mf.std() < 0.5 * mc.std()
    # the bound is below log p(x): the loss above -log p(x)
    log_px_weak = dist.Normal(0.0, math.sqrt(a**2 + s**2)).log_prob(x).sum()
    assert target > -float(log_px_weak)


def test_meanfield_elbo_uses_the_registered_analytic_kl(x):
    """When the likelihood does not depend on z, the mean-field loss is -log p(x|.) + KL,
    exactly and without Monte Carlo noise; the plain ELBO is noisy."""

    def flat_model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(torch.zeros(D), S).to_event(1), obs=x)

    loc, scale = 0.3 * x, torch.full_like(x, 0.6)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", ReparamDiagonalNormal(loc, scale))

    kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum()
    expected = -float(dist.Normal(0.0, S).log_prob(x).sum()) + float(kl)
    mf = [_value(build_objective("meanfield_elbo"), flat_model, guide, x, s) for s in range(5)]
    assert mf == pytest.approx([expected] * 5, rel=1e-6)
    mc = [_value(build_objective("elbo"), flat_model, guide, x, s) for s in range(5)]
    assert len(set(mc)) == 5


def test_vectorized_and_sequential_particles_have_the_same_mean(x):
    shift, scale = -0.3, 0.8
    guide = make_guide(shift, scale)
    target = -float(closed_form_elbo(x, shift, scale))
    n = 80
    single = _draws(build_objective("elbo"), guide, x, n)
    for vectorize in (True, False):
        cfg = OBJECTIVES.get("elbo")(num_particles=4, vectorize_particles=vectorize)
        values = _draws(cfg.build(), guide, x, n)
        se = float(values.std()) / math.sqrt(n)
        assert abs(float(values.mean()) - target) < 4 * se + 1e-4
        # four particles: the variance of the average is about a quarter
        ratio = float(values.var() / single.var())
        assert 0.1 < ratio < 0.6, ratio


def test_loss_and_grads_backpropagates_and_returns_a_detached_loss(x):
    w = torch.nn.Parameter(torch.tensor(0.2))

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", ReparamDiagonalNormal(w * x, torch.full_like(x, 0.5)))

    objective = build_objective("elbo")
    torch.manual_seed(0)
    loss = objective.loss_and_grads(model, guide, x)
    assert not loss.requires_grad and loss.shape == ()
    assert w.grad is not None and torch.isfinite(w.grad) and w.grad != 0
    torch.manual_seed(0)
    assert torch.equal(objective.loss(model, guide, x).detach(), loss)


def test_build_objective_accepts_names_configs_objectives_and_pyro_elbos():
    from_name = build_objective("elbo")
    # ppvae's own ELBO: Trace_ELBO's estimator, computed lean where proven equal
    assert isinstance(from_name, Elbo) and isinstance(from_name.elbo, pyro.infer.Trace_ELBO)
    cfg = OBJECTIVES.get("meanfield_elbo")(num_particles=2, vectorize_particles=False)
    from_cfg = build_objective(cfg)
    assert isinstance(from_cfg.elbo, pyro.infer.TraceMeanField_ELBO)
    assert from_cfg.elbo.num_particles == 2 and not from_cfg.elbo.vectorize_particles
    assert build_objective(from_cfg) is from_cfg
    wrapped = build_objective(pyro.infer.TraceGraph_ELBO())
    assert isinstance(wrapped, Objective) and isinstance(wrapped.elbo, pyro.infer.TraceGraph_ELBO)
    assert "Trace_ELBO" in repr(from_name)
    assert not from_name.enumerates
    assert build_objective(pyro.infer.TraceEnum_ELBO()).enumerates


def test_vectorization_is_only_used_with_several_particles():
    assert not OBJECTIVES.get("elbo")(num_particles=1).build().elbo.vectorize_particles
    assert OBJECTIVES.get("elbo")(num_particles=2).build().elbo.vectorize_particles


def test_unknown_objective_and_bad_particles_are_refused():
    with pytest.raises(
        SpecError, match=r"unknown objective kind 'nope' in objective; allowed: .*elbo"
    ):
        build_objective("nope")
    for kind in OBJECTIVES:
        cls = OBJECTIVES.get(kind)
        if "num_particles" in cls.__dataclass_fields__:
            with pytest.raises(SpecError, match="objective.num_particles must be"):
                cls(num_particles=0)
