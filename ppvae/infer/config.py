"""Training settings: one frozen :class:`TrainConfig`, the same object a spec's ``[train]``
section parses into and :func:`ppvae.fit` / :func:`ppvae.init` take.

Example:
    >>> config = TrainConfig(epochs=3, lr=0.01)
    >>> config.batch_size, config.replace(batch_size=64).batch_size
    (128, 64)
    >>> TrainConfig(batch_size=2.5)
    Traceback (most recent call last):
    ...
    ppvae.errors.SpecError: train.batch_size must be an integer, got 2.5
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ppvae.errors import SpecError

__all__ = ["TrainConfig", "resolve_device", "check_device", "lr_scheduler", "MAX_SEED"]

#: Seeds are used by torch, NumPy and Python alike; NumPy takes at most 2**32 - 1.
MAX_SEED = 2**32 - 1

_OPTIMIZERS = ("adam", "adamw", "sgd")
_ON_NAN = ("stop", "skip")
_SCHEDULES = ("constant", "cosine", "step", "plateau")
_LOGGERS = ("jsonl", "tensorboard")


@dataclass(frozen=True)
class TrainConfig:
    r"""How training runs (the ``[train]`` section of a spec).

    Attributes:
        epochs: passes over the training data.
        batch_size: data points per step.
        lr: learning rate.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (when no optimizer object is passed).
        weight_decay: L2 penalty (decoupled for adamw). It acts on the loss per data point
            that ppvae minimizes, not on Pyro's loss summed over a batch: the same value is
            ``batch_size`` times stronger here than in a ``pyro.optim`` SVI loop.
        clip_norm: clip the global gradient norm to this value (0: off).
        kl_warmup_epochs: scale the latent terms by a weight rising linearly from 0 to
            ``beta`` over this many epochs (0: off; objectives with a KL term: the ELBOs,
            and IWAE/Rényi with the reparameterized estimator, whose importance weights
            then carry the weighted latent terms).
        beta: the final weight of the latent terms, :math:`\log p(x|z) + \beta (\log p(z) -
            \log q(z|x))` (1: the ELBO; beta-VAE, Higgins et al. 2017, for beta > 1); the
            reported ``train_loss`` is that objective, the validation ELBO always beta = 1.
        early_stopping: stop after this many epochs without a better validation ELBO
            (0: off).
        seed: seed of every random number generator the run uses (0 to 2**32 - 1).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        on_nan: ``stop`` (raise, naming epoch and step) or ``skip`` (drop the step).
        progress: show a progress bar.
        deterministic: use PyTorch's deterministic algorithms (``--deterministic``); on
            CPU training is deterministic already, on GPU this trades speed for it.
        shuffle: reshuffle in-memory training data every epoch (False: fixed order, e.g.
            for guides with one parameter row per data point).
        adam_betas, eps: Adam's (and AdamW's) coefficients of the running averages and
            its denominator term.
        momentum: SGD's momentum.
        lr_schedule: ``constant``, ``cosine`` (to ``lr_min`` at the last epoch), ``step``
            (times ``lr_gamma`` every ``lr_step_epochs``) or ``plateau`` (times
            ``lr_gamma`` after ``lr_patience`` epochs without a better validation ELBO),
            stepped after every epoch; its state is part of the checkpoint.
        lr_warmup_epochs: raise the learning rate linearly over this many epochs first
            (not with ``plateau``).
        logger: where a spec's run (:func:`ppvae.train_spec`) tracks training besides
            ``metrics.jsonl``, which is always written: ``jsonl`` (nothing else) or
            ``tensorboard`` (event files in ``RUN/tensorboard``, the
            ``ppvae[tensorboard]`` extra; see
            :class:`~ppvae.infer.callbacks.TensorBoardLogger`, which :func:`ppvae.fit`
            takes as a callback).
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    clip_norm: float = 0.0
    kl_warmup_epochs: int = 0
    early_stopping: int = 0
    seed: int = 0
    device: str = "auto"
    on_nan: Literal["stop", "skip"] = "stop"
    progress: bool = True
    deterministic: bool = False
    shuffle: bool = True
    beta: float = 1.0
    adam_betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    lr_schedule: Literal["constant", "cosine", "step", "plateau"] = "constant"
    lr_warmup_epochs: int = 0
    lr_step_epochs: int = 10
    lr_gamma: float = 0.1
    lr_patience: int = 5
    lr_min: float = 0.0
    logger: Literal["jsonl", "tensorboard"] = "jsonl"

    def __post_init__(self) -> None:
        ints = (
            "epochs",
            "batch_size",
            "kl_warmup_epochs",
            "early_stopping",
            "seed",
            "lr_warmup_epochs",
            "lr_step_epochs",
            "lr_patience",
        )
        floats = (
            "lr",
            "weight_decay",
            "clip_norm",
            "beta",
            "eps",
            "momentum",
            "lr_gamma",
            "lr_min",
        )
        for key in ints:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError(f"train.{key} must be an integer, got {value!r}")
        for key in floats:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SpecError(f"train.{key} must be a number, got {value!r}")
        for key in ("epochs", "batch_size", "lr_step_epochs"):
            if getattr(self, key) < 1:
                raise SpecError(f"train.{key} must be at least 1, got {getattr(self, key)}")
        for key in ("lr", "beta", "eps"):
            if not (getattr(self, key) > 0 and math.isfinite(getattr(self, key))):
                raise SpecError(
                    f"train.{key} must be positive and finite, got {getattr(self, key)}"
                )
        for key in (
            "weight_decay",
            "clip_norm",
            "kl_warmup_epochs",
            "early_stopping",
            "momentum",
            "lr_min",
            "lr_warmup_epochs",
            "lr_patience",
        ):
            value = getattr(self, key)
            if not (value >= 0 and math.isfinite(value)):  # refuses NaN and inf too
                raise SpecError(f"train.{key} must be non-negative and finite, got {value}")
        if not 0 < self.lr_gamma <= 1:
            raise SpecError(f"train.lr_gamma must be in (0, 1], got {self.lr_gamma}")
        betas = self.adam_betas
        if (
            not isinstance(betas, tuple)
            or len(betas) != 2
            or not all(
                isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1 for b in betas
            )
        ):
            raise SpecError(f"train.adam_betas must be two numbers in [0, 1), got {betas!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise SpecError(f"train.seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if self.optimizer not in _OPTIMIZERS:
            raise SpecError(
                f"train.optimizer: unknown optimizer {self.optimizer!r}; allowed: "
                f"{', '.join(_OPTIMIZERS)}"
            )
        if self.on_nan not in _ON_NAN:
            raise SpecError(f"train.on_nan must be 'stop' or 'skip', got {self.on_nan!r}")
        if self.lr_schedule not in _SCHEDULES:
            raise SpecError(
                f"train.lr_schedule must be one of {', '.join(_SCHEDULES)}, got "
                f"{self.lr_schedule!r}"
            )
        if self.lr_schedule == "plateau" and self.lr_warmup_epochs:
            raise SpecError(
                "train.lr_warmup_epochs does not combine with lr_schedule = 'plateau'; use "
                "cosine or step with a warm-up"
            )
        if self.logger not in _LOGGERS:
            raise SpecError(
                f"train.logger must be one of {', '.join(_LOGGERS)}, got {self.logger!r}"
            )
        for key in ("progress", "deterministic", "shuffle"):
            if not isinstance(getattr(self, key), bool):
                raise SpecError(f"train.{key} must be true or false, got {getattr(self, key)!r}")
        check_device(self.device, "train.device")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (checked like the original); an unknown key is a
        :class:`SpecError` listing the allowed ones."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise SpecError(f"unknown training setting {unknown[0]!r}; allowed: {', '.join(names)}")
        return dataclasses.replace(self, **changes)


def check_device(device: Any, where: str) -> None:
    """A device setting must be auto, cpu, cuda or cuda:N (a :class:`SpecError` otherwise)."""
    if isinstance(device, torch.device):
        device = str(device)
    ok = isinstance(device, str) and (
        device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    )
    if not ok:
        raise SpecError(f"{where} must be auto, cpu, cuda or cuda:N, got {device!r}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> CUDA when available, else CPU; a CUDA request without CUDA is a
    :class:`SpecError`."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SpecError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            f"device {str(device)!r} was asked for but CUDA is not available here; use cpu"
        )
    return dev


def lr_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    """The per-epoch learning-rate scheduler the config asks for (None: constant)."""
    sched = torch.optim.lr_scheduler
    main: Any = None
    epochs = max(1, config.epochs - config.lr_warmup_epochs)
    if config.lr_schedule == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=config.lr_min)
    elif config.lr_schedule == "step":
        main = sched.StepLR(optimizer, step_size=config.lr_step_epochs, gamma=config.lr_gamma)
    elif config.lr_schedule == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer, factor=config.lr_gamma, patience=config.lr_patience, min_lr=config.lr_min
        )
    if not config.lr_warmup_epochs:
        return main
    warm = sched.LinearLR(
        optimizer,
        start_factor=1.0 / (config.lr_warmup_epochs + 1),
        total_iters=config.lr_warmup_epochs,
    )
    if main is None:
        return warm
    return sched.SequentialLR(optimizer, [warm, main], milestones=[config.lr_warmup_epochs])
