"""The ``images`` data source (issue 17): folders of generated PNG/JPEG files, grey and
RGB, with and without class sub-folders; the event shape every data set carries; and the
one sentence of each bad input."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ppvae.data import DATASETS, DataBundle, ImagesConfig, Split, load_data, read_image_folder
from ppvae.errors import DataError, SpecError

REPO = Path(__file__).resolve().parents[2]


def _pixels(seed: int, h: int, w: int, channels: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_images(
    folder: Path,
    counts: dict[str, int] | int,
    *,
    size: tuple[int, int] = (6, 5),
    channels: int = 3,
    suffix: str = ".png",
) -> dict[Path, np.ndarray]:
    """Write ``counts`` images (per class sub-folder for a dict) of ``size`` (height,
    width); the pixels of each file, by path."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = {"": counts} if isinstance(counts, int) else counts
    written = {}
    for g, (name, n) in enumerate(groups.items()):
        (folder / name).mkdir(exist_ok=True)
        for i in range(n):
            array = _pixels(100 * g + i, *size, channels)
            path = folder / name / f"img{i:03d}{suffix}"
            Image.fromarray(array).save(path)
            written[path] = array
    return written


def test_images_is_a_registered_data_kind():
    assert DATASETS.get("images") is ImagesConfig


@pytest.mark.parametrize("channels", [1, 3])
def test_labelled_folder_gives_flat_x_event_shape_labels_and_seeded_splits(tmp_path, channels):
    written = write_images(tmp_path / "imgs", {"cat": 12, "dog": 8, "emu": 10}, channels=channels)
    config = ImagesConfig(path=str(tmp_path / "imgs"), channels=channels, split_seed=3)
    bundle = config.load()
    assert bundle.event_shape == (channels, 6, 5)
    assert bundle.image_shape == ((6, 5) if channels == 1 else (3, 6, 5))
    assert bundle.dim == channels * 30 and bundle.num_classes == 3
    assert bundle.sizes == {"train": 22, "valid": 2, "test": 6}
    for name in ("train", "valid", "test"):
        part = bundle.split(name)
        assert part.x.dtype == torch.float32 and part.x.shape == (len(part), channels * 30)
        assert part.y.dtype == torch.int64 and set(part.y.tolist()) <= {0, 1, 2}
        assert float(part.x.min()) >= 0.0 and float(part.x.max()) <= 1.0
    everything = torch.cat([bundle.split(n).y for n in ("train", "valid", "test")])
    assert torch.bincount(everything).tolist() == [12, 8, 10]
    # each point is its file's pixels, channels first, / 255, with its class label
    x, y, classes = read_image_folder(tmp_path / "imgs", channels=channels)
    assert classes == ("cat", "dog", "emu") and y.tolist() == [0] * 12 + [1] * 8 + [2] * 10
    expected = [a[None] if channels == 1 else a.transpose(2, 0, 1) for a in written.values()]
    assert np.array_equal(x, np.stack(expected))
    by_row = {tuple(r.tolist()): int(lab) for r, lab in zip(x.reshape(30, -1), y, strict=True)}
    for part in (bundle.train, bundle.valid, bundle.test):
        for row, label in zip(part.x, part.y, strict=True):
            key = tuple(torch.round(row * 255).to(torch.uint8).tolist())
            assert by_row[key] == int(label)
    # the splits are seeded: the same seed the same split, another seed another
    again = ImagesConfig(path=str(tmp_path / "imgs"), channels=channels, split_seed=3).load()
    assert torch.equal(again.test.x, bundle.test.x)
    other = ImagesConfig(path=str(tmp_path / "imgs"), channels=channels, split_seed=4).load()
    assert not torch.equal(other.test.x, bundle.test.x)


