r"""Training: a small loop over explicit state (Contract 4).

:func:`fit` trains any model/guide pair of Pyro programs (``nn.Module``\ s whose
``forward`` takes a batch and calls ``pyro.sample``, data in the plate ``"data"``) by
minibatch stochastic optimization of a variational objective. The loop is
``step(state, batch) -> info`` with callbacks around it; the whole state (weights,
optimizer, random number generators, epoch, step, history) is a checkpoint. Pyro's
global parameter store is never used (see :mod:`ppvae.infer.isolation`): parameters are
the modules' own, plus any ``pyro.param`` sites the programs declare.

The loss of a minibatch is scaled to estimate the full-data bound divided by the data set
size (see :class:`~ppvae.infer.scaling.MinibatchScale`), so ``train_loss`` is in nats per
data point and global latents are weighted correctly.

Example (probabilistic PCA written with Pyro alone):
    >>> import torch, pyro, pyro.distributions as dist
    >>> from pyro.nn import PyroModule, PyroParam
    >>> class PPCA(PyroModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = PyroParam(torch.randn(3, 1) * 0.1)
    ...     def forward(self, x):
    ...         with pyro.plate("data", x.shape[0]):
    ...             z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
    ...             pyro.sample("x", dist.Normal(z @ self.w.T, 0.5).to_event(1), obs=x)
    >>> class Guide(PyroModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = torch.nn.Linear(3, 2)
    ...     def forward(self, x):
    ...         loc, raw = self.net(x).split(1, -1)
    ...         with pyro.plate("data", x.shape[0]):
    ...             pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw)).to_event(1))
    >>> x = torch.randn(200, 1) @ torch.tensor([[1.0, -2.0, 0.5]]) + 0.5 * torch.randn(200, 3)
    >>> history = fit(PPCA(), Guide(), x, epochs=30, batch_size=50, lr=0.05, progress=False)
    >>> history["train_loss"][-1] < history["train_loss"][0]
    True
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import nn

from ppvae import distributed
from ppvae.checkpoint import load_checkpoint, rng_state, set_rng_state
from ppvae.distributed import DistInfo
from ppvae.errors import DataError, SpecError, TrainingError
from ppvae.infer.callbacks import (
    Callback,
    Checkpointer,
    EarlyStopping,
    KLWarmup,
    MetricsLogger,
    ProgressBar,
)
from ppvae.infer.direct import direct_elbo
from ppvae.infer.isolation import isolated_param_store
from ppvae.infer.objectives import Objective, build_objective
from ppvae.infer.scaling import LatentScale, MinibatchScale

__all__ = ["fit", "History", "TrainState", "resolve_device", "mean_elbo", "as_tensors"]

Batch = tuple[torch.Tensor, ...]


class History:
    """Per-epoch records of a training run; ``history["valid_elbo"]`` lists one key."""

    def __init__(self, records: Sequence[dict[str, Any]] = ()) -> None:
        self.records = list(records)

    def __getitem__(self, key: str) -> list[Any]:
        return [r.get(key) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        last = self.records[-1] if self.records else {}
        return f"History(epochs={len(self)}, last={last})"


@dataclass
class TrainState:
    """Everything a training step reads and writes; a checkpoint is its ``state_dict``."""

    model: nn.Module
    guide: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    params: list[torch.Tensor]
    epochs: int
    steps_per_epoch: int
    num_train: int
    plate: str = "data"
    clip_norm: float = 0.0
    on_nan: str = "stop"
    epoch: int = 0
    step: int = 0
    kl_weight: float = 1.0
    best_value: float = -math.inf
    best_epoch: int = 0
    stop: bool = False
    running_loss: float = math.nan
    history: History = field(default_factory=History)
    shuffle_generator: torch.Generator = field(default_factory=torch.Generator)
    data_generator: torch.Generator | None = None
    spec: dict[str, Any] | None = None
    spec_digest: str | None = None
    is_main_process: bool = True
    world_size: int = 1
    ddp: nn.Module | None = None
    direct: Callable[[torch.Tensor, float, float], torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: weights, optimizer, RNG states, counters, history, spec."""
        out = {
            "format": "ppvae-train-state-1",
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(),
            "shuffle_generator": self.shuffle_generator.get_state(),
            "epoch": self.epoch,
            "step": self.step,
            "kl_weight": self.kl_weight,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "history": self.history.records,
            "spec": self.spec,
            "spec_digest": self.spec_digest,
        }
        if self.data_generator is not None:
            out["data_generator"] = self.data_generator.get_state()
        return out

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """Restore a checkpoint written by :meth:`state_dict` (resume)."""
        self.model.load_state_dict(checkpoint["model"])
        self.guide.load_state_dict(checkpoint["guide"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(checkpoint["rng"])
        self.shuffle_generator.set_state(checkpoint["shuffle_generator"])
        if self.data_generator is not None and "data_generator" in checkpoint:
            self.data_generator.set_state(checkpoint["data_generator"])
        self.epoch = checkpoint["epoch"]
        self.step = checkpoint["step"]
        self.kl_weight = checkpoint["kl_weight"]
        self.best_value = checkpoint["best_value"]
        self.best_epoch = checkpoint["best_epoch"]
        self.history = History(checkpoint["history"])


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


def as_tensors(data: Any, what: str = "data") -> Batch | None:
    """A tensor or tuple of tensors as a tuple (all with the same first dimension); None
    for anything else (e.g. a ``Dataset``)."""
    if isinstance(data, torch.Tensor):
        data = (data,)
    if isinstance(data, tuple | list) and data and all(isinstance(t, torch.Tensor) for t in data):
        n = data[0].shape[0] if data[0].dim() else None
        if n is None or any(t.dim() == 0 or t.shape[0] != n for t in data):
            raise DataError(f"the tensors of {what} must share their first (data point) dimension")
        if n == 0:
            raise DataError(f"{what} is empty")
        return tuple(data)
    return None


def _wrapped(fn: Callable, plate: str, local: float, global_: float, kl_weight: float) -> Callable:
    fn = MinibatchScale(plate, local, global_)(fn)
    if kl_weight != 1.0:
        fn = LatentScale(kl_weight)(fn)
    return fn


def _collect_params(model: nn.Module, guide: nn.Module, trace_args: Batch) -> list[torch.Tensor]:
    """Module parameters plus unconstrained ``pyro.param`` values seen in one run."""
    params: dict[int, torch.Tensor] = {}
    for p in [*model.parameters(), *guide.parameters()]:
        params.setdefault(id(p), p)
    with poutine.block(), torch.no_grad():
        tr = poutine.trace(guide, param_only=True).get_trace(*trace_args)
        tr_m = poutine.trace(poutine.replay(model, trace=tr), param_only=True).get_trace(
            *trace_args
        )
    for site in [*tr.nodes.values(), *tr_m.nodes.values()]:
        if site["type"] == "param":
            value = site["value"]
            value = value.unconstrained() if hasattr(value, "unconstrained") else value
            if value.requires_grad:
                params.setdefault(id(value), value)
    return [p for p in params.values() if p.requires_grad]


def _make_optimizer(name: str, params, lr: float, weight_decay: float, device: torch.device):
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if name in ("adam", "adamw"):
        kwargs["foreach"] = True
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    elif name == "sgd":
        cls = torch.optim.SGD
        kwargs["momentum"] = 0.9
    else:
        raise SpecError(f"unknown optimizer {name!r}; allowed: adam, adamw, sgd")
    return cls(params, **kwargs)


def _batches(tensors: Batch, batch_size: int) -> Iterator[Batch]:
    """Consecutive batches, in order."""
    n = tensors[0].shape[0]
    for i in range(0, n, batch_size):
        yield tuple(t[i : i + batch_size] for t in tensors)


def _shuffled_batches(
    tensors: Batch,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    dinfo: DistInfo | None,
) -> Iterator[tuple[Batch, int]]:
    """Shuffled batches of in-memory tensors, as ``(this process's part, global size)``.

    Every process draws the same permutation; with several processes each global batch
    of ``batch_size`` points is split into one part per process (a final global batch
    smaller than the number of processes is dropped)."""
    n = tensors[0].shape[0]
    perm = torch.randperm(n, generator=generator).to(device)
    world = 1 if dinfo is None else dinfo.world_size
    for i in range(0, n, batch_size):
        idx = perm[i : i + batch_size]
        size = idx.shape[0]
        if world > 1:
            if size < world:
                continue
            idx = torch.tensor_split(idx, world)[dinfo.rank]
        yield tuple(t.index_select(0, idx) for t in tensors), size


@contextlib.contextmanager
def seeded(seed: int | None, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the block on the global random streams seeded with ``seed`` (None: unseeded)
    and restore them afterwards: the CPU stream, and ``device``'s when it is a GPU
    (``torch.manual_seed`` seeds every device, so a GPU stream must be forked too, or
    training on CUDA would restart from the same noise after every validation pass).

    Example:
        >>> with seeded(3):
        ...     a = torch.rand(2)
        >>> with seeded(3):
        ...     b = torch.rand(2)
        >>> torch.equal(a, b)
        True
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@torch.no_grad()
def mean_elbo(
    model: Callable,
    guide: Callable,
    data: Batch,
    *,
    batch_size: int = 512,
    plate: str = "data",
    seed: int | None = 0,
    num_particles: int = 1,
    enumerate: bool = False,
    max_plate_nesting: int | None = None,
) -> float:
    """The ELBO of the whole data set divided by its size (nats per data point), with
    ``num_particles`` samples; ``seed`` fixes the draws without touching the global RNG.
    ``enumerate=True`` sums out sites marked for enumeration (``TraceEnum_ELBO``, with
    ``max_plate_nesting`` when known; Pyro guesses it otherwise)."""
    tensors = as_tensors(data)
    n = tensors[0].shape[0]
    cls = pyro.infer.TraceEnum_ELBO if enumerate else pyro.infer.Trace_ELBO
    nesting = {} if max_plate_nesting is None else {"max_plate_nesting": max_plate_nesting}
    elbo = cls(num_particles=num_particles, vectorize_particles=num_particles > 1, **nesting)
    total = 0.0
    with seeded(seed, tensors[0].device), _eval_mode(model, guide):
        for batch in _batches(tensors, batch_size):
            b = batch[0].shape[0]
            m = _wrapped(model, plate, 1.0 / n, b / n / n, 1.0)
            g = _wrapped(guide, plate, 1.0 / n, b / n / n, 1.0)
            total -= float(elbo.loss(m, g, *batch))
    return total


@contextlib.contextmanager
def _deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic kernels for the block (cuBLAS needs a fixed workspace for them);
    the previous setting is restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _device_of(state: TrainState) -> torch.device:
    return state.params[0].device


class _eval_mode:
    """Put modules in eval mode and restore their previous modes."""

    def __init__(self, *modules: Any) -> None:
        self.modules = [m for m in modules if isinstance(m, nn.Module)]

    def __enter__(self) -> None:
        self.modes = [m.training for m in self.modules]
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc: Any) -> None:
        for m, mode in zip(self.modules, self.modes, strict=True):
            m.train(mode)


def _check_first_batch(state: TrainState, batch: Batch) -> None:
    """Run the objective once with Pyro's validation on, so that bad data fails early
    with a clear message instead of deep inside the hot loop."""
    b = batch[0].shape[0]
    with _first_batch_errors(batch), pyro.validation_enabled(True):
        state.objective.loss(
            _wrapped(state.model, state.plate, 1 / b, 1 / state.num_train, 1.0),
            _wrapped(state.guide, state.plate, 1 / b, 1 / state.num_train, 1.0),
            *batch,
        )


@contextlib.contextmanager
def _first_batch_errors(batch: Batch) -> Iterator[None]:
    """Data the model or guide cannot take: a one-sentence :class:`DataError`."""
    try:
        yield
    except (ValueError, RuntimeError, IndexError) as err:
        shapes = ", ".join(str(tuple(t.shape)) for t in batch)
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise DataError(
            f"the model and guide fail on a training batch of shape {shapes}: {first}"
        ) from err


class _ObjectiveModule(nn.Module):
    """Model, guide and objective as one module whose forward is the loss (for DDP)."""

    def __init__(self, model: nn.Module, guide: nn.Module, objective: Objective, plate: str):
        super().__init__()
        self.model = model
        self.guide = guide
        self.objective = objective
        self.plate = plate

    def forward(self, local: float, global_: float, kl_weight: float, *batch: torch.Tensor):
        return self.objective.loss(
            _wrapped(self.model, self.plate, local, global_, kl_weight),
            _wrapped(self.guide, self.plate, local, global_, kl_weight),
            *batch,
        )


def _step(state: TrainState, batch: Batch, global_size: int | None = None) -> dict[str, Any]:
    """One optimization step on one batch; returns ``{"loss": float}``.

    ``global_size`` is the size of the global batch this process's ``batch`` is part of
    (the loss is scaled so that DDP's gradient average is the global batch's mean)."""
    b = batch[0].shape[0] if global_size is None else global_size
    local, global_ = state.world_size / b, 1.0 / state.num_train
    state.optimizer.zero_grad(set_to_none=True)
    if state.ddp is not None:
        loss = state.ddp(local, global_, state.kl_weight, *batch)
        loss.backward()
        loss = loss.detach()
    elif state.direct is not None:  # ppvae's VAE with Trace_ELBO, without the tracing
        loss = state.direct(batch[0], local, state.kl_weight)
        loss.backward()
        loss = loss.detach()
    else:
        model = _wrapped(state.model, state.plate, local, global_, state.kl_weight)
        guide = _wrapped(state.guide, state.plate, local, global_, state.kl_weight)
        loss = state.objective.loss_and_grads(model, guide, *batch)
    grads = [p.grad for p in state.params if p.grad is not None]
    if state.clip_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(state.params, state.clip_norm)
    else:
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    loss_value, norm_value = torch.stack(
        [loss.detach().float(), norm.float().to(loss.device)]
    ).tolist()
    if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
        what = "loss" if not math.isfinite(loss_value) else "gradient"
        if state.on_nan == "skip":
            state.optimizer.zero_grad(set_to_none=True)
            return {"loss": loss_value, "skipped": True}
        raise TrainingError(
            f"the {what} became {'NaN' if math.isnan(loss_value if what == 'loss' else norm_value) else 'infinite'} "
            f"at epoch {state.epoch + 1}, step {state.step + 1}; lower train.lr, set train.clip_norm, "
            'or set train.on_nan = "skip"'
        )
    state.optimizer.step()
    return {"loss": loss_value, "grad_norm": norm_value}


def fit(
    model: nn.Module,
    guide: nn.Module,
    data: Any,
    *,
    objective: Any = "elbo",
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    valid_data: Any = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    callbacks: Sequence[Callback] = (),
    out_dir: str | Path | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    clip_norm: float = 0.0,
    kl_warmup_epochs: int = 0,
    early_stopping: int = 0,
    on_nan: str = "stop",
    deterministic: bool = False,
    progress: bool = True,
    plate: str = "data",
    train_transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    spec: dict[str, Any] | None = None,
    spec_digest: str | None = None,
    resume_from: str | Path | None = None,
    fast_path: bool = True,
) -> History:
    r"""Train ``model`` and ``guide`` on ``data`` by minimizing a variational objective.

    Args:
        model, guide: ``nn.Module``\ s (usually ``PyroModule``\ s) whose ``forward`` takes a
            batch (a tensor, or a tuple passed as positional arguments) and calls
            ``pyro.sample``, observed data inside the plate ``plate``.
        data: a tensor or tuple of tensors with data points on dim 0 (kept on the device,
            shuffled each epoch), or a ``torch.utils.data.Dataset``.
        objective: a kind name (``"elbo"``, ``"meanfield_elbo"``, ``"iwae"``, ...), an
            objective config, an :class:`~ppvae.infer.objectives.Objective` or a Pyro ELBO.
        epochs, batch_size, lr: the optimization budget.
        valid_data: data (tensor or tuple) whose ELBO per point is computed after every
            epoch (fixed random draws); it drives ``best.pt`` and early stopping.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; modules and in-memory data move there.
        seed: seeds Python's, NumPy's and torch's generators and the shuffling.
        callbacks: extra :class:`~ppvae.infer.callbacks.Callback`\ s.
        out_dir: when given, writes ``metrics.jsonl`` and ``checkpoints/{last,best}.pt``.
        optimizer: ``"adam"`` (default), ``"adamw"`` or ``"sgd"``.
        clip_norm: clip the gradient norm (0: off).
        kl_warmup_epochs: KL warm-up length (ELBO objectives).
        early_stopping: patience in epochs on the validation ELBO (0: off).
        on_nan: ``"stop"`` raises :class:`~ppvae.errors.TrainingError`; ``"skip"`` drops
            the step.
        deterministic: turn on ``torch.use_deterministic_algorithms`` for the run (GPU
            runs then repeat exactly, at some cost in speed).
        train_transform: ``f(x, generator) -> x`` applied to the first tensor of each
            training batch (e.g. dynamic binarization).
        spec, spec_digest: the resolved spec stored in checkpoints.
        resume_from: a checkpoint to continue from (same model, data and options).
        fast_path: for ppvae's own VAE pair with the single-sample ``elbo``, compute the
            loss without tracing (:func:`ppvae.infer.direct.direct_elbo`: the same loss,
            gradients and random draws as Pyro's ``Trace_ELBO``); False always traces.

    Returns:
        The :class:`History`: one record per epoch with ``epoch``, ``step``,
        ``train_loss`` (objective per data point), ``valid_elbo``, ``kl_weight``,
        ``seconds``.
    """
    if on_nan not in ("stop", "skip"):
        raise SpecError(f"on_nan must be 'stop' or 'skip', got {on_nan!r}")
    if epochs < 1 or batch_size < 1:
        raise SpecError(f"epochs and batch_size must be at least 1, got {epochs} and {batch_size}")
    dev = resolve_device(device)
    dinfo = distributed.init_from_env(dev)
    if dinfo is not None and dev.type == "cuda":
        dev = torch.device("cuda", dinfo.local_rank)
    objective = build_objective(objective)
    # every process shuffles alike (shuffle_generator) but draws its own latent samples
    sample_seed = seed if dinfo is None else seed + 7919 * dinfo.rank
    pyro.set_rng_seed(sample_seed)
    model.to(dev)
    guide.to(dev)

    tensors = as_tensors(data, "the training data")
    loader = None
    if tensors is None:
        if not isinstance(data, torch.utils.data.Dataset):
            raise DataError(
                f"training data must be a tensor, a tuple of tensors or a Dataset, got {type(data).__name__}"
            )
        if len(data) == 0:
            raise DataError("the training data is empty")
        num_train = len(data)
    else:
        tensors = tuple(t.to(dev) for t in tensors)
        num_train = tensors[0].shape[0]
    valid = as_tensors(valid_data, "the validation data") if valid_data is not None else None
    if valid_data is not None and valid is None:
        raise DataError("validation data must be a tensor or a tuple of tensors")
    if valid is not None:
        valid = tuple(t.to(dev) for t in valid)

    shuffle_generator = torch.Generator().manual_seed(seed)
    data_generator = None
    if train_transform is not None:
        rank = 0 if dinfo is None else dinfo.rank  # each process binarizes its own part
        data_generator = torch.Generator(device=dev).manual_seed(seed + 1 + 7919 * rank)
    world = 1 if dinfo is None else dinfo.world_size
    sampler = None
    if tensors is None:
        if dinfo is not None:
            sampler = torch.utils.data.DistributedSampler(
                data, num_replicas=world, rank=dinfo.rank, shuffle=True, seed=seed
            )
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=max(1, batch_size // world),
            shuffle=sampler is None,
            sampler=sampler,
            generator=shuffle_generator if sampler is None else None,
        )

    def epoch_batches() -> Iterator[tuple[Batch, int]]:
        if loader is None:
            yield from _shuffled_batches(tensors, batch_size, shuffle_generator, dev, dinfo)
            return
        if sampler is not None:
            sampler.set_epoch(state.epoch)
        for batch in loader:
            batch = as_tensors(batch if isinstance(batch, tuple | list) else (batch,))
            yield tuple(t.to(dev) for t in batch), batch[0].shape[0] * world

    steps_per_epoch = math.ceil(num_train / batch_size)
    with _deterministic_algorithms(deterministic, dev), isolated_param_store():
        if loader is None:
            first = next(_batches(tensors, batch_size))
        else:
            first = next(iter(loader))
            first = tuple(
                t.to(dev)
                for t in as_tensors(first if isinstance(first, tuple | list) else (first,))
            )
        if train_transform is not None:
            first = (
                train_transform(first[0], torch.Generator(device=dev).manual_seed(seed)),
                *first[1:],
            )
        with _first_batch_errors(first), pyro.validation_enabled(True):
            params = _collect_params(model, guide, first)
        if not params:
            raise SpecError("the model and guide have no trainable parameters")
        opt = _make_optimizer(optimizer, params, lr, weight_decay, dev)
        state = TrainState(
            model=model,
            guide=guide,
            objective=objective,
            optimizer=opt,
            params=params,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            num_train=num_train,
            plate=plate,
            clip_norm=clip_norm,
            on_nan=on_nan,
            shuffle_generator=shuffle_generator,
            data_generator=data_generator,
            spec=spec,
            spec_digest=spec_digest,
            is_main_process=dinfo is None or dinfo.is_main,
            world_size=world,
        )
        _check_first_batch(state, first)
        pyro.set_rng_seed(sample_seed)  # the check drew random numbers: start again
        if fast_path and dinfo is None:
            state.direct = direct_elbo(model, guide, objective)
        if dinfo is not None:
            if type(objective).loss_and_grads is not Objective.loss_and_grads:
                raise SpecError(
                    f"objective {objective!r} computes its own gradients and cannot be used "
                    "with distributed training; use elbo, meanfield_elbo, iwae or renyi"
                )
            state.ddp = torch.nn.parallel.DistributedDataParallel(
                _ObjectiveModule(model, guide, objective, plate),
                device_ids=[dev.index] if dev.type == "cuda" else None,
            )
        if resume_from is not None:
            state.load_state_dict(load_checkpoint(resume_from, map_location=dev))

        cbs: list[Callback] = []
        if kl_warmup_epochs > 0:
            cbs.append(KLWarmup(kl_warmup_epochs))
        if progress and state.is_main_process:
            cbs.append(ProgressBar())
        if out_dir is not None:
            out_dir = Path(out_dir)
        if early_stopping > 0:  # before the logger, which then records early_stopped
            cbs.append(EarlyStopping(early_stopping))
        if out_dir is not None:
            cbs.append(MetricsLogger(out_dir / "metrics.jsonl"))
        cbs.extend(callbacks)
        if out_dir is not None:
            cbs.append(Checkpointer(out_dir / "checkpoints"))  # last: sees the final record

        _run(state, cbs, epoch_batches, train_transform, valid)
    return state.history


def _run(state: TrainState, cbs: list[Callback], epoch_batches, transform, valid) -> None:
    for cb in cbs:
        cb.on_train_start(state)
    try:
        with pyro.validation_enabled(False), warnings.catch_warnings():
            # every loss and gradient is checked here (on_nan): Pyro's "Encountered NaN"
            # warnings would only print lines in front of the one-sentence error
            warnings.filterwarnings(
                "ignore", message=r"Encountered (NaN|\+inf|-inf)", category=UserWarning
            )
            while state.epoch < state.epochs and not state.stop:
                _run_epoch(state, cbs, epoch_batches, transform, valid)
    finally:
        for cb in cbs:
            cb.on_train_end(state)


def _known_nesting(objective: Any) -> int | None:
    """The training objective's ``max_plate_nesting`` once set or guessed (None before)."""
    value = getattr(getattr(objective, "elbo", None), "max_plate_nesting", None)
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _run_epoch(state: TrainState, cbs: list[Callback], epoch_batches, transform, valid) -> None:
    start = time.perf_counter()
    for cb in cbs:
        cb.on_epoch_start(state)
    state.model.train()
    state.guide.train()
    total, count, skipped = 0.0, 0, 0
    for batch, global_size in epoch_batches():
        if transform is not None:
            batch = (transform(batch[0], state.data_generator), *batch[1:])
        for cb in cbs:
            cb.on_step_start(state)
        info = _step(state, batch, global_size)
        state.step += 1
        if info.get("skipped"):
            skipped += 1
        else:
            total += info["loss"] * global_size
            count += global_size
            state.running_loss = info["loss"]
        for cb in cbs:
            cb.on_step_end(state, info)
    state.epoch += 1
    if state.world_size > 1:  # mean over every process's points (see _step's scaling)
        total, count, skipped = distributed.all_reduce_sum(
            [total, count, skipped], _device_of(state)
        )
        skipped = int(skipped / state.world_size)
    record: dict[str, Any] = {
        "epoch": state.epoch,
        "step": state.step,
        "train_loss": total / count if count else math.nan,
        "kl_weight": state.kl_weight,
    }
    if skipped:
        record["skipped_steps"] = skipped
    if valid is not None:
        record["valid_elbo"] = mean_elbo(
            state.model,
            state.guide,
            valid,
            plate=state.plate,
            enumerate=state.objective.enumerates,
            max_plate_nesting=_known_nesting(state.objective),
        )
        monitored = record["valid_elbo"]
        if not math.isfinite(monitored):  # skipping steps cannot repair diverged weights
            # finite losses but diverged weights: stop before they are saved as last.pt
            raise TrainingError(
                f"the validation ELBO became {'NaN' if math.isnan(monitored) else 'infinite'} "
                f"after epoch {state.epoch} (step {state.step}): training diverged; lower "
                "train.lr or set train.clip_norm"
            )
    else:
        monitored = -record["train_loss"]
    if monitored > state.best_value:
        state.best_value, state.best_epoch = monitored, state.epoch
    record["seconds"] = time.perf_counter() - start
    state.history.records.append(record)
    for cb in cbs:
        cb.on_epoch_end(state, record)
