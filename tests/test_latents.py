"""Latent diagnostics (ppvae/latents.py) against closed forms on a linear-Gaussian model.

Probabilistic PCA with orthogonal loading columns has a diagonal Gaussian exact posterior
:math:`q(z|x) = N(M^{-1} W^T x, \\sigma^2 M^{-1})`, :math:`M = W^T W + \\sigma^2 I`, so the
KL per dimension, the activity :math:`\\mathrm{Cov}_x(E_q[z_u|x])`, the active units and the
mutual information :math:`I(x; z) = \\frac12 \\log\\det(M / \\sigma^2)` are all known.
"""

from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import ppvae
from ppvae.distributions import ReparamDiagonalNormal
from ppvae.latents import (
    ACTIVE_THRESHOLD,
    LatentDiagnostics,
    active_units,
    decodes_latent,
    elbo_split,
    interpolations,
    kl_per_dim,
    latent_diagnostics,
    mutual_information,
    traversals,
)

SIGMA = 0.5


class _Likelihood(nn.Module):
    def mean(self, out):
        return out


class PPCA(nn.Module):
    """x = W z + N(0, sigma^2 I), z ~ N(0, I) in the plate "data"; W's columns orthogonal."""

    def __init__(self, w: torch.Tensor, sigma: float = SIGMA) -> None:
        super().__init__()
        self.decoder = nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            self.decoder.weight.copy_(w)
        self.likelihood = _Likelihood()
        self.sigma = sigma

    def forward(self, x):
        d = self.decoder.in_features
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(d), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), self.sigma).to_event(1), obs=x)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        w = self.decoder.weight.detach()
        z = torch.randn(n, w.shape[1], generator=generator)
        return z @ w.T + self.sigma * torch.randn(n, w.shape[0], generator=generator)


class ExactGuide(nn.Module):
    """The exact posterior of :class:`PPCA` (diagonal, W's columns being orthogonal)."""

    def __init__(self, model: PPCA) -> None:
        super().__init__()
        self.model = model

    def posterior(self, x):
        w = self.model.decoder.weight
        s2 = self.model.sigma**2
        m_diag = (w * w).sum(0) + s2  # M = W^T W + s2 I is diagonal
        loc = (x @ w) / m_diag
        scale = (s2 / m_diag).sqrt().expand_as(loc)
        return ReparamDiagonalNormal(loc, scale)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", self.posterior(x))


