r"""One optimization step as a plain function over a small state: :func:`init` and
:func:`step` (numpyro's ``SVI.init`` / ``SVI.update``, blackjax's ``init`` / ``step``).

``state = init(model, guide, objective, optimizer, example_batch)`` wires the programs to
an objective and an optimizer once: it finds the parameters (module weights and
``pyro.param`` sites), runs the objective on the example batch with Pyro's validation on
(so bad data fails there, in one sentence) and seeds the random streams.
``state, info = step(state, batch)`` then takes one gradient step on a batch. What never
changes (programs, objective, parameters, settings) sits in ``state.setup``; the state
itself holds what does (optimizer state, counters, KL weight, history), and its
:meth:`TrainState.state_dict` is a checkpoint. :func:`ppvae.fit` is the convenience loop
over these two functions.

The loss of a batch is scaled to estimate the full-data bound divided by the data set
size (:class:`~ppvae.infer.scaling.MinibatchScale`: sites in the data plate by ``1/B``,
others by ``1/N``), so losses are in nats per data point. Nothing here looks at what
class the programs or the objective are: every program takes the same path.

Example (a user loop):
    >>> import torch, pyro, pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     loc = pyro.param("loc", torch.tensor(0.0))
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(loc + x / 2, 0.5**0.5))
    >>> x = torch.randn(64) + 1.0
    >>> state = init(model, guide, "elbo", example_batch=(x[:16],), num_data=64,
    ...              config=TrainConfig(lr=0.05))
    >>> for batch in x.split(16):
    ...     state, info = step(state, (batch,))
    >>> state.step, round(float(state.named_params()["loc"]), 2) != 0.0
    (4, True)
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch
from pyro import poutine
from torch import nn

from ppvae.checkpoint import rng_state, set_rng_state
from ppvae.errors import SpecError, TrainingError
from ppvae.infer.config import TrainConfig, lr_scheduler, resolve_device
from ppvae.infer.isolation import export_params, isolated_param_store
from ppvae.infer.objectives import Objective, ObjectiveContext, build_objective
from ppvae.infer.programs import modules_of
from ppvae.infer.scaling import Scaling
from ppvae.infer.traces import data_errors, data_frame, guide_and_model_traces

__all__ = [
    "Setup",
    "Program",
    "TrainState",
    "History",
    "init",
    "step",
    "make_optimizer",
    "scaled",
    "call_parts",
]

Batch = tuple[Any, ...]


class History:
    """Per-epoch records of a training run; ``history["valid_elbo"]`` lists one key."""

    def __init__(self, records: Sequence[dict[str, Any]] = ()) -> None:
        self.records = list(records)
        #: the final :class:`TrainState` when returned by :func:`ppvae.fit`
        self.state: TrainState | None = None

    def __getitem__(self, key: str) -> list[Any]:
        return [r.get(key) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        last = self.records[-1] if self.records else {}
        return f"History(epochs={len(self)}, last={last})"


class Program:
    """One stream's model, guide and objective (with its context), and the scaling
    messenger both programs run under (settings changed by every step)."""

    def __init__(self, model: Callable, guide: Callable, objective: Objective) -> None:
        self.model, self.guide, self.objective = model, guide, objective
        self.scaling = Scaling(objective.context.plate)
        self.scaled_model = self.scaling(model)
        self.scaled_guide = self.scaling(guide)
        #: the parameters these programs use (set by :func:`init`)
        self.params: tuple[torch.Tensor, ...] = ()


@dataclass(frozen=True, eq=False)
class Setup:
    """What :func:`step` uses and never changes: the programs and objectives of each data
    stream (``programs[0]`` the main one), the parameters, the settings and the data
    size (all streams' points)."""

    programs: tuple[Program, ...]
    params: tuple[torch.Tensor, ...]
    param_names: tuple[str, ...]
    config: TrainConfig
    num_data: int
    device: torch.device
    steps_per_epoch: int
    world_size: int = 1
    is_main_process: bool = True
    ddp: nn.Module | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    model = property(lambda self: self.programs[0].model)
    guide = property(lambda self: self.programs[0].guide)
    objective = property(lambda self: self.programs[0].objective)

    @property
    def plate(self) -> str:
        return self.objective.context.plate


@dataclass(eq=False)
class TrainState:
    """What a training step reads and writes; a checkpoint is its :meth:`state_dict`."""

    setup: Setup
    optimizer: torch.optim.Optimizer
    scheduler: Any = None
    #: the programs' own parameter store (Pyro's ``get_state()`` form): ``pyro.param``
    #: sites live here while training; see :meth:`export_params`
    param_store: dict[str, Any] = field(default_factory=lambda: {"params": {}, "constraints": {}})
    #: entries of ``param_store`` known at :func:`init` (a new one is checked by step)
    store_size: int = 0
    #: the stored tensors known at :func:`init`: the parameters, and what the store held
    #: before (``pyro.param`` sites the programs may never use)
    store_known: frozenset[int] = frozenset()
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

    # read-only views of the setup, for callbacks
    model = property(lambda self: self.setup.model)
    guide = property(lambda self: self.setup.guide)
    objective = property(lambda self: self.setup.objective)
    config = property(lambda self: self.setup.config)
    epochs = property(lambda self: self.setup.config.epochs)
    steps_per_epoch = property(lambda self: self.setup.steps_per_epoch)
    num_train = property(lambda self: self.setup.num_data)
    plate = property(lambda self: self.setup.plate)
    is_main_process = property(lambda self: self.setup.is_main_process)
    world_size = property(lambda self: self.setup.world_size)

    params = property(lambda self: self.setup.params)

    def export_params(self) -> None:
        """Put the trained ``pyro.param`` sites into Pyro's global parameter store, where
        ``pyro.param(name)`` and :func:`ppvae.log_marginal_likelihood` find them
        (:func:`ppvae.fit` does this when it returns)."""
        export_params(self.param_store)

    def scope(self):
        """A context in which Pyro's parameter store is this state's own."""
        return pyro.get_param_store().scope(self.param_store)

    def named_params(self) -> dict[str, torch.Tensor]:
        """The trained parameters by name: module weights as ``model.<name>`` /
        ``guide.<name>``, ``pyro.param`` sites by their own names (unconstrained values)."""
        return dict(zip(self.setup.param_names, self.setup.params, strict=True))

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: weights, optimizer, RNG states, counters, history, metadata."""
        s = self.setup
        out = {
            "format": "ppvae-train-state-2",
            "model": s.model.state_dict() if isinstance(s.model, nn.Module) else {},
            "guide": s.guide.state_dict() if isinstance(s.guide, nn.Module) else {},
            # the networks of programs that are functions or methods (buffers included)
            "modules": [m.state_dict() for m in _networks(s)],
            "params": {n: p.detach().clone() for n, p in zip(s.param_names, s.params, strict=True)},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": rng_state(),
            "shuffle_generator": self.shuffle_generator.get_state(),
            "epoch": self.epoch,
            "step": self.step,
            "kl_weight": self.kl_weight,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "history": self.history.records,
            **s.metadata,
        }
        if self.data_generator is not None:
            out["data_generator"] = self.data_generator.get_state()
        return out

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        """Restore a checkpoint written by :meth:`state_dict` (resume). The learning rate
        and other optimizer settings stay those of this state's config."""
        s = self.setup
        if isinstance(s.model, nn.Module):
            s.model.load_state_dict(checkpoint["model"])
        if isinstance(s.guide, nn.Module):
            s.guide.load_state_dict(checkpoint["guide"])
        for module, saved in zip(_networks(s), checkpoint.get("modules", []), strict=False):
            module.load_state_dict(saved)
        with torch.no_grad():
            for name, p in zip(s.param_names, s.params, strict=True):
                saved = checkpoint.get("params", {}).get(name)
                if saved is not None:
                    p.copy_(saved)
        groups = [dict(g) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        # the settings of this state's config apply from here on (a resume may change
        # them); under a scheduler the learning rate is the scheduler's
        keys = ("weight_decay",) if self.scheduler is not None else ("lr", "weight_decay")
        for group, settings in zip(self.optimizer.param_groups, groups, strict=True):
            for key in keys:
                if key in settings:
                    group[key] = settings[key]
        if self.scheduler is not None and checkpoint.get("scheduler") is not None:
            saved, fresh = checkpoint["scheduler"], self.scheduler.state_dict()
            if _horizons(saved) != _horizons(fresh):
                raise SpecError(
                    "the learning-rate schedule of this checkpoint ends after a different "
                    "number of epochs than the settings now ask (a cosine schedule cannot be "
                    "stretched midway); resume with the run's train.epochs, or start a new "
                    "run"
                )
            self.scheduler.load_state_dict(saved)
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


def _horizons(state: dict[str, Any]) -> list[Any]:
    """The lengths a scheduler's state is tied to (cosine ``T_max``, warm-up milestones),
    through sequential schedulers."""
    out = [state.get("T_max"), state.get("_milestones")]
    for inner in state.get("_schedulers", []):
        out.extend(_horizons(inner))
    return out


def _networks(setup: Setup) -> list[nn.Module]:
    """The networks of the programs that are not modules themselves."""
    fns = [fn for p in setup.programs for fn in (p.model, p.guide)]
    skip = (setup.model, setup.guide)  # saved as "model" and "guide"
    return modules_of(*[fn for fn in fns if not any(fn is k for k in skip)]) if fns else []


def scaled(fn: Callable, plate: str, local: float, global_: float, kl_weight: float) -> Callable:
    """``fn`` under the minibatch scaling (``local`` in the data plate, ``global_`` outside)
    and, when not 1, the KL warm-up weight on latent sites."""
    scaling = Scaling(plate)
    scaling.set(local, global_, kl_weight)
    return scaling(fn)


def make_optimizer(
    optimizer: Any, params: Sequence[torch.Tensor], config: TrainConfig
) -> tuple[torch.optim.Optimizer, Any]:
    """A torch optimizer over ``params``, and a learning-rate scheduler or None.

    ``optimizer`` may be None (the config's name, ``lr`` and ``weight_decay``), a
    ``torch.optim.Optimizer`` subclass (built with the config's ``lr``), any callable
    ``params -> optimizer`` (e.g. ``functools.partial(torch.optim.Adam, lr=1e-3,
    betas=(0.8, 0.99))``), or one of Pyro's optimizers (``pyro.optim.ClippedAdam({...})``,
    ``pyro.optim.Adam({...})``: the same torch optimizer with the same arguments, over all
    parameters at once; Pyro's ``ClippedAdam`` clamps each gradient element, unlike
    ``train.clip_norm``, which clips the total norm) or learning-rate schedulers
    (``pyro.optim.ExponentialLR({"optimizer": ..., "optim_args": {...}, "gamma": ...})``,
    which also gives the scheduler).
    """
    from pyro.optim.lr_scheduler import PyroLRScheduler
    from pyro.optim.optim import PyroOptim

    params = list(params)
    if optimizer is None:
        kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
        if config.optimizer in ("adam", "adamw"):
            kwargs.update(foreach=True, betas=tuple(config.adam_betas), eps=config.eps)
            cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        else:
            cls = torch.optim.SGD
            kwargs["momentum"] = config.momentum
        return cls(params, **kwargs), None
    if isinstance(optimizer, PyroOptim):
        args = optimizer.pt_optim_args
        if callable(args) or optimizer.pt_clip_args:
            raise SpecError(
                "a Pyro optimizer with per-parameter arguments or clip_args cannot be used by "
                "ppvae; pass a dict of arguments, and train.clip_norm for clipping"
            )
        built = optimizer.pt_optim_constructor(params, **args)
        if isinstance(optimizer, PyroLRScheduler):
            return built, optimizer.pt_scheduler_constructor(built, **optimizer.kwargs)
        return built, None
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer(params, lr=config.lr), None
    if callable(optimizer):
        built = optimizer(params)
        if not isinstance(built, torch.optim.Optimizer):
            raise SpecError(
                f"optimizer must build a torch.optim.Optimizer from the parameters, got "
                f"{type(built).__name__}"
            )
        return built, None
    raise SpecError(
        "optimizer must be None, a torch.optim.Optimizer class, a callable params -> "
        f"optimizer or a Pyro optimizer, got {type(optimizer).__name__}"
    )


def _parameters(model, guide, args: Batch, kwargs: dict) -> tuple[list[str], list[torch.Tensor]]:
    """Module parameters plus the unconstrained values of the ``pyro.param`` sites seen in
    one run of guide and model, with names."""
    found: dict[int, tuple[str, torch.Tensor]] = {}
    for role, fn in (("model", model), ("guide", guide)):
        for i, module in enumerate(modules_of(fn)):
            prefix = role if i == 0 else f"{role}{i}"
            for name, p in module.named_parameters():
                found.setdefault(id(p), (f"{prefix}.{name}", p))
    with poutine.block(), torch.no_grad():
        tr = poutine.trace(guide, param_only=True).get_trace(*args, **kwargs)
        tr_m = poutine.trace(poutine.replay(model, trace=tr), param_only=True).get_trace(
            *args, **kwargs
        )
    for site in [*tr.nodes.values(), *tr_m.nodes.values()]:
        if site["type"] == "param":
            value = site["value"]
            value = value.unconstrained() if hasattr(value, "unconstrained") else value
            if value.requires_grad:
                found.setdefault(id(value), (site["name"], value))
    pairs = [(n, p) for n, p in found.values() if p.requires_grad]
    return [n for n, _ in pairs], [p for _, p in pairs]


def call_parts(batch: Any) -> tuple[Batch, dict[str, Any]]:
    """A batch as the programs' positional and keyword arguments: a tensor is the one
    argument, a tuple or list the positional ones, a dict the keyword ones, and a pair
    ``(tuple, dict)`` both (e.g. ``((x,), {"annealing_factor": 0.5})``)."""
    pair = isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], dict)
    if pair and isinstance(batch[0], tuple | list):
        return tuple(batch[0]), dict(batch[1])
    if isinstance(batch, dict):
        return (), dict(batch)
    if isinstance(batch, tuple | list):
        return tuple(batch), {}
    return (batch,), {}