def test_unlabelled_folder_resized_to_the_spec_and_converted(tmp_path):
    write_images(tmp_path / "flat", 10, size=(9, 7), channels=3, suffix=".jpg")
    (tmp_path / "flat" / "notes.txt").write_text("not an image: skipped")
    bundle = ImagesConfig(path=str(tmp_path / "flat"), height=4, width=3, channels=1).load()
    assert bundle.event_shape == (1, 4, 3) and bundle.image_shape == (4, 3)
    assert bundle.num_classes is None and bundle.train.y is None
    assert sum(bundle.sizes.values()) == 10 and bundle.dim == 12
    rgb = ImagesConfig(path=str(tmp_path / "flat"), height=2, width=5, channels=3).load()
    assert rgb.event_shape == (3, 2, 5) and rgb.dim == 30


def test_mixed_sizes_are_fine_when_resized(tmp_path):
    write_images(tmp_path / "d" / "a", 3, size=(6, 5))
    write_images(tmp_path / "d" / "b", 3, size=(8, 4))
    x, y, _ = read_image_folder(tmp_path / "d", channels=3, size=(5, 5))
    assert x.shape == (6, 3, 5, 5) and y.tolist() == [0, 0, 0, 1, 1, 1]


def test_images_spec_trains_binarized_with_a_bernoulli_likelihood(tmp_path):
    write_images(tmp_path / "imgs", {"a": 10, "b": 10}, channels=1)
    bundle = load_data(ImagesConfig(path=str(tmp_path / "imgs"), binarize="static"))
    assert bundle.is_binary and bundle.event_shape == (1, 6, 5)


# --------------------------------------------------------------------------------------
# event_shape of the other sources and of bundles


def test_event_shapes_of_the_built_in_and_npz_sources(tmp_path):
    digits = load_data("digits")
    assert digits.event_shape == (1, 8, 8) and digits.image_shape == (8, 8)
    for shape, image_shape in [
        ((20, 7), None),
        ((20, 4, 5), (4, 5)),
        ((20, 1, 4, 5), (4, 5)),
        ((20, 3, 4, 5), (3, 4, 5)),
        ((20,), None),
    ]:
        path = tmp_path / f"{len(shape)}-{shape[1] if len(shape) > 1 else 0}.npz"
        np.savez(path, x=np.random.default_rng(0).random(shape))
        bundle = load_data(DATASETS.get("npz")(path=str(path)))
        assert bundle.event_shape == (tuple(shape[1:]) or (1,)), shape
        assert bundle.image_shape == image_shape, shape
        assert bundle.train.x.dim() == 2  # x stays flat


def test_mnist_sources_declare_one_grey_channel(write_mnist, write_bmnist):
    from ppvae.data import BinarizedMnistConfig, MnistConfig, SourceData

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=12, dtype=np.uint8)
    folder = write_mnist(images, labels, images[:4], labels[:4])
    mnist = MnistConfig(path=str(folder)).load()
    assert mnist.event_shape == (1, 28, 28) and mnist.image_shape == (28, 28)
    binary = rng.integers(0, 2, size=(5, 784), dtype=np.uint8)
    folder = write_bmnist({"train": binary, "valid": binary[:2], "test": binary[:2]})
    bmnist = BinarizedMnistConfig(path=str(folder)).load()
    assert bmnist.event_shape == (1, 28, 28) and bmnist.image_shape == (28, 28)
    assert SourceData(Split(torch.zeros(2, 3))).event_shape is None


def test_bundle_derives_and_checks_its_shapes():
    part = Split(torch.zeros(4, 6))
    assert DataBundle("t", part, part, part).event_shape == (6,)
    assert DataBundle("t", part, part, part, image_shape=(2, 3)).event_shape == (1, 2, 3)
    rgb = Split(torch.zeros(4, 12))
    assert DataBundle("t", rgb, rgb, rgb, event_shape=(3, 2, 2)).image_shape == (3, 2, 2)
    assert DataBundle("t", part, part, part, event_shape=(1, 2, 3)).image_shape == (2, 3)
    assert DataBundle("t", part, part, part, event_shape=(2, 3)).image_shape is None
    with pytest.raises(DataError, match=r"event_shape \(2, 2\), which does not hold its 6"):
        DataBundle("t", part, part, part, event_shape=(2, 2))


# --------------------------------------------------------------------------------------
# bad inputs: one sentence each


