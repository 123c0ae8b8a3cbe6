"""Figures of a run: training curves, sample grids, data beside reconstructions (PNG).

Example:
    >>> import tempfile, torch
    >>> path = tempfile.mkdtemp() + "/grid.png"
    >>> save_image_grid(torch.rand(6, 64), (8, 8), path, ncols=3)
    >>> import os; os.path.getsize(path) > 0
    True
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ppvae.rundir import write_bytes_atomic  # noqa: E402

__all__ = [
    "plot_curves",
    "save_image_grid",
    "save_reconstructions",
    "image_grid",
    "image_grid_png",
]


def plot_curves(records: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Plot the training bound (minus the training loss) and the validation ELBO per epoch."""
    epochs = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    train = [-r["train_loss"] if r.get("train_loss") is not None else math.nan for r in records]
    ax.plot(epochs, train, marker=".", label="train bound (minus loss)")
    valid = [r.get("valid_elbo") for r in records]
    if any(v is not None for v in valid):
        ax.plot(
            epochs, [math.nan if v is None else v for v in valid], marker=".", label="valid ELBO"
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per data point")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def image_grid(images: torch.Tensor, image_shape: Sequence[int], ncols: int = 8) -> np.ndarray:
    """Tile ``images`` ``(N, prod(image_shape))`` into one array with 1-pixel gaps."""
    h, w = image_shape[-2:]
    imgs = images.detach().float().cpu().clamp(0, 1).reshape(-1, h, w).numpy()
    n = imgs.shape[0]
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    grid = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1), dtype=np.float32)
    for i, img in enumerate(imgs):
        r, c = divmod(i, ncols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    return grid


def save_image_grid(
    images: torch.Tensor, image_shape: Sequence[int], path: str | Path, ncols: int = 8
) -> None:
    """Save a grid of images (values in [0, 1]) as a PNG, scaled up for viewing (written
    atomically: a link at ``path`` is replaced, never followed)."""
    write_bytes_atomic(path, image_grid_png(images, image_shape, ncols))


def image_grid_png(images: torch.Tensor, image_shape: Sequence[int], ncols: int = 8) -> bytes:
    """The PNG bytes of :func:`save_image_grid`."""
    grid = image_grid(images, image_shape, ncols)
    scale = max(1, 512 // max(grid.shape))
    big = np.kron(grid, np.ones((scale, scale), dtype=np.float32))
    buf = io.BytesIO()
    plt.imsave(buf, big, cmap="gray", vmin=0.0, vmax=1.0, format="png")
    return buf.getvalue()


def save_reconstructions(
    data: torch.Tensor, recon: torch.Tensor, image_shape: Sequence[int], path: str | Path
) -> None:
    """Save data (odd rows) above their reconstructions (even rows) as one PNG grid."""
    n = data.shape[0]
    ncols = min(n, 8)
    rows = []
    for i in range(0, n, ncols):
        chunks = [data[i : i + ncols], recon[i : i + ncols]]
        pad = ncols - chunks[0].shape[0]  # a short last row is padded with blank images
        rows.extend(torch.cat([c, c.new_ones(pad, *c.shape[1:])]) for c in chunks)
    save_image_grid(torch.cat(rows), image_shape, path, ncols=ncols)
