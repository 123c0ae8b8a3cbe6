"""M2 (Kingma et al. 2014): the enumerated and explicit sums over y agree with an exact
reference, gradients reach every parameter, the classification term sits on labelled
points only, spec checks, inputs, and the M1+M2 stack."""

from __future__ import annotations

import math
import re

import pyro
import pyro.poutine as poutine
import pytest
import torch

from ppvae.errors import DataError, PpvaeError, SpecError
from ppvae.infer.objectives import build_objective
from ppvae.models import MODELS
from ppvae.models.m2 import M2Config, build_m2
from ppvae.spec import parse_spec

D, C, LATENT, HIDDEN = 6, 3, 2, (8,)
X = (torch.arange(5 * D).reshape(5, D) % 3 == 0).float()
Y = torch.tensor([0, -1, 2, -1, 1])  # labelled and unlabelled points in one batch


def _pair(sum_y: str, aux_scale: float = 0.7, **kwargs):
    torch.manual_seed(0)
    return build_m2(D, C, LATENT, HIDDEN, "tanh", sum_y=sum_y, aux_scale=aux_scale, **kwargs)


@pytest.fixture
def no_noise(monkeypatch):
    """Every reparameterized draw z = mu + sigma * eps with eps = 0: deterministic z."""
    monkeypatch.setattr(torch, "randn", lambda *shape, **kw: torch.zeros(*shape, **kw))


@torch.no_grad()
def _reference_loss(model, guide, x, y) -> float:
    """-(sum over labelled points of L(x, y) + alpha' log q(y|x) + sum over unlabelled
    points of sum_c q(c|x) L(x, c) + H[q(y|x)]), per class by hand, z at q's mean."""
    log_q = torch.log_softmax(guide.classifier(x), -1)
    per_class = []
    for c in range(C):
        onehot = torch.nn.functional.one_hot(torch.full((len(x),), c), C).float()
        q = guide.encoder(x, onehot)
        z = q.mean
        log_px = model.likelihood(model.decoder(torch.cat([z, onehot], -1))).log_prob(x)
        per_class.append(log_px + model.prior().log_prob(z) - q.log_prob(z) - math.log(C))
    elbo = torch.stack(per_class, -1)  # (B, C)
    total = 0.0
    for i in range(len(x)):
        if y[i] >= 0:
            total += float(elbo[i, y[i]] + model.aux_scale * log_q[i, y[i]])
        else:
            q = log_q[i].exp()
            total += float((q * elbo[i]).sum() - (q * log_q[i]).sum())
    return -total


def test_enumerated_and_explicit_sums_equal_the_exact_reference(no_noise):
    model_e, guide_e = _pair("enumerate")
    model_x, guide_x = _pair("explicit")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model_e.state_dict().values(), model_x.state_dict().values(), strict=True)
    )
    enumerated = float(build_objective("enum_elbo")(model_e, guide_e, X, Y).detach())
    explicit = float(build_objective("elbo")(model_x, guide_x, X, Y).detach())
    iwae = float(build_objective("iwae")(model_x, guide_x, X, Y).detach())  # K equal draws
    reference = _reference_loss(model_x, guide_x, X, Y)
    assert enumerated == pytest.approx(reference, rel=1e-5)
    assert explicit == pytest.approx(reference, rel=1e-5)
    assert iwae == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize(
    ("sum_y", "objective"),
    [("enumerate", "enum_elbo"), ("explicit", "elbo"), ("explicit", "iwae")],
)
def test_gradients_reach_every_parameter(sum_y, objective):
    model, guide = _pair(sum_y)
    loss = build_objective(objective)(model, guide, X, Y)
    assert torch.isfinite(loss)
    loss.backward()
    params = dict(model.named_parameters()) | {f"guide.{k}": v for k, v in guide.named_parameters()}
    for name, p in params.items():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_unlabelled_points_train_the_classifier():
    """With no labelled point (no classification term) q(y|x) still gets a gradient."""
    model, guide = _pair("explicit", aux_scale=0.0)
    build_objective("elbo")(model, guide, X, torch.full((5,), -1)).backward()
    assert all(bool(p.grad.abs().sum() > 0) for p in guide.classifier.parameters())


