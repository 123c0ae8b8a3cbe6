"""One training path for every program (issue: training core).

* ``fit`` follows the idiomatic Pyro loop ``SVI(model, guide, pyro.optim.Adam,
  Trace_ELBO())`` over the same batches with the same draws;
* the lean ELBO (:mod:`ppvae.infer.lean`) gives Pyro's ``Trace_ELBO`` loss step by step,
  for ppvae's zoo programs and for user-written ones alike, and falls back to Pyro where it
  cannot be sure (non-reparameterized guide sites);
* the objective a user passes is the one optimized (a ``PyroElbo`` subclass, a subclass of
  ppvae's ``Elbo``, any Pyro ELBO instance);
* ``fit(plate=...)`` reaches every objective;
* ``init`` / ``step`` drive training from a user's own loop and give ``fit``'s numbers.
"""

from __future__ import annotations

import functools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn

import ppvae
from ppvae.errors import SpecError
from ppvae.infer.callbacks import Callback
from ppvae.infer.lean import LeanElbo
from ppvae.infer.objectives import Elbo, PyroElbo, build_objective
from ppvae.infer.train import fit
from ppvae.models.vae import build_vae


class _Steps(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.objective = None

    def on_train_start(self, state) -> None:
        self.objective = state.objective

    def on_step_end(self, state, info) -> None:
        self.losses.append(info["loss"])


# --------------------------------------------------------------------------------------
# user-written programs (Pyro and torch only)


class Decoder(PyroModule):
    def __init__(self, x_dim: int = 12, z_dim: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.net = nn.Sequential(nn.Linear(z_dim, hidden), nn.Tanh(), nn.Linear(hidden, x_dim))

    def forward(self, x, plate: str = "data"):
        with pyro.plate(plate, x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.net(z)).to_event(1), obs=x)


class Encoder(PyroModule):
    def __init__(self, x_dim: int = 12, z_dim: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 2 * z_dim))

    def forward(self, x, plate: str = "data"):
        loc, raw = self.net(x).chunk(2, -1)
        with pyro.plate(plate, x.shape[0]):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


class _Plated(nn.Module):
    """A program whose data plate has another name."""

    def __init__(self, inner: nn.Module, plate: str) -> None:
        super().__init__()
        self.inner, self.plate = inner, plate

    def forward(self, x):
        return self.inner(x, plate=self.plate)


def _data(n: int = 96, d: int = 12, seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.5).float()


def _user_pair(seed: int = 11):
    torch.manual_seed(seed)
    return Decoder(), Encoder()


