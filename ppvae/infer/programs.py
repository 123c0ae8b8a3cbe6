r"""What a Pyro program is made of: its networks and its parameter sites.

Pyro users write programs in several ways: a ``PyroModule`` (or ``nn.Module``) whose
``forward`` is the program, a bound method of an object holding networks registered with
``pyro.module``, or a plain function that closes over (or refers to a global) network.
ppvae has to find those networks to move them to a device and to switch them between
training and evaluation mode (dropout, batch norm), and has to tell a program's own
``pyro.param`` sites from the weights of its networks when it isolates Pyro's parameter
store. :func:`modules_of` finds the networks the way a reader of the code would:

* the program itself when it is an ``nn.Module``;
* the object of a bound method, when it is an ``nn.Module``, else the ``nn.Module``\ s
  among its attributes (and in lists, tuples and dicts held by them);
* the ``nn.Module``\ s a function closes over, refers to by a global name, or receives
  through ``functools.partial``;
* and, recursively, those of Pyro handlers wrapping a program (``poutine.scale(fn)``).

Example:
    >>> import torch, pyro
    >>> decoder = torch.nn.Linear(2, 3)
    >>> def model(x):
    ...     pyro.module("decoder", decoder)
    >>> class VAE:
    ...     def __init__(self):
    ...         self.encoder = torch.nn.Linear(3, 2)
    ...     def guide(self, x):
    ...         pyro.module("encoder", self.encoder)
    >>> [type(m).__name__ for m in modules_of(model)], len(modules_of(VAE().guide))
    (['Linear'], 1)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["modules_of", "to_device", "train_mode", "eval_mode"]


def _from_function(fn: Any, seen: set[int], depth: int) -> Iterator[nn.Module]:
    code = getattr(fn, "__code__", None)
    for cell in getattr(fn, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            yield from _find(cell.cell_contents, seen, depth + 1)
    if code is not None:
        glob = getattr(fn, "__globals__", {})
        for name in code.co_names:
            if name in glob:
                yield from _find(glob[name], seen, depth + 1)
    for default in getattr(fn, "__defaults__", None) or ():
        yield from _find(default, seen, depth + 1)


def _held(value: Any) -> list[nn.Module]:
    """The networks an attribute holds: itself, or those in a list, tuple or dict."""
    if isinstance(value, nn.Module):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, nn.Module)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, nn.Module)]
    return []


def _find(obj: Any, seen: set[int], depth: int = 0) -> Iterator[nn.Module]:
    if id(obj) in seen or depth > 3:
        return
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        yield obj
        return
    if isinstance(obj, functools.partial):
        for part in (obj.func, *obj.args, *obj.keywords.values()):
            yield from _find(part, seen, depth)
        return
    owner = getattr(obj, "__self__", None)
    if owner is not None and callable(obj):  # a bound method
        if isinstance(owner, nn.Module):
            yield owner
        else:
            for value in list(vars(owner).values()) if hasattr(owner, "__dict__") else ():
                for item in _held(value):
                    yield from _find(item, seen, depth + 1)
            yield from _from_function(getattr(obj, "__func__", None), seen, depth)
        return
    if callable(obj) and hasattr(obj, "__code__"):
        yield from _from_function(obj, seen, depth)


def modules_of(*programs: Callable) -> list[nn.Module]:
    """The top-level ``nn.Module``\\ s that ``programs`` use (see the module docstring),
    each once."""
    seen: set[int] = set()
    found: list[nn.Module] = []
    for program in programs:
        for module in _find(program, seen):
            if all(module is not m for m in found):
                found.append(module)
    return found


def to_device(device: torch.device, *programs: Callable) -> None:
    """Move the networks of ``programs`` to ``device``."""
    for module in modules_of(*programs):
        module.to(device)


@contextlib.contextmanager
def eval_mode(*programs: Callable) -> Iterator[None]:
    """Put the networks of ``programs`` (and their submodules) in evaluation mode for the
    block, then restore every submodule's own mode."""
    saved = [(m, m.training) for module in modules_of(*programs) for m in module.modules()]
    try:
        for module, _ in saved:
            module.training = False
        yield
    finally:
        for module, mode in saved:
            module.training = mode


def train_mode(*programs: Callable) -> None:
    """Put the networks of ``programs`` in training mode."""
    for module in modules_of(*programs):
        module.train()
