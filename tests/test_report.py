"""Figures: image grid layout with 1-pixel gaps, PNG files."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pytest
import torch

from ppvae.report import image_grid, plot_curves, save_image_grid, save_reconstructions

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes=100):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) >= min_bytes
    return matplotlib.image.imread(path)


@pytest.mark.parametrize(
    ("n", "ncols", "rows", "cols"),
    [
        (1, 8, 1, 1),
        (6, 3, 2, 3),
        (7, 3, 3, 3),
        (8, 8, 1, 8),
        (9, 8, 2, 8),
        (5, 10, 1, 5),
        (4, 0, 4, 1),
    ],
)
def test_image_grid_shape(n, ncols, rows, cols):
    h, w = 2, 3
    grid = image_grid(torch.rand(n, h * w), (h, w), ncols=ncols)
    assert grid.shape == (rows * (h + 1) + 1, cols * (w + 1) + 1)
    assert grid.dtype == np.float32


def test_image_grid_places_each_image_between_gaps():
    h, w, n, ncols = 2, 3, 5, 2
    images = torch.stack([torch.full((h * w,), (i + 1) / 10) for i in range(n)])
    images[0] = torch.arange(h * w) / 10  # not constant: checks the orientation
    grid = image_grid(images, (h, w), ncols=ncols)
    for i in range(n):
        r, c = divmod(i, ncols)
        top, left = 1 + r * (h + 1), 1 + c * (w + 1)
        np.testing.assert_allclose(
            grid[top : top + h, left : left + w], images[i].reshape(h, w).numpy()
        )
    # gaps (and the unused cell of the last row) are white
    assert (grid[0, :] == 1).all() and (grid[:, 0] == 1).all()
    assert (grid[h + 1, :] == 1).all() and (grid[:, w + 1] == 1).all()
    assert (grid[1 + 2 * (h + 1) : 1 + 2 * (h + 1) + h, 1 + (w + 1) : 1 + (w + 1) + w] == 1).all()
    covered = n * h * w
    assert int((grid != 1).sum()) <= covered


def test_image_grid_clamps_to_the_unit_interval():
    grid = image_grid(torch.tensor([[-1.0, 0.5, 2.0, 0.25]]), (2, 2))
    np.testing.assert_allclose(grid[1:3, 1:3], [[0.0, 0.5], [1.0, 0.25]])


def test_image_grid_takes_channel_shapes_and_grad_tensors():
    images = torch.rand(3, 1 * 4 * 4, requires_grad=True)
    assert image_grid(images, (1, 4, 4)).shape == (6, 16)


def test_save_image_grid_writes_a_scaled_png(tmp_path):
    path = tmp_path / "grid.png"
    save_image_grid(torch.rand(6, 64), (8, 8), path, ncols=3)
    pixels = assert_png(path)
    grid_shape = (2 * 9 + 1, 3 * 9 + 1)
    scale = max(1, 512 // max(grid_shape))
    assert pixels.shape[:2] == (grid_shape[0] * scale, grid_shape[1] * scale)


def _recon_pixels(tmp_path, n):
    path = tmp_path / f"recon{n}.png"
    save_reconstructions(torch.zeros(n, 4), torch.ones(n, 4), (2, 2), path)
    pixels = assert_png(path)
    return pixels[..., 0] if pixels.ndim == 3 else pixels


@pytest.mark.parametrize(
    "n",
    [
        8,
        16,
        10,
    ],
)
def test_save_reconstructions_alternates_data_and_reconstruction_rows(tmp_path, n):
    grey = _recon_pixels(tmp_path, n)
    ncols = min(n, 8)
    rows = 2 * math.ceil(n / ncols)
    grid_shape = (rows * 3 + 1, ncols * 3 + 1)
    scale = max(1, 512 // max(grid_shape))
    assert grey.shape == (grid_shape[0] * scale, grid_shape[1] * scale)
    for row in range(rows):
        value = grey[(1 + row * 3) * scale, 1 * scale]  # first pixel of the row's first image
        assert value == pytest.approx(0.0 if row % 2 == 0 else 1.0, abs=0.01), row


def test_plot_curves_with_and_without_validation(tmp_path):
    records = [
        {"epoch": 1, "train_loss": 5.0, "valid_elbo": -5.5},
        {"epoch": 2, "train_loss": 4.0, "valid_elbo": None},
        {"epoch": 3, "train_loss": math.nan},
    ]
    plot_curves(records, tmp_path / "a.png")
    assert_png(tmp_path / "a.png", min_bytes=1000)
    plot_curves([{"epoch": 1, "train_loss": 1.0}], tmp_path / "b.png")
    assert_png(tmp_path / "b.png", min_bytes=1000)
