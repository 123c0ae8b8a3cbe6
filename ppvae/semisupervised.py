r"""Semi-supervised experiments: M2 per (label count, seed) against a labelled-only baseline.

For every label count :math:`L` and seed :math:`s`, :func:`run_semisupervised` trains the
spec (``model.kind = "m2"``) with ``model.num_labels = L``, ``model.label_seed = s`` and
``train.seed = s`` into ``OUT/L<L>/seed<s>/m2``, measures the test accuracy of
:math:`q(y|x)`, and trains a **baseline**: the same classifier network (the M2 classifier's
sizes and activation) on the same :math:`L` labelled points alone, by maximum likelihood
(cross-entropy) with :func:`ppvae.fit`, the same optimizer, learning rate, weight decay,
batch size (at most :math:`L`) and training transform (e.g. dynamic binarization), for as
many gradient steps as M2 got (fewer when it stops early), keeping the epoch of best
validation log-likelihood. The baseline thus sees the validation labels, which M2
does not (M2's ``best.pt`` is chosen by the unsupervised validation ELBO): the comparison
leans towards the baseline.

The results go into ``OUT``:

* ``table.md`` and ``table.csv``: per label count the mean test accuracy over seeds with
  a 95% t-interval (:func:`t_interval`), the baseline's, the published MNIST figures
  (:data:`PUBLISHED`, filled in for ``data.kind = "mnist"`` only), the unlabelled pool
  size, and the mean epochs and wall time per run;
* ``runs.csv``: one row per (label count, seed);
* ``L<L>/seed<s>/result.json``: one cell's result (``resume=True`` reuses finished cells).

Example:
    >>> import tempfile
    >>> from ppvae.spec import parse_spec
    >>> spec = parse_spec({"data": {"binarize": "dynamic"},
    ...     "model": {"kind": "m2", "latent_dim": 2, "hidden": [16], "sum_y": "explicit"},
    ...     "train": {"epochs": 1, "progress": False}})
    >>> result = run_semisupervised(spec, [20], seeds=1, out_dir=tempfile.mkdtemp(), log=None)
    >>> [row["labels"] for row in result.rows], result.rows[0]["unlabelled_pool"]
    ([20], 1274)
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ppvae.data import DataBundle, labelled_part
from ppvae.errors import RunDirError, SpecError
from ppvae.infer.rng import seeded
from ppvae.models.abilities import LabelSubset
from ppvae.rundir import (
    EXPERIMENT_MARKER,
    LOCK_FILE,
    RUN_MARKER,
    FolderLock,
    check_no_links,
    is_marked,
    remove_tree,
    write_marker,
    write_text_atomic,
    writing,
)
from ppvae.spec import Spec, parse_spec

__all__ = [
    "PUBLISHED",
    "CellResult",
    "SemiSupervisedResult",
    "run_semisupervised",
    "run_cell",
    "train_baseline",
    "accuracy",
    "t_interval",
    "summarize",
    "write_tables",
]

#: Published test accuracies (%) on MNIST with 50,000 training images: Kingma et al. 2014,
#: Table 1 (100 - test error) for M2 and M1+M2, and Pyro's semi-supervised VAE tutorial.
PUBLISHED: dict[int, dict[str, float]] = {
    100: {"kingma_m2": 88.03, "pyro_tutorial": 93.19, "kingma_m1m2": 96.67},
    600: {"kingma_m2": 95.06, "pyro_tutorial": 94.37, "kingma_m1m2": 97.41},
    1000: {"kingma_m2": 96.40, "pyro_tutorial": 94.87, "kingma_m1m2": 97.60},
    3000: {"kingma_m2": 96.08, "pyro_tutorial": 95.82, "kingma_m1m2": 97.82},
}
_PUBLISHED_DATA = "mnist"
_BASELINE_EPOCH_POINTS = 512
_BASELINE_PATIENCE = 50

#: Columns of ``table.csv`` (``table.md`` shows the same, formatted).
TABLE_COLUMNS = [
    "labels",
    "unlabelled_pool",
    "seeds",
    "m2_accuracy",
    "m2_ci95",
    "baseline_accuracy",
    "baseline_ci95",
    "kingma_m2",
    "pyro_tutorial",
    "kingma_m1m2",
    "epochs",
    "wall_s",
    "baseline_wall_s",
]
RUN_COLUMNS = [
    "labels",
    "seed",
    "m2_accuracy",
    "baseline_accuracy",
    "epochs",
    "steps",
    "wall_s",
    "baseline_epochs",
    "baseline_wall_s",
    "num_train",
    "unlabelled_pool",
    "run_dir",
]


@dataclass
class CellResult:
    """One (label count, seed) cell: accuracies in percent, epochs, seconds."""

    labels: int
    seed: int
    m2_accuracy: float
    baseline_accuracy: float | None
    epochs: int
    steps: int
    wall_s: float
    baseline_epochs: int | None
    baseline_wall_s: float | None
    num_train: int
    unlabelled_pool: int
    run_dir: str
    spec_digest: str = ""


@dataclass
class SemiSupervisedResult:
    """Every cell, the summary rows, and the files written."""

    cells: list[CellResult]
    rows: list[dict[str, Any]]
    files: list[Path]


@torch.no_grad()
def accuracy(
    predict_proba: Callable, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> float:
    """Percentage of ``x`` whose most probable class under ``predict_proba`` is ``y``."""
    correct = 0
    for i in range(0, len(x), batch_size):
        probs = predict_proba(x[i : i + batch_size])
        correct += int((probs.argmax(-1).cpu() == y[i : i + batch_size].cpu()).sum())
    return 100.0 * correct / max(1, len(x))


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t interval over ``values`` (NaN for one value).

    Example:
        >>> mean, half = t_interval([90.0, 92.0, 94.0])
        >>> mean, round(half, 3)  # t_{0.975, 2} * 2 / sqrt(3)
        (92.0, 4.968)
    """
    from scipy import stats

    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def _cell_spec(spec: Spec, labels: int, seed: int) -> Spec:
    return parse_spec(
        spec.to_dict(),
        overrides=[
            f"model.num_labels={labels}",
            f"model.label_seed={seed}",
            f"train.seed={seed}",
        ],
    )


