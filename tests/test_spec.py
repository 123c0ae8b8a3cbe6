"""Specs: TOML -> frozen dataclasses, typed --set overrides, refusals in one sentence."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import tomllib
import types
import typing
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppvae.errors import PpvaeError, SpecError
from ppvae.spec import (
    SECTIONS,
    EvaluateConfig,
    Spec,
    TrainConfig,
    apply_overrides,
    dump_spec,
    load_spec,
    parse_override,
    parse_spec,
)

with contextlib.suppress(ImportError):  # registers iwae, renyi, pyro_renyi where present
    import ppvae.infer.bounds  # noqa: F401

PLAIN = {"train": TrainConfig, "evaluate": EvaluateConfig}
ALL_SECTIONS = [*SECTIONS, *PLAIN]

#: Keys a kind cannot do without (parse_spec refuses the kind's defaults otherwise); the
#: images source's height and width are set too, as one of them cannot change alone.
REQUIRED = {
    ("data", "npz"): {"path": "some.npz"},
    ("data", "images"): {"path": "pics", "height": 8, "width": 8},
    ("network", "user"): {"encoder": "mypkg.nets:Encoder"},
}


def one_sentence(err: BaseException) -> str:
    message = str(err)
    assert isinstance(err, PpvaeError), type(err)
    assert message and "\n" not in message, message
    assert not re.search(r"\.\s+[A-Z]", message), message
    return message


def refused(raw, overrides=(), match=None) -> str:
    with pytest.raises(SpecError) as err:
        parse_spec(raw, overrides)
    message = one_sentence(err.value)
    if match is not None:
        assert re.search(match, message), message
    return message


# --------------------------------------------------------------------------------------
# round trips over every section, kind and key


def _section_cases():
    for section, (registry, _default) in SECTIONS.items():
        for kind in registry:
            yield section, kind
    for section in PLAIN:
        yield section, None


def _base(section, kind):
    """The smallest raw spec that picks ``kind`` for ``section`` and that parse_spec
    accepts: the kind alone, else with one other section's kind changed (e.g. a model
    that needs a particular objective)."""
    table = {"kind": kind} if kind is not None else {}
    table.update(REQUIRED.get((section, kind), {}))
    tries = [{}] + [
        {other: {"kind": k, **REQUIRED.get((other, k), {})}}
        for other, (registry, _default) in SECTIONS.items()
        if other != section
        for k in registry
    ]
    for extra in tries:
        raw = {section: dict(table), **{k: dict(v) for k, v in extra.items()}}
        try:
            parse_spec(raw)
        except SpecError:
            continue
        return raw
    pytest.fail(f"no companion kinds make [{section}] kind {kind!r} acceptable")


def _options_class(section, kind):
    return SECTIONS[section][0].get(kind) if kind is not None else PLAIN[section]


def _candidates(tp, default) -> list[Any]:
    """Values of type ``tp`` other than ``default`` to try for a key."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return [v for v in typing.get_args(tp) if v != default]
    if origin in (typing.Union, types.UnionType):
        return [
            v
            for arg in typing.get_args(tp)
            if arg is not type(None)
            for v in _candidates(arg, default)
        ]
    if origin is tuple:
        return [[3, 4], [5], [8, 8], [2, 3, 4], [0.5, 0.9]]  # sizes, or a pair of rates
    if origin is dict:
        return [{"width": 8, "sizes": [2, 3]}]  # keyword arguments of a user's class
    if tp is bool:
        return [not default]
    if tp is int:
        return [v for v in (default + 1, default + 2, 1, 2, 3, 7, 100) if v != default]
    if tp is float:
        base = default if isinstance(default, int | float) and default else 1.0  # "std": a str
        return [v for v in (base * 0.5, 0.25, 0.75, 1.5, 2.0, 0.001) if v != default]
    if tp is str:
        return [
            v
            for v in (
                "cpu",
                "tanh",
                "relu",
                "elu",
                "stl",
                "static",
                "dynamic",
                "valid",
                "x.npz",
                "pkg.nets:Net",
                "a",
            )
            if v != default
        ]
    return []


def _accepted(base, section, key, value):
    """The spec of ``base`` with ``section.key = value``, alone or with one other section's
    kind changed (some keys need a companion, e.g. a likelihood); None if refused."""
    tries = [{}] + [
        {other: {"kind": k, **REQUIRED.get((other, k), {})}}
        for other, (registry, _default) in SECTIONS.items()
        if other != section
        for k in registry
    ]
    for extra in tries:
        raw = {name: dict(table) for name, table in base.items()}
        raw.update({name: dict(table) for name, table in extra.items()})
        raw.setdefault(section, {})[key] = value
        try:
            return parse_spec(raw)
        except SpecError:
            continue
    return None


