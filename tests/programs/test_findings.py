"""One regression test per finding of issue 13 ("Any Pyro program, as its authors wrote
it: no silently wrong numbers"). Findings 3 and 5 are held by test_nonbroadcast.py and
test_subsample.py; finding 6's PackedSequence and streams also by test_dmm.py and
test_m2.py."""

from __future__ import annotations

import copy
import functools

import pyro
import pyro.distributions as dist
import pytest
import torch
from programs_helpers import (
    VD,
    VZ,
    S,
    StepLosses,
    TinyVAE,
    W,
    exact_log_px,
    gaussian_data,
    posterior,
    svi_losses,
    tiny_data,
)
from pyro import poutine
from pyro.infer import RenyiELBO, TraceGraph_ELBO
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import ppvae
from ppvae import PpvaeWarning, SpecError
from ppvae.infer.batches import Stream


def gaussian_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
        pyro.sample("x", dist.Normal(z * W, S).to_event(1), obs=x)


def shifted_posterior_guide(x):
    shift = pyro.param("shift", torch.tensor(0.0))
    loc, scale = posterior(x)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc + shift, scale).to_event(1))


# -- 1. trained pyro.param values survive fit ---------------------------------------------


def test_1_trained_pyro_params_are_in_the_store_and_a_second_fit_continues():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        a = pyro.param("a", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(a * x, 0.5**0.5))

    x = torch.randn(64, generator=torch.Generator().manual_seed(0)) * 2
    history = ppvae.fit(model, guide, x, epochs=30, batch_size=16, lr=0.05, progress=False)
    trained = pyro.param("a").detach().clone()
    assert torch.equal(trained, history.state.named_params()["a"].detach())
    assert abs(float(trained) - 0.5) < 0.1  # the exact posterior's slope
    ppvae.fit(model, guide, x, epochs=1, batch_size=64, lr=1e-6, progress=False)
    assert abs(pyro.param("a").item() - trained.item()) < 1e-4  # started from the store


# -- 2. a stale global store value never replaces a PyroModule's trained PyroParam -------


class LinearGaussian(PyroModule):
    def __init__(self, w):
        super().__init__()
        self.w = PyroParam(w)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z * self.w, S).to_event(1), obs=x)


def exact_guide(x):
    loc, scale = posterior(x)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def test_2_stale_store_does_not_replace_a_pyromodule_param_in_the_evaluator():
    x = gaussian_data(16)
    earlier = LinearGaussian(torch.tensor([0.1, 0.2, 0.3]))
    svi = pyro.infer.SVI(
        earlier, exact_guide, pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO()
    )
    for _ in range(3):
        svi.step(x)
    stale = pyro.get_param_store()["w"].detach().clone()
    assert not torch.allclose(stale, W)
    trained = LinearGaussian(W.clone())  # same parameter name "w", the true weights
    before = trained.state_dict()["w_unconstrained"].clone()
    result = ppvae.log_marginal_likelihood(trained, exact_guide, x, num_samples=3)
    torch.testing.assert_close(result.log_px, exact_log_px(x).double(), rtol=0, atol=1e-4)
    assert torch.equal(trained.state_dict()["w_unconstrained"], before)
    torch.testing.assert_close(pyro.get_param_store()["w"].detach(), stale)


# -- 4. the data plate is named, never guessed ---------------------------------------------


def batch_plate_programs():
    def model(x):
        with pyro.plate("batch", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z * W, S).to_event(1), obs=x)

    def guide(x):
        shift = pyro.param("shift", torch.tensor(0.0))
        loc, scale = posterior(x)
        with pyro.plate("batch", x.shape[0]):
            pyro.sample("z", dist.Normal(loc + shift, scale).to_event(1))

    return model, guide


def test_4_a_plate_no_site_uses_is_an_error_and_the_named_one_gives_per_point_losses():
    model, guide = batch_plate_programs()
    x = gaussian_data(32)
    with pytest.raises(SpecError, match="'data'"):
        ppvae.fit(model, guide, x, epochs=1, batch_size=8, progress=False)
    state = ppvae.init(model, guide, "elbo", example_batch=(x[:8],), num_data=32, plate="batch")
    _, info = ppvae.step(state, (x[:8],))
    # the exact posterior: the loss is -mean log p(x) of the batch, not 8/32 of it
    assert abs(info["loss"] + float(exact_log_px(x[:8]).mean())) < 1e-4
    pyro.clear_param_store()
    history = ppvae.fit(model, guide, x, epochs=1, batch_size=8, lr=1e-6, plate="batch",
                        progress=False)  # fmt: skip
    assert abs(history["train_loss"][0] + float(exact_log_px(x).mean())) < 1e-3


