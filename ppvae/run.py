"""Run folders: train a spec into a folder, and load a trained run back.

A run folder holds::

    spec.toml               the resolved spec (every key, defaults included)
    metrics.jsonl           one JSON record per epoch
    checkpoints/last.pt     the training state after the last epoch
    checkpoints/best.pt     the state at the best validation ELBO
    figures/curves.png      training and validation curves
    figures/samples.png     decoded samples from the prior (image data)
    figures/reconstructions.png   test data above its reconstructions (image data)

:func:`train_spec` never overwrites a non-empty folder unless ``force=True``, and even then
only a folder that holds a ppvae run.

Example:
    >>> import tempfile
    >>> from ppvae.spec import parse_spec
    >>> spec = parse_spec({"data": {"binarize": "dynamic", "limit": 200},
    ...                    "model": {"latent_dim": 2, "hidden": [16]},
    ...                    "train": {"epochs": 1, "progress": False}})
    >>> run, history = train_spec(spec, tempfile.mkdtemp() + "/run")
    >>> sorted(p.name for p in run.path.iterdir())
    ['checkpoints', 'figures', 'metrics.jsonl', 'spec.toml']
    >>> load_run(run.path).spec == spec
    True
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pyro
import torch
from torch import nn

from ppvae import distributed
from ppvae.checkpoint import load_checkpoint
from ppvae.data import DataBundle, Split
from ppvae.errors import CheckpointError, RunDirError
from ppvae.infer.callbacks import Callback
from ppvae.infer.train import History, fit, resolve_device, seeded
from ppvae.models.abilities import Generates, Reconstructs
from ppvae.models.base import ModelContext, PretrainedRun
from ppvae.report import plot_curves, save_image_grid, save_reconstructions
from ppvae.spec import Spec, dump_spec, load_spec

__all__ = [
    "Run",
    "build",
    "train_spec",
    "load_run",
    "default_run_dir",
    "model_inputs",
    "train_inputs",
    "model_context",
    "write_figures",
]

SPEC_FILE = "spec.toml"


@dataclass
class Run:
    """A model/guide pair with its spec, data and folder."""

    path: Path
    spec: Spec
    data: DataBundle
    model: nn.Module
    guide: nn.Module

    @property
    def device(self) -> torch.device:
        for p in [*self.model.parameters(), *self.guide.parameters()]:
            return p.device
        return torch.device("cpu")


def build(spec: Spec) -> tuple[DataBundle, nn.Module, nn.Module]:
    """Load the spec's data and the trained runs its model kind builds on, and build its
    model/guide pair, with weights initialized from ``spec.train.seed`` (the same spec
    builds the same initial weights in any process)."""
    data = spec.data.load()
    pretrained = {name: _pretrained(path) for name, path in spec.model.pretrained_runs().items()}
    pyro.set_rng_seed(spec.train.seed)
    model, guide = spec.model.build(model_context(spec, data, pretrained))
    return data, model, guide


def model_context(
    spec: Spec, data: DataBundle, pretrained: Mapping[str, PretrainedRun] | None = None
) -> ModelContext:
    """What ``spec.model.build`` needs of the spec and data (and of trained runs)."""
    return ModelContext(
        data_name=data.name,
        data_dim=data.dim,
        train=data.train,
        prior=spec.prior,
        guide=spec.guide,
        likelihood=spec.likelihood,
        objective=spec.objective,
        num_classes=data.num_classes,
        image_shape=data.image_shape,
        binarized=data.binarize != "none",
        seed=spec.train.seed,
        pretrained=MappingProxyType(dict(pretrained or {})),
    )


def _pretrained(path: str) -> PretrainedRun:
    """The trained run in ``path``, loaded (on the CPU, in eval mode) without touching the
    random number generators."""
    state = pyro.util.get_rng_state()
    try:
        run = load_run(path)
    finally:
        pyro.util.set_rng_state(state)
    return PretrainedRun(
        path=path,
        model=run.model,
        guide=run.guide,
        data_dim=run.data.dim,
        model_kind=run.spec.model.kind,
        guide_kind=run.spec.guide.kind,
    )


def model_inputs(spec: Spec, split: Split) -> tuple[torch.Tensor, ...]:
    """The tensors a spec's model takes to evaluate ``split`` (``spec.model.inputs``)."""
    return spec.model.inputs(split)


def train_inputs(spec: Spec, data: DataBundle) -> tuple[torch.Tensor, ...]:
    """The tensors a spec's model is trained on (``spec.model.train_inputs``)."""
    return spec.model.train_inputs(data)


def default_run_dir(spec_path: str | Path, root: str | Path = "runs") -> Path:
    """``runs/<spec name>``, or ``runs/<spec name>-2``, ``-3``... if that one is taken."""
    stem = Path(spec_path).stem
    root = Path(root)
    candidate, i = root / stem, 1
    while candidate.exists() and any(candidate.iterdir()):
        i += 1
        candidate = root / f"{stem}-{i}"
    return candidate