def _key_cases():
    for section, kind in _section_cases():
        cls = _options_class(section, kind)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                name = f"{section}.{kind}.{f.name}" if kind else f"{section}.{f.name}"
                yield pytest.param(section, kind, f.name, hints[f.name], id=name)


def _assert_round_trip(spec: Spec) -> None:
    as_dict = spec.to_dict()
    assert list(as_dict) == ALL_SECTIONS
    for section in SECTIONS:
        assert next(iter(as_dict[section])) == "kind"
    assert parse_spec(as_dict) == spec
    assert parse_spec(tomllib.loads(dump_spec(spec))) == spec
    assert parse_spec(as_dict).digest() == spec.digest()


@pytest.mark.parametrize(("section", "kind"), list(_section_cases()))
def test_every_kind_round_trips_with_its_defaults(section, kind):
    spec = parse_spec(_base(section, kind))
    cfg = getattr(spec, section)
    if kind is not None:
        assert cfg.kind == kind
        assert type(cfg) is SECTIONS[section][0].get(kind)
    _assert_round_trip(spec)


@pytest.mark.parametrize(("section", "kind", "key", "tp"), list(_key_cases()))
def test_every_key_round_trips_with_a_changed_value(section, kind, key, tp):
    base = _base(section, kind)
    default_value = getattr(getattr(parse_spec(base), section), key)
    for value in _candidates(tp, default_value):
        spec = _accepted(base, section, key, value)
        if spec is None:
            continue
        stored = getattr(getattr(spec, section), key)
        assert stored != default_value
        assert spec.to_dict()[section][key] == value
        _assert_round_trip(spec)
        return
    pytest.fail(f"no candidate value of {tp} for {section}.{key} is accepted")


def test_to_dict_holds_every_key_with_defaults():
    spec = parse_spec({})
    d = spec.to_dict()
    plain = {f.name: getattr(spec.train, f.name) for f in dataclasses.fields(TrainConfig)}
    assert d["train"] == {k: list(v) if isinstance(v, tuple) else v for k, v in plain.items()}
    assert d["evaluate"] == dataclasses.asdict(EvaluateConfig())
    for section, (_registry, default) in SECTIONS.items():
        assert d[section]["kind"] == default
    assert spec == Spec()


def test_tuples_become_lists_and_back():
    spec = parse_spec({"model": {"hidden": [32, 16]}})
    assert spec.model.hidden == (32, 16)
    assert spec.to_dict()["model"]["hidden"] == [32, 16]


def test_integers_are_accepted_for_floats():
    spec = parse_spec({"train": {"lr": 1}})
    assert spec.train.lr == 1.0 and isinstance(spec.train.lr, float)


