"""The data set options of a spec (``[data]`` in TOML), one frozen dataclass per kind.

:data:`DATASETS` maps each ``kind`` to its options class; every class derives from
:class:`DataConfig`, whose fields are the options all kinds share, and implements one
method, :meth:`DataConfig.read`, that reads the source. :meth:`DataConfig.load` then makes
the same steps for every kind: carve the missing test and valid splits (seeded), binarize
(``binarize = "static"`` or ``"dynamic"``) and keep a random subset of the training data
(``limit``).

Kinds and their own options (besides the common ones):

* ``digits``: scikit-learn's 8x8 digits, no option;
* ``mnist``: IDX files, ``path`` (default ``$PPVAE_DATA_DIR/mnist``);
* ``binarized_mnist``: ``.amat`` files, ``path`` (default ``$PPVAE_DATA_DIR/binarized_mnist``);
* ``npz``: one ``.npz`` archive, ``path`` (required), ``x_key``, ``y_key``,
  ``image_shape``, ``num_classes``;
* ``images``: a folder of PNG/JPEG files, ``path`` (required), ``height``, ``width``,
  ``channels``.

Example:
    >>> from ppvae.data import DATASETS, load_data
    >>> config = DATASETS.get("digits")(valid_fraction=0.25, binarize="static")
    >>> bundle = load_data(config)
    >>> bundle.sizes, bundle.image_shape, bundle.is_binary
    ({'train': 1078, 'valid': 360, 'test': 359}, (8, 8), True)
"""

from __future__ import annotations

import abc
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

import numpy as np

from ppvae.data.bundle import SPLIT_NAMES, DataBundle, Split
from ppvae.data.sources import (
    IDX_IMAGES,
    IDX_LABELS,
    find_file,
    read_amat,
    read_digits,
    read_idx,
    read_image_folder,
    read_npz,
)
from ppvae.data.splits import carve, random_subset
from ppvae.data.transforms import (
    BINARIZE_MODES,
    check_labels,
    check_unit_interval,
    derive_seed,
    static_binarize,
    to_float32,
)
from ppvae.errors import DataError, SpecError
from ppvae.registry import Registry

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DataConfig",
    "SourceData",
    "DigitsConfig",
    "MnistConfig",
    "BinarizedMnistConfig",
    "NpzConfig",
    "ImagesConfig",
    "load_data",
]

#: The environment variable naming the folder that holds ``mnist/`` and ``binarized_mnist/``.
DATA_DIR_ENV = "PPVAE_DATA_DIR"

DATASETS: Registry[DataConfig] = Registry("dataset")


