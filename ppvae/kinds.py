"""What a spec may say: every section, its kinds and their keys with defaults
(``ppvae kinds [SECTION]``), read from the registries and the options dataclasses.

Nothing here is a list of its own: a kind registered by a plug-in (``ppvae --import
my_priors kinds prior``) is listed like ppvae's own, with the keys of its dataclass and
the descriptions of its docstring's ``Attributes:`` section.

Example:
    >>> text = describe_kinds("prior")
    >>> text.splitlines()[0]
    '[prior] kinds: flow, mixture, standard_normal (default), vamp'
    >>> "num_components = " in text
    True
    >>> describe_kinds("nope")
    Traceback (most recent call last):
    ...
    ppvae.errors.SpecError: unknown section 'nope'; allowed: data, model, network, prior, guide, likelihood, objective, train, evaluate
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from typing import Any

from ppvae.errors import PpvaeError, SpecError
from ppvae.spec import SECTIONS, Spec

__all__ = ["describe_kinds", "section_names", "kind_options"]


def section_names() -> list[str]:
    """The sections of a spec, in the order of :class:`~ppvae.spec.Spec`."""
    return [f.name for f in dataclasses.fields(Spec)]


def _plain_class(section: str) -> type:
    """The options class of a section without kinds (``[train]``, ``[evaluate]``)."""
    (f,) = [f for f in dataclasses.fields(Spec) if f.name == section]
    return type(f.default_factory())


def kind_options(cls: type) -> list[tuple[str, Any, str]]:
    """``(key, default, description)`` of every option of an options dataclass; the
    default is :data:`dataclasses.MISSING` for a key without one."""
    docs = _attribute_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name == "kind":
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out.append((f.name, default, docs.get(f.name, "")))
    return out


def _attribute_docs(cls: type) -> dict[str, str]:
    """Key descriptions from the ``Attributes:`` sections of ``cls`` and its bases
    (Google style: ``name: text`` or ``a, b: text``, continued on deeper lines)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = inspect.cleandoc(klass.__dict__.get("__doc__") or "")
        lines = text.splitlines()
        try:
            start = lines.index("Attributes:") + 1
        except ValueError:
            continue
        names: list[str] = []
        for line in lines[start:]:
            if not line.strip():
                break
            if not line.startswith("    "):
                break
            match = re.match(r"^    ([A-Za-z_][\w, ]*):\s*(.*)$", line)
            if match and not line.startswith("     "):
                names = [n.strip() for n in match.group(1).split(",")]
                for name in names:
                    docs[name] = match.group(2).strip()
            else:
                for name in names:
                    docs[name] += " " + line.strip()
    return {k: _first_sentence(v) for k, v in docs.items()}


def _first_sentence(text: str) -> str:
    text = re.sub(r":(math|class|func|data|meth):`~?([^`]*)`", r"\2", text).replace("``", "")
    end = re.search(r"(?<!\bal)(?<!e\.g)(?<!i\.e)(?<!\bcf)\.(\s|$)", text)
    return text[: end.start() + 1] if end else text


def _summary(cls: type) -> str:
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    return _first_sentence(" ".join(doc.split("\n\n")[0].split())) if doc else ""


def _value(value: Any) -> str:
    """A default as TOML writes it."""
    if value is dataclasses.MISSING:
        return "(required)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _options_block(cls: type, indent: str) -> list[str]:
    options = kind_options(cls)
    if not options:
        return [f"{indent}(no keys)"]
    width = max(len(f"{k} = {_value(v)}") for k, v, _ in options)
    lines = []
    for key, default, doc in options:
        left = f"{key} = {_value(default)}"
        lines.append(f"{indent}{left.ljust(width)}  {doc}".rstrip())
    return lines


def describe_kinds(section: str | None = None) -> str:
    """The kinds of ``section`` (every section when None) with their keys and defaults,
    as text; an unknown section is a :class:`~ppvae.errors.SpecError`."""
    names = section_names()
    if section is not None and section not in names:
        raise SpecError(f"unknown section {section!r}; allowed: {', '.join(names)}")
    blocks = []
    for name in [section] if section is not None else names:
        lines = []
        if name in SECTIONS:
            registry, default = SECTIONS[name]
            kinds = registry.names()
            listed = ", ".join(f"{k} (default)" if k == default else k for k in kinds)
            lines.append(f"[{name}] kinds: {listed}")
            for kind in kinds:
                cls = registry.get(kind)
                lines.append(f'  kind = "{kind}"  {_summary(cls)}'.rstrip())
                lines.extend(_options_block(cls, "      "))
                try:
                    cls()
                except PpvaeError as err:  # a kind that needs a key set (npz's path)
                    lines.append(f"      needs: {' '.join(str(err).split())}")
                except TypeError:  # a key without a default
                    lines.append("      needs: the keys marked (required)")
        else:
            cls = _plain_class(name)
            lines.append(f"[{name}]  {_summary(cls)}".rstrip())
            lines.extend(_options_block(cls, "  "))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
