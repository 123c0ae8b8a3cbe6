"""The ``ppvae`` command line: ``train``, ``evaluate``, ``sample``, ``report``, ``compare``,
``kinds``, ``semisupervised``, ``classify``.

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
    ppvae compare runs/vae runs/mf --out runs/compare
    ppvae kinds prior
    ppvae export runs/vae --out exports/vae
"""

from __future__ import annotations

import argparse
import io
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

    p = sub.add_parser(
        "compare", help="overlay the curves of runs and tabulate their figures and evaluations"
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders written by train")
    p.add_argument(
        "--out", default="runs/compare", help="folder for curves.png, table.md, table.csv"
    )

    p = sub.add_parser(
        "kinds", help="list the kinds of every spec section with their keys and defaults"
    )
    p.add_argument("section", nargs="?", help="one section (data, model, prior, ...)")
    p = sub.add_parser(
        "export",
        help="export a run: weights (safetensors), spec and model card, loadable by load_run",
    )
    p.add_argument("run_dir", help="a run folder written by ppvae train")
    p.add_argument("--out", required=True, help="the export folder (new or empty)")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--force", action="store_true", help="replace an earlier export in --out")
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
        _check_seed_option(args.seed)
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
        if out.is_symlink() or (out / "spec.toml").is_symlink():
            raise RunDirError(
                f"cannot resume {str(out)!r}: it is or holds a symbolic link; ppvae never "
                "follows links in a run folder"
            )
        if not (out / "spec.toml").is_file():
            raise RunDirError(
                f"cannot resume {str(out)!r}: it is not a ppvae run folder (no spec.toml)"
            )
        spec = load_spec(out / "spec.toml", overrides)
        from ppvae.run import completed_epochs

        done = completed_epochs(out, spec)
        if done is not None and done >= spec.train.epochs:
            print(
                f"{out} has finished: {done} epochs done, train.epochs = {spec.train.epochs}; "
                "nothing to resume. To train it longer, extend it: ppvae train --resume "
                f"{out} --set train.epochs={max(done, spec.train.epochs) * 2}"
            )
            print(f"next: ppvae evaluate {out}   ppvae report {out}")
            return 0
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
    _print_train_summary(run, history.records)
    return 0


def _print_train_summary(run, records: list[dict]) -> None:
    """The closing summary of ``ppvae train``: folder, epochs, best epoch, figures, and
    the commands that come next."""
    import math

    print(f"run folder: {run.path}")
    if not records:
        print("epochs: 0")
        return
    last, first = records[-1], records[0]
    scored = [r for r in records if isinstance(r.get("valid_elbo"), float)]
    scored = [r for r in scored if math.isfinite(r["valid_elbo"])]
    best = max(scored, key=lambda r: r["valid_elbo"], default=None)
    stopped = " (stopped early)" if last.get("early_stopped") else ""
    print(
        f"epochs: {last['epoch']}{stopped}  train loss: {first['train_loss']:.4f} -> "
        f"{last['train_loss']:.4f}"
    )
    if best is not None:
        print(
            f"valid ELBO: {first['valid_elbo']:.4f} (epoch {first['epoch']}) -> "
            f"{last['valid_elbo']:.4f} (epoch {last['epoch']}); best {best['valid_elbo']:.4f} "
            f"(epoch {best['epoch']})"
        )
        print(
            f"best epoch: {best['epoch']}  valid ELBO {best['valid_elbo']:.4f}  (checkpoints/best.pt)"
        )
    for figure in run.figures:
        print(f"figure: {figure}")
    print(f"next: ppvae evaluate {run.path}   ppvae report {run.path}")


def _evaluation_progress(json_output: bool):
    """``log_marginal_likelihood``'s progress: True (a bar on a terminal, occasional lines
    on stdout elsewhere), or with ``--json`` the lines on stderr so that stdout stays one
    JSON document."""
    if not json_output or sys.stderr.isatty():
        return True
    from ppvae.infer.importance import progress_lines

    lines = None

    def report(done: int, total: int) -> None:
        nonlocal lines
        lines = lines or progress_lines(total, sys.stderr)
        lines(done)

    return report


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ppvae.evaluate import evaluate_run
    from ppvae.run import load_run

    run = load_run(args.run_dir, which=args.checkpoint, device=args.device)
    summary = evaluate_run(
        run,
        split=args.split,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        # a bar on a terminal, a line per batch elsewhere; with --json, lines on stderr
        progress=False if args.no_progress else _evaluation_progress(args.json),
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    if summary.get("warning"):  # on stderr: --json output stays parseable
        more = 10 * summary["num_samples"]
        print(
            f"warning: {summary['warning']}; e.g. ppvae evaluate {args.run_dir} "
            f"--num-samples {more}",
            file=sys.stderr,
        )
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
    if s.get("accuracy") is not None:
        print(f"  accuracy  {s['accuracy']:.2f}% (most probable class of q(y|x) vs the labels)")
    print(f"  per-point values: {s['per_point_file']}")
    print(f"  k-hat plot: {s['khat_plot']}")


#: ``ppvae sample`` draws at most this many samples per call of ``generate``.
_SAMPLE_CHUNK = 10_000
#: A ``.png`` grid holds at most this many samples.
_MAX_PNG_SAMPLES = 10_000


def _check_seed_option(seed: int, option: str = "--seed") -> None:
    from ppvae.rundir import MAX_SEED, check_seed

    try:
        check_seed(seed, option)
    except Exception:
        from ppvae.errors import SpecError

        raise SpecError(f"{option} must be an integer from 0 to {MAX_SEED}, got {seed}") from None


def _physical_memory() -> int | None:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from ppvae.errors import RunDirError
    from ppvae.infer.rng import seeded
    from ppvae.models.abilities import Generates, GeneratesByClass
    from ppvae.report import image_grid_png
    from ppvae.run import load_run
    from ppvae.rundir import check_output_path, write_bytes_atomic

    if args.n < 1:
        raise RunDirError(f"-n must be at least 1, got {args.n}")
    _check_seed_option(args.seed)
    if args.out is not None:
        suffix = Path(args.out).suffix.lower()
        if suffix not in (".png", ".npy", ".pt"):
            raise RunDirError(f"--out must end in .png, .npy or .pt, got {args.out!r}")
        check_output_path(args.out)
    run = load_run(args.run_dir, which=args.checkpoint)
    if not isinstance(run.model, Generates):
        raise RunDirError(
            f"the model of {args.run_dir!r} ({run.spec.model.kind}) cannot generate samples"
        )
    out = Path(args.out) if args.out else run.path / "figures" / f"samples-{args.n}.png"
    suffix = out.suffix.lower()
    if suffix == ".png" and run.data.image_shape is None:
        raise RunDirError(
            "the data are not images, so samples cannot be a .png; use --out FILE.npy"
        )
    if suffix == ".png" and args.n > _MAX_PNG_SAMPLES:
        raise RunDirError(
            f"-n {args.n} is too many for a .png grid (at most {_MAX_PNG_SAMPLES}); use --out "
            "FILE.npy for more"
        )
    need = args.n * run.data.dim * 4  # float32 samples, held at once
    memory = _physical_memory()
    if memory is not None and need > memory // 2:
        raise RunDirError(
            f"-n {args.n} samples of {run.data.dim} values would need {need / 1e9:.1f} GB, more "
            f"than half of this machine's {memory / 1e9:.1f} GB of memory; draw fewer"
        )
    if args.condition is not None and not isinstance(run.model, GeneratesByClass):
        raise RunDirError(
            f"--condition needs a conditional model (cvae); {args.run_dir!r} is {run.spec.model.kind!r}"
        )
    extra = {} if args.condition is None else {"condition": args.condition}
    with seeded(args.seed, run.device):
        if args.n <= _SAMPLE_CHUNK:
            samples = run.model.generate(args.n, **extra).cpu()
        else:
            parts, left = [], args.n
            while left > 0:
                parts.append(run.model.generate(min(left, _SAMPLE_CHUNK), **extra).cpu())
                left -= _SAMPLE_CHUNK
            samples = torch.cat(parts)
    if out.parent != run.path / "figures" or args.out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
    else:
        out.parent.mkdir(exist_ok=True)
    buf = io.BytesIO()
    if suffix == ".png":
        buf.write(image_grid_png(samples, run.data.image_shape))
    elif suffix == ".npy":
        import numpy as np

        np.save(buf, samples.numpy())
    else:
        torch.save(samples, buf)
    write_bytes_atomic(out, buf.getvalue())
    print(f"{args.n} samples written to {out}")
    return 0


def _import_plugins(modules: list[str]) -> None:
    """Import user modules that register components (``--import MODULE``). A module is
    looked up on ``sys.path``, then in the current folder: the working folder never comes
    ahead of installed packages, so a stray ``sklearn.py`` there shadows nothing."""
    import importlib
    import os

    from ppvae.errors import SpecError

    if not modules:
        return
    here = {"", ".", os.getcwd()}
    sys.path[:] = [p for p in sys.path if p not in here] + [os.getcwd()]
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise SpecError(f"--import {name}: the module cannot be imported ({err})") from None


def _cmd_compare(args: argparse.Namespace) -> int:
    from ppvae.compare import compare_runs

    table = compare_runs(args.run_dirs, out=args.out)
    print(table.markdown(), end="")
    print("files: " + ", ".join(str(f) for f in table.files))
    return 0


def _cmd_kinds(args: argparse.Namespace) -> int:
    from ppvae.kinds import describe_kinds

    print(describe_kinds(args.section), end="")
    return 0


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
        log=lambda line: print(line, flush=True),  # at once, also into a pipe or a file
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


def _cmd_export(args: argparse.Namespace) -> int:
    from ppvae.export import export_run

    out = export_run(args.run_dir, args.out, force=args.force, which=args.checkpoint)
    for path in sorted(out.iterdir()):
        if not path.name.startswith("."):
            print(f"{path}  ({path.stat().st_size:,} bytes)")
    print(f'load it with: ppvae.load_run("{out}")   (the model card: {out / "README.md"})')
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "evaluate": _cmd_evaluate,
    "sample": _cmd_sample,
    "report": _cmd_report,
    "semisupervised": _cmd_semisupervised,
    "classify": _cmd_classify,
    "compare": _cmd_compare,
    "kinds": _cmd_kinds,
    "export": _cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 user error, 130 Ctrl-C)."""
    try:
        args = build_parser().parse_args(argv)
        _import_plugins(args.imports)
        return _COMMANDS[args.command](args)
    except PpvaeError as err:
        return _error(str(err))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # ppvae kinds | head: the reader left; no traceback
        import contextlib
        import os

        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:  # a full disk, a read-only folder, a vanished file
        from ppvae.rundir import os_error_message

        return _error(os_error_message(err, "use"))
    except MemoryError:
        return _error(
            "out of memory; use smaller sizes (samples, batch, model) or a larger machine"
        )
    except RuntimeError as err:
        if _is_out_of_memory(err):
            return _error(
                "out of memory; use smaller sizes (samples, batch, model) or a larger machine"
            )
        raise


def _error(sentence: str) -> int:
    print(f"error: {' '.join(sentence.split())}", file=sys.stderr)
    return 2


def _is_out_of_memory(err: RuntimeError) -> bool:
    text = str(err).lower()
    return "out of memory" in text or "can't allocate memory" in text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
