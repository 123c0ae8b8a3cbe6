r"""Classify data with a trained semi-supervised run: labels and class probabilities.

:func:`classify_run` loads a run whose guide has ``predict_proba`` (M2: :math:`q(y|x)`),
predicts a split of its own data set or the inputs of an ``.npz`` archive (``x``, and
optionally ``y`` to measure accuracy), and writes a CSV with one row per data point:
``index``, ``label`` (when known), ``predicted`` and ``p_0 .. p_{C-1}``.

Inputs from an archive are used as they are (flattened, ``uint8`` divided by 255); a run
trained on binarized data was evaluated on binarized test data, so binarize new data the
same way for comparable figures.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from ppvae.errors import DataError, RunDirError
from ppvae.models.abilities import Classifies, accuracy_percent, class_probabilities
from ppvae.rundir import check_output_path, write_text_atomic, writing

__all__ = ["ClassifyResult", "classify_run", "predict_proba", "read_inputs"]


@dataclass
class ClassifyResult:
    """Class probabilities ``probs`` (N, C), ``predicted`` labels, the true ``labels``
    (or None), ``accuracy`` in percent (or None), and the CSV written (or None)."""

    probs: torch.Tensor
    predicted: torch.Tensor
    labels: torch.Tensor | None
    accuracy: float | None
    out: Path | None


#: ``guide.predict_proba`` over ``x`` in batches (shared with ``ppvae evaluate``).
predict_proba = class_probabilities


def read_inputs(
    path: str | Path, *, dim: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs ``x`` (flattened float32) and labels ``y`` (or None) of an ``.npz`` archive,
    checked against the run's input size ``dim`` and ``num_classes``."""
    from ppvae.data import read_npz
    from ppvae.data.transforms import check_labels, to_float32

    x_raw, y_raw = read_npz(path, x_key="x", y_key="y")
    x = to_float32(x_raw, where=f"array 'x' of npz file {path}")
    if x.shape[1] != dim:
        raise DataError(
            f"npz file {path} holds inputs of {x.shape[1]} features but the run was trained on "
            f"{dim}; give data shaped like the training data"
        )
    y = None
    if y_raw is not None:
        y = check_labels(
            y_raw, n=len(x), where=f"array 'y' of npz file {path}", num_classes=num_classes
        )
    return x, y


def classify_run(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    split: str | None = None,
    out: str | Path | None = None,
    checkpoint: str = "best",
    device: str = "cpu",
) -> ClassifyResult:
    """Predict the labels of ``split`` (default ``"test"``) or of the ``.npz`` file
    ``data`` with the run in ``run_dir``; write the CSV ``out`` (default
    ``RUN_DIR/classify-<split or file stem>.csv``)."""
    from ppvae.run import load_run

    if data is not None and split is not None:
        raise RunDirError("give either --data FILE.npz or --split, not both")
    if out is not None:
        if Path(out).suffix.lower() != ".csv":
            raise RunDirError(f"--out must end in .csv, got {str(out)!r}")
        check_output_path(out)
    run = load_run(run_dir, which=checkpoint, device=device)
    if not isinstance(run.guide, Classifies):
        raise RunDirError(
            f"the run in {str(run_dir)!r} is a {run.spec.model.kind!r} model without a "
            "classifier q(y|x); classify needs a semi-supervised run such as model.kind = 'm2'"
        )
    num_classes = run.data.num_classes or 0
    if data is not None:
        x, y = read_inputs(data, dim=run.data.dim, num_classes=num_classes)
        name = Path(data).stem
    else:
        name = split or "test"
        part = run.data.split(name)
        x, y = part.x, part.y
    probs = predict_proba(run.guide, x)
    predicted = probs.argmax(-1)
    acc = accuracy_percent(predicted, y)
    path = Path(out) if out is not None else run.path / f"classify-{name}.csv"
    if path.suffix.lower() != ".csv":
        raise RunDirError(f"--out must end in .csv, got {str(path)!r}")
    check_output_path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    header = ["index", *(["label"] if y is not None else []), "predicted"]
    writer.writerow(header + [f"p_{c}" for c in range(probs.shape[-1])])
    for i in range(len(x)):
        row = [i, *([int(y[i])] if y is not None else []), int(predicted[i])]
        writer.writerow(row + [f"{float(p):.6g}" for p in probs[i]])
    write_text_atomic(path, handle.getvalue())  # a link at the target is replaced
    return ClassifyResult(probs, predicted, y, acc, path)