def _points(args: Batch, kwargs: dict) -> int | None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor) and a.dim() > 0:
            return a.shape[0]
    return None


def init(
    model: Callable,
    guide: Callable,
    objective: Any = "elbo",
    optimizer: Any = None,
    example_batch: Any = None,
    *,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    config: TrainConfig | None = None,
    num_data: int | None = None,
    plate: str = "data",
    streams: Sequence[tuple[Callable, Callable, Any, Any]] = (),
    steps_per_epoch: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    ddp: Callable[[nn.Module], nn.Module] | None = None,
    metadata: dict[str, Any] | None = None,
) -> TrainState:
    """Wire ``model``, ``guide``, ``objective`` and an optimizer into a :class:`TrainState`.

    Args:
        model, guide: Pyro programs taking a batch as their arguments.
        objective: a kind name (``"elbo"``, ``"iwae"``, ...), an objective config, an
            :class:`~ppvae.infer.objectives.Objective` or any Pyro ELBO instance.
        optimizer: None (the config's ``optimizer``/``lr``/``weight_decay``), a name
            (``"adam"``, ``"adamw"``, ``"sgd"``), a torch optimizer class, a callable
            ``params -> torch.optim.Optimizer`` or a Pyro optimizer or scheduler (see
            :func:`make_optimizer`).
        example_batch: a batch on the training device (see :func:`call_parts`); the
            programs are run on it once to find ``pyro.param`` sites and check them.
        scheduler: a callable ``optimizer -> torch.optim.lr_scheduler.LRScheduler``
            (e.g. ``functools.partial(torch.optim.lr_scheduler.StepLR, step_size=10)``),
            stepped by :func:`ppvae.fit` after every epoch (``ReduceLROnPlateau`` with
            the monitored value); its state is part of the checkpoint.
        config: the :class:`TrainConfig` (default settings when None).
        num_data: the number of data points the batches are drawn from, all streams
            together (default: the example batch's size), for the minibatch scaling.
        plate: the name of the data plate.
        streams: further data streams as ``(model, guide, objective, example_batch)``
            (e.g. the labelled points of a semi-supervised model, with their own
            programs); :func:`step` takes ``stream=i`` (1, 2, ...) for their batches.
        steps_per_epoch: steps in an epoch (for KL warm-up and progress; default
            ``ceil(num_data / batch_size)``).
        rank, world_size, ddp: distributed training (set by :func:`ppvae.fit`): this
            process's rank, the number of processes, and a wrapper of the loss module.
        metadata: stored as is in every checkpoint (e.g. the spec).

    Returns:
        The :class:`TrainState` at step 0, with the random streams seeded from
        ``config.seed`` (shifted by the rank: every process draws its own latents).
    """
    config = config or TrainConfig()
    if isinstance(optimizer, str):  # a name: the config's kind of optimizer
        config, optimizer = config.replace(optimizer=optimizer), None
    sample_seed = config.seed + 7919 * rank
    if example_batch is None:
        raise SpecError("init needs an example_batch to find and check the parameters")
    context = ObjectiveContext(plate=plate)
    parts = [(model, guide, objective, example_batch), *streams]
    programs = tuple(
        Program(m, g, build_objective(o if o is not None else objective).with_context(context))
        for m, g, o, _ in parts
    )
    examples = [call_parts(b) for *_, b in parts]
    if num_data is None:
        num_data = _points(*examples[0])
    if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
        raise SpecError(
            f"num_data must be a positive integer (the number of data points), got {num_data!r}"
        )
    device = next(
        (
            a.device
            for a in (*examples[0][0], *examples[0][1].values())
            if isinstance(a, torch.Tensor)
        ),
        resolve_device(config.device),
    )
    pyro.set_rng_seed(sample_seed)
    found: dict[int, tuple[str, torch.Tensor]] = {}
    # a store of the state's own: the global store's pyro.param sites (as Pyro's SVI would
    # start from them), never a network's weights, which come from the networks
    with isolated_param_store(inherit=True) as param_store:
        inherited = [id(t) for t in param_store["params"].values()]  # before the runs add any
        for program, (args, kwargs) in zip(programs, examples, strict=True):
            with data_errors(args, "a training batch"), pyro.validation_enabled(True):
                names_, params_ = _parameters(program.model, program.guide, args, kwargs)
            pairs = list(zip(names_, params_, strict=True))
            program.params = tuple(p for _, p in pairs)
            for name, p in pairs:
                found.setdefault(id(p), (name, p))
    if not found:
        raise SpecError("the model and guide have no trainable parameters")
    names = [n for n, _ in found.values()]
    params = [p for _, p in found.values()]
    opt, pyro_scheduler = make_optimizer(optimizer, params, config)
    if scheduler is not None and pyro_scheduler is not None:
        raise SpecError("give the learning-rate schedule once: scheduler= or a Pyro scheduler")
    sched = pyro_scheduler if scheduler is None else scheduler(opt)
    if config.lr_schedule != "constant" or config.lr_warmup_epochs:
        if sched is not None:
            raise SpecError(
                "give the learning-rate schedule once: train.lr_schedule or a scheduler object"
            )
        sched = lr_scheduler(config, opt)
    ddp_module = None
    if ddp is not None:
        if len(programs) > 1 or not programs[0].objective.differentiable:
            raise SpecError(
                "distributed training takes one data stream and an objective with a "
                "differentiable loss (elbo, meanfield_elbo, iwae or renyi)"
            )
        owned = {
            id(q) for fn in (model, guide) if isinstance(fn, nn.Module) for q in fn.parameters()
        }
        outside = [n for n, p in zip(names, params, strict=True) if id(p) not in owned]
        if outside:
            # DDP synchronizes the gradients of module parameters only: anything else would
            # train apart on every process, silently
            raise SpecError(
                f"distributed training synchronizes the parameters of the model and guide "
                f"modules only, and {outside[0]!r} is not one of them (a pyro.param site, or a "
                "network of a function or method); make model and guide nn.Modules holding "
                "every network, with PyroParam attributes instead of pyro.param"
            )
        ddp_module = ddp(_ObjectiveModule(model, guide, programs[0].objective))
    setup = Setup(
        programs=programs,
        params=tuple(params),
        param_names=tuple(names),
        config=config,
        num_data=num_data,
        device=device,
        steps_per_epoch=steps_per_epoch or math.ceil(num_data / config.batch_size),
        world_size=world_size,
        is_main_process=rank == 0,
        ddp=ddp_module,
        metadata=dict(metadata or {}),
    )
    state = TrainState(
        setup=setup,
        optimizer=opt,
        scheduler=sched,
        param_store=param_store,
        kl_weight=config.beta,
    )
    with state.scope():
        for program, (args, kwargs) in zip(programs, examples, strict=True):
            _check_first_batch(state, program, args, kwargs)
    pyro.set_rng_seed(sample_seed)  # the checks drew random numbers: start again
    state.store_known = frozenset([id(p) for p in params] + inherited)
    _check_new_params(state)  # a pyro.param the checks' runs created, not the discovery's
    return state


