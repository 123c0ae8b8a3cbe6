r"""Training: the convenience loop over init / step (Contract 5).

:func:`fit` trains any model/guide pair of Pyro programs (callables that take a batch
and call ``pyro.sample``, data in a named plate, ``"data"`` by default) by minibatch
stochastic optimization of a variational objective. It is the convenience loop over
:func:`ppvae.init` and :func:`ppvae.step` (:mod:`ppvae.infer.step`) with callbacks around
it: epochs, shuffling, validation, checkpoints, early stopping, KL warm-up, progress.
Settings come in one :class:`~ppvae.infer.config.TrainConfig` (or as keyword arguments
that fill one). Pyro's global parameter store is not used while training (see
:mod:`ppvae.infer.isolation`): parameters are the modules' own, plus any ``pyro.param``
sites the programs declare.

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

import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyro
import torch

from ppvae import distributed
from ppvae.checkpoint import load_checkpoint
from ppvae.errors import DataError, TrainingError
from ppvae.infer.batches import Batch, Source, Stream, as_tensors, in_order, interleave
from ppvae.infer.callbacks import (
    Callback,
    Checkpointer,
    EarlyStopping,
    KLWarmup,
    MetricsLogger,
    ProgressBar,
)
from ppvae.infer.config import TrainConfig, resolve_device
from ppvae.infer.programs import to_device, train_mode
from ppvae.infer.rng import deterministic_algorithms, seeded
from ppvae.infer.step import History, TrainState, init, quiet_nan_warnings, scaled, step
from ppvae.infer.traces import data_errors, eval_mode

__all__ = ["fit", "mean_elbo"]


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
    ``num_particles`` samples, programs in eval mode; ``seed`` fixes the draws without
    touching the global RNG. ``enumerate=True`` sums out sites marked for enumeration
    (``TraceEnum_ELBO``, with ``max_plate_nesting`` when known; Pyro guesses it
    otherwise)."""
    tensors = as_tensors(data)
    n = tensors[0].shape[0]
    cls = pyro.infer.TraceEnum_ELBO if enumerate else pyro.infer.Trace_ELBO
    nesting = {} if max_plate_nesting is None else {"max_plate_nesting": max_plate_nesting}
    elbo = cls(num_particles=num_particles, vectorize_particles=num_particles > 1, **nesting)
    total = 0.0
    with seeded(seed, tensors[0].device), eval_mode(model, guide):
        for batch in in_order(tensors, batch_size):
            b = batch[0].shape[0]
            m = scaled(model, plate, 1.0 / n, b / n / n, 1.0)
            g = scaled(guide, plate, 1.0 / n, b / n / n, 1.0)
            total -= float(elbo.loss(m, g, *batch))
    return total


def _streams(data: Any) -> list[Stream]:
    if isinstance(data, Stream):
        return [data]
    if isinstance(data, list | tuple) and data and all(isinstance(d, Stream) for d in data):
        return list(data)
    return [Stream(data)]


