r"""Lean tracing: the ELBO of a fully reparameterized program without building traces.

Pyro's ``Trace_ELBO`` records the guide in a :class:`~pyro.poutine.Trace`, replays the
model on it, copies both traces to prune subsample sites, computes every site's
log-density with its checks, and walks the traces again to sum them: a fixed cost of
Python per step that is a sizeable share of a small network's step. When every guide
site is reparameterized (``rsample``) and nothing is enumerated, the ELBO estimator is
just

.. math::

    \widehat{\mathrm{ELBO}} = \frac1K \sum_{k=1}^K \Big[\sum_{s \in \text{model}}
        c_s \log p_s(v_s) - \sum_{s \in \text{guide}} c_s \log q_s(v_s)\Big],

with :math:`c_s` each site's scale and mask and :math:`v_s` the guide's draws replayed in
the model; its gradient is the reparameterized gradient Pyro's surrogate has. A
:class:`SiteRecorder` collects the sample sites of a run in a list (one messenger, no
copies) and replays guide values into the model, which is all that estimator needs.

:class:`LeanElbo` decides per *site layout* (the names, distribution types and roles of a
run's sites) whether the lean estimator may be used: the first time a layout is seen it
is computed both ways from the same random state, Pyro's ``Trace_ELBO`` with Pyro's
validation on (model/guide match, site shapes, supports), and the two values must agree;
once a layout has a non-reparameterized or enumerated guide site, or its values disagree,
the objective computes everything by Pyro from then on (as it does past 256 layouts). So no program is ever given a different loss, only a
cheaper route to the same one.

Example:
    >>> import torch, pyro, pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> loc = torch.zeros(3, requires_grad=True)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(loc, 1.0))
    >>> lean = LeanElbo(num_particles=1)
    >>> x = torch.ones(3)
    >>> _ = torch.manual_seed(0); first = lean(model, guide, (x,), {})   # checked against Pyro
    >>> _ = torch.manual_seed(0); second = lean(model, guide, (x,), {})  # lean
    >>> _ = torch.manual_seed(0); ref = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x)
    >>> bool(torch.allclose(first, ref) and torch.allclose(second, ref)), lean.routes()
    (True, {'lean': 1})
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pyro
import pyro.distributions
import pyro.infer
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger

from ppvae.errors import PpvaeWarning
from ppvae.infer.programs import eval_mode
from ppvae.infer.traces import particle_dim_problem

__all__ = ["SiteRecorder", "LeanElbo", "record", "is_subsample"]

#: Relative tolerance of the first-run comparison with Pyro (float32 sums in two orders).
_RTOL = 1e-5
#: Layouts checked per objective; past this many (a program of dynamic structure) the
#: objective computes everything by Pyro.
_MAX_LAYOUTS = 256


class SiteRecorder(Messenger):
    """Collect the sample sites of one run as Pyro's messages, in order, without copies;
    with ``replay``, unobserved sites named in it take its values (as ``poutine.replay``).
    Subsample sites of ``pyro.plate(..., subsample_size=...)`` are recorded (and replayed,
    so that the model sees the guide's subsample) but never scored (see
    :func:`is_subsample`)."""

    def __init__(self, replay: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.sites: list[dict[str, Any]] = []
        self.replay = replay

    def _process_message(self, msg: dict[str, Any]) -> None:
        if self.replay is None or msg["type"] != "sample" or msg["is_observed"]:
            return
        site = self.replay.get(msg["name"])
        if site is not None:
            msg["value"] = site["value"]
            msg["infer"] = site["infer"]
            msg["done"] = True

    def _postprocess_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample":
            self.sites.append(msg)


def is_subsample(site: dict[str, Any]) -> bool:
    """A plate's subsample site (its indices): replayed, never scored."""
    return type(site["fn"]).__name__ == "_Subsample"


def _scored(sites: list[dict]) -> list[dict]:
    return [s for s in sites if not is_subsample(s)]


