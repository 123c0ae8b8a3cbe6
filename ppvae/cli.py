"""The ``ppvae`` command line: ``train``, ``evaluate``, ``sample``, ``report``.

Every error a user can cause prints one line ``error: <sentence>`` and exits with status 2
(argparse's own usage errors exit 2 as well).

Examples::

    ppvae train models/vae.toml
    ppvae train models/vae_bmnist.toml --set train.epochs=2 --set objective.kind=iwae --out runs/x
    ppvae evaluate runs/vae --num-samples 1000 --json
    ppvae sample runs/vae -n 64 --out samples.png
    ppvae semisupervised models/m2_digits.toml --labels 50 100 --seeds 3 --out runs/ss
    ppvae classify runs/ss/L50/seed0/m2 --split test --out predictions.csv
    ppvae report runs/vae
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ppvae.errors import PpvaeError

__all__ = ["main", "build_parser"]


def _add_spec_options(p: argparse.ArgumentParser) -> None:
    """``--set`` overrides and ``--device``, shared by the commands that read a spec."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one spec value (repeatable), e.g. --set train.epochs=5",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (same as --set train.device=...)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppvae", description="Deep latent variable models written as Pyro programs."
    )
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module first (one that registers your own priors, guides, ...); repeatable",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("train", help="train a model spec into a run folder")
    p.add_argument("spec", nargs="?", help="a TOML spec, e.g. models/vae.toml")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last checkpoint (--set train.epochs=N extends it)",
    )
    p.add_argument("--out", help="run folder (default: runs/<spec name>, numbered if taken)")
    _add_spec_options(p)
    p.add_argument("--seed", type=int, help="random seed (same as --set train.seed=...)")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="use PyTorch's deterministic algorithms (exact repeats on GPU)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="estimate log p(x) and the ELBO of a trained run")
    p.add_argument("run_dir", help="a run folder written by ppvae train")
    p.add_argument(
        "--split", choices=["train", "valid", "test"], help="data split (default: the spec's)"
    )
    p.add_argument("--num-samples", "-k", type=int, help="importance samples per data point")
    p.add_argument("--batch-size", type=int, help="data points per batch")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("sample", help="draw samples from a trained run's model")
    p.add_argument("run_dir", help="a run folder written by ppvae train")
    p.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument(
        "--out", help="output file: .png (image grid), .npy or .pt (default: figures/samples-N.png)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--condition", type=int, help="class to condition on (conditional models: cvae)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")

    p = sub.add_parser("report", help="write a self-contained HTML report of a run folder")
    p.add_argument("run_dir", help="a run folder written by ppvae train")
    p.add_argument("--out", help="the HTML file (default: RUN_DIR/report.html)")
    _add_semisupervised_parsers(sub)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from ppvae.errors import RunDirError
    from ppvae.run import default_run_dir, train_spec
    from ppvae.spec import load_spec

    overrides = list(args.overrides)
    if args.device is not None:
        overrides.append(f"train.device={json.dumps(args.device)}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.deterministic:
        overrides.append("train.deterministic=true")
    progress = False if args.no_progress else None
    if args.resume is not None:
        if args.spec is not None or args.out is not None or args.force:
            raise RunDirError(
                "--resume RUN_DIR takes no SPEC, --out or --force: the run folder has its spec"
            )
        out = Path(args.resume)
        if not (out / "spec.toml").is_file():
            raise RunDirError(
                f"cannot resume {str(out)!r}: it is not a ppvae run folder (no spec.toml)"
            )
        spec = load_spec(out / "spec.toml", overrides)
        run, history = train_spec(spec, out, resume=True, progress=progress)
    else:
        if args.spec is None:
            raise RunDirError("ppvae train needs a SPEC file (or --resume RUN_DIR)")
        spec = load_spec(args.spec, overrides)
        out = Path(args.out) if args.out else default_run_dir(args.spec)
        run, history = train_spec(spec, out, force=args.force, progress=progress)
    from ppvae.distributed import is_main_process

    if not is_main_process():
        return 0
    last = history.records[-1]
    best = max(
        (r for r in history.records if r.get("valid_elbo") is not None),
        key=lambda r: r["valid_elbo"],
        default=None,
    )
    first = history.records[0]
    print(f"run folder: {run.path}")
    print(
        f"epochs: {last['epoch']}  train loss: {first['train_loss']:.4f} -> {last['train_loss']:.4f}"
    )
    if best is not None:
        print(
            f"valid ELBO: {first['valid_elbo']:.4f} (epoch 1) -> {last['valid_elbo']:.4f} "
            f"(epoch {last['epoch']}); best {best['valid_elbo']:.4f} (epoch {best['epoch']})"
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ppvae.evaluate import evaluate_run
    from ppvae.run import load_run

    run = load_run(args.run_dir, which=args.checkpoint, device=args.device)
    summary = evaluate_run(
        run,
        split=args.split,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return 0


def _print_summary(s: dict) -> None:
    def num(value, fmt: str = ".3f") -> str:
        return "n/a" if value is None else format(value, fmt)

    print(f"split {s['split']}: n = {s['n']}, K = {s['num_samples']} importance samples")
    print(f"  log p(x)  {s['log_px']:.4f} +- {num(s['log_px_sem'], '.4f')} (s.e. over points)")
    print(f"  ELBO      {s['elbo']:.4f} +- {num(s['elbo_sem'], '.4f')}")
    print(f"  gap       {s['gap']:.4f}  (mean KL(q(z|x) || p(z|x)) estimate)")
    print(f"  ESS       median {s['ess_median']:.1f}, min {s['ess_min']:.1f} of {s['num_samples']}")
    if s["khat_max"] is None:
        print("  k-hat     n/a (needs at least 21 importance samples)")
    else:
        print(
            f"  k-hat     max {num(s['khat_max'])}, median {num(s['khat_median'])}, "
            f"share > 0.7: {num(s['khat_frac_bad'])}, share > {s['khat_threshold']:.3f}: "
            f"{num(s['khat_frac_above_threshold'])}"
        )
    print(f"  per-point values: {s['per_point_file']}")
    print(f"  k-hat plot: {s['khat_plot']}")


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from ppvae.errors import RunDirError
    from ppvae.infer.train import seeded
    from ppvae.report import save_image_grid
    from ppvae.run import load_run

    if args.n < 1:
        raise RunDirError(f"-n must be at least 1, got {args.n}")
    run = load_run(args.run_dir, which=args.checkpoint)
    if not hasattr(run.model, "generate"):
        raise RunDirError(
            f"the model of {args.run_dir!r} ({run.spec.model.kind}) cannot generate samples"
        )
    out = Path(args.out) if args.out else run.path / "figures" / f"samples-{args.n}.png"
    suffix = out.suffix.lower()
    if suffix not in (".png", ".npy", ".pt"):
        raise RunDirError(f"--out must end in .png, .npy or .pt, got {str(out)!r}")
    if suffix == ".png" and run.data.image_shape is None:
        raise RunDirError(
            "the data are not images, so samples cannot be a .png; use --out FILE.npy"
        )
    with seeded(args.seed, run.device):
        if args.condition is None:
            samples = run.model.generate(args.n).cpu()
        elif "condition" in inspect.signature(run.model.generate).parameters:
            samples = run.model.generate(args.n, condition=args.condition).cpu()
        else:
            raise RunDirError(
                f"--condition needs a conditional model (cvae); {args.run_dir!r} is {run.spec.model.kind!r}"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        save_image_grid(samples, run.data.image_shape, out)
    elif suffix == ".npy":
        import numpy as np

        np.save(out, samples.numpy())
    else:
        torch.save(samples, out)
    print(f"{args.n} samples written to {out}")
    return 0


def _import_plugins(modules: list[str]) -> None:
    """Import user modules that register components (``--import MODULE``); a module is
    looked up on ``sys.path`` and in the current folder."""
    import importlib

    from ppvae.errors import SpecError

    if modules and "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise SpecError(f"--import {name}: the module cannot be imported ({err})") from None


def _cmd_report(args: argparse.Namespace) -> int:
    from ppvae.html_report import write_report

    path = write_report(args.run_dir, out=args.out)
    print(f"report written to {path}")
    return 0


def _add_semisupervised_parsers(sub) -> None:
    """The ``semisupervised`` and ``classify`` subcommands."""
    p = sub.add_parser(
        "semisupervised",
        help="train an M2 spec per label count and seed; tabulate test accuracy vs a baseline",
    )
    p.add_argument("spec", help="a TOML spec with model.kind = 'm2', e.g. models/m2_digits.toml")
    p.add_argument(
        "--labels",
        type=int,
        nargs="+",
        required=True,
        metavar="L",
        help="label counts, e.g. 100 1000",
    )
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds 0 .. N-1 (default 1)")
    p.add_argument("--out", help="experiment folder (default: runs/semisupervised-<spec name>)")
    _add_spec_options(p)
    p.add_argument("--no-baseline", action="store_true", help="skip the labelled-only baseline")
    p.add_argument("--force", action="store_true", help="replace an existing experiment folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished cells of an existing experiment folder",
    )
    p.add_argument("--progress", action="store_true", help="show a progress bar per run")

    p = sub.add_parser("classify", help="predict labels with a trained semi-supervised run")
    p.add_argument("run_dir", help="a run folder of an m2 spec")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="FILE.npz", help="inputs x (and labels y) to classify")
    source.add_argument(
        "--split",
        choices=["train", "valid", "test"],
        help="a split of the run's data (default test)",
    )
    p.add_argument(
        "--out", metavar="FILE.csv", help="output CSV (default: RUN_DIR/classify-NAME.csv)"
    )
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")


def _cmd_semisupervised(args: argparse.Namespace) -> int:
    from ppvae.errors import SpecError
    from ppvae.semisupervised import run_semisupervised
    from ppvae.spec import load_spec

    if args.seeds < 1:
        raise SpecError(f"--seeds must be at least 1, got {args.seeds}")
    if args.force and args.resume:
        raise SpecError("--force and --resume exclude each other: start again or keep the runs")
    overrides = list(args.overrides)
    if args.device is not None:
        overrides.append(f"train.device={json.dumps(args.device)}")
    spec = load_spec(args.spec, overrides)
    out = Path(args.out) if args.out else Path("runs") / f"semisupervised-{Path(args.spec).stem}"
    result = run_semisupervised(
        spec,
        args.labels,
        args.seeds,
        out,
        baseline=not args.no_baseline,
        force=args.force,
        resume=args.resume,
        progress=args.progress,
    )
    print((out / "table.md").read_text(), end="")
    print("files: " + ", ".join(str(f) for f in result.files))
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from ppvae.classify import classify_run

    result = classify_run(
        args.run_dir,
        data=args.data,
        split=args.split,
        out=args.out,
        checkpoint=args.checkpoint,
        device=args.device,
    )
    print(f"{len(result.predicted)} points classified; predictions written to {result.out}")
    if result.accuracy is not None:
        print(f"accuracy: {result.accuracy:.2f}%")
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "sample": _cmd_sample,
    "report": _cmd_report,
    "semisupervised": _cmd_semisupervised,
    "classify": _cmd_classify,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error)."""
    args = build_parser().parse_args(argv)
    try:
        _import_plugins(args.imports)
        return _COMMANDS[args.command](args)
    except PpvaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
