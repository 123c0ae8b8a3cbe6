"""Name -> class registries, one per swappable axis of a model spec.

A registry maps a ``kind`` string (the ``kind`` key of a TOML section) to a frozen
dataclass that holds that implementation's options and knows how to build it. Adding a
prior is adding one class and one ``@PRIORS.register("name")`` line.

Example:
    >>> from dataclasses import dataclass
    >>> from ppvae.registry import Registry
    >>> COLOURS = Registry("colour")
    >>> @COLOURS.register("red")
    ... @dataclass(frozen=True)
    ... class Red:
    ...     shade: float = 1.0
    >>> COLOURS.get("red", where="[colour]")
    <class 'ppvae.registry.Red'>
    >>> sorted(COLOURS)
    ['red']
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ppvae.errors import SpecError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from ``kind`` names to option classes for one axis (prior, guide, ...)."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator that registers ``cls`` under ``name``."""

        def decorator(cls: type[T]) -> type[T]:
            old = self._entries.get(name)
            if old is not None and old.__qualname__ != cls.__qualname__:
                raise ValueError(f"{self.axis} kind {name!r} is registered twice")
            self._entries[name] = cls
            cls.kind = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def get(self, name: object, *, where: str | None = None) -> type[T]:
        """The class registered as ``name``; an unknown name is a :class:`SpecError`."""
        if not isinstance(name, str) or name not in self._entries:
            place = f" in {where}" if where else ""
            raise SpecError(
                f"unknown {self.axis} kind {name!r}{place}; "
                f"allowed: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """The registered kinds, sorted."""
        return sorted(self._entries)
