"""Scaling messengers: minibatch scaling by plate membership, latent-only KL weights."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.infer
import pyro.poutine as poutine
import pytest
import torch
from pyro.poutine.util import prune_subsample_sites

from ppvae.infer.scaling import LatentScale, MinibatchScale


def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))  # global latent
    tau = pyro.sample("tau", dist.Normal(0.0, 1.0), obs=torch.tensor(0.3))  # global observed
    with pyro.plate("other", 2):
        pyro.sample("g", dist.Normal(0.0, 1.0))  # in a plate, but not the data plate
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))  # local latent
        with pyro.plate("features", x.shape[1], dim=-2):
            pyro.sample("x", dist.Normal(z + tau, 1.0), obs=x.T)  # local observed, nested
    return z


def guide(x):
    pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("other", 2):
        pyro.sample("g", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(0.1 * x.sum(-1), 1.0))


X = torch.randn(4, 3)


def _scales(fn, *args):
    tr = prune_subsample_sites(poutine.trace(fn).get_trace(*args))
    return {name: site["scale"] for name, site in tr.nodes.items() if site["type"] == "sample"}


def test_minibatch_scale_by_plate_membership():
    scales = _scales(MinibatchScale("data", 0.25, 0.01)(model), X)
    assert scales == {"mu": 0.01, "tau": 0.01, "g": 0.01, "z": 0.25, "x": 0.25}


def test_minibatch_scale_with_another_plate_name():
    scales = _scales(MinibatchScale("other", 0.5, 0.1)(model), X)
    assert scales["g"] == 0.5
    assert scales["z"] == scales["x"] == scales["mu"] == 0.1


def test_minibatch_scale_composes_with_existing_scales():
    scaled = poutine.scale(MinibatchScale("data", 0.25, 0.01)(model), scale=3.0)
    scales = _scales(scaled, X)
    assert scales["z"] == pytest.approx(0.75) and scales["mu"] == pytest.approx(0.03)
    inner = MinibatchScale("data", 0.25, 0.01)(poutine.scale(model, scale=3.0))
    assert _scales(inner, X) == pytest.approx(scales)


def test_minibatch_scale_leaves_param_sites_alone():
    def with_param(x):
        pyro.param("w", torch.ones(1))
        return model(x)

    tr = poutine.trace(MinibatchScale("data", 0.25, 0.01)(with_param)).get_trace(X)
    assert tr.nodes["w"]["type"] == "param"
    assert tr.nodes["w"].get("scale", 1.0) == 1.0


def test_minibatch_scaled_elbo_is_the_scaled_sum():
    """ELBO of the scaled pair = local terms / B + global terms / N, with the same draws."""
    b, n = X.shape[0], 100
    m = MinibatchScale("data", 1 / b, 1 / n)(model)
    g = MinibatchScale("data", 1 / b, 1 / n)(guide)
    torch.manual_seed(0)
    g_tr = poutine.trace(guide).get_trace(X)
    m_tr = poutine.trace(poutine.replay(model, trace=g_tr)).get_trace(X)
    g_tr.compute_log_prob()
    m_tr.compute_log_prob()
    local = sum(m_tr.nodes[s]["log_prob_sum"] for s in ("z", "x")) - g_tr.nodes["z"]["log_prob_sum"]
    glob = sum(m_tr.nodes[s]["log_prob_sum"] for s in ("mu", "tau", "g")) - sum(
        g_tr.nodes[s]["log_prob_sum"] for s in ("mu", "g")
    )
    torch.manual_seed(0)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(m, g, X)
    torch.testing.assert_close(loss, -(local / b + glob / n))


def test_latent_scale_leaves_observed_sites_alone():
    scales = _scales(LatentScale(0.3)(model), X)
    assert scales == {"mu": 0.3, "tau": 1.0, "g": 0.3, "z": 0.3, "x": 1.0}
    guide_scales = _scales(LatentScale(0.3)(guide), X)
    assert guide_scales == {"mu": 0.3, "g": 0.3, "z": 0.3}


def test_latent_scale_weights_the_kl_term_of_the_elbo():
    """-loss = E[log p(x | z)] + w (E[log p(z)] - E[log q(z | x)]), with the same draws."""
    w = 0.2

    def vae_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            loc = z[:, None].expand(x.shape)
            pyro.sample("x", dist.Normal(loc, 0.5).to_event(1), obs=x)

    def vae_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.2 * x.mean(-1), 0.7))

    torch.manual_seed(1)
    g_tr = poutine.trace(vae_guide).get_trace(X)
    m_tr = poutine.trace(poutine.replay(vae_model, trace=g_tr)).get_trace(X)
    lik = m_tr.nodes["x"]["fn"].log_prob(X).sum()
    kl_terms = (
        m_tr.nodes["z"]["fn"].log_prob(g_tr.nodes["z"]["value"]).sum()
        - g_tr.nodes["z"]["fn"].log_prob(g_tr.nodes["z"]["value"]).sum()
    )
    torch.manual_seed(1)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(
        LatentScale(w)(vae_model), LatentScale(w)(vae_guide), X
    )
    torch.testing.assert_close(loss, -(lik + w * kl_terms))
