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

import contextlib
import errno
import os
import pickle
import random
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppvae.errors import CheckpointError

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "check_train_state",
    "rng_state",
    "set_rng_state",
]


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, flush, fsync, rename).

    A full disk or a folder that cannot be written is a :class:`CheckpointError` naming
    the file; the previous checkpoint is left as it was. A link at ``path`` is replaced,
    never followed, and a linked folder is refused.
    """
    path = Path(path)
    if path.parent.is_symlink():
        raise CheckpointError(
            f"checkpoint folder {str(path.parent)!r} is a symbolic link; ppvae never follows "
            "links inside a run folder"
        )
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        _discard(tmp)
        raise CheckpointError(_write_failure(path, err)) from None
    except BaseException:
        _discard(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _discard(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _write_failure(path: Path, err: Exception) -> str:
    """One sentence for a failed checkpoint write (torch's writer hides the errno of a
    full disk behind a RuntimeError, so the free space is looked at)."""
    code = err.errno if isinstance(err, OSError) else None
    if code is None:
        try:
            st = os.statvfs(path.parent)
            if st.f_bavail * st.f_frsize < (1 << 20):
                code = errno.ENOSPC
        except OSError:
            pass
    if code is None and isinstance(err, RuntimeError) and not os.access(path.parent, os.W_OK):
        code = errno.EACCES
    if code in (errno.ENOSPC, errno.EDQUOT):
        why = "no space left on device; free some space (the previous checkpoint is kept)"
    elif code == errno.EROFS:
        why = "the file system is read-only; copy the run to a writable folder"
    elif code in (errno.EACCES, errno.EPERM):
        why = "the folder is not writable; check its permissions"
    elif isinstance(err, OSError):
        why = (err.strerror or err.__class__.__name__).rstrip(".").lower()
    else:
        first = str(err).splitlines()[0][:120] if str(err) else err.__class__.__name__
        why = f"the write failed ({first})"
    return f"cannot write checkpoint {str(path)!r}: {why}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    A missing, linked, truncated or corrupted file, or one holding Python objects other
    than tensors and plain values, is a :class:`CheckpointError` naming it.
    """
    path = Path(path)
    if path.is_symlink():
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a symbolic link; ppvae never follows links inside a "
            "run folder"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    _check_crc(path)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: not for users
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_refused(path, err)) from None
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EIO):  # torch's, for damage
            raise CheckpointError(_corrupt(path, err)) from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read: "
            f"{(err.strerror or err.__class__.__name__).rstrip('.').lower()}"
        ) from None
    except Exception as err:  # torch raises many types for damaged files
        raise CheckpointError(_corrupt(path, err)) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold a ppvae training state")
    return state


def _refused(path: Path, err: Exception) -> str:
    """Say what a file the weights-only loader refused is: a checkpoint holding Python
    objects, a plain pickle, or damaged bytes."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"checkpoint {str(path)!r} holds a Python object ({found.group(1)}) besides tensors "
            "and plain values; such a file could run code when loaded, so ppvae refuses it"
        )
    with contextlib.suppress(OSError), path.open("rb") as f:
        head = f.read(2)
        if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            return (
                f"checkpoint {str(path)!r} is a plain Python pickle, not a checkpoint written by "
                "ppvae; such a file could run code when loaded, so ppvae refuses it"
            )
    return _corrupt(path, err)


def _corrupt(path: Path, err: Exception) -> str:
    reason = str(err).splitlines()[0] if str(err) else err.__class__.__name__
    if len(reason) > 120:  # whole words only
        reason = reason[:120].rsplit(" ", 1)[0] + " ..."
    return f"checkpoint {str(path)!r} is truncated or corrupted and cannot be loaded ({reason})"


#: What a training state must hold for :func:`check_train_state`: key -> (types, what).
_STATE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "model": (dict,), "guide": (dict,), "optimizer": (dict,), "rng": (dict,),
    "shuffle_generator": (torch.Tensor,), "epoch": (int,), "step": (int,),
    "kl_weight": (int, float), "best_value": (int, float), "best_epoch": (int,),
    "history": (list,),
}  # fmt: skip
_TYPE_NAMES = {dict: "a dictionary", torch.Tensor: "a tensor", int: "an integer",
               float: "a number", list: "a list"}  # fmt: skip


def check_train_state(state: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose training state is incomplete or has values of the wrong
    type (before any of it is loaded into a model, an optimizer or a generator)."""
    where = f"checkpoint {str(path)!r}"
    for key, types in _STATE_KEYS.items():
        if key not in state:
            raise CheckpointError(f"{where} is damaged: it has no {key!r} entry")
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise CheckpointError(
                f"{where} is damaged: its {key!r} entry should be {_TYPE_NAMES[types[0]]}, "
                f"not {type(value).__name__}"
            )
    for key in ("epoch", "step", "best_epoch"):
        if state[key] < 0:
            raise CheckpointError(f"{where} is damaged: its {key!r} entry is negative")
    if not all(isinstance(r, dict) and "epoch" in r for r in state["history"]):
        raise CheckpointError(f"{where} is damaged: its history holds entries that are not epochs")
    optimizer = state["optimizer"]
    if not isinstance(optimizer.get("state"), dict) or not isinstance(
        optimizer.get("param_groups"), list
    ):
        raise CheckpointError(f"{where} is damaged: its optimizer state is incomplete")
    for key in ("python", "python_version", "numpy", "numpy_pos", "numpy_gauss", "torch"):
        if key not in state["rng"]:
            raise CheckpointError(f"{where} is damaged: its random generator states are incomplete")


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
        raise CheckpointError(_corrupt(path, err)) from None


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
