"""Run Pyro programs on a parameter store of their own, and keep trained values where a
Pyro user looks for them.

``PyroModule`` parameters (and ``pyro.param`` sites) are registered in Pyro's global
parameter store by name, and a module whose parameter name is already there silently
takes the stored tensor instead of its own: a stale value left by an earlier run in the
same process would replace a trained network's weights. ppvae runs training and
evaluation inside :func:`isolated_param_store`: a fresh store that holds, besides what the
block creates, only the global store's own ``pyro.param`` sites (with ``inherit=True``),
never a network's weights, which always come from the network itself. After training,
:func:`export_params` puts the trained ``pyro.param`` sites back into the global store,
where ``pyro.param(name)`` finds them, as after Pyro's own ``SVI``.

A store entry is a network's weight when its unconstrained tensor is an
``nn.Parameter`` (``PyroModule`` and ``pyro.module`` store the module's own parameters);
``pyro.param`` sites are plain tensors.

Example:
    >>> import pyro, torch
    >>> with isolated_param_store() as trained:
    ...     _ = pyro.param("w", torch.ones(1))
    >>> "w" in pyro.get_param_store()
    False
    >>> export_params(trained)
    >>> pyro.param("w").tolist()
    [1.0]
    >>> pyro.clear_param_store()
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pyro
from torch import nn

__all__ = ["isolated_param_store", "export_params", "own_params"]


def own_params(state: dict[str, Any]) -> dict[str, Any]:
    """The ``pyro.param`` sites of a store state (``get_state()`` form), without the
    networks' weights."""
    params = {n: t for n, t in state["params"].items() if not isinstance(t, nn.Parameter)}
    return {"params": params, "constraints": {n: state["constraints"][n] for n in params}}


@contextlib.contextmanager
def isolated_param_store(inherit: bool = False) -> Iterator[dict[str, Any]]:
    """A fresh parameter store for the block; with ``inherit`` it starts with the global
    store's ``pyro.param`` sites (the same tensors, so training them updates them there
    too). Yields the block's store state, filled in when the block ends."""
    start = own_params(pyro.get_param_store().get_state()) if inherit else None
    with pyro.get_param_store().scope(start) as state:
        yield state


def export_params(state: dict[str, Any]) -> None:
    """Put the ``pyro.param`` sites of ``state`` (a store state, e.g. the one
    :func:`isolated_param_store` yields) into the global store, replacing entries of the
    same names; networks' weights are left out."""
    store = pyro.get_param_store()
    own = own_params(state)
    for name in own["params"]:
        if name in store:
            del store[name]
    store.set_state(own)
