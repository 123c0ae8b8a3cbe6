r"""The trace machinery shared by ppvae's objectives and its importance sampler.

Pyro records a run of a program as a :class:`~pyro.poutine.Trace`; the objectives
(:mod:`ppvae.infer.bounds`, :mod:`ppvae.infer.objectives`) and the evaluator
(:mod:`ppvae.infer.importance`) need the same few operations on traces: run the guide and
replay the model on it (:func:`guide_and_model_traces`), draw ``K`` particles in a plate
left of every plate of the program (:class:`ParticlePlate`, :func:`vectorized_traces`),
find the data plate (:func:`data_frame`) and reduce per-site log-densities to per-point
log weights (:func:`weight_terms`). :mod:`ppvae.infer.lean` records the same sites
without building traces, for the hot loop of training.

Example:
    >>> import torch, pyro, pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
    >>> mt, gt, layout = vectorized_traces(model, guide, (torch.zeros(3),), {},
    ...                                    num_particles=4, plate="data")
    >>> local, glob = weight_terms(mt, gt, layout, "data", scaled_globals=False)
    >>> tuple(local.shape), layout.data_dim
    ((4, 3), -1)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites

from ppvae.errors import DataError, PpvaeError, SpecError
from ppvae.infer.programs import eval_mode  # one implementation, re-exported here
from ppvae.infer.scaling import UNIT

__all__ = [
    "PARTICLES",
    "ParticlePlate",
    "Layout",
    "data_errors",
    "eval_mode",
    "guide_and_model_traces",
    "plate_nesting",
    "data_frame",
    "guess_nesting",
    "vectorized_traces",
    "site_log_prob",
    "pad",
    "in_plate",
    "scored_sites",
    "reduce_local",
    "reduce_global",
    "data_scale",
    "weight_terms",
    "site_weights",
    "shape_text",
    "broadcast_problem",
    "particle_dim_problem",
    "one_particle_log_weights",
]

#: Name of the particle plate ppvae adds left of a program's plates.
PARTICLES = "_ppvae_particles"


class ParticlePlate(pyro.plate):
    """A plate over particles, left of every plate of the program.

    With ``only_within`` set, only sites inside the plate of that name are replicated over
    particles; the others (global latents) are drawn once and shared by all particles.
    """

    def __init__(self, size: int, dim: int, only_within: str | None = None) -> None:
        super().__init__(PARTICLES, size, dim=dim)
        self._only_within = only_within

    def _process_message(self, msg) -> None:
        if self._only_within is not None and not any(
            frame.name == self._only_within for frame in msg["cond_indep_stack"]
        ):
            return
        super()._process_message(msg)


@dataclass(frozen=True)
class Layout:
    """Where things are in the batch shapes of a program's sites."""

    max_plate_nesting: int  # plates of the program (without the particle plate)
    data_dim: int  # negative dim of the data plate

    @property
    def particle_dim(self) -> int:
        return -(self.max_plate_nesting + 1)

    @property
    def rank(self) -> int:
        """Batch rank of a site under the particle plate."""
        return self.max_plate_nesting + 1


def shape_text(args: Sequence) -> str:
    shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
    return ", ".join(str(s) for s in shapes) if shapes else "no tensors"


@contextmanager
def data_errors(args: Sequence, what: str = "data") -> Iterator[None]:
    """Turn an error raised inside model or guide into a one-sentence DataError that
    names ``what`` failed and the shapes of ``args``."""
    try:
        yield
    except PpvaeError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DataError(
            f"the model and guide fail on {what} of shape {shape_text(args)} "
            f"({type(error).__name__}: {detail})"
        ) from error


def guide_and_model_traces(model, guide, args, kwargs, particle_plate: pyro.plate | None):
    """Guide trace and model trace replayed on it, with log-probs computed."""
    with particle_plate if particle_plate is not None else nullcontext():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return model_trace, guide_trace


def plate_nesting(traces) -> int:
    """How many batch dims the plates (and batch shapes) of the traces' sites take,
    not counting the particle plate."""
    nesting = 0
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            frames = site["cond_indep_stack"]
            particles = any(frame.name == PARTICLES for frame in frames)
            nesting = max(nesting, len(site["fn"].batch_shape) - particles)
            for frame in frames:
                if frame.vectorized and frame.dim is not None and frame.name != PARTICLES:
                    nesting = max(nesting, -frame.dim)
    return nesting