def train_baseline(
    spec: Spec,
    data: DataBundle,
    mask: torch.Tensor,
    out_dir: str | Path,
    *,
    min_steps: int,
    seed: int,
) -> tuple[float, int, float]:
    r"""Train the M2 classifier's network (:func:`_baseline_classifier`: the
    ``[network]``'s encoder trunk, then ``model.hidden``) on the labelled points alone (cross-entropy,
    early stopping on the validation log-likelihood) and return ``(test accuracy %,
    epochs, seconds)``.

    It runs for ``min_steps`` gradient steps (an epoch passes over the labelled points
    often enough to see about 512 of them), stops early when 50 epochs pass without a
    better validation log-likelihood, and keeps the best epoch.
    """
    from ppvae.checkpoint import load_checkpoint
    from ppvae.infer.train import fit
    from ppvae.models.observed import EmptyGuide

    start = time.perf_counter()
    labelled = labelled_part(data.train, mask)
    t = spec.train
    # an "epoch" passes over the labelled points often enough to make about 512 points, so
    # that validation and checkpoints come every few steps rather than after every step
    repeats = max(1, math.ceil(_BASELINE_EPOCH_POINTS / len(labelled)))
    x, y = labelled.x.repeat(repeats, 1), labelled.y.repeat(repeats)
    batch_size = min(t.batch_size, len(labelled))
    steps_per_epoch = math.ceil(len(x) / batch_size)
    epochs = max(1, math.ceil(min_steps / steps_per_epoch))
    torch.manual_seed(seed)
    model = _baseline_classifier(spec, data)
    out = Path(out_dir)
    history = fit(
        model,
        EmptyGuide(),
        (x, y),
        "elbo",
        t.replace(
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            kl_warmup_epochs=0,
            early_stopping=_BASELINE_PATIENCE,
            progress=False,
        ),
        valid_data=(data.valid.x, data.valid.y),
        out_dir=out,
        train_transform=data.train_transform,
    )
    model.load_state_dict(load_checkpoint(out / "checkpoints" / "best.pt")["model"])
    model.eval()
    device = next(model.parameters()).device
    acc = accuracy(lambda x: model.predict_proba(x.to(device)), data.test.x, data.test.y)
    return acc, len(history), time.perf_counter() - start


def _network_text(spec: Spec) -> str:
    """``conv (channels=[16, 32], kernel_size=4)``: the ``[network]`` kind and its options."""
    options = {k: v for k, v in spec.to_dict()["network"].items() if k != "kind"}
    inner = ", ".join(f"{k}={v}" for k, v in options.items())
    return spec.network.kind + (f" ({inner})" if inner else "")


