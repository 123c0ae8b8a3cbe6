r"""Evaluate a trained run: importance-sampled :math:`\log p(x)`, the ELBO, diagnostics.

:func:`evaluate_run` estimates per data point :math:`\log p(x_i)` with :math:`K`
importance samples from the guide, the ELBO (the mean log weight over the same samples),
their gap (an estimate of :math:`KL(q(z|x) \| p(z|x))`), the Kish effective sample size
and the PSIS :math:`\hat k`, and writes into ``RUN/evaluation/``:

* ``<split>-K<K>.json``: the summary (also returned);
* ``<split>-K<K>.npz``: per-point ``log_px``, ``elbo``, ``stderr``, ``ess``, ``khat``;
* ``<split>-K<K>-khat.png``: the :math:`\hat k` plot.

The summary says whether the estimate is ``reliable`` (False, with a ``warning`` saying
what to do, when too many points have a :math:`\hat k` above the threshold: see
:class:`~ppvae.infer.importance.ImportanceResult`), and for a run whose guide classifies
(M2) the ``accuracy`` in percent of :math:`q(y|x)` on the split's labels.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any

import numpy as np

from ppvae.infer.diagnostics import khat_threshold, plot_khat
from ppvae.infer.importance import log_marginal_likelihood
from ppvae.infer.isolation import isolated_param_store
from ppvae.infer.rng import seeded
from ppvae.models.abilities import Classifies, accuracy_percent, class_probabilities
from ppvae.run import Run, model_inputs
from ppvae.rundir import (
    atomic_target,
    check_no_links,
    write_bytes_atomic,
    write_text_atomic,
    writing,
)

__all__ = ["evaluate_run", "summarize"]


def _finite_mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def summarize(result, split: str) -> dict[str, Any]:
    """The summary dictionary of an :class:`~ppvae.infer.importance.ImportanceResult`."""
    n = result.num_points
    khat = result.khat.numpy()
    finite = khat[np.isfinite(khat)]
    threshold = khat_threshold(result.num_samples)
    elbo = result.elbo.numpy()
    log_px = result.log_px.numpy()

    def sem(values: np.ndarray) -> float:
        return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan

    def nan_to_none(x: float) -> float | None:
        return None if not math.isfinite(x) else x

    return {
        "split": split,
        "n": n,
        "num_samples": result.num_samples,
        "log_px": float(log_px.mean()),
        "log_px_sem": nan_to_none(sem(log_px)),
        "nll": float(-log_px.mean()),
        "elbo": float(elbo.mean()),
        "elbo_sem": nan_to_none(sem(elbo)),
        "gap": float(log_px.mean() - elbo.mean()),
        "log_px_stderr_mean": _finite_mean(result.stderr.numpy()),
        "ess_median": float(np.median(result.ess.numpy())),
        "ess_min": float(result.ess.min()),
        "khat_max": nan_to_none(float(finite.max())) if finite.size else None,
        "khat_median": nan_to_none(float(np.median(finite))) if finite.size else None,
        "khat_frac_bad": float((finite > 0.7).mean()) if finite.size else None,
        "khat_threshold": threshold,
        "khat_frac_above_threshold": float((finite > threshold).mean()) if finite.size else None,
        "num_khat_samples": result.num_khat_samples,
        "reliable": result.reliable,
        "warning": result.warning,
    }


def _accuracy(run: Run, split: str) -> dict[str, Any]:
    """For a guide with a classifier q(y|x) (M2) and a split with labels: ``accuracy``,
    the percentage of points whose most probable class under q(y|x) is their label
    (``ppvae classify``'s figure, from the same code)."""
    part = run.data.split(split)
    if not isinstance(run.guide, Classifies) or part.y is None:
        return {}
    predicted = class_probabilities(run.guide, part.x).argmax(-1)
    return {"accuracy": accuracy_percent(predicted, part.y)}


def _latent_summary(run: Run, data: tuple) -> dict[str, Any]:
    """For a guide with an amortized posterior: ``elbo_split`` (the ELBO per point as
    reconstruction minus KL, one Monte Carlo draw per point), ``latent`` (KL per latent
    dimension, active units: :func:`ppvae.latents.latent_diagnostics`) and
    ``mutual_information`` (Hoffman & Johnson 2016's aggregate-posterior estimate of
    :math:`I(x; z)` on at most 2,000 points (the guide's ``mutual_information_points``:
    200 for autoregressive flows), with its upper bound :math:`\\log N`; None
    with a reason where the guide's density is right only at its own draws)."""
    from ppvae.latents import elbo_split, latent_diagnostics, mutual_information
    from ppvae.models.abilities import AmortizedPosterior

    if not isinstance(run.guide, AmortizedPosterior) or not len(data[0]):
        return {}
    data = tuple(t.to(run.device) for t in data)
    out: dict[str, Any] = {}
    with seeded(run.spec.train.seed, run.device), isolated_param_store():
        out["elbo_split"] = elbo_split(run.model, run.guide, data)
        out["latent"] = latent_diagnostics(run.model, run.guide, data)
        if getattr(run.spec.guide, "log_prob_anywhere", True):
            points = getattr(run.spec.guide, "mutual_information_points", 2000)
            mi, n = mutual_information(run.guide, data, max_points=points)
            out["mutual_information"] = {"value": mi, "points": n, "upper_bound": math.log(n)}
        else:
            out["mutual_information"] = {
                "value": None,
                "reason": f"guide.kind = {run.spec.guide.kind!r} has a density only at its own "
                "draws; the aggregate posterior needs it at every z",
            }
    out["active_units"] = out["latent"]["active_units"]
    return out


def _writable_folder(folder) -> None:
    from ppvae.errors import RunDirError

    with writing(folder, "write the evaluation into"):
        folder.mkdir(exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise RunDirError(
                f"cannot write the evaluation into {str(folder)!r}: the folder is not writable; "
                "copy the run to a writable folder"
            )


def evaluate_run(
    run: Run,
    *,
    split: str | None = None,
    num_samples: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``run`` on ``split`` with ``num_samples`` importance samples per point
    (defaults from the spec's ``[evaluate]`` section) and write the result files."""
    cfg = run.spec.evaluate
    split = cfg.split if split is None else split
    num_samples = cfg.num_samples if num_samples is None else num_samples
    batch_size = cfg.batch_size if batch_size is None else batch_size
    if num_samples < 1 or batch_size < 1:
        from ppvae.errors import SpecError

        raise SpecError(
            f"--num-samples and --batch-size must be at least 1, got {num_samples} and {batch_size}"
        )
    _writable_folder(run.path / "evaluation")  # before the work, not after it
    data = model_inputs(run.spec, run.data.split(split))
    with isolated_param_store():
        result = log_marginal_likelihood(
            run.model,
            run.guide,
            data,
            num_samples=num_samples,
            batch_size=batch_size,
            device=run.device,
            progress=progress,
        )
    summary = summarize(result, split)
    summary.update(_latent_summary(run, data))
    summary.update(_accuracy(run, split))
    folder = run.path / "evaluation"
    stem = f"{split}-K{num_samples}"
    summary["per_point_file"] = str(folder / f"{stem}.npz")
    summary["khat_plot"] = str(folder / f"{stem}-khat.png")
    check_no_links(run.path)  # nothing written here may follow a link out of the run
    buf = io.BytesIO()
    np.savez(
        buf,
        **{k: getattr(result, k).numpy() for k in ("log_px", "elbo", "stderr", "ess", "khat")},
    )
    write_bytes_atomic(folder / f"{stem}.npz", buf.getvalue())
    # the folder name goes into a matplotlib title: '$' would start mathtext
    title = f"{run.path.name}: {split}, K={num_samples}".replace("$", r"\$")
    with atomic_target(folder / f"{stem}-khat.png") as tmp:
        plot_khat(result.khat, tmp, title=title)
    write_text_atomic(folder / f"{stem}.json", json.dumps(summary, indent=2) + "\n")
    return summary
