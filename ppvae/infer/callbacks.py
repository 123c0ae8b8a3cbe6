"""Callbacks of :func:`ppvae.fit`: progress bar, metrics log, checkpoints, early stopping,
KL warm-up, TensorBoard.

A callback subclasses :class:`Callback` and overrides any of its hooks; each receives the
:class:`~ppvae.infer.train.TrainState` (and the step's ``info`` or the epoch's record).
Setting ``state.stop = True`` ends training after the current epoch.

Example:
    >>> class PrintLoss(Callback):
    ...     def on_epoch_end(self, state, record):
    ...         print(record["epoch"], round(record["train_loss"], 1))
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppvae.checkpoint import save_checkpoint
from ppvae.errors import RunDirError, SpecError

if TYPE_CHECKING:
    from ppvae.infer.train import TrainState

__all__ = [
    "Callback",
    "ProgressBar",
    "MetricsLogger",
    "Checkpointer",
    "EarlyStopping",
    "KLWarmup",
    "TensorBoardLogger",
]


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, state: TrainState) -> None: ...

    def on_epoch_start(self, state: TrainState) -> None: ...

    def on_step_start(self, state: TrainState) -> None: ...

    def on_step_end(self, state: TrainState, info: dict[str, Any]) -> None: ...

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None: ...

    def on_train_end(self, state: TrainState) -> None: ...


class ProgressBar(Callback):
    """Progress of training: a tqdm bar over all steps on a terminal, one line per epoch
    elsewhere (output piped or redirected to a file, a job's log).

    A line reads ``epoch 3/60 train_loss 93.1234 valid_elbo -95.4321 best 3 time 1.2s``
    (``valid_elbo`` only with validation data; ``kl_weight`` during a KL warm-up and
    ``skipped`` after skipped steps) and is flushed at once. Whether ``stream``
    (default: ``sys.stdout`` at the start of training) is a terminal decides, unless
    ``lines`` says: True always lines, False always the bar.
    """

    def __init__(self, every: int = 10, *, lines: bool | None = None, stream=None) -> None:
        self.every = every
        self.lines = lines
        self.stream = stream
        self._bar = None
        self._out = None
        self._postfix: dict[str, str] = {}

    def on_train_start(self, state: TrainState) -> None:
        import sys

        out = self.stream if self.stream is not None else sys.stdout
        lines = self.lines
        if lines is None:
            isatty = getattr(out, "isatty", None)
            lines = not (callable(isatty) and isatty())
        if lines:
            self._out = out
            if state.epoch >= state.epochs:
                return
            start = f"resuming after epoch {state.epoch}: " if state.epoch else ""
            self._line(
                f"{start}training epochs {state.epoch + 1}-{state.epochs}"
                + (f", {state.steps_per_epoch} steps each" if state.steps_per_epoch else "")
            )
            return
        from tqdm.auto import tqdm

        total = state.epochs * state.steps_per_epoch
        self._bar = tqdm(
            total=total,
            initial=state.step,
            unit="step",
            dynamic_ncols=True,
            disable=None,
            mininterval=0.5,
        )

    def _line(self, text: str) -> None:
        try:
            self._out.write(text + "\n")
            self._out.flush()
        except (OSError, ValueError):  # a closed pipe or file: progress is not worth a crash
            self._out = None

    def on_step_end(self, state: TrainState, info: dict[str, Any]) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        if state.step % self.every == 0:
            self._postfix["loss"] = f"{state.running_loss:.3f}"
            self._bar.set_postfix(self._postfix, refresh=False)

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if self._out is not None:
            self._line(_epoch_line(state, record))
        if self._bar is None:
            return
        self._bar.set_description(f"epoch {record['epoch']}/{state.epochs}")
        if record.get("valid_elbo") is not None:
            self._postfix["valid_elbo"] = f"{record['valid_elbo']:.3f}"
        self._postfix["loss"] = f"{record['train_loss']:.3f}"
        self._bar.set_postfix(self._postfix)

    def on_train_end(self, state: TrainState) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._out = None


def _epoch_line(state: TrainState, record: dict[str, Any]) -> str:
    """``epoch 3/60 train_loss 93.1234 valid_elbo -95.4321 best 3 time 1.2s``."""
    parts = [f"epoch {record['epoch']}/{state.epochs}", f"train_loss {record['train_loss']:.4f}"]
    if record.get("valid_elbo") is not None:
        parts.append(f"valid_elbo {record['valid_elbo']:.4f}")
    kl_weight = record.get("kl_weight")
    if isinstance(kl_weight, float) and kl_weight < 1.0:
        parts.append(f"kl_weight {kl_weight:.3f}")
    if record.get("skipped_steps"):
        parts.append(f"skipped {record['skipped_steps']}")
    parts.append(f"best {state.best_epoch}")
    if record.get("seconds") is not None:
        parts.append(f"time {record['seconds']:.1f}s")
    return " ".join(parts)


class MetricsLogger(Callback):
    """Append each epoch's record to ``path`` as one JSON line (``metrics.jsonl``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if not state.is_main_process:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # never through a link: a metrics.jsonl that is a symbolic link is refused
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as err:
            if self.path.is_symlink():
                raise RunDirError(
                    f"{str(self.path)!r} is a symbolic link; ppvae never writes through links "
                    "in a run folder: remove it"
                ) from None
            raise err
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(_json_safe(record)) + "\n")
            f.flush()


