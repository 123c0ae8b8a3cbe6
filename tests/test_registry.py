"""Registries: name -> options class, unknown names refused with the allowed list."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ppvae.data import DATASETS
from ppvae.errors import SpecError
from ppvae.guides import GUIDES
from ppvae.infer.objectives import OBJECTIVES
from ppvae.likelihoods import LIKELIHOODS
from ppvae.models import MODELS
from ppvae.priors import PRIORS
from ppvae.registry import Registry


def _fresh():
    reg = Registry("colour")

    @reg.register("red")
    @dataclass(frozen=True)
    class Red:
        shade: float = 1.0

    @reg.register("blue")
    @dataclass(frozen=True)
    class Blue:
        pass

    return reg, Red, Blue


def test_register_get_and_container_protocol():
    reg, Red, Blue = _fresh()
    assert reg.get("red") is Red
    assert reg.get("blue", where="[colour]") is Blue
    assert Red.kind == "red" and Blue.kind == "blue"
    assert "red" in reg and "green" not in reg and 3 not in reg
    assert list(reg) == ["red", "blue"]  # registration order
    assert reg.names() == ["blue", "red"]  # sorted
    assert len(reg) == 2


@pytest.mark.parametrize("name", ["green", "", "RED", 3, None, ["red"]])
def test_unknown_name_lists_the_allowed_ones(name):
    reg, *_ = _fresh()
    with pytest.raises(SpecError) as err:
        reg.get(name, where="[colour]")
    message = str(err.value)
    assert message == f"unknown colour kind {name!r} in [colour]; allowed: blue, red"
    assert "\n" not in message


def test_unknown_name_without_where():
    reg, *_ = _fresh()
    with pytest.raises(SpecError, match=r"^unknown colour kind 'x'; allowed: blue, red$"):
        reg.get("x")


def test_registering_another_class_under_a_taken_name_fails():
    reg, *_ = _fresh()

    @dataclass(frozen=True)
    class Other:
        pass

    with pytest.raises(ValueError, match="registered twice"):
        reg.register("red")(Other)
    assert reg.get("red").__name__ == "Red"


def test_re_registering_the_same_class_is_allowed():
    """Reloading a module registers a new class object with the same qualified name."""
    reg, Red, _ = _fresh()

    @dataclass(frozen=True)
    class Red:  # same __qualname__ as the first one  # noqa: F811
        shade: float = 2.0

    Red.__qualname__ = reg.get("red").__qualname__
    reg.register("red")(Red)
    assert reg.get("red") is Red
    assert len(reg) == 2


@pytest.mark.parametrize(
    "registry", [DATASETS, MODELS, PRIORS, GUIDES, LIKELIHOODS, OBJECTIVES], ids=lambda r: r.axis
)
def test_shipped_registries_hold_frozen_dataclasses_with_kind(registry):
    import dataclasses

    assert len(registry) >= 1
    for name in registry:
        cls = registry.get(name)
        assert cls.kind == name
        assert dataclasses.is_dataclass(cls)
        assert cls.__dataclass_params__.frozen, f"{registry.axis} {name} is not frozen"