def _check_first_batch(state: TrainState, program: Program, args: Batch, kwargs: dict) -> None:
    """Run the objective once with Pyro's validation on, so that bad data or a program
    the objective cannot train fails here with a clear message, not deep in the loop."""
    s = state.setup
    plate = program.objective.context.plate
    with data_errors(args, "a training batch"), pyro.validation_enabled(True):
        with poutine.block(), torch.no_grad():
            traces = guide_and_model_traces(program.model, program.guide, args, kwargs, None)
        # the minibatch scaling needs the data plate: one that no site uses is an error
        frame = data_frame(traces, plate, args)
        if frame.full_size is not None and frame.full_size not in (frame.size, s.num_data):
            raise SpecError(
                f"plate {plate!r} subsamples {frame.size} of {frame.full_size} points but "
                f"the training data holds {s.num_data}; give the plate the data set's size"
            )
        program.scaling.set(None, 1.0 / s.num_data, 1.0)
        program.objective.loss_and_grads(
            program.scaled_model, program.scaled_guide, *args, **kwargs
        )
    reached = any(p.grad is not None for p in s.params)
    state.optimizer.zero_grad(set_to_none=True)
    if not reached:
        raise SpecError(
            f"objective {program.objective!r} gave no gradient to any parameter of the model "
            "or guide; make the parameters visible to it (pyro.module / PyroModule / "
            "pyro.param) or use another objective"
        )


