r"""ppvae's own reparameterized distributions.

:class:`ReparamDiagonalNormal` is the core's guide distribution, written exactly as the
math says. With :math:`\epsilon \sim N(0, I)`,

.. math::
    z = \mu + \sigma \odot \epsilon, \qquad
    \log q(z) = \sum_i \log N(\epsilon_i; 0, 1) - \sum_i \log \sigma_i,

the second line being the change of variables :math:`\log q(z) = \log p(\epsilon) -
\log |\det \partial z / \partial \epsilon|` for the diagonal affine map.

Example:
    >>> import torch
    >>> q = ReparamDiagonalNormal(torch.zeros(2, 3), torch.ones(2, 3))
    >>> q.batch_shape, q.event_shape
    (torch.Size([2]), torch.Size([3]))
    >>> q.rsample((5,)).shape
    torch.Size([5, 2, 3])
    >>> round(float(q.log_prob(torch.zeros(3))[0]), 4)  # -3/2 log(2 pi)
    -2.7568
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch.distributions import constraints
from torch.distributions.kl import register_kl

__all__ = ["ReparamDiagonalNormal"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_EMPTY = torch.Size()


class ReparamDiagonalNormal(dist.TorchDistribution):
    r"""A diagonal Gaussian over a vector, sampled as :math:`z = \mu + \sigma \epsilon`.

    Args:
        loc: means :math:`\mu`, shape ``batch_shape + (d,)``.
        scale: standard deviations :math:`\sigma > 0`, same shape as ``loc``.
    """

    arg_constraints = {
        "loc": constraints.real_vector,
        "scale": constraints.independent(constraints.positive, 1),
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args=None) -> None:
        loc, scale = torch.broadcast_tensors(loc, scale)
        if loc.dim() < 1:
            raise ValueError("ReparamDiagonalNormal needs loc of at least one dimension")
        self.loc, self.scale = loc, scale
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ReparamDiagonalNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        shape = batch_shape + self.event_shape
        new.loc = self.loc.expand(shape)
        new.scale = self.scale.expand(shape)
        super(ReparamDiagonalNormal, new).__init__(
            batch_shape, self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return self.scale.pow(2)

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        eps = (value - self.loc) / self.scale
        log_p_eps = -0.5 * eps.pow(2) - _HALF_LOG_2PI
        return log_p_eps.sum(-1) - self.scale.log().sum(-1)

    def entropy(self) -> torch.Tensor:
        d = self.loc.shape[-1]
        return d * (0.5 + _HALF_LOG_2PI) + self.scale.log().sum(-1)


def _diag_normal_kl(loc_q, scale_q, loc_p, scale_p) -> torch.Tensor:
    var_ratio = (scale_q / scale_p).pow(2)
    t1 = ((loc_q - loc_p) / scale_p).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log()).sum(-1)


@register_kl(ReparamDiagonalNormal, ReparamDiagonalNormal)
def _kl_reparam_reparam(q, p):
    return _diag_normal_kl(q.loc, q.scale, p.loc, p.scale)


@register_kl(ReparamDiagonalNormal, torch.distributions.Independent)
def _kl_reparam_independent(q, p):
    base = p.base_dist
    if not isinstance(base, torch.distributions.Normal) or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    return _diag_normal_kl(q.loc, q.scale, base.loc, base.scale)
