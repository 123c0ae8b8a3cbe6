"""The importance-sampling estimator of log p(x) against closed forms."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppvae.errors import DataError, SpecError
from ppvae.infer.diagnostics import kish_ess
from ppvae.infer.importance import (
    ImportanceResult,
    _Accumulator,
    log_marginal_likelihood,
)


@pytest.mark.parametrize("k", [1, 7, 100])
def test_exact_posterior_gives_exact_log_px_and_full_ess(ppca, k):
    x = ppca.sample(5)
    result = log_marginal_likelihood(ppca.model, ppca.exact_guide, x, num_samples=k)
    assert result.log_px.shape == (5,)
    assert torch.allclose(result.log_px, ppca.log_px(x), atol=1e-4, rtol=0)
    assert torch.allclose(result.ess, torch.full((5,), float(k), dtype=torch.float64), rtol=1e-4)
    assert result.num_samples == k
    # every log weight equals log p(x): the ELBO estimate is exact too
    assert torch.allclose(result.elbo, ppca.log_px(x), atol=1e-4, rtol=0)
    if k > 1:
        assert (result.stderr < 1e-3).all()
    else:
        assert torch.isnan(result.stderr).all()


def test_prior_guide_is_within_four_standard_errors(ppca):
    torch.manual_seed(1)
    x = ppca.sample(6)
    result = log_marginal_likelihood(ppca.model, ppca.prior_guide, x, num_samples=4000)
    err = (result.log_px - ppca.log_px(x)).abs()
    assert (result.stderr > 0).all()
    assert (err < 4 * result.stderr).all(), (err, result.stderr)
    assert (result.ess < 4000).all() and (result.ess >= 1).all()
    # the ELBO (mean log weight) lies below log p(x); the gap is KL(prior || posterior) > 0
    assert (result.elbo < result.log_px).all()


def test_elbo_field_is_the_mean_log_weight_and_k1_equals_log_px(ppca):
    x = ppca.sample(4)
    torch.manual_seed(3)
    one = log_marginal_likelihood(ppca.model, ppca.prior_guide, x, num_samples=1)
    assert torch.equal(one.elbo, one.log_px)  # K = 1: log mean w = mean log w
    torch.manual_seed(3)
    many = log_marginal_likelihood(
        ppca.model, ppca.prior_guide, x, num_samples=3000, chunk_size=700
    )
    # with q = p(z): ELBO = E_p(z)[log N(x; W z + b, s^2 I)]
    #                     = -d/2 log(2 pi s^2) - (|x - b|^2 + tr(W^T W)) / (2 s^2)
    s2 = ppca.sigma**2
    exact = -0.5 * ppca.d * math.log(2 * math.pi * s2) - (
        ((x - ppca.b) ** 2).sum(-1) + (ppca.W**2).sum()
    ) / (2 * s2)
    # its Monte Carlo standard error, from the spread of log w = log p(x | z) under p(z)
    z = torch.randn(100_000, ppca.k, generator=torch.Generator().manual_seed(0))
    log_w = dist.Normal(z @ ppca.W.T + ppca.b, ppca.sigma).log_prob(x[:, None, :]).sum(-1)
    se = log_w.std(dim=1) / math.sqrt(3000)
    assert ((many.elbo - exact.double()).abs() < 4 * se.double()).all(), (many.elbo, exact, se)
    assert (many.elbo < many.log_px).all()


def test_two_latent_sites_with_sequential_exact_guide(two_sites):
    x = torch.tensor([-1.0, 0.0, 0.3, 2.5])
    result = log_marginal_likelihood(two_sites.model, two_sites.exact_guide, x, num_samples=50)
    assert torch.allclose(result.log_px, two_sites.log_px(x), atol=1e-4, rtol=0)
    assert torch.allclose(result.ess, torch.full((4,), 50.0, dtype=torch.float64), rtol=1e-4)


def test_global_latent_outside_the_data_plate(global_mean):
    torch.manual_seed(2)
    x = torch.tensor([-1.5, 0.0, 0.7, 2.0])
    result = log_marginal_likelihood(global_mean.model, global_mean.guide, x, num_samples=3000)
    err = (result.log_px - global_mean.log_px(x)).abs()
    assert (err < 4 * result.stderr).all(), (err, result.stderr)
    # each particle draws its own global: weights differ, so the ESS is below K
    assert (result.ess < 3000).all()


def test_batches_and_chunks_do_not_change_the_exact_answer(ppca):
    x = ppca.sample(7)
    a = log_marginal_likelihood(ppca.model, ppca.exact_guide, x, num_samples=30)
    b = log_marginal_likelihood(
        ppca.model, ppca.exact_guide, x, num_samples=30, batch_size=3, chunk_size=7
    )
    assert torch.allclose(a.log_px, b.log_px, atol=1e-5, rtol=0)
    assert torch.allclose(a.ess, b.ess)


def test_chunked_estimate_is_consistent_with_one_chunk(ppca):
    torch.manual_seed(3)
    x = ppca.sample(3)
    one = log_marginal_likelihood(ppca.model, ppca.prior_guide, x, num_samples=3000)
    chunked = log_marginal_likelihood(
        ppca.model, ppca.prior_guide, x, num_samples=3000, chunk_size=128
    )
    se = torch.sqrt(one.stderr**2 + chunked.stderr**2)
    assert ((one.log_px - chunked.log_px).abs() < 4 * se).all()


@pytest.mark.parametrize("offset", [0.0, -1e4, 80.0])
def test_streaming_logsumexp_equals_logsumexp_of_all_weights(offset):
    torch.manual_seed(4)
    log_w = offset + 3 * torch.randn(1000, 4, dtype=torch.float64)
    acc = _Accumulator(4, keep=100, device="cpu")
    for chunk in log_w.split(37):
        acc.update(chunk)
    expected = torch.logsumexp(log_w, 0)
    assert torch.allclose(acc.log_sum(), expected, rtol=0, atol=1e-9)
    assert torch.allclose(acc.ess(1000), kish_ess(log_w.T), rtol=1e-9)
    assert torch.equal(acc.kept, log_w[:100].T)


def test_log_weights_around_minus_ten_thousand(ppca):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(ppca.k), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ ppca.W.T + ppca.b, ppca.sigma).to_event(1), obs=x)
            pyro.factor("penalty", torch.full((x.shape[0],), -1e4))

    x = ppca.sample(3)
    result = log_marginal_likelihood(model, ppca.exact_guide, x, num_samples=20, chunk_size=6)
    assert torch.isfinite(result.log_px).all()
    assert torch.allclose(result.log_px, ppca.log_px(x) - 1e4, atol=2e-3, rtol=0)
    assert torch.allclose(result.ess, torch.full((3,), 20.0, dtype=torch.float64), rtol=1e-3)


def test_a_million_samples_for_a_tiny_model():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    torch.manual_seed(5)
    x = torch.tensor([1.0])
    result = log_marginal_likelihood(model, guide, x, num_samples=10**6, chunk_size=2**17)
    exact = dist.Normal(0.0, math.sqrt(2.0)).log_prob(x).double()
    assert result.num_samples == 10**6 and result.num_khat_samples == 5000
    assert abs(float(result.log_px - exact)) < max(4 * float(result.stderr), 1e-6)
    assert float(result.stderr) < 2e-3
    assert 1 < float(result.ess) < 10**6
    assert float(result.khat) < 0.5


def test_khat_small_for_a_good_and_large_for_a_narrow_proposal(ppca):
    torch.manual_seed(6)
    x = ppca.sample(8)
    good = log_marginal_likelihood(ppca.model, ppca.scaled_guide(1.3), x, num_samples=2000)
    # q = N(mu, f^2 Sigma) for p = N(mu, Sigma): P(w > t) ~ t^(-1 / (1 - f^2)), k = 1 - f^2
    bad = log_marginal_likelihood(ppca.model, ppca.scaled_guide(0.2), x, num_samples=2000)
    assert (good.khat < 0.5).all(), good.khat
    assert float(bad.khat.median()) > 0.7, bad.khat
    assert (bad.khat > 0.7).sum() >= 6, bad.khat
    assert (bad.ess < good.ess).all()


def test_khat_uses_at_most_max_khat_samples(ppca):
    x = ppca.sample(2)
    result = log_marginal_likelihood(
        ppca.model, ppca.prior_guide, x, num_samples=300, max_khat_samples=50, chunk_size=40
    )
    assert result.num_khat_samples == 50
    assert torch.isfinite(result.khat).all()
    few = log_marginal_likelihood(ppca.model, ppca.prior_guide, x, num_samples=10)
    assert torch.isnan(few.khat).all()  # too few samples for a tail fit


def test_result_summaries_and_inference_data(ppca):
    x = ppca.sample(4)
    result = log_marginal_likelihood(ppca.model, ppca.exact_guide, (x,), num_samples=25)
    assert isinstance(result, ImportanceResult)
    assert result.mean == pytest.approx(float(ppca.log_px(x).mean()), abs=1e-4)
    assert result.sem == pytest.approx(float(ppca.log_px(x).std() / 2.0), rel=1e-3)
    idata = result.to_inference_data()
    group = idata.importance
    for name in ("log_px", "stderr", "ess", "khat"):
        assert group[name].dims == ("data",)
        expected = getattr(result, name).numpy()
        assert torch.allclose(
            torch.as_tensor(group[name].values), torch.as_tensor(expected), equal_nan=True
        )
    assert group.attrs["num_samples"] == 25


def test_eval_mode_during_the_run_and_restored_after(ppca):
    seen = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = torch.nn.Dropout(0.5)

        def forward(self, x):
            seen.append((self.training, self.drop.training))
            ppca.model(x)

    model = Model().train()
    model.drop.train(False)  # a mixed state must come back as it was
    log_marginal_likelihood(model, ppca.exact_guide, ppca.sample(2), num_samples=3)
    assert seen and all(mode == (False, False) for mode in seen)
    assert model.training and not model.drop.training


def test_runs_without_grad_and_with_device_and_progress(ppca, capsys):
    x = ppca.sample(3)
    with torch.enable_grad():
        result = log_marginal_likelihood(
            ppca.model, ppca.exact_guide, x, num_samples=5, device="cpu", progress=True
        )
    assert not result.log_px.requires_grad


def test_data_of_the_wrong_shape_is_a_data_error(ppca):
    with pytest.raises(DataError, match=r"\(4, 5\)"):
        log_marginal_likelihood(ppca.model, ppca.exact_guide, torch.zeros(4, 5), num_samples=3)
    with pytest.raises(DataError):
        log_marginal_likelihood(ppca.model, ppca.exact_guide, torch.zeros(0, 3), num_samples=3)
    with pytest.raises(DataError):
        log_marginal_likelihood(ppca.model, ppca.exact_guide, [[1.0, 2.0]], num_samples=3)


def test_a_model_without_the_data_plate_is_a_spec_error(ppca):
    def model(x):
        with pyro.plate("points", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1), obs=x)

    def guide(x):
        pass

    with pytest.raises(SpecError, match="'data'"):
        log_marginal_likelihood(model, guide, ppca.sample(2), num_samples=3)
    result = log_marginal_likelihood(model, guide, ppca.sample(2), num_samples=3, plate="points")
    assert torch.isfinite(result.log_px).all()


def test_bad_arguments_are_refused(ppca):
    with pytest.raises(ValueError, match="num_samples"):
        log_marginal_likelihood(ppca.model, ppca.exact_guide, ppca.sample(2), num_samples=0)


def test_progress_is_a_line_per_batch_off_a_terminal_or_a_callback(ppca, capsys, monkeypatch):
    import ppvae.infer.importance as importance

    x = ppca.sample(10)
    seen = []
    log_marginal_likelihood(ppca.model, ppca.exact_guide, x, num_samples=5, batch_size=4,
                            progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert seen == [(4, 10), (8, 10), (10, 10)]
    log_marginal_likelihood(ppca.model, ppca.exact_guide, x, num_samples=5, batch_size=4,
                            progress=True)  # fmt: skip
    assert capsys.readouterr().out == ""  # a short evaluation is silent
    monkeypatch.setattr(importance, "LINE_INTERVAL", 0.0)  # a line after every batch
    log_marginal_likelihood(ppca.model, ppca.exact_guide, x, num_samples=5, batch_size=4,
                            progress=True)  # fmt: skip
    lines = capsys.readouterr().out.splitlines()  # captured output is not a terminal
    assert [line.split(",")[0] for line in lines] == [
        "log p(x): 4/10 points",
        "log p(x): 8/10 points",
        "log p(x): 10/10 points",
    ]