# -- 6. data beyond one tensor ---------------------------------------------------------------


def test_6_shuffle_false_keeps_order_and_shuffle_follows_the_documented_permutation():
    seen: list[torch.Tensor] = []

    def guide(x):
        seen.append(x.detach().clone())
        shifted_posterior_guide(x)

    x = gaussian_data(12)
    ppvae.fit(gaussian_model, guide, x, epochs=2, batch_size=4, shuffle=False, progress=False)
    steps = seen[-6:]  # the last two epochs' steps (init ran the programs before)
    for i, batch in enumerate(steps):
        assert torch.equal(batch, x[(i % 3) * 4 : (i % 3) * 4 + 4])
    seen.clear()
    ppvae.fit(gaussian_model, guide, x, epochs=2, batch_size=4, seed=9, progress=False)
    g = torch.Generator().manual_seed(9)
    expected = []
    for _ in range(2):
        perm = torch.randperm(12, generator=g)
        expected += [x[perm[i : i + 4]] for i in range(0, 12, 4)]
    for batch, want in zip(seen[-6:], expected, strict=True):
        assert torch.equal(batch, want)


def test_6_one_parameter_row_per_point_trains_the_right_rows():
    n = 12

    def model(x, idx):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, idx):
        locs = pyro.param("locs", torch.zeros(n))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(locs[idx], 0.5**0.5))

    x = torch.linspace(-6, 6, n)  # posterior means 0.55 apart
    ppvae.fit(model, guide, (x, torch.arange(n)), objective="meanfield_elbo", epochs=150,
              batch_size=4, lr=0.05, progress=False)  # fmt: skip
    locs = pyro.param("locs").detach()
    # each row near the posterior mean x_i / 2 of its own point, rows in the points' order
    assert (locs - x / 2).abs().max() < 0.25
    assert torch.equal(locs.argsort(), torch.arange(n))
    assert torch.corrcoef(torch.stack([locs, x]))[0, 1] > 0.99


def test_6_keyword_batches_reach_the_programs():
    def model(x, beta=1.0):
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=beta):  # KL annealing, as dmm.py's annealing_factor
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
            pyro.sample("x", dist.Normal(z * W, S).to_event(1), obs=x)

    def guide(x, beta=1.0):
        shift = pyro.param("shift", torch.tensor(0.0))
        loc, scale = posterior(x)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=beta):
            pyro.sample("z", dist.Normal(loc + shift, scale).to_event(1))

    x = gaussian_data(8)
    rec = StepLosses()
    batches = [{"x": x[:4], "beta": 0.3}, {"x": x[4:], "beta": 0.7}]
    ppvae.fit(model, guide, Stream(batches, num_data=8), epochs=1, lr=1e-3, seed=1,
              progress=False, callbacks=[rec])  # fmt: skip
    reference = svi_losses(model, guide, [((), b) for b in batches], seed=1, lr=1e-3)
    torch.testing.assert_close(torch.tensor(rec.batch_sums()), torch.tensor(reference),
                               rtol=1e-4, atol=1e-4)  # fmt: skip


def test_6_packed_sequence_batches():
    rnn = nn.GRU(2, 3, batch_first=True)

    def model(packed, x):
        pyro.module("rnn", rnn)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1), obs=x)

    def guide(packed, x):
        pyro.module("rnn", rnn)
        _, h = rnn(packed)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("u", dist.Normal(h[0].sum(-1), 1.0))

    seqs = [torch.randn(3, 2), torch.randn(2, 2)]
    batch = (pack_sequence(seqs, enforce_sorted=False), torch.randn(2, 2))
    history = ppvae.fit(model, guide, Stream([batch], num_data=2), epochs=1, progress=False)
    assert len(history) == 1


# -- 7. evaluation in eval mode -----------------------------------------------------------


