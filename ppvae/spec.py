r"""Model specs: TOML files parsed once into frozen, validated dataclasses.

A spec has the sections ``[data]``, ``[model]``, ``[network]``, ``[prior]``, ``[guide]``,
``[likelihood]``, ``[objective]`` (each picks an implementation with ``kind`` and takes
that implementation's own keys beside it), ``[train]`` and ``[evaluate]``. A missing
section or ``kind`` takes its default. ``--set section.key=value`` overrides are parsed
as TOML values and checked against the same types; unknown sections, keys and kinds are
refused with the list of allowed ones.

Example:
    >>> spec = parse_spec({"model": {"latent_dim": 4}}, overrides=["train.epochs=2", "objective.num_particles=3"])
    >>> spec.model.latent_dim, spec.train.epochs, spec.objective.kind, spec.objective.num_particles
    (4, 2, 'elbo', 3)
    >>> parse_spec({"prior": {"kind": "nope"}})
    Traceback (most recent call last):
    ...
    ppvae.errors.SpecError: unknown prior kind 'nope' in [prior]; allowed: flow, mixture, standard_normal, vamp
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from ppvae.data import DATASETS, DataConfig
from ppvae.errors import SpecError
from ppvae.guides import GUIDES, GuideConfig
from ppvae.infer.config import TrainConfig
from ppvae.infer.objectives import OBJECTIVES, ObjectiveConfig
from ppvae.likelihoods import LIKELIHOODS, LikelihoodConfig
from ppvae.models import MODELS, ModelConfig
from ppvae.models.base import COMPONENT_SECTIONS
from ppvae.networks import NETWORKS, MLPNetwork, NetworkConfig
from ppvae.priors import PRIORS, PriorConfig
from ppvae.registry import Registry

__all__ = [
    "Spec",
    "TrainConfig",
    "EvaluateConfig",
    "load_spec",
    "parse_spec",
    "parse_override",
    "apply_overrides",
    "dump_spec",
    "SECTIONS",
    "ObjectiveCapabilities",
    "objective_capabilities",
]


@dataclass(frozen=True)
class EvaluateConfig:
    """The ``[evaluate]`` section: defaults of ``ppvae evaluate``.

    Attributes:
        split: ``train``, ``valid`` or ``test``.
        num_samples: importance samples per data point.
        batch_size: data points per batch.
    """

    split: Literal["train", "valid", "test"] = "test"
    num_samples: int = 1000
    batch_size: int = 256

    def __post_init__(self) -> None:
        for key in ("num_samples", "batch_size"):
            if getattr(self, key) < 1:
                raise SpecError(f"evaluate.{key} must be at least 1, got {getattr(self, key)}")


#: Swappable sections: name -> (registry, default kind).
SECTIONS: dict[str, tuple[Registry, str]] = {
    "data": (DATASETS, "digits"),
    "model": (MODELS, "vae"),
    "network": (NETWORKS, "mlp"),
    "prior": (PRIORS, "standard_normal"),
    "guide": (GUIDES, "diagonal_normal"),
    "likelihood": (LIKELIHOODS, "bernoulli"),
    "objective": (OBJECTIVES, "elbo"),
}
#: Plain sections: name -> options class.
_PLAIN: dict[str, type] = {"train": TrainConfig, "evaluate": EvaluateConfig}
_ORDER = [*SECTIONS, *_PLAIN]
#: ``[train]`` keys a resumed run may change (they do not alter its trajectory).
_RESUMABLE_TRAIN_KEYS = ("epochs", "progress")


@dataclass(frozen=True)
class Spec:
    """A resolved, validated spec. ``spec.to_dict()`` gives the TOML-ready form."""

    data: DataConfig = field(default_factory=lambda: DATASETS.get("digits")())
    model: ModelConfig = field(default_factory=lambda: MODELS.get("vae")())
    network: NetworkConfig = field(default_factory=MLPNetwork)
    prior: PriorConfig = field(default_factory=lambda: PRIORS.get("standard_normal")())
    guide: GuideConfig = field(default_factory=lambda: GUIDES.get("diagonal_normal")())
    likelihood: LikelihoodConfig = field(default_factory=lambda: LIKELIHOODS.get("bernoulli")())
    objective: ObjectiveConfig = field(default_factory=lambda: OBJECTIVES.get("elbo")())
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every section with every key (defaults included), ``kind`` first."""
        out: dict[str, dict[str, Any]] = {}
        for name in _ORDER:
            cfg = getattr(self, name)
            values = {k: _plain(v) for k, v in dataclasses.asdict(cfg).items()}
            out[name] = {"kind": cfg.kind, **values} if name in SECTIONS else values
        return out

    def digest(self) -> str:
        """SHA-256 of the resolved spec (key order independent), leaving out the keys
        that may change when a run is resumed (``train.epochs``, ``train.progress``)."""
        values = self.to_dict()
        if values["network"] == {"kind": "mlp"}:  # runs made before [network] existed
            del values["network"]
        values["train"] = {
            k: v for k, v in values["train"].items() if k not in _RESUMABLE_TRAIN_KEYS
        }
        text = json.dumps(values, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def replace(self, **sections: Any) -> Spec:
        """A copy with whole sections replaced."""
        return dataclasses.replace(self, **sections)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return list(value) if isinstance(value, tuple) else value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is dict:
        return "a table of keys"
    if typing.get_origin(tp) is tuple:
        (inner, *_rest) = typing.get_args(tp)
        return f"a list of {_type_name(inner).removeprefix('an ').removeprefix('a ')}s"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the field's type."""
    origin = typing.get_origin(tp)
    bad = SpecError(f"{where} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if isinstance(value, bool) or value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        for option in options:
            try:
                return _coerce(value, option, where)
            except SpecError:
                continue
        raise SpecError(
            f"{where} must be {' or '.join(_type_name(o) for o in options)}, got {value!r}"
        )
    if origin is dict:  # keyword arguments of a user's class: TOML values as they are
        if not isinstance(value, dict):
            raise bad
        _check_plain(value, where)
        return dict(value)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise bad
        return tuple(_coerce(v, inner, where) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        try:
            return float(value)
        except OverflowError:  # an integer beyond the range of floats
            raise bad from None
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported option type {tp!r} at {where}")  # a bug in a config class


def _check_plain(value: Any, where: str) -> None:
    """Refuse what a run folder could not store and compare: values other than strings,
    booleans, integers, finite numbers, and lists and tables of them (a TOML date, NaN)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(item, f"{where}.{key}")
    elif isinstance(value, list):
        for item in value:
            _check_plain(item, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{where} must be a finite number, got {value!r}")
    elif not isinstance(value, str | bool | int | float):
        raise SpecError(
            f"{where} must be a string, a boolean, a number, or a list or table of them, "
            f"got a {type(value).__name__} ({value!r})"
        )


def _build_section(name: str, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise SpecError(f"[{name}] must be a table of keys, got {values!r}")
    values = dict(values)
    if name in SECTIONS:
        registry, default = SECTIONS[name]
        kind = values.pop("kind", default)
        cls = registry.get(kind, where=f"[{name}]")
        label = f"[{name}] (kind {kind!r})"
    else:
        if "kind" in values:
            raise SpecError(
                f"[{name}] takes no kind key; allowed keys: {', '.join(_field_names(_PLAIN[name]))}"
            )
        cls = _PLAIN[name]
        label = f"[{name}]"
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            allowed = ", ".join((["kind"] if name in SECTIONS else []) + sorted(fields)) or "kind"
            raise SpecError(f"unknown key {key!r} in {label}; allowed: {allowed}")
        kwargs[key] = _coerce(value, hints[key], f"{name}.{key}")
    return cls(**kwargs)


def _field_names(cls: type) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(cls) if f.init)


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split ``section.key=value`` and parse the value as TOML (bare words are strings).

    >>> parse_override("train.epochs=3"), parse_override("prior.kind=vamp")
    (('train', 'epochs', 3), ('prior', 'kind', 'vamp'))
    >>> parse_override("model.hidden=[400, 400]")
    ('model', 'hidden', [400, 400])
    """
    if "=" not in text:
        raise SpecError(f"override {text!r} must look like section.key=value")
    target, raw = text.split("=", 1)
    parts = target.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise SpecError(f"override {text!r} must name section.key before '=', e.g. train.epochs=5")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):  # tomllib recurses on deep nesting
        value = raw
    return parts[0], parts[1], value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of the raw spec dictionary with ``section.key=value`` overrides applied.

    Changing a section's ``kind`` drops the keys the new kind does not take (they belonged
    to the old one); keys given explicitly by overrides are always kept and checked.
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    explicit: dict[str, set[str]] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in _ORDER:
            raise SpecError(
                f"unknown section {section!r} in override {text!r}; allowed: {', '.join(_ORDER)}"
            )
        table = out.setdefault(section, {})
        if not isinstance(table, dict):
            raise SpecError(f"[{section}] must be a table of keys, got {table!r}")
        table[key] = value
        explicit.setdefault(section, set()).add(key)
    for section, keys in explicit.items():
        if "kind" in keys and section in SECTIONS:
            registry, _default = SECTIONS[section]
            cls = registry.get(out[section]["kind"], where=f"[{section}]")
            accepted = {f.name for f in dataclasses.fields(cls)} | {"kind"}
            out[section] = {k: v for k, v in out[section].items() if k in accepted or k in keys}
    return out


def parse_spec(raw: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """A validated :class:`Spec` from a TOML-like dictionary and ``--set`` overrides."""
    if not isinstance(raw, dict):
        raise SpecError("a spec must be a table of sections")
    raw = apply_overrides(raw, overrides)
    unknown = [k for k in raw if k not in _ORDER]
    if unknown:
        raise SpecError(f"unknown section {unknown[0]!r}; allowed: {', '.join(_ORDER)}")
    sections = {name: _build_section(name, raw[name]) for name in _ORDER if name in raw}
    spec = Spec(**sections)
    _check_combination(spec)
    return spec


def _default(section: str) -> Any:
    registry, kind = SECTIONS[section]
    return registry.get(kind)()


def _kinds_where(section: str, flag: Callable[[Any], bool]) -> str:
    """The registered kinds of ``section`` whose default options have ``flag``, quoted."""
    registry, _default_kind = SECTIONS[section]
    names = []
    for name in registry.names():
        try:
            if flag(registry.get(name)()):
                names.append(f'"{name}"')
        except SpecError:  # a kind without defaults for every option (e.g. npz's path)
            continue
    return " or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]


@dataclass(frozen=True)
class ObjectiveCapabilities:
    """What the cross-section rules need to know of an objective.

    Attributes:
        enumerates: it sums discrete sites out by enumeration (a model needing that).
        supports_kl_warmup: its latent (KL) terms may be weighted (warm-up, beta).
        needs_guide_log_prob_anywhere: it evaluates the guide's density at draws it did
            not make (the ``stl`` and ``dreg`` gradient estimators re-evaluate it at
            detached samples), which planar and radial flows cannot.
    """

    enumerates: bool = False
    supports_kl_warmup: bool = False
    needs_guide_log_prob_anywhere: bool = False


def objective_capabilities(config: ObjectiveConfig) -> ObjectiveCapabilities:
    """The capabilities an ``[objective]`` config declares (see
    :class:`~ppvae.infer.objectives.ObjectiveConfig`)."""
    return ObjectiveCapabilities(
        bool(config.enumerates),
        bool(config.supports_kl_warmup),
        bool(config.needs_guide_log_prob_anywhere),
    )


def _check_combination(spec: Spec) -> None:
    """Refuse combinations of sections that cannot work together, from the flags the
    components declare (see :mod:`ppvae.models.base` for the model's)."""
    model, kind = spec.model, spec.model.kind
    objective = objective_capabilities(spec.objective)
    weighted = [
        key
        for key, on in (
            ("kl_warmup_epochs", spec.train.kl_warmup_epochs),
            ("beta", spec.train.beta != 1.0),
        )
        if on
    ]
    if weighted and not objective.supports_kl_warmup:
        raise SpecError(
            f"train.{weighted[0]} weights the latent (KL) terms, which objective.kind = "
            f"{spec.objective.kind!r} (with these options) does not have; use "
            f"{_kinds_where('objective', lambda c: objective_capabilities(c).supports_kl_warmup)} "
            f"or set train.{weighted[0]} to its default"
        )
    uses, why = model.used_sections()
    for section in COMPONENT_SECTIONS:
        config = getattr(spec, section)
        if section not in uses and config != _default(section):
            reason = (
                f"{why} and does not use the [{section}] section"
                if section in model.uses
                else f"model.kind = {kind!r} does not use the [{section}] section"
            )
            raise SpecError(
                f"{reason}, so {section}.kind = {config.kind!r} (with these options) would be "
                f"ignored; remove [{section}] or leave it at its default, kind = "
                f"{SECTIONS[section][1]!r} with default options"
            )
    if model.needs_labels and spec.data.has_labels is False:
        raise SpecError(
            f"model.kind = {kind!r} needs labelled data but data.kind = {spec.data.kind!r} has no "
            f"labels; use {_kinds_where('data', lambda c: c.has_labels is True)} or npz with labels"
        )
    if "prior" in uses and spec.prior.needs_posterior and not model.offers_posterior:
        raise SpecError(
            f"prior.kind = {spec.prior.kind!r} is built on an amortized guide q(z|x), which "
            f"model.kind = {kind!r} does not have (its guide is {model.guide_form}); use a prior "
            f"such as {_kinds_where('prior', lambda c: not c.needs_posterior)}"
        )
    if model.needs_enumeration and not objective.enumerates:
        raise SpecError(
            f"{model.needs_enumeration} needs objective.kind = "
            f"{_kinds_where('objective', lambda c: objective_capabilities(c).enumerates)} (an "
            f"objective that enumerates), not {spec.objective.kind!r}"
        )
    if objective.needs_guide_log_prob_anywhere and not spec.guide.log_prob_anywhere:
        raise SpecError(
            f"objective.estimator = {getattr(spec.objective, 'estimator', '?')!r} re-evaluates "
            f"the guide's density at detached samples, which guide.kind = {spec.guide.kind!r} "
            'cannot (it has no inverse); use objective.estimator = "reparam" or another guide'
        )
    model.check_spec(spec)


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Spec:
    """Read and validate a TOML spec file, applying ``section.key=value`` overrides."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"spec file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(
            f"spec file {str(path)!r} cannot be read ({err.__class__.__name__})"
        ) from None
    try:
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as err:
        raise SpecError(f"spec file {str(path)!r} is not valid TOML: {err}") from None
    return parse_spec(raw, overrides)


def dump_spec(spec: Spec) -> str:
    """The resolved spec as TOML text (every key, defaults included)."""
    return tomli_w.dumps(spec.to_dict())