# --------------------------------------------------------------------------------------
# the idiomatic Pyro loop


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_follows_the_idiomatic_svi_loss_curve(seed):
    torch.manual_seed(100 + seed)
    n, batch, epochs, lr = 256, 64, 3, 1e-2
    x = (torch.rand(n, 20) < 0.4).float()
    model, guide = build_vae(data_dim=20, latent_dim=3, hidden=(16,))
    start = [{k: v.clone() for k, v in m.state_dict().items()} for m in (model, guide)]

    steps = _Steps()
    fit(model, guide, x, epochs=epochs, batch_size=batch, lr=lr, seed=seed, progress=False,
        device="cpu", callbacks=[steps])  # fmt: skip
    fast = torch.tensor(steps.losses)

    model.load_state_dict(start[0])
    guide.load_state_dict(start[1])
    pyro.clear_param_store()
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": lr}), pyro.infer.Trace_ELBO())
    shuffle = torch.Generator().manual_seed(seed)  # fit's shuffle stream, one draw an epoch
    pyro.set_rng_seed(seed)  # fit's noise stream
    slow = []
    with pyro.validation_enabled(True):
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=shuffle).split(batch):
                slow.append(svi.step(x[idx]) / len(idx))  # SVI: the batch's summed loss
    pyro.clear_param_store()
    slow = torch.tensor(slow)

    assert fast.shape == slow.shape == (epochs * n // batch,)
    assert fast[0] == pytest.approx(slow[0].item(), rel=1e-6)  # same weights, same draws
    # Adam's foreach and per-tensor kernels round differently; the curves stay together
    assert torch.allclose(fast, slow, rtol=2e-3, atol=0)
    assert fast[-4:].mean() < fast[:4].mean()  # and they are learning curves
    assert steps.objective._lean.routes() == {"lean": 1}


# --------------------------------------------------------------------------------------
# the lean ELBO is Pyro's Trace_ELBO


def _curve(build, objective, warmup: int = 0, **options):
    model, guide = build()
    steps = _Steps()
    fit(model, guide, _data(), objective, epochs=4, batch_size=32, lr=5e-3, seed=3,
        progress=False, device="cpu", kl_warmup_epochs=warmup, callbacks=[steps],
        **options)  # fmt: skip
    return torch.tensor(steps.losses), steps.objective


ZOO = [
    ({}, 0),
    ({}, 3),  # KL warm-up: the latent terms weighted
    ({"prior": "vamp", "guide": "iaf"}, 2),
    ({"prior": "flow", "guide": "full_normal", "likelihood": "continuous_bernoulli"}, 0),
    ({"prior": "mixture", "guide": "planar", "likelihood": "gaussian"}, 0),
]


@pytest.mark.parametrize(("components", "warmup"), ZOO)
def test_the_lean_elbo_equals_pyros_trace_elbo_step_by_step_on_the_zoo(components, warmup):
    def build():
        torch.manual_seed(11)  # the same initial weights
        return build_vae(data_dim=12, latent_dim=3, hidden=(8,), **components)

    lean, objective = _curve(build, "elbo", warmup)
    traced, pyro_objective = _curve(build, pyro.infer.Trace_ELBO(), warmup)
    assert isinstance(objective, Elbo) and objective._lean.routes() == {"lean": 1}
    assert isinstance(pyro_objective, PyroElbo)
    assert lean.shape == traced.shape == (12,)
    assert torch.allclose(lean, traced, rtol=1e-4, atol=1e-5), (lean - traced).abs().max()


@pytest.mark.parametrize("particles", [1, 3])
def test_user_programs_take_the_same_lean_path_as_the_zoo(particles):
    cfg = ppvae.OBJECTIVES.get("elbo")(num_particles=particles)
    lean, objective = _curve(_user_pair, cfg)
    traced, _ = _curve(_user_pair, pyro.infer.Trace_ELBO(num_particles=particles,
                                                         vectorize_particles=particles > 1))  # fmt: skip
    assert objective._lean.routes() == {"lean": 1}  # no class check: the mechanism is general
    assert torch.allclose(lean, traced, rtol=1e-4, atol=1e-5)


def test_non_reparameterized_guides_are_computed_by_pyro():
    """A discrete latent drawn by the guide needs Pyro's score-function surrogate: the
    lean route is refused for that layout, and the loss is Pyro's to the last digit."""
    probs = torch.tensor(0.3, requires_grad=True)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Bernoulli(probs))

    x = torch.randn(5)
    lean = LeanElbo()
    for seed in range(3):
        torch.manual_seed(seed)
        ours = lean(model, guide, (x,), {})
        (g_ours,) = torch.autograd.grad(ours, probs)
        torch.manual_seed(seed)
        ref = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x)
        (g_ref,) = torch.autograd.grad(ref, probs)
        assert torch.equal(ours, ref) and torch.equal(g_ours, g_ref)
    assert lean.routes() == {"pyro": 1}


def test_a_new_layout_is_checked_and_leaves_the_random_stream_as_the_lean_path_would():
    """The first run of a layout is computed both ways from one random state; afterwards
    the stream is where the lean run alone left it (resume stays bit-exact)."""
    model, guide = _user_pair()
    x = _data(8)
    checked = LeanElbo()
    torch.manual_seed(0)
    a = checked(model, guide, (x,), {})
    after_checked = torch.rand(3)
    warm = LeanElbo()
    warm(model, guide, (x,), {})  # the layout is known now
    torch.manual_seed(0)
    b = warm(model, guide, (x,), {})
    after_lean = torch.rand(3)
    assert torch.equal(a, b) and torch.equal(after_checked, after_lean)


# --------------------------------------------------------------------------------------
# the objective passed is the objective optimized