@pytest.mark.parametrize(("sum_y", "objective"), [("enumerate", "enum_elbo"), ("explicit", "elbo")])
def test_classification_term_is_on_labelled_points_only(sum_y, objective):
    losses = {}
    for alpha in (0.0, 2.5):
        model, guide = _pair(sum_y, aux_scale=alpha)
        pyro.set_rng_seed(3)
        losses[alpha] = float(build_objective(objective)(model, guide, X, Y).detach())
    with torch.no_grad():
        log_q = torch.log_softmax(guide.classifier(X), -1)
    labelled = Y >= 0
    expected = -2.5 * float(log_q[labelled, Y[labelled]].sum())
    assert losses[2.5] - losses[0.0] == pytest.approx(expected, rel=1e-4)
    trace = poutine.trace(model).get_trace(X, Y)
    aux = trace.nodes["aux"]["fn"].log_prob(trace.nodes["aux"]["value"])
    assert bool((aux[~labelled] == 0).all()) and bool((aux[labelled] < 0).all())


def test_iwae_bound_rises_above_the_elbo():
    """The importance-weighted bound with the explicit sum is at least the ELBO
    (in expectation; 10 draws each)."""
    model, guide = _pair("explicit")
    from ppvae.infer.bounds import IwaeConfig

    elbo, iwae = build_objective("elbo"), build_objective(IwaeConfig(num_particles=20))
    with torch.no_grad():
        e = sum(float(elbo(model, guide, X, Y)) for _ in range(10)) / 10
        w = sum(float(iwae(model, guide, X, Y)) for _ in range(10)) / 10
    assert w < e


def test_predictions_samples_and_reconstructions():
    model, guide = _pair("enumerate")
    probs = guide.predict_proba(X)
    assert probs.shape == (5, C)
    assert torch.allclose(probs.sum(-1), torch.ones(5))
    assert torch.equal(model.predict_proba(X), probs)
    assert model.generate(7).shape == (7, D)
    grid = model.generate_by_class(4)
    assert grid.shape == (4 * C, D)
    assert model.reconstruct(X, guide).shape == (5, D)
    assert model.reconstruct(X, guide, Y).shape == (5, D)  # -1: the classifier's guess


@pytest.mark.parametrize("guide_kind", ["full_normal", "iaf"])
def test_other_guide_kinds_take_the_label_as_input(guide_kind):
    from ppvae.guides import GUIDES

    for sum_y, objective in (("enumerate", "enum_elbo"), ("explicit", "elbo")):
        model, guide = _pair(sum_y, guide=GUIDES.get(guide_kind)())
        loss = build_objective(objective)(model, guide, X, Y)
        assert torch.isfinite(loss)


def _spec(**model):
    return {"model": {"kind": "m2", "latent_dim": 2, "hidden": [8], **model}}


def _one_sentence(err: Exception) -> str:
    text = str(err)
    assert isinstance(err, PpvaeError) and "\n" not in text
    assert not re.search(r"[.;:!?]\s+[A-Z]", text), text
    return text


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (_spec(), 'needs objective.kind = "enum_elbo"'),
        ({**_spec(), "objective": {"kind": "iwae"}}, 'needs objective.kind = "enum_elbo"'),
        (
            {**_spec(sum_y="explicit"), "data": {"kind": "binarized_mnist"}},
            "has no labels",
        ),
        (
            {**_spec(sum_y="explicit"), "prior": {"kind": "vamp"}},
            "model.kind = 'm2' does not have (its guide is q(z|x,y))",
        ),
        ({**_spec(sum_y="explicit", m1_run="runs/x")}, 'likelihood.kind = "gaussian"'),
        (_spec(sum_y="explicit", num_labels=0), "num_labels must be at least 1"),
        (_spec(sum_y="both"), "model.sum_y must be one of"),
        (_spec(sum_y="explicit", aux_weight=-1.0), "aux_weight"),
        (_spec(sum_y="explicit", labelled_repeat=0), "labelled_repeat must be at least 1"),
    ],
)
def test_spec_checks_refuse_bad_combinations(raw, words):
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    assert words in _one_sentence(info.value)


def test_explicit_sum_works_with_plain_objectives():
    for kind in ("elbo", "meanfield_elbo", "iwae", "renyi", "enum_elbo"):
        spec = parse_spec({**_spec(sum_y="explicit"), "objective": {"kind": kind}})
        assert spec.model.sum_y == "explicit"


