"""KL weights (beta, warm-up) for every objective with latent terms, optimizer options and
learning-rate schedules from the config, and one --set that swaps the objective of every
shipped spec."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppvae
from ppvae.errors import SpecError
from ppvae.infer.bounds import RenyiBound
from ppvae.infer.callbacks import Callback
from ppvae.infer.objectives import ObjectiveContext
from ppvae.infer.scaling import Scaling
from ppvae.infer.train import fit

REPO = Path(__file__).resolve().parents[2]
FROZEN = functools.partial(torch.optim.SGD, lr=0.0)


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


LOC = 0.3


def guide(x):
    loc = pyro.param("loc", lambda: torch.tensor(LOC))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2 + loc, 0.6))


@pytest.fixture(autouse=True)
def _fresh_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


X = torch.linspace(-2.0, 2.0, 12)


class _Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.weights: list[float] = []

    def on_step_end(self, state, info) -> None:
        self.losses.append(info["loss"])
        self.weights.append(state.kl_weight)


def _weighted_elbo(x, beta: float, seed: int) -> float:
    """-E[log p(x|z) + beta (log p(z) - log q(z|x))] per point, the same draws as fit's."""
    torch.manual_seed(seed)
    with torch.no_grad():
        z = dist.Normal(x / 2 + LOC, 0.6).sample()
        log_px = dist.Normal(z, 1.0).log_prob(x)
        kl_terms = dist.Normal(0.0, 1.0).log_prob(z) - dist.Normal(x / 2 + LOC, 0.6).log_prob(z)
    return float(-(log_px + beta * kl_terms).mean())


@pytest.mark.parametrize("beta", [1.0, 4.0, 0.25])
def test_beta_weights_the_latent_terms_of_the_elbo(beta):
    rec = _Losses()
    fit(model, guide, X, epochs=1, batch_size=12, seed=5, beta=beta, optimizer=FROZEN,
        progress=False, device="cpu", shuffle=False, callbacks=[rec])  # fmt: skip
    assert rec.weights == [beta]
    assert rec.losses[0] == pytest.approx(_weighted_elbo(X, beta, 5), rel=1e-5)


def test_kl_warmup_rises_to_beta():
    rec = _Losses()
    fit(model, guide, X, epochs=4, batch_size=6, beta=4.0, kl_warmup_epochs=2, lr=1e-3,
        progress=False, device="cpu", callbacks=[rec])  # fmt: skip
    assert rec.weights == pytest.approx([4.0 * min(1.0, s / 4) for s in range(1, 9)])


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_the_bounds_carry_the_kl_weight_inside_their_importance_weights(alpha):
    """IWAE / Renyi with a KL weight: log w = log p(x|z) + w (log p(z) - log q(z|x)),
    against the same draws computed by hand."""
    k, weight = 7, 0.3
    bound = RenyiBound(alpha=alpha, num_particles=k).with_context(ObjectiveContext("data"))
    scaling = Scaling("data")
    scaling.set(None, 1.0 / 12, weight)
    torch.manual_seed(2)
    loss = bound.loss(scaling(model), scaling(guide), X)
    torch.manual_seed(2)
    with torch.no_grad():
        q = dist.Normal(X / 2 + LOC, 0.6)
        z = q.sample((k,))
        log_w = dist.Normal(z, 1.0).log_prob(X) + weight * (
            dist.Normal(0.0, 1.0).log_prob(z) - q.log_prob(z)
        )
    if alpha == 1.0:
        per_point = log_w.mean(0)
    else:
        per_point = (torch.logsumexp((1 - alpha) * log_w, 0) - math.log(k)) / (1 - alpha)
    assert float(loss) == pytest.approx(float(-per_point.mean()), rel=1e-5)


def test_the_bounds_refuse_a_kl_weight_with_stl_or_dreg():
    bound = RenyiBound(alpha=0.0, num_particles=3, estimator="dreg")
    scaling = Scaling("data")
    scaling.set(None, 1.0 / 12, 0.5)
    with pytest.raises(SpecError, match="need the iwae objective's estimator = 'reparam'"):
        bound.loss(scaling(model), scaling(guide), X)


def test_iwae_trains_with_kl_warmup_and_beta():
    rec = _Losses()
    history = fit(model, guide, X, "iwae", epochs=3, batch_size=6, beta=2.0,
                  kl_warmup_epochs=1, lr=1e-2, progress=False, device="cpu",
                  callbacks=[rec])  # fmt: skip
    assert rec.weights[-1] == 2.0 and rec.weights[0] == 1.0
    assert all(math.isfinite(v) for v in history["train_loss"])


# --------------------------------------------------------------------------------------
# optimizer options and schedules from the config


