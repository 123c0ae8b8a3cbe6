"""Weights in the safetensors format: what a run's export (``ppvae export``) holds.

A safetensors file is a JSON header (names, dtypes, shapes, offsets and a string-to-string
``__metadata__``) followed by the raw tensor buffers: reading one runs no code, and any
safetensors reader (Python, Rust, JavaScript) opens it. ppvae stores a model/guide pair
in one file, every model weight under ``model.<name>`` and every guide weight under
``guide.<name>`` (the keys of their ``state_dict``), and puts the spec the weights were
trained with into the metadata.

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> model, guide = nn.Linear(2, 3), nn.Linear(3, 2)
    >>> path = tempfile.mkdtemp() + "/model.safetensors"
    >>> with open(path, "wb") as f:
    ...     _ = f.write(weights_bytes({"model": model, "guide": guide}, {"note": "hi"}))
    >>> tensors, metadata = read_weights(path)
    >>> sorted(tensors), metadata["note"]
    (['guide.bias', 'guide.weight', 'model.bias', 'model.weight'], 'hi')
    >>> load_into({"model": model, "guide": guide}, tensors, path)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ppvae.errors import CheckpointError

__all__ = ["WEIGHTS_FILE", "weights_bytes", "read_weights", "load_into"]

#: The weights file of an export.
WEIGHTS_FILE = "model.safetensors"


def weights_bytes(modules: Mapping[str, nn.Module], metadata: Mapping[str, str]) -> bytes:
    """The safetensors bytes of the ``state_dict`` of every module in ``modules``, each
    weight named ``<module name>.<key>``, with the string ``metadata``.

    Each tensor is copied (on the CPU, contiguous): weights that several modules share (a
    prior built on the guide's encoder) are stored once per module that holds them."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(
                    f"the {name}'s state {key!r} is a {type(value).__name__}, not a tensor: "
                    "only tensors can be stored in a safetensors file"
                )
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
    return save(tensors, metadata=dict(metadata))


def read_weights(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (on ``device``) and the metadata of the safetensors file ``path``; a
    file that is not one is a :class:`~ppvae.errors.CheckpointError`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device=str(torch.device(device))) as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, ValueError, OSError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors file ({reason}); export the run again"
        ) from None
    return tensors, metadata


def load_into(
    modules: Mapping[str, nn.Module], tensors: Mapping[str, torch.Tensor], where: Any
) -> None:
    """Load ``tensors`` (named as :func:`weights_bytes` names them) into ``modules``,
    refusing in one sentence any weight too many, too few or of another shape."""
    names = set(modules)
    stray = sorted(k for k in tensors if k.split(".", 1)[0] not in names or "." not in k)
    if stray:
        raise CheckpointError(
            f"{str(where)!r} does not match the model of spec.toml: it holds weight "
            f"{stray[0]!r}, which belongs to no module ({', '.join(sorted(names))})"
        )
    states = {}
    for name, module in modules.items():
        state = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")}
        own = module.state_dict()
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or extra:
            which = f"lacks {name}.{missing[0]}" if missing else f"has {name}.{extra[0]} too many"
            raise CheckpointError(
                f"{str(where)!r} does not match the {name} of spec.toml (it {which}; "
                f"{len(missing)} missing, {len(extra)} unknown)"
            )
        for key, value in own.items():
            if state[key].shape != value.shape:
                raise CheckpointError(
                    f"{str(where)!r} does not match the {name} of spec.toml (weight "
                    f"{name}.{key} has shape {tuple(state[key].shape)}, the {name} needs "
                    f"{tuple(value.shape)})"
                )
        states[name] = state
    for name, module in modules.items():
        module.load_state_dict(states[name])
