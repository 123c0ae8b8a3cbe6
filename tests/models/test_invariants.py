"""The same invariants for every registered model kind (parametrized over :data:`MODELS`,
so a new kind is covered when it is registered): a finite loss, gradients reaching every
trainable parameter, an exact checkpoint round trip, the shapes of each optional ability,
and the model-kind contract (unused sections refused, flags read instead of kind strings).

``SMALL`` only shrinks the networks; a kind missing from it runs with its defaults.
"""

from __future__ import annotations

import ast
import inspect
import re

import pyro
import pytest
import torch

import ppvae.models
from ppvae.checkpoint import load_checkpoint, save_checkpoint
from ppvae.errors import PpvaeError, SpecError
from ppvae.infer.objectives import OBJECTIVES, build_objective
from ppvae.models import MODELS
from ppvae.models.abilities import (
    AmortizedPosterior,
    Classifies,
    Clusters,
    Generates,
    GeneratesByClass,
    LayeredPosterior,
    Reconstructs,
)
from ppvae.models.base import COMPONENT_SECTIONS, ModelConfig, ModelContext
from ppvae.run import model_context
from ppvae.spec import SECTIONS, objective_capabilities, parse_spec

KINDS = MODELS.names()

#: Small networks per kind (sizes only: no option here changes what is tested).
SMALL = {
    "vae": {"latent_dim": 2, "hidden": [8]},
    "hvae": {"latent_dims": [3, 2], "hidden": [8], "hidden2": [6]},
    "cvae": {"latent_dim": 2, "hidden": [8]},
    "mixture": {"num_components": 3, "latent_dim": 2, "hidden": [8]},
    "classifier": {"hidden": [8]},
    "m2": {"latent_dim": 2, "hidden": [8], "num_labels": 10},
}
#: A non-default kind of each component section (with its other options at default).
OTHER = {"network": "conv", "prior": "mixture", "guide": "iaf", "likelihood": "gaussian"}
DATA = {"kind": "digits", "binarize": "static", "limit": 48}
N = 12  # points per batch


def _enumerating_objective() -> str:
    return next(
        k for k in OBJECTIVES.names() if objective_capabilities(OBJECTIVES.get(k)()).enumerates
    )


def _spec(kind: str, **sections):
    """A small spec of ``kind``; without an objective, an enumerating one where the kind
    needs it (read from its flag)."""
    raw = {"model": {"kind": kind, **SMALL.get(kind, {})}, "data": DATA, **sections}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in raw["model"].items()}
    options.pop("kind")
    if "objective" not in sections and MODELS.get(kind)(**options).needs_enumeration:
        raw["objective"] = {"kind": _enumerating_objective()}
    return parse_spec(raw)


def _build(spec, seed: int = 0):
    from ppvae.data import load_data

    data = load_data(spec.data)
    pyro.set_rng_seed(seed)
    model, guide = spec.model.build(model_context(spec, data))
    return data, model, guide


