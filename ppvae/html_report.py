r"""A self-contained HTML report of a run folder: ``RUN/report.html``.

:func:`write_report` gathers what a run folder holds into one HTML file that opens in any
browser, offline: every figure is an embedded PNG (``data:image/png;base64,...``), the
style sheet is inline, and nothing is fetched from anywhere. The report shows

* run facts: epochs run, best epoch, wall time (the sum of the epochs' ``seconds`` in
  ``metrics.jsonl``), data sizes, parameter count and library versions;
* the resolved spec (``spec.toml``) as a table, and as text;
* the training curves: minus the training loss and the validation ELBO per epoch, the
  best epoch marked;
* decoder means :math:`E[x | z]` of draws :math:`z` from the prior (not samples of
  :math:`x`), and test data above their reconstructions, drawn from the ``best.pt``
  weights with the spec's seed (models with ``generate`` / ``reconstruct``, image data);
* the latent space: the guide's posterior means :math:`E_q[z | x]` of up to
  :data:`LATENT_POINTS` test points, projected on their first two principal axes (or as
  they are when :math:`z` is 2-D), coloured by label when the data have labels;
* latent diagnostics (guides with an amortized posterior): the KL per latent dimension and
  the active units (Burda et al. 2016) of the validation data, active units per epoch
  from ``metrics.jsonl``, latent traversals (one dimension varied, the others at the
  prior mean) and interpolations between test points (:mod:`ppvae.latents`);
* every evaluation in ``RUN/evaluation/*.json`` (written by ``ppvae evaluate``) as a
  table row (with the mutual information :math:`I(x; z)` and the ELBO's
  reconstruction/KL split where the evaluation has them), with its :math:`\hat k` plot.

A section whose inputs are missing (no evaluation yet, data that are not images, a guide
without an amortized posterior) holds a one-line note instead.

Example (``ppvae report RUN_DIR`` on the command line)::

    from ppvae.html_report import write_report
    path = write_report("runs/vae")        # runs/vae/report.html
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import platform
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppvae._version import __version__
from ppvae.errors import PpvaeError, RunDirError, SpecChangedError
from ppvae.infer.isolation import isolated_param_store
from ppvae.infer.traces import eval_mode
from ppvae.models.abilities import (
    AmortizedPosterior,
    Generates,
    LayeredPosterior,
    Reconstructs,
)
from ppvae.report import curves_png, figure_png, image_grid_png, new_figure, reconstruction_grid
from ppvae.rundir import check_no_links, check_output_path, write_text_atomic, writing

__all__ = ["write_report", "LATENT_POINTS", "REPORT_FILE"]

#: The report's file name inside the run folder.
REPORT_FILE = "report.html"
#: At most this many test points in the latent-space view.
LATENT_POINTS = 1000
_NUM_SAMPLES = 64
_NUM_RECONSTRUCTIONS = 32
_SPEC_FILE = "spec.toml"


# --------------------------------------------------------------------------- helpers


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG (from its IHDR chunk)."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _figure(
    png: bytes, alt: str, caption: str, *, width: int | None = None, pixelated: bool = False
) -> str:
    """An embedded PNG shown ``width`` pixels wide (its own width by default), captioned."""
    natural, _ = _png_size(png)
    width = width or natural
    klass = ' class="pixelated"' if pixelated else ""
    img = f'<img src="{_png_uri(png)}" alt="{_esc(alt)}" width="{width}"{klass}>'
    return (
        f'<figure style="width: {width + 2}px">{img}'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def _grid_png(images: torch.Tensor, image_shape: Sequence[int], ncols: int) -> tuple[bytes, int]:
    """A grey-scale PNG of an image grid at its own resolution, and a display width
    (an integer multiple of it, about 300-480 pixels): the browser scales it up."""
    png = image_grid_png(images, image_shape, ncols, scale=1)
    width, height = _png_size(png)
    return png, width * max(1, 480 // max(width, height))


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)[:40]
    except OverflowError:  # an integer of hundreds of digits
        return "n/a (out of range)"
    if not math.isfinite(x):
        return "n/a" if math.isnan(x) else str(x)
    return format(x, spec)


def _fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)} min {secs:.0f} s"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes)} min"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; cells are already HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _safely(what: str, make: Callable[[], str]) -> str:
    """``make()``, or a note naming what failed (a report shows what it can)."""
    try:
        return make()
    except Exception as err:  # a figure that cannot be drawn must not lose the report
        reason = str(err).splitlines()[0] if str(err) else ""
        return _note(f"{what} failed: {err.__class__.__name__}{': ' + reason if reason else ''}")


# --------------------------------------------------------------------------- inputs


#: Fields of an epoch record that hold numbers.
_NUMERIC_FIELDS = ("step", "train_loss", "valid_elbo", "kl_weight", "seconds", "skipped_steps")


def _is_number(value: Any) -> bool:
    """An int or float that converts to a float (not a bool, not a 400-digit integer)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]]]:
    """The epoch records of ``metrics.jsonl``, the number of unreadable lines (not JSON,
    or with a field that should be a number and is not), and the resume notes."""
    records, bad, notes = [], 0, []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if isinstance(record, dict) and "resumed" in record and "epoch" not in record:
            notes.append(record)
        elif (
            isinstance(record, dict)
            and isinstance(record.get("epoch"), int)
            and _is_number(record["epoch"])
            and all(record.get(k) is None or _is_number(record[k]) for k in _NUMERIC_FIELDS)
        ):
            records.append(record)
        else:
            bad += 1
    return records, bad, notes


