"""Checkpoints: the explicit training state, written atomically and loaded safely.

A checkpoint is a dictionary of tensors and plain Python values (module weights,
optimizer state, random number generator states, epoch, step, history, the resolved spec
and its digest). It is written to a temporary file in the same folder, flushed, synced
and renamed over the target, so a killed process leaves either the previous checkpoint or
the new one, never half of one. It is read with ``torch.load(weights_only=True)``: a
checkpoint cannot run code.

Example:
    >>> import tempfile, torch
    >>> path = tempfile.mkdtemp() + "/last.pt"
    >>> save_checkpoint({"step": 3, "w": torch.ones(2)}, path)
    >>> load_checkpoint(path)["step"]
    3
"""

from __future__ import annotations

import os
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppvae.errors import CheckpointError

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, flush, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    A missing, truncated or corrupted file is a :class:`CheckpointError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    _check_crc(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        reason = str(err).splitlines()[0][:120] if str(err) else err.__class__.__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupted and cannot be loaded ({reason})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold a ppvae training state")
    return state


def _check_crc(path: Path) -> None:
    """Verify the CRC-32 of every entry of a zip-format checkpoint.

    ``torch.load`` does not check them, so flipped bytes inside a tensor would otherwise
    load silently as wrong weights. Files that are not zip archives (truncated ones among
    them) are left to ``torch.load``'s own checks.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size:  # saved without CRC-32s: nothing to check
                    continue
                with archive.open(info) as f:
                    while f.read(1 << 22):
                        pass
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        reason = str(err).splitlines()[0][:120] if str(err) else err.__class__.__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupted and cannot be loaded ({reason})"
        ) from None


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (CPU and CUDA)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    has_gauss, gauss = state["numpy_gauss"]
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], has_gauss, gauss)
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