def _ppca(rank: int = 2, latent_dim: int = 4, data_dim: int = 6):
    """True rank ``rank`` (the other latent dimensions have zero loadings)."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(data_dim, data_dim, generator=g))
    w = torch.zeros(data_dim, latent_dim)
    w[:, :rank] = q[:, :rank] * torch.tensor([2.0, 1.0, 0.5, 0.3][:rank])
    model = PPCA(w)
    return model, ExactGuide(model), model.sample(4000, g)


def test_kl_per_dim_closed_form_for_a_known_diagonal_gaussian():
    loc = torch.tensor([[1.0, -0.5, 0.0], [0.0, 2.0, 0.3]])
    scale = torch.tensor([[0.5, 1.0, 2.0], [1.0, 0.2, 1.0]])
    q = ReparamDiagonalNormal(loc, scale)
    p = dist.Normal(torch.zeros(2, 3), 1.0).to_event(1)
    kl, total, how = kl_per_dim(q, p)
    expected = 0.5 * (scale**2 + loc**2 - 1 - (scale**2).log())
    assert how == "closed_form"
    assert torch.allclose(kl, expected, atol=1e-6)
    assert torch.allclose(total, torch.distributions.kl_divergence(q, p), atol=1e-5)


def test_kl_per_dim_monte_carlo_when_not_both_gaussian():
    class Normal2(dist.Normal):  # a Normal the closed form does not recognise
        pass

    loc, scale = torch.tensor([0.8, -0.3]), torch.tensor([0.6, 1.5])
    q = dist.Normal(loc.expand(20000, 2), scale).to_event(1)
    p = Normal2(torch.zeros(20000, 2), 1.0).to_event(1)
    kl, total, how = kl_per_dim(q, p)
    assert how == "monte_carlo"
    expected = 0.5 * (scale**2 + loc**2 - 1 - (scale**2).log())
    assert torch.allclose(kl.mean(0), expected, atol=0.03)
    # a guide that does not factorize: only the total, by Monte Carlo
    cov = torch.tensor([[1.0, 0.6], [0.6, 1.0]])
    q = dist.MultivariateNormal(loc.expand(20000, 2), cov)
    p = dist.Normal(torch.zeros(20000, 2), 1.0).to_event(1)
    kl, total, how = kl_per_dim(q, p)
    assert (kl, how) == (None, "monte_carlo_total")
    exact = torch.distributions.kl_divergence(
        dist.MultivariateNormal(loc, cov), dist.MultivariateNormal(torch.zeros(2), torch.eye(2))
    )
    assert float(total.mean()) == pytest.approx(float(exact), abs=0.03)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_active_units_equal_the_true_rank_of_ppca(rank):
    model, guide, x = _ppca(rank=rank)
    d = latent_diagnostics(model, guide, x, batch_size=1500)
    assert d["active_units"] == rank
    assert d["kl_method"] == "closed_form"
    assert d["points"] == 4000 and d["latent_dim"] == 4
    w = model.decoder.weight.detach()
    s2 = SIGMA**2
    m_diag = (w * w).sum(0) + s2
    # Cov_x(E[z|x]) = M^-1 W^T (W W^T + s2 I) W M^-1: diagonal, (|w_u|^2)^2 + s2 |w_u|^2) / m_u^2
    norms = (w * w).sum(0)
    expected = (norms**2 + s2 * norms) / m_diag**2
    activity = torch.tensor(d["activity"], dtype=torch.float32)
    assert torch.allclose(activity, expected, rtol=0.1, atol=1e-6)
    assert (activity[rank:] == 0).all()
    # KL per dimension: the mean of the closed form over the points
    q = guide.posterior(x)
    expected_kl = (0.5 * (q.scale**2 + q.loc**2 - 1 - (q.scale**2).log())).mean(0)
    assert torch.allclose(torch.tensor(d["kl_per_dim"]).float(), expected_kl.detach(), atol=1e-4)
    assert d["kl_per_dim"][rank] == pytest.approx(0.0, abs=1e-6)


def test_active_units_threshold():
    means = torch.stack([0.2 * torch.randn(500), 0.05 * torch.randn(500), torch.zeros(500)], 1)
    count, activity = active_units(means)
    assert count == 1 and activity[0] > ACTIVE_THRESHOLD > activity[1]


def test_mutual_information_of_ppca_matches_the_closed_form():
    model, guide, x = _ppca(rank=2)
    torch.manual_seed(0)
    mi, n = mutual_information(guide, x, max_points=2000)
    w = model.decoder.weight.detach()
    m_diag = (w * w).sum(0) + SIGMA**2
    exact = 0.5 * float((m_diag / SIGMA**2).log().sum())
    assert n == 2000 and exact < math.log(n)
    assert mi == pytest.approx(exact, abs=0.1)


@pytest.mark.parametrize("kind", ["iaf", "spline"])
def test_mutual_information_of_a_conditional_flow_guide(kind):
    """Conditional flows expand their context to the value's batch shape: the (c, N)
    cross log-densities need the draws expanded, not broadcast (``ppvae evaluate`` on an
    iaf run crashed). The estimate equals the one from a loop over the draws."""
    from ppvae.context import BuildContext
    from ppvae.guides import GUIDES

    torch.manual_seed(0)
    posterior = GUIDES.get(kind)().build(BuildContext(data_dim=5, latent_dim=3, hidden=(8,)))

    class Guide:
        def posterior(self, x):
            return posterior(x)

    x = torch.randn(30, 5)
    torch.manual_seed(1)
    mi, n = mutual_information(Guide(), x, chunk_size=7)
    torch.manual_seed(1)
    with torch.no_grad():
        q = posterior(x)
        z = q.sample()
        own = q.log_prob(z)
        cross = torch.stack([posterior(x).log_prob(z[i].expand(30, 3)) for i in range(30)])
    want = float((own - (torch.logsumexp(cross, 1) - math.log(30))).double().mean())
    assert n == 30 and mi == pytest.approx(want, abs=1e-4)


def test_elbo_split_of_ppca_matches_the_closed_form():
    model, guide, x = _ppca(rank=2)
    torch.manual_seed(0)
    split = elbo_split(model, guide, x, draws=2)
    q = guide.posterior(x)
    kl = torch.distributions.kl_divergence(q, dist.Normal(torch.zeros(4), 1.0).to_event(1))
    assert split["kl"] == pytest.approx(float(kl.mean().detach()), abs=0.05)
    # the exact posterior: the ELBO is log p(x), x ~ N(0, W W^T + s2 I)
    w = model.decoder.weight.detach()
    cov = w @ w.T + SIGMA**2 * torch.eye(6)
    log_px = dist.MultivariateNormal(torch.zeros(6), cov).log_prob(x).mean()
    assert split["elbo"] == pytest.approx(float(log_px), abs=0.05)
    assert split["elbo"] == pytest.approx(split["reconstruction"] - split["kl"])


def test_traversals_and_interpolations_decode_the_right_points():
    model, guide, x = _ppca(rank=2)
    assert decodes_latent(model, guide, x)
    images, offsets = traversals(model, guide, x, dims=[0, 2], steps=5, span=2.0)
    assert images.shape == (10, 6) and torch.allclose(offsets, torch.linspace(-2, 2, 5))
    w = model.decoder.weight.detach()
    # dimension 0 from -2 to +2 prior standard deviations, the others at the prior mean 0
    assert torch.allclose(images[:5], offsets.unsqueeze(1) * w[:, 0], atol=1e-5)
    assert torch.allclose(images[5:], torch.zeros(5, 6), atol=1e-6)  # no loading
    lines = interpolations(model, guide, x, pairs=2, steps=4, generator=torch.Generator())
    assert lines.shape == (2 * 6, 6)
    row = lines[:6]
    mu_a, mu_b = guide.posterior(row[[0, 5]]).loc
    assert torch.allclose(row[1], model.decoder(mu_a), atol=1e-5)  # t = 0
    assert torch.allclose(row[4], model.decoder(mu_b), atol=1e-5)  # t = 1


def test_callback_records_and_leaves_the_random_streams_alone(tmp_path):
    model, guide, x = _ppca(rank=2)

    class State:
        is_main_process = True

        def scope(self):
            return pyro.get_param_store().scope()

    cb = LatentDiagnostics(model, guide, x[:500], seed=1)
    record = {"epoch": 1, "step": 3}
    torch.manual_seed(5)
    before = torch.get_rng_state()
    cb.on_epoch_end(State(), record)
    assert torch.equal(torch.get_rng_state(), before)
    assert record["active_units"] == 2 and record["latent"]["kl_method"] == "closed_form"


def test_fit_writes_the_callbacks_keys_with_the_epoch(tmp_path):
    """Callbacks run before fit's metrics log: the diagnostics are in metrics.jsonl."""
    model, guide, x = _ppca(rank=2)
    cb = LatentDiagnostics(model, guide, x[:200], seed=1)
    ppvae.fit(model, guide, x[:400], epochs=2, batch_size=100, lr=1e-3, progress=False,
              device="cpu", out_dir=tmp_path, callbacks=[cb])  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(line["active_units"] == 2 and "kl_per_dim" in line["latent"] for line in lines)
