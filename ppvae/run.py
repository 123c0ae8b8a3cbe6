"""Run folders: train a spec into a folder, and load a trained run back.

A run folder holds::

    .ppvae-run              the marker: ppvae made this folder (``--force`` needs it)
    .ppvae-lock             locked by the process writing the run
    spec.toml               the resolved spec (every key, defaults included)
    metrics.jsonl           one JSON record per epoch
    checkpoints/last.pt     the training state after the last epoch
    checkpoints/best.pt     the state at the best validation ELBO
    figures/curves.png      training and validation curves
    figures/samples.png     decoded samples from the prior (image data)
    figures/reconstructions.png   test data above its reconstructions (image data)
    tensorboard/            event files, with ``train.logger = "tensorboard"``

:func:`train_spec` never overwrites a non-empty folder unless ``force=True``, and even then
only a folder that ppvae marked as a run, once the new run has written its first
checkpoint. Every reader (:func:`load_run`) refuses a folder holding a symbolic link and a
``spec.toml`` edited after training (see :mod:`ppvae.rundir`).

Example:
    >>> import tempfile
    >>> from ppvae.spec import parse_spec
    >>> spec = parse_spec({"data": {"binarize": "dynamic", "limit": 200},
    ...                    "model": {"latent_dim": 2, "hidden": [16]},
    ...                    "train": {"epochs": 1, "progress": False}})
    >>> run, history = train_spec(spec, tempfile.mkdtemp() + "/run")
    >>> sorted(p.name for p in run.path.iterdir())
    ['.ppvae-lock', '.ppvae-run', 'checkpoints', 'figures', 'metrics.jsonl', 'spec.toml']
    >>> load_run(run.path).spec == spec
    True
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pyro
import torch
from torch import nn

from ppvae import distributed
from ppvae.checkpoint import check_train_state, load_checkpoint
from ppvae.data import DATA_DIR_ENV, DataBundle, Split
from ppvae.errors import CheckpointError, DataError, RunDirError, SpecChangedError, SpecError
from ppvae.infer.callbacks import Callback
from ppvae.infer.config import resolve_device
from ppvae.infer.rng import seeded
from ppvae.infer.train import History, fit
from ppvae.models.abilities import AmortizedPosterior, Generates, Reconstructs
from ppvae.models.base import ModelContext, PretrainedRun
from ppvae.report import plot_curves, save_image_grid, save_reconstructions
from ppvae.rundir import (
    LOCK_FILE,
    RESUMABLE_TRAIN_KEYS,
    RUN_MARKER,
    FolderLock,
    check_no_links,
    check_parents,
    check_seed,
    describe_differences,
    is_marked,
    remove_tree,
    spec_differences,
    spec_fingerprint,
    write_marker,
    write_text_atomic,
    writing,
)
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
    "resolve_paths",
    "completed_epochs",
    "read_run_spec",
]

SPEC_FILE = "spec.toml"


@dataclass
class Run:
    """A model/guide pair with its spec, data and folder (:func:`load_run`,
    :func:`train_spec`).

    The helpers :meth:`encode`, :meth:`decode`, :meth:`sample` and :meth:`reconstruct`
    work on the trained pair as it is (no gradients, inputs moved to the run's device),
    for the model kinds that have the ability (:mod:`ppvae.models.abilities`); other
    kinds are refused with one sentence.

    Example:
        >>> import tempfile
        >>> from ppvae.spec import parse_spec
        >>> spec = parse_spec({"data": {"binarize": "dynamic", "limit": 100},
        ...                    "model": {"latent_dim": 2, "hidden": [16]},
        ...                    "train": {"epochs": 1, "progress": False}})
        >>> run, _ = train_spec(spec, tempfile.mkdtemp() + "/run")
        >>> x = run.data.test.x[:5]
        >>> run.encode(x).shape, run.decode(run.encode(x)).shape, run.sample(3).shape
        (torch.Size([5, 2]), torch.Size([5, 64]), torch.Size([3, 64]))
        >>> bool((run.reconstruct(x) == run.decode(run.encode(x))).all())
        True
    """

    path: Path
    spec: Spec
    data: DataBundle
    model: nn.Module
    guide: nn.Module
    #: the figures :func:`write_figures` wrote for this run (empty for a loaded run)
    figures: list[Path] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        for p in [*self.model.parameters(), *self.guide.parameters()]:
            return p.device
        return torch.device("cpu")

    def _kind(self) -> str:
        return f"model kind {self.spec.model.kind!r}"

    def _inputs(self, x: Any) -> torch.Tensor:
        """``x`` as a float tensor ``(N, D)`` on the run's device (images flattened)."""
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        dim = self.data.dim
        if x.dim() > 2 and x[0].numel() == dim:
            x = x.reshape(x.shape[0], dim)
        if x.dim() != 2 or x.shape[1] != dim:
            raise DataError(
                f"the inputs have shape {tuple(x.shape)}; this run's data points have {dim} "
                "values: pass an array of shape (N, D) (or (N, *image_shape))"
            )
        return x

    def _context(self, context: Sequence[Any]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.as_tensor(c, device=self.device) for c in context)

    def posterior(self, x: Any, *context: Any):
        """The guide's distribution :math:`q(z | x)` (:math:`q(z_1 | x)` for stacked
        latents), batch shape ``(N,)``; ``context``: the guide's other inputs (labels)."""
        from ppvae.models.abilities import AmortizedPosterior, LayeredPosterior

        x = self._inputs(x)
        if isinstance(self.guide, AmortizedPosterior):
            return self.guide.posterior(x, *self._context(context))
        if isinstance(self.guide, LayeredPosterior) and not context:
            return self.guide.q_z1(x)
        raise SpecError(
            f"the guide of {self._kind()} has no amortized posterior q(z|x) (a posterior(x) "
            "method), so a run of it cannot encode data"
        )

    @torch.no_grad()
    def encode(self, x: Any, *context: Any) -> torch.Tensor:
        """The posterior means :math:`E_q[z | x]`, shape ``(N, latent_dim)`` (a Monte
        Carlo mean of 256 draws for guides without a closed-form mean, e.g. flows)."""
        q = self.posterior(x, *context)
        try:
            return q.mean
        except NotImplementedError:
            return q.sample((256,)).mean(0)

    @torch.no_grad()
    def decode(self, z: Any) -> torch.Tensor:
        """The expected data :math:`E[x | z]` of latent points ``z`` ``(N, latent_dim)``."""
        from ppvae.models.abilities import Decodes, GeneratesByClass

        model = self.model
        if isinstance(model, GeneratesByClass):
            raise SpecError(
                f"{self._kind()} decodes z together with a class label, so decode(z) alone is "
                "undefined; use run.sample(n, condition=c) or run.reconstruct(x, y)"
            )
        if not isinstance(model, Decodes) or not isinstance(model.decoder, nn.Module):
            raise SpecError(
                f"{self._kind()} has no decoder network from z to the data, so a run of it "
                "cannot decode"
            )
        z = torch.as_tensor(z, dtype=torch.float32, device=self.device)
        try:
            return model.likelihood.mean(model.decoder(z))
        except RuntimeError as err:
            if "shape" not in str(err) and "size" not in str(err):
                raise
            raise DataError(
                f"z of shape {tuple(z.shape)} does not fit the decoder of {self._kind()}; pass "
                "latent points of shape (N, latent_dim), e.g. run.encode(x)"
            ) from None

    @torch.no_grad()
    def sample(self, n: int, *, condition: int | None = None, seed: int | None = None):
        """``n`` data points generated by the model, shape ``(n, D)``: the expected data
        :math:`E[x | z]` of ``n`` draws :math:`z \\sim p(z)` (the decoder's means, as
        ``ppvae sample`` draws them); ``condition``: a class for conditional models;
        ``seed``: a seeded draw that leaves the global generators as they were."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpecError(f"the number of samples must be a positive integer, got {n!r}")
        from ppvae.models.abilities import GeneratesByClass

        if not isinstance(self.model, Generates):
            raise SpecError(f"{self._kind()} cannot generate data, so a run of it cannot sample")
        extra = {}
        if condition is not None:
            if not isinstance(self.model, GeneratesByClass):
                raise SpecError(
                    f"condition= needs a conditional model (one that generates by class); "
                    f"this run's is {self._kind()}"
                )
            extra["condition"] = condition
        if seed is None:
            return self.model.generate(n, **extra)
        check_seed(seed, "seed")
        with seeded(seed, self.device):
            return self.model.generate(n, **extra)

    @torch.no_grad()
    def reconstruct(self, x: Any, *context: Any) -> torch.Tensor:
        """The expected data :math:`E[x | z]` at the guide's mean of :math:`z` given ``x``
        (shape of ``x``); ``context``: the programs' other inputs, e.g. labels ``y`` of a
        conditional model."""
        if not isinstance(self.model, Reconstructs):
            raise SpecError(
                f"{self._kind()} has no reconstruct(), so a run of it cannot reconstruct data"
            )
        x = self._inputs(x)
        missing = _required_after(self.model.reconstruct, 2) - len(context)
        if missing > 0:
            raise SpecError(
                f"{self._kind()} reconstructs x given {missing} more input(s) (its labels): "
                "call run.reconstruct(x, y)"
            )
        return self.model.reconstruct(x, self.guide, *self._context(context))


def _required_after(method, skip: int) -> int:
    """The number of required positional parameters of ``method`` after the first
    ``skip`` (0 when its signature cannot be read)."""
    import inspect

    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return 0
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]
    return max(0, len(required) - skip)


def build(spec: Spec) -> tuple[DataBundle, nn.Module, nn.Module]:
    """Load the spec's data and the trained runs its model kind builds on, and build its
    model/guide pair, with weights initialized from ``spec.train.seed`` (the same spec
    builds the same initial weights in any process)."""
    data = spec.data.load()
    pretrained = {name: _pretrained(path) for name, path in spec.model.pretrained_runs().items()}
    _check_size(spec, model_context(spec, data, pretrained))
    pyro.set_rng_seed(spec.train.seed)
    model, guide = spec.model.build(model_context(spec, data, pretrained))
    return data, model, guide


def _check_size(spec: Spec, ctx: ModelContext) -> None:
    """Refuse, before anything is allocated, a model and guide whose training would not fit
    in memory: they are built on PyTorch's meta device (shapes, no storage), and training
    holds about four times their parameters (weights, gradients, Adam's two moments)."""
    spec.network.load_code()  # a user's modules are imported on the real devices, not meta
    rng = pyro.util.get_rng_state()
    try:
        with torch.device("meta"):
            model, guide = spec.model.build(ctx)
    except Exception:  # a model whose construction needs real values: built for real below
        return
    finally:
        pyro.util.set_rng_state(rng)
    count = sum(p.numel() for m in (model, guide) for p in m.parameters())
    need = 4 * 4 * count  # float32 bytes, four copies
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > total / 2:
        raise SpecError(
            f"the spec's model and guide have {count:,} parameters: training them needs about "
            f"{need / 1e9:.1f} GB, more than half of this machine's {total / 1e9:.1f} GB; make "
            "them smaller (model.latent_dim, model.hidden, guide.num_steps, prior sizes)"
        )


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
        network=spec.network,
        num_classes=data.num_classes,
        image_shape=data.image_shape,
        event_shape=data.event_shape,
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
    while candidate.is_symlink() or (candidate.exists() and _has_entries(candidate)):
        i += 1
        candidate = root / f"{stem}-{i}"
    return candidate


def _has_entries(path: Path, ignore: tuple[str, ...] = ()) -> bool:
    """Whether ``path`` is not a folder, or holds anything but ``ignore``."""
    if not path.is_dir():
        return True
    return any(p.name not in ignore for p in path.iterdir())


def _check_dir(path: Path, force: bool) -> None:
    """Refuse a run folder that would be overwritten (reads only: every process checks)."""
    if path.is_symlink():
        raise RunDirError(
            f"run folder {str(path)!r} is a symbolic link; give the folder itself as --out"
        )
    check_parents(path, f"run folder {str(path)!r}", "choose another --out")
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run folder {str(path)!r} is a file; choose another --out")
    if path.is_dir() and _has_entries(path, (LOCK_FILE,)):
        if not force:
            raise RunDirError(
                f"run folder {str(path)!r} exists and is not empty; pass --force to replace it "
                "or choose another --out"
            )
        if not is_marked(path, RUN_MARKER):
            raise RunDirError(
                f"refusing to replace {str(path)!r}: it is not a ppvae run folder (it has no "
                f"{RUN_MARKER} marker, which ppvae writes into the run folders it makes)"
            )


def _new_run_folder(path: Path, spec: Spec) -> FolderLock:
    """Create (or take an empty) run folder, lock it, mark it and write its spec."""
    with writing(path, "create the run folder"):
        path.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(path).acquire()
    try:
        # checked again under the lock: another process may have filled it meanwhile
        if _has_entries(path, (LOCK_FILE,)):
            raise RunDirError(
                f"run folder {str(path)!r} was filled by another process meanwhile; choose "
                "another --out"
            )
        write_marker(path, RUN_MARKER)
        write_text_atomic(path / SPEC_FILE, dump_spec(spec))
    except BaseException:
        lock.release()
        raise
    return lock


def _staging_dir(out: Path) -> Path:
    """Where ``--force`` trains the new run before it replaces ``out``."""
    return out.parent / f".{out.name}.ppvae-new"


def _swap_in(staging: Path, out: Path) -> None:
    """Replace the run in ``out`` by the one in ``staging`` (two renames, then removal)."""
    trash = out.parent / f".{out.name}.ppvae-old"
    remove_tree(trash)
    with writing(out, "replace the run folder"):
        os.rename(out, trash)
        os.rename(staging, out)
    remove_tree(trash)


def _check_resume(
    spec: Spec, out: Path, checkpoint: dict[str, Any], path: Path
) -> dict[str, tuple[Any, Any]]:
    """Refuse a resume whose spec differs from the checkpoint's in anything but the
    optimization settings; return the settings that change (``train.key -> (old, new)``)."""
    check_train_state(checkpoint, path)
    old = checkpoint.get("spec")
    new = spec.to_dict()
    if isinstance(old, dict):
        diffs = spec_differences(old, new, frozen=True)
        if diffs:
            raise SpecChangedError(
                f"cannot resume {str(out)!r}: the spec differs from the one its checkpoint was "
                f"trained with in {describe_differences(diffs)}; a resumed run may change only "
                f"train.{', train.'.join(RESUMABLE_TRAIN_KEYS)}"
            )
        diffs = spec_differences(old, new, frozen=False)
        # a longer run or another progress bar leave the trajectory as it was: not recorded
        return {k: v for k, v in diffs.items() if k not in ("train.epochs", "train.progress")}
    if checkpoint.get("spec_digest") not in (
        spec_fingerprint(new),
        spec_fingerprint(new, locations=True),
        spec.digest(),
    ):
        raise SpecChangedError(
            f"checkpoint {str(path)!r} was written by a different spec; resume with the run's "
            f"own {SPEC_FILE}"
        )
    return {}


def _rebuild_metrics(out: Path, history: list[dict[str, Any]], note: dict | None) -> None:
    """Rewrite ``metrics.jsonl`` from the checkpoint's history (a kill between writing a
    metrics line and the checkpoint must not leave a record of an epoch that is redone),
    keeping the records of earlier resumes and adding ``note``."""
    epochs = len(history)
    notes: dict[int, list[dict]] = {}
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "resumed" in record:
                after = record.get("after_epoch")
                if isinstance(after, int) and 0 <= after <= epochs:
                    notes.setdefault(after, []).append(record)
    if note is not None:
        notes.setdefault(note["after_epoch"], []).append(note)
    lines = [json.dumps(r) + "\n" for r in notes.get(0, [])]
    for i, record in enumerate(history, 1):
        lines.append(json.dumps(record) + "\n")
        lines.extend(json.dumps(r) + "\n" for r in notes.get(i, []))
    write_text_atomic(metrics, "".join(lines))


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

    The folder is locked while the run is written (a second writer is refused with the
    holder's pid). ``force=True`` replaces a run folder made by ppvae (one holding its
    marker), and only once the new run has written a checkpoint: the new run trains in a
    hidden sibling folder that then takes the old one's place; if it fails before its first
    checkpoint, the old run is left as it was.

    ``resume=True`` continues the run in ``out_dir`` from ``checkpoints/last.pt``. The spec
    must be the one the run was started with, except for the optimization settings in
    :data:`~ppvae.rundir.RESUMABLE_TRAIN_KEYS` (``train.lr``, ``train.clip_norm``,
    ``train.epochs``...): changed ones are recorded in ``metrics.jsonl`` (a line
    ``{"resumed": ..., "after_epoch": E, "changed": {...}}``) and in ``spec.toml``.
    ``callbacks`` go to :func:`~ppvae.fit` (e.g. a time budget that sets ``state.stop``).
    """
    out = Path(out_dir)
    check_seed(spec.train.seed, "train.seed")
    spec = resolve_paths(spec)
    distributed.init_from_env(resolve_device(spec.train.device))
    main = distributed.is_main_process()
    resume_from = None
    changed: dict[str, tuple[Any, Any]] = {}
    checkpoint: dict[str, Any] = {}
    replacing = False
    locks: list[FolderLock] = []
    if resume:
        if out.is_symlink():
            raise RunDirError(
                f"cannot resume {str(out)!r}: it is a symbolic link; give the run folder itself"
            )
        if not (out / SPEC_FILE).is_file():
            raise RunDirError(
                f"cannot resume {str(out)!r}: it is not a ppvae run folder (no {SPEC_FILE})"
            )
        check_no_links(out)
    else:
        _check_dir(out, force)
        replacing = force and out.is_dir() and _has_entries(out, (LOCK_FILE,))
    work = _staging_dir(out) if replacing else out
    trackers = _trackers(spec, work)  # a missing extra is refused before any write
    callbacks = [*trackers, *callbacks]
    try:
        if resume:
            resume_from = out / "checkpoints" / "last.pt"
            checkpoint = load_checkpoint(resume_from)
            changed = _check_resume(spec, out, checkpoint, resume_from)
        # Data and model first: a bad data set or model option must fail before the folder
        # is touched (no half-made run folder, and --force must not delete the old run for
        # nothing).
        data, model, guide = _build(spec)
        if resume:
            _check_weights(model, guide, checkpoint, resume_from)
            if main:
                locks.append(FolderLock(out).acquire())
                # read again under the lock: a writer may have finished meanwhile
                checkpoint = load_checkpoint(resume_from)
                changed = _check_resume(spec, out, checkpoint, resume_from)
                _check_weights(model, guide, checkpoint, resume_from)
        distributed.barrier()
        if main:
            if resume:
                # a process killed while saving leaves its temporary file behind: drop it
                for stale in (out / "checkpoints").glob(".*.tmp"):
                    stale.unlink(missing_ok=True)
                if not is_marked(out, RUN_MARKER):
                    write_marker(out, RUN_MARKER)  # a run of an older ppvae, checked above
                note = None
                if changed:
                    note = {
                        "resumed": datetime.datetime.now(datetime.UTC).isoformat(
                            timespec="seconds"
                        ),
                        "after_epoch": len(checkpoint["history"]),
                        "changed": {k: {"from": a, "to": b} for k, (a, b) in changed.items()},
                    }
                write_text_atomic(out / SPEC_FILE, dump_spec(spec))
                _rebuild_metrics(out, checkpoint["history"], note)
            elif replacing:
                locks.append(FolderLock(out).acquire())  # no one writes into the old run
                if work.exists() or work.is_symlink():
                    with FolderLock(work, "staging folder"):
                        pass  # refused if another process trains there
                    remove_tree(work)
                locks.append(_new_run_folder(work, spec))
            else:
                locks.append(_new_run_folder(out, spec))
        distributed.barrier()
        config = spec.train if progress is None else spec.train.replace(progress=progress)
        try:
            with writing(work):
                history = fit(
                    model,
                    guide,
                    train_inputs(spec, data),
                    spec.objective,
                    config,
                    valid_data=model_inputs(spec, data.valid),
                    out_dir=work,
                    train_transform=data.train_transform,
                    metadata={
                        "spec": spec.to_dict(),
                        "spec_digest": spec_fingerprint(spec.to_dict()),
                    },
                    resume_from=resume_from,
                    callbacks=[*_latent_callbacks(spec, data, model, guide, work), *callbacks],
                )
        except BaseException:
            if main and replacing:
                # the new run replaces the old one only once it has a checkpoint
                if (work / "checkpoints" / "last.pt").is_file():
                    _swap_in(work, out)
                else:
                    remove_tree(work)
            raise
        if main and replacing:
            _swap_in(work, out)
        run = Run(out, spec, data, model, guide)
        distributed.barrier()
        # best.pt is missing only when no epoch had a finite validation ELBO (on_nan = "skip")
        best = (out / "checkpoints" / "best.pt").is_file()
        _load_weights(run, "best" if best else "last")
        if main:
            with writing(out / "figures"):
                run.figures = write_figures(run, history.records)
                _log_figures(trackers, run, out, history)
        distributed.barrier()
    finally:
        for lock in reversed(locks):
            lock.release()
    return run, history


def _latent_callbacks(spec: Spec, data: DataBundle, model, guide, work: Path) -> list[Callback]:
    """KL per latent dimension and active units of the validation data after every epoch
    (in ``metrics.jsonl``), for guides with an amortized posterior :math:`q(z|x)`."""
    if not isinstance(guide, AmortizedPosterior) or not len(data.valid):
        return []
    from ppvae.latents import LatentDiagnostics

    return [
        LatentDiagnostics(
            model,
            guide,
            model_inputs(spec, data.valid),
            seed=spec.train.seed,
        )
    ]


def resolve_paths(spec: Spec) -> Spec:
    """The spec with its data location written out (and a user network's file, see
    :meth:`~ppvae.networks.NetworkConfig.resolve_paths`): a ``data.path`` made absolute (``~``
    expanded), and an empty one that stands for ``$PPVAE_DATA_DIR/<kind>`` (the default
    folder of the kinds that read one, e.g. ``mnist``) replaced by that folder when it
    exists. ``spec.toml`` then says where the data were read, and the run can be read
    again without the environment variable. (A data path is where the data lie, not
    what the run is: :func:`~ppvae.rundir.spec_fingerprint` leaves it out, so a run
    trained before this resolution, or moved to another machine, is still the same run.)
    """
    network = spec.network.resolve_paths()
    if network != spec.network:  # a user network's file, made absolute the same way
        spec = spec.replace(network=network)
    data = spec.data
    path = getattr(data, "path", None)
    if not isinstance(path, str):
        return spec
    if path:
        resolved = os.path.abspath(os.path.expanduser(path))
    else:
        root = os.environ.get(DATA_DIR_ENV, "")
        folder = Path(root).expanduser() / data.name if root else None
        if folder is None or not folder.is_dir():
            return spec
        resolved = os.path.abspath(folder)
    if resolved == path:
        return spec
    return spec.replace(data=dataclasses.replace(data, path=resolved))


def completed_epochs(run_dir: str | Path, spec: Spec) -> int | None:
    """The number of epochs in the last checkpoint of the run in ``run_dir``, checked as
    a resume checks it (no link in the folder, a sound checkpoint, ``spec`` differing
    from the checkpoint's only in the settings a resumed run may change); None when the
    run has no last checkpoint yet."""
    out = Path(run_dir)
    check_no_links(out)
    path = out / "checkpoints" / "last.pt"
    if not path.is_file():
        return None
    checkpoint = load_checkpoint(path)
    _check_resume(resolve_paths(spec), out, checkpoint, path)
    return len(checkpoint["history"])


def _build(spec: Spec) -> tuple[DataBundle, nn.Module, nn.Module]:
    """:func:`build`, with running out of memory said in one sentence."""
    try:
        return build(spec)
    except (MemoryError, torch.OutOfMemoryError) as err:
        raise SpecError(_memory_message(err)) from None
    except RuntimeError as err:
        text = str(err).lower()
        if "can't allocate memory" in text or "out of memory" in text:
            raise SpecError(_memory_message(err)) from None
        raise


def _memory_message(err: BaseException) -> str:
    return (
        "building the spec's model and guide ran out of memory; make them smaller "
        "(model.latent_dim, model.hidden, guide.num_steps, prior sizes)"
    )


def _check_weights(model: nn.Module, guide: nn.Module, checkpoint: dict, path: Path) -> None:
    """Refuse a checkpoint whose weights do not fit the built model and guide (names and
    shapes), before training loads it."""
    for name, module in (("model", model), ("guide", guide)):
        state = checkpoint.get(name)
        own = module.state_dict()
        if not isinstance(state, dict) or set(state) != set(own):
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not match the {name} of {SPEC_FILE} "
                "(its weights have other names)"
            )
        for key, value in own.items():
            other = state[key]
            if not isinstance(other, torch.Tensor) or other.shape != value.shape:
                raise CheckpointError(
                    f"checkpoint {str(path)!r} does not match the {name} of {SPEC_FILE} "
                    f"(weight {key!r} has shape "
                    f"{tuple(other.shape) if isinstance(other, torch.Tensor) else '?'}, "
                    f"the {name} needs {tuple(value.shape)})"
                )


def _load_weights(run: Run, which: str, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    path = run.path / "checkpoints" / f"{which}.pt"
    if checkpoint is None:
        checkpoint = load_checkpoint(path, map_location=run.device)
    try:
        run.model.load_state_dict(checkpoint["model"])
        run.guide.load_state_dict(checkpoint["guide"])
    except (KeyError, RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match the model of {SPEC_FILE} ({err.__class__.__name__})"
        ) from None
    return checkpoint


def _check_spec_matches(run: Run, which: str, checkpoint: dict[str, Any]) -> None:
    """Refuse a ``spec.toml`` edited after its checkpoint was written."""
    _check_folder_spec(run.path, run.spec, which, checkpoint)


def _check_folder_spec(folder: Path, spec: Spec, which: str, checkpoint: dict[str, Any]) -> None:
    path = folder / "checkpoints" / f"{which}.pt"
    stored = checkpoint.get("spec")
    current = spec.to_dict()
    if isinstance(stored, dict):
        diffs = spec_differences(stored, current, frozen=True)
        if diffs:
            raise SpecChangedError(
                f"{SPEC_FILE} of {str(folder)!r} differs from the spec its checkpoint "
                f"{which}.pt was trained with in {describe_differences(diffs)}; restore the "
                f"run's {SPEC_FILE} (only [evaluate] and train.{{{', '.join(RESUMABLE_TRAIN_KEYS)}}} "
                "may change)"
            )
        return
    digest = checkpoint.get("spec_digest")
    if digest not in (
        spec_fingerprint(current),
        spec_fingerprint(current, locations=True),
        spec.digest(),
    ):
        raise SpecChangedError(
            f"checkpoint {str(path)!r} does not record the spec of {SPEC_FILE} in "
            f"{str(folder)!r}; it was not written by this run"
        )


def read_run_spec(run_dir: str | Path, which: str = "last") -> Spec:
    """The spec of the run in ``run_dir``, checked as :func:`load_run` checks it (a run
    folder holding no link, its ``spec.toml`` the one its ``which`` checkpoint was trained
    with) without building its model or reading its data."""
    path = _run_folder(run_dir)
    spec = load_spec(path / SPEC_FILE)
    checkpoint = load_checkpoint(path / "checkpoints" / f"{which}.pt")
    _check_folder_spec(path, spec, which, checkpoint)
    return spec


def _run_folder(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise RunDirError(f"run folder {str(path)!r} does not exist")
    if not (path / SPEC_FILE).is_file() and not (path / SPEC_FILE).is_symlink():
        raise RunDirError(f"{str(path)!r} is not a ppvae run folder: it has no {SPEC_FILE}")
    check_no_links(path)
    return path


def load_run(run_dir: str | Path, *, which: str = "best", device: str = "cpu") -> Run:
    """Rebuild a trained run from its folder: spec, data, and the ``which`` weights.

    The folder may hold no symbolic link, and its ``spec.toml`` must be the spec the
    checkpoint was trained with (apart from ``[evaluate]`` and the optimization settings
    a resumed run may change): an edited spec is a :class:`~ppvae.errors.SpecChangedError`.

    ``run_dir`` may also be an export (``ppvae export``: ``model.safetensors``,
    ``spec.toml``, a model card): the model is rebuilt from its spec and given the
    exported weights (``which`` does not apply: an export holds one set); an export
    whose weights do not fit its spec's model, or whose spec was edited, is refused.
    Either way the spec's data are loaded (``run.data``): where its ``data.path``
    says, or the built-in data set.
    """
    path = _run_folder(run_dir)
    if _is_export(path):
        return _load_export(path, device)
    spec = load_spec(path / SPEC_FILE)
    check_seed(spec.train.seed, "train.seed")
    data, model, guide = _build(spec)
    dev = resolve_device(device)
    model.to(dev)
    guide.to(dev)
    run = Run(path, spec, data, model, guide)
    checkpoint = load_checkpoint(path / "checkpoints" / f"{which}.pt", map_location=dev)
    _check_spec_matches(run, which, checkpoint)
    _load_weights(run, which, checkpoint)
    model.eval()
    guide.eval()
    return run


def _is_export(path: Path) -> bool:
    """Whether the folder ``path`` holds an export (weights, no checkpoints)."""
    from ppvae.weights import WEIGHTS_FILE

    return (path / WEIGHTS_FILE).is_file() and not (path / "checkpoints").exists()


def _load_export(path: Path, device: str) -> Run:
    """:func:`load_run` of an export: the spec's model and guide with the exported weights
    (nothing is unpickled: the weights are a safetensors file)."""
    from ppvae.weights import WEIGHTS_FILE, load_into, read_weights

    spec = load_spec(path / SPEC_FILE)
    check_seed(spec.train.seed, "train.seed")
    dev = resolve_device(device)
    tensors, metadata = read_weights(path / WEIGHTS_FILE, dev)
    try:
        stored = json.loads(metadata.get("spec", ""))
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        raise CheckpointError(
            f"{str(path / WEIGHTS_FILE)!r} does not record the spec its weights were trained "
            "with; it was not written by ppvae export"
        )
    diffs = spec_differences(stored, spec.to_dict(), frozen=True)
    if diffs:
        raise SpecChangedError(
            f"{SPEC_FILE} of the export {str(path)!r} differs from the spec its weights were "
            f"trained with in {describe_differences(diffs)}; restore the export's {SPEC_FILE} "
            "(only [evaluate], data.path and the optimization settings of [train] may change)"
        )
    data, model, guide = _build(spec)
    model.to(dev)
    guide.to(dev)
    load_into({"model": model, "guide": guide}, tensors, path / WEIGHTS_FILE)
    model.eval()
    guide.eval()
    return Run(path, spec, data, model, guide)


def _trackers(spec: Spec, work: Path) -> list[Callback]:
    """The tracking callbacks ``train.logger`` asks for besides ``metrics.jsonl``."""
    if spec.train.logger != "tensorboard":
        return []
    from ppvae.infer.callbacks import TensorBoardLogger

    return [TensorBoardLogger(work / "tensorboard")]


def _log_figures(trackers: list[Callback], run: Run, out: Path, history: History) -> None:
    """The figures the run just wrote, into the trackers that take them (at the last
    epoch)."""
    figures = getattr(run, "figures", None) or sorted((out / "figures").glob("*.png"))
    epoch = history.records[-1]["epoch"] if history.records else 0
    for tracker in trackers:
        log = getattr(tracker, "log_figures", None)
        if log is not None:
            with writing(out / "tensorboard"):
                log(figures, step=epoch, folder=out / "tensorboard")


def write_figures(run: Run, records: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write the run's figures into ``run.path / "figures"``: ``curves.png``; for guides
    with an amortized posterior ``latent-usage.png`` (KL per latent dimension and active
    units of the validation data); for image data ``decoder-means.png`` (decoder means
    :math:`E[x|z]` of 64 draws :math:`z` from the prior: not samples of :math:`x`),
    ``reconstructions.png``, and for models with a decoder of :math:`z`
    ``traversals.png`` and ``interpolations.png``."""
    figures = run.path / "figures"
    figures.mkdir(exist_ok=True)
    written = []
    if records:
        plot_curves(records, figures / "curves.png")
        written.append(figures / "curves.png")
    written.extend(_latent_figures(run, figures))
    shape = run.data.image_shape
    if shape is None:
        return written
    generator = torch.Generator().manual_seed(run.spec.train.seed)
    with seeded(run.spec.train.seed, run.device):
        if isinstance(run.model, Generates):
            save_image_grid(run.model.generate(64).cpu(), shape, figures / "decoder-means.png")
            written.append(figures / "decoder-means.png")
        if isinstance(run.model, Reconstructs):
            idx = torch.randperm(len(run.data.test), generator=generator)[:32]
            inputs = [t[idx].to(run.device) for t in model_inputs(run.spec, run.data.test)]
            recon = run.model.reconstruct(inputs[0], run.guide, *inputs[1:]).cpu()
            save_reconstructions(inputs[0].cpu(), recon, shape, figures / "reconstructions.png")
            written.append(figures / "reconstructions.png")
    written.extend(_decoded_latent_figures(run, figures))
    return written


def _latent_figures(run: Run, figures: Path) -> list[Path]:
    if not isinstance(run.guide, AmortizedPosterior) or not len(run.data.valid):
        return []
    from ppvae.infer.isolation import isolated_param_store
    from ppvae.latents import latent_diagnostics
    from ppvae.report import latent_usage_png
    from ppvae.rundir import write_bytes_atomic

    inputs = tuple(t.to(run.device) for t in model_inputs(run.spec, run.data.valid))
    with seeded(run.spec.train.seed, run.device), isolated_param_store():
        diag = latent_diagnostics(run.model, run.guide, inputs)
    write_bytes_atomic(figures / "latent-usage.png", latent_usage_png(diag))
    return [figures / "latent-usage.png"]


def _decoded_latent_figures(run: Run, figures: Path) -> list[Path]:
    """Traversals and interpolations, for models whose decoder takes :math:`z` alone."""
    from ppvae.infer.isolation import isolated_param_store
    from ppvae.latents import decodes_latent, interpolations, traversals

    shape = run.data.image_shape
    test = model_inputs(run.spec, run.data.test)
    if not (shape and len(run.data.test) >= 2 and decodes_latent(run.model, run.guide, test)):
        return []
    written = []
    inputs = tuple(t.to(run.device) for t in test)
    with seeded(run.spec.train.seed, run.device), isolated_param_store():
        dims = _traversal_dims(run)
        images, _ = traversals(run.model, run.guide, inputs, dims=dims)
        save_image_grid(
            images.cpu(), shape, figures / "traversals.png", ncols=len(images) // len(dims)
        )
        written.append(figures / "traversals.png")
        generator = torch.Generator().manual_seed(run.spec.train.seed)
        lines = interpolations(run.model, run.guide, inputs, generator=generator)
        save_image_grid(lines.cpu(), shape, figures / "interpolations.png", ncols=10)
        written.append(figures / "interpolations.png")
    return written


def _traversal_dims(run: Run, limit: int = 10) -> list[int]:
    """The latent dimensions to traverse: the most active ones on the validation data (or
    the first ones), at most ``limit``, in their own order."""
    from ppvae.latents import traversal_dims

    data = run.data.valid if len(run.data.valid) else run.data.test
    inputs = tuple(t.to(run.device) for t in model_inputs(run.spec, data))
    return traversal_dims(run.model, run.guide, inputs, limit=limit)
