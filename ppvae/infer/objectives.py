r"""Variational objectives as differentiable losses (Contract 3).

Every objective is an :class:`Objective`: calling ``objective(model, guide, *args)``
returns a scalar loss tensor, the negative of a lower bound on
:math:`\log p(x)` summed over the data points of the batch, whose gradient is an
estimate of the bound's gradient. A plain ``torch.optim`` loop (and
``DistributedDataParallel``) can use it directly; nothing goes through ``pyro.infer.SVI``
or Pyro's global parameter store.

For reparameterized guides the loss value equals the negative bound; with
non-reparameterized sites Pyro's surrogate (score-function) terms are added, whose value
may differ while their gradient is unbiased.

Example:
    >>> import torch, pyro, pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
    >>> loss = build_objective("elbo")(model, guide, torch.zeros(3))
    >>> round(float(loss), 4)  # exact posterior: -ELBO = -log p(x) = 3 * log(2 sqrt(pi))
    3.7965
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import pyro.infer
import torch

from ppvae.errors import SpecError
from ppvae.infer.lean import LeanElbo
from ppvae.registry import Registry

__all__ = [
    "Objective",
    "ObjectiveContext",
    "Elbo",
    "ObjectiveConfig",
    "OBJECTIVES",
    "PyroElbo",
    "build_objective",
]


@dataclass(frozen=True)
class ObjectiveContext:
    """What an objective needs to know about the programs it is used on, set in one place
    (:func:`ppvae.init` / :func:`ppvae.fit` / :func:`ppvae.log_marginal_likelihood`).

    Attributes:
        plate: name of the data plate (the vectorized plate over data points).

    Minibatch and KL warm-up scaling reach every objective the same way: the trainer runs
    model and guide under :mod:`ppvae.infer.scaling`'s messengers, so every site's
    ``scale`` already holds them when an objective reads it.
    """

    plate: str = "data"


class Objective(abc.ABC):
    """A variational objective: ``objective(model, guide, *args, **kwargs) -> loss``.

    Subclasses implement :meth:`loss` (one abstract method); the trainer calls
    :meth:`loss_and_grads`, which backpropagates :meth:`loss` unless overridden, and sets
    the :class:`ObjectiveContext` once with :meth:`with_context`.
    """

    #: Whether the objective enumerates discrete latent sites (needs ``TraceEnum_ELBO``).
    enumerates: bool = False
    #: The programs' context (data plate name); see :meth:`with_context`.
    context: ObjectiveContext = ObjectiveContext()

    @abc.abstractmethod
    def loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The differentiable loss (negative bound summed over data points)."""

    def __call__(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self.loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Compute the loss, backpropagate it into ``.grad`` and return it detached.

        The trainer calls this once per step; objectives that cannot return a
        differentiable loss (Pyro's ``RenyiELBO``, ``TraceGraph_ELBO``) override it."""
        loss = self.loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.detach()

    @property
    def differentiable(self) -> bool:
        """Whether :meth:`loss` returns a differentiable tensor (False for objectives that
        only backpropagate inside :meth:`loss_and_grads`; distributed training needs
        True)."""
        return type(self).loss_and_grads is Objective.loss_and_grads

    def with_context(self, context: ObjectiveContext) -> Objective:
        """A shallow copy of this objective that uses ``context`` (the caller's object is
        left as it is)."""
        other = copy.copy(self)
        other.context = context
        return other


class PyroElbo(Objective):
    """Any ``pyro.infer.ELBO`` instance, used through its ``differentiable_loss`` where it
    has one and its ``loss_and_grads`` otherwise (``TraceGraph_ELBO``, ``RenyiELBO``).

    The instance is the one optimized, subclass or not: a user's ELBO subclass that
    overrides ``differentiable_loss`` trains with its own loss.

    Example:
        >>> import pyro.infer
        >>> objective = PyroElbo(pyro.infer.TraceMeanField_ELBO(num_particles=2))
    """

    def __init__(self, elbo: pyro.infer.ELBO) -> None:
        self.elbo = elbo
        self.enumerates = isinstance(elbo, pyro.infer.TraceEnum_ELBO)

    @property
    def differentiable(self) -> bool:
        return hasattr(self.elbo, "differentiable_loss")

    def loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        if not self.differentiable:
            raise SpecError(
                f"{type(self.elbo).__name__} has no differentiable loss; it can train (through "
                "its loss_and_grads) but not be used where a loss tensor is needed"
            )
        return self.elbo.differentiable_loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> torch.Tensor:
        if self.differentiable:
            return super().loss_and_grads(model, guide, *args, **kwargs)
        value = self.elbo.loss_and_grads(model, guide, *args, **kwargs)
        return torch.as_tensor(value, dtype=torch.get_default_dtype())

    def __repr__(self) -> str:
        return f"PyroElbo({type(self.elbo).__name__}, num_particles={self.elbo.num_particles})"


class Elbo(Objective):
    r"""The evidence lower bound :math:`E_q[\log p(x, z) - \log q(z | x)]` with
    ``num_particles`` samples: Pyro's ``Trace_ELBO`` estimator (the same loss, gradients
    and random draws), computed by :class:`ppvae.infer.lean.LeanElbo`, which skips
    Pyro's trace bookkeeping for fully reparameterized programs once a first run has
    shown it gives Pyro's value (any other program goes through ``Trace_ELBO``).

    Example:
        >>> import torch, pyro, pyro.distributions as dist
        >>> def model(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> def guide(x):
        ...     with pyro.plate("data", x.shape[0]):
        ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
        >>> round(float(Elbo()(model, guide, torch.zeros(3))), 4)
        3.7965
    """

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = True) -> None:
        check_num_particles(num_particles)
        self.num_particles = num_particles
        self.vectorize_particles = vectorize_particles
        self._lean = LeanElbo(num_particles, vectorize_particles)

    @property
    def elbo(self) -> pyro.infer.Trace_ELBO:
        """The Pyro ``Trace_ELBO`` this objective's estimator equals."""
        return self._lean.pyro_elbo

    def loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self._lean(model, guide, args, kwargs)

    def with_context(self, context: ObjectiveContext) -> Objective:
        """A copy for other programs: with its own lean state (layouts checked, plate
        nesting), never the state learned on the programs this one was used with."""
        other = super().with_context(context)
        other._lean = LeanElbo(self.num_particles, self.vectorize_particles)
        return other

    def __repr__(self) -> str:
        return f"Elbo(Trace_ELBO estimator, num_particles={self.num_particles})"


class ObjectiveConfig(abc.ABC):
    """Options of one objective kind, as read from an ``[objective]`` section, with the
    capability flags that the cross-section rules of a spec read (never the kind name).

    Attributes:
        enumerates: the objective sums discrete sites out by enumeration.
        supports_kl_warmup: it is an ELBO whose latent terms a warm-up weight may scale.
        needs_guide_log_prob_anywhere: it evaluates the guide's density at draws the
            guide did not make (the ``stl`` and ``dreg`` estimators), which planar and
            radial flows cannot.
    """

    kind: str
    enumerates: ClassVar[bool] = False
    supports_kl_warmup: ClassVar[bool] = False

    @property
    def needs_guide_log_prob_anywhere(self) -> bool:
        return False

    @abc.abstractmethod
    def build(self) -> Objective:
        """A fresh :class:`Objective` for these options."""


#: Registry of objective kinds: ``[objective] kind = "..."``.
OBJECTIVES: Registry[ObjectiveConfig] = Registry("objective")


def check_num_particles(num_particles) -> None:
    """A particle count must be an integer >= 1 (a :class:`SpecError` otherwise)."""
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise SpecError(
            f"objective.num_particles must be at least 1 (an integer), got {num_particles!r}"
        )


@dataclass(frozen=True)
class _PyroElboConfig(ObjectiveConfig):
    """Options shared by the objectives that are one of Pyro's ELBO classes."""

    _elbo_class: ClassVar[type[pyro.infer.ELBO]]

    num_particles: int = 1
    vectorize_particles: bool = True

    def __post_init__(self) -> None:
        check_num_particles(self.num_particles)

    def _elbo_kwargs(self) -> dict[str, Any]:
        return {}

    def build(self) -> Objective:
        return PyroElbo(
            self._elbo_class(
                num_particles=self.num_particles,
                vectorize_particles=self.vectorize_particles and self.num_particles > 1,
                **self._elbo_kwargs(),
            )
        )


@OBJECTIVES.register("elbo")
@dataclass(frozen=True)
class ElboConfig(_PyroElboConfig):
    r"""The evidence lower bound, :math:`E_q[\log p(x, z) - \log q(z | x)]` (``Trace_ELBO``).

    ``num_particles`` samples are averaged; ``vectorize_particles`` draws them in one
    vectorized trace (a particle plate) instead of a Python loop.
    """

    _elbo_class = pyro.infer.Trace_ELBO
    supports_kl_warmup = True

    def build(self) -> Objective:
        return Elbo(self.num_particles, self.vectorize_particles)


@OBJECTIVES.register("meanfield_elbo")
@dataclass(frozen=True)
class MeanFieldElboConfig(_PyroElboConfig):
    r"""The ELBO with analytic :math:`KL(q(z|x) \| p(z))` where one is registered
    (``TraceMeanField_ELBO``); other sites fall back to Monte Carlo."""

    _elbo_class = pyro.infer.TraceMeanField_ELBO
    supports_kl_warmup = True


@OBJECTIVES.register("enum_elbo")
@dataclass(frozen=True)
class EnumElboConfig(_PyroElboConfig):
    r"""The ELBO with discrete latent sites summed out exactly (``TraceEnum_ELBO``).

    Sites marked ``infer={"enumerate": "parallel"}`` (in the guide, or in the model when
    the guide does not sample them) are enumerated in parallel: their values are
    broadcast along new dimensions left of every plate, so the sum over a class variable
    costs one vectorized pass. ``max_plate_nesting`` of 0 lets Pyro find it by running
    the model once.
    """

    _elbo_class = pyro.infer.TraceEnum_ELBO
    enumerates = True

    max_plate_nesting: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_plate_nesting < 0:
            raise SpecError(
                f"objective.max_plate_nesting must be non-negative, got {self.max_plate_nesting}"
            )

    def _elbo_kwargs(self) -> dict[str, Any]:
        return {"max_plate_nesting": self.max_plate_nesting} if self.max_plate_nesting else {}


def build_objective(objective: str | ObjectiveConfig | Objective | pyro.infer.ELBO) -> Objective:
    """Turn a kind name, an options object, an :class:`Objective` or a Pyro ELBO into an
    :class:`Objective`."""
    if isinstance(objective, Objective):
        return objective
    if isinstance(objective, pyro.infer.ELBO):
        return PyroElbo(objective)
    if isinstance(objective, ObjectiveConfig):
        return objective.build()
    return OBJECTIVES.get(objective, where="objective")().build()
