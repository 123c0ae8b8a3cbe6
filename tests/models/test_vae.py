"""The VAE pair, and the invariants every prior x guide x likelihood x objective must hold.

The invariant list iterates the registries as they are, so a new prior, guide, likelihood
or objective is tested here as soon as it is registered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools

import pyro.poutine as poutine
import pytest
import torch

from ppvae.checkpoint import load_checkpoint, save_checkpoint
from ppvae.context import BuildContext
from ppvae.data import DataBundle, Split
from ppvae.errors import DataError, SpecError
from ppvae.guides import GUIDES
from ppvae.infer.isolation import isolated_param_store
from ppvae.infer.objectives import OBJECTIVES
from ppvae.likelihoods import LIKELIHOODS
from ppvae.models import MODELS
from ppvae.models.vae import VAE, VAEConfig, VAEGuide, build_vae
from ppvae.priors import PRIORS
from ppvae.run import model_context
from ppvae.spec import parse_spec

with contextlib.suppress(ImportError):  # registers iwae, renyi, pyro_renyi where present
    import ppvae.infer.bounds  # noqa: F401

DATA_DIM, LATENT_DIM, HIDDEN = 6, 2, (8,)
AXES = {"prior": PRIORS, "guide": GUIDES, "likelihood": LIKELIHOODS, "objective": OBJECTIVES}


def _valid(combo: dict[str, str]) -> bool:
    """Whether the spec layer accepts these kinds together (some pairs are refused on
    purpose, e.g. the VampPrior with a guide whose density cannot be evaluated anywhere)."""
    try:
        parse_spec({axis: {"kind": kind} for axis, kind in combo.items()})
    except SpecError:
        return False
    return True


def _all_pairs() -> list[dict[str, str]]:
    """A covering set of valid combinations in which every valid pair of kinds of two axes
    appears at least once (greedy all-pairs: the full product grows multiplicatively)."""
    names = list(AXES)
    combos = [
        dict(zip(names, kinds, strict=True))
        for kinds in itertools.product(*(list(AXES[a]) for a in names))
    ]
    combos = [c for c in combos if _valid(c)]

    def pairs(c):
        return {((a, c[a]), (b, c[b])) for a, b in itertools.combinations(names, 2)}

    uncovered = set().union(*(pairs(c) for c in combos)) if combos else set()
    chosen = []
    while uncovered:
        best = max(combos, key=lambda c: len(pairs(c) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


COMBOS = [pytest.param(c, id="-".join(c.values())) for c in _all_pairs()]


def test_every_kind_of_every_axis_is_in_the_invariant_list():
    for axis, registry in AXES.items():
        tested = {c.values[0][axis] for c in COMBOS}
        assert tested == set(registry), axis


def _small(cls):
    """``cls`` with its defaults, except large counts (``num_*`` > 10, e.g. the VampPrior's
    500 pseudo-inputs) cut to 5 to keep the list fast."""
    small = {
        f.name: 5
        for f in dataclasses.fields(cls)
        if f.name.startswith("num_") and isinstance(f.default, int) and f.default > 10
    }
    return cls(**small)


def _objective_config(kind):
    """The kind's defaults, with at most 2 particles to keep the list fast."""
    cls = OBJECTIVES.get(kind)
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    if fields.get("num_particles", 1) > 2:
        return cls(num_particles=2)
    return cls()


def _data_for(likelihood_cfg, n=4):
    """The richest small batch the likelihood accepts: real, 8-bit grey levels, counts or
    binary values."""
    g = torch.Generator().manual_seed(0)
    candidates = [
        torch.randn(n, DATA_DIM, generator=g),
        torch.randint(0, 256, (n, DATA_DIM), generator=g) / 255.0,
        torch.randint(0, 6, (n, DATA_DIM), generator=g).float(),
        torch.bernoulli(torch.full((n, DATA_DIM), 0.5), generator=g),
    ]
    for x in candidates:
        try:
            likelihood_cfg.check_data(x, binarized=False, where="test data")
        except DataError:
            continue
        return x
    pytest.skip(f"no test data fits likelihood {likelihood_cfg.kind}")