def _baseline_classifier(spec: Spec, data: DataBundle) -> torch.nn.Module:
    """The ``classifier`` model kind with M2's classifier network: the spec's ``[network]``
    trunk (a conv M2's baseline is a conv classifier) and ``model.hidden`` /
    ``model.activation``, on the raw data."""
    from ppvae.models import MODELS
    from ppvae.run import model_context

    config = MODELS.get("classifier")(hidden=spec.model.hidden, activation=spec.model.activation)
    model, _guide = config.build(model_context(spec, data))
    return model


def run_cell(
    spec: Spec,
    labels: int,
    seed: int,
    out_dir: str | Path,
    *,
    baseline: bool = True,
    force: bool = False,
    progress: bool = False,
) -> CellResult:
    """Train M2 (and the baseline) for one label count and seed into ``out_dir``."""
    from ppvae.report import save_image_grid
    from ppvae.run import train_spec

    cell_spec = _cell_spec(spec, labels, seed)
    out = Path(out_dir)
    start = time.perf_counter()
    run, history = train_spec(cell_spec, out / "m2", force=force, progress=progress)
    wall = time.perf_counter() - start
    data = run.data
    device = run.device
    acc = accuracy(lambda x: run.guide.predict_proba(x.to(device)), data.test.x, data.test.y)
    if data.image_shape is not None:
        with seeded(seed, device):
            grid = run.model.generate_by_class(10).cpu()
        save_image_grid(grid, data.image_shape, run.path / "figures" / "classes.png", ncols=10)
    mask = cell_spec.model.label_mask(data.train, data.num_classes)
    b_acc = b_epochs = b_wall = None
    if baseline:
        if (out / "baseline").exists():
            shutil.rmtree(out / "baseline")
        steps = history.records[-1]["step"] if history.records else 0
        b_acc, b_epochs, b_wall = train_baseline(
            cell_spec, data, mask, out / "baseline", min_steps=steps, seed=seed
        )
    result = CellResult(
        labels=labels,
        seed=seed,
        m2_accuracy=acc,
        baseline_accuracy=b_acc,
        epochs=len(history),
        steps=history.records[-1]["step"] if history.records else 0,
        wall_s=wall,
        baseline_epochs=b_epochs,
        baseline_wall_s=b_wall,
        num_train=len(data.train),
        unlabelled_pool=len(data.train) - int(mask.sum()),
        run_dir=str(run.path),
        spec_digest=cell_spec.digest(),
    )
    write_text_atomic(out / "result.json", json.dumps(asdict(result), indent=2) + "\n")
    return result


def _load_cell(path: Path, digest: str, baseline: bool) -> CellResult | None:
    try:
        values = json.loads((path / "result.json").read_text())
        result = CellResult(**values)
    except (OSError, ValueError, TypeError):
        return None
    if result.spec_digest != digest or (baseline and result.baseline_accuracy is None):
        return None
    return result


def _check_request(spec: Spec, labels: Sequence[int], seeds: Sequence[int]) -> None:
    if not isinstance(spec.model, LabelSubset):
        raise SpecError(
            f"a semi-supervised experiment needs a model kind trained on a labelled subset "
            f"(model.num_labels), such as model.kind = 'm2', not {spec.model.kind!r}"
        )
    if not labels:
        raise SpecError("give at least one label count, e.g. --labels 100 1000")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in labels):
        raise SpecError(f"label counts must be positive integers, got {list(labels)}")
    if len(set(labels)) != len(labels):
        raise SpecError(f"label counts must be distinct, got {list(labels)}")
    if not seeds:
        raise SpecError("give at least one seed (--seeds N runs seeds 0 .. N-1)")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise SpecError(f"seeds must be non-negative integers, got {list(seeds)}")


