"""Image grids of any C x H x W (issue 17): RGB drawn in colour, grey exactly as before, and
``ppvae train`` on a generated folder of RGB PNGs writing colour figures."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

from ppvae.cli import main
from ppvae.report import image_grid, image_grid_png, save_image_grid, save_reconstructions

REPO = Path(__file__).resolve().parents[1]


def _colours() -> torch.Tensor:
    """Two 3x2x2 images (channels first, flattened): pure red and pure blue."""
    red = torch.zeros(3, 2, 2)
    red[0] = 1
    blue = torch.zeros(3, 2, 2)
    blue[2] = 1
    return torch.stack([red, blue]).reshape(2, 12)


def test_rgb_grid_puts_each_channel_in_place():
    grid = image_grid(_colours(), (3, 2, 2), ncols=2)
    assert grid.shape == (4, 7, 3)
    assert np.array_equal(grid[1:3, 1:3], np.broadcast_to([1.0, 0.0, 0.0], (2, 2, 3)))
    assert np.array_equal(grid[1:3, 4:6], np.broadcast_to([0.0, 0.0, 1.0], (2, 2, 3)))
    assert (grid[0] == 1).all() and (grid[:, 3] == 1).all()  # white gaps


def test_grey_grids_are_unchanged():
    images = torch.rand(10, 64)
    grey = image_grid(images, (8, 8), ncols=4)
    assert grey.shape == (3 * 9 + 1, 4 * 9 + 1)
    assert np.array_equal(image_grid(images, (1, 8, 8), ncols=4), grey)
    # the PNG bytes of the former implementation (np.kron, grey colour map)
    scale = max(1, 512 // max(grey.shape))
    buf = io.BytesIO()
    big = np.kron(grey, np.ones((scale, scale), dtype=np.float32))
    plt.imsave(buf, big, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    assert image_grid_png(images, (8, 8), ncols=4) == buf.getvalue()


def test_rgb_grid_png_is_written_at_its_size_in_colour(tmp_path):
    images = _colours().repeat(5, 1)  # 10 images, 3 x 2 x 2
    path = tmp_path / "grid.png"
    save_image_grid(images, (3, 2, 2), path, ncols=4)
    rows, cols = 3 * 3 + 1, 4 * 3 + 1  # 3 rows of 4, 1-pixel gaps
    scale = 512 // max(rows, cols)
    with Image.open(path) as png:
        assert png.size == (cols * scale, rows * scale)
        pixels = np.asarray(png.convert("RGB"))
    assert tuple(pixels[scale + 1, scale + 1]) == (255, 0, 0)
    assert tuple(pixels[scale + 1, 4 * scale + 1]) == (0, 0, 255)
    with Image.open(io.BytesIO(image_grid_png(images, (3, 2, 2), 4, scale=1))) as png:
        assert png.size == (cols, rows)
    recon = tmp_path / "recon.png"
    save_reconstructions(images[:3], images[:3].flip(0), (3, 2, 2), recon)
    with Image.open(recon) as png:  # data above reconstructions: 2 rows of 3
        assert png.size == ((3 * 3 + 1) * (512 // 10), (2 * 3 + 1) * (512 // 10))


def _run_cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_train_on_a_folder_of_rgb_pngs_draws_colour_figures(tmp_path):
    rng = np.random.default_rng(0)
    for c, name in enumerate(("reds", "blues")):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(12):
            array = rng.integers(0, 80, size=(6, 5, 3), dtype=np.uint8)
            array[..., 2 * c] += 170  # reds: strong red channel; blues: strong blue
            Image.fromarray(array).save(tmp_path / "imgs" / name / f"{i}.png")
    run_dir = tmp_path / "run"
    overrides = {
        "data.kind": "images",
        "data.path": tmp_path / "imgs",
        "data.channels": 3,
        "data.binarize": "none",
        "likelihood.kind": "gaussian",
        "model.hidden": "[8]",
        "model.latent_dim": 2,
        "train.epochs": 2,
        "train.batch_size": 8,
    }
    argv = ["train", REPO / "models" / "vae.toml", "--out", run_dir, "--no-progress"]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]
    code, out, err = _run_cli(argv)
    assert code == 0, err
    assert "epochs: 2" in out
    for name in ("decoder-means", "reconstructions", "traversals", "interpolations"):
        with Image.open(run_dir / "figures" / f"{name}.png") as png:
            rgb = np.asarray(png.convert("RGB")).astype(int)
        assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 20).any(), name  # colour, not grey
    from ppvae.run import load_run

    run = load_run(run_dir)
    assert run.data.event_shape == (3, 6, 5) and run.data.num_classes == 2
    assert run.data.train.x.shape[1] == 90