def _resume_rows(notes: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """One facts row per resume that changed optimization settings."""
    rows = []
    for note in notes:
        changed = note.get("changed")
        if not isinstance(changed, dict):
            continue
        parts = []
        for key, change in changed.items():
            if isinstance(change, dict):
                parts.append(f"{key} {change.get('from')!r} -> {change.get('to')!r}")
        after = note.get("after_epoch", "?")
        rows.append((f"resumed after epoch {after}", _esc("; ".join(parts) or "no change")))
    return rows


def _best_record(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch ``best.pt`` holds: the highest validation ELBO (or, without validation
    data, the lowest training loss); the first such epoch on ties, as training does."""

    def monitored(r: dict[str, Any]) -> float:
        v = r.get("valid_elbo")
        if v is None:
            v = -r["train_loss"] if r.get("train_loss") is not None else -math.inf
        return v if math.isfinite(v) else -math.inf

    if not records:
        return None
    best = max(records, key=monitored)
    return best if math.isfinite(monitored(best)) else None


def _versions() -> list[tuple[str, str]]:
    import matplotlib
    import pyro

    return [
        ("ppvae", __version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("pyro-ppl", pyro.__version__),
        ("numpy", np.__version__),
        ("matplotlib", matplotlib.__version__),
    ]


# --------------------------------------------------------------------------- sections


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2>{body}</section>'


def _facts_section(
    path: Path, spec_dict: dict | None, records, bad_lines, run, load_error, notes=()
) -> str:
    rows: list[tuple[str, str]] = [("run folder", f"<code>{_esc(path.resolve())}</code>")]
    if spec_dict:
        model = spec_dict.get("model", {}).get("kind", "?")
        data = spec_dict.get("data", {}).get("kind", "?")
        objective = spec_dict.get("objective", {}).get("kind", "?")
        rows.append(("model / data / objective", _esc(f"{model} / {data} / {objective}")))
    if records:
        last = records[-1]
        planned = (spec_dict or {}).get("train", {}).get("epochs")
        epochs = f"{last['epoch']}" + (f" of {planned}" if planned is not None else "")
        rows.append(("epochs run", _esc(epochs)))
        best = _best_record(records)
        if best is not None:
            what = (
                f"valid ELBO {_fmt(best['valid_elbo'])}"
                if best.get("valid_elbo") is not None
                else f"train loss {_fmt(best.get('train_loss'))}"
            )
            rows.append(("best epoch", _esc(f"{best['epoch']} ({what}; checkpoints/best.pt)")))
        rows.append(("final train loss", _esc(_fmt(last.get("train_loss")))))
        seconds = [r["seconds"] for r in records if isinstance(r.get("seconds"), (int, float))]
        if seconds:
            total = float(sum(seconds))
            rows.append(
                (
                    "wall time",
                    _esc(f"{_fmt_seconds(total)} ({total / len(seconds):.2f} s per epoch)"),
                )
            )
        skipped = sum(int(r.get("skipped_steps") or 0) for r in records)
        if skipped:
            rows.append(("skipped steps (non-finite loss)", _esc(skipped)))
    rows.extend(_resume_rows(notes))
    if bad_lines:
        rows.append(("metrics.jsonl", _esc(f"{bad_lines} unreadable line(s) left out")))
    if run is not None:
        sizes = ", ".join(f"{k} {v}" for k, v in run.data.sizes.items())
        rows.append(("data", _esc(f"{run.data.name}: {sizes}; {run.data.dim} features")))
        if run.data.image_shape is not None:
            rows.append(("image shape", _esc(" x ".join(map(str, run.data.image_shape)))))
        if run.data.num_classes:
            rows.append(("classes", _esc(run.data.num_classes)))
        params = {id(p): p.numel() for m in (run.model, run.guide) for p in m.parameters()}
        rows.append(("parameters (model + guide)", _esc(f"{sum(params.values()):,}")))
    elif load_error:
        rows.append(("model", _esc(f"not loaded: {load_error}")))
    versions = ", ".join(f"{name} {v}" for name, v in _versions())
    rows.append(("library versions", _esc(versions)))
    body = "".join(f'<tr><th scope="row">{k}</th><td>{v}</td></tr>' for k, v in rows)
    return _section("run", "Run", f'<table class="facts"><tbody>{body}</tbody></table>')


def _spec_section(spec_text: str | None, spec_dict: dict | None, error: str | None) -> str:
    if spec_text is None:
        return _section("spec", "Spec", _note("no spec.toml"))
    parts = []
    if spec_dict is not None:
        tables, loose = [], []
        for section, values in spec_dict.items():
            if not isinstance(values, dict):
                loose.append((section, values))
                continue
            rows = "".join(
                f"<tr><td><code>{_esc(k)}</code></td><td><code>{_esc(_toml_value(v))}</code></td></tr>"
                for k, v in values.items()
            )
            tables.append(
                f'<table class="spec"><thead><tr><th colspan="2"><code>[{_esc(section)}]</code>'
                f"</th></tr></thead><tbody>{rows}</tbody></table>"
            )
        if loose:
            rows = "".join(
                f"<tr><td><code>{_esc(k)}</code></td><td><code>{_esc(_toml_value(v))}</code></td></tr>"
                for k, v in loose
            )
            tables.insert(0, f'<table class="spec"><tbody>{rows}</tbody></table>')
        parts.append(f'<div class="row spec-tables">{"".join(tables)}</div>')
    else:
        parts.append(_note(f"spec.toml cannot be parsed: {error}"))
    parts.append(
        f"<details><summary>spec.toml as written</summary><pre>{_esc(spec_text)}</pre></details>"
    )
    return _section("spec", "Spec (resolved)", "".join(parts))


def _curves_section(records, metrics_note: str | None) -> str:
    if metrics_note:
        return _section("curves", "Training curves", _note(metrics_note))
    body = _safely(
        "the training-curve plot",
        lambda: _figure(
            curves_png(records, best=_best_record(records)),
            "training curves",
            "Minus the training loss (the training bound, KL warm-up included) and the "
            "validation ELBO per epoch; the star marks the best epoch (checkpoints/best.pt).",
        ),
    )
    return _section("curves", "Training curves", body)


def _images_section(run, load_error: str | None) -> str:
    title = "Decoder means and reconstructions"
    if run is None:
        return _section("samples", title, _note(f"model not loaded: {load_error}"))
    shape = run.data.image_shape
    if shape is None:
        return _section("samples", title, _note("the data are not images: no image grids"))
    from ppvae.run import model_inputs

    figures = []
    seed = run.spec.train.seed

    def samples() -> str:
        with torch.random.fork_rng(devices=[]), isolated_param_store():
            torch.manual_seed(seed)
            x = run.model.generate(_NUM_SAMPLES).cpu()
        png, width = _grid_png(x, shape, 8)
        return _figure(
            png,
            "decoder means of prior draws",
            f"Decoder means E[x | z] of {_NUM_SAMPLES} draws z from the prior (seed {seed}): "
            "the expected images, not samples of x.",
            width=width,
            pixelated=True,
        )

    def reconstructions() -> str:
        test = run.data.test
        generator = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(test), generator=generator)[:_NUM_RECONSTRUCTIONS]
        inputs = [t[idx].to(run.device) for t in model_inputs(run.spec, test)]
        with torch.random.fork_rng(devices=[]), isolated_param_store():
            torch.manual_seed(seed)
            recon = run.model.reconstruct(inputs[0], run.guide, *inputs[1:]).cpu()
        data = inputs[0].cpu()
        images, ncols = reconstruction_grid(data, recon)
        png, width = _grid_png(images, shape, ncols)
        return _figure(
            png,
            "test data and reconstructions",
            f"{len(data)} test images (odd rows) above their reconstructions (even rows, "
            "decoded at the guide's posterior mean).",
            width=width,
            pixelated=True,
        )

    if isinstance(run.model, Generates):
        figures.append(_safely("drawing samples", samples))
    else:
        figures.append(_note(f"model kind {run.spec.model.kind!r} has no generate(n): no samples"))
    if isinstance(run.model, Reconstructs):
        if len(run.data.test):
            figures.append(_safely("reconstructing test data", reconstructions))
        else:
            figures.append(_note("the test split is empty: no reconstructions"))
    else:
        figures.append(
            _note(f"model kind {run.spec.model.kind!r} has no reconstruct(): no reconstructions")
        )
    return _section("samples", title, f'<div class="row">{"".join(figures)}</div>')


def _posterior_means(run, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, str] | str:
    """The guide's posterior means for ``inputs`` and what they are, or a note why not."""
    guide = run.guide
    if isinstance(guide, AmortizedPosterior):
        q, name = guide.posterior(*inputs), "z | x" + (", y" if len(inputs) > 1 else "")
    elif isinstance(guide, LayeredPosterior):
        q, name = guide.q_z1(inputs[0]), "z1 | x"
    else:
        return (
            f"the guide of model kind {run.spec.model.kind!r} has no amortized posterior "
            "q(z|x) (a posterior(x) method): no latent-space view"
        )
    try:
        mean, how = q.mean, "posterior means"
    except NotImplementedError:  # e.g. normalizing flows: a Monte Carlo mean
        mean, how = q.sample((32,)).mean(0), "posterior means (Monte Carlo, 32 draws)"
    mean = mean.detach().float().cpu()
    if mean.dim() != 2 or mean.shape[0] != inputs[0].shape[0]:
        return f"the guide's posterior has shape {tuple(mean.shape)}, not [N, latent]: no latent-space view"
    return mean, f"{how} E[{name}]"


def _project(z: torch.Tensor) -> tuple[np.ndarray, list[str], str]:
    """Points ``(N, 2)`` (or ``(N, 1)``), axis labels and how they were made."""
    d = z.shape[1]
    if d <= 2:
        labels = ["z1", "z2"][:d] if d == 2 else ["z"]
        return z.numpy(), labels, f"the {d}-D latent as it is"
    centred = (z - z.mean(0)).double()
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2]
    signs = torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True))).squeeze(1)
    axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs).unsqueeze(1)
    share = (s**2 / (s**2).sum().clamp(min=1e-300)).tolist()
    labels = [f"PC {i + 1} ({share[i]:.0%} of variance)" for i in range(2)]
    return (centred @ axes.T).float().numpy(), labels, f"PCA of the {d}-D latent (SVD)"


