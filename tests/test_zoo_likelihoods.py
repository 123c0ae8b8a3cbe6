"""The zoo's likelihoods: 8-bit pixels (categorical256, discretized_logistic) and counts
(poisson, negative_binomial)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

import ppvae
from ppvae.context import BuildContext
from ppvae.errors import DataError, PpvaeError
from ppvae.likelihoods import (
    LIKELIHOODS,
    Categorical256,
    DiscretizedLogistic,
    NegativeBinomialLikelihood,
    PoissonLikelihood,
)
from ppvae.run import build
from ppvae.spec import parse_spec

D = 3
LEVELS = torch.arange(256, dtype=torch.float64) / 255
EIGHT_BIT = ["categorical256", "discretized_logistic"]
COUNTS = ["poisson", "negative_binomial"]


def _one_sentence(err: BaseException) -> None:
    message = str(err)
    assert isinstance(err, PpvaeError)
    assert message and "\n" not in message and not re.search(r"\.\s+[A-Z]", message), message


def _lik(kind: str, **options):
    return LIKELIHOODS.get(kind)(**options).build(BuildContext(data_dim=D, latent_dim=2))


def _out(kind: str, batch=(2,), dtype=torch.float64) -> torch.Tensor:
    lik = _lik(kind)
    out = torch.randn(*batch, D * lik.params_per_dim, dtype=dtype)
    if kind == "discretized_logistic":  # means across and beyond [0, 1], scales tiny to wide
        out[..., :D] = torch.tensor([-0.5, 0.3, 1.4], dtype=dtype)
        out[..., D:] = torch.tensor([-9.0, -3.0, 1.5], dtype=dtype)
    return out * (3 if kind == "categorical256" else 1)


def _per_level_log_probs(kind: str, out: torch.Tensor) -> torch.Tensor:
    """log P(x_i = k/255) for every level k: shape (256, *batch, D)."""
    pixels = _lik(kind)(out).base_dist
    grid = LEVELS.view(256, *([1] * (out.dim() - 1)), 1).expand(256, *out.shape[:-1], D)
    return pixels.log_prob(grid.to(out.dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", EIGHT_BIT)
def test_eight_bit_probabilities_sum_to_one_per_pixel(kind, dtype):
    out = _out(kind, batch=(4, 2), dtype=dtype)
    lp = _per_level_log_probs(kind, out)
    assert lp.shape == (256, 4, 2, D) and torch.isfinite(lp).all()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(lp.logsumexp(0), torch.zeros_like(lp[0]), atol=tol, rtol=0)
    # the likelihood's mean is the expectation over the levels, in [0, 1]
    mean = _lik(kind).mean(out)
    grid = LEVELS.to(dtype).view(256, 1, 1, 1)
    torch.testing.assert_close(mean, (lp.exp() * grid).sum(0))
    assert mean.shape == (4, 2, D) and ((mean >= 0) & (mean <= 1)).all()


def test_discretized_logistic_matches_the_sigmoid_differences():
    loc = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    log_scale = torch.tensor([-3.0, -1.0, -4.0], dtype=torch.float64)
    pixels = DiscretizedLogistic(loc, log_scale)
    s = log_scale.exp()
    x = LEVELS[:, None]
    upper = torch.sigmoid((x + 0.5 / 255 - loc) / s)
    lower = torch.sigmoid((x - 0.5 / 255 - loc) / s)
    upper[-1], lower[0] = 1.0, 0.0  # the edge bins are open
    expected = (upper - lower).log()
    torch.testing.assert_close(pixels.log_prob(x.expand(256, 3)), expected, rtol=1e-8, atol=1e-8)


def test_discretized_logistic_is_stable_at_extreme_parameters():
    loc = torch.tensor([0.3, 0.3, -50.0, 50.0, 0.5], requires_grad=True)
    log_scale = torch.tensor([-30.0, 15.0, -2.0, -2.0, -12.0], requires_grad=True)
    pixels = DiscretizedLogistic(loc, log_scale)
    x = torch.tensor([[0.0], [77 / 255], [1.0]]).expand(3, 5)
    lp = pixels.log_prob(x)
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()
    lp = lp.detach()
    # a tiny scale puts all mass on the nearest level: 0.3 * 255 = 76.5 -> between 76 and 77
    assert float(lp[1, 0].exp()) > 0.49
    assert float(lp[0, 2]) > -1e-6 and float(lp[2, 3]) > -1e-6  # far below 0 / above 1


@pytest.mark.parametrize("kind", EIGHT_BIT)
def test_eight_bit_samples_are_grey_levels(kind):
    d = _lik(kind)(_out(kind, batch=(6,), dtype=torch.float32))
    x = d.sample((50,))
    assert x.shape == (50, 6, D)
    k = x * 255
    assert ((x >= 0) & (x <= 1)).all() and torch.allclose(k, k.round(), atol=1e-4)


def test_categorical256_is_the_softmax_of_its_logits():
    logits = torch.randn(2, D, 256)
    pixels = Categorical256(logits)
    k = torch.randint(0, 256, (2, D))
    expected = torch.log_softmax(logits, -1).gather(-1, k[..., None]).squeeze(-1)
    torch.testing.assert_close(pixels.log_prob(k / 255), expected)
    lik = _lik("categorical256")
    assert lik.params_per_dim == 256
    torch.testing.assert_close(lik(logits.flatten(-2)).log_prob(k / 255), expected.sum(-1))


@pytest.mark.parametrize("link", ["softplus", "exp"])
def test_poisson_matches_scipy(link):
    lik = PoissonLikelihood(link=link).build(BuildContext(data_dim=D, latent_dim=2))
    out = torch.randn(4, D, dtype=torch.float64)
    x = torch.randint(0, 12, (4, D)).double()
    rate = out.exp() if link == "exp" else torch.nn.functional.softplus(out) + 1e-6
    expected = stats.poisson.logpmf(x.numpy(), rate.numpy()).sum(-1)
    np.testing.assert_allclose(lik(out).log_prob(x).numpy(), expected, rtol=1e-10)
    torch.testing.assert_close(lik.mean(out), rate)


def test_negative_binomial_matches_scipy():
    lik = NegativeBinomialLikelihood().build(BuildContext(data_dim=D, latent_dim=2))
    assert lik.params_per_dim == 2
    out = torch.randn(4, 2 * D, dtype=torch.float64)
    x = torch.randint(0, 20, (4, D)).double()
    r = torch.nn.functional.softplus(out[:, :D]) + 1e-6
    logits = out[:, D:]
    # scipy counts failures before r successes of probability p: p = sigmoid(-logits)
    p = torch.sigmoid(-logits)
    expected = stats.nbinom.logpmf(x.numpy(), r.numpy(), p.numpy()).sum(-1)
    np.testing.assert_allclose(lik(out).log_prob(x).numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(lik.mean(out).numpy(), stats.nbinom.mean(r.numpy(), p.numpy()))


@pytest.mark.parametrize("kind", EIGHT_BIT + COUNTS)
def test_shapes_over_particles_and_batch(kind):
    lik = _lik(kind)
    out = torch.randn(5, 4, D * lik.params_per_dim)
    d = lik(out)
    assert d.batch_shape == (5, 4) and d.event_shape == (D,)
    x = torch.randint(0, 2, (4, D)).float()  # 0 and 1: valid grey levels and counts
    assert d.log_prob(x).shape == (5, 4)
    assert lik.mean(out).shape == (5, 4, D)


@pytest.mark.parametrize(
    ("kind", "bad", "needs"),
    [
        ("categorical256", 1 / 16, "multiples of 1/255"),
        ("categorical256", 1.2, "multiples of 1/255"),
        ("discretized_logistic", -1 / 255, "multiples of 1/255"),
        ("poisson", -1.0, "non-negative integers"),
        ("negative_binomial", 2.5, "non-negative integers"),
    ],
)
def test_data_checks_are_one_sentence_data_errors(kind, bad, needs):
    cfg = LIKELIHOODS.get(kind)()
    x = torch.tensor([[0.0, 1.0, bad]])
    with pytest.raises(DataError, match=needs) as err:
        cfg.check_data(x, binarized=False, where="the toy data")
    assert kind in str(err.value) and "the toy data" in str(err.value)
    _one_sentence(err.value)
    good = torch.randint(0, 256, (4, 3)).float()
    cfg.check_data(good / 255 if kind in EIGHT_BIT else good, binarized=False, where="x")


@pytest.fixture
def npz_data(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images.npz"
    np.savez(images, x=rng.integers(0, 256, (96, 4, 4)).astype(np.uint8))  # read as k / 255
    counts = tmp_path / "counts.npz"
    np.savez(counts, x=rng.poisson(3.0, (96, 16)).astype(np.int64))  # read as is
    return {"categorical256": images, "discretized_logistic": images, "poisson": counts,
            "negative_binomial": counts}  # fmt: skip


@pytest.mark.parametrize("kind", EIGHT_BIT + COUNTS)
def test_each_likelihood_builds_from_a_spec_and_fits(kind, npz_data):
    spec = parse_spec(
        {
            "data": {"kind": "npz", "path": str(npz_data[kind]), "limit": 64},
            "model": {"latent_dim": 2, "hidden": [8]},
            "likelihood": {"kind": kind},
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
    assert model.generate(2).shape == (2, 16)


@pytest.mark.parametrize("kind", ["categorical256", "poisson"])
def test_digits_are_refused_by_eight_bit_and_count_likelihoods(kind):
    spec = parse_spec({"data": {"kind": "digits", "limit": 64}, "likelihood": {"kind": kind}})
    with pytest.raises(DataError, match=kind) as err:
        build(spec)  # digits are v / 16: neither 8-bit levels nor counts
    _one_sentence(err.value)
