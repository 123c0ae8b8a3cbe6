"""Readers of the on-disk formats: IDX (MNIST), ``.amat`` (binarized MNIST), ``.npz``, digits,
folders of PNG/JPEG images.

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
    "read_image_folder",
    "IMAGE_SUFFIXES",
    "IDX_IMAGES",
    "IDX_LABELS",
]

#: IDX magic number of unsigned-byte 3-D arrays (images ``[N, rows, cols]``).
IDX_IMAGES = 0x00000803
#: IDX magic number of unsigned-byte 1-D arrays (labels ``[N]``).
IDX_LABELS = 0x00000801

#: The file name endings (any case) :func:`read_image_folder` reads; other files are skipped.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

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


def read_image_folder(
    folder: str | os.PathLike[str], *, channels: int = 1, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """The images of a folder as uint8 ``[N, C, H, W]``, their labels and the class names.

    Either the folder holds the image files itself (no labels: ``None`` and no class
    names) or it holds one sub-folder per class (labels ``0 .. K-1`` in the sorted order of
    the sub-folder names, at least two classes). Files ending in
    :data:`IMAGE_SUFFIXES` (any case) are read with Pillow in sorted order, converted to
    ``channels`` 1 (grey, ``"L"``) or 3 (``"RGB"``; an alpha channel is dropped) and, when
    ``size`` ``(height, width)`` is given, resized (bilinear) to it; without ``size`` all
    images must have one size. Other files and hidden entries are skipped. Every problem
    is a one-sentence :class:`~ppvae.errors.DataError` naming the folder or file.

    Example:
        >>> import os, tempfile
        >>> from PIL import Image
        >>> folder = tempfile.mkdtemp()
        >>> for name in ("cat", "dog"):
        ...     os.mkdir(os.path.join(folder, name))
        ...     Image.new("RGB", (4, 3), "red").save(os.path.join(folder, name, "a.png"))
        >>> x, y, classes = read_image_folder(folder, channels=3)
        >>> x.shape, y.tolist(), classes, int(x[0, 0, 0, 0])
        ((2, 3, 3, 4), [0, 1], ('cat', 'dog'), 255)
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DataError(f"image folder {folder} {what}")
    try:
        entries = sorted(e for e in folder.iterdir() if not e.name.startswith("."))
    except OSError as err:
        raise DataError(f"cannot list image folder {folder}: {_reason(err)}") from err
    subfolders = [e for e in entries if e.is_dir()]
    files = [e for e in entries if _is_image_file(e)]
    if subfolders and files:
        raise DataError(
            f"image folder {folder} holds both image files (e.g. {files[0].name}) and "
            f"sub-folders (e.g. {subfolders[0].name}); put the images either directly in the "
            "folder (no labels) or in one sub-folder per class"
        )
    classes: tuple[str, ...] = ()
    labelled: list[tuple[Path, int]] = [(f, -1) for f in files]
    if subfolders:
        if len(subfolders) == 1:
            raise DataError(
                f"image folder {folder} holds a single class sub-folder "
                f"{subfolders[0].name!r}; labels from one class are meaningless, so add a "
                "sub-folder per class or put the images directly in the folder (no labels)"
            )
        classes = tuple(sub.name for sub in subfolders)
        for label, sub in enumerate(subfolders):
            try:
                found = sorted(e for e in sub.iterdir() if _is_image_file(e))
            except OSError as err:
                raise DataError(f"cannot list class folder {sub}: {_reason(err)}") from err
            if not found:
                raise DataError(
                    f"class sub-folder {sub} holds no image files "
                    f"({', '.join(IMAGE_SUFFIXES)}); every class needs at least one image"
                )
            labelled.extend((f, label) for f in found)
    if not labelled:
        raise DataError(
            f"image folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)}) and "
            "no class sub-folders"
        )
    mode = {1: "L", 3: "RGB"}[channels]
    pixels = []
    first: tuple[Path, tuple[int, int]] | None = None
    for file, _ in labelled:
        try:
            with Image.open(file) as opened:
                image = opened.convert(mode)  # decodes the whole file
        except UnidentifiedImageError as err:
            raise DataError(
                f"cannot read image file {file}: Pillow does not recognise it as an image"
            ) from err
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read image file {file}: {_reason(err)}") from err
        if size is not None:
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        elif first is None:
            first = (file, image.size)
        elif image.size != first[1]:
            (w0, h0), (w1, h1) = first[1], image.size
            raise DataError(
                f"image file {file} is {h1}x{w1} (height x width) but {first[0]} is {h0}x{w0}; "
                "images of different sizes need data.height and data.width to resize them "
                "to one size"
            )
        array = np.asarray(image, dtype=np.uint8)
        pixels.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    x = np.stack(pixels)
    y = np.array([label for _, label in labelled], dtype=np.int64) if classes else None
    return x, y, classes


def _is_image_file(entry: Path) -> bool:
    return (
        not entry.name.startswith(".")
        and entry.suffix.lower() in IMAGE_SUFFIXES
        and entry.is_file()
    )