def data_frame(traces, plate: str, args: Sequence):
    """The frame of the data plate; a SpecError when there is none or it is mis-sized."""
    frame = next(
        (
            f
            for trace in traces
            for site in trace.nodes.values()
            if site["type"] == "sample"
            for f in site["cond_indep_stack"]
            if f.name == plate
        ),
        None,
    )
    if frame is None or frame.dim is None:
        raise SpecError(
            f"no sample site of the model or guide is inside a vectorized plate named "
            f"{plate!r}; observe the data in pyro.plate({plate!r}, batch_size) or pass plate="
        )
    batch = next((a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.dim()), None)
    if batch is not None and frame.size != batch:
        raise SpecError(
            f"plate {plate!r} has size {frame.size} but the batch holds {batch} data "
            f"points; size the data plate by the batch (x.shape[0])"
        )
    return frame


def guess_nesting(model, guide, args, kwargs) -> int:
    """Trace model and guide once, without particles, to count their plate dims (leaving
    the random number generators as they were)."""
    cuda = sorted({a.device.index or 0 for a in args if isinstance(a, torch.Tensor) and a.is_cuda})
    with torch.random.fork_rng(devices=cuda), poutine.block():
        return plate_nesting(guide_and_model_traces(model, guide, args, kwargs, None))


def vectorized_traces(
    model,
    guide,
    args,
    kwargs,
    *,
    num_particles: int,
    plate: str,
    nesting: int | None = None,
    only_within: str | None = None,
):
    """Model and guide traces with ``num_particles`` particles in a plate left of every
    plate of the program; returns ``(model_trace, guide_trace, layout)``.

    ``nesting`` is a guess of the program's plate nesting (e.g. from the last call); it
    is checked against the traces and re-guessed (one extra run) when wrong or ``None``.
    """
    for attempt in range(2):
        if nesting is None:
            nesting = guess_nesting(model, guide, args, kwargs)
        particles = ParticlePlate(num_particles, -(nesting + 1), only_within)
        try:
            traces = guide_and_model_traces(model, guide, args, kwargs, particles)
        except ValueError as error:
            if attempt == 0 and "collide at dim" in str(error):
                nesting = None
                continue
            raise
        if plate_nesting(traces) <= nesting:
            frame = data_frame(traces, plate, args)
            return (*traces, Layout(max_plate_nesting=nesting, data_dim=frame.dim))
        nesting = None
    raise RuntimeError("could not place the particle plate left of the program's plates")


def site_log_prob(site, scaled: bool) -> torch.Tensor:
    if scaled:
        return site["log_prob"]
    return scale_and_mask(site["unscaled_log_prob"], 1.0, site["mask"])