def run_semisupervised(
    spec: Spec,
    labels: Sequence[int],
    seeds: int | Sequence[int],
    out_dir: str | Path,
    *,
    baseline: bool = True,
    force: bool = False,
    resume: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
) -> SemiSupervisedResult:
    """Train every (label count, seed) cell and write the tables into ``out_dir``.

    Args:
        spec: an M2 spec (``model.kind = "m2"``).
        labels: label counts, e.g. ``[100, 600, 1000, 3000]``.
        seeds: a number ``N`` (seeds ``0 .. N-1``) or the seeds themselves.
        out_dir: the experiment folder; a non-empty one is refused unless ``force``
            (start again) or ``resume`` (keep the cells already finished with this spec).
        baseline: also train the labelled-only baseline.
        log: called with a line when a cell starts (or is kept, on resume) and one when
            it has finished (None: silent); the command line prints them at once.
    """
    seed_list = (
        list(range(seeds))
        if isinstance(seeds, int) and not isinstance(seeds, bool)
        else list(seeds)
    )
    labels = list(labels)
    _check_request(spec, labels, seed_list)
    # every cell's spec must parse (e.g. num_labels against the data comes later)
    cell_specs = {(n, s): _cell_spec(spec, n, s) for n in labels for s in seed_list}
    out = Path(out_dir)
    _check_experiment_folder(out, force=force, resume=resume)
    with writing(out, "create the experiment folder"):
        out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out, "experiment folder").acquire()
    try:
        if not is_marked(out, EXPERIMENT_MARKER):
            write_marker(out, EXPERIMENT_MARKER)
        cells = _run_cells(
            spec, labels, seed_list, cell_specs, out, baseline, resume, progress, log
        )
        if force:
            # the new cells are in place: drop the old experiment's other cells
            wanted = {(f"L{n}", f"seed{s}") for n in labels for s in seed_list}
            for cell_dir in sorted(out.glob("L*/seed*")):
                if (cell_dir.parent.name, cell_dir.name) not in wanted:
                    remove_tree(cell_dir)
            for folder in sorted(out.glob("L*")):
                if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
                    folder.rmdir()
        rows = summarize(cells)
        files = write_tables(rows, out, spec=spec)
    finally:
        lock.release()
    files.append(out / "runs.csv")
    return SemiSupervisedResult(cells, rows, files)


def _check_experiment_folder(out: Path, *, force: bool, resume: bool) -> None:
    """Refuse a folder that an experiment would overwrite (see :func:`run_semisupervised`)."""
    if out.is_symlink():
        raise RunDirError(
            f"experiment folder {str(out)!r} is a symbolic link; give the folder itself as --out"
        )
    if out.exists() and not out.is_dir():
        raise RunDirError(f"experiment folder {str(out)!r} is a file; choose another --out")
    if not out.is_dir() or not any(p.name != LOCK_FILE for p in out.iterdir()):
        return
    if not (force or resume):
        raise RunDirError(
            f"experiment folder {str(out)!r} exists and is not empty; pass --resume to keep its "
            "finished runs, --force to start again, or choose another --out"
        )
    legacy = resume and ((out / "table.md").is_file() or any(out.glob("L*/seed*/result.json")))
    if not is_marked(out, EXPERIMENT_MARKER) and not legacy:
        raise RunDirError(
            f"refusing to {'replace' if force else 'resume'} {str(out)!r}: it is not a ppvae "
            f"experiment folder (it has no {EXPERIMENT_MARKER} marker, which ppvae writes into "
            "the experiment folders it makes)"
        )
    check_no_links(out, "experiment folder")


def _run_cells(spec, labels, seed_list, cell_specs, out, baseline, resume, progress, log):
    """Train (or, on resume, reuse) every cell; the tables of runs are rewritten after each."""
    cells: list[CellResult] = []
    total = len(labels) * len(seed_list)
    for n in labels:
        for s in seed_list:
            cell_dir = out / f"L{n}" / f"seed{s}"
            cell = _load_cell(cell_dir, cell_specs[(n, s)].digest(), baseline) if resume else None
            if cell is not None and log is not None:
                log(f"labels {n} seed {s}: finished earlier, kept (cell {len(cells) + 1}/{total})")
            if cell is None:
                if log is not None:
                    log(f"labels {n} seed {s}: training (cell {len(cells) + 1}/{total})")
                if (cell_dir / "m2").is_dir() and not is_marked(cell_dir / "m2", RUN_MARKER):
                    remove_tree(cell_dir / "m2")  # a cell of an older ppvae, in our folder
                cell = run_cell(
                    spec, n, s, cell_dir, baseline=baseline, force=True, progress=progress
                )
            cells.append(cell)
            if log is not None:
                base = (
                    f", baseline {cell.baseline_accuracy:.2f}%"
                    if cell.baseline_accuracy is not None
                    else ""
                )
                log(
                    f"labels {n} seed {s}: M2 test accuracy {cell.m2_accuracy:.2f}%{base} "
                    f"({cell.epochs} epochs, {cell.wall_s:.0f} s)"
                )
            _write_runs(cells, out)
    return cells
    rows = summarize(cells)
    files = write_tables(rows, out, spec=spec)
    files.append(out / "runs.csv")
    return SemiSupervisedResult(cells, rows, files)