def _latent_png(points: np.ndarray, axis_labels: list[str], y: np.ndarray | None) -> bytes:
    fig = new_figure(6.5, 5.2)
    ax = fig.add_subplot(1, 1, 1)
    if points.shape[1] == 1:  # a 1-D latent: against the label (or the index)
        other = y.astype(float) if y is not None else np.arange(len(points), dtype=float)
        jitter = np.random.default_rng(0).uniform(-0.25, 0.25, len(points))
        points = np.stack([points[:, 0], other + jitter], axis=1)
        axis_labels = [axis_labels[0], "label" if y is not None else "test point"]
    if y is None:
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7, color="tab:blue")
    else:
        classes = np.unique(y)
        if len(classes) <= 20:
            import matplotlib

            colours = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
            for i, c in enumerate(classes):
                keep = y == c
                ax.scatter(
                    points[keep, 0],
                    points[keep, 1],
                    s=6,
                    alpha=0.75,
                    color=colours(i),
                    label=str(c),
                )
            ax.legend(
                title="label",
                fontsize="small",
                markerscale=2.5,
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
            )
        else:
            sc = ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.75, c=y, cmap="viridis")
            fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.grid(alpha=0.3)
    return figure_png(fig)


def _latent_section(run, load_error: str | None) -> str:
    title = "Latent space"
    if run is None:
        return _section("latent", title, _note(f"model not loaded: {load_error}"))
    from ppvae.run import model_inputs

    test = run.data.test
    if not len(test):
        return _section("latent", title, _note("the test split is empty: no latent-space view"))

    def make() -> str:
        generator = torch.Generator().manual_seed(run.spec.train.seed)
        idx = torch.randperm(len(test), generator=generator)[:LATENT_POINTS]
        inputs = [t[idx].to(run.device) for t in model_inputs(run.spec, test)]
        with torch.no_grad(), torch.random.fork_rng(devices=[]), isolated_param_store():
            torch.manual_seed(run.spec.train.seed)
            result = _posterior_means(run, inputs)
        if isinstance(result, str):
            return _note(result)
        z, what = result
        points, axis_labels, how = _project(z)
        y = None if test.y is None else test.y[idx].cpu().numpy()
        coloured = "coloured by label" if y is not None else "(the data have no labels)"
        return _figure(
            _latent_png(points, axis_labels, y),
            "latent space",
            f"The guide's {what} of {len(idx)} test points: {how}, {coloured}.",
        )

    return _section("latent", title, _safely("the latent-space view", make))