def test_spec_is_frozen_and_replace_makes_a_copy():
    spec = parse_spec({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.train = TrainConfig()  # type: ignore[misc]
    other = spec.replace(train=TrainConfig(epochs=3))
    assert other.train.epochs == 3 and spec.train.epochs == 20


def test_digest_is_key_order_independent_and_value_sensitive():
    a = parse_spec({"model": {"latent_dim": 4, "hidden": [8]}, "train": {"lr": 0.01}})
    b = parse_spec({"train": {"lr": 0.01}, "model": {"hidden": [8], "latent_dim": 4}})
    c = parse_spec({"model": {"latent_dim": 5, "hidden": [8]}, "train": {"lr": 0.01}})
    assert a.digest() == b.digest() != c.digest()
    assert re.fullmatch(r"[0-9a-f]{64}", a.digest())


# --------------------------------------------------------------------------------------
# --set overrides


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.epochs=3", ("train", "epochs", 3)),
        (" train.epochs = 3 ", ("train", "epochs", 3)),
        ("train.lr=1e-2", ("train", "lr", 0.01)),
        ("model.hidden=[400, 400]", ("model", "hidden", [400, 400])),
        ("train.progress=false", ("train", "progress", False)),
        ("prior.kind=vamp", ("prior", "kind", "vamp")),
        ('train.device="cuda:1"', ("train", "device", "cuda:1")),
        ("data.path=/tmp/a=b", ("data", "path", "/tmp/a=b")),
        ("data.path=", ("data", "path", "")),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize(
    ("override", "section", "key", "value"),
    [
        ("train.epochs=7", "train", "epochs", 7),
        ("train.lr=0.05", "train", "lr", 0.05),
        ("train.lr=2", "train", "lr", 2.0),
        ("model.hidden=[32, 16]", "model", "hidden", (32, 16)),
        ("model.hidden=[]", "model", "hidden", ()),
        ("train.progress=false", "train", "progress", False),
        ("train.progress=true", "train", "progress", True),
        ("train.device=cpu", "train", "device", "cpu"),
        ('train.device="cpu"', "train", "device", "cpu"),
        ("train.optimizer=sgd", "train", "optimizer", "sgd"),
        ("evaluate.split=valid", "evaluate", "split", "valid"),
        ("data.binarize=static", "data", "binarize", "static"),
    ],
)
def test_overrides_are_typed(override, section, key, value):
    spec = parse_spec({}, [override])
    got = getattr(getattr(spec, section), key)
    assert got == value and type(got) is type(value)


def test_later_overrides_win_and_dicts_are_not_modified():
    raw = {"train": {"epochs": 5}}
    spec = parse_spec(raw, ["train.epochs=6", "train.epochs=8"])
    assert spec.train.epochs == 8
    assert raw == {"train": {"epochs": 5}}


@pytest.mark.parametrize(
    "text", ["train.epochs", "trainepochs=3", "train=3", ".epochs=3", "train.=3", "a.b.c=1", "=3"]
)
def test_bad_override_syntax(text):
    with pytest.raises(SpecError, match="section.key") as err:
        parse_override(text)
    one_sentence(err.value)
    refused({}, [text], match="section.key")


def test_changing_kind_by_override_drops_the_old_kinds_keys():
    raw = {"likelihood": {"kind": "gaussian", "scale": 0.5, "learn": "pixel"}}
    assert parse_spec(raw).likelihood.scale == 0.5
    spec = parse_spec(raw, ["likelihood.kind=bernoulli"])
    assert spec.likelihood.kind == "bernoulli"
    assert set(spec.to_dict()["likelihood"]) == {"kind"}
    # keys the new kind shares are kept
    spec = parse_spec(
        {"objective": {"kind": "elbo", "num_particles": 3}}, ["objective.kind=meanfield_elbo"]
    )
    assert spec.objective.kind == "meanfield_elbo" and spec.objective.num_particles == 3
    # keys set by overrides are always kept, and checked against the new kind
    refused(raw, ["likelihood.kind=bernoulli", "likelihood.scale=0.3"], match="unknown key 'scale'")
    out = apply_overrides(raw, ["likelihood.kind=bernoulli"])
    assert out == {"likelihood": {"kind": "bernoulli"}} and raw["likelihood"]["scale"] == 0.5


def test_kind_override_to_an_unknown_kind_is_refused():
    refused(
        {},
        ["prior.kind=nope"],
        match=r"unknown prior kind 'nope' in \[prior\]; allowed: .*standard_normal",
    )


# --------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize(
    ("raw", "overrides", "pattern"),
    [
        (
            {"trian": {}},
            (),
            r"unknown section 'trian'; allowed: data, model, network, prior, guide, likelihood, objective, train, evaluate",
        ),
        ({}, ["trian.epochs=3"], r"unknown section 'trian' in override .*; allowed: data, model"),
        (
            {"train": {"epoch": 3}},
            (),
            r"unknown key 'epoch' in \[train\]; allowed: .*batch_size.*epochs",
        ),
        ({}, ["train.epoch=3"], r"unknown key 'epoch' in \[train\]; allowed: .*epochs"),
        (
            {"model": {"latent": 3}},
            (),
            r"unknown key 'latent' in \[model\] \(kind 'vae'\); allowed: kind, .*latent_dim",
        ),
        (
            {"prior": {"kind": "nope"}},
            (),
            r"unknown prior kind 'nope' in \[prior\]; allowed: .*standard_normal",
        ),
        (
            {"guide": {"kind": 3}},
            (),
            r"unknown guide kind 3 in \[guide\]; allowed: .*diagonal_normal",
        ),
        ({"objective": {"kind": "nope"}}, (), r"unknown objective kind 'nope'.*allowed: .*elbo"),
        ({"likelihood": {"kind": "nope"}}, (), r"allowed: .*bernoulli.*gaussian"),
        ({"data": {"kind": "nope"}}, (), r"allowed: .*digits"),
        ({"model": {"kind": "nope"}}, (), r"allowed: .*vae"),
        ({"train": {"kind": "x"}}, (), r"\[train\] takes no kind key; allowed keys: .*epochs"),
        ({"train": 3}, (), r"\[train\] must be a table"),
        ({"train": [1, 2]}, (), r"\[train\] must be a table"),
        ({"model": 3}, ["model.latent_dim=2"], r"\[model\] must be a table"),
    ],
)
def test_unknown_sections_keys_and_kinds(raw, overrides, pattern):
    refused(raw, overrides, match=pattern)


def test_a_spec_must_be_a_table():
    refused([1, 2], match="table of sections")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ('train.epochs="x"', r"train.epochs must be an integer, got 'x'"),
        ("train.epochs=x", r"train.epochs must be an integer, got 'x'"),
        ("train.epochs=1.5", r"train.epochs must be an integer, got 1.5"),
        ("train.epochs=true", r"train.epochs must be an integer, got True"),
        ("train.epochs=[3]", r"train.epochs must be an integer"),
        ("train.lr=fast", r"train.lr must be a number, got 'fast'"),
        ("train.lr=true", r"train.lr must be a number"),
        ("train.progress=1", r"train.progress must be true or false, got 1"),
        ("train.progress=yes", r"train.progress must be true or false"),
        ("train.device=3", r"train.device must be a string, got 3"),
        ("train.device=gpu", r"train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("train.optimizer=rmsprop", r"train.optimizer must be one of 'adam', 'adamw', 'sgd'"),
        ("train.on_nan=true", r"train.on_nan must be one of 'stop', 'skip'"),
        ("model.hidden=32", r"model.hidden must be a list of integers, got 32"),
        ("model.hidden=[1.5]", r"model.hidden must be .*integer.*, got .*1.5"),
        ("model.hidden=[true]", r"model.hidden must be .*integer.*, got .*True"),
        ("model.latent_dim={a = 1}", r"model.latent_dim must be an integer"),
        ("evaluate.split=dev", r"evaluate.split must be one of 'train', 'valid', 'test'"),
        ("train.lr=1" + "0" * 400, r"train.lr must be a number"),
    ],
)
def test_wrong_types(override, pattern):
    refused({}, [override], match=pattern)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.epochs=0", r"train.epochs must be at least 1, got 0"),
        ("train.epochs=-2", r"train.epochs must be at least 1, got -2"),
        ("train.batch_size=0", r"train.batch_size must be at least 1"),
        ("train.lr=0", r"train.lr must be positive"),
        ("train.lr=-0.1", r"train.lr must be positive"),
        ("train.lr=nan", r"train.lr must be positive"),
        ("train.weight_decay=-1", r"train.weight_decay must be non-negative"),
        ("train.weight_decay=nan", r"train.weight_decay must be non-negative"),
        ("train.clip_norm=nan", r"train.clip_norm must be non-negative"),
        ("train.clip_norm=-1", r"train.clip_norm must be non-negative"),
        ("train.kl_warmup_epochs=-1", r"train.kl_warmup_epochs must be non-negative"),
        ("train.early_stopping=-1", r"train.early_stopping must be non-negative"),
        ("evaluate.num_samples=0", r"evaluate.num_samples must be at least 1"),
        ("evaluate.batch_size=-5", r"evaluate.batch_size must be at least 1"),
        ("model.latent_dim=0", r"model.latent_dim must be at least 1"),
        ("model.hidden=[16, 0]", r"model.hidden sizes must be at least 1"),
        ("objective.num_particles=0", r"objective.num_particles must be at least 1"),
        ("data.limit=-1", r"data.limit"),
        ("data.valid_fraction=0", r"data.valid_fraction must be in \(0, 1\)"),
        ("data.test_fraction=1.5", r"data.test_fraction must be in \(0, 1\)"),
        ("likelihood.kind=gaussian", None),  # fine on its own
    ],
)
def test_sizes_must_be_positive(override, pattern):
    if pattern is None:
        parse_spec({}, [override])
        return
    refused({}, [override], match=pattern)