@dataclass(frozen=True, eq=False)
class SourceData:
    """What :meth:`DataConfig.read` returns: the splits a source has, and image facts.

    ``valid`` and ``test`` are None when the source has no such split; they are then
    carved out of ``train``. ``event_shape`` is the shape of one point before flattening
    (see :class:`~ppvae.data.DataBundle`).
    """

    train: Split
    valid: Split | None = None
    test: Split | None = None
    image_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    event_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class DataConfig(abc.ABC):
    """Options shared by every data set kind; subclasses implement :meth:`read`.

    Attributes:
        binarize: ``"none"`` (keep grey values), ``"static"`` (one seeded Bernoulli draw
            of every split at load time) or ``"dynamic"`` (a fresh draw of each training
            batch; valid and test are drawn once, as with ``"static"``).
        valid_fraction: share of the training data carved off as the valid split when
            the source has none, in (0, 1).
        test_fraction: share of the data carved off as the test split when the source
            has none, in (0, 1).
        split_seed: seed of the carving and of ``limit``'s subset.
        binarize_seed: seed of the static draws.
        limit: keep only a seeded random subset of this many training examples (0: all);
            valid and test are not affected.
    """

    #: Whether the data set has labels: ``False`` when known to have none (refused by
    #: model kinds that need labels when the spec is parsed), ``None`` when only loading
    #: tells (checked then).
    has_labels: ClassVar[bool | None] = None

    binarize: str = "none"
    valid_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    binarize_seed: int = 0
    limit: int = 0

    def __post_init__(self) -> None:
        _check_types(self)
        if self.binarize not in BINARIZE_MODES:
            raise SpecError(
                f"data.binarize must be one of {', '.join(map(repr, BINARIZE_MODES))}, "
                f"got {self.binarize!r}"
            )
        for key in ("valid_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 < value < 1.0:
                raise SpecError(f"data.{key} must be in (0, 1), got {value!r}")
        if self.limit < 0:
            raise SpecError(f"data.limit must be 0 (all) or a positive count, got {self.limit}")
        for key in ("split_seed", "binarize_seed"):
            if getattr(self, key) < 0:  # NumPy's SeedSequence takes any size, not a sign
                raise SpecError(
                    f"data.{key} must be a non-negative integer, got {getattr(self, key)}"
                )

    @property
    def name(self) -> str:
        """The registered kind of this class (e.g. ``"digits"``)."""
        return getattr(type(self), "kind", type(self).__name__)

    @abc.abstractmethod
    def read(self) -> SourceData:
        """Read the source: float32 splits ``[N, D]`` in a fixed order, unbinarized."""

    def load(self) -> DataBundle:
        """Read the source and make the bundle: carve, binarize, limit."""
        source = self.read()
        where = f"data set {self.name!r}"
        parts: dict[str, Split | None] = {
            "train": source.train,
            "valid": source.valid,
            "test": source.test,
        }
        for what, fraction in (("test", self.test_fraction), ("valid", self.valid_fraction)):
            if parts[what] is None:
                parts["train"], parts[what] = carve(
                    parts["train"], fraction, seed=self.split_seed, what=what, where=where
                )
        splits: dict[str, Split] = {k: v for k, v in parts.items() if v is not None}
        if self.binarize != "none":
            for index, key in enumerate(SPLIT_NAMES):
                split = splits[key]
                check_unit_interval(split.x, where=f"the {key} split of {where}")
                if key != "train" or self.binarize == "static":
                    seed = derive_seed(self.binarize_seed, index)
                    splits[key] = Split(static_binarize(split.x, seed=seed), split.y)
        if self.limit:
            splits["train"] = random_subset(splits["train"], self.limit, seed=self.split_seed)
        return DataBundle(
            name=self.name,
            train=splits["train"],
            valid=splits["valid"],
            test=splits["test"],
            image_shape=source.image_shape,
            num_classes=source.num_classes,
            binarize=self.binarize,
            event_shape=source.event_shape,
        )


@DATASETS.register("digits")
@dataclass(frozen=True)
class DigitsConfig(DataConfig):
    """scikit-learn's 1,797 8x8 digits, pixels scaled from 0..16 to [0, 1], labels 0..9.

    Example:
        >>> bundle = DigitsConfig(limit=100).load()
        >>> bundle.sizes, bundle.num_classes
        ({'train': 100, 'valid': 144, 'test': 359}, 10)
    """

    has_labels: ClassVar[bool | None] = True

    def read(self) -> SourceData:
        images, labels = read_digits()
        x = to_float32(images.astype(np.float32) / 16.0, where="scikit-learn digits")
        y = check_labels(labels, n=len(x), where="scikit-learn digits labels", num_classes=10)
        return SourceData(Split(x, y), image_shape=(8, 8), num_classes=10, event_shape=(1, 8, 8))


@DATASETS.register("mnist")
@dataclass(frozen=True)
class MnistConfig(DataConfig):
    """Grey-scale MNIST from a folder of IDX files (plain or ``.gz``), pixels / 255.

    The folder holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``; the number of images is
    taken from the headers. The valid split is carved out of the training images.

    Attributes:
        path: the folder; empty means ``$PPVAE_DATA_DIR/mnist``.
    """

    has_labels: ClassVar[bool | None] = True

    path: str = ""

    def read(self) -> SourceData:
        folder = _folder(self.path, "mnist")
        parts = {}
        for key, prefix in (("train", "train"), ("test", "t10k")):
            images_file = find_file(folder, f"{prefix}-images-idx3-ubyte", what="MNIST")
            labels_file = find_file(folder, f"{prefix}-labels-idx1-ubyte", what="MNIST")
            images = read_idx(images_file, magic=IDX_IMAGES)
            labels = read_idx(labels_file, magic=IDX_LABELS)
            if images.shape[1:] != (28, 28):
                raise DataError(
                    f"MNIST file {images_file} holds images of shape {images.shape[1:]}; "
                    "MNIST images are 28x28"
                )
            x = to_float32(images, where=f"MNIST file {images_file}")
            y = check_labels(labels, n=len(x), where=f"MNIST file {labels_file}", num_classes=10)
            parts[key] = Split(x, y)
        return SourceData(
            parts["train"],
            test=parts["test"],
            image_shape=(28, 28),
            num_classes=10,
            event_shape=(1, 28, 28),
        )


@DATASETS.register("binarized_mnist")
@dataclass(frozen=True)
class BinarizedMnistConfig(DataConfig):
    """Larochelle & Murray's statically binarized MNIST: 50k/10k/10k images, no labels.

    Reads ``binarized_mnist_{train,valid,test}.amat`` (or ``.amat.gz``). The rows are
    grouped by digit; training order is shuffled by the trainer and ``limit`` takes a
    seeded random subset.

    Attributes:
        path: the folder; empty means ``$PPVAE_DATA_DIR/binarized_mnist``.
    """

    has_labels: ClassVar[bool | None] = False

    path: str = ""

    def read(self) -> SourceData:
        folder = _folder(self.path, "binarized_mnist")
        parts = {}
        for key in SPLIT_NAMES:
            file = find_file(folder, f"binarized_mnist_{key}.amat", what="binarized MNIST")
            values = read_amat(file, width=784)
            parts[key] = Split(to_float32(values, where=f"amat file {file}", scale_uint8=False))
        return SourceData(**parts, image_shape=(28, 28), event_shape=(1, 28, 28))


@DATASETS.register("npz")
@dataclass(frozen=True)
class NpzConfig(DataConfig):
    """Your own data from an ``.npz`` archive with inputs ``x`` and optional labels ``y``.

    ``x`` has any numeric shape ``[N, ...]`` and is flattened; uint8 is divided by 255,
    other types keep their values. The bundle's ``event_shape`` records the stored shape
    of one point, ``x.shape[1:]`` (``(1,)`` for a 1-D ``x``); a 4-D ``x`` ``[N, 1, H, W]``
    or ``[N, 3, H, W]`` is drawn as grey or RGB images. ``y`` holds integer labels ``0 .. C-1``. Test and
    valid splits are carved out (``test_fraction``, ``valid_fraction``).

    Attributes:
        path: the ``.npz`` file (required).
        x_key: name of the inputs array.
        y_key: name of the labels array (absent: no labels).
        image_shape: shape of one input, e.g. ``(28, 28)``; empty: ``x.shape[1:]`` when
            ``x`` is ``[N, H, W]``, ``(H, W)`` or ``(3, H, W)`` when it is ``[N, 1, H, W]``
            or ``[N, 3, H, W]``, else no image shape.
        num_classes: number of classes; 0: the largest label plus one.
    """

    path: str = ""
    x_key: str = "x"
    y_key: str = "y"
    image_shape: tuple[int, ...] = ()
    num_classes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path:
            raise SpecError("data.path is required for data kind 'npz' (the .npz file to read)")
        if any(size < 1 for size in self.image_shape):
            raise SpecError(
                f"data.image_shape must hold positive sizes, got {list(self.image_shape)}"
            )
        if self.num_classes < 0:
            raise SpecError(
                f"data.num_classes must be 0 (from the labels) or positive, got {self.num_classes}"
            )

    def read(self) -> SourceData:
        path = Path(self.path).expanduser()
        x_raw, y_raw = read_npz(path, x_key=self.x_key, y_key=self.y_key)
        x = to_float32(x_raw, where=f"array {self.x_key!r} of npz file {path}")
        image_shape: tuple[int, ...] | None = None
        if self.image_shape:
            image_shape = tuple(self.image_shape)
            if int(np.prod(image_shape)) != x.shape[1]:
                raise DataError(
                    f"data.image_shape {list(image_shape)} has {int(np.prod(image_shape))} "
                    f"pixels but the inputs in npz file {path} have {x.shape[1]} features"
                )
        elif x_raw.ndim == 3:
            image_shape = tuple(int(s) for s in x_raw.shape[1:])
        y = num_classes = None
        if y_raw is not None:
            where = f"array {self.y_key!r} of npz file {path}"
            y = check_labels(y_raw, n=len(x), where=where, num_classes=self.num_classes)
            num_classes = self.num_classes or int(y.max()) + 1
        # flat points with a data.image_shape: the bundle derives the event shape from it
        flat_image = x_raw.ndim == 2 and bool(self.image_shape)
        event_shape = None if flat_image else tuple(int(s) for s in x_raw.shape[1:]) or (1,)
        return SourceData(
            Split(x, y), image_shape=image_shape, num_classes=num_classes, event_shape=event_shape
        )


@DATASETS.register("images")
@dataclass(frozen=True)
class ImagesConfig(DataConfig):
    """A folder of PNG/JPEG images, one class per sub-folder (or no labels), pixels / 255.

    The folder holds either the image files themselves (no labels) or one sub-folder per
    class, at least two, whose sorted names give the labels ``0 .. K-1``; see
    :func:`~ppvae.data.read_image_folder`. Each image is converted to ``channels`` (1:
    grey, 3: RGB), resized to ``height`` x ``width`` when they are set, scaled to [0, 1]
    and flattened in ``(C, H, W)`` order: the bundle's ``event_shape`` is ``(channels,
    height, width)``. Test and valid splits are carved out (``test_fraction``,
    ``valid_fraction``, seeded by ``split_seed``).

    Attributes:
        path: the folder (required).
        height: the height to resize every image to; 0 (with ``width`` 0): keep the
            images' own size, which must then be the same for all.
        width: the width to resize every image to; 0 (with ``height`` 0): keep it.
        channels: 1 (grey) or 3 (RGB).

    Example:
        >>> import os, tempfile
        >>> from PIL import Image
        >>> folder = tempfile.mkdtemp()
        >>> for i in range(10):
        ...     Image.new("L", (6, 4), 20 * i).save(os.path.join(folder, f"{i}.png"))
        >>> bundle = ImagesConfig(path=folder, height=2, width=3).load()
        >>> bundle.sizes, bundle.event_shape, bundle.image_shape, bundle.num_classes
        ({'train': 7, 'valid': 1, 'test': 2}, (1, 2, 3), (2, 3), None)
    """

    path: str = ""
    height: int = 0
    width: int = 0
    channels: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path:
            raise SpecError("data.path is required for data kind 'images' (the image folder)")
        if self.channels not in (1, 3):
            raise SpecError(f"data.channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if self.height < 0 or self.width < 0 or (self.height == 0) != (self.width == 0):
            raise SpecError(
                f"data.height and data.width must both be positive (resize to that size) or "
                f"both 0 (keep the images' size), got {self.height} and {self.width}"
            )

    def read(self) -> SourceData:
        folder = Path(self.path).expanduser()
        size = (self.height, self.width) if self.height else None
        pixels, labels, classes = read_image_folder(folder, channels=self.channels, size=size)
        x = to_float32(pixels, where=f"the images of folder {folder}")
        y = None
        if labels is not None:
            y = check_labels(
                labels, n=len(x), where=f"the classes of folder {folder}", num_classes=len(classes)
            )
        return SourceData(
            Split(x, y),
            num_classes=len(classes) or None,
            event_shape=tuple(int(s) for s in pixels.shape[1:]),
        )


def load_data(config: DataConfig | str) -> DataBundle:
    """Load the data set described by ``config``, or by a kind name with default options.

    Example:
        >>> bundle = load_data("digits")
        >>> sum(bundle.sizes.values()), bundle.dim, bundle.num_classes
        (1797, 64, 10)
    """
    if isinstance(config, str):
        config = DATASETS.get(config, where="data.kind")()
    if not isinstance(config, DataConfig):
        raise TypeError(f"load_data takes a DataConfig or a kind name, got {type(config)}")
    return config.load()


def _folder(path: str, subfolder: str) -> Path:
    """``path`` or else ``$PPVAE_DATA_DIR/subfolder``."""
    if path:
        return Path(path).expanduser()
    root = os.environ.get(DATA_DIR_ENV, "")
    if not root:
        raise DataError(
            f"data.path is empty and {DATA_DIR_ENV} is not set; set {DATA_DIR_ENV} to the "
            f"folder holding {subfolder}/ or set data.path to the {subfolder} folder"
        )
    return Path(root).expanduser() / subfolder


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _check_types(config: DataConfig) -> None:
    """SpecError unless every field holds its annotated plain type (ints pass as floats)."""
    hints = typing.get_type_hints(type(config))
    for field in fields(config):
        value, hint = getattr(config, field.name), hints[field.name]
        key = f"data.{field.name}"
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(config, field.name, float(value))
        elif hint in _TYPE_NAMES:
            if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
                raise SpecError(f"{key} must be {_TYPE_NAMES[hint]}, got {value!r}")
        elif typing.get_origin(hint) is tuple:
            if not isinstance(value, tuple | list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise SpecError(f"{key} must be a list of integers, got {value!r}")
            object.__setattr__(config, field.name, tuple(value))
