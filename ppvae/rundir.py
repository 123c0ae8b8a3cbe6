"""Run folders as a unit of trust: markers, locks, links, atomic writes, spec fingerprints.

A folder that ppvae made holds a marker file (``.ppvae-run`` for a run folder,
``.ppvae-experiment`` for a semi-supervised experiment) written by ppvae and nothing else;
``--force`` replaces only a folder with a marker. A process that writes into a folder
holds an exclusive lock on its ``.ppvae-lock`` file (released by the operating system
when the process ends, even by ``kill -9``); a second writer is refused with the
holder's pid. ppvae never follows a symbolic link inside a run folder, for reading or for
writing: a folder holding one is refused. Files are written atomically (a temporary file
in the same folder, renamed over the target), so a full disk or a killed process leaves
the previous file or the new one, and a link at the target is replaced, never followed.

A checkpoint records the spec it was trained with. Its fingerprint
(:func:`spec_fingerprint`) covers every section except ``[evaluate]``, the
optimization settings of ``[train]`` that a resumed run may change
(:data:`RESUMABLE_TRAIN_KEYS`) and where the data lie (:data:`LOCATION_KEYS`): every
reader compares the run's ``spec.toml`` with it.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_marker(folder, RUN_MARKER)
    >>> is_marked(folder, RUN_MARKER)
    True
    >>> with FolderLock(folder, "run folder"):
    ...     write_text_atomic(folder / "note.txt", "hello")
    >>> (folder / "note.txt").read_text()
    'hello'
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ppvae.errors import RunDirError, SpecError

__all__ = [
    "RUN_MARKER",
    "EXPERIMENT_MARKER",
    "EXPORT_MARKER",
    "LOCK_FILE",
    "RESUMABLE_TRAIN_KEYS",
    "LOCATION_KEYS",
    "FolderLock",
    "write_marker",
    "is_marked",
    "check_no_links",
    "check_output_path",
    "check_parents",
    "write_text_atomic",
    "write_bytes_atomic",
    "atomic_target",
    "os_error_message",
    "writing",
    "spec_fingerprint",
    "frozen_part",
    "spec_differences",
    "describe_differences",
    "lock_is_held",
    "check_seed",
    "remove_tree",
]

RUN_MARKER = ".ppvae-run"
EXPERIMENT_MARKER = ".ppvae-experiment"
EXPORT_MARKER = ".ppvae-export"
LOCK_FILE = ".ppvae-lock"
_MARKER_FORMATS = {
    RUN_MARKER: "ppvae-run-1",
    EXPERIMENT_MARKER: "ppvae-experiment-1",
    EXPORT_MARKER: "ppvae-export-1",
}

#: ``[train]`` keys a resumed run may change: optimization settings that leave the model,
#: its data and what was learned so far as they are. Every other key (and every other
#: section but ``[evaluate]``) is part of the run's identity.
RESUMABLE_TRAIN_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "clip_norm",
    "kl_warmup_epochs",
    "early_stopping",
    "device",
    "on_nan",
    "progress",
    "deterministic",
    "logger",
)

#: Keys that say where a run's inputs lie, not what the run is: ``data.path`` (written out
#: in full into ``spec.toml``, see :func:`ppvae.run.resolve_paths`). The fingerprint leaves
#: them out, so a run whose data moved (another machine, another mount) is read with its
#: ``spec.toml`` pointing at the new place, and a run recorded with ``path = ""`` (the
#: ``$PPVAE_DATA_DIR`` default) is the same run once the path is written out. The data's
#: shape is still checked by the weights; their content never was (files can change in
#: place).
LOCATION_KEYS: dict[str, tuple[str, ...]] = {"data": ("path",)}

#: The largest seed that every generator ppvae seeds (Python, NumPy, torch) accepts.
MAX_SEED = 2**32 - 1


# --------------------------------------------------------------------------- errors


def os_error_message(err: OSError, action: str, path: str | Path | None = None) -> str:
    """One sentence for an operating-system error: what was done, where, and why."""
    where = path if path is not None else err.filename
    reason = err.strerror or err.__class__.__name__
    hint = {
        errno.ENOSPC: "; free some space or choose another folder",
        errno.EDQUOT: "; free some space or choose another folder",
        errno.EROFS: "; copy the run to a writable folder or choose another --out",
        errno.EACCES: "; check the folder's permissions or choose another folder",
        errno.EPERM: "; check the folder's permissions or choose another folder",
    }.get(err.errno or 0, "")
    target = f" {str(where)!r}" if where is not None else ""
    return f"cannot {action}{target}: {reason.rstrip('.').lower()}{hint}"


@contextlib.contextmanager
def writing(path: str | Path, action: str = "write") -> Iterator[None]:
    """Turn an :class:`OSError` raised inside into a :class:`RunDirError` naming ``path``."""
    try:
        yield
    except OSError as err:
        raise RunDirError(os_error_message(err, action, err.filename or path)) from None


# --------------------------------------------------------------------------- links


def check_no_links(folder: str | Path, what: str = "run folder") -> None:
    """Refuse ``folder`` if anything inside it (at any depth) is a symbolic link."""
    root = Path(folder)
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except FileNotFoundError:
            continue
        except OSError as err:
            raise RunDirError(os_error_message(err, f"read the {what}", current)) from None
        for entry in entries:
            if entry.is_symlink():
                rel = Path(entry.path).relative_to(root)
                raise RunDirError(
                    f"{what} {str(root)!r} holds a symbolic link {str(rel)!r}; ppvae never follows "
                    "links inside a run folder: replace it with the real file or remove it"
                )
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))


def check_output_path(path: str | Path, option: str = "--out") -> Path:
    """Refuse an output file that is a folder or lies under a file; return it."""
    path = Path(path)
    if path.is_dir():
        raise RunDirError(f"{option} {str(path)!r} is a folder; give a file name")
    check_parents(path, f"{option} {str(path)!r}")
    return path


def check_parents(path: Path, what: str, advice: str = "choose another path") -> None:
    """Refuse a path whose nearest existing parent is not a folder (a file, or a link to
    one): ``what`` names the path in the sentence."""
    for parent in Path(path).parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise RunDirError(
                    f"{what} lies under {str(parent)!r}, which is a file, not a folder; {advice}"
                )
            return


# --------------------------------------------------------------------------- writes


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, renamed over
    it: a failure leaves the previous file, and a link at ``path`` is replaced, not followed."""
    path = Path(path)
    with atomic_target(path) as tmp:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, 0o644)  # rw-r--r-- before the umask, never executable
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_bytes_atomic` of UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_target(path: str | Path) -> Iterator[Path]:
    """A temporary path (same folder, same suffix) to write; renamed over ``path`` when the
    block ends without an error, removed otherwise. An :class:`OSError` becomes a
    :class:`RunDirError` naming ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        with writing(path):
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()
            yield tmp
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()


def remove_tree(path: str | Path) -> None:
    """Remove a folder and what it holds (links are removed, never followed)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        with writing(path, "remove"):
            shutil.rmtree(path)


# --------------------------------------------------------------------------- markers


def write_marker(folder: str | Path, name: str = RUN_MARKER) -> None:
    """Mark ``folder`` as made by ppvae (``name``: :data:`RUN_MARKER`,
    :data:`EXPERIMENT_MARKER` or :data:`EXPORT_MARKER`)."""
    from ppvae._version import __version__

    payload = {"format": _MARKER_FORMATS[name], "ppvae": __version__}
    write_text_atomic(Path(folder) / name, json.dumps(payload) + "\n")


def is_marked(folder: str | Path, name: str = RUN_MARKER) -> bool:
    """Whether ``folder`` holds the marker ``name`` written by ppvae (a regular file, not a
    link, holding the marker's format)."""
    marker = Path(folder) / name
    if marker.is_symlink() or not marker.is_file():
        return False
    try:
        payload = json.loads(marker.read_text()[:4096])
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and payload.get("format") == _MARKER_FORMATS[name]


# --------------------------------------------------------------------------- locks


class FolderLock:
    """An exclusive lock on ``folder`` for one writer (``flock`` on its ``.ppvae-lock``).

    A second process is refused with a :class:`RunDirError` naming the holder's pid. The
    operating system releases the lock when the holder ends, however it ends.
    """

    def __init__(self, folder: str | Path, what: str = "run folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        path = self.folder / LOCK_FILE
        if path.is_symlink():
            raise RunDirError(
                f"{self.what} {str(self.folder)!r} holds a symbolic link {LOCK_FILE!r}; ppvae "
                "never follows links inside a run folder: remove it"
            )
        with writing(path, "lock"):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no locking
            self._fd = fd
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(
                    f"{self.what} {str(self.folder)!r} is being written by another ppvae process "
                    f"({holder}); wait for it to finish or choose another folder"
                ) from None
            raise RunDirError(os_error_message(err, "lock", path)) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the lock holds; the pid is only for the message of a second writer
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "pid unknown"


def lock_is_held(folder: str | Path) -> bool:
    """Whether another process holds the lock of ``folder`` now."""
    try:
        with FolderLock(folder):
            return False
    except RunDirError:
        return True


# --------------------------------------------------------------------------- specs


def frozen_part(spec_dict: Mapping[str, Any], *, locations: bool = False) -> dict[str, Any]:
    """The sections of a spec that make a run what it is: all but ``[evaluate]`` (and a
    default ``[network]``, which runs of earlier versions lack; a user network's file
    counts by its name, not its folder), ``[train]`` without :data:`RESUMABLE_TRAIN_KEYS`, and without the
    :data:`LOCATION_KEYS` (``locations=True`` keeps them: the fingerprint that
    earlier ppvae versions stored)."""
    out = {k: dict(v) for k, v in spec_dict.items() if k != "evaluate" and isinstance(v, Mapping)}
    if out.get("network") == {"kind": "mlp"}:  # the default, as runs made before [network] say
        del out["network"]
    if "train" in out:
        out["train"] = {k: v for k, v in out["train"].items() if k not in RESUMABLE_TRAIN_KEYS}
    if not locations:
        for section, keys in LOCATION_KEYS.items():
            if section in out:
                out[section] = {k: v for k, v in out[section].items() if k not in keys}
        if "network" in out:  # a user network's file: its name and class, not its folder
            out["network"] = {k: _file_ref_name(v) for k, v in out["network"].items()}
    return out


def _file_ref_name(value: Any) -> Any:
    """``"/some/folder/nets.py:Encoder"`` -> ``"nets.py:Encoder"``; other values as they are."""
    if isinstance(value, str):
        module, sep, attr = value.rpartition(":")
        if sep and module.endswith(".py"):
            return f"{Path(module).name}:{attr}"
    return value


def spec_fingerprint(spec_dict: Mapping[str, Any], *, locations: bool = False) -> str:
    """SHA-256 of :func:`frozen_part` (key order independent): what a checkpoint stores."""
    text = json.dumps(frozen_part(spec_dict, locations=locations), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def spec_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], *, frozen: bool
) -> dict[str, tuple[Any, Any]]:
    """``section.key -> (old, new)`` for the keys that differ; ``frozen=True`` compares the
    :func:`frozen_part`, ``frozen=False`` only the resumable ``[train]`` keys."""
    if frozen:
        a, b = frozen_part(old), frozen_part(new)
    else:
        pick = lambda d: {  # noqa: E731
            "train": {k: v for k, v in d.get("train", {}).items() if k in RESUMABLE_TRAIN_KEYS}
        }
        a, b = pick(old), pick(new)
    out: dict[str, tuple[Any, Any]] = {}
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(set(sa) | set(sb)):
            va, vb = sa.get(key, "<missing>"), sb.get(key, "<missing>")
            if _plain(va) != _plain(vb):
                out[f"{section}.{key}"] = (va, vb)
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def describe_differences(diffs: Mapping[str, tuple[Any, Any]], limit: int = 3) -> str:
    """``model.latent_dim (8 -> 4), likelihood.kind ('bernoulli' -> 'gaussian')``."""
    items = [f"{k} ({a!r} -> {b!r})" for k, (a, b) in list(diffs.items())[:limit]]
    more = len(diffs) - limit
    return ", ".join(items) + (f" and {more} more" if more > 0 else "")


def check_seed(value: Any, where: str) -> None:
    """Refuse a seed that Python's, NumPy's or torch's generators would reject."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise SpecError(f"{where} must be an integer from 0 to {MAX_SEED}, got {value!r}")