class _ObjectiveModule(nn.Module):
    """Model, guide and objective as one module whose forward is the loss (for DDP)."""

    def __init__(self, model: Callable, guide: Callable, objective: Objective):
        super().__init__()
        self.model = model
        self.guide = guide
        self.objective = objective
        self.scaling = Scaling(objective.context.plate)

    def forward(self, local: float | None, global_: float, kl_weight: float, args, kwargs):
        self.scaling.set(local, global_, kl_weight)
        return self.objective.loss(
            self.scaling(self.model), self.scaling(self.guide), *args, **kwargs
        )


def step(
    state: TrainState, batch: Any, *, global_size: int | None = None, stream: int = 0
) -> tuple[TrainState, dict[str, Any]]:
    """One optimization step on ``batch`` (see :func:`call_parts`) of data stream
    ``stream`` (0: the main one, see :func:`init`'s ``streams``).

    The data-plate sites are scaled by one over the plate's size (the batch's points),
    the others by one over ``num_data``. ``global_size`` is the size of the global
    batch this process's ``batch`` is part of under DDP (the loss is scaled so that
    DDP's gradient average is the global batch's mean). Returns the state (updated in
    place) and ``info`` with the ``loss`` (nats per data point), the gradient norm before
    clipping ``grad_norm`` and the batch's ``points``, and ``skipped`` when the step was
    dropped under ``on_nan = "skip"``.

    A non-finite loss or gradient raises :class:`~ppvae.errors.TrainingError` naming the
    epoch and step (``on_nan = "stop"``) or drops the step (``"skip"``). The check reads
    one pair of numbers from the device per step (the NaN policy's only sync).
    """
    s = state.setup
    args, kwargs = call_parts(batch)
    program = s.programs[stream]
    local = None if global_size is None else s.world_size / global_size
    global_ = 1.0 / s.num_data
    state.optimizer.zero_grad(set_to_none=True)
    with state.scope():
        if s.ddp is not None:
            loss = s.ddp(local, global_, state.kl_weight, args, kwargs)
            loss.backward()
            loss = loss.detach()
            points = global_size
        else:
            program.scaling.set(local, global_, state.kl_weight)
            loss = program.objective.loss_and_grads(
                program.scaled_model, program.scaled_guide, *args, **kwargs
            )
            points = global_size or program.scaling.points
    if len(state.param_store["params"]) != state.store_size:
        _check_new_params(state)
    for p in program.params:  # as Pyro's SVI: every parameter of the programs takes a step
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    loss = loss.detach().reshape(())
    clip = s.config.clip_norm
    if clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(s.params, clip)
    else:
        grads = [p.grad for p in s.params if p.grad is not None]
        norm = (
            torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
        )
    # the NaN policy's one read from the device per step
    loss_value, norm_value = torch.stack([loss.float(), norm.float().to(loss.device)]).tolist()
    if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
        return _non_finite(state, loss_value, norm_value, points)
    state.optimizer.step()
    state.step += 1
    state.running_loss = loss_value
    return state, {"loss": loss_value, "grad_norm": norm_value, "points": points}


