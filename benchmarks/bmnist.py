r"""Test log-likelihood of the zoo's binarized-MNIST models beside published figures (issue 8).

For each model (``--models``, default all of ``vae_bmnist``, ``iwae_bmnist``,
``vamp_bmnist``, ``iaf_bmnist``, ``hvae_bmnist``; ``conv_vae_bmnist``, the convolutional
VAE of issue 17, only when named), from its spec in ``models/``:

1. train on the 50,000 training images with early stopping on the validation split (the
   spec's ``train.early_stopping``), for at most ``--epochs`` epochs (default: the spec's)
   and ``--time-budget-minutes`` of training per model (stop after the epoch that crosses
   it; a :class:`ppvae.Callback` sets ``state.stop``);
2. estimate :math:`\log p(x)` of every test image from the best checkpoint (highest
   validation ELBO) with ``--num-samples`` importance samples
   (:func:`ppvae.evaluate.evaluate_run`), with the ELBO and PSIS :math:`\hat k`;
3. write ``bmnist.md`` / ``bmnist.json`` (the table beside REFERENCES.md's figures) and
   one ``<model>.json`` per model into ``--out`` (default ``benchmarks/results/bmnist``).

Resumable: run the same command again after a kill. A model whose ``<model>.json`` exists
is skipped (unless it was stopped by a time budget or epoch limit that this command
raises: then it trains on and is evaluated again); a run folder (``<out>/runs/<model>``) with a checkpoint resumes from
``checkpoints/last.pt`` (its spec must be the same, except ``--epochs``, which may grow);
a trained model is not retrained and an evaluated one (its ``evaluation/test-K<K>.json``)
is not re-evaluated. Delete ``<model>.json`` (and the run folder) to redo a model.

Usage::

    export PPVAE_DATA_DIR=../shared/data
    python benchmarks/bmnist.py --quick --models vae_bmnist      # smoke run, seconds
    python benchmarks/bmnist.py --time-budget-minutes 60         # every model
    python benchmarks/bmnist.py --models vae_bmnist,iwae_bmnist --epochs 300 --device cuda
    python benchmarks/bmnist.py --models conv_vae_bmnist --time-budget-minutes 9 --test-points 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from ppvae.checkpoint import load_checkpoint  # noqa: E402
from ppvae.data import Split  # noqa: E402
from ppvae.evaluate import evaluate_run  # noqa: E402
from ppvae.infer.callbacks import Callback  # noqa: E402
from ppvae.infer.config import resolve_device  # noqa: E402
from ppvae.run import Run, load_run, train_spec  # noqa: E402
from ppvae.rundir import spec_fingerprint  # noqa: E402
from ppvae.spec import Spec, load_spec  # noqa: E402

MODELS = ("vae_bmnist", "iwae_bmnist", "vamp_bmnist", "iaf_bmnist", "hvae_bmnist")
#: models the script knows beyond the default list (run only when --models names them):
#: the conv VAE costs about 2.5 times the MLP's arithmetic a point, on CPU a longer run
EXTRA_MODELS = ("conv_vae_bmnist",)
QUICK_LIMIT, QUICK_TEST_POINTS, QUICK_SAMPLES = 1000, 500, 50

#: Published test NLL on static binarized MNIST (REFERENCES.md; 5,000 importance samples)
#: and the issue-8 targets.
PUBLISHED: dict[str, dict[str, Any]] = {
    "vae_bmnist": {
        "nll": 88.56,
        "source": "Tomczak & Welling 2018 (VAE, standard normal prior)",
        "target": 88.6,
        "pythae": 89.78,
        "pythae_note": "400 hidden, 40 latent, 200 IS",
    },
    "iwae_bmnist": {
        "nll": 87.10,
        "source": "Burda et al. 2016, App. D (IWAE k=50, 1 layer)",
        "target": 87.1,
        "pythae": 86.82,
    },
    "vamp_bmnist": {
        "nll": 85.57,
        "source": "Tomczak & Welling 2018 (VampPrior, 500 pseudo-inputs)",
        "target": 85.6,
        "pythae": 85.79,
    },
    "iaf_bmnist": {
        "nll": None,
        "source": "none for this network (planar flow, 80 steps: -ELBO <= 85.1, "
        "Rezende & Mohamed 2015)",
    },
    "hvae_bmnist": {
        "nll": None,
        "source": "none for static binarization (Burda et al. 2016, 2 layers, k=1: 85.33 "
        "on dynamic binarization, not comparable)",
    },
    "conv_vae_bmnist": {
        "nll": None,
        "source": "none for this conv network on static binarization; compare with the "
        "vae_bmnist row (same data, prior, guide and likelihood, MLP networks)",
    },
}


class TimeBudget(Callback):
    """Stop after the epoch at which the training time of the run (all sessions of a
    resumed run together, from the epochs' recorded ``seconds``) reaches ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_epoch_end(self, state, record: dict[str, Any]) -> None:
        used = sum(r.get("seconds", 0.0) for r in state.history.records)
        if self.seconds > 0 and used >= self.seconds and not state.stop:
            state.stop = True
            record["time_budget_stopped"] = True  # saved with the checkpoint (runs after)


def stop_reason(history: list[dict[str, Any]], spec: Spec, budget_s: float) -> str | None:
    """Why a run with this history is finished under this spec and budget (None: it is not)."""
    if not history:
        return None
    last = history[-1]
    if last.get("early_stopped"):
        return "early stopping"
    if last["epoch"] >= spec.train.epochs:
        return "epoch limit"
    if budget_s > 0 and sum(r.get("seconds", 0.0) for r in history) >= budget_s:
        return "time budget"
    return None


def _best_checkpoint(run_dir: Path) -> Path:
    """``best.pt``; ``last.pt`` when no epoch had a finite validation ELBO (as train_spec)."""
    best = run_dir / "checkpoints" / "best.pt"
    return best if best.is_file() else run_dir / "checkpoints" / "last.pt"


def train(spec: Spec, run_dir: Path, budget_s: float, log) -> tuple[Run | None, list[dict]]:
    """Train (or resume, or skip when finished) ``spec`` in ``run_dir``, as
    :func:`ppvae.run.train_spec` does, with the time budget as a callback.

    Returns the run with its best weights loaded (None when nothing was trained now) and
    the history."""
    last = run_dir / "checkpoints" / "last.pt"
    resume = last.is_file()
    if resume:
        checkpoint = load_checkpoint(last)
        if checkpoint.get("spec_digest") != spec_fingerprint(spec.to_dict()):
            _common.fail(
                f"{run_dir} was trained with a different spec (models/ file or flags such "
                "as --device, --quick changed); delete it or choose another --out"
            )
        history = checkpoint["history"]
        reason = stop_reason(history, spec, budget_s)
        if reason is not None:
            log(f"trained already ({len(history)} epochs, stopped by {reason})")
            return None, history
        log(f"resuming after epoch {history[-1]['epoch']}")
    callbacks = [TimeBudget(budget_s)] if budget_s > 0 else []
    run, history = train_spec(spec, run_dir, force=True, resume=resume, callbacks=callbacks)
    return run, history.records


def evaluate(run: Run | None, run_dir: Path, args, log) -> dict[str, Any]:
    """The test-split summary of the best checkpoint (read back when it exists)."""
    subset = f"-n{args.test_points}" if args.test_points and not args.quick else ""
    path = run_dir / "evaluation" / f"test-K{args.num_samples}{subset}.json"
    if path.is_file() and run is None:  # trained further now: the old figures are stale
        log(f"evaluated already ({path})")
        summary = json.loads(path.read_text())
        summary.setdefault("seconds", None)
        return summary
    if run is None:
        run = load_run(run_dir, which=_best_checkpoint(run_dir).stem, device=args.device)
    run.model.eval()
    run.guide.eval()
    points = QUICK_TEST_POINTS if args.quick else args.test_points
    if points and points < len(run.data.test):
        # a seeded random subset: the file's rows are grouped by digit, a prefix is not fair
        test = run.data.test
        index = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:points]
        part = Split(test.x[index], None if test.y is None else test.y[index])
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, test=part))
    log(f"evaluating {len(run.data.test)} test points with K = {args.num_samples} ...")
    start = time.perf_counter()
    summary = evaluate_run(
        run, split="test", num_samples=args.num_samples, batch_size=args.eval_batch_size
    )
    summary["seconds"] = time.perf_counter() - start
    _common.write_json(path, summary)  # with the time added (and a subset's own name)
    return summary