def record(fn, args, kwargs, replay: dict[str, dict[str, Any]] | None = None) -> list[dict]:
    """Run ``fn(*args, **kwargs)`` and return its sample sites (see :class:`SiteRecorder`)."""
    with SiteRecorder(replay) as recorder:
        fn(*args, **kwargs)
    return recorder.sites


def _log_prob_sum(site: dict[str, Any]) -> torch.Tensor:
    lp = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    return scale_and_mask(lp, site["scale"], site["mask"]).sum()


def _types(fn) -> tuple[type, ...]:
    """The distribution's type and those of the base distributions it wraps."""
    types = [type(fn)]
    while (fn := getattr(fn, "base_dist", None)) is not None:
        types.append(type(fn))
    return tuple(types)


def _layout(guide_sites: list[dict], model_sites: list[dict]) -> tuple:
    """What the lean estimator's validity depends on: names, roles, distribution types,
    reparameterization and enumeration of every site."""
    return (
        tuple(
            (s["name"], _types(s["fn"]), s["is_observed"], s["fn"].has_rsample, repr(s["infer"]))
            for s in guide_sites
        ),
        tuple((s["name"], _types(s["fn"]), s["is_observed"]) for s in model_sites),
    )


#: Wrappers whose score parts are their base distribution's (masked, expanded).
_DELEGATING = (pyro.distributions.MaskedDistribution, pyro.distributions.ExpandedDistribution)


def _plain_score(fn) -> bool:
    """Whether the distribution's score parts are the plain reparameterized ones (no
    score-function term of its own, as Pyro's partially reparameterized rejection
    samplers have), through the wrappers that delegate to a base distribution."""
    while True:
        own = type(fn).score_parts
        if own is TorchDistributionMixin.score_parts:
            return True
        base = getattr(fn, "base_dist", None)
        if base is None or not isinstance(fn, _DELEGATING):
            return False
        fn = base


def _reparameterized(guide_sites: list[dict]) -> bool:
    return all(
        s["is_observed"]
        or (s["fn"].has_rsample and not s["infer"].get("enumerate") and _plain_score(s["fn"]))
        for s in guide_sites
    )


