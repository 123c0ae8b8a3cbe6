"""The zoo's priors: mixture of Gaussians, VampPrior and a normalizing-flow prior."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian

import ppvae
from ppvae.context import BuildContext
from ppvae.errors import PpvaeError, SpecError
from ppvae.guides import GUIDES, DiagonalNormalGuide, GuideConfig
from ppvae.models.vae import VAEConfig, build_vae
from ppvae.priors import PRIORS, FlowPrior, MixturePrior, VampPrior, VampPriorDistribution
from ppvae.run import build
from ppvae.spec import parse_spec

K, B, D = 3, 4, 5
SMALL = {
    "mixture": {"num_components": 3},
    "vamp": {"num_pseudo_inputs": 6},
    "flow": {"num_steps": 2, "flow_hidden": [8]},
}


def _ctx(latent_dim: int = 2) -> BuildContext:
    return BuildContext(data_dim=D, latent_dim=latent_dim, hidden=(8,))


def _one_sentence(err: BaseException) -> None:
    message = str(err)
    assert isinstance(err, PpvaeError)
    assert message and "\n" not in message and not re.search(r"\.\s+[A-Z]", message), message


def _vamp_pair(guide="diagonal_normal", num=4, latent_dim=2):
    return build_vae(D, latent_dim, (8,), prior=VampPrior(num_pseudo_inputs=num), guide=guide)


@pytest.mark.parametrize("kind", ["mixture", "vamp", "flow"])
def test_shapes_broadcasting_and_plate_expansion(kind):
    if kind == "vamp":
        model, _ = _vamp_pair(num=6)
        prior = model.prior
    else:
        prior = PRIORS.get(kind)(**SMALL[kind]).build(_ctx())
    p = prior()
    assert p.batch_shape == () and p.event_shape == (2,)
    z = p.sample((7,))
    assert z.shape == (7, 2)
    assert p.log_prob(torch.randn(K, B, 2)).shape == (K, B)
    inside = p.expand((B,))  # what the model's data plate does
    assert inside.sample().shape == (B, 2)
    assert inside.log_prob(torch.randn(K, B, 2)).shape == (K, B)
    torch.testing.assert_close(inside.log_prob(z[:B]), p.log_prob(z[:B]))


def test_mixture_log_prob_is_a_logsumexp_over_components():
    prior = MixturePrior(num_components=3).build(_ctx(2))
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.3, -1.0, 1.2]))
        prior.raw_scales.uniform_(-1, 1)
    z = torch.randn(K, B, 2) * 2
    weights = torch.softmax(prior.logits, 0)
    scales = F.softplus(prior.raw_scales) + 1e-4
    total = 0.0
    for c in range(3):
        dens = torch.exp(
            -0.5 * ((z - prior.locs[c]) / scales[c]) ** 2
            - scales[c].log()
            - 0.5 * math.log(2 * math.pi)
        ).prod(-1)
        total = total + weights[c] * dens
    lp = prior().log_prob(z)
    torch.testing.assert_close(lp, total.log(), rtol=1e-5, atol=1e-5)
    lp.sum().backward()
    for name, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("guide", ["diagonal_normal", "full_normal", "iaf", "spline"])
def test_vamp_is_the_mean_of_the_guide_densities_at_the_pseudo_inputs(guide):
    model, vae_guide = _vamp_pair(guide, num=4)
    prior = model.prior
    assert prior.posterior is vae_guide.posterior  # shared weights, not a copy
    u = prior.pseudo_inputs
    z = torch.randn(K, B, 2)
    with torch.no_grad():
        densities = torch.stack(
            [vae_guide.posterior(u[c : c + 1]).log_prob(z.clone()).exp() for c in range(4)]
        )
        expected = densities.double().mean(0).log()
        lp = prior().log_prob(z)
    assert lp.shape == (K, B)
    torch.testing.assert_close(lp.double(), expected, rtol=1e-4, atol=1e-4)


def test_vamp_samples_are_reparameterized_through_pseudo_inputs_and_encoder():
    model, guide = _vamp_pair(num=5)
    p = model.prior()
    assert isinstance(p, VampPriorDistribution) and p.has_rsample
    z = p.rsample((K, B))
    assert z.shape == (K, B, 2)
    z.pow(2).sum().backward()
    assert model.prior.pseudo_inputs.grad.abs().sum() > 0
    for name, param in guide.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # the pseudo-inputs live in the model; the shared encoder is trained by both
    names = dict(model.named_parameters())
    assert "prior.pseudo_inputs" in names
    assert names["prior.posterior.net.0.weight"] is guide.posterior.net[0].weight


def test_vamp_initialization_and_standalone_build():
    prior = VampPrior(num_pseudo_inputs=400).build(_ctx())  # its own, unshared encoder
    u = prior.pseudo_inputs.detach()
    assert u.shape == (400, D)
    assert abs(float(u.mean()) - 0.05) < 0.005 and abs(float(u.std()) - 0.01) < 0.002


@dataclass(frozen=True)
class _LocalGuide(GuideConfig):
    """A stand-in for a non-amortized guide (one free q(z) per data point)."""

    amortized = False

    def build(self, ctx):
        return DiagonalNormalGuide().build(ctx)


def test_vamp_refuses_a_non_amortized_guide():
    with pytest.raises(SpecError, match="amortized") as err:
        build_vae(D, 2, (8,), prior=VampPrior(num_pseudo_inputs=3), guide=_LocalGuide())
    _one_sentence(err.value)
    spec = parse_spec({"prior": {"kind": "vamp"}})
    with pytest.raises(SpecError, match="amortized") as err:
        VAEConfig().check_spec(spec.replace(guide=_LocalGuide()))
    _one_sentence(err.value)


@pytest.mark.parametrize("guide", ["planar", "radial"])
def test_vamp_refuses_guides_without_a_density_everywhere(guide):
    with pytest.raises(SpecError, match=f"guide.kind = '{guide}'") as err:
        parse_spec({"prior": {"kind": "vamp"}, "guide": {"kind": guide}})
    _one_sentence(err.value)


@pytest.mark.parametrize(("transform", "latent_dim"), [("affine", 2), ("spline", 1)])
def test_flow_prior_integrates_to_one_on_a_grid(transform, latent_dim):
    prior = FlowPrior(num_steps=2, transform=transform, count_bins=4, flow_hidden=(8,))
    module = prior.build(_ctx(latent_dim))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))  # away from the initialization
        # midpoint rule on [-12, 12]^d (splines have sharp knots: a fine 1-D grid)
        step = 0.04 if latent_dim == 2 else 1e-4
        ticks = torch.arange(-12, 12, step) + step / 2
        grid = torch.cartesian_prod(ticks, ticks) if latent_dim == 2 else ticks[:, None]
        mass = module().log_prob(grid).exp().sum() * step**latent_dim
    assert abs(float(mass) - 1.0) < 2e-3


@pytest.mark.parametrize("transform", ["affine", "spline"])
def test_flow_prior_is_a_change_of_variables(transform):
    module = FlowPrior(num_steps=3, transform=transform, count_bins=4, flow_hidden=(9,)).build(
        _ctx(3)
    )
    p = module()
    z = torch.randn(6, 3)
    density_map = [t.inv for t in reversed(p.transforms)]  # z -> eps

    def to_eps(v):
        for t in density_map:
            v = t(v)
        return v

    eps = to_eps(z)
    log_det = torch.stack([torch.linalg.slogdet(jacobian(to_eps, zi))[1] for zi in z])
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum(-1) + log_det
    torch.testing.assert_close(p.log_prob(z), expected, rtol=1e-4, atol=1e-4)
    # sampling inverts the density map
    with torch.no_grad():
        s = p.sample((5,))
        torch.testing.assert_close(p.log_prob(s), p.log_prob(s.clone()))


def test_flow_prior_parameters_follow_state_dict():
    cfg = FlowPrior(num_steps=2, flow_hidden=(8,))
    a, b = cfg.build(_ctx()), cfg.build(_ctx())
    assert isinstance(a.nets, nn.ModuleList) and len(a.nets) == 2
    assert sum(p.numel() for p in a.parameters()) > 0
    assert all(k.startswith(("nets.", "loc", "scale")) for k in a.state_dict())
    z = torch.randn(4, 2)
    assert not torch.allclose(a().log_prob(z), b().log_prob(z))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a().log_prob(z), b().log_prob(z))
    a().log_prob(z).sum().backward()
    for name, p in a.named_parameters():
        assert p.grad is not None, name


@pytest.mark.parametrize(
    ("section", "match"),
    [
        (
            {"kind": "mixture", "num_components": 0},
            "prior.num_components must be at least 1, got 0",
        ),
        ({"kind": "vamp", "num_pseudo_inputs": 0}, "prior.num_pseudo_inputs must be at least 1"),
        ({"kind": "flow", "num_steps": 0}, "prior.num_steps must be at least 1, got 0"),
        ({"kind": "flow", "count_bins": 1}, "prior.count_bins must be at least 2"),
        ({"kind": "flow", "transform": "planar"}, "prior.transform must be one of"),
    ],
)
def test_bad_options_are_one_sentence_spec_errors(section, match):
    with pytest.raises(SpecError, match=match) as err:
        parse_spec({"prior": section})
    _one_sentence(err.value)


def test_flow_prior_hidden_sizes_must_cover_the_latent_dim():
    with pytest.raises(SpecError, match="prior.flow_hidden sizes must be at least") as err:
        FlowPrior(flow_hidden=(2,)).build(_ctx(3))
    _one_sentence(err.value)


@pytest.mark.parametrize("kind", ["mixture", "vamp", "flow"])
def test_each_prior_builds_from_a_spec_and_fits(kind):
    spec = parse_spec(
        {
            "data": {"kind": "digits", "limit": 64, "binarize": "static"},
            "model": {"latent_dim": 2, "hidden": [8]},
            "prior": {"kind": kind, **SMALL[kind]},
        }
    )
    data, model, guide = build(spec)
    loss = spec.objective.build()(model, guide, data.train.x[:32])
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in [*model.named_parameters(), *guide.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    history = ppvae.fit(model, guide, data.train.x, epochs=1, batch_size=32, progress=False)
    assert all(math.isfinite(v) for v in history["train_loss"])
    assert model.generate(3).shape == (3, 64)


def test_vamp_is_listed_with_the_guides_it_needs():
    assert PRIORS.get("vamp").needs_posterior and not PRIORS.get("mixture").needs_posterior
    assert all(GUIDES.get(k).amortized for k in GUIDES)


def test_vamp_table_is_exact_near_narrow_far_out_components():
    """The matrix-product form of log q(z | u_c) cancels large terms where z sits near a
    narrow component far from 0 (|mu| = 4, sigma = 0.02: each term near 4e4); it must still
    equal the direct float64 density there."""
    from ppvae.priors import _diagonal_normal_table

    g = torch.Generator().manual_seed(0)
    loc = 4.0 * torch.sign(torch.randn(7, 5, generator=g))
    scale = 0.02 + 0.5 * torch.rand(7, 5, generator=g)
    z = loc[torch.randint(7, (3, 11), generator=g)] + 0.03 * torch.randn(3, 11, 5, generator=g)
    got = _diagonal_normal_table(z, loc, scale)
    assert got.shape == (3, 11, 7) and got.dtype == torch.float32
    expected = (
        torch.distributions.Normal(loc.double(), scale.double()).log_prob(z.double()[..., None, :])
    ).sum(-1)
    finite = expected > -1e4  # where the density is not negligible
    torch.testing.assert_close(got.double()[finite], expected[finite], rtol=1e-6, atol=1e-3)