def test_optimizer_options_reach_the_optimizer():
    history = fit(model, guide, X, epochs=1, batch_size=6, adam_betas=(0.8, 0.95), eps=1e-6,
                  progress=False, device="cpu")  # fmt: skip
    group = history.state.optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6
    history = fit(model, guide, X, epochs=1, batch_size=6, optimizer="sgd", momentum=0.5,
                  lr=0.01, progress=False, device="cpu")  # fmt: skip
    assert history.state.optimizer.param_groups[0]["momentum"] == 0.5


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"lr_schedule": "step", "lr_step_epochs": 2, "lr_gamma": 0.5}, [1.0, 0.5, 0.5, 0.25]),
        (
            {"lr_schedule": "cosine"},
            [(1 + math.cos(math.pi * e / 4)) / 2 for e in range(1, 5)],
        ),
        ({"lr_warmup_epochs": 2}, [2 / 3, 1.0, 1.0, 1.0]),
        (
            {"lr_schedule": "step", "lr_step_epochs": 1, "lr_gamma": 0.5, "lr_warmup_epochs": 1},
            [1.0, 0.5, 0.25, 0.125],
        ),
    ],
)
def test_learning_rate_schedules(settings, expected):
    history = fit(model, guide, X, epochs=4, batch_size=6, lr=0.01, progress=False,
                  device="cpu", **settings)  # fmt: skip
    assert history["lr"] == pytest.approx([0.01 * e for e in expected], rel=1e-6)


def test_plateau_schedule_cuts_the_rate_when_the_validation_elbo_stalls():
    history = fit(model, guide, X, epochs=4, batch_size=6, lr=1e-6, lr_schedule="plateau",
                  lr_patience=0, lr_gamma=0.5, valid_data=X, progress=False,
                  device="cpu")  # fmt: skip
    # a rate of 1e-6 barely moves the weights: the validation ELBO (fixed draws) does not
    # improve by the scheduler's relative threshold (1e-4), so every epoch halves the rate
    assert history["lr"] == pytest.approx([1e-6, 5e-7, 2.5e-7, 1.25e-7])


def test_a_config_schedule_resumes_bit_for_bit(tmp_path):
    """A run of 4 epochs stopped after 2 (as by a kill) and resumed gives the same rates
    and losses as the uninterrupted run: the scheduler's state is in the checkpoint."""

    class StopAfter(Callback):
        def on_epoch_end(self, state, record):
            state.stop = state.stop or record["epoch"] >= 2

    def run(out, resume=None, callbacks=()):
        pyro.clear_param_store()  # every run starts loc from its initial value
        return fit(model, guide, X, epochs=4, batch_size=6, lr_schedule="cosine",
                   lr_warmup_epochs=1, progress=False, device="cpu", out_dir=out,
                   resume_from=resume, callbacks=callbacks)  # fmt: skip

    full = run(tmp_path / "full")
    run(tmp_path / "part", callbacks=[StopAfter()])
    resumed = run(tmp_path / "again", tmp_path / "part" / "checkpoints" / "last.pt")
    assert len(full["lr"]) == 4 and len(set(full["lr"])) > 2
    assert resumed["lr"] == full["lr"] and resumed["train_loss"] == full["train_loss"]


def test_a_plateau_schedule_with_warmup_is_refused():
    with pytest.raises(SpecError, match="does not combine"):
        ppvae.TrainConfig(lr_schedule="plateau", lr_warmup_epochs=2)


# --------------------------------------------------------------------------------------
# one --set swaps the objective of every shipped spec


SPECS = sorted((REPO / "models").glob("*.toml"))
OBJECTIVE_KINDS = ["elbo", "meanfield_elbo", "iwae", "renyi", "enum_elbo", "pyro_renyi"]


@pytest.mark.parametrize("spec_path", SPECS, ids=[p.stem for p in SPECS])
def test_one_set_swaps_the_objective_of_every_shipped_spec(spec_path):
    """Every shipped spec takes each objective with one --set, or refuses it for a reason
    of its model (a discrete latent to enumerate, a guide that cannot be reparameterized),
    never because of its KL warm-up or beta: those apply to any objective with latent
    terms, and are refused only with objectives that have none to weight."""
    taken = []
    for kind in OBJECTIVE_KINDS:
        try:
            spec = ppvae.load_spec(spec_path, [f"objective.kind={kind}"])
        except SpecError as err:
            message = str(err)
            weighted = "kl_warmup_epochs" in message or "train.beta" in message
            if weighted:  # only for the objectives without latent terms to weight
                assert kind in ("enum_elbo", "pyro_renyi"), message
            continue
        assert spec.objective.kind == kind
        taken.append(kind)
    assert "elbo" in taken or "enum_elbo" in taken
    # an ELBO and a bound swap in unless the model needs enumeration
    if "elbo" in taken:
        assert {"meanfield_elbo", "iwae", "renyi"} <= set(taken), taken