class Checkpointer(Callback):
    """Save ``last.pt`` after every epoch and ``best.pt`` when the monitored value improves.

    The monitored value is the validation ELBO when there is validation data, else minus
    the training loss. Files are written atomically.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if not state.is_main_process:
            return
        checkpoint = state.state_dict()
        if state.best_epoch == record["epoch"]:
            save_checkpoint(checkpoint, self.folder / "best.pt")
        save_checkpoint(checkpoint, self.folder / "last.pt")


class EarlyStopping(Callback):
    """Stop when the monitored value has not improved for ``patience`` epochs."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if self.patience > 0 and record["epoch"] - state.best_epoch >= self.patience:
            state.stop = True
            record["early_stopped"] = True


class KLWarmup(Callback):
    """Raise ``state.kl_weight`` linearly from ``beta/steps`` to ``beta`` (the config's final
    KL weight, 1 by default) over ``epochs`` epochs."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_step_start(self, state: TrainState) -> None:
        total = self.epochs * state.steps_per_epoch
        beta = state.config.beta
        state.kl_weight = beta if total <= 0 else beta * min(1.0, (state.step + 1) / total)


class TensorBoardLogger(Callback):
    """Write training into TensorBoard event files in ``folder`` (the ``ppvae[tensorboard]``
    extra; a spec's run uses one with ``train.logger = "tensorboard"``, in ``RUN/tensorboard``).

    Tags: ``step/loss`` and ``step/grad_norm`` every ``every`` steps (x axis: the step);
    ``epoch/<key>`` for every number in each epoch's record, nested dictionaries as
    ``epoch/<key>/<inner key>`` and lists of numbers one tag per index (e.g.
    ``epoch/latent/kl_per_dim/3``), x axis: the epoch; :meth:`log_figures` adds PNG
    figures as images ``figures/<file stem>``. Only the main process writes. The writer is
    closed when training ends, so the folder can be moved (renamed) afterwards.

    Example:
        >>> import tempfile, torch
        >>> import ppvae
        >>> from ppvae.infer.callbacks import TensorBoardLogger
        >>> logger = TensorBoardLogger(tempfile.mkdtemp())  # doctest: +SKIP
        >>> ppvae.fit(model, guide, x, "elbo", callbacks=[logger])  # doctest: +SKIP
    """

    def __init__(self, folder: str | Path, *, every: int = 1) -> None:
        _summary_writer_class()  # refuse now, before training, when tensorboard is missing
        self.folder = Path(folder)
        self.every = max(1, int(every))
        self._writer = None

    def on_train_start(self, state: TrainState) -> None:
        if state.is_main_process:
            self._writer = _summary_writer_class()(log_dir=str(self.folder))

    def on_step_end(self, state: TrainState, info: dict[str, Any]) -> None:
        if self._writer is None or info.get("skipped") or state.step % self.every:
            return
        for key in ("loss", "grad_norm"):
            value = _number(info.get(key))
            if value is not None:
                self._writer.add_scalar(f"step/{key}", value, state.step)

    def on_epoch_end(self, state: TrainState, record: dict[str, Any]) -> None:
        if self._writer is None:
            return
        epoch = record.get("epoch", state.epoch)
        for tag, value in _scalars(record, "epoch"):
            if tag not in ("epoch/epoch", "epoch/step"):
                self._writer.add_scalar(tag, value, epoch)
        self._writer.flush()

    def on_train_end(self, state: TrainState) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def log_figures(self, paths: Any, *, step: int, folder: str | Path | None = None) -> list[str]:
        """Add the PNG files ``paths`` as images ``figures/<stem>`` at ``step``, into
        ``folder`` (default: the logger's); returns the tags written."""
        import matplotlib.image

        pngs = [Path(p) for p in paths if Path(p).suffix.lower() == ".png"]
        if not pngs:
            return []
        writer = _summary_writer_class()(log_dir=str(folder or self.folder))
        tags = []
        try:
            for path in pngs:
                image = matplotlib.image.imread(path)  # (H, W[, C]) floats in [0, 1]
                if image.ndim == 2:
                    image = image[..., None].repeat(3, axis=-1)
                writer.add_image(f"figures/{path.stem}", image[..., :3], step, dataformats="HWC")
                tags.append(f"figures/{path.stem}")
        finally:
            writer.close()
        return tags


def _summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or a :class:`SpecError` naming the extra."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SpecError(
            "TensorBoard logging (train.logger = 'tensorboard') needs the tensorboard "
            "package: pip install 'ppvae[tensorboard]'"
        ) from None
    return SummaryWriter


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _scalars(value: Any, tag: str, limit: int = 256) -> list[tuple[str, float]]:
    """``(tag, number)`` for every number in ``value`` (dictionaries by key, lists of at
    most ``limit`` numbers by index); strings, booleans and None are left out."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _scalars(v, f"{tag}/{k}", limit)]
    if isinstance(value, list | tuple):
        if len(value) > limit:
            return []
        return [pair for i, v in enumerate(value) for pair in _scalars(v, f"{tag}/{i}", limit)]
    number = _number(value)
    return [] if number is None else [(tag, number)]


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats become null (strict JSON has no NaN or Infinity)."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