def _latent_diagnostics_section(run, load_error: str | None, records) -> str:
    title = "Latent diagnostics"
    if run is None:
        return _section("diagnostics", title, _note(f"model not loaded: {load_error}"))
    if not isinstance(run.guide, AmortizedPosterior):
        return _section(
            "diagnostics",
            title,
            _note(
                f"the guide of model kind {run.spec.model.kind!r} has no amortized posterior "
                "q(z|x) (a posterior(x) method): no latent diagnostics"
            ),
        )
    from ppvae.latents import (
        decodes_latent,
        interpolations,
        latent_diagnostics,
        traversal_dims,
        traversals,
    )
    from ppvae.report import latent_usage_png
    from ppvae.run import model_inputs

    seed = run.spec.train.seed
    split = run.data.valid if len(run.data.valid) else run.data.test
    split_name = "validation" if len(run.data.valid) else "test"
    parts: list[str] = []

    def usage() -> str:
        inputs = tuple(t.to(run.device) for t in model_inputs(run.spec, split))
        with torch.random.fork_rng(devices=[]), isolated_param_store():
            torch.manual_seed(seed)
            diag = latent_diagnostics(run.model, run.guide, inputs)
        how = {
            "closed_form": "in closed form (diagonal Gaussian guide and prior)",
            "monte_carlo": "by Monte Carlo (one draw per point)",
            "monte_carlo_total": "only in total, by Monte Carlo (the guide or prior does not "
            "factorize over dimensions)",
        }.get(diag["kl_method"], diag["kl_method"])
        caption = (
            f"KL(q(z_u|x) || p(z_u)) per latent dimension, mean over {diag['points']} "
            f"{split_name} points, {how} (bars), and the activity Cov_x(E_q[z_u|x]) per "
            f"dimension (dots, log scale): {diag['active_units']} of {diag['latent_dim']} "
            f"units are active (activity > {diag['active_threshold']:g}, Burda et al. 2016). "
            f"Total KL {diag['kl']:.3f} nats."
        )
        return _figure(latent_usage_png(diag), "KL per latent dimension", caption)

    parts.append(f'<div class="row">{_safely("the KL per dimension", usage)}</div>')
    per_epoch = [
        (r["epoch"], r["active_units"]) for r in records if _is_number(r.get("active_units"))
    ]
    if per_epoch:
        shown = per_epoch if len(per_epoch) <= 12 else per_epoch[:: math.ceil(len(per_epoch) / 12)]
        if shown[-1] != per_epoch[-1]:
            shown.append(per_epoch[-1])
        rows = [[_esc(e), _esc(a)] for e, a in shown]
        parts.append(
            '<p class="small">Active units of the validation data after each epoch '
            "(<code>metrics.jsonl</code>):</p>"
            + _table(["epoch", "active units"], rows, cls="numbers")
        )
    shape = run.data.image_shape
    test = model_inputs(run.spec, run.data.test)
    if shape is None:
        parts.append(_note("the data are not images: no traversals or interpolations"))
    elif len(run.data.test) < 2:
        parts.append(_note("fewer than two test points: no traversals or interpolations"))
    elif not decodes_latent(run.model, run.guide, test):
        parts.append(
            _note(
                f"model kind {run.spec.model.kind!r} has no decoder of z alone: no traversals "
                "or interpolations"
            )
        )
    else:
        inputs = tuple(t.to(run.device) for t in test)

        def traversal() -> str:
            with torch.random.fork_rng(devices=[]), isolated_param_store():
                torch.manual_seed(seed)
                valid = tuple(t.to(run.device) for t in model_inputs(run.spec, split))
                dims = traversal_dims(run.model, run.guide, valid)
                images, offsets = traversals(run.model, run.guide, inputs, dims=dims)
            png, width = _grid_png(images.cpu(), shape, len(offsets))
            listed = ", ".join(f"z{u + 1}" for u in dims)
            return _figure(
                png,
                "latent traversals",
                f"Latent traversals: one row per dimension ({listed}; the {len(dims)} with the "
                f"largest KL), that dimension at the prior mean {float(offsets[0]):+g} to "
                f"{float(offsets[-1]):+g} prior standard deviations (left to right), the "
                "others at the prior mean; decoder means E[x | z].",
                width=width,
                pixelated=True,
            )

        def interpolation() -> str:
            generator = torch.Generator().manual_seed(seed)
            with torch.random.fork_rng(devices=[]), isolated_param_store():
                torch.manual_seed(seed)
                images = interpolations(run.model, run.guide, inputs, generator=generator)
            png, width = _grid_png(images.cpu(), shape, 10)
            return _figure(
                png,
                "interpolations between test points",
                "Interpolations between pairs of test images: each row starts and ends with "
                "the two test images; between them, decoder means E[x | z] along the straight "
                "line between their posterior means (8 steps).",
                width=width,
                pixelated=True,
            )

        parts.append(
            f'<div class="row">{_safely("the traversals", traversal)}'
            f"{_safely('the interpolations', interpolation)}</div>"
        )
    return _section("diagnostics", title, "".join(parts))