def pad(tensor: torch.Tensor, rank: int, name: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        tensor = torch.as_tensor(tensor)
    if tensor.dim() > rank:
        raise SpecError(
            f"site {name!r} has batch shape {tuple(tensor.shape)}, more dims than its plates "
            f"declare; declare batch dims with pyro.plate or move them to the event "
            f"with .to_event()"
        )
    return tensor.reshape((1,) * (rank - tensor.dim()) + tuple(tensor.shape))


def in_plate(site, name: str) -> bool:
    return any(frame.name == name for frame in site["cond_indep_stack"])


def scored_sites(model_trace, guide_trace):
    """(site, sign, is_guide) for the sites that enter the log weight."""
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if not site["is_observed"] and name not in guide_trace.nodes:
            continue  # drawn from its prior: p / p drops out of the weight
        yield site, 1.0, False
    for site in guide_trace.nodes.values():
        if site["type"] == "sample" and not site["is_observed"]:
            yield site, -1.0, True


def reduce_local(lp: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Sum a padded log-prob over every axis but the particle and data axes: (P|1, B|1)."""
    data_axis = layout.rank + layout.data_dim
    axes = [a for a in range(1, layout.rank) if a != data_axis]
    out = lp.sum(axes) if axes else lp
    return out.reshape(lp.shape[0], lp.shape[data_axis])


def reduce_global(lp: torch.Tensor) -> torch.Tensor:
    """Sum a padded log-prob over every axis but the particle axis: (P|1,)."""
    return lp.reshape(lp.shape[0], -1).sum(-1)


def data_scale(model_trace, layout: Layout, plate: str):
    """The scale of the data-plate sites (that of an observed one, which KL warm-up leaves
    alone): a number or a ``(B,)`` tensor."""
    sites = [
        site
        for site in model_trace.nodes.values()
        if site["type"] == "sample" and in_plate(site, plate)
    ]
    sites.sort(key=lambda site: not site["is_observed"])
    if not sites:
        return 1.0
    site = sites[0]
    scale = site["scale"]
    if isinstance(scale, torch.Tensor):
        if scale.numel() == 1:
            return scale.reshape(())
        scale = pad(scale, layout.rank, site["name"])
        index = [0] * layout.rank
        index[layout.rank + layout.data_dim] = slice(None)
        return scale[tuple(index)]
    return float(scale)


def weight_terms(
    model_trace,
    guide_trace,
    layout: Layout,
    plate: str,
    *,
    scaled_globals: bool,
    site_weights: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-point local and global log-weight terms.

    Returns ``local`` of shape ``(P|1, B|1)``: the unscaled :math:`\log p - \log q` of the
    data-plate sites, each times its weight in ``site_weights`` when given (a user's
    ``poutine.scale``, a KL weight; see :func:`site_weights`), and ``glob`` of shape
    ``(P|1,)``: that of the other sites (scaled by their own scale when
    ``scaled_globals``). Shapes broadcast.
    """
    local = torch.zeros(1, 1)
    glob = torch.zeros(1)
    first = True
    for site, sign, _ in scored_sites(model_trace, guide_trace):
        in_data = in_plate(site, plate)
        lp = site_log_prob(site, scaled=scaled_globals and not in_data)
        lp = pad(lp, layout.rank, site["name"])
        if first:
            local, glob = local.to(lp), glob.to(lp)
            first = False
        if in_data:
            weight = 1.0 if site_weights is None else site_weights.get(site["name"], 1.0)
            if isinstance(weight, torch.Tensor):
                lp = lp * pad(weight, layout.rank, site["name"])
            elif weight != 1.0:
                lp = weight * lp
            local = local + sign * reduce_local(lp, layout)
        else:
            glob = glob + sign * reduce_global(lp)
    return local, glob


def site_weights(model_trace, guide_trace, layout: Layout, plate: str):
    """``(unit, weights)`` of the data-plate sites: ``unit`` the minibatch scale (recorded
    by :class:`~ppvae.infer.scaling.MinibatchScale`; else that of the first observed
    site), ``weights`` each site's scale over it (1 for a plain site; a KL weight on latent
    sites; a user's ``poutine.scale``), numbers or tensors."""
    unit = None
    weights: dict[str, Any] = {}
    for site, _, _ in scored_sites(model_trace, guide_trace):
        if in_plate(site, plate) and site.get(UNIT) is not None:
            unit = site[UNIT]
            break
    if unit is None:
        unit = data_scale(model_trace, layout, plate)
    for site, _, _ in scored_sites(model_trace, guide_trace):
        if not in_plate(site, plate):
            continue
        scale = site["scale"]
        if isinstance(scale, torch.Tensor) and scale.numel() == 1:
            scale = float(scale)
        weight = scale / unit
        if isinstance(weight, torch.Tensor) or abs(weight - 1.0) > 1e-9:
            weights[site["name"]] = weight
    return unit, weights


# --------------------------------------------------------------------------------------
# Programs that do not broadcast over a particle dimension


def _particle_slice(site, layout: Layout, k: int) -> torch.Tensor | None:
    """Particle ``k`` of a site's value drawn under the particle plate (None when the
    value has no particle dimension where the plate put it)."""
    value = site["value"]
    event_dim = site["fn"].event_dim
    axis = value.dim() - event_dim - layout.rank
    if axis < 0 or value.shape[axis] <= k:
        return None
    return value.select(axis, k)


def broadcast_problem(
    model, guide, args, kwargs, model_trace, guide_trace, layout: Layout, plate: str, log_w
) -> str | None:
    """Check vectorized log weights ``log_w`` (P, B) against the same draws computed one
    particle at a time (the guide's values of particles 0 and 1 replayed into plain runs
    of the programs; latent sites of the model that the guide does not draw are replayed
    too). Run it with the networks in eval mode (dropout would draw new masks in the
    replay). None when they agree, else a sentence saying what differs."""
    for k in range(min(2, log_w.shape[0])):
        values, model_values = {}, {}
        for name, site in [*guide_trace.nodes.items(), *model_trace.nodes.items()]:
            if site["type"] != "sample" or site["is_observed"]:
                continue
            target = values if name in guide_trace.nodes else model_values
            if name in values:
                continue
            if not any(f.name == PARTICLES for f in site["cond_indep_stack"]):
                target[name] = site["value"]  # shared by the particles (a global site)
                continue
            value = _particle_slice(site, layout, k)
            if value is None:
                return (
                    f"site {name!r} has shape {tuple(site['value'].shape)} without the "
                    f"particle dimension at dim {layout.particle_dim}"
                )
            target[name] = value
        try:
            single = one_particle_log_weights(
                model, guide, args, kwargs, plate, values, model_values
            )
        except NotImplementedError:
            # a guide whose density exists only at its own draws (a flow without inverse):
            # no replay; check instead that every site carries the particle dimension
            return _structural_problem(model_trace, guide_trace, layout, log_w.shape[0])
        except (RuntimeError, ValueError, IndexError, TypeError) as error:
            return f"one particle at a time it fails ({type(error).__name__}: {error})"
        ref = single.reshape(-1)
        vec = log_w[k].reshape(-1)
        if ref.shape != vec.shape or not torch.allclose(
            vec.double(), ref.double(), rtol=1e-4, atol=1e-3
        ):
            diff = (
                (vec.double() - ref.double()).abs().max().item() if ref.shape == vec.shape else None
            )
            return (
                "its vectorized log weights differ from the same draws taken one particle at "
                f"a time (by up to {diff:.3g} nats)"
                if diff is not None
                else f"its vectorized log weights have shape {tuple(vec.shape)}, one particle "
                f"at a time {tuple(ref.shape)}"
            )
    return None


def _structural_problem(model_trace, guide_trace, layout: Layout, k: int) -> str | None:
    """Every site drawn under the particle plate has the particle dimension in its
    log-density (None), or a sentence naming the first that does not."""
    named = (
        (name, site.get("unscaled_log_prob", site.get("log_prob")))
        for trace in (guide_trace, model_trace)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and any(f.name == PARTICLES for f in site["cond_indep_stack"])
    )
    return particle_dim_problem(named, layout.rank, k)


def particle_dim_problem(named_log_probs, rank: int, k: int) -> str | None:
    """Every ``(name, log-density)`` has the particle dimension of size ``k`` at dim
    ``-rank`` (None), or a sentence naming the first that does not: the check of a
    program whose densities cannot be replayed (a flow without inverse)."""
    for name, lp in named_log_probs:
        shape = tuple(torch.as_tensor(lp).shape) if lp is not None else ()
        padded = (1,) * (rank - len(shape)) + shape
        if len(padded) > rank or padded[0] != k:
            return (
                f"site {name!r} has log-density shape {shape}, without the particle "
                f"dimension of size {k} at dim {-rank}"
            )
    return None


class _Fixed(Messenger):
    """Latent sites named in ``values`` take those values (still latent sites, unlike
    ``poutine.condition``, so that the model can be replayed on them)."""

    def __init__(self, values) -> None:
        super().__init__()
        self.values = values

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and msg["name"] in self.values:
            msg["value"] = self.values[msg["name"]]
            msg["done"] = True


def one_particle_log_weights(
    model, guide, args, kwargs, plate: str, values=None, model_values=None
):
    """Per-point log weights ``(B,)`` of one draw from the guide (or of ``values``, with
    the model's own latent sites at ``model_values``), the programs run as written,
    without a particle plate."""
    fn = guide if values is None else _Fixed(values)(guide)
    model = model if not model_values else _Fixed(model_values)(model)
    model_trace, guide_trace = guide_and_model_traces(model, fn, args, kwargs, None)
    frame = data_frame((model_trace, guide_trace), plate, args)
    nesting = max(plate_nesting((model_trace, guide_trace)), -frame.dim)
    # reductions as under a particle plate: a padded leading axis of size 1
    layout = Layout(max_plate_nesting=nesting, data_dim=frame.dim)
    local, glob = weight_terms(model_trace, guide_trace, layout, plate, scaled_globals=False)
    return (local + glob[:, None]).reshape(-1)