def fit(
    model: Callable,
    guide: Callable,
    data: Any,
    objective: Any = "elbo",
    config: TrainConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    valid_data: Any = None,
    optimizer: Any = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    plate: str = "data",
    out_dir: str | Path | None = None,
    train_transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    resume_from: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
    **settings: Any,
) -> History:
    r"""Train ``model`` and ``guide`` on ``data`` by minimizing a variational objective.

    Args:
        model, guide: Pyro programs (functions, bound methods, ``nn.Module``\ s,
            ``PyroModule``\ s) taking a batch as their positional arguments, the observed
            data inside the plate ``plate``.
        data: a tensor or tuple of tensors with data points on dim 0 (kept on the device,
            shuffled each epoch unless ``shuffle=False``), a ``torch.utils.data.Dataset``,
            any re-iterable of ready batches (a ``DataLoader``: tensors, argument tuples,
            keyword dicts or ``(args, kwargs)`` pairs), or a list of
            :class:`~ppvae.infer.batches.Stream`\ s (several sources per epoch, each with
            its own programs and objective if needed, their batches spread evenly).
        objective: a kind name (``"elbo"``, ``"meanfield_elbo"``, ``"iwae"``, ...), an
            objective config, an :class:`~ppvae.infer.objectives.Objective` or any Pyro
            ELBO instance; it is the loss that is optimized, whatever its class.
        config: the :class:`~ppvae.infer.config.TrainConfig`; ``**settings`` (e.g.
            ``epochs=5, lr=1e-2``) replace fields of it (or of the defaults).
        callbacks: extra :class:`~ppvae.infer.callbacks.Callback`\ s; they run before the
            metrics log and the checkpoints, so keys they add to an epoch's record are
            written with it.
        valid_data: data (tensor or tuple) whose ELBO per point is computed after every
            epoch (fixed random draws, eval mode); it drives ``best.pt`` and early stopping.
        optimizer: None (the config's), a torch optimizer class, a callable
            ``params -> torch.optim.Optimizer`` or a Pyro optimizer or scheduler (see
            :func:`ppvae.infer.step.make_optimizer`).
        scheduler: ``optimizer -> LRScheduler``, stepped after every epoch
            (``ReduceLROnPlateau`` with the validation ELBO, or minus the train loss).
        plate: the name of the data plate.
        out_dir: when given, writes ``metrics.jsonl`` and ``checkpoints/{last,best}.pt``.
        train_transform: ``f(x, generator) -> x`` applied to the first tensor of each
            training batch (e.g. dynamic binarization).
        resume_from: a checkpoint to continue from (same programs and data; the
            optimization settings of ``config`` apply from there on).
        metadata: stored as is in every checkpoint (e.g. the resolved spec).

    Returns:
        The :class:`~ppvae.infer.step.History`: one record per epoch with ``epoch``,
        ``step``, ``train_loss`` (objective per data point), ``valid_elbo``, ``kl_weight``,
        ``seconds``; ``history.state`` is the final
        :class:`~ppvae.infer.step.TrainState`.

    Parameters: networks train their own weights; ``pyro.param`` sites start from the
    global parameter store's values when it has them (as in Pyro's ``SVI``), else from
    their initial values, and their trained values are put back into the global store
    when ``fit`` returns (``pyro.param(name)`` then gives them). Nothing else of the
    global store is read or written.
    """
    config = config or TrainConfig()
    if settings:
        config = config.replace(**settings)
    dev = resolve_device(config.device)
    dinfo = distributed.init_from_env(dev)
    if dinfo is not None and dev.type == "cuda":
        dev = torch.device("cuda", dinfo.local_rank)
    streams = _streams(data)
    to_device(dev, model, guide, *[fn for st in streams for fn in (st.model, st.guide) if fn])
    shuffle_generator = torch.Generator().manual_seed(config.seed)
    sources = [
        Source(st, config.batch_size, config.shuffle, shuffle_generator, dev, dinfo,
               config.seed, "the training data" if len(streams) == 1 else f"data stream {i}")
        for i, st in enumerate(streams)
    ]  # fmt: skip
    num_train = sum(src.num_data for src in sources)
    valid = None
    if valid_data is not None:
        valid = as_tensors(valid_data, "the validation data")
        if valid is None:
            raise DataError("validation data must be a tensor or a tuple of tensors")
        valid = tuple(t.to(dev) for t in valid)

    data_generator = None
    if train_transform is not None:
        if any(src.tensors is None for src in sources):
            raise DataError("train_transform applies to in-memory tensors only")
        rank = 0 if dinfo is None else dinfo.rank  # each process binarizes its own part
        data_generator = torch.Generator(device=dev).manual_seed(config.seed + 1 + 7919 * rank)

    def epoch_batches() -> Iterator[tuple[int, tuple[Any, int | None]]]:
        epochs = [src.epoch(state.epoch) for src in sources]
        yield from interleave(epochs, [src.length for src in sources])

    ddp = None
    if dinfo is not None:

        def ddp(module: torch.nn.Module) -> torch.nn.Module:
            return torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[dev.index] if dev.type == "cuda" else None
            )

    with deterministic_algorithms(config.deterministic, dev):
        firsts = [src.first() for src in sources]
        if train_transform is not None:
            generator = torch.Generator(device=dev).manual_seed(config.seed)
            firsts = [(train_transform(f[0], generator), *f[1:]) for f in firsts]
        lengths = [src.length for src in sources]
        state = init(
            model,
            guide,
            objective,
            optimizer,
            firsts[0],
            scheduler=scheduler,
            config=config,
            num_data=num_train,
            plate=plate,
            streams=[
                (st.model or model, st.guide or guide, st.objective, first)
                for st, first in zip(streams[1:], firsts[1:], strict=True)
            ],
            steps_per_epoch=sum(lengths) if all(lengths) else None,
            rank=0 if dinfo is None else dinfo.rank,
            world_size=1 if dinfo is None else dinfo.world_size,
            ddp=ddp,
            metadata=metadata,
        )
        state.shuffle_generator = shuffle_generator
        state.data_generator = data_generator
        if valid is not None:  # validation data that does not fit fails now, not after an epoch
            with data_errors(valid, "the validation data"):
                _validate(state, tuple(t[:2] for t in valid))
        if resume_from is not None:
            state.load_state_dict(load_checkpoint(resume_from, map_location=dev))

        cbs: list[Callback] = []
        if config.kl_warmup_epochs > 0:
            cbs.append(KLWarmup(config.kl_warmup_epochs))
        if config.progress and state.is_main_process:
            cbs.append(ProgressBar())
        if config.early_stopping > 0:  # before the logger, which then records early_stopped
            cbs.append(EarlyStopping(config.early_stopping))
        cbs.extend(callbacks)  # before the logger: they may add keys to the epoch's record
        if out_dir is not None:
            cbs.append(MetricsLogger(Path(out_dir) / "metrics.jsonl"))
            cbs.append(Checkpointer(Path(out_dir) / "checkpoints"))  # last: sees the final record

        try:
            _run(state, cbs, epoch_batches, train_transform, valid)
        finally:
            state.optimizer.zero_grad(set_to_none=True)  # no stale gradients left behind
            # trained pyro.param sites where pyro.param(name) finds them, even when
            # training stops early (an error, Ctrl-C): the networks keep theirs anyway
            state.export_params()
    state.history.state = state
    return state.history


