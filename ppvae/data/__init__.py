"""Data sets for ppvae: readers, splits, binarization, and the ``[data]`` options of a spec.

:func:`load_data` turns a :class:`DataConfig` (one class per kind in :data:`DATASETS`:
``digits``, ``mnist``, ``binarized_mnist``, ``npz``, ``images``) into a :class:`DataBundle`
of float32 CPU tensors: train, valid and test :class:`Split` objects of flattened inputs
``[N, D]`` with optional int64 labels, and the shape of one point before flattening
(``event_shape``, e.g. ``(1, 8, 8)``). Problems with the data are :class:`~ppvae.errors.DataError` exceptions.

Example:
    >>> from ppvae.data import load_data
    >>> bundle = load_data("digits")
    >>> bundle.sizes, bundle.dim, bundle.image_shape, bundle.event_shape
    ({'train': 1294, 'valid': 144, 'test': 359}, 64, (8, 8), (1, 8, 8))
"""

from ppvae.data.bundle import SPLIT_NAMES, DataBundle, Split
from ppvae.data.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    BinarizedMnistConfig,
    DataConfig,
    DigitsConfig,
    ImagesConfig,
    MnistConfig,
    NpzConfig,
    SourceData,
    load_data,
)
from ppvae.data.semisupervised import (
    UNLABELLED,
    class_quotas,
    hide_labels,
    labelled_part,
    semi_supervised_split,
)
from ppvae.data.sources import read_amat, read_idx, read_image_folder, read_npz
from ppvae.data.splits import carve, random_subset
from ppvae.data.transforms import BINARIZE_MODES, dynamic_binarize, static_binarize

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "BINARIZE_MODES",
    "SPLIT_NAMES",
    "DataBundle",
    "Split",
    "DataConfig",
    "SourceData",
    "DigitsConfig",
    "MnistConfig",
    "BinarizedMnistConfig",
    "NpzConfig",
    "ImagesConfig",
    "load_data",
    "dynamic_binarize",
    "static_binarize",
    "carve",
    "random_subset",
    "UNLABELLED",
    "semi_supervised_split",
    "class_quotas",
    "hide_labels",
    "labelled_part",
    "read_idx",
    "read_amat",
    "read_npz",
    "read_image_folder",
]