def _batch(spec, data) -> tuple[torch.Tensor, ...]:
    """``N`` training points, half of them labelled where the inputs hold labels."""
    inputs = spec.model.train_inputs(data)
    index = range(len(inputs[0]))
    labelled = [i for i in index if len(inputs) < 2 or int(inputs[1][i]) >= 0][: N // 2]
    rest = [i for i in index if i not in labelled][: N - len(labelled)]
    pick = torch.tensor(sorted(labelled + rest))
    return tuple(t[pick] for t in inputs)


def _loss(spec, model, guide, batch, seed: int = 1) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    return build_objective(spec.objective)(model, guide, *batch)


def _params(model, guide):
    named = [(f"model.{n}", p) for n, p in model.named_parameters()]
    named += [(f"guide.{n}", p) for n, p in guide.named_parameters()]
    seen, out = set(), []
    for name, p in named:  # shared modules (M2's classifier) count once
        if id(p) not in seen and p.requires_grad:
            seen.add(id(p))
            out.append((name, p))
    return out


def test_every_kind_is_a_model_config_with_a_small_size():
    assert set(KINDS) >= {"vae", "hvae", "cvae", "mixture", "density", "classifier", "m2"}
    for kind in KINDS:
        cls = MODELS.get(kind)
        assert issubclass(cls, ModelConfig) and cls.kind == kind
        assert cls.uses <= set(COMPONENT_SECTIONS)
        params = inspect.signature(cls.build).parameters
        assert list(params)[1:] == ["ctx"], kind  # build(ctx), not build(spec, data)


@pytest.mark.parametrize("kind", KINDS)
def test_loss_is_finite_and_gradients_reach_every_parameter(kind):
    spec = _spec(kind)
    data, model, guide = _build(spec)
    batch = _batch(spec, data)
    loss = _loss(spec, model, guide, batch)
    assert loss.shape == () and bool(torch.isfinite(loss))
    loss.backward()
    params = _params(model, guide)
    assert params, kind
    for name, p in params:
        assert p.grad is not None, f"{kind}: no gradient reaches {name}"
        assert bool(torch.isfinite(p.grad).all()), f"{kind}: {name}"
        assert float(p.grad.abs().sum()) > 0, f"{kind}: zero gradient at {name}"


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip_reproduces_the_loss_exactly(kind, tmp_path):
    spec = _spec(kind)
    data, model, guide = _build(spec, seed=0)
    batch = _batch(spec, data)
    expected = _loss(spec, model, guide, batch).detach()
    path = tmp_path / "state.pt"
    save_checkpoint({"model": model.state_dict(), "guide": guide.state_dict()}, path)

    _data, model2, guide2 = _build(spec, seed=123)
    with torch.no_grad():  # other weights everywhere (some kinds start from zeros)
        for _, p in _params(model2, guide2):
            p.add_(0.5)
    assert not torch.equal(_loss(spec, model2, guide2, batch).detach(), expected)
    state = load_checkpoint(path)
    model2.load_state_dict(state["model"])
    guide2.load_state_dict(state["guide"])
    for (name, a), (_, b) in zip(_params(model, guide), _params(model2, guide2), strict=True):
        assert torch.equal(a, b), f"{kind}: {name}"
    assert torch.equal(_loss(spec, model2, guide2, batch).detach(), expected)


@pytest.mark.parametrize("kind", KINDS)
def test_abilities_have_their_shapes(kind):
    spec = _spec(kind)
    data, model, guide = _build(spec)
    x, *context = spec.model.inputs(data.test)
    x, context = x[:N], [t[:N] for t in context]
    d, c = data.dim, data.num_classes
    checked = 0
    with torch.no_grad():
        if isinstance(model, Generates):
            pyro.set_rng_seed(2)
            first = model.generate(5)
            assert first.shape == (5, d) and bool(torch.isfinite(first).all())
            pyro.set_rng_seed(2)
            assert torch.equal(model.generate(5), first)  # seeded
            checked += 1
        if isinstance(model, GeneratesByClass):
            assert model.num_classes == c
            assert model.generate(4, condition=c - 1).shape == (4, d)
            checked += 1
        if isinstance(model, Reconstructs):
            labels = [data.test.y[:N]] if context else []
            assert model.reconstruct(x, guide, *labels).shape == x.shape
            checked += 1
        for program in (model, guide):
            if isinstance(program, Classifies):
                probs = program.predict_proba(x)
                assert probs.shape == (N, c)
                assert torch.allclose(probs.sum(-1), torch.ones(N))
                checked += 1
        if isinstance(model, Clusters):
            probs = model.cluster_probs(x, guide)
            assert probs.shape == (N, spec.model.num_components)
            assert torch.allclose(probs.sum(-1), torch.ones(N))
            checked += 1
        if isinstance(guide, AmortizedPosterior):
            labels = [data.test.y[:N]] if context else []
            assert guide.posterior(x, *labels).batch_shape == (N,)
            checked += 1
        if isinstance(guide, LayeredPosterior):
            assert guide.q_z1(x).batch_shape == (N,)
            checked += 1
    assert checked >= 1, kind  # every zoo kind has at least one ability


def test_inputs_default_to_x_and_train_inputs_to_the_training_split():
    spec = _spec("vae")
    data, _model, _guide = _build(spec)
    (x,) = spec.model.inputs(data.valid)
    assert x is data.valid.x
    (x,) = spec.model.train_inputs(data)
    assert x is data.train.x


# --- the contract: unused sections, capability flags -----------------------------------


def _one_sentence(err: Exception) -> str:
    text = str(err)
    assert isinstance(err, PpvaeError) and "\n" not in text
    assert not re.search(r"[.;:!?]\s+[A-Z]", text), text
    return text


_UNUSED = [(k, s) for k in KINDS for s in COMPONENT_SECTIONS if s not in MODELS.get(k).uses]
_USED = [(k, s) for k in KINDS for s in COMPONENT_SECTIONS if s in MODELS.get(k).uses]


@pytest.mark.parametrize(("kind", "section"), _UNUSED)
def test_a_section_the_kind_does_not_use_is_refused_not_ignored(kind, section):
    """E.g. ``[guide] kind = "iaf"`` on hvae, cvae, mixture, density and classifier, which
    build their own guides (before, it was accepted and silently ignored)."""
    objective = {"objective": {"kind": _enumerating_objective()}}
    with pytest.raises(SpecError) as err:
        _spec(kind, **{section: {"kind": OTHER[section]}}, **objective)
    text = _one_sentence(err.value)
    assert f"model.kind = {kind!r} does not use the [{section}] section" in text
    assert f"{section}.kind = {OTHER[section]!r}" in text
    # the default, written out (as spec.toml of every run does), is accepted
    default = SECTIONS[section][1]
    _spec(kind, **{section: {"kind": default}}, **objective)


def test_non_default_options_of_an_unused_section_are_refused_too():
    with pytest.raises(SpecError, match=r"does not use the \[guide\] section"):
        parse_spec({"model": {"kind": "hvae"}, "guide": {"min_scale": 0.1}})


@pytest.mark.parametrize("kind", ["hvae", "cvae", "mixture", "density", "classifier"])
def test_five_kinds_refuse_an_iaf_guide(kind):
    assert "guide" not in MODELS.get(kind).uses
    with pytest.raises(SpecError, match=r"guide.kind = 'iaf'"):
        _spec(kind, guide={"kind": "iaf"}, objective={"kind": _enumerating_objective()})


def test_used_sections_take_other_kinds():
    for kind, section in _USED:
        cfg = _spec(kind, **{section: {"kind": OTHER[section]}})
        assert getattr(cfg, section).kind == OTHER[section]


@pytest.mark.parametrize("kind", [k for k in KINDS if MODELS.get(k).needs_labels])
def test_kinds_needing_labels_refuse_data_declaring_none(kind):
    with pytest.raises(SpecError) as err:
        parse_spec({"model": {"kind": kind}, "data": {"kind": "binarized_mnist"}})
    assert "has no labels" in _one_sentence(err.value)


@pytest.mark.parametrize(
    "kind",
    [k for k in KINDS if "prior" in MODELS.get(k).uses and not MODELS.get(k).offers_posterior],
)
def test_a_prior_needing_the_guide_posterior_is_refused_without_one(kind):
    model = {"kind": kind, **({"sum_y": "explicit"} if kind == "m2" else {})}
    with pytest.raises(SpecError) as err:
        parse_spec({"model": model, "prior": {"kind": "vamp"}})
    text = _one_sentence(err.value)
    assert f"model.kind = {kind!r} does not have" in text and '"standard_normal"' in text


def test_enumeration_is_a_flag_of_the_model_and_of_the_objective():
    for raw in (
        {"model": {"kind": "mixture"}},
        {"model": {"kind": "m2", "sum_y": "enumerate"}},
    ):
        with pytest.raises(SpecError) as err:
            parse_spec({**raw, "objective": {"kind": "iwae"}})
        assert 'needs objective.kind = "enum_elbo"' in _one_sentence(err.value)
        parse_spec({**raw, "objective": {"kind": "enum_elbo"}})
    assert not parse_spec({"model": {"kind": "m2", "sum_y": "explicit"}}).model.needs_enumeration


def test_m1_m2_reads_the_likelihood_support():
    raw = {"model": {"kind": "m2", "sum_y": "explicit", "m1_run": "runs/x"}}
    for kind in ("bernoulli", "continuous_bernoulli", "poisson"):
        with pytest.raises(SpecError, match="support"):
            parse_spec({**raw, "likelihood": {"kind": kind}})
    spec = parse_spec({**raw, "likelihood": {"kind": "gaussian"}})
    assert spec.likelihood.support == "real"
    assert spec.model.pretrained_runs() == {"m1": "runs/x"}


def test_model_context_is_frozen_and_small():
    spec = _spec("vae")
    from ppvae.data import load_data

    ctx = model_context(spec, load_data(spec.data))
    assert isinstance(ctx, ModelContext) and ctx.data_dim == 64 and ctx.binarized
    assert not hasattr(ctx, "train_config") and not hasattr(ctx, "spec")
    with pytest.raises(AttributeError):
        ctx.data_dim = 3  # type: ignore[misc]
    assert dict(ctx.pretrained) == {}


def test_model_modules_do_not_import_the_application_layer():
    """No cycle models -> spec/run: the layer above loads M1 runs and builds the context."""
    import pathlib

    folder = pathlib.Path(ppvae.models.__file__).parent
    for path in folder.rglob("*.py"):  # subpackages (m2) too
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module not in ("ppvae.run", "ppvae.spec", "ppvae.cli"), path.name
            if isinstance(node, ast.Import):
                assert all(a.name not in ("ppvae.run", "ppvae.spec") for a in node.names)


def test_m2_has_no_module_level_state():
    import ppvae.models.m2 as m2
    from ppvae.models.m2 import config, features, programs, weighting

    for module in (m2, config, features, programs, weighting):
        assert not any("weak" in type(v).__name__.lower() for v in vars(module).values())