class BetaElbo(pyro.infer.Trace_ELBO):
    """A beta-ELBO as a Pyro user writes it: the latent terms weighted by beta."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def differentiable_loss(self, model, guide, *args, **kwargs):
        from pyro import poutine

        class _Beta(poutine.messenger.Messenger):
            def _process_message(_, msg):
                if msg["type"] == "sample" and not msg["is_observed"]:
                    msg["scale"] = self.beta * msg["scale"]

        return super().differentiable_loss(_Beta()(model), _Beta()(guide), *args, **kwargs)


def test_a_pyro_elbo_subclass_is_the_objective_that_is_optimized():
    plain, _ = _curve(_user_pair, "elbo")
    beta, objective = _curve(_user_pair, PyroElbo(BetaElbo(beta=8.0)))
    beta_direct, _ = _curve(_user_pair, BetaElbo(beta=8.0))  # the instance itself
    assert isinstance(objective.elbo, BetaElbo)
    assert torch.equal(beta, beta_direct)
    # beta = 8 weights the KL term 8 times: a clearly different, larger loss
    assert beta[0] > plain[0] + 1.0
    # and it is exactly the subclass's loss on the first batch (same weights, same draws)
    model, guide = _user_pair()
    x = _data()
    first = x[torch.randperm(96, generator=torch.Generator().manual_seed(3))[:32]]
    pyro.set_rng_seed(3)
    with ppvae.infer.isolation.isolated_param_store():
        ref = BetaElbo(8.0).differentiable_loss(
            ppvae.infer.step.scaled(model, "data", 1 / 32, 1 / 96, 1.0),
            ppvae.infer.step.scaled(guide, "data", 1 / 32, 1 / 96, 1.0),
            first,
        )
    assert beta[0] == pytest.approx(float(ref.detach()), rel=1e-6)


def test_a_subclass_of_ppvaes_elbo_that_overrides_loss_is_used():
    class Doubled(Elbo):
        def loss(self, model, guide, *args, **kwargs):
            return 2.0 * super().loss(model, guide, *args, **kwargs)

    plain, _ = _curve(_user_pair, "elbo", optimizer=functools.partial(torch.optim.SGD, lr=0.0))
    doubled, objective = _curve(
        _user_pair, Doubled(), optimizer=functools.partial(torch.optim.SGD, lr=0.0)
    )
    assert type(objective) is Doubled
    assert torch.allclose(doubled, 2.0 * plain, rtol=1e-6)


def test_pyro_elbos_without_a_differentiable_loss_train_through_loss_and_grads():
    losses, objective = _curve(_user_pair, pyro.infer.TraceGraph_ELBO())
    assert isinstance(objective, PyroElbo) and not objective.differentiable
    plain, _ = _curve(_user_pair, "elbo")
    # TraceGraph_ELBO's loss is the ELBO too: the same numbers on the same draws
    assert torch.allclose(losses, plain, rtol=1e-4, atol=1e-5)


def test_an_objective_that_reaches_no_parameter_is_refused():
    class Blind(Elbo):
        def loss(self, model, guide, *args, **kwargs):
            return super().loss(model, guide, *args, **kwargs).detach().requires_grad_()

    model, guide = _user_pair()
    with pytest.raises(SpecError, match="gave no gradient to any parameter"):
        fit(model, guide, _data(), Blind(), epochs=1, progress=False, device="cpu")


# --------------------------------------------------------------------------------------
# the data plate reaches every objective


PLATE_OBJECTIVES = [
    "elbo",
    "meanfield_elbo",
    "iwae",
    "renyi",
    pytest.param(ppvae.OBJECTIVES.get("renyi")(alpha=0.5, estimator="dreg"), id="renyi-dreg"),
    "pyro_renyi",
    pytest.param(pyro.infer.Trace_ELBO(), id="Trace_ELBO"),
    pytest.param(pyro.infer.TraceGraph_ELBO(), id="TraceGraph_ELBO"),
]


@pytest.mark.parametrize("objective", PLATE_OBJECTIVES)
def test_fit_with_a_named_plate_works_with_every_objective(objective):
    def build(plate):
        model, guide = _user_pair()
        return _Plated(model, plate), _Plated(guide, plate)

    named, _ = _curve(lambda: build("obs"), objective, plate="obs")
    default, _ = _curve(lambda: build("data"), objective)
    assert named.shape == (12,) and torch.isfinite(named).all()
    # the plate's name changes nothing else: the same losses
    assert torch.allclose(named, default, rtol=1e-5, atol=1e-6)


def test_a_plate_no_site_uses_is_refused_for_the_bounds():
    model, guide = _user_pair()
    with pytest.raises(SpecError, match="plate named 'obs'"):
        fit(model, guide, _data(), "iwae", plate="obs", epochs=1, progress=False, device="cpu")


# --------------------------------------------------------------------------------------
# init / step in a user's loop


def test_init_and_step_in_a_user_loop_give_fits_numbers():
    x = _data()
    config = ppvae.TrainConfig(epochs=2, batch_size=32, lr=5e-3, seed=3, progress=False,
                               device="cpu", shuffle=False)  # fmt: skip
    model, guide = _user_pair()
    history = fit(model, guide, x, config=config)

    model, guide = _user_pair()
    with ppvae.infer.isolation.isolated_param_store():
        state = ppvae.init(model, guide, "elbo", example_batch=(x[:32],), config=config,
                           num_data=96)  # fmt: skip
        per_epoch = []
        for _ in range(2):
            total = 0.0
            for batch in x.split(32):
                state, info = ppvae.step(state, (batch,))
                total += info["loss"] * len(batch)
            per_epoch.append(total / 96)
    assert state.step == 6 and set(info) == {"loss", "grad_norm", "points"} and info["points"] == 32
    assert per_epoch == pytest.approx(history["train_loss"], rel=1e-6)
    assert set(state.named_params()) == {
        "model.net.0.weight", "model.net.0.bias", "model.net.2.weight", "model.net.2.bias",
        "guide.net.0.weight", "guide.net.0.bias", "guide.net.2.weight", "guide.net.2.bias",
    }  # fmt: skip


def test_init_takes_any_torch_optimizer_and_config_settings_are_checked():
    model, guide = _user_pair()
    x = _data(32)
    with ppvae.infer.isolation.isolated_param_store():
        state = ppvae.init(model, guide, "elbo", torch.optim.RMSprop, (x,))
        assert isinstance(state.optimizer, torch.optim.RMSprop)
        state = ppvae.init(model, guide, build_objective("iwae"),
                           functools.partial(torch.optim.SGD, lr=0.1, momentum=0.5), (x,))  # fmt: skip
        assert state.optimizer.param_groups[0]["momentum"] == 0.5
    with pytest.raises(SpecError, match="unknown training setting 'epoch'"):
        fit(model, guide, x, epoch=3)
    with pytest.raises(SpecError, match=r"train.batch_size must be an integer, got 2.5"):
        fit(model, guide, x, batch_size=2.5)
    with pytest.raises(SpecError, match=r"train.seed must be between 0 and 4294967295"):
        fit(model, guide, x, seed=-1)
    with pytest.raises(SpecError, match=r"train.lr must be positive and finite"):
        fit(model, guide, x, lr=float("nan"))


# --------------------------------------------------------------------------------------
# optimizers and schedules as a Pyro user writes them


def test_pyro_optimizers_and_schedulers_are_taken_as_they_are():
    import pyro.optim

    model, guide = _user_pair()
    schedule = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "gamma": 0.5}
    )
    history = fit(model, guide, _data(), epochs=3, batch_size=32, progress=False,
                  device="cpu", optimizer=schedule)  # fmt: skip
    assert history["lr"] == pytest.approx([0.005, 0.0025, 0.00125])
    model, guide = _user_pair()
    history = fit(model, guide, _data(), epochs=1, batch_size=32, progress=False, device="cpu",
                  optimizer=pyro.optim.ClippedAdam({"lr": 0.01, "clip_norm": 1.0}))  # fmt: skip
    state = history.state
    assert type(state.optimizer).__name__ == "ClippedAdam"
    assert state.optimizer.param_groups[0]["clip_norm"] == 1.0
    model, guide = _user_pair()
    history = fit(model, guide, _data(), epochs=3, batch_size=32, progress=False, device="cpu",
                  scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2,
                                              gamma=0.1))  # fmt: skip
    assert history["lr"] == pytest.approx([1e-3, 1e-4, 1e-4])


def test_a_scheduled_run_resumes_bit_for_bit(tmp_path):
    def run(epochs, out, resume=None):
        model, guide = _user_pair()
        return fit(model, guide, _data(), epochs=epochs, batch_size=32, progress=False,
                   device="cpu", out_dir=out, resume_from=resume,
                   scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1,
                                               gamma=0.5))  # fmt: skip

    full = run(4, tmp_path / "full")
    run(2, tmp_path / "part")
    resumed = run(4, tmp_path / "part2", tmp_path / "part" / "checkpoints" / "last.pt")
    assert resumed["train_loss"] == full["train_loss"]
    assert resumed["lr"] == full["lr"]