class LeanElbo:
    r"""The negative ELBO (``Trace_ELBO``'s estimator, summed over the batch) computed
    lean where that is proven equal, by Pyro elsewhere.

    Args:
        num_particles: :math:`K`.
        vectorize_particles: draw the particles in one vectorized run (a plate left of
            the program's plates) rather than a loop.
    """

    def __init__(self, num_particles: int = 1, vectorize_particles: bool = True) -> None:
        self.num_particles = num_particles
        self.vectorize = vectorize_particles and num_particles > 1
        self.pyro_elbo = pyro.infer.Trace_ELBO(
            num_particles=num_particles, vectorize_particles=self.vectorize
        )
        self._layouts: dict[tuple, bool] = {}
        self._counts = {"lean": 0, "pyro": 0}
        self._pyro_only = False  # set once a layout needs Pyro: its programs go there

    def routes(self) -> dict[str, int]:
        """How many distinct layouts took each route so far (``{"lean": n, "pyro": m}``)."""
        return {k: v for k, v in self._counts.items() if v}

    def __call__(self, model, guide, args: tuple, kwargs: dict) -> torch.Tensor:
        if self._pyro_only:
            return self._pyro(model, guide, args, kwargs)
        state = _rng_state()
        if self.vectorize and not math.isfinite(self.pyro_elbo.max_plate_nesting):
            # the particle plate's place is found by Pyro (it runs the programs once)
            try:
                reference = self._pyro(model, guide, args, kwargs)
                after = _rng_state()
                problem = self._broadcast_problem(model, guide, args, kwargs)
            except (RuntimeError, ValueError, IndexError, TypeError) as error:
                _set_rng_state(state)
                self._particle_at(model, guide, args, kwargs, {})  # raises when not that
                problem = f"it fails with a particle dimension ({type(error).__name__}: {error})"
            if problem is None:
                _set_rng_state(after)
                return reference
            _set_rng_state(state)
            return self._unvectorize(problem, model, guide, args, kwargs)
        try:
            loss, layout, guide_runs = self._lean(model, guide, args, kwargs)
        except (RuntimeError, ValueError, IndexError, TypeError) as error:
            if not self.vectorize or self._layouts:
                raise
            _set_rng_state(state)  # is it the particle dimension the programs cannot take?
            self._particle_at(model, guide, args, kwargs, {})  # raises when not
            _set_rng_state(state)
            return self._unvectorize(
                f"it fails with a particle dimension ({type(error).__name__}: {error})",
                model, guide, args, kwargs,
            )  # fmt: skip
        if self._layouts.get(layout):
            return loss
        eligible = all(_reparameterized(_scored(sites)) for sites in guide_runs)
        # a new layout: compare with Pyro from the same random state, checks on
        after = _rng_state()
        if self.vectorize:  # vectorized particles are checked, not assumed
            problem = self._broadcast_problem(model, guide, args, kwargs)
            if problem is not None:
                _set_rng_state(state)
                return self._unvectorize(problem, model, guide, args, kwargs)
        _set_rng_state(state)
        with pyro.validation_enabled(True):
            reference = self._pyro(model, guide, args, kwargs)
        ok = eligible and _close(loss, reference)
        if eligible and not ok:
            warnings.warn(
                "ppvae's lean ELBO disagreed with Pyro's Trace_ELBO on this program "
                f"({float(loss.detach()):.6g} vs {float(reference.detach()):.6g}); it is "
                "computed by Pyro "
                "from now on",
                PpvaeWarning,
                stacklevel=3,
            )
        self._counts["lean" if ok else "pyro"] += 1
        if not ok or len(self._layouts) >= _MAX_LAYOUTS:
            self._pyro_only = True
        self._layouts[layout] = ok
        if ok:
            _set_rng_state(after)
            return loss
        return reference

    def _unvectorize(self, problem: str, model, guide, args, kwargs) -> torch.Tensor:
        """Draw the particles one at a time (Pyro's loop) from now on, saying why."""
        first = problem.strip().splitlines()[0] if problem.strip() else problem
        warnings.warn(
            "the model or guide does not broadcast over a leading particle dimension "
            f"({first}); the ELBO's {self.num_particles} particles are drawn one at a time "
            "(slower)",
            PpvaeWarning,
            stacklevel=4,
        )
        self.vectorize = False
        self.pyro_elbo = pyro.infer.Trace_ELBO(
            num_particles=self.num_particles, vectorize_particles=False
        )
        self._pyro_only = True
        self._counts["pyro"] += 1
        return self._pyro(model, guide, args, kwargs)

    def _broadcast_problem(self, model, guide, args, kwargs) -> str | None:
        """Per-particle ELBO terms of a vectorized run of two particles against the same
        draws replayed one particle at a time, without the particle plate (the model's own
        latent sites replayed too), with the networks in eval mode (dropout would draw new
        masks in the replay); the random streams are left as they were."""
        rank = int(self.pyro_elbo.max_plate_nesting) + 1
        state = _rng_state()
        try:
            with torch.no_grad(), eval_mode(model, guide):
                return self._compare_particles(model, guide, args, kwargs, rank)
        finally:
            _set_rng_state(state)

    def _compare_particles(self, model, guide, args, kwargs, rank: int) -> str | None:
        try:
            with pyro.plate("num_particles_vectorized", 2, dim=-rank):
                guide_sites = record(guide, args, kwargs)
                replay = {s["name"]: s for s in guide_sites if not s["is_observed"]}
                model_sites = record(model, args, kwargs, replay)
        except (RuntimeError, ValueError, IndexError, TypeError) as error:
            return f"it fails with a particle dimension ({type(error).__name__}: {error})"
        per = torch.zeros(2)
        for sign, sites in ((1.0, _scored(model_sites)), (-1.0, _scored(guide_sites))):
            for site in sites:
                lp = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
                lp = torch.as_tensor(lp)
                if lp.dim() > rank:
                    return f"site {site['name']!r} has batch shape {tuple(lp.shape)}"
                lp = lp.reshape((1,) * (rank - lp.dim()) + tuple(lp.shape))
                per = per + sign * lp.reshape(lp.shape[0], -1).sum(-1).double().cpu()
        guide_names = {s["name"] for s in guide_sites}
        for k in range(2):
            values, model_values = {}, {}
            model_only = [s for s in model_sites if s["name"] not in guide_names]
            for site in [*guide_sites, *model_only]:
                if site["is_observed"]:
                    continue
                if is_subsample(site):  # the plate's indices: the same for every particle
                    target = values if site["name"] in guide_names else model_values
                    target[site["name"]] = {"value": site["value"], "infer": site["infer"]}
                    continue
                value = site["value"]
                axis = value.dim() - site["fn"].event_dim - rank
                if axis < 0 or value.shape[axis] != 2:
                    return (
                        f"site {site['name']!r} has shape {tuple(value.shape)} without "
                        f"the particle dimension at dim {-rank}"
                    )
                target = values if site["name"] in guide_names else model_values
                target[site["name"]] = {"value": value.select(axis, k), "infer": site["infer"]}
            try:
                single, _, _ = self._particle_at(model, guide, args, kwargs, values, model_values)
            except NotImplementedError:
                # a density only at its own draws (a flow without inverse): no replay;
                # check that every site carries the particle dimension instead
                named = (
                    (s["name"], s["fn"].log_prob(s["value"]))
                    for s in _scored(guide_sites + model_sites)
                )
                return particle_dim_problem(named, rank, 2)
            except (RuntimeError, ValueError, IndexError, TypeError) as error:
                return f"one particle at a time it fails ({type(error).__name__}: {error})"
            if not _close(-single, per[k]):
                return (
                    "its vectorized ELBO terms differ from the same draws taken one particle "
                    f"at a time ({float(per[k]):.6g} vs {float(-single):.6g})"
                )
        return None

    def _particle_at(self, model, guide, args, kwargs, values, model_values=None):
        guide_sites = record(guide, args, kwargs, values)
        replay = {s["name"]: s for s in guide_sites if not s["is_observed"]}
        replay.update(model_values or {})
        model_sites = record(model, args, kwargs, replay)
        elbo = sum(_log_prob_sum(s) for s in _scored(model_sites)) - sum(
            _log_prob_sum(s) for s in _scored(guide_sites)
        )
        return -torch.as_tensor(elbo).double().cpu(), guide_sites, model_sites

    def _pyro(self, model, guide, args, kwargs) -> torch.Tensor:
        return self.pyro_elbo.differentiable_loss(model, guide, *args, **kwargs)

    def _lean(self, model, guide, args, kwargs) -> tuple[torch.Tensor, tuple, list]:
        """The loss, the site layout, and the guide's sites of every particle run."""
        k = self.num_particles
        if self.vectorize:
            dim = -int(self.pyro_elbo.max_plate_nesting) - 1
            with pyro.plate("num_particles_vectorized", k, dim=dim):
                loss, layout, guide_sites = self._particle(model, guide, args, kwargs, k)
                return loss, layout, [guide_sites]
        total, layout, guide_runs = 0.0, (), []
        for _ in range(k):
            loss, layout_k, guide_sites = self._particle(model, guide, args, kwargs, k)
            total = total + loss
            layout = layout + (layout_k,)
            guide_runs.append(guide_sites)
        return total, layout, guide_runs

    @staticmethod
    def _particle(model, guide, args, kwargs, k: int) -> tuple[torch.Tensor, tuple, list]:
        guide_sites = record(guide, args, kwargs)
        replay = {s["name"]: s for s in guide_sites if not s["is_observed"]}
        model_sites = record(model, args, kwargs, replay)
        elbo = 0.0
        for site in model_sites:
            if not is_subsample(site):
                elbo = elbo + _log_prob_sum(site)
        for site in guide_sites:
            if not is_subsample(site):
                elbo = elbo - _log_prob_sum(site)
        if not isinstance(elbo, torch.Tensor):
            elbo = torch.zeros(())
        return -elbo / k, _layout(guide_sites, model_sites), guide_sites


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = float(a.detach()), float(b.detach())
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return abs(a - b) <= _RTOL * max(1.0, abs(b))


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