def _check_new_params(state: TrainState) -> None:
    """A ``pyro.param`` first created after :func:`init` would never be trained: refuse it
    (the entries of networks' weights are theirs and trained already)."""
    known = state.store_known
    for name, value in state.param_store["params"].items():
        if id(value) not in known and not isinstance(value, nn.Parameter):
            raise SpecError(
                f"pyro.param {name!r} first appeared after the first batch, so it would never "
                "be trained: ppvae trains the parameters the programs create on the example "
                "batch; create every pyro.param on every call (or give init an example_batch "
                "that reaches it)"
            )
    state.store_size = len(state.param_store["params"])


def _non_finite(state: TrainState, loss: float, norm: float, points: int | None):
    what = "loss" if not math.isfinite(loss) else "gradient"
    value = loss if what == "loss" else norm
    if state.setup.config.on_nan == "skip":
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        return state, {"loss": loss, "grad_norm": norm, "points": points, "skipped": True}
    raise TrainingError(
        f"the {what} became {'NaN' if math.isnan(value) else 'infinite'} "
        f"at epoch {state.epoch + 1}, step {state.step + 1}; lower train.lr, set "
        'train.clip_norm, or set train.on_nan = "skip"'
    )


@contextlib.contextmanager
def quiet_nan_warnings() -> Iterator[None]:
    """Every loss and gradient is checked by :func:`step` (``on_nan``): Pyro's
    "Encountered NaN" warnings would only print lines in front of the one-sentence
    error."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Encountered (NaN|\+inf|-inf)", category=UserWarning
        )
        yield