def _build(prior, guide, lik, seed):
    torch.manual_seed(seed)
    return build_vae(DATA_DIM, LATENT_DIM, HIDDEN, prior=prior, guide=guide, likelihood=lik)


def _loss_and_grads(objective, model, guide, x, seed):
    """The loss of a fresh objective (Pyro's ELBOs draw random numbers on their first call
    to guess the plate nesting), with gradients written into ``.grad``."""
    for p in [*model.parameters(), *guide.parameters()]:
        p.grad = None
    with isolated_param_store():
        torch.manual_seed(seed)
        return _objective_config(objective).build().loss_and_grads(model, guide, x)


@pytest.mark.filterwarnings("ignore:TraceEnum_ELBO found no sample sites")
@pytest.mark.parametrize("combo", COMBOS)
def test_invariants(combo, tmp_path):
    prior = _small(PRIORS.get(combo["prior"]))
    guide = _small(GUIDES.get(combo["guide"]))
    likelihood = LIKELIHOODS.get(combo["likelihood"])()
    objective = combo["objective"]
    x = _data_for(likelihood)
    model, guide_m = _build(prior, guide, likelihood, seed=0)

    # finite loss
    loss = _loss_and_grads(objective, model, guide_m, x, seed=1)
    assert loss.shape == ()
    assert torch.isfinite(loss), float(loss)

    # gradients reach every parameter of model and guide
    params = [*model.named_parameters(), *guide_m.named_parameters()]
    assert params
    for name, p in params:
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient at {name}"
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"

    # the checkpoint round trip (save, fresh build, load) reproduces the loss exactly
    path = tmp_path / "state.pt"
    save_checkpoint({"model": model.state_dict(), "guide": guide_m.state_dict()}, path)
    fresh_model, fresh_guide = _build(prior, guide, likelihood, seed=123)
    fresh_loss = _loss_and_grads(objective, fresh_model, fresh_guide, x, seed=1)
    assert not torch.equal(fresh_loss, loss)  # a different initialization
    state = load_checkpoint(path)
    fresh_model.load_state_dict(state["model"])
    fresh_guide.load_state_dict(state["guide"])
    assert torch.equal(_loss_and_grads(objective, fresh_model, fresh_guide, x, seed=1), loss)

    # sample shapes
    for n in (1, 7):
        samples = model.generate(n)
        assert samples.shape == (n, DATA_DIM)
        assert torch.isfinite(samples).all()
        assert not samples.requires_grad
    recon = model.reconstruct(x, guide_m)
    assert recon.shape == x.shape and torch.isfinite(recon).all()


# --------------------------------------------------------------------------------------
# the VAE pair itself


def test_trace_structure():
    model, guide = build_vae(DATA_DIM, LATENT_DIM, HIDDEN)
    x = torch.bernoulli(torch.full((5, DATA_DIM), 0.5))
    g_tr = poutine.trace(guide).get_trace(x)
    m_tr = poutine.trace(poutine.replay(model, trace=g_tr)).get_trace(x)
    z, obs = m_tr.nodes["z"], m_tr.nodes["x"]
    assert [f.name for f in z["cond_indep_stack"]] == ["data"]
    assert [f.name for f in obs["cond_indep_stack"]] == ["data"]
    assert z["fn"].batch_shape == (5,) and z["fn"].event_shape == (LATENT_DIM,)
    assert obs["is_observed"] and torch.equal(obs["value"], x)
    assert obs["fn"].batch_shape == (5,) and obs["fn"].event_shape == (DATA_DIM,)
    assert torch.equal(g_tr.nodes["z"]["value"], z["value"])
    assert g_tr.nodes["z"]["fn"].has_rsample


