"""ReparamDiagonalNormal against torch's Normal: densities, sampling, gradients, KL."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from ppvae.context import BuildContext
from ppvae.distributions import ReparamDiagonalNormal
from ppvae.guides import DiagonalNormalEncoder

SHAPES = [(1,), (3,), (4, 2), (2, 3, 5), (1, 4, 1, 3)]


def _params(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(shape, generator=g) * 2
    scale = torch.rand(shape, generator=g) * 2 + 0.05
    return loc, scale


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_log_prob_matches_torch_normal(shape):
    loc, scale = _params(shape)
    q = ReparamDiagonalNormal(loc, scale)
    ref = dist.Normal(loc, scale).to_event(1)
    assert q.batch_shape == ref.batch_shape == torch.Size(shape[:-1])
    assert q.event_shape == ref.event_shape == torch.Size(shape[-1:])
    for value in (ref.sample((7,)), loc + 3 * scale, torch.zeros(shape)):
        torch.testing.assert_close(q.log_prob(value), ref.log_prob(value), rtol=1e-5, atol=1e-5)


def test_log_prob_broadcasts_values_over_batch():
    loc, scale = _params((4, 3))
    q = ReparamDiagonalNormal(loc, scale)
    value = torch.randn(6, 1, 3)
    out = q.log_prob(value)
    assert out.shape == (6, 4)
    torch.testing.assert_close(out, dist.Normal(loc, scale).to_event(1).log_prob(value))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_change_of_variables(shape):
    r"""log q(z) = log N(eps; 0, I) - sum log sigma, with z = mu + sigma eps."""
    loc, scale = _params(shape, seed=1)
    q = ReparamDiagonalNormal(loc, scale)
    eps = torch.randn((5, *shape))
    z = loc + scale * eps
    log_p_eps = (-0.5 * eps**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    expected = log_p_eps - scale.log().sum(-1)
    torch.testing.assert_close(q.log_prob(z), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("sample_shape", [(), (1,), (5,), (2, 3)], ids=str)
def test_rsample_shape_and_moments(shape, sample_shape):
    loc, scale = _params(shape)
    q = ReparamDiagonalNormal(loc, scale)
    assert q.rsample(sample_shape).shape == torch.Size(sample_shape) + torch.Size(shape)
    assert q.sample(sample_shape).shape == torch.Size(sample_shape) + torch.Size(shape)
    assert q.has_rsample
    torch.testing.assert_close(q.mean, loc)
    torch.testing.assert_close(q.variance, scale**2)


def test_rsample_moments_match():
    loc, scale = _params((3,))
    torch.manual_seed(0)
    z = ReparamDiagonalNormal(loc, scale).rsample((20000,))
    se = scale / math.sqrt(20000)
    assert ((z.mean(0) - loc).abs() < 5 * se).all()
    torch.testing.assert_close(z.std(0), scale, rtol=0.03, atol=0)


def test_gradients_reach_loc_and_scale_through_rsample():
    loc, scale = _params((4, 3))
    loc.requires_grad_(True)
    scale.requires_grad_(True)
    torch.manual_seed(0)
    z = ReparamDiagonalNormal(loc, scale).rsample()
    # d z / d loc = 1, d z / d scale = eps = (z - loc) / scale
    z.sum().backward()
    torch.testing.assert_close(loc.grad, torch.ones(4, 3))
    torch.testing.assert_close(scale.grad, ((z - loc) / scale).detach())


def test_gradients_reach_an_encoders_weights():
    ctx = BuildContext(data_dim=5, latent_dim=2, hidden=(7,))
    encoder = DiagonalNormalEncoder(ctx, min_scale=1e-4)
    q = encoder(torch.randn(3, 5))
    assert isinstance(q, ReparamDiagonalNormal)
    (q.rsample((2,)) ** 2).sum().backward()
    for name, p in encoder.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_expand():
    loc, scale = _params((2, 3))
    q = ReparamDiagonalNormal(loc, scale)
    e = q.expand((4, 2))
    assert isinstance(e, ReparamDiagonalNormal)
    assert e.batch_shape == (4, 2) and e.event_shape == (3,)
    assert e.rsample().shape == (4, 2, 3)
    value = torch.randn(4, 2, 3)
    torch.testing.assert_close(
        e.log_prob(value), dist.Normal(loc, scale).to_event(1).expand((4, 2)).log_prob(value)
    )
    torch.testing.assert_close(e.entropy(), q.entropy().expand(4, 2))
    # the original is untouched
    assert q.batch_shape == (2,)


def test_entropy_matches_torch():
    loc, scale = _params((5, 4))
    q = ReparamDiagonalNormal(loc, scale)
    torch.testing.assert_close(q.entropy(), dist.Normal(loc, scale).to_event(1).entropy())


def test_analytic_kl_against_torch():
    loc_q, scale_q = _params((5, 4), seed=2)
    loc_p, scale_p = _params((5, 4), seed=3)
    expected = kl_divergence(dist.Normal(loc_q, scale_q), dist.Normal(loc_p, scale_p)).sum(-1)
    q = ReparamDiagonalNormal(loc_q, scale_q)
    # against itself (the registered pair) and against an Independent Normal (the prior)
    torch.testing.assert_close(kl_divergence(q, ReparamDiagonalNormal(loc_p, scale_p)), expected)
    torch.testing.assert_close(kl_divergence(q, dist.Normal(loc_p, scale_p).to_event(1)), expected)
    torch.testing.assert_close(
        kl_divergence(
            q, torch.distributions.Independent(torch.distributions.Normal(loc_p, scale_p), 1)
        ),
        expected,
    )
    torch.testing.assert_close(kl_divergence(q, q), torch.zeros(5))


def test_analytic_kl_to_a_broadcast_standard_normal_prior():
    loc, scale = _params((6, 3))
    q = ReparamDiagonalNormal(loc, scale)
    prior = dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
    closed = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)
    torch.testing.assert_close(kl_divergence(q, prior), closed)
    torch.testing.assert_close(kl_divergence(q, prior.expand([6])), closed)


def test_analytic_kl_matches_monte_carlo():
    loc, scale = _params((3,), seed=4)
    q = ReparamDiagonalNormal(loc, scale)
    p = dist.Normal(torch.zeros(3), 1.5).to_event(1)
    torch.manual_seed(0)
    z = q.rsample((40000,))
    mc = q.log_prob(z) - p.log_prob(z)
    assert abs(float(mc.mean() - kl_divergence(q, p))) < 5 * float(mc.std()) / 200


def test_kl_to_a_non_normal_independent_is_not_implemented():
    q = ReparamDiagonalNormal(torch.zeros(3), torch.ones(3))
    p = dist.Laplace(torch.zeros(3), 1.0).to_event(1)
    with pytest.raises(NotImplementedError):
        kl_divergence(q, p)


def test_needs_a_vector():
    with pytest.raises(ValueError, match="at least one dimension"):
        ReparamDiagonalNormal(torch.tensor(0.0), torch.tensor(1.0))


def test_validation_refuses_bad_scale():
    with pytest.raises(ValueError):
        ReparamDiagonalNormal(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]), validate_args=True)


def test_loc_and_scale_broadcast():
    q = ReparamDiagonalNormal(torch.zeros(4, 3), torch.tensor([1.0, 2.0, 3.0]))
    assert q.scale.shape == (4, 3) and q.batch_shape == (4,)