def test_kl_weights_need_an_objective_with_latent_terms():
    """KL warm-up and beta weight the latent terms: the ELBOs and, with the reparameterized
    estimator, the IWAE/Renyi bounds (their importance weights carry the weighted terms)
    take them; enumeration, Pyro's RenyiELBO and the stl/dreg estimators refuse them."""
    takes = [("elbo", []), ("meanfield_elbo", []), ("iwae", []), ("renyi", [])]
    for kind, extra in takes:
        for setting in ("train.kl_warmup_epochs=3", "train.beta=4.0"):
            spec = parse_spec({}, [f"objective.kind={kind}", setting, *extra])
            assert spec.train.kl_warmup_epochs == 3 or spec.train.beta == 4.0
    refuses = [
        ("enum_elbo", []),
        ("pyro_renyi", []),
        ("iwae", ["objective.estimator=dreg"]),
        ("renyi", ["objective.estimator=stl"]),
    ]
    for kind, extra in refuses:
        for key, setting in (("kl_warmup_epochs", "3"), ("beta", "4.0")):
            message = refused({}, [f"objective.kind={kind}", f"train.{key}={setting}", *extra])
            assert f"train.{key}" in message and repr(kind) in message
        parse_spec({}, [f"objective.kind={kind}", "train.kl_warmup_epochs=0", *extra])