def _valid_elbo(record: dict[str, Any]) -> float:
    value = record.get("valid_elbo")
    return value if isinstance(value, int | float) and math.isfinite(value) else -math.inf


def benchmark_model(name: str, args, log) -> dict[str, Any]:
    result_path = args.out / f"{name}.json"
    if result_path.is_file():
        result = json.loads(result_path.read_text())
        same = (
            result.get("num_samples") == args.num_samples
            and result.get("test_points_asked") == (args.test_points or None)
            # a larger budget or epoch limit continues a run that the old one stopped
            and not (
                result.get("stopped_by") == "time budget"
                and result.get("time_budget_minutes") != (args.time_budget_minutes or None)
            )
            and not (result.get("stopped_by") == "epoch limit" and args.epochs > result["epochs"])
        )
        if same:
            log(f"done already ({result_path}); delete it to redo")
            return result
    overrides = [f"train.device={args.device}", f"train.progress={str(args.progress).lower()}"]
    if args.epochs:
        overrides.append(f"train.epochs={args.epochs}")
    if args.quick:
        overrides.append(f"data.limit={QUICK_LIMIT}")
        if not args.epochs:
            overrides.append("train.epochs=1")
    spec = load_spec(_common.REPO / "models" / f"{name}.toml", overrides)
    run_dir = args.out / "runs" / name
    budget_s = 60.0 * args.time_budget_minutes
    run, history = train(spec, run_dir, budget_s, log)
    summary = evaluate(run, run_dir, args, log)
    best = max(history, key=_valid_elbo)
    published = PUBLISHED.get(name, {})
    result = {
        "model": name,
        "spec": f"models/{name}.toml",
        "objective": spec.objective.kind,
        "objective_particles": getattr(spec.objective, "num_particles", None),
        "prior": spec.prior.kind,
        "guide": spec.guide.kind,
        "device": args.device,
        "quick": args.quick,
        "train_points": QUICK_LIMIT if args.quick else None,
        "epochs": len(history),
        "max_epochs": spec.train.epochs,
        "best_epoch": best["epoch"],
        "stopped_by": stop_reason(history, spec, budget_s) or "unfinished",
        "best_valid_elbo": _valid_elbo(best),
        "train_seconds": sum(r.get("seconds", 0.0) for r in history),
        "time_budget_minutes": args.time_budget_minutes or None,
        "eval_seconds": summary.get("seconds"),
        "num_samples": summary["num_samples"],
        "test_points": summary["n"],
        "test_points_asked": args.test_points or None,
        "curve": [
            {"epoch": r["epoch"], "valid_elbo": r.get("valid_elbo"), "seconds": r.get("seconds")}
            for r in history
        ],
        "nll": summary["nll"],
        "nll_sem": summary["log_px_sem"],
        "elbo": summary["elbo"],
        "elbo_sem": summary["elbo_sem"],
        "gap": summary["gap"],
        "khat_frac_above_0_7": summary["khat_frac_bad"],
        "khat_max": summary["khat_max"],
        "ess_median": summary["ess_median"],
        "published_nll": published.get("nll"),
        "published_source": published.get("source"),
        "target_nll": published.get("target"),
        "pythae_nll": published.get("pythae"),
        "meets_target": None
        if published.get("target") is None
        else bool(summary["nll"] <= published["target"]),
        "run_dir": str(run_dir),
        "evaluation": summary,
    }
    result["projection"] = projection(result)
    _common.write_json(result_path, result)
    return result