def _one_sentence(err: BaseException) -> str:
    """The message of ``err``: one sentence on one line (as tests/data/conftest.py checks)."""
    text = str(err)
    assert text and "\n" not in text and not re.search(r"\.\s+[A-Z]", text), text
    return text


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as info:
        ImagesConfig(path=str(tmp_path / "empty")).load()
    assert "holds no image files" in _one_sentence(info.value)


def test_unreadable_file_is_named(tmp_path):
    write_images(tmp_path / "d" / "a", 3)
    write_images(tmp_path / "d" / "b", 3)
    bad = tmp_path / "d" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DataError) as info:
        ImagesConfig(path=str(tmp_path / "d"), channels=3).load()
    text = _one_sentence(info.value)
    assert text.startswith(f"cannot read image file {bad}:"), text


def test_mixed_sizes_without_resize(tmp_path):
    write_images(tmp_path / "d", 2, size=(6, 5))
    Image.fromarray(_pixels(9, 4, 4, 3)).save(tmp_path / "d" / "zz.png")
    with pytest.raises(DataError) as info:
        ImagesConfig(path=str(tmp_path / "d"), channels=3).load()
    text = _one_sentence(info.value)
    assert "zz.png is 4x4 (height x width)" in text and "is 6x5" in text
    assert "data.height and data.width" in text


def test_single_class_subfolder(tmp_path):
    write_images(tmp_path / "d" / "only", 4)
    with pytest.raises(DataError) as info:
        ImagesConfig(path=str(tmp_path / "d")).load()
    text = _one_sentence(info.value)
    assert "single class sub-folder 'only'" in text and "meaningless" in text


@pytest.mark.parametrize(
    ("layout", "fragment"),
    [
        ("missing", "does not exist"),
        ("files_and_folders", "holds both image files"),
        ("empty_class", "holds no image files"),
    ],
)
def test_other_bad_folders(tmp_path, layout, fragment):
    folder = tmp_path / "d"
    if layout == "files_and_folders":
        write_images(folder / "a", 2)
        write_images(folder / "b", 2)
        write_images(folder, 1)
    elif layout == "empty_class":
        write_images(folder / "a", 2)
        (folder / "b").mkdir()
    with pytest.raises(DataError) as info:
        ImagesConfig(path=str(folder)).load()
    assert fragment in _one_sentence(info.value)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({}, "data.path is required"),
        ({"path": "x", "channels": 2}, "data.channels must be 1 (grey) or 3 (RGB)"),
        ({"path": "x", "height": 4}, "data.height and data.width must both be positive"),
        ({"path": "x", "height": -1, "width": -1}, "must both be positive"),
    ],
)
def test_bad_options_are_spec_errors(options, fragment):
    with pytest.raises(SpecError) as info:
        ImagesConfig(**options)
    assert fragment in _one_sentence(info.value)


def _bad_folder(folder, case: str) -> None:
    if case == "single class":
        write_images(folder / "only", 3)
    elif case == "empty":
        folder.mkdir(parents=True)
        (folder / "readme.txt").write_text("no images here")
    elif case == "unreadable":
        write_images(folder / "a", 3)
        write_images(folder / "b", 3)
        (folder / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    elif case == "mixed sizes":
        write_images(folder, 2, size=(6, 5))
        Image.fromarray(_pixels(9, 4, 4, 3)).save(folder / "zz.png")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("single class", "single class sub-folder"),
        ("empty", "holds no image files"),
        ("unreadable", "broken.png"),
        ("mixed sizes", "data.height and data.width"),
    ],
)
def test_cli_prints_the_error_and_exits_2(tmp_path, case, fragment):
    """Each bad folder: one ``error:`` line, exit status 2, no run folder (a conv spec,
    which reads the images as images)."""
    _bad_folder(tmp_path / "d", case)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "ppvae", "train", str(REPO / "models" / "conv_vae_digits.toml")]
    argv += ["--set", "data.kind=images", "--set", f"data.path={tmp_path / 'd'}"]
    argv += ["--out", str(tmp_path / "run"), "--no-progress"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0], lines[0]
    assert not (tmp_path / "run").exists()
