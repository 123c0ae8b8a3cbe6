"""fit: trains a plain PyroModule pair, records history, checkpoints, resumes bit for bit.

The model/guide pairs below are written with Pyro and torch alone (nothing from ppvae), as
Contract 1 asks: probabilistic PCA, :math:`z \\sim N(0, I_k)`, :math:`x | z \\sim N(W z + b,
\\sigma^2 I)`, whose marginal is :math:`N(b, W W^T + \\sigma^2 I)` and whose posterior is
Gaussian with a mean linear in x and a constant covariance.
"""

from __future__ import annotations

import functools
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import constraints

from ppvae.checkpoint import load_checkpoint
from ppvae.errors import DataError, SpecError, TrainingError
from ppvae.infer.callbacks import Callback
from ppvae.infer.train import fit, mean_elbo

#: An optimizer that leaves the weights as they are (to measure losses at fixed weights).
FROZEN = functools.partial(torch.optim.SGD, lr=0.0)

D, K = 3, 1
W_TRUE = torch.tensor([[2.0], [-1.0], [0.5]])
B_TRUE = torch.tensor([1.0, 0.0, -1.0])
SIGMA_TRUE = 0.5


class PPCA(PyroModule):
    def __init__(self, d: int = D, k: int = K) -> None:
        super().__init__()
        self.k = k
        self.W = nn.Parameter(0.3 * torch.randn(d, k))
        self.b = nn.Parameter(torch.zeros(d))
        self.sigma = PyroParam(torch.tensor(1.0), constraint=constraints.positive)
        self.poison = False  # set by tests to produce a NaN loss on purpose

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.k), 1.0).to_event(1))
            loc = z @ self.W.T + self.b
            if self.poison:
                loc = loc * float("nan")
            pyro.sample("x", dist.Normal(loc, self.sigma).to_event(1), obs=x)

    def covariance(self) -> torch.Tensor:
        with torch.no_grad():
            return self.W @ self.W.T + self.sigma**2 * torch.eye(self.W.shape[0])


class Encoder(PyroModule):
    def __init__(self, d: int = D, k: int = K) -> None:
        super().__init__()
        self.linear = nn.Linear(d, k)
        self.raw_scale = nn.Parameter(torch.zeros(k))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            scale = F.softplus(self.raw_scale).expand(x.shape[0], -1)
            pyro.sample("z", dist.Normal(self.linear(x), scale).to_event(1))


def ppca_data(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, K, generator=g)
    return z @ W_TRUE.T + B_TRUE + SIGMA_TRUE * torch.randn(n, D, generator=g)


def pair(seed: int = 0):
    torch.manual_seed(seed)
    return PPCA(), Encoder()


def exact_pair():
    """PPCA at the true parameters with the guide at the exact posterior (k = 1)."""
    model, guide = pair()
    with torch.no_grad():
        model.W.copy_(W_TRUE)
        model.b.copy_(B_TRUE)
        model.sigma = torch.tensor(SIGMA_TRUE)
        m = float(W_TRUE.T @ W_TRUE) + SIGMA_TRUE**2
        guide.linear.weight.copy_(W_TRUE.T / m)
        guide.linear.bias.copy_(-(W_TRUE.T @ B_TRUE) / m)
        guide.raw_scale.copy_(torch.log(torch.expm1(torch.tensor([SIGMA_TRUE / math.sqrt(m)]))))
    return model, guide


def log_px(x: torch.Tensor) -> torch.Tensor:
    cov = W_TRUE @ W_TRUE.T + SIGMA_TRUE**2 * torch.eye(D)
    return dist.MultivariateNormal(B_TRUE, covariance_matrix=cov).log_prob(x)