def _check_dir(path: Path, force: bool) -> None:
    """Refuse a run folder that would be overwritten (reads only: every process checks)."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run folder {str(path)!r} is a file; choose another --out")
    if path.is_dir() and any(path.iterdir()):
        if not force:
            raise RunDirError(
                f"run folder {str(path)!r} exists and is not empty; pass --force to replace it "
                "or choose another --out"
            )
        if not (path / SPEC_FILE).is_file():
            raise RunDirError(
                f"refusing to replace {str(path)!r}: it is not a ppvae run folder (no {SPEC_FILE})"
            )


def _prepare_dir(path: Path) -> None:
    """Empty (an already checked) run folder and create it."""
    if path.is_dir() and any(path.iterdir()):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def train_spec(
    spec: Spec,
    out_dir: str | Path,
    *,
    force: bool = False,
    resume: bool = False,
    progress: bool | None = None,
    callbacks: Sequence[Callback] = (),
) -> tuple[Run, History]:
    """Train ``spec`` into ``out_dir`` and write its figures.

    ``resume=True`` continues the run in ``out_dir`` from ``checkpoints/last.pt``; the
    spec must be the one the run was started with. ``callbacks`` go to :func:`~ppvae.fit`
    (e.g. a time budget that sets ``state.stop``).
    """
    out = Path(out_dir)
    distributed.init_from_env(resolve_device(spec.train.device))
    main = distributed.is_main_process()
    resume_from = None
    if resume:
        resume_from = out / "checkpoints" / "last.pt"
        checkpoint = load_checkpoint(resume_from)
        if checkpoint.get("spec_digest") != spec.digest():
            raise CheckpointError(
                f"checkpoint {str(resume_from)!r} was written by a different spec; resume with the "
                f"run's own {SPEC_FILE}"
            )
    else:
        _check_dir(out, force)
    # Data and model first: a bad data set or model option must fail before the folder is
    # touched (no half-made run folder, and --force must not delete the old run for nothing).
    data, model, guide = build(spec)
    distributed.barrier()
    if main:
        if resume:
            # a process killed while saving leaves its temporary file behind: drop it
            for stale in (out / "checkpoints").glob(".*.tmp"):
                stale.unlink(missing_ok=True)
            _write_atomic(out / SPEC_FILE, dump_spec(spec))  # epochs may have been extended
            # metrics.jsonl is rebuilt from the checkpoint: a kill between writing a metrics
            # line and the checkpoint must not leave a record of an epoch that is redone.
            _write_atomic(
                out / "metrics.jsonl",
                "".join(json.dumps(r) + "\n" for r in checkpoint["history"]),
            )
        else:
            _prepare_dir(out)
            (out / SPEC_FILE).write_text(dump_spec(spec))
    distributed.barrier()
    t = spec.train
    history = fit(
        model,
        guide,
        train_inputs(spec, data),
        objective=spec.objective,
        epochs=t.epochs,
        batch_size=t.batch_size,
        lr=t.lr,
        valid_data=model_inputs(spec, data.valid),
        device=t.device,
        seed=t.seed,
        out_dir=out,
        optimizer=t.optimizer,
        weight_decay=t.weight_decay,
        clip_norm=t.clip_norm,
        kl_warmup_epochs=t.kl_warmup_epochs,
        early_stopping=t.early_stopping,
        on_nan=t.on_nan,
        deterministic=t.deterministic,
        progress=t.progress if progress is None else progress,
        train_transform=data.train_transform,
        spec=spec.to_dict(),
        spec_digest=spec.digest(),
        resume_from=resume_from,
        callbacks=callbacks,
    )
    run = Run(out, spec, data, model, guide)
    distributed.barrier()
    # best.pt is missing only when no epoch had a finite validation ELBO (on_nan = "skip")
    best = (out / "checkpoints" / "best.pt").is_file()
    _load_weights(run, "best" if best else "last")
    if main:
        write_figures(run, history.records)
    distributed.barrier()
    return run, history


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _load_weights(run: Run, which: str) -> dict[str, Any]:
    path = run.path / "checkpoints" / f"{which}.pt"
    checkpoint = load_checkpoint(path, map_location=run.device)
    try:
        run.model.load_state_dict(checkpoint["model"])
        run.guide.load_state_dict(checkpoint["guide"])
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match the model of {SPEC_FILE} ({err.__class__.__name__})"
        ) from None
    return checkpoint


def load_run(run_dir: str | Path, *, which: str = "best", device: str = "cpu") -> Run:
    """Rebuild a trained run from its folder: spec, data, and the ``which`` weights."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"run folder {str(path)!r} does not exist")
    if not (path / SPEC_FILE).is_file():
        raise RunDirError(f"{str(path)!r} is not a ppvae run folder: it has no {SPEC_FILE}")
    spec = load_spec(path / SPEC_FILE)
    data, model, guide = build(spec)
    dev = resolve_device(device)
    model.to(dev)
    guide.to(dev)
    run = Run(path, spec, data, model, guide)
    _load_weights(run, which)
    model.eval()
    guide.eval()
    return run


def write_figures(run: Run, records: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write curves, samples and reconstructions into ``run.path / "figures"``."""
    figures = run.path / "figures"
    figures.mkdir(exist_ok=True)
    written = []
    if records:
        plot_curves(records, figures / "curves.png")
        written.append(figures / "curves.png")
    shape = run.data.image_shape
    if shape is None:
        return written
    generator = torch.Generator().manual_seed(run.spec.train.seed)
    with seeded(run.spec.train.seed, run.device):
        if isinstance(run.model, Generates):
            save_image_grid(run.model.generate(64).cpu(), shape, figures / "samples.png")
            written.append(figures / "samples.png")
        if isinstance(run.model, Reconstructs):
            idx = torch.randperm(len(run.data.test), generator=generator)[:32]
            inputs = [t[idx].to(run.device) for t in model_inputs(run.spec, run.data.test)]
            recon = run.model.reconstruct(inputs[0], run.guide, *inputs[1:]).cpu()
            save_reconstructions(inputs[0].cpu(), recon, shape, figures / "reconstructions.png")
            written.append(figures / "reconstructions.png")
    return written
