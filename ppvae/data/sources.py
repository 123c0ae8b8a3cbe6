"""Readers of the on-disk formats: IDX (MNIST), ``.amat`` (binarized MNIST), ``.npz``, digits.

Each reader returns numpy arrays exactly as stored (uint8 pixels, integer labels) and
turns every problem with a file (missing, truncated, corrupt, not the announced format)
into a one-sentence :class:`~ppvae.errors.DataError` naming the file. Files may be plain
or gzip-compressed (recognised by their first bytes, whatever their name).

Example:
    >>> import gzip, os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "tiny.amat.gz")
    >>> with gzip.open(path, "wb") as f:
    ...     _ = f.write(b"0 1 1 0\\n1 1 1 1\\n")
    >>> read_amat(path, width=4)
    array([[0, 1, 1, 0],
           [1, 1, 1, 1]], dtype=uint8)
"""

from __future__ import annotations

import gzip
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ppvae.errors import DataError

__all__ = [
    "read_bytes",
    "find_file",
    "read_idx",
    "read_amat",
    "read_npz",
    "read_digits",
    "IDX_IMAGES",
    "IDX_LABELS",
]

#: IDX magic number of unsigned-byte 3-D arrays (images ``[N, rows, cols]``).
IDX_IMAGES = 0x00000803
#: IDX magic number of unsigned-byte 1-D arrays (labels ``[N]``).
IDX_LABELS = 0x00000801

_GZIP_MAGIC = b"\x1f\x8b"
_READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile)


def _reason(err: BaseException) -> str:
    """The error's message on one line, for embedding in a DataError sentence."""
    text = " ".join(str(err).split()) or type(err).__name__
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)[0].rstrip(".")


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The content of ``path``, decompressed when it is gzip data.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x.txt")
        >>> _ = open(path, "wb").write(b"abc")
        >>> read_bytes(path)
        b'abc'
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"data file {path} {what}")
    try:
        data = path.read_bytes()
        if data[:2] == _GZIP_MAGIC:
            data = gzip.decompress(data)
    except _READ_ERRORS as err:
        raise DataError(f"cannot read data file {path}: {_reason(err)}") from err
    return data


