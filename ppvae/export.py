"""Export a trained run for others: weights as safetensors, the spec, a model card.

``ppvae export RUN --out DIR`` (:func:`export_run`) writes::

    .ppvae-export       the marker: ppvae made this folder (``--force`` needs it)
    model.safetensors   the weights of the model (``model.*``) and the guide (``guide.*``)
                        of one checkpoint (``best`` by default), and the spec in its
                        metadata; no pickle: a JSON header and raw tensor buffers
    spec.toml           the resolved spec the model is rebuilt from
    README.md           the model card: data, model, objective, training budget (epochs,
                        steps, wall time), the run's evaluations (K, standard errors,
                        k-hat shares) and latent diagnostics

:func:`ppvae.load_run` loads the folder as it loads a run folder, on any device: it
rebuilds the model and guide from ``spec.toml`` and loads the weights, refusing weights
that do not fit the spec's model and a spec edited after training. Nothing in an export is
pickled, so nothing in it runs code when it is read, with one exception the model card
states: a spec with ``network.kind = "user"`` names the modules of its networks, which
loading imports (they must be installed, or lie in the working directory).

Example:
    >>> import tempfile
    >>> from ppvae.run import load_run, train_spec
    >>> from ppvae.spec import parse_spec
    >>> spec = parse_spec({"data": {"binarize": "dynamic", "limit": 100},
    ...                    "model": {"latent_dim": 2, "hidden": [16]},
    ...                    "train": {"epochs": 1, "progress": False}})
    >>> run, _ = train_spec(spec, tempfile.mkdtemp() + "/run")
    >>> folder = export_run(run.path, tempfile.mkdtemp() + "/export")
    >>> sorted(p.name for p in folder.iterdir())
    ['.ppvae-export', 'README.md', 'model.safetensors', 'spec.toml']
    >>> load_run(folder).spec == run.spec
    True
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ppvae.checkpoint import load_checkpoint
from ppvae.errors import RunDirError, SpecError
from ppvae.run import SPEC_FILE, Run, load_run
from ppvae.rundir import (
    EXPORT_MARKER,
    check_no_links,
    check_parents,
    is_marked,
    remove_tree,
    write_bytes_atomic,
    write_marker,
    write_text_atomic,
    writing,
)
from ppvae.spec import dump_spec
from ppvae.weights import WEIGHTS_FILE, weights_bytes

__all__ = ["export_run", "model_card", "CARD_FILE", "EXPORT_FORMAT"]

CARD_FILE = "README.md"
EXPORT_FORMAT = "ppvae-export-1"


def export_run(
    run_dir: str | Path, out: str | Path, *, force: bool = False, which: str = "best"
) -> Path:
    """Export the run in ``run_dir`` (its ``which`` checkpoint) into the folder ``out``;
    return ``out``.

    ``out`` must not exist, be empty, or (with ``force=True``) be an earlier export, which
    is replaced only once the new one is written (written beside it, then swapped in). A
    run folder holding a link, an edited ``spec.toml`` or a run built on other runs
    (M1+M2) is refused in one sentence.
    """
    src, out = Path(run_dir), Path(out)
    if src.is_dir() and (src / WEIGHTS_FILE).is_file() and not (src / "checkpoints").exists():
        raise RunDirError(
            f"{str(src)!r} is an export already, not a run folder; copy the folder to share it"
        )
    if src.is_dir() and (src / SPEC_FILE).is_file() and not (src / "checkpoints").is_dir():
        raise RunDirError(
            f"{str(src)!r} has no checkpoints folder: it is not a trained ppvae run folder"
        )
    _check_out(src, out, force)
    run = load_run(src, which=which)  # links, the spec against its checkpoint, the weights
    built_on = run.spec.model.pretrained_runs()
    if built_on:
        raise SpecError(
            f"the run in {str(src)!r} builds on other trained runs ({', '.join(built_on.values())}),"
            " which an export cannot carry yet; share the run folders instead"
        )
    checkpoint = load_checkpoint(src / "checkpoints" / f"{which}.pt")
    history = checkpoint.get("history")
    epoch = len(history) if isinstance(history, list) else None
    metadata = {
        "format": EXPORT_FORMAT,
        "ppvae": _version(),
        "spec": json.dumps(run.spec.to_dict(), sort_keys=True, default=str),
        "checkpoint": which,
        "epoch": str(epoch),
    }
    weights = weights_bytes({"model": run.model, "guide": run.guide}, metadata)
    card = model_card(
        run,
        records=_read_metrics(src / "metrics.jsonl"),
        evaluations=_read_evaluations(src / "evaluation"),
        which=which,
        epoch=epoch,
        weights=weights,
        folder=out.name,
    )
    stage = out.parent / f".{out.name}.{os.getpid()}.ppvae-export-new"
    remove_tree(stage)
    try:
        with writing(stage, "write the export"):
            stage.mkdir(parents=True)
        write_marker(stage, EXPORT_MARKER)
        write_bytes_atomic(stage / WEIGHTS_FILE, weights)
        write_text_atomic(stage / SPEC_FILE, dump_spec(run.spec))
        write_text_atomic(stage / CARD_FILE, card)
        _check_out(src, out, force)  # again: another process may have written there meanwhile
        _swap_in(stage, out)
    finally:
        remove_tree(stage)
    return out


def _version() -> str:
    from ppvae._version import __version__

    return __version__


def _check_out(src: Path, out: Path, force: bool) -> None:
    """Refuse an export folder that is a link or a file, lies under a file or inside the
    run folder, or holds anything but an earlier export (``force``)."""
    if out.is_symlink():
        raise RunDirError(f"--out {str(out)!r} is a symbolic link; give the folder itself")
    check_parents(out, f"--out {str(out)!r}", "choose another --out")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {str(out)!r} is a file; choose a folder")
    if src.is_dir() and (out.resolve() == src.resolve() or src.resolve() in out.resolve().parents):
        raise RunDirError(
            f"--out {str(out)!r} lies inside the run folder {str(src)!r}; choose a folder "
            "outside it"
        )
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise RunDirError(
                f"--out {str(out)!r} exists and is not empty; pass --force to replace it or "
                "choose another --out"
            )
        if not is_marked(out, EXPORT_MARKER):
            raise RunDirError(
                f"refusing to replace {str(out)!r}: it is not a ppvae export (it has no "
                f"{EXPORT_MARKER} marker, which ppvae export writes)"
            )
        check_no_links(out, "export folder")


def _swap_in(stage: Path, out: Path) -> None:
    """Put the export written in ``stage`` at ``out`` (replacing an earlier one)."""
    with writing(out, "write the export"):
        if out.is_dir() and any(out.iterdir()):
            trash = out.parent / f".{out.name}.{os.getpid()}.ppvae-export-old"
            os.rename(out, trash)
            os.rename(stage, out)
            remove_tree(trash)
        else:
            if out.is_dir():
                out.rmdir()
            os.rename(stage, out)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (epoch records and resume notes), unreadable lines
    left out."""
    if path.is_symlink() or not path.is_file():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _read_evaluations(folder: Path) -> list[dict[str, Any]]:
    """The summaries ``ppvae evaluate`` wrote (``evaluation/*.json``), by split and K."""
    if folder.is_symlink() or not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and "num_samples" in summary and "log_px" in summary:
            found.append({**summary, "file": path.name})
    return sorted(found, key=lambda s: (str(s.get("split")), _num(s.get("num_samples")) or 0))


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: Any, digits: int = 2) -> str:
    number = _num(value)
    return "-" if number is None else f"{number:.{digits}f}"