@pytest.mark.parametrize(
    "raw", [{"data": {"valid_fraction": 10**400}}, {"train": {"lr": -(10**400)}}]
)
def test_integers_beyond_the_float_range_are_refused(raw):
    refused(raw, match="must be a number")


# --------------------------------------------------------------------------------------
# files


def test_load_spec_reads_files_and_applies_overrides(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[model]\nlatent_dim = 3\nhidden = [8]\n[train]\nepochs = 4\n")
    spec = load_spec(path, ["train.epochs=2"])
    assert (spec.model.latent_dim, spec.model.hidden, spec.train.epochs) == (3, (8,), 2)
    path.write_text(dump_spec(spec))
    assert load_spec(path) == spec


def test_load_spec_refusals(tmp_path):
    with pytest.raises(SpecError, match="does not exist") as err:
        load_spec(tmp_path / "missing.toml")
    assert "missing.toml" in one_sentence(err.value)
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = ")
    with pytest.raises(SpecError, match="is not valid TOML") as err:
        load_spec(bad)
    assert "bad.toml" in one_sentence(err.value)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpecError, match="cannot be read") as err:
        load_spec(binary)
    one_sentence(err.value)
    with pytest.raises(SpecError, match="cannot be read") as err:
        load_spec(tmp_path)  # a folder
    one_sentence(err.value)
    deep = tmp_path / "deep.toml"
    deep.write_text("v = " + "[" * 5000)
    with pytest.raises(SpecError, match="is not valid TOML") as err:
        load_spec(deep)
    one_sentence(err.value)


# --------------------------------------------------------------------------------------
# fuzzing: only ppvae errors may escape

_KEYS = sorted(
    {"kind"}
    | {
        f.name
        for section, kind in _section_cases()
        for f in dataclasses.fields(_options_class(section, kind))
    }
)
_KINDS = sorted({k for registry, _ in SECTIONS.values() for k in registry})
_SCALARS = (
    st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.text(max_size=12)
    | st.sampled_from(
        _KINDS + ["auto", "cpu", "cuda:0", "static", "dynamic", "adam", "stop", "skip", "test"]
    )
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=2)
    ),
    max_leaves=4,
)
_SECTION_TABLES = st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), _VALUES, max_size=5)
_RAW = st.dictionaries(
    st.sampled_from(ALL_SECTIONS) | st.text(max_size=8),
    _SECTION_TABLES | _VALUES,
    max_size=5,
)
_OVERRIDES = st.lists(
    st.text(max_size=30)
    | st.builds(
        lambda s, k, v: f"{s}.{k}={v}",
        st.sampled_from(ALL_SECTIONS) | st.text(max_size=5),
        st.sampled_from(_KEYS) | st.text(max_size=5),
        st.text(max_size=20)
        | st.sampled_from(_KINDS)
        | st.integers().map(str)
        | st.just("[" * 3000),
    ),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_RAW)
def test_fuzz_parse_spec_raises_only_ppvae_errors(raw):
    try:
        spec = parse_spec(raw)
    except PpvaeError as err:
        one_sentence(err)
        return
    assert parse_spec(spec.to_dict()) == spec


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=_OVERRIDES)
def test_fuzz_overrides_raise_only_ppvae_errors(overrides):
    for text in overrides:
        try:
            section, key, _value = parse_override(text)
        except PpvaeError as err:
            one_sentence(err)
        else:
            assert f"{section}.{key}" == text.split("=", 1)[0].strip()
    try:
        parse_spec({}, overrides)
    except PpvaeError as err:
        one_sentence(err)