def test_7_evaluator_uses_eval_mode_and_leaves_batchnorm_statistics_alone():
    encoder = nn.Sequential(nn.Linear(VD, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2 * VZ))
    decoder = nn.Sequential(nn.Linear(VZ, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, VD))

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(VZ), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw = encoder(x).split(VZ, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    x = tiny_data(32)
    ppvae.fit(model, guide, x, epochs=2, batch_size=8, progress=False)
    assert encoder.training and decoder.training
    stats = copy.deepcopy(encoder[1].state_dict())
    modes: list[bool] = []
    hooks = [m.register_forward_hook(lambda m, i, o: modes.append(m.training))
             for m in (encoder[1], decoder[2])]  # fmt: skip
    first = ppvae.log_marginal_likelihood(model, guide, x, num_samples=20)
    for h in hooks:
        h.remove()
    assert modes and not any(modes)
    for k, v in encoder[1].state_dict().items():
        assert torch.equal(v, stats[k]), k
    assert encoder.training and decoder.training and encoder[1].training and decoder[2].training
    # eval mode is deterministic given the draws: the same seed gives the same numbers
    torch.manual_seed(0)
    a = ppvae.log_marginal_likelihood(model, guide, x[:4], num_samples=20)
    torch.manual_seed(0)
    b = ppvae.log_marginal_likelihood(model, guide, x[:4], num_samples=20)
    assert torch.equal(a.log_px, b.log_px) and bool(torch.isfinite(first.log_px).all())


# -- 8. functions and bound methods --------------------------------------------------------


decoder_net = nn.Sequential(nn.Linear(VZ, 8), nn.Tanh(), nn.Linear(8, VD))  # a global network


def function_model(x):
    pyro.module("decoder", decoder_net)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(VZ), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=decoder_net(z)).to_event(1), obs=x)


@pytest.mark.parametrize("kind", ["function", "method"])
def test_8_functions_and_bound_methods_train_as_with_svi(kind):
    torch.manual_seed(0)
    vae = TinyVAE()
    encoder = vae.encoder

    def function_guide(x):  # a closure over the network
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw = encoder(x).split(VZ, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))

    if kind == "function":
        decoder_net.load_state_dict(vae.decoder.state_dict())
        model, guide, nets = function_model, function_guide, (decoder_net, encoder)
    else:
        model, guide, nets = vae.model, vae.guide, (vae.decoder, vae.encoder)
    saved = [copy.deepcopy(n.state_dict()) for n in nets]
    x = tiny_data(24)
    rec = StepLosses()
    ppvae.fit(model, guide, x, epochs=2, batch_size=8, lr=0.05, seed=2, shuffle=False,
              progress=False, callbacks=[rec])  # fmt: skip
    trained = [copy.deepcopy(n.state_dict()) for n in nets]
    for n, s in zip(nets, saved, strict=True):
        n.load_state_dict(s)
        n.zero_grad(set_to_none=True)  # SVI accumulates into .grad left by the last step
    reference = svi_losses(model, guide, [(b,) for b in x.split(8)], epochs=2, seed=2, lr=0.05)
    torch.testing.assert_close(torch.tensor(rec.batch_sums()), torch.tensor(reference),
                               rtol=2e-4, atol=1e-3)  # fmt: skip
    for n, t, s in zip(nets, trained, saved, strict=True):
        for k in t:
            torch.testing.assert_close(n.state_dict()[k], t[k], rtol=1e-3, atol=1e-4)
            assert not torch.equal(t[k], s[k])


# -- 9. Pyro ELBO instances ------------------------------------------------------------------


def test_9_tracegraph_elbo_instance_trains_as_with_svi():
    torch.manual_seed(0)
    vae, x = TinyVAE(), tiny_data(24)
    twin = copy.deepcopy(vae)
    rec = StepLosses()
    ppvae.fit(vae.model, vae.guide, x, TraceGraph_ELBO(), epochs=2, batch_size=8, lr=0.05,
              seed=3, shuffle=False, progress=False, callbacks=[rec])  # fmt: skip
    reference = svi_losses(twin.model, twin.guide, [(b,) for b in x.split(8)], epochs=2,
                           seed=3, lr=0.05, loss=TraceGraph_ELBO())  # fmt: skip
    torch.testing.assert_close(torch.tensor(rec.batch_sums()), torch.tensor(reference),
                               rtol=2e-4, atol=1e-3)  # fmt: skip


def test_9_renyi_elbo_instance_trains_pyro_module_programs():
    """Pyro's RenyiELBO sees the scaled sites (ppvae scales by 1/B): the reference is SVI
    with RenyiELBO on the programs under poutine.scale(1/B), the same objective."""
    torch.manual_seed(0)
    vae, x = TinyVAE(), tiny_data(24)
    twin = copy.deepcopy(vae)
    before = copy.deepcopy(vae.decoder.state_dict())
    rec = StepLosses()
    elbo = RenyiELBO(alpha=0.5, num_particles=2)
    ppvae.fit(vae.model, vae.guide, x, elbo, epochs=2, batch_size=8, lr=0.05, seed=3,
              shuffle=False, progress=False, callbacks=[rec])  # fmt: skip
    reference = svi_losses(
        poutine.scale(twin.model, scale=1 / 8), poutine.scale(twin.guide, scale=1 / 8),
        [(b,) for b in x.split(8)], epochs=2, seed=3, lr=0.05,
        loss=RenyiELBO(alpha=0.5, num_particles=2),
    )  # fmt: skip
    torch.testing.assert_close(torch.tensor(rec.losses), torch.tensor(reference),
                               rtol=2e-4, atol=1e-4)  # fmt: skip
    assert not torch.equal(before["0.weight"], vae.decoder[0].weight)
    torch.testing.assert_close(vae.decoder[0].weight, twin.decoder[0].weight, rtol=1e-3, atol=1e-4)