def _pct(value: Any) -> str:
    number = _num(value)
    return "-" if number is None else f"{100 * number:.1f}%"


def _toml_sections(spec_dict: dict[str, Any], names: tuple[str, ...]) -> str:
    import tomli_w

    return tomli_w.dumps({k: spec_dict[k] for k in names if k in spec_dict}).strip()


def model_card(
    run: Run,
    *,
    records: list[dict[str, Any]],
    evaluations: list[dict[str, Any]],
    which: str = "best",
    epoch: int | None = None,
    weights: bytes = b"",
    folder: str = "EXPORT",
) -> str:
    """The Markdown model card of an export of ``run``: data, model, objective, training
    budget (from ``records``: ``metrics.jsonl``), the ``evaluations`` (``ppvae evaluate``
    summaries) with K and standard errors, and diagnostics; ``folder``: the export's
    folder name, for the loading snippet."""
    spec, data = run.spec, run.data
    sd = spec.to_dict()
    epochs = [r for r in records if isinstance(r.get("epoch"), int) and "train_loss" in r]
    resumes = sum(1 for r in records if "resumed" in r)
    n_params = sum(p.numel() for m in (run.model, run.guide) for p in m.parameters())
    name = run.path.name
    lines = [
        f"# {name}: a ppvae model",
        "",
        f"A `{spec.model.kind}` model (prior `{sd.get('prior', {}).get('kind', '-')}`, guide "
        f"`{sd.get('guide', {}).get('kind', '-')}`, likelihood "
        f"`{sd.get('likelihood', {}).get('kind', '-')}`) trained with the "
        f"`{spec.objective.kind}` objective on `{data.name}`, exported by ppvae {_version()} "
        f"on {datetime.date.today().isoformat()} from the run folder `{name}`: the weights "
        f"of its `{which}` checkpoint"
        + (f" (after epoch {epoch})" if epoch is not None else "")
        + f", {n_params:,} parameters.",
        "",
        "## Files",
        "",
        "| file | what |",
        "| --- | --- |",
        f"| `{WEIGHTS_FILE}` | the weights of the model (`model.*`) and the guide (`guide.*`), "
        "safetensors (no pickle)"
        + (f", sha256 `{hashlib.sha256(weights).hexdigest()}`" if weights else "")
        + " |",
        f"| `{SPEC_FILE}` | the resolved spec the model and guide are rebuilt from |",
        f"| `{CARD_FILE}` | this card |",
        "",
        "## Load",
        "",
        "```python",
        "import ppvae",
        "",
        f'run = ppvae.load_run("{folder}", device="cpu")  # or "cuda"',
        "run.model, run.guide  # the Pyro model and guide, in eval mode",
        "```",
        "",
        "The model is rebuilt from `spec.toml` (the same ppvae model kinds must be installed) "
        "and the spec's data are loaded with it: "
        + (
            f"set `data.path` in `spec.toml` to where `{data.name}` lies on your machine."
            if sd.get("data", {}).get("path")
            else f"`{data.name}` needs no files."
        )
        + _user_code_note(spec),
        "",
        "## Data",
        "",
        f"- data set `{data.name}` (`{spec.data.kind}`), {data.dim} values per point"
        + (f", images {' x '.join(map(str, data.image_shape))}" if data.image_shape else "")
        + (f", {data.num_classes} classes" if data.num_classes else "")
        + f", binarize `{data.binarize}`",
        f"- splits: {len(data.train):,} train, {len(data.valid):,} valid, "
        f"{len(data.test):,} test points",
        "",
        "## Model and objective",
        "",
        "```toml",
        _toml_sections(sd, ("model", "network", "prior", "guide", "likelihood", "objective")),
        "```",
        "",
        "## Training budget",
        "",
    ]
    train = spec.train
    if epochs:
        last = epochs[-1]
        seconds = sum(_num(r.get("seconds")) or 0.0 for r in epochs)
        lines.append(
            f"- {last['epoch']} epochs of {train.epochs} planned, {last.get('step', '-')} steps, "
            f"{seconds:.1f} s of training (wall time of the epochs in metrics.jsonl)"
            + (f"; resumed {resumes} time(s)" if resumes else "")
            + ("; stopped early" if last.get("early_stopped") else "")
        )
        scored = [r for r in epochs if _num(r.get("valid_elbo")) is not None]
        if scored:
            best = max(scored, key=lambda r: r["valid_elbo"])
            lines.append(
                f"- validation ELBO: {_fmt(scored[-1]['valid_elbo'])} at the last epoch, best "
                f"{_fmt(best['valid_elbo'])} (epoch {best['epoch']})"
            )
        lines.append(f"- final training loss: {_fmt(last.get('train_loss'))} nats per point")
    else:
        lines.append("- no training record (metrics.jsonl) was found in the run")
    lines.append(
        f"- batch size {train.batch_size}, optimizer {train.optimizer}, lr {train.lr:g}, "
        f"lr schedule {train.lr_schedule}, beta {train.beta:g}, KL warm-up "
        f"{train.kl_warmup_epochs} epochs, seed {train.seed}"
    )
    lines += ["", "## Evaluation", ""]
    if evaluations:
        lines += [
            "| split | K | points | log p(x) ± s.e. | ELBO ± s.e. | gap | median ESS | "
            "k-hat > 0.7 | k-hat > threshold | reliable |",
            "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for s in evaluations:
            lines.append(
                f"| {s.get('split', '-')} | {s.get('num_samples', '-')} | {s.get('n', '-')} | "
                f"{_fmt(s.get('log_px'))} ± {_fmt(s.get('log_px_sem'))} | "
                f"{_fmt(s.get('elbo'))} ± {_fmt(s.get('elbo_sem'))} | {_fmt(s.get('gap'))} | "
                f"{_fmt(s.get('ess_median'), 1)} | {_pct(s.get('khat_frac_bad'))} | "
                f"{_pct(s.get('khat_frac_above_threshold'))} "
                f"({_fmt(s.get('khat_threshold'), 3)}) | "
                f"{'yes' if s.get('reliable') else 'no' if s.get('reliable') is False else '-'} |"
            )
        lines += [
            "",
            "log p(x) is estimated by importance sampling with K samples from the guide per "
            "point (nats per point, mean ± standard error over the points); the gap is "
            "log p(x) - ELBO. A large share of k-hat above the threshold means heavy-tailed "
            "importance weights: log p(x) is then likely underestimated.",
        ]
        for s in evaluations:
            if s.get("accuracy") is not None:
                lines.append(f"- {s.get('split')} accuracy of q(y|x): {_fmt(s['accuracy'])}%")
            if s.get("warning"):
                lines.append(f"- warning ({s.get('file')}): {s['warning']}")
    else:
        lines.append(
            f"No evaluation was found in the run (`ppvae evaluate {name}` writes one); "
            "nothing here estimates log p(x)."
        )
    lines += ["", "## Diagnostics", ""]
    diagnostics = []
    latent = epochs[-1].get("latent") if epochs else None
    if isinstance(latent, dict) and _num(epochs[-1].get("active_units")) is not None:
        diagnostics.append(
            f"- active units at the last epoch: {epochs[-1]['active_units']} of "
            f"{latent.get('latent_dim', '-')} latent dimensions (validation data)"
            + (f", KL {_fmt(latent.get('kl'))} nats" if _num(latent.get("kl")) else "")
        )
    for s in evaluations:
        if _num(s.get("khat_frac_bad")) is not None:
            diagnostics.append(
                f"- k-hat share > 0.7 on {s.get('split')} (K = {s.get('num_samples')}): "
                f"{_pct(s['khat_frac_bad'])}, max {_fmt(s.get('khat_max'))}"
            )
    skipped = sum(int(_num(r.get("skipped_steps")) or 0) for r in epochs)
    if skipped:
        diagnostics.append(f"- {skipped} steps skipped for a non-finite loss or gradient")
    lines += diagnostics or ["- none recorded in the run"]
    return "\n".join(lines) + "\n"


def _user_code_note(spec) -> str:
    """The model card's sentence on user networks: loading the export imports their code."""
    network = spec.network
    if network.kind != "user":
        return ""
    refs = [f"`{r}`" for r in (network.encoder, network.decoder) if r]
    return (
        f' Its networks are your own code ({", ".join(refs)}, `network.kind = "user"`): '
        "loading the export imports those modules, so they must be installed, lie in the "
        "working directory, or lie at the file paths the spec names (edit them in `spec.toml` "
        "if you move the files), and they run as any code you import."
    )