def find_file(folder: str | os.PathLike[str], name: str, *, what: str) -> Path:
    """``folder/name`` or else ``folder/name.gz``; a DataError when neither exists.

    ``what`` names the data set in the message (e.g. ``"MNIST"``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} folder {folder} does not exist or is not a folder")
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{what} file {name} (or {name}.gz) is missing from folder {folder}")


def read_idx(path: str | os.PathLike[str], *, magic: int) -> np.ndarray:
    """The uint8 array stored in the IDX file ``path``, shape taken from its header.

    The header is a big-endian magic number (``0x00000803`` for images ``[N, rows,
    cols]``, ``0x00000801`` for labels ``[N]``) followed by one big-endian uint32 per
    dimension; the payload must hold exactly the announced number of bytes.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
        >>> header = IDX_LABELS.to_bytes(4, "big") + (3).to_bytes(4, "big")
        >>> _ = open(path, "wb").write(header + bytes([7, 0, 9]))
        >>> read_idx(path, magic=IDX_LABELS)
        array([7, 0, 9], dtype=uint8)
    """
    data = read_bytes(path)
    if len(data) < 4:
        raise DataError(f"IDX file {path} holds {len(data)} bytes, too few for an IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(
            f"IDX file {path} has magic number 0x{found:08x} but 0x{magic:08x} is required "
            f"(unsigned bytes, {magic & 0xFF} dimensions)"
        )
    ndim = magic & 0xFF
    start = 4 + 4 * ndim
    if len(data) < start:
        raise DataError(f"IDX file {path} is truncated inside its header of {start} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - start != expected:
        raise DataError(
            f"IDX file {path} holds {len(data) - start} bytes of data but its header announces "
            f"shape {shape}, i.e. {expected} bytes"
        )
    if expected == 0:
        raise DataError(f"IDX file {path} is empty (shape {shape}); at least one item is required")
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(shape)


_AMAT_ALLOWED = np.zeros(256, dtype=bool)
_AMAT_ALLOWED[list(b"01 \t\r\n")] = True


def _line_of(buf: np.ndarray, pos: int) -> int:
    """The 1-based line number of byte ``pos`` of ``buf``."""
    return int(np.count_nonzero(buf[:pos] == ord("\n"))) + 1


def read_amat(path: str | os.PathLike[str], *, width: int = 784) -> np.ndarray:
    """The uint8 0/1 array ``[N, width]`` of an ``.amat`` text file (plain or gzip).

    One example per line, ``width`` values ``0`` or ``1`` separated by spaces; blank lines
    are skipped. Parsing works on the raw bytes with numpy (50,000 MNIST lines take a
    fraction of a second), and any other character or a line with another number of values
    is a DataError naming the line.
    """
    buf = np.frombuffer(read_bytes(path), dtype=np.uint8)
    values = _amat_canonical(buf, width)
    return values if values is not None else _amat_general(buf, width, path)


def _amat_canonical(buf: np.ndarray, width: int) -> np.ndarray | None:
    """The values if ``buf`` is exactly lines ``"v v ... v\\n"`` of ``width`` values, else None."""
    row = 2 * width
    if buf.size == 0 or buf.size % row:
        return None
    grid = buf.reshape(-1, row)
    values = grid[:, 0::2] - np.uint8(ord("0"))  # characters below '0' wrap to large values
    if (
        values.max() <= 1
        and (grid[:, 1:-1:2] == ord(" ")).all()
        and (grid[:, -1] == ord("\n")).all()
    ):
        return values
    return None


def _amat_general(buf: np.ndarray, width: int, path: str | os.PathLike[str]) -> np.ndarray:
    """Parse any spacing (tabs, CRLF, blank lines) and name the line of the first problem."""
    bad = ~_AMAT_ALLOWED[buf]
    if bad.any():
        pos = int(bad.argmax())
        raise DataError(
            f"amat file {path} line {_line_of(buf, pos)} holds the character "
            f"{chr(buf[pos])!r}; only values 0 and 1 separated by spaces are allowed"
        )
    del bad
    digit = (buf & 0xFE) == ord("0")  # '0' or '1', as no other digit is left
    glued = digit[1:] & digit[:-1]
    if glued.any():
        pos = int(glued.argmax())
        raise DataError(
            f"amat file {path} line {_line_of(buf, pos)} holds a value of several digits; "
            "only values 0 and 1 separated by spaces are allowed"
        )
    del glued
    newlines = np.flatnonzero(buf == ord("\n"))
    starts = np.concatenate(([0], newlines + 1))
    starts = starts[starts < buf.size]
    if starts.size == 0:
        raise DataError(f"amat file {path} is empty; one example of {width} values a line")
    # a line of fewer than 2**16 bytes has fewer than 2**16 values: uint16 sums are exact
    longest = int(np.diff(np.append(starts, buf.size)).max())
    dtype = np.uint16 if longest < 2**16 else np.int64
    counts = np.add.reduceat(digit.view(np.uint8), starts, dtype=dtype).astype(np.int64)
    wrong = (counts != 0) & (counts != width)
    if wrong.any():
        line = int(wrong.argmax())
        raise DataError(
            f"amat file {path} line {line + 1} holds {int(counts[line])} values; "
            f"every line must hold {width} values 0 or 1"
        )
    if not counts.any():
        raise DataError(f"amat file {path} holds no data; one example of {width} values a line")
    values = buf[digit] - np.uint8(ord("0"))
    return values.reshape(-1, width)


def read_npz(
    path: str | os.PathLike[str], *, x_key: str = "x", y_key: str = "y"
) -> tuple[np.ndarray, np.ndarray | None]:
    """The arrays ``x`` and (when present) ``y`` of the ``.npz`` archive ``path``.

    Loaded with ``allow_pickle=False``: object arrays are refused.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "toy.npz")
        >>> np.savez(path, x=np.eye(2))
        >>> read_npz(path)
        (array([[1., 0.],
               [0., 1.]]), None)
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"npz file {path} {what}")
    try:
        handle = path.open("rb")  # ours to close: np.load leaks it when the zip is corrupt
    except OSError as err:
        raise DataError(f"cannot read npz file {path}: {_reason(err)}") from err
    with handle:
        try:
            archive = np.load(handle, allow_pickle=False)
        except (ValueError, zipfile.BadZipFile) as err:
            raise DataError(
                f"cannot read npz file {path}: it is not an .npz archive (a zip of .npy arrays)"
            ) from err
        except _READ_ERRORS as err:
            raise DataError(f"cannot read npz file {path}: {_reason(err)}") from err
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(
                f"file {path} holds a single array, not an .npz archive with an array "
                f"{x_key!r}; write one with numpy.savez(path, {x_key}=array)"
            )
        with archive:
            if x_key not in archive.files:
                keys = ", ".join(repr(k) for k in archive.files) or "nothing"
                raise DataError(
                    f"npz file {path} has no array {x_key!r}; it holds {keys} (a data set names "
                    "its inputs array with data.x_key, e.g. --set data.x_key=NAME)"
                )
            x = _npz_array(archive, path, x_key)
            y = _npz_array(archive, path, y_key) if y_key in archive.files else None
    return x, y


def _npz_array(archive: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataError(
                f"array {key!r} in npz file {path} holds Python objects; "
                "numeric arrays (bool, integer or float) are required"
            ) from err
        raise DataError(f"cannot read array {key!r} of npz file {path}: {_reason(err)}") from err
    except (*_READ_ERRORS, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read array {key!r} of npz file {path}: {_reason(err)}") from err


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits: pixels ``[1797, 8, 8]`` in 0..16, labels.

    Shipped with scikit-learn, so nothing is downloaded.

    Example:
        >>> x, y = read_digits()
        >>> x.shape, int(x.max()), sorted(set(y.tolist())) == list(range(10))
        ((1797, 8, 8), 16, True)
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.asarray(digits.images), np.asarray(digits.target)