# -- 10. porting from Pyro: optimizers and schedules ---------------------------------------


def _compare_optimizers(ppvae_kwargs, pyro_optim, *, epochs=2, between_epochs=None, lr=0.02):
    torch.manual_seed(0)
    vae, x = TinyVAE(), tiny_data(32)
    twin = copy.deepcopy(vae)
    rec = StepLosses()
    history = ppvae.fit(vae.model, vae.guide, x, epochs=epochs, batch_size=8, lr=lr, seed=4,
                        shuffle=False, progress=False, callbacks=[rec], **ppvae_kwargs)  # fmt: skip
    reference = svi_losses(twin.model, twin.guide, [(b,) for b in x.split(8)], epochs=epochs,
                           seed=4, optim=pyro_optim, between_epochs=between_epochs)  # fmt: skip
    torch.testing.assert_close(torch.tensor(rec.batch_sums()), torch.tensor(reference),
                               rtol=5e-4, atol=2e-3)  # fmt: skip
    torch.testing.assert_close(vae.decoder[0].weight, twin.decoder[0].weight, rtol=1e-3, atol=2e-4)
    return history


def test_10_adam_betas_through_a_partial():
    _compare_optimizers(
        {"optimizer": functools.partial(torch.optim.Adam, lr=0.02, betas=(0.8, 0.99))},
        pyro.optim.Adam({"lr": 0.02, "betas": (0.8, 0.99)}),
    )


def test_10_optimizer_class_with_the_per_point_loss():
    """SGD on ppvae's loss per point is SGD on Pyro's summed loss with lr / B."""
    _compare_optimizers({"optimizer": torch.optim.SGD}, pyro.optim.SGD({"lr": 0.4 / 8}), lr=0.4)


def test_10_pyro_clipped_adam_instance():
    _compare_optimizers(
        {"optimizer": pyro.optim.ClippedAdam({"lr": 0.02, "clip_norm": 1e3, "lrd": 0.9})},
        pyro.optim.ClippedAdam({"lr": 0.02, "clip_norm": 1e3, "lrd": 0.9}),
    )


def test_10_pyro_scheduler_and_scheduler_argument():
    def exponential():
        return pyro.optim.ExponentialLR(
            {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "gamma": 0.5}
        )

    reference_scheduler = exponential()
    history = _compare_optimizers(
        {"optimizer": exponential()}, reference_scheduler, epochs=3,
        between_epochs=reference_scheduler.step,
    )  # fmt: skip
    assert history["lr"] == pytest.approx([0.025, 0.0125, 0.00625])
    other = _compare_optimizers(
        {
            "optimizer": functools.partial(torch.optim.Adam, lr=0.05),
            "scheduler": functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5),
        },
        (s := exponential()), epochs=3, between_epochs=s.step,
    )  # fmt: skip
    assert other["lr"] == history["lr"]


# -- 11. Delta and discrete guide sites ------------------------------------------------------


def test_11_delta_guide_site_warns_and_gives_the_joint_density():
    def guide(x):
        loc, _ = posterior(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(loc, event_dim=1))

    x = gaussian_data(6)
    with pytest.warns(PpvaeWarning, match="Delta"):
        result = ppvae.log_marginal_likelihood(gaussian_model, guide, x, num_samples=3)
    loc, _ = posterior(x)
    joint = dist.Normal(0.0, 1.0).log_prob(loc).sum(-1) + dist.Normal(loc * W, S).log_prob(x).sum(
        -1
    )
    torch.testing.assert_close(result.log_px, joint.double(), rtol=0, atol=1e-4)


def test_11_discrete_guide_site_warns_and_estimates_the_mixture():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(2 * z - 1, 1.0), obs=x)

    def guide(x):  # the exact posterior: p(z = 1 | x) = sigmoid(2 x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=2 * x))

    x = torch.linspace(-2, 2, 7)
    with pytest.warns(PpvaeWarning, match="discrete"):
        result = ppvae.log_marginal_likelihood(model, guide, x, num_samples=5)
    mixture = torch.logsumexp(
        torch.stack([dist.Normal(1.0, 1.0).log_prob(x), dist.Normal(-1.0, 1.0).log_prob(x)]), 0
    ) - torch.log(torch.tensor(2.0))
    torch.testing.assert_close(result.log_px, mixture.double(), rtol=0, atol=1e-4)