def _evaluation_section(path: Path) -> str:
    title = "Evaluation"
    folder = path / "evaluation"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return _section(
            "evaluation",
            title,
            _note("no evaluation yet: run `ppvae evaluate RUN_DIR` to add log p(x) estimates"),
        )
    rows, plots, notes = [], [], []
    for file in files:
        try:
            s = json.loads(file.read_text())
            if not isinstance(s, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as err:
            notes.append(_note(f"{file.name} cannot be read ({err.__class__.__name__})"))
            continue
        k = s.get("num_samples")
        rows.append(
            [
                _esc(s.get("split", "?")),
                _esc(s.get("n", "?")),
                _esc(k if k is not None else "?"),
                _esc(f"{_fmt(s.get('log_px'))} ± {_fmt(s.get('log_px_sem'))}"),
                _esc(_fmt(s.get("elbo"))),
                _esc(_fmt(s.get("gap"))),
                _esc(f"{_fmt(s.get('ess_median'), '.1f')} / {_fmt(s.get('ess_min'), '.1f')}"),
                _esc(_fmt(s.get("khat_max"), ".3f")),
                _esc(_fmt(s.get("khat_frac_bad"), ".3f")),
                _esc(_fmt((s.get("elbo_split") or {}).get("reconstruction"), ".3f")),
                _esc(_fmt((s.get("elbo_split") or {}).get("kl"), ".3f")),
                _esc(_mi_text(s.get("mutual_information"))),
                _esc(_fmt((s.get("latent") or {}).get("active_units"), ".0f")),
                f"<code>{_esc(file.name)}</code>",
            ]
        )
        png = file.with_name(f"{file.stem}-khat.png")
        if s.get("khat_max") is None:
            plots.append(
                _note(
                    f"{file.stem}: no k-hat values (PSIS needs at least 21 importance samples "
                    f"per point; this evaluation used K = {k})"
                )
            )
        elif png.is_file():
            caption = f"PSIS k-hat per data point: {s.get('split', '?')}, K = {k} ({png.name})"
            plots.append(_figure(png.read_bytes(), f"k-hat plot {file.stem}", caption))
        else:
            plots.append(_note(f"no k-hat plot {png.name}"))
    parts = []
    if rows:
        header = [
            "split",
            "n",
            "K",
            "log p(x) ± s.e.",
            "ELBO",
            "gap",
            "ESS median / min",
            "k-hat max",
            "share k-hat &gt; 0.7",
            "recon.",
            "KL",
            "I(x; z) / log N",
            "active units",
            "file",
        ]
        parts.append(_table(header, rows, cls="numbers"))
        parts.append(
            '<p class="small">log p(x): importance-sampled estimate with K samples per point, '
            "mean over n points ± its standard error; gap = log p(x) - ELBO (an estimate of "
            "KL(q(z|x) || p(z|x))); k-hat: Pareto shape of the importance weights "
            "(&gt; 0.7: unreliable; n/a: fewer than 21 samples); recon. and KL: the ELBO as "
            "E_q[log p(x|z)] - KL(q(z|x) || p(z)) per point (Monte Carlo, one draw); "
            "I(x; z): the mutual information under the aggregate posterior (Hoffman &amp; "
            "Johnson 2016), at most log N for N points; active units: Cov_x(E_q[z_u|x]) &gt; "
            "0.01 (Burda et al. 2016).</p>"
        )
    parts.extend(notes)
    if plots:
        parts.append(f'<div class="row">{"".join(plots)}</div>')
    return _section("evaluation", title, "".join(parts))


def _mi_text(mi: Any) -> str:
    if not isinstance(mi, dict):
        return "n/a"
    if mi.get("value") is None:
        return "n/a"
    return f"{_fmt(mi.get('value'), '.3f')} / {_fmt(mi.get('upper_bound'), '.2f')}"


# --------------------------------------------------------------------------- page

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1d1d1f; background: #ffffff; margin: 0 auto; max-width: 1100px;
       padding: 1rem 1.5rem 3rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; border-bottom: 1px solid #d0d0d7; padding-bottom: 0.2rem;
     margin-top: 2rem; }
