"""Figures of a run: training curves, image grids (decoder means of prior draws, data
beside reconstructions, latent traversals and interpolations), the latent usage (KL per
latent dimension and activity) (PNG).

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
    "curves_png",
    "compare_curves_png",
    "save_image_grid",
    "save_reconstructions",
    "reconstruction_grid",
    "image_grid",
    "image_grid_png",
    "new_figure",
    "figure_png",
    "latent_usage_png",
]


def new_figure(width: float, height: float):
    """A matplotlib figure on the Agg canvas (pyplot's state and backend are left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
    """The PNG bytes of a figure of :func:`new_figure` (laid out tight, 100 dpi)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def curves_png(records: Sequence[dict[str, Any]], *, best: dict[str, Any] | None = None) -> bytes:
    """The training curves as a PNG: minus the training loss (the training bound) and the
    validation ELBO per epoch; ``best``, one of the records, marked when given."""
    fig = new_figure(7.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    _draw_curves(ax, records)
    if best is not None:
        y = best["valid_elbo"] if best.get("valid_elbo") is not None else -best["train_loss"]
        ax.axvline(best["epoch"], color="tab:green", linestyle="--", linewidth=1)
        ax.plot([best["epoch"]], [y], marker="*", markersize=14, color="tab:green", linestyle="")
        ax.plot([], [], color="tab:green", linestyle="--", label=f"best epoch {best['epoch']}")
    _finish_curves(ax)
    return figure_png(fig)


def compare_curves_png(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> bytes:
    """The curves of several runs overlaid as a PNG (``runs``: name and records): one
    colour per run, the validation ELBO solid, the training bound dashed, each run's best
    epoch starred."""
    fig = new_figure(8.5, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, records) in enumerate(runs):
        _draw_curves(ax, records, name=name, color=colors[i % len(colors)], mark_best=True)
    _finish_curves(ax)
    return figure_png(fig)


def _draw_curves(
    ax, records, *, name: str | None = None, color=None, mark_best: bool = False
) -> None:
    """Minus the training loss (dashed when ``name`` is given) and the validation ELBO of
    ``records`` on ``ax``; labelled with ``name`` when given."""
    epochs = [r["epoch"] for r in records]
    train = [-r["train_loss"] if _number(r.get("train_loss")) else math.nan for r in records]
    prefix = "" if name is None else f"{name}: "
    ax.plot(
        epochs,
        train,
        marker="." if name is None else None,
        linestyle="-" if name is None else "--",
        color=color,
        alpha=1.0 if name is None else 0.6,
        label=f"{prefix}train bound (minus train loss)",
    )
    valid = [r.get("valid_elbo") for r in records]
    if any(_number(v) for v in valid):
        values = [v if _number(v) else math.nan for v in valid]
        ax.plot(epochs, values, marker=".", color=color, label=f"{prefix}valid ELBO")
        if mark_best and any(math.isfinite(v) for v in values):
            best = max((v, e) for v, e in zip(values, epochs, strict=True) if math.isfinite(v))
            ax.plot([best[1]], [best[0]], marker="*", markersize=12, color=color, linestyle="")


def _finish_curves(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per data point")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")


def plot_curves(records: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write :func:`curves_png` of ``records`` to ``path`` (atomically: a link at ``path``
    is replaced, never followed)."""
    write_bytes_atomic(path, curves_png(records))


def _channels(image_shape: Sequence[int]) -> int:
    """3 when ``image_shape`` is ``(3, H, W)`` (drawn in colour), else 1 (grey tiles of
    the last two sizes, as many as the other sizes hold)."""
    return 3 if len(image_shape) >= 3 and int(image_shape[-3]) == 3 else 1


def image_grid(images: torch.Tensor, image_shape: Sequence[int], ncols: int = 8) -> np.ndarray:
    """Tile ``images`` ``(N, prod(image_shape))`` into one array with 1-pixel gaps.

    ``image_shape`` ``(H, W)`` or ``(1, H, W)``: a grey grid ``(rows, cols)``;
    ``(3, H, W)`` (channels first, as :attr:`ppvae.data.DataBundle.event_shape`): an RGB
    grid ``(rows, cols, 3)``. Values are clamped to [0, 1]; the gaps are white.

    Example:
        >>> image_grid(torch.rand(5, 3 * 4 * 2), (3, 4, 2), ncols=3).shape
        (11, 10, 3)
    """
    h, w = (int(s) for s in image_shape[-2:])
    c = _channels(image_shape)
    imgs = images.detach().float().cpu().clamp(0, 1).reshape(-1, c, h, w)
    imgs = imgs.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    n = imgs.shape[0]
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    grid = np.ones((nrows * (h + 1) + 1, ncols * (w + 1) + 1, c), dtype=np.float32)
    for i, img in enumerate(imgs):
        r, col = divmod(i, ncols)
        top, left = 1 + r * (h + 1), 1 + col * (w + 1)
        grid[top : top + h, left : left + w] = img
    return grid[..., 0] if c == 1 else grid


def save_image_grid(
    images: torch.Tensor, image_shape: Sequence[int], path: str | Path, ncols: int = 8
) -> None:
    """Save a grid of images (values in [0, 1]) as a PNG, scaled up for viewing (written
    atomically: a link at ``path`` is replaced, never followed); grey, or RGB for an
    ``image_shape`` ``(3, H, W)``."""
    write_bytes_atomic(path, image_grid_png(images, image_shape, ncols))


def image_grid_png(
    images: torch.Tensor, image_shape: Sequence[int], ncols: int = 8, *, scale: int | None = None
) -> bytes:
    """The PNG bytes of :func:`save_image_grid`: every pixel ``scale`` pixels wide (by
    default as many as keep the grid within 512 pixels; ``scale=1``: the grid's own
    resolution, for a browser to scale up)."""
    grid = image_grid(images, image_shape, ncols)
    if scale is None:
        scale = max(1, 512 // max(grid.shape[:2]))
    big = grid if scale == 1 else grid.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    plt.imsave(buf, big, cmap="gray", vmin=0.0, vmax=1.0, format="png")  # RGB: no cmap
    return buf.getvalue()


def reconstruction_grid(data: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Data (odd rows) above their reconstructions (even rows): the images of one grid,
    and its number of columns (a short last row is padded with blank images)."""
    n = data.shape[0]
    ncols = min(n, 8)
    rows = []
    for i in range(0, n, ncols):
        chunks = [data[i : i + ncols], recon[i : i + ncols]]
        pad = ncols - chunks[0].shape[0]
        rows.extend(torch.cat([c, c.new_ones(pad, *c.shape[1:])]) for c in chunks)
    return torch.cat(rows), ncols


def save_reconstructions(
    data: torch.Tensor, recon: torch.Tensor, image_shape: Sequence[int], path: str | Path
) -> None:
    """Save data (odd rows) above their reconstructions (even rows) as one PNG grid."""
    images, ncols = reconstruction_grid(data, recon)
    save_image_grid(images, image_shape, path, ncols=ncols)


def latent_usage_png(diag: dict[str, Any], *, title: str | None = None) -> bytes:
    """A PNG of the latent usage of :func:`ppvae.latents.latent_diagnostics`: the KL per
    latent dimension as bars (when defined) and the activity
    :math:`\\mathrm{Cov}_x(E_q[z_u|x])` per dimension as dots on a log axis, with the
    active-unit threshold."""
    from matplotlib.ticker import MaxNLocator

    activity = np.asarray(diag["activity"], dtype=np.float64)
    dims = np.arange(1, activity.size + 1)
    threshold = float(diag.get("active_threshold", 0.01))
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    kl = diag.get("kl_per_dim")
    method = str(diag.get("kl_method", "")).replace("_", " ")
    if kl is not None:
        ax.bar(dims, kl, color="tab:blue", alpha=0.8, label=f"KL per dimension ({method})")
        ax.set_ylabel("KL(q(z_u|x) || p(z_u)), nats")
    else:
        ax.set_ylabel("KL per dimension: not defined")
        ax.text(
            0.5,
            0.5,
            f"KL per dimension not defined (guide or prior does not factorize);\n"
            f"total KL {diag.get('kl', math.nan):.3f} nats ({method})",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize="small",
        )
    ax.set_xlabel("latent dimension u")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax.twinx()
    floor = max(threshold * 1e-3, 1e-8)
    active = activity > threshold
    ax2.scatter(dims[active], np.maximum(activity[active], floor), color="tab:green", zorder=3,
                label="activity (active)")  # fmt: skip
    if (~active).any():
        ax2.scatter(dims[~active], np.maximum(activity[~active], floor), color="tab:red",
                    marker="x", zorder=3, label="activity (inactive)")  # fmt: skip
    ax2.axhline(threshold, color="tab:gray", linestyle="--", linewidth=1)
    ax2.set_yscale("log")
    ax2.set_ylabel("Cov_x(E_q[z_u|x])")
    handles = [h for a in (ax, ax2) for h in a.get_legend_handles_labels()[0]]
    labels = [lab for a in (ax, ax2) for lab in a.get_legend_handles_labels()[1]]
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3,
              fontsize="small", frameon=False)  # fmt: skip
    ax.set_title(
        title
        or f"{diag['active_units']} of {activity.size} units active "
        f"(Cov > {threshold:g}); KL {diag.get('kl', math.nan):.2f} nats"
    )
    return figure_png(fig)
