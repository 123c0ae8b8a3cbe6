"""The zoo's guides: full-covariance Gaussian and flows (IAF, planar, radial, spline).

Every guide's log q at its own draws is checked against the change of variables with an
autograd Jacobian: log q(z) = log q0(eps) - log |det dz/deps|, z = T(eps).
"""

from __future__ import annotations

import re

import pyro.distributions as dist
import pytest
import torch
from torch.autograd.functional import jacobian

import ppvae
from ppvae.context import BuildContext
from ppvae.errors import PpvaeError, SpecError
from ppvae.flows import FlowDistribution
from ppvae.guides import GUIDES, FullNormalGuide, ReparamFullNormal
from ppvae.infer.objectives import ElboConfig, MeanFieldElboConfig
from ppvae.models.vae import build_vae
from ppvae.run import build
from ppvae.spec import parse_spec

FLOWS = ["iaf", "planar", "radial", "spline"]
KINDS = ["full_normal", *FLOWS]
K, B, D = 3, 2, 5
SMALL = {
    "iaf": {},
    "planar": {"num_steps": 3},
    "radial": {"num_steps": 3},
    "spline": {"count_bins": 4},
}


def _one_sentence(err: BaseException) -> None:
    message = str(err)
    assert isinstance(err, PpvaeError)
    assert message and "\n" not in message and not re.search(r"\.\s+[A-Z]", message), message


def _guide(kind: str, latent_dim: int = 2, **options):
    cfg = GUIDES.get(kind)(**{**SMALL.get(kind, {}), **options})
    return cfg.build(BuildContext(data_dim=D, latent_dim=latent_dim, hidden=(8,)))


def _base_and_map(q, k: int):
    """A base draw eps (k, B, d), its log-density, and the map eps -> z of ``q``."""
    if isinstance(q, ReparamFullNormal):
        eps = torch.randn(k, *q.batch_shape, q.event_shape[0])
        log_q0 = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum(-1)

        def push(e):
            return q.loc + (q.scale_tril @ e.unsqueeze(-1)).squeeze(-1)

        return eps, log_q0, push
    assert isinstance(q, FlowDistribution)
    eps = q.base_dist.rsample((k,))
    log_q0 = q.base_dist.log_prob(eps)

    def push(e):
        for t in q.transforms:
            e = t(e)
        return e

    return eps, log_q0, push


def _log_det_blocks(push, eps: torch.Tensor) -> torch.Tensor:
    """log |det dz/deps| per draw, from the full autograd Jacobian (draws independent)."""
    k, b, d = eps.shape
    jac = jacobian(push, eps.detach()).reshape(k * b, d, k * b, d)
    blocks = torch.stack([jac[i, :, i, :] for i in range(k * b)])
    off = jac.clone()
    for i in range(k * b):
        off[i, :, i, :] = 0
    assert off.abs().max() < 1e-6  # each z depends on its own eps only
    return torch.linalg.slogdet(blocks)[1].reshape(k, b)