nav a { margin-right: 1rem; }
a { color: #0b57d0; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
            font-size: 0.9em; }
pre { background: #f6f6f8; border: 1px solid #e0e0e6; padding: 0.6rem; overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6rem 0; }
th, td { border: 1px solid #d0d0d7; padding: 0.25rem 0.6rem; text-align: left;
         vertical-align: top; }
thead th, tbody th { background: #f2f2f6; }
table.numbers td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.numbers td:first-child, table.numbers td:last-child { text-align: left; }
.spec-tables table { margin: 0 1rem 1rem 0; }
table.spec td { white-space: nowrap; }
figure { margin: 0.6rem 1.5rem 0.6rem 0; max-width: 100%; flex: 0 1 auto; }
figure img { max-width: 100%; height: auto; border: 1px solid #e0e0e6; }
img.pixelated { image-rendering: pixelated; image-rendering: crisp-edges; }
figcaption { font-size: 0.9rem; color: #4a4a55; max-width: 40rem; }
.row { display: flex; flex-wrap: wrap; align-items: flex-start; }
.note { color: #6a4a00; background: #fff7e0; border-left: 4px solid #e0b000;
        padding: 0.3rem 0.6rem; }
.small, .meta { font-size: 0.9rem; color: #4a4a55; }
"""

_SECTIONS = [
    ("run", "Run"),
    ("spec", "Spec"),
    ("curves", "Training curves"),
    ("samples", "Decoder means"),
    ("latent", "Latent space"),
    ("diagnostics", "Latent diagnostics"),
    ("evaluation", "Evaluation"),
]


def _check_target(target: Path) -> None:
    if target.is_dir():
        raise RunDirError(
            f"the report file {str(target)!r} is a folder; give a file name such as report.html"
        )
    check_output_path(target)


def write_report(run_dir, *, out: str | Path | None = None) -> Path:
    """Write the HTML report of a run folder (or of a loaded :class:`~ppvae.run.Run`).

    Args:
        run_dir: a run folder written by ``ppvae train``, or a :class:`~ppvae.run.Run`
            (whose weights are then used as they are).
        out: the HTML file (default ``RUN_DIR/report.html``).

    Returns:
        The path of the written file.

    Raises:
        RunDirError: the folder does not exist, is not a ppvae run folder (no
            ``spec.toml``), or ``out`` is a folder.
    """
    from ppvae.run import Run, load_run
    from ppvae.spec import dump_spec

    run: Run | None = None
    load_error: str | None = None
    if isinstance(run_dir, Run):
        run = run_dir
        path = Path(run.path)
        check_no_links(path)
        spec_file = path / _SPEC_FILE
        spec_text = spec_file.read_text() if spec_file.is_file() else dump_spec(run.spec)
    else:
        path = Path(run_dir)
        if not path.is_dir():
            raise RunDirError(f"run folder {str(path)!r} does not exist")
        check_no_links(path)  # nothing a link points to may end up in the report
        if not (path / _SPEC_FILE).is_file():
            raise RunDirError(f"{str(path)!r} is not a ppvae run folder: it has no {_SPEC_FILE}")
        try:
            spec_text = (path / _SPEC_FILE).read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise RunDirError(
                f"{str(path / _SPEC_FILE)!r} cannot be read ({err.__class__.__name__})"
            ) from None
        _check_target(Path(out) if out is not None else path / REPORT_FILE)
        try:
            run = load_run(path, which="best", device="cpu")
        except (SpecChangedError, RunDirError):
            raise  # an edited spec.toml, or links: no report of a run that cannot be trusted
        except PpvaeError as err:
            load_error = str(err)

    target = Path(out) if out is not None else path / REPORT_FILE
    _check_target(target)
    spec_dict, spec_error = None, None
    try:
        spec_dict = tomllib.loads(spec_text)
    except tomllib.TOMLDecodeError as err:
        spec_error = str(err)

    metrics = path / "metrics.jsonl"
    records, bad_lines, metrics_note, notes = [], 0, None, []
    if metrics.is_file():
        records, bad_lines, notes = _read_metrics(metrics)
        if not records:
            metrics_note = "metrics.jsonl holds no epoch records: no training curves"
    else:
        metrics_note = "no metrics.jsonl: no training curves"

    # the figures in eval mode; a Run passed in gets its modules' modes back
    with eval_mode(*((run.model, run.guide) if run is not None else ())):
        sections = [
            _facts_section(path, spec_dict, records, bad_lines, run, load_error, notes),
            _spec_section(spec_text, spec_dict, spec_error),
            _curves_section(records, metrics_note),
            _images_section(run, load_error),
            _latent_section(run, load_error),
            _latent_diagnostics_section(run, load_error, records),
            _evaluation_section(path),
        ]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t in _SECTIONS)
    name = path.resolve().name
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>ppvae report: {_esc(name)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>ppvae run report: {_esc(name)}</h1>\n"
        f'<p class="meta">Written {_esc(now)} by <code>ppvae report</code>.</p>\n'
        f"<nav>{nav}</nav>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, page)  # a link at the target is replaced, never followed
    return target