def projection(result: dict[str, Any]) -> dict[str, Any] | None:
    """Where the test NLL is heading: fit ``-valid ELBO(e) = a + b / e`` (least squares in
    ``1 / e``) to the second half of the validation curve (at least 4 epochs); the projected
    NLL is the measured one minus the further gain the fit predicts, ``best - a``.

    A rough guide for runs stopped by a budget, not a measurement: ``a + b / e`` flattens
    sooner than real curves, so it errs on the optimistic side only when the curve is
    noisy."""
    points = [
        (c["epoch"], -c["valid_elbo"])
        for c in result.get("curve", [])
        if isinstance(c.get("valid_elbo"), int | float) and math.isfinite(c["valid_elbo"])
    ]
    points = points[len(points) // 2 :]
    if len(points) < 4 or result.get("stopped_by") == "early stopping":
        return None
    u = [1.0 / e for e, _ in points]
    v = [y for _, y in points]
    mu, mv = sum(u) / len(u), sum(v) / len(v)
    suu = sum((a - mu) ** 2 for a in u)
    if suu == 0:
        return None
    b = sum((a - mu) * (y - mv) for a, y in zip(u, v, strict=True)) / suu
    a = mv - b * mu
    best = -result["best_valid_elbo"]
    gain = max(0.0, best - a)
    return {"asymptote_neg_valid_elbo": a, "further_gain": gain, "nll": result["nll"] - gain}


def _curve_text(curve: list[dict[str, Any]], points: int = 6) -> str:
    """A few (epoch: -valid ELBO) pairs spread over the curve, the last included."""
    valid = [c for c in curve if isinstance(c.get("valid_elbo"), int | float)]
    if not valid:
        return "-"
    step = max(1, math.ceil(len(valid) / points))
    picked = valid[::step]
    if picked[-1] is not valid[-1]:
        picked.append(valid[-1])
    return ", ".join(f"{c['epoch']}: {-c['valid_elbo']:.1f}" for c in picked)


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def markdown(report: dict[str, Any]) -> str:
    epochs = report["epochs"] or "the spec's (train.epochs)"
    lines = [
        "# Binarized MNIST: test negative log-likelihood (nats, lower is better)",
        "",
        *_common.machine_lines(report["machine"]),
        "- data: statically binarized MNIST (Larochelle & Murray 2011), 50,000 train / "
        "10,000 valid / 10,000 test; model selected on valid (best validation ELBO)"
        + (
            f"; --quick: {QUICK_LIMIT} training images, {QUICK_TEST_POINTS} test points"
            if report["quick"]
            else ""
        ),
        *(
            [
                f"- test NLL on a seeded random subset of {report['test_points']:,} of the "
                "10,000 test images (--test-points; the s.e. reflects it)"
            ]
            if report.get("test_points")
            else []
        ),
        f"- budget per model: at most {epochs} epochs"
        + (
            f" and {report['time_budget_minutes']:g} minutes of training"
            if report["time_budget_minutes"]
            else ", no time limit"
        )
        + "; early stopping on the validation ELBO as the spec says",
        "",
    ]
    headers = [
        "model",
        "test NLL ± s.e.",
        "published NLL (source)",
        "target",
        "pythae",
        "test ELBO",
        "k-hat > 0.7",
        "epochs / max",
        "stopped by",
        "train time",
        "eval time",
        "K",
    ]
    rows = []
    for r in report["models"]:
        sem = r["nll_sem"]
        published = "-" if r["published_nll"] is None else f"{r['published_nll']:.2f}"
        rows.append(
            [
                r["model"],
                f"{r['nll']:.2f} ± {sem:.2f}" if sem is not None else f"{r['nll']:.2f}",
                f"{published} ({r['published_source']})",
                "-"
                if r["target_nll"] is None
                else f"<= {r['target_nll']:.1f}" + (" ✓" if r["meets_target"] else " ✗"),
                "-" if r["pythae_nll"] is None else f"{r['pythae_nll']:.2f}",
                f"{r['elbo']:.2f}",
                "-"
                if r["khat_frac_above_0_7"] is None
                else f"{100 * r['khat_frac_above_0_7']:.1f}%",
                f"{r['epochs']}/{r['max_epochs']} (best {r['best_epoch']})",
                r["stopped_by"],
                _minutes(r["train_seconds"]),
                _minutes(r["eval_seconds"]),
                r["num_samples"],
            ]
        )
    lines.append(_common.markdown_table(headers, rows))
    projected = [r for r in report["models"] if r.get("projection")]
    if projected:
        lines += [
            "",
            "Runs stopped by the budget, and where their curves point (a + b/epoch fitted to "
            "the second half of the validation -ELBO curve; projected NLL = test NLL minus the "
            "further gain the fit predicts; a rough guide, not a measurement):",
            "",
            _common.markdown_table(
                ["model", "-valid ELBO by epoch", "fitted asymptote", "projected test NLL"],
                [
                    [
                        r["model"],
                        _curve_text(r["curve"]),
                        f"{r['projection']['asymptote_neg_valid_elbo']:.2f}",
                        f"{r['projection']['nll']:.2f}",
                    ]
                    for r in projected
                ],
            ),
        ]
    lines += [
        "",
        "test NLL = -mean log p(x) over the test points, importance sampled with K samples from "
        "the guide; s.e. = standard error of that mean over the test points. test ELBO = mean "
        "log weight of the same samples. k-hat > 0.7: share of test points whose PSIS k-hat "
        "exceeds 0.7 (their estimate is unreliable). Published figures use 5,000 importance "
        "samples and hundreds to thousands of epochs (pythae's VAE: 200 samples, 40 latent "
        "dimensions); train time sums the epochs' seconds (validation included).",
    ]
    return "\n".join(lines) + "\n"


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated (default: {','.join(MODELS)}; also {','.join(EXTRA_MODELS)})",
    )
    p.add_argument("--epochs", type=int, default=0, help="maximum epochs (0: the spec's)")
    p.add_argument(
        "--time-budget-minutes",
        type=float,
        default=0.0,
        help="training time per model; stop after the epoch that crosses it (0: none)",
    )
    p.add_argument("--num-samples", type=int, default=5000, help="importance samples (K)")
    p.add_argument(
        "--test-points",
        type=int,
        default=0,
        help="evaluate a seeded random subset of this many test points (0: all 10,000)",
    )
    p.add_argument("--eval-batch-size", type=int, default=None, help="default: the spec's")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results/bmnist")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_LIMIT} training images, 1 epoch, K={QUICK_SAMPLES}, "
        f"{QUICK_TEST_POINTS} test points (default --out benchmarks/results/bmnist-quick)",
    )
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS + EXTRA_MODELS]
    if unknown:
        p.error(f"unknown model {unknown[0]!r}; allowed: {', '.join(MODELS + EXTRA_MODELS)}")
    if args.quick:
        args.num_samples = QUICK_SAMPLES
    if args.out is None:
        args.out = _common.RESULTS / ("bmnist-quick" if args.quick else "bmnist")
    if args.epochs < 0 or args.time_budget_minutes < 0 or args.num_samples < 1:
        p.error("--epochs and --time-budget-minutes must be >= 0, --num-samples >= 1")
    if args.test_points < 0:
        p.error("--test-points must be >= 0 (0: the whole test split)")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    _common.require_data_dir()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"skipped: --device {args.device} was asked for but CUDA is not available here")
        return 0
    device = resolve_device(args.device)
    report: dict[str, Any] = {
        "benchmark": "binarized MNIST test NLL (issue 8)",
        "machine": _common.machine_info(device),
        "quick": args.quick,
        "epochs": args.epochs or None,
        "time_budget_minutes": args.time_budget_minutes or None,
        "num_samples": args.num_samples,
        "test_points": None if args.quick else (args.test_points or None),
        "models": [],
    }
    start = time.perf_counter()
    for name in args.models:

        def log(message: str, name: str = name) -> None:
            print(f"[{name}] {message}", flush=True)

        report["models"].append(benchmark_model(name, args, log))
        # the table so far, so that a kill leaves the finished models' rows
        _common.write_json(args.out / "bmnist.json", report)
        _common.write_text(args.out / "bmnist.md", markdown(report))
    report["session_seconds"] = time.perf_counter() - start
    text = markdown(report)
    _common.write_json(args.out / "bmnist.json", report)
    _common.write_text(args.out / "bmnist.md", text)
    print()
    print(text)
    print(f"wrote {args.out / 'bmnist.json'} and {args.out / 'bmnist.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