def summarize(cells: Sequence[CellResult]) -> list[dict[str, Any]]:
    """One row per label count (in first-seen order): means, 95% half-widths, times."""
    rows = []
    for n in dict.fromkeys(c.labels for c in cells):
        group = [c for c in cells if c.labels == n]
        m2_mean, m2_half = t_interval([c.m2_accuracy for c in group])
        base = [c.baseline_accuracy for c in group if c.baseline_accuracy is not None]
        b_mean, b_half = t_interval(base) if base else (None, None)
        b_wall = [c.baseline_wall_s for c in group if c.baseline_wall_s is not None]
        rows.append(
            {
                "labels": n,
                "unlabelled_pool": group[0].unlabelled_pool,
                "seeds": len(group),
                "m2_accuracy": m2_mean,
                "m2_ci95": m2_half,
                "baseline_accuracy": b_mean,
                "baseline_ci95": b_half,
                "epochs": sum(c.epochs for c in group) / len(group),
                "wall_s": sum(c.wall_s for c in group) / len(group),
                "baseline_wall_s": sum(b_wall) / len(b_wall) if b_wall else None,
            }
        )
    return rows


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _interval(mean: float | None, half: float | None) -> str:
    if mean is None:
        return "—"
    if half is None or math.isnan(half):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {half:.2f}"


def write_tables(rows: list[dict[str, Any]], out_dir: Path, *, spec: Spec) -> list[Path]:
    """Write ``table.csv`` and ``table.md`` (published figures added for MNIST)."""
    mnist = spec.data.kind == _PUBLISHED_DATA
    for row in rows:
        published = PUBLISHED.get(row["labels"], {}) if mnist else {}
        for key in ("kingma_m2", "pyro_tutorial", "kingma_m1m2"):
            row[key] = published.get(key)
    csv_path = out_dir / "table.csv"
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=TABLE_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k), 4) for k in TABLE_COLUMNS})
    write_text_atomic(csv_path, handle.getvalue())
    m = spec.model
    lines = [
        f"# Semi-supervised test accuracy (%): M2 on {spec.data.kind}",
        "",
        f"Spec: model latent_dim={m.latent_dim}, hidden={list(m.hidden)}, activation={m.activation}, "
        f"sum_y={m.sum_y}, aux_weight={m.aux_weight}, labelled_repeat={m.labelled_repeat}"
        f"{', m1_run=' + m.m1_run if m.m1_run else ''}; network {_network_text(spec)}; "
        f"likelihood {spec.likelihood.kind}; objective {spec.objective.kind}; data binarize="
        f"{spec.data.binarize}; train epochs={spec.train.epochs}, batch_size={spec.train.batch_size}, "
        f"lr={spec.train.lr}.",
        "Mean over seeds ± half-width of the 95% t-interval. Baseline: the same classifier "
        "network trained on the labelled points alone (cross-entropy, early stopping on the "
        "validation labels, which M2 does not see).",
        "Published figures: MNIST with a pool of 50,000 training images (Kingma et al. 2014, "
        "Table 1; Pyro's SS-VAE tutorial)"
        + ("." if mnist else f"; not filled in for data.kind = {spec.data.kind!r}."),
        "",
        "| labels | unlabelled pool | seeds | M2 | labelled-only baseline | Kingma M2 | "
        "Pyro tutorial | Kingma M1+M2 | epochs | wall time / run (s) | baseline time (s) |",
        "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['labels']} | {row['unlabelled_pool']} | {row['seeds']} | "
            f"{_interval(row['m2_accuracy'], row['m2_ci95'])} | "
            f"{_interval(row['baseline_accuracy'], row['baseline_ci95'])} | "
            f"{_fmt(row['kingma_m2']) or '—'} | {_fmt(row['pyro_tutorial']) or '—'} | "
            f"{_fmt(row['kingma_m1m2']) or '—'} | {row['epochs']:.0f} | {row['wall_s']:.0f} | "
            f"{_fmt(row['baseline_wall_s'], 0) or '—'} |"
        )
    md_path = out_dir / "table.md"
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return [md_path, csv_path]


def _write_runs(cells: Sequence[CellResult], out_dir: Path) -> None:
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=RUN_COLUMNS)
    writer.writeheader()
    for cell in cells:
        values = asdict(cell)
        writer.writerow({k: _fmt(values[k], 4) for k in RUN_COLUMNS})
    write_text_atomic(out_dir / "runs.csv", handle.getvalue())
