"""Priors, likelihoods and guides: closed-form densities, shapes, parameters, data checks."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

from ppvae.context import BuildContext
from ppvae.distributions import ReparamDiagonalNormal
from ppvae.errors import DataError, PpvaeError, SpecError
from ppvae.guides import GUIDES, DiagonalNormalGuide
from ppvae.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
)
from ppvae.priors import PRIORS

CTX = BuildContext(data_dim=6, latent_dim=3, hidden=(8,))


def _one_sentence(err: BaseException) -> None:
    message = str(err)
    assert isinstance(err, PpvaeError)
    assert message and "\n" not in message, message


# --------------------------------------------------------------------------------------
# priors


@pytest.mark.parametrize("kind", list(PRIORS))
def test_every_prior_gives_a_latent_vector_distribution(kind):
    prior = PRIORS.get(kind)().build(CTX)
    p = prior()
    assert p.event_shape == (CTX.latent_dim,)
    assert len(p.batch_shape) == 0 or all(s == 1 for s in p.batch_shape)
    z = p.sample((11,))
    assert z.shape[-2:] == (11, CTX.latent_dim)
    assert torch.isfinite(p.log_prob(z)).all()


def test_standard_normal_prior_closed_form():
    p = PRIORS.get("standard_normal")().build(CTX)()
    z = torch.randn(5, 3)
    expected = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(p.log_prob(z), expected)
    # no trainable parameters, but buffers that follow .to()
    module = PRIORS.get("standard_normal")().build(CTX)
    assert list(module.parameters()) == []
    assert {n for n, _ in module.named_buffers()} == {"loc", "scale"}


# --------------------------------------------------------------------------------------
# likelihoods


def _lik(cfg, data_dim=6):
    return cfg.build(BuildContext(data_dim=data_dim, latent_dim=2))


@pytest.mark.parametrize("kind", list(LIKELIHOODS))
def test_every_likelihood_gives_a_data_vector_distribution(kind):
    lik = _lik(LIKELIHOODS.get(kind)())
    out = torch.randn(4, 5, 6 * lik.params_per_dim)
    d = lik(out)
    assert d.event_shape == (6,)
    assert d.batch_shape == (4, 5)
    assert lik.mean(out).shape == (4, 5, 6)
    x = torch.bernoulli(torch.full((4, 5, 6), 0.5))
    assert d.log_prob(x).shape == (4, 5)


def test_bernoulli_log_prob_closed_form():
    lik = _lik(BernoulliLikelihood())
    logits = torch.randn(3, 6) * 3
    x = torch.bernoulli(torch.full((3, 6), 0.4))
    p = torch.sigmoid(logits)
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(lik(logits).log_prob(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        lik(logits).log_prob(x),
        torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1),
    )
    torch.testing.assert_close(lik.mean(logits), p)


def test_continuous_bernoulli_log_prob_closed_form():
    lik = _lik(ContinuousBernoulliLikelihood())
    logits = torch.randn(3, 6) * 2
    x = torch.rand(3, 6)
    lam = torch.sigmoid(logits).double()
    xd = x.double()
    # log C(lam) + x log lam + (1 - x) log(1 - lam), C(lam) = 2 artanh(1 - 2 lam) / (1 - 2 lam)
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))
    expected = (log_c + xd * lam.log() + (1 - xd) * (1 - lam).log()).sum(-1)
    torch.testing.assert_close(lik(logits).log_prob(x).double(), expected, rtol=1e-4, atol=1e-4)
    ref = torch.distributions.ContinuousBernoulli(logits=logits)
    torch.testing.assert_close(lik(logits).log_prob(x), ref.log_prob(x).sum(-1))
    torch.testing.assert_close(lik.mean(logits), ref.mean)


def test_continuous_bernoulli_is_a_density_on_the_unit_interval():
    lik = _lik(ContinuousBernoulliLikelihood(), data_dim=1)
    grid = (torch.arange(20000) + 0.5) / 20000
    for logit in (-3.0, -0.2, 0.0, 1.5):
        d = lik(torch.full((20000, 1), logit))
        integral = d.log_prob(grid[:, None]).exp().mean()
        assert abs(float(integral) - 1.0) < 1e-3


@pytest.mark.parametrize("learn", ["fixed", "global", "pixel"])
def test_gaussian_log_prob_closed_form(learn):
    lik = _lik(GaussianLikelihood(scale=0.3, learn=learn))
    loc = torch.randn(4, 6)
    x = torch.randn(4, 6)
    torch.testing.assert_close(
        lik.scale.detach(), torch.full_like(lik.scale, 0.3), atol=2e-6, rtol=0
    )
    sigma = float(lik.scale.detach().flatten()[0])
    expected = (
        -0.5 * ((x - loc) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    ).sum(-1)
    torch.testing.assert_close(lik(loc).log_prob(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lik.mean(loc), loc)


@pytest.mark.parametrize(("learn", "count"), [("fixed", 0), ("global", 1), ("pixel", 6)])
def test_gaussian_parameter_counts(learn, count):
    lik = _lik(GaussianLikelihood(learn=learn))
    assert sum(p.numel() for p in lik.parameters()) == count
    if count:
        d = lik(torch.zeros(2, 6))
        d.log_prob(torch.ones(2, 6)).sum().backward()
        (param,) = lik.parameters()
        assert param.grad is not None and torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0


def test_gaussian_pixel_scales_are_separate():
    lik = _lik(GaussianLikelihood(scale=1.0, learn="pixel"))
    with torch.no_grad():
        lik.raw_scale.copy_(torch.arange(6.0) - 2)
    sigma = F.softplus(torch.arange(6.0) - 2) + 1e-6
    loc, x = torch.zeros(3, 6), torch.randn(3, 6)
    expected = torch.distributions.Normal(loc, sigma).log_prob(x).sum(-1)
    torch.testing.assert_close(lik(loc).log_prob(x), expected)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_gaussian_scale_must_be_positive(scale):
    with pytest.raises(SpecError, match="likelihood.scale must be positive") as err:
        GaussianLikelihood(scale=scale)
    _one_sentence(err.value)


def test_bernoulli_refuses_non_binary_data_and_says_what_to_do():
    x = torch.tensor([[0.0, 0.5, 1.0]])
    with pytest.raises(DataError) as err:
        BernoulliLikelihood().check_data(x, binarized=False, where="the toy data")
    message = str(err.value)
    assert "binarize" in message and "continuous_bernoulli" in message and "the toy data" in message
    _one_sentence(err.value)
    # binary data, or data that the loader binarizes, are fine
    BernoulliLikelihood().check_data(torch.tensor([[0.0, 1.0]]), binarized=False, where="x")
    BernoulliLikelihood().check_data(x, binarized=True, where="x")


@pytest.mark.parametrize("bad", [-0.01, 1.01])
def test_continuous_bernoulli_refuses_data_outside_the_unit_interval(bad):
    x = torch.tensor([[0.0, 0.5, bad]])
    with pytest.raises(DataError, match=r"\[0, 1\]") as err:
        ContinuousBernoulliLikelihood().check_data(x, binarized=False, where="the toy data")
    _one_sentence(err.value)
    ContinuousBernoulliLikelihood().check_data(torch.rand(4, 3), binarized=False, where="x")


@pytest.mark.parametrize("kind", list(LIKELIHOODS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_every_likelihood_refuses_non_finite_data(kind, bad):
    x = torch.tensor([[0.0, bad]])
    with pytest.raises(DataError, match="NaN or infinite") as err:
        LIKELIHOODS.get(kind)().check_data(x, binarized=True, where="the toy data")
    _one_sentence(err.value)


def test_gaussian_accepts_any_real_data():
    GaussianLikelihood().check_data(torch.randn(5, 3) * 10, binarized=False, where="x")


# --------------------------------------------------------------------------------------
# guides


@pytest.mark.parametrize("kind", list(GUIDES))
def test_every_guide_maps_data_to_a_reparameterized_latent_distribution(kind):
    guide = GUIDES.get(kind)().build(CTX)
    for batch in [(4,), (2, 4)]:
        q = guide(torch.randn(*batch, CTX.data_dim))
        assert q.has_rsample
        assert q.event_shape == (CTX.latent_dim,)
        assert q.batch_shape == batch
        z = q.rsample()
        assert z.shape == (*batch, CTX.latent_dim)
        assert torch.isfinite(q.log_prob(z)).all()


def test_diagonal_normal_guide_is_mlp_with_softplus_scale():
    guide = DiagonalNormalGuide(min_scale=0.01).build(CTX)
    x = torch.randn(5, 6)
    q = guide(x)
    assert isinstance(q, ReparamDiagonalNormal)
    out = guide.net(x)
    torch.testing.assert_close(q.loc, out[..., :3])
    torch.testing.assert_close(q.scale, F.softplus(out[..., 3:]) + 0.01)
    assert (q.scale >= 0.01).all()
    # the network: 6 -> 8 -> 2 * latent_dim
    sizes = [m.out_features for m in guide.net if isinstance(m, torch.nn.Linear)]
    assert sizes == [8, 6]


@pytest.mark.parametrize("min_scale", [-0.1, float("nan")])
def test_guide_min_scale_must_be_non_negative(min_scale):
    with pytest.raises(SpecError, match="guide.min_scale") as err:
        DiagonalNormalGuide(min_scale=min_scale)
    _one_sentence(err.value)


def test_guide_distribution_agrees_with_torch_normal():
    guide = DiagonalNormalGuide().build(CTX)
    q = guide(torch.randn(3, 6))
    ref = dist.Normal(q.loc, q.scale).to_event(1)
    z = ref.sample((4,))
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z), rtol=1e-5, atol=1e-5)