def test_inputs_label_the_training_subset_only_and_scale_the_classification_term():
    from ppvae.run import build, model_inputs, train_inputs

    spec = parse_spec(
        {
            **_spec(num_labels=23, label_seed=1, aux_weight=0.2),
            "data": {"binarize": "static"},
            "objective": {"kind": "enum_elbo"},
        }
    )
    data, model, guide = build(spec)
    x, y = train_inputs(spec, data)
    assert torch.equal(x, data.train.x)
    labelled = y >= 0
    assert int(labelled.sum()) == 23
    assert torch.equal(y[labelled], data.train.y[labelled])
    for split in (data.train, data.valid, data.test):  # evaluation inputs: no labels
        assert bool((model_inputs(spec, split)[1] == -1).all())
    assert model.aux_scale == pytest.approx(0.2 * len(data.train) / 23)
    assert MODELS.get("m2") is M2Config


def test_labelled_repeat_visits_the_labelled_points_r_times_and_keeps_alpha():
    from ppvae.run import build, model_inputs, train_inputs

    raw = {
        **_spec(num_labels=20, label_seed=3, aux_weight=0.1),
        "data": {"binarize": "static"},
        "objective": {"kind": "enum_elbo"},
    }
    data, once, _ = build(parse_spec(raw))
    x1, y1 = train_inputs(parse_spec(raw), data)
    spec = parse_spec({**raw, "model": {**raw["model"], "labelled_repeat": 4}})
    data, model, _ = build(spec)
    x, y = train_inputs(spec, data)
    n = len(data.train)
    assert x.shape == (n + 3 * 20, x1.shape[1]) and y.shape == (n + 3 * 20,)
    assert torch.equal(x[:n], x1) and torch.equal(y[:n], y1)  # the split itself, unchanged
    labelled = y1 >= 0
    # the extra rows: the labelled points, with their labels, three more times
    extra_x, extra_y = x[n:].view(3, 20, -1), y[n:].view(3, 20)
    for copy in range(3):
        assert torch.equal(extra_x[copy], x1[labelled]) and torch.equal(extra_y[copy], y1[labelled])
    assert torch.equal(torch.bincount(y[y >= 0]), 4 * torch.bincount(y1[labelled]))
    # alpha keeps its meaning: the classification weight per visit is divided by r
    assert model.aux_scale == pytest.approx(once.aux_scale / 4)
    assert model.aux_scale == pytest.approx(0.1 * n / (20 * 4))
    for split in (data.valid, data.test):  # the other splits are untouched and unlabelled
        xs, ys = model_inputs(spec, split)
        assert len(xs) == len(split) and bool((ys == -1).all())


def test_data_without_labels_is_refused_on_load(tmp_path):
    import numpy as np

    path = tmp_path / "nolabels.npz"
    np.savez(path, x=np.random.default_rng(0).random((40, 4)))
    spec = parse_spec(
        {
            **_spec(sum_y="explicit"),
            "data": {"kind": "npz", "path": str(path)},
            "likelihood": {"kind": "gaussian"},
        }
    )
    from ppvae.run import build

    with pytest.raises(DataError) as info:
        build(spec)
    assert "has no labels" in _one_sentence(info.value)


def test_m1_m2_stack_on_a_trained_vae(tmp_path):
    from ppvae.run import load_run, train_spec

    vae = parse_spec(
        {
            "data": {"binarize": "dynamic", "limit": 300},
            "model": {"kind": "vae", "latent_dim": 4, "hidden": [16]},
            "train": {"epochs": 1, "progress": False},
        }
    )
    vae_run, _ = train_spec(vae, tmp_path / "vae")
    m2 = parse_spec(
        {
            "data": {"binarize": "dynamic", "limit": 300},
            **_spec(sum_y="explicit", num_labels=20, m1_run=str(tmp_path / "vae")),
            "likelihood": {"kind": "gaussian", "learn": "global"},
            "train": {"epochs": 1, "progress": False},
        }
    )
    run, history = train_spec(m2, tmp_path / "m2")
    assert math.isfinite(history["train_loss"][-1])
    features = vae_run.guide.posterior(run.data.test.x[:5]).mean
    assert torch.allclose(run.model.features(run.data.test.x[:5]), features)
    m1_params = list(run.model.features.parameters())
    assert m1_params and not any(p.requires_grad for p in m1_params)
    assert run.model.generate(3).shape == (3, 64)  # decoded back to images by the VAE
    loaded = load_run(tmp_path / "m2")
    x = run.data.test.x[:8]
    assert torch.allclose(loaded.guide.predict_proba(x), run.guide.predict_proba(x))
