"""Helpers of the program tests: Pyro's SVI as the reference, a one-sample-at-a-time
importance sampler written independently of ppvae, a recorder of per-step losses."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import ppvae


class StepLosses(ppvae.Callback):
    """Every step's reported loss (nats per point) and its number of points."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.points: list[int] = []

    def on_step_end(self, state, info) -> None:
        self.losses.append(info["loss"])
        self.points.append(info["points"])

    def batch_sums(self) -> list[float]:
        """The losses as Pyro reports them: summed over the batch's points."""
        return [loss * points for loss, points in zip(self.losses, self.points, strict=True)]


def svi_losses(
    model: Callable,
    guide: Callable,
    batches: Sequence[tuple],
    *,
    epochs: int = 1,
    seed: int = 0,
    optim=None,
    loss=None,
    lr: float = 1e-2,
    between_epochs: Callable[[], None] | None = None,
) -> list[float]:
    """Pyro's SVI over ``batches`` (each a tuple of positional arguments, or a pair
    ``(args, kwargs)``) for ``epochs`` epochs, from a clean store and ``seed``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, optim or pyro.optim.Adam({"lr": lr}), loss or Trace_ELBO())
    out = []
    for _ in range(epochs):
        for batch in batches:
            args, kwargs = (
                batch
                if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], dict)
                else (batch, {})
            )
            out.append(svi.step(*args, **kwargs))
        if between_epochs is not None:
            between_epochs()
    return out


def point_log_weight(model: Callable, guide: Callable, args: tuple) -> torch.Tensor:
    """log p(x_i, z_i) - log q(z_i | x_i) per data point for ONE draw of the guide, the
    programs run as written (no particle dimension); sites outside the data plate count
    for every point. The data plate must be the leftmost batch dim of local sites."""
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    total: torch.Tensor | float = 0.0
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        for site in trace.nodes.values():
            if site["type"] != "sample" or type(site["fn"]).__name__ == "_Subsample":
                continue
            lp = site["fn"].log_prob(site["value"])
            lp = scale_and_mask(lp, 1.0, site["mask"])
            lp = torch.as_tensor(lp)
            in_data = any(f.name == "data" for f in site["cond_indep_stack"])
            # data points on the left of a local site's log-density
            lp = lp.reshape(lp.shape[0], -1).sum(-1) if in_data else lp.sum()
            total = total + sign * lp
    return torch.as_tensor(total)


def looped_log_px(model, guide, args: tuple, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(x_i), stderr_i)`` by importance sampling, one guide draw at a time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention
    try:
        with torch.no_grad():
            log_w = torch.stack(
                [point_log_weight(model, guide, args).double() for _ in range(num_samples)]
            )
    finally:
        torch.set_num_threads(threads)
    log_px = torch.logsumexp(log_w, 0) - math.log(num_samples)
    w = torch.exp(log_w - log_w.max(0).values)
    stderr = w.std(0) / math.sqrt(num_samples) / w.mean(0)
    return log_px, stderr


def set_modes(modules: Iterable[torch.nn.Module], training: bool) -> None:
    for m in modules:
        m.train(training)


def agree(a: torch.Tensor, b: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor, z: float = 4.0):
    """Whether two independent estimates agree within ``z`` combined standard errors
    (plus 1e-3 nats), per point; returns (ok, worst z-score)."""
    a, b, sa, sb = (t.double() for t in (a, b, sa, sb))
    spread = torch.sqrt(sa**2 + sb**2) + 1e-3
    zs = (a - b).abs() / spread
    return bool((zs <= z).all()), float(zs.max())


# --------------------------------------------------------------------------------------
# Small programs shared by several files
# --------------------------------------------------------------------------------------

VD, VZ = 6, 2


class TinyVAE:
    """A plain object holding two networks registered with ``pyro.module`` in its
    ``model`` and ``guide`` methods (Pyro's vae.py style, tiny sizes)."""

    def __init__(self) -> None:
        self.encoder = nn.Sequential(nn.Linear(VD, 8), nn.Tanh(), nn.Linear(8, 2 * VZ))
        self.decoder = nn.Sequential(nn.Linear(VZ, 8), nn.Tanh(), nn.Linear(8, VD))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(VZ), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw = self.encoder(x).split(VZ, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def tiny_data(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(2, VD, generator=g)
    return (torch.rand(n, VD, generator=g) < probs[torch.arange(n) % 2]).float()


# A linear-Gaussian model with an exact posterior and an exact log p(x):
# z ~ N(0, 1) (one dim), x | z ~ N(z w, s^2 I).
W = torch.tensor([1.5, -1.0, 0.5])
S = 0.7


def exact_log_px(x: torch.Tensor, w: torch.Tensor = W, s: float = S) -> torch.Tensor:
    cov = s**2 * torch.eye(w.shape[0]) + torch.outer(w, w)
    return dist.MultivariateNormal(torch.zeros(w.shape[0]), cov).log_prob(x)


def posterior(x: torch.Tensor, w: torch.Tensor = W, s: float = S):
    """Mean (B, 1) and standard deviation of p(z | x)."""
    precision = 1.0 + (w @ w) / s**2
    return ((x @ w) / s**2 / precision)[:, None], precision**-0.5


def gaussian_data(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, generator=g) * W + S * torch.randn(n, W.shape[0], generator=g)
