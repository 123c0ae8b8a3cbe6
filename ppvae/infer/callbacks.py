"""Callbacks of :func:`ppvae.fit`: progress bar, metrics log, checkpoints, early stopping,
KL warm-up.

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
from ppvae.errors import RunDirError

if TYPE_CHECKING:
    from ppvae.infer.train import TrainState

__all__ = [
    "Callback",
    "ProgressBar",
    "MetricsLogger",
    "Checkpointer",
    "EarlyStopping",
    "KLWarmup",
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


def _json_safe(record: dict[str, Any]) -> dict[str, Any]:
    """Non-finite floats become null (strict JSON has no NaN or Infinity)."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
