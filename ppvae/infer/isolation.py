"""Run Pyro programs without reading or writing Pyro's global parameter store.

``PyroModule`` parameters (and ``pyro.param`` sites) are registered in Pyro's global
parameter store by name, and a module whose parameter name is already there silently
takes the stored tensor instead of its own. ppvae runs every training and evaluation
call inside :func:`isolated_param_store`: a fresh, empty store that is discarded on exit,
so the global store neither leaks into nor receives anything from ppvae.

Example:
    >>> import pyro, torch
    >>> with isolated_param_store():
    ...     _ = pyro.param("w", torch.ones(1))
    >>> "w" in pyro.get_param_store()
    False
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyro

__all__ = ["isolated_param_store"]


@contextlib.contextmanager
def isolated_param_store() -> Iterator[None]:
    """A fresh empty parameter store for the duration of the block."""
    with pyro.get_param_store().scope():
        yield
