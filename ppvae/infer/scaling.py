"""Poutine messengers that rescale log-densities: minibatch scaling and KL warm-up.

:class:`MinibatchScale` makes a minibatch loss an unbiased estimate of the full-data
bound, divided by the data set size: sites inside the data plate are scaled by ``1/B``
(B the batch size) and sites outside it (global latents and parameters) by ``1/N``.
For a model with only local latents this is the plain mean over the batch. A data plate
that subsamples itself (``pyro.plate(name, N, subsample=idx)``) has had its sites scaled
by ``N/B`` by Pyro already: they are scaled by ``1/N`` more, so the scale is applied once.

:class:`LatentScale` multiplies the log-densities of latent (unobserved) sites by a
weight, in model and guide alike: with an ELBO this scales :math:`E_q[\\log p(z) - \\log
q(z|x)]`, i.e. the KL term, which is how KL warm-up (Bowman et al. 2016; Sønderby et al.
2016) is applied to any model.

Example:
    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyro import poutine
    >>> def model(x):
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)
    >>> tr = poutine.trace(MinibatchScale("data", 1 / 4, 1 / 100)(model)).get_trace(torch.zeros(4))
    >>> tr.nodes["x"]["scale"]
    0.25
"""

from __future__ import annotations

from pyro.poutine.messenger import Messenger

__all__ = ["MinibatchScale", "LatentScale", "Scaling", "UNIT"]

#: The key under which :class:`MinibatchScale` leaves a site's minibatch scale.
UNIT = "_ppvae_unit"


class MinibatchScale(Messenger):
    """Scale sample sites inside plate ``plate`` by ``local_scale`` (None: one over the
    plate's size, i.e. the batch's), others by ``global_scale``."""

    def __init__(self, plate: str, local_scale: float | None, global_scale: float) -> None:
        super().__init__()
        self.plate = plate
        self.local_scale = local_scale
        self.global_scale = global_scale
        #: the size of the data plate last seen (the batch's number of points)
        self.points: int | None = None

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample":
            return
        for frame in msg["cond_indep_stack"]:
            if frame.name == self.plate:
                self.points = frame.size
                factor = unit = 1.0 / frame.size if self.local_scale is None else self.local_scale
                if frame.full_size is not None and frame.full_size != frame.size:
                    # pyro.plate(N, subsample=...) has scaled the site by N / size already
                    factor = factor * frame.size / frame.full_size
                break
        else:
            factor = unit = self.global_scale
        msg["scale"] = factor * msg["scale"]
        # the scale the site ends with from minibatching alone: what is beyond it (a user's
        # poutine.scale, a KL weight) is the site's own weight, which the bounds read
        msg[UNIT] = unit


class LatentScale(Messenger):
    """Scale every unobserved sample site by ``weight`` (observed sites are untouched)."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.weight * msg["scale"]


class Scaling(MinibatchScale):
    """Minibatch scaling and KL warm-up in one messenger whose settings change from step to
    step (:func:`ppvae.step` keeps one per program and wraps the programs once)."""

    def __init__(self, plate: str) -> None:
        super().__init__(plate, None, 1.0)
        self.kl_weight = 1.0

    def set(self, local_scale: float | None, global_scale: float, kl_weight: float) -> None:
        self.local_scale, self.global_scale, self.kl_weight = local_scale, global_scale, kl_weight

    def _process_message(self, msg) -> None:
        super()._process_message(msg)
        if msg["type"] == "sample" and not msg["is_observed"] and self.kl_weight != 1.0:
            msg["scale"] = self.kl_weight * msg["scale"]