def _run(state: TrainState, cbs: list[Callback], epoch_batches, transform, valid) -> None:
    for cb in cbs:
        cb.on_train_start(state)
    try:
        with pyro.validation_enabled(False), quiet_nan_warnings():
            while state.epoch < state.epochs and not state.stop:
                _run_epoch(state, cbs, epoch_batches, transform, valid)
    finally:
        for cb in cbs:
            cb.on_train_end(state)


def _known_nesting(objective: Any) -> int | None:
    """The training objective's ``max_plate_nesting`` once set or guessed (None before)."""
    value = getattr(getattr(objective, "elbo", None), "max_plate_nesting", None)
    return int(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _validate(state: TrainState, valid: Batch) -> float:
    with state.scope():
        return mean_elbo(
            state.model,
            state.guide,
            valid,
            plate=state.plate,
            enumerate=state.objective.enumerates,
            max_plate_nesting=_known_nesting(state.objective),
        )


def _run_epoch(state: TrainState, cbs: list[Callback], epoch_batches, transform, valid) -> None:
    start = time.perf_counter()
    for cb in cbs:
        cb.on_epoch_start(state)
    train_mode(state.model, state.guide)
    device = state.setup.device
    total, count, skipped = 0.0, 0, 0
    for stream, (batch, global_size) in epoch_batches():
        if transform is not None:
            batch = (transform(batch[0], state.data_generator), *batch[1:])
        for cb in cbs:
            cb.on_step_start(state)
        state, info = step(state, batch, global_size=global_size, stream=stream)
        if info.get("skipped"):
            skipped += 1
        else:
            points = info["points"] or 1
            total += info["loss"] * points
            count += points
        for cb in cbs:
            cb.on_step_end(state, info)
    state.epoch += 1
    if state.world_size > 1:  # mean over every process's points (see step's scaling)
        total, count, skipped = distributed.all_reduce_sum([total, count, skipped], device)
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
        record["valid_elbo"] = _validate(state, valid)
        monitored = record["valid_elbo"]
        if not math.isfinite(monitored):  # skipping steps cannot repair diverged weights
            raise TrainingError(
                f"the validation ELBO became {'NaN' if math.isnan(monitored) else 'infinite'} "
                f"after epoch {state.epoch} (step {state.step}): training diverged; lower "
                "train.lr or set train.clip_norm"
            )
    else:
        monitored = -record["train_loss"]
    if monitored > state.best_value:
        state.best_value, state.best_epoch = monitored, state.epoch
    if state.scheduler is not None:
        if isinstance(state.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            state.scheduler.step(-monitored)
        else:
            state.scheduler.step()
        record["lr"] = state.optimizer.param_groups[0]["lr"]
    record["seconds"] = time.perf_counter() - start
    state.history.records.append(record)
    for cb in cbs:
        cb.on_epoch_end(state, record)