@pytest.mark.parametrize("latent_dim", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_log_q_is_change_of_variables_with_autograd_jacobian(kind, latent_dim):
    q = _guide(kind, latent_dim)(torch.randn(B, D))
    with torch.no_grad():
        eps, log_q0, push = _base_and_map(q, K)
        z = push(eps)
        log_q = q.log_prob(z)  # at the guide's own draw (cached inverse for flows)
    expected = log_q0 - _log_det_blocks(push, eps)
    assert log_q.shape == (K, B)
    torch.testing.assert_close(log_q, expected, rtol=1e-4, atol=1e-4)


def test_full_normal_matches_torch_multivariate_normal_and_its_kl():
    q = _guide("full_normal", 3)(torch.randn(B, D))
    tril = q.scale_tril
    assert torch.equal(tril, torch.tril(tril)) and (tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    ref = torch.distributions.MultivariateNormal(q.loc, scale_tril=tril)
    z = torch.randn(K, B, 3) * 2
    torch.testing.assert_close(q.log_prob(z), ref.log_prob(z), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.entropy(), ref.entropy(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.variance, ref.variance)
    prior = dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1)  # the standard_normal prior
    ref_prior = torch.distributions.MultivariateNormal(torch.zeros(3), torch.eye(3))
    torch.testing.assert_close(
        torch.distributions.kl_divergence(q, prior),
        torch.distributions.kl_divergence(ref, ref_prior),
        rtol=1e-5,
        atol=1e-5,
    )


def test_full_normal_encoder_outputs_mean_and_triangle():
    guide = FullNormalGuide(min_scale=0.01).build(
        BuildContext(data_dim=D, latent_dim=3, hidden=(8,))
    )
    assert guide.net[-1].out_features == 3 + 3 * 4 // 2  # mu and the 6 entries of L
    q = guide(torch.randn(B, D))
    assert (q.scale_tril.diagonal(dim1=-2, dim2=-1) >= 0.01).all()


@pytest.mark.parametrize("kind", KINDS)
def test_rsample_shapes_and_gradients_reach_every_parameter(kind):
    guide = _guide(kind, 2)
    q = guide(torch.randn(B, D))
    assert q.has_rsample and q.batch_shape == (B,) and q.event_shape == (2,)
    z = q.rsample((K,))
    assert z.shape == (K, B, 2)
    assert q.log_prob(z).shape == (K, B)
    assert q.mean.shape == (B, 2)
    (z.pow(2).sum() + z.sum()).backward()
    for name, p in guide.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", ["full_normal", "iaf", "spline"])
def test_invertible_guides_score_any_z(kind):
    q = _guide(kind, 3)(torch.randn(B, D))
    assert GUIDES.get(kind).log_prob_anywhere
    with torch.no_grad():
        z = q.rsample((K,))
        cached = q.log_prob(z)
        inverted = q.log_prob(z.clone())  # a new tensor: the inverse is computed
    torch.testing.assert_close(inverted, cached, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_planar_and_radial_score_only_their_own_draws(kind):
    assert not GUIDES.get(kind).log_prob_anywhere
    q = _guide(kind, 2)(torch.randn(B, D))
    z = q.rsample((K,))
    assert torch.isfinite(q.log_prob(z)).all()
    with pytest.raises(NotImplementedError, match="no inverse"):
        q.log_prob(z.clone())


@pytest.mark.parametrize("kind", KINDS)
def test_elbo_through_pyro_with_vectorized_particles(kind):
    cfg = GUIDES.get(kind)(**SMALL.get(kind, {}))
    model, guide = build_vae(D, 2, (8,), guide=cfg)
    x = torch.bernoulli(torch.full((4, D), 0.5))
    for objective in (ElboConfig(num_particles=3), MeanFieldElboConfig()):
        loss = objective.build()(model, guide, x)
        assert loss.shape == () and torch.isfinite(loss)
        guide.zero_grad()
        loss.backward()
        for name, p in guide.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("kind", KINDS)
def test_each_guide_builds_from_a_spec_and_fits(kind):
    spec = parse_spec(
        {
            "data": {"kind": "digits", "limit": 64, "binarize": "static"},
            "model": {"latent_dim": 2, "hidden": [8]},
            "guide": {"kind": kind, **SMALL.get(kind, {})},
        }
    )
    assert spec.guide.kind == kind
    data, model, guide = build(spec)
    x = data.train.x[:32]
    loss = spec.objective.build()(model, guide, x)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in guide.parameters())
    history = ppvae.fit(model, guide, data.train.x, epochs=1, batch_size=32, progress=False)
    assert all(torch.isfinite(torch.tensor(v)) for v in history["train_loss"])


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"kind": "iaf", "num_steps": 0}, "guide.num_steps must be at least 1, got 0"),
        ({"kind": "planar", "flow_hidden": [4, 0]}, "guide.flow_hidden sizes"),
        ({"kind": "spline", "count_bins": 1}, "guide.count_bins must be at least 2, got 1"),
        ({"kind": "radial", "min_scale": -1.0}, "guide.min_scale must be non-negative"),
        ({"kind": "full_normal", "min_scale": -1.0}, "guide.min_scale must be non-negative"),
    ],
)
def test_bad_options_are_one_sentence_spec_errors(section, match):
    with pytest.raises(SpecError, match=match) as err:
        parse_spec({"guide": section})
    _one_sentence(err.value)


def test_autoregressive_hidden_sizes_must_cover_the_latent_dim():
    with pytest.raises(SpecError, match="guide.flow_hidden sizes must be at least") as err:
        build_vae(D, 4, (8,), guide=GUIDES.get("iaf")(flow_hidden=(3,)))
    _one_sentence(err.value)
    build_vae(D, 4, (8,), guide=GUIDES.get("planar")(flow_hidden=(3,)))  # not autoregressive


def test_flow_hidden_defaults_to_the_model_hidden_sizes():
    guide = _guide("iaf", 2)
    sizes = [layer.out_features for layer in guide.flows[0].nn.layers[:-1]]
    assert sizes == [8]
    guide = _guide("iaf", 2, flow_hidden=(6, 5))
    assert [layer.out_features for layer in guide.flows[0].nn.layers[:-1]] == [6, 5]


@pytest.mark.parametrize("kind", ["planar", "radial"])
@pytest.mark.parametrize("estimator", ["stl", "dreg"])
def test_non_invertible_flows_refuse_stl_and_dreg(kind, estimator):
    raw = {"guide": {"kind": kind}, "objective": {"kind": "iwae", "estimator": estimator}}
    with pytest.raises(SpecError, match="estimator") as err:
        parse_spec(raw)
    _one_sentence(err.value)
    parse_spec({**raw, "objective": {"kind": "iwae"}})  # reparam is fine
