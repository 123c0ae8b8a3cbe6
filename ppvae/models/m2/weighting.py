r"""The explicit sum over classes in M2's bound (``sum_y = "explicit"``): per-class
log-densities weighted by :math:`q(y|x)` (one-hot on labelled points), written as the
log-densities of ordinary Pyro sites so that every ELBO-type objective applies."""

from __future__ import annotations

import pyro.distributions as dist
import torch

from ppvae.models._common import one_hot

__all__ = ["ClassWeighted", "class_weights"]

_EMPTY = torch.Size()


class ClassWeighted(dist.TorchDistribution):
    r"""A weighted sum over classes of per-class log-densities:

    .. math::
        \log p(v) = \sum_c w_c \,(\log p_c(v_c) + b_c)

    for a ``base`` distribution with batch shape ``(..., C)`` (one distribution per
    class), weights :math:`w` and offsets :math:`b` broadcastable to it. The value holds
    one draw per class (event shape ``(C, *base.event_shape)``), or, with
    ``shared_value=True``, one value scored under every class (event shape
    ``base.event_shape``; used for the observed ``x``). Not a normalized density: it
    writes the explicit sum over :math:`y` of M2's bound as the log-densities of ordinary
    sites, so every ELBO-type objective applies. ``rsample`` draws every class's value.
    """

    arg_constraints: dict = {}

    def __init__(
        self,
        base: dist.Distribution,
        weights: torch.Tensor,
        offsets: torch.Tensor | None = None,
        *,
        shared_value: bool = False,
        validate_args=None,
    ) -> None:
        if offsets is None:
            offsets = torch.zeros((), dtype=weights.dtype, device=weights.device)
        shapes = [base.batch_shape, weights.shape, offsets.shape]
        full = torch.broadcast_shapes(*shapes)
        self.base = base.expand(full) if base.batch_shape != full else base
        self.weights = weights.expand(full)
        self.offsets = offsets.expand(full)
        self.shared_value = shared_value
        num_classes = full[-1:]
        event = base.event_shape if shared_value else num_classes + base.event_shape
        super().__init__(full[:-1], event, validate_args=False)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return bool(self.base.has_rsample) and not self.shared_value

    @property
    def support(self):  # type: ignore[override]
        return dist.constraints.real

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        c = self.weights.shape[-1:]
        return ClassWeighted(
            self.base.expand(batch_shape + c),
            self.weights.expand(batch_shape + c),
            self.offsets.expand(batch_shape + c),
            shared_value=self.shared_value,
        )

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self.shared_value:
            value = value.unsqueeze(-1 - len(self.base.event_shape))
        return (self.weights * (self.base.log_prob(value) + self.offsets)).sum(-1)

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        if self.shared_value:
            raise NotImplementedError("ClassWeighted(shared_value=True) has no rsample")
        return self.base.rsample(sample_shape)

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        with torch.no_grad():
            draws = self.base.sample(sample_shape)
            if not self.shared_value:
                return draws
            # one class per point from the weights, that class's draw
            c = torch.distributions.Categorical(probs=self.weights).sample(sample_shape)
            event = self.base.event_shape
            index = c.reshape(c.shape + (1,) * (1 + len(event))).expand(c.shape + (1,) + event)
            return draws.gather(-1 - len(event), index).squeeze(-1 - len(event))


def class_weights(
    logits: torch.Tensor, y: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``w`` (one-hot on labelled points, ``q(y|x)`` on unlabelled ones) and
    ``log w`` where it matters (0 on labelled points)."""
    labelled = (y >= 0).unsqueeze(-1)
    log_q = torch.log_softmax(logits, -1)
    onehot = one_hot(y.clamp(min=0), num_classes, logits)
    weights = torch.where(labelled, onehot, log_q.exp())
    log_w = torch.where(labelled, torch.zeros_like(log_q), log_q)
    return weights, log_w