def test_model_returns_latents_and_guide_samples_them():
    model, guide = build_vae(DATA_DIM, LATENT_DIM, HIDDEN)
    x = torch.zeros(3, DATA_DIM)
    assert model(x).shape == (3, LATENT_DIM)
    assert guide(x).shape == (3, LATENT_DIM)


def test_generate_and_reconstruct_are_likelihood_means():
    model, guide = build_vae(DATA_DIM, LATENT_DIM, HIDDEN)
    torch.manual_seed(5)
    samples = model.generate(4)
    torch.manual_seed(5)
    z = model.prior().sample((4,))
    torch.testing.assert_close(samples, torch.sigmoid(model.decoder(z)).detach())
    assert ((samples >= 0) & (samples <= 1)).all()
    x = torch.bernoulli(torch.full((3, DATA_DIM), 0.5))
    recon = model.reconstruct(x, guide)
    expected = torch.sigmoid(model.decoder(guide.posterior(x).loc)).detach()
    torch.testing.assert_close(recon, expected)


def test_decoder_mirrors_the_encoder():
    model, guide = build_vae(10, 3, (16, 8), activation="tanh")
    enc = [(m.in_features, m.out_features) for m in guide.posterior.net if hasattr(m, "weight")]
    dec = [(m.in_features, m.out_features) for m in model.decoder if hasattr(m, "weight")]
    assert enc == [(10, 16), (16, 8), (8, 6)]
    assert dec == [(3, 8), (8, 16), (16, 10)]
    assert isinstance(model.decoder[1], torch.nn.Tanh)


def test_build_vae_accepts_config_objects():
    lik = LIKELIHOODS.get("gaussian")(learn="pixel")
    model, _guide = build_vae(4, 2, (5,), likelihood=lik)
    assert model.likelihood.raw_scale.shape == (4,)


def test_build_vae_refuses_unknown_kinds():
    with pytest.raises(SpecError, match="unknown prior kind 'nope'"):
        build_vae(4, 2, prior="nope")


def _bundle(x):
    part = Split(x)
    return DataBundle("toy", part, part, part, image_shape=(2, 3))


def test_vae_config_builds_from_spec_and_data():
    assert MODELS.get("vae") is VAEConfig
    spec = parse_spec({"model": {"latent_dim": 3, "hidden": [7, 5]}})
    model, guide = spec.model.build(
        model_context(spec, _bundle(torch.bernoulli(torch.full((10, 6), 0.5))))
    )
    assert isinstance(model, VAE) and isinstance(guide, VAEGuide)
    assert model.decoder[0].in_features == 3 and model.decoder[-1].out_features == 6
    assert guide.posterior.net[0].in_features == 6 and guide.posterior.net[-1].out_features == 6


def test_vae_config_checks_the_data_against_the_likelihood():
    spec = parse_spec({"likelihood": {"kind": "bernoulli"}})
    with pytest.raises(DataError, match="binarize") as err:
        spec.model.build(model_context(spec, _bundle(torch.rand(10, 6))))
    assert "\n" not in str(err.value)
    assert "toy" in str(err.value)


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"latent_dim": 0}, "model.latent_dim must be at least 1, got 0"),
        ({"latent_dim": -3}, "model.latent_dim"),
        ({"hidden": (8, 0)}, r"model.hidden sizes must be at least 1, got \[8, 0\]"),
        ({"activation": "nope"}, "unknown activation 'nope'"),
    ],
)
def test_vae_config_validation(options, pattern):
    with pytest.raises(SpecError, match=pattern) as err:
        VAEConfig(**options)
    assert "\n" not in str(err.value)


def test_build_context_defaults():
    ctx = BuildContext(data_dim=4, latent_dim=2)
    assert ctx.hidden == (256,) and ctx.activation == "relu"
    assert ctx.num_classes is None and ctx.image_shape is None