def records(history):
    """History records without wall-clock times."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history.records]


def weights(*modules):
    return {f"{i}.{k}": v.clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()}


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


FAST = {"progress": False, "device": "cpu"}
X = ppca_data(96)
X_VALID = ppca_data(48, seed=1)


# --------------------------------------------------------------------------------------
# learning


@pytest.mark.slow
def test_fit_learns_the_ppca_covariance():
    x = ppca_data(400)
    model, guide = pair()
    history = fit(model, guide, x, epochs=40, batch_size=100, lr=0.03, **FAST)
    losses = history["train_loss"]
    assert losses[-1] < losses[0] - 1.0
    target = torch.cov(x.T)
    error = (model.covariance() - target).abs().max()
    assert error < 0.1 * target.abs().max(), (model.covariance(), target)
    # the training loss ends near the exact -log p(x) per point (a tight bound)
    assert losses[-1] == pytest.approx(-float(log_px(x).mean()), abs=0.15)


def test_losses_are_per_data_point_and_valid_elbo_is_the_mean_bound():
    """With the exact posterior every draw gives log p(x): the training loss is exactly
    minus the mean log p(x) over the training data, whatever the batch size, and the
    validation ELBO is the mean log p(x) of the validation data."""
    model, guide = exact_pair()
    history = fit(
        model, guide, X, valid_data=X_VALID, epochs=2, batch_size=40, optimizer=FROZEN, **FAST
    )
    for loss in history["train_loss"]:
        assert loss == pytest.approx(-float(log_px(X).mean()), rel=1e-5)
    for elbo in history["valid_elbo"]:
        assert elbo == pytest.approx(float(log_px(X_VALID).mean()), rel=1e-5)


def test_history_fields():
    model, guide = pair()
    history = fit(model, guide, X, valid_data=X_VALID, epochs=3, batch_size=40, lr=0.01, **FAST)
    assert len(history) == 3
    for i, r in enumerate(history.records, start=1):
        assert set(r) == {"epoch", "step", "train_loss", "kl_weight", "valid_elbo", "seconds"}
        assert r["epoch"] == i and r["step"] == 3 * i  # ceil(96 / 40) = 3 steps per epoch
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["valid_elbo"])
        assert r["kl_weight"] == 1.0 and r["seconds"] > 0
    assert history["epoch"] == [1, 2, 3]
    # the validation ELBO is computed on the current weights with fixed draws
    assert history["valid_elbo"][-1] == mean_elbo(model, guide, X_VALID)
    assert "History(epochs=3" in repr(history)


def test_no_validation_data_no_valid_elbo():
    model, guide = pair()
    history = fit(model, guide, X, epochs=1, batch_size=50, **FAST)
    assert history["valid_elbo"] == [None]


# --------------------------------------------------------------------------------------
# options


def test_early_stopping_stops_when_the_validation_elbo_stalls():
    model, guide = pair()
    # lr = 0: the validation ELBO (fixed draws) never improves after the first epoch
    history = fit(
        model,
        guide,
        X,
        valid_data=X_VALID,
        epochs=6,
        batch_size=48,
        optimizer=FROZEN,
        early_stopping=1,
        **FAST,
    )
    assert len(history) == 2
    assert history.records[-1].get("early_stopped") is True
    assert history["valid_elbo"][0] == history["valid_elbo"][1]
    model, guide = pair()
    history = fit(
        model,
        guide,
        X,
        valid_data=X_VALID,
        epochs=6,
        batch_size=48,
        optimizer=FROZEN,
        early_stopping=3,
        **FAST,
    )
    assert len(history) == 4


def test_metrics_file_records_the_early_stop(tmp_path):
    model, guide = pair()
    history = fit(
        model,
        guide,
        X,
        valid_data=X_VALID,
        epochs=6,
        batch_size=48,
        optimizer=FROZEN,
        early_stopping=1,
        out_dir=tmp_path,
        **FAST,
    )
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == history.records


def test_no_early_stop_while_improving():
    model, guide = pair()
    history = fit(
        model,
        guide,
        X,
        valid_data=X_VALID,
        epochs=3,
        batch_size=16,
        lr=0.05,
        early_stopping=1,
        **FAST,
    )
    assert len(history) == 3
    assert history["valid_elbo"][0] < history["valid_elbo"][1] < history["valid_elbo"][2]


class Recorder(Callback):
    def __init__(self):
        self.kl_weights, self.grad_norms, self.clipped_norms = [], [], []

    def on_step_start(self, state):
        self.kl_weights.append(state.kl_weight)

    def on_step_end(self, state, info):
        self.grad_norms.append(info.get("grad_norm"))
        grads = [p.grad for p in state.params if p.grad is not None]
        self.clipped_norms.append(
            float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        )


def test_kl_warmup_weights_rise_linearly_to_one():
    model, guide = pair()
    rec = Recorder()
    history = fit(
        model, guide, X, epochs=4, batch_size=24, kl_warmup_epochs=2, callbacks=[rec], **FAST
    )
    steps = 4 * 2  # 4 steps per epoch, 2 warm-up epochs
    assert rec.kl_weights == pytest.approx([(i + 1) / steps for i in range(steps)] + [1.0] * 8)
    assert history["kl_weight"] == pytest.approx([0.5, 1.0, 1.0, 1.0])


def test_without_warmup_the_weight_is_one():
    model, guide = pair()
    rec = Recorder()
    fit(model, guide, X, epochs=1, batch_size=24, callbacks=[rec], **FAST)
    assert rec.kl_weights == [1.0] * 4


def test_clip_norm_bounds_the_gradient_norm():
    model, guide = pair()
    rec = Recorder()
    fit(model, guide, X, epochs=2, batch_size=16, lr=0.01, clip_norm=0.5, callbacks=[rec], **FAST)
    assert max(rec.grad_norms) > 0.5  # clipping was needed (the norm before clipping)
    assert max(rec.clipped_norms) <= 0.5 * (1 + 1e-5)
    model, guide = pair()
    rec = Recorder()
    fit(model, guide, X, epochs=1, batch_size=16, lr=0.01, callbacks=[rec], **FAST)
    assert rec.clipped_norms == pytest.approx(rec.grad_norms, rel=1e-5)


class Poison(Callback):
    """Makes the model produce NaN at the given (0-based) steps."""

    def __init__(self, steps):
        self.steps = set(steps)

    def on_step_start(self, state):
        state.model.poison = state.step in self.steps


def test_on_nan_stop_raises_naming_epoch_and_step():
    model, guide = pair()
    with pytest.raises(TrainingError) as err:
        fit(model, guide, X, epochs=3, batch_size=24, callbacks=[Poison({5})], **FAST)
    message = str(err.value)
    assert "epoch 2, step 6" in message and "NaN" in message
    assert "on_nan" in message and "\n" not in message


def test_on_nan_skip_skips_the_step():
    model, guide = pair()
    history = fit(
        model, guide, X, epochs=2, batch_size=24, on_nan="skip", callbacks=[Poison({1, 2})], **FAST
    )
    assert history.records[0]["skipped_steps"] == 2
    assert "skipped_steps" not in history.records[1]
    assert all(math.isfinite(v) for v in history["train_loss"])
    for p in [*model.parameters(), *guide.parameters()]:
        assert torch.isfinite(p).all()


def test_skipped_steps_do_not_change_the_weights():
    model, guide = pair()
    before = weights(model, guide)
    fit(
        model,
        guide,
        X,
        epochs=1,
        batch_size=24,
        on_nan="skip",
        callbacks=[Poison({0, 1, 2, 3})],
        **FAST,
    )
    assert same_weights(before, weights(model, guide))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizers(optimizer):
    model, guide = pair()
    history = fit(model, guide, X, epochs=3, batch_size=24, lr=0.01, optimizer=optimizer, **FAST)
    assert history["train_loss"][-1] < history["train_loss"][0]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; allowed: adam, adamw, sgd"),
        ({"on_nan": "ignore"}, "on_nan must be 'stop' or 'skip'"),
        ({"epochs": 0}, "train.epochs must be at least 1"),
        ({"batch_size": 0}, "train.batch_size must be at least 1"),
        ({"objective": "nope"}, "unknown objective kind 'nope'"),
        ({"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_options_are_spec_errors(kwargs, pattern):
    model, guide = pair()
    options = {**FAST, **kwargs}
    with pytest.raises(SpecError, match=pattern) as err:
        fit(model, guide, X, **options)
    assert "\n" not in str(err.value)


def test_no_trainable_parameters_is_refused():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([D]).to_event(1), obs=x)

    with pytest.raises(SpecError, match="no trainable parameters"):
        fit(_Wrap(model), _Wrap(lambda x: None), X, **FAST)


class _Wrap(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


# --------------------------------------------------------------------------------------
# reproducibility, files, resume


def test_same_seed_same_history_bit_for_bit():
    runs = []
    for _ in range(2):
        model, guide = pair(seed=3)
        h = fit(
            model, guide, X, valid_data=X_VALID, epochs=2, batch_size=24, lr=0.01, seed=7, **FAST
        )
        runs.append((records(h), weights(model, guide)))
    assert runs[0][0] == runs[1][0]
    assert same_weights(runs[0][1], runs[1][1])
    model, guide = pair(seed=3)
    other = fit(
        model, guide, X, valid_data=X_VALID, epochs=2, batch_size=24, lr=0.01, seed=8, **FAST
    )
    assert records(other) != runs[0][0]


def test_out_dir_writes_metrics_and_checkpoints(tmp_path):
    model, guide = pair()
    history = fit(
        model,
        guide,
        X,
        valid_data=X_VALID,
        epochs=3,
        batch_size=24,
        lr=0.02,
        out_dir=tmp_path,
        **FAST,
    )
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert [json.loads(line) for line in lines] == history.records
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    best_epoch = 1 + max(range(3), key=lambda i: history["valid_elbo"][i])
    assert last["epoch"] == 3 and last["step"] == 12
    assert best["epoch"] == best_epoch == last["best_epoch"]
    assert last["best_value"] == max(history["valid_elbo"])
    assert last["history"] == history.records
    for key in ("model", "guide", "optimizer", "rng", "shuffle_generator"):
        assert key in last
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in last["model"].items())
    assert not list(tmp_path.glob("**/*.tmp"))


def _noise(x, generator):
    return x + 0.1 * torch.randn(x.shape, generator=generator)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    options = dict(
        valid_data=X_VALID, batch_size=24, lr=0.02, seed=5, train_transform=_noise, **FAST
    )
    model, guide = pair(seed=1)
    full = fit(model, guide, X, epochs=4, out_dir=tmp_path / "full", **options)
    expected = weights(model, guide)

    model, guide = pair(seed=1)
    fit(model, guide, X, epochs=2, out_dir=tmp_path / "part", **options)
    model, guide = pair(seed=99)  # fresh modules: everything comes from the checkpoint
    resumed = fit(
        model,
        guide,
        X,
        epochs=4,
        out_dir=tmp_path / "part",
        resume_from=tmp_path / "part" / "checkpoints" / "last.pt",
        **options,
    )
    assert same_weights(weights(model, guide), expected)
    assert records(resumed) == records(full)
    assert len((tmp_path / "part" / "metrics.jsonl").read_text().splitlines()) == 4


def test_the_global_param_store_is_neither_read_nor_written():
    model, guide = pair(seed=2)
    clean = fit(model, guide, X, epochs=2, batch_size=24, lr=0.02, **FAST)
    clean_weights = weights(model, guide)

    sentinels = {"W": torch.full((D, K), 7.0), "linear.weight": torch.full((K, D), -3.0)}
    for name, value in sentinels.items():
        pyro.param(name, value.clone())
    model, guide = pair(seed=2)
    polluted = fit(model, guide, X, epochs=2, batch_size=24, lr=0.02, **FAST)
    assert records(polluted) == records(clean)
    assert same_weights(weights(model, guide), clean_weights)
    store = pyro.get_param_store()
    assert set(store.keys()) == set(sentinels)
    for name, value in sentinels.items():
        assert torch.equal(pyro.param(name).detach(), value)


# --------------------------------------------------------------------------------------
# data


def test_a_dataset_works():
    model, guide = pair()
    data = torch.utils.data.TensorDataset(ppca_data(200))
    history = fit(model, guide, data, epochs=6, batch_size=50, lr=0.05, **FAST)
    assert history["step"] == [4, 8, 12, 16, 20, 24]
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_a_tuple_of_tensors_is_passed_as_arguments():
    class Conditional(PyroModule):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x, y):
            with pyro.plate("data", x.shape[0]):
                pyro.sample(
                    "x",
                    dist.Normal(self.w * y[:, None], 1.0).expand([x.shape[0], D]).to_event(1),
                    obs=x,
                )

    y = torch.randn(96)
    x = 2.0 * y[:, None] + 0.1 * torch.randn(96, D)
    model = Conditional()
    fit(model, _Wrap2(), (x, y), epochs=30, batch_size=32, lr=0.1, **FAST)
    assert float(model.w.detach()) == pytest.approx(2.0, abs=0.2)


class _Wrap2(nn.Module):
    def forward(self, x, y):
        return None


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ([1.0, 2.0], "must be tensors, a Dataset or an iterable of batches"),
        (torch.zeros(0, D), "is empty"),
        ((torch.zeros(5, D), torch.zeros(4)), "share their first"),
        (torch.tensor(1.0), "share their first"),
    ],
)
def test_data_of_the_wrong_form_is_a_data_error(data, pattern):
    model, guide = pair()
    with pytest.raises(DataError, match=pattern) as err:
        fit(model, guide, data, epochs=1, **FAST)
    assert "\n" not in str(err.value)


class Counts(PyroModule):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(K, D))

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(K), 1.0).to_event(1))
            pyro.sample("x", dist.Poisson((z @ self.w).exp()).to_event(1), obs=x)


def test_data_outside_the_likelihoods_support_is_a_data_error():
    torch.manual_seed(0)
    counts = torch.poisson(torch.full((20, D), 2.0))
    counts[3, 1] = 0.5
    with pytest.raises(DataError, match=r"fail on a training batch of shape \(20, 3\)") as err:
        fit(Counts(), Encoder(), counts, epochs=1, batch_size=20, **FAST)
    assert "\n" not in str(err.value)
    fit(Counts(), Encoder(), counts.round(), epochs=1, batch_size=20, **FAST)


def _nan_data():
    bad = X[:20].clone()
    bad[3, 1] = float("nan")
    return bad


@pytest.mark.parametrize(
    "make", [lambda: torch.randn(20, D + 2), _nan_data], ids=["wrong-width", "nan"]
)
def test_data_the_guide_cannot_take_is_a_data_error(make):
    model, guide = pair()
    with pytest.raises(DataError) as err:
        fit(model, guide, make(), epochs=1, batch_size=20, **FAST)
    assert "fail on a training batch of shape (20, " in str(err.value)
    assert "\n" not in str(err.value)


def test_valid_data_must_be_tensors():
    model, guide = pair()
    with pytest.raises(DataError, match="validation data"):
        fit(model, guide, X, valid_data=[1, 2], epochs=1, **FAST)


def test_the_metrics_log_is_never_written_through_a_link(tmp_path):
    """fit(out_dir=...) through the Python API refuses a metrics.jsonl that is a link and
    leaves the file it points to as it was."""
    from ppvae.errors import RunDirError

    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").symlink_to(target)
    model, guide = pair()
    with pytest.raises(RunDirError, match="is a symbolic link"):
        fit(model, guide, X, epochs=1, batch_size=48, out_dir=tmp_path / "run", **FAST)
    assert target.read_text() == "keep me"
