"""Inference: objectives, training, importance sampling, diagnostics.

Importing this package registers every objective kind (``elbo``, ``meanfield_elbo``,
``iwae``, ``renyi``, ``pyro_renyi``) in :data:`ppvae.infer.objectives.OBJECTIVES`.
"""

from ppvae.infer import bounds as _bounds  # noqa: F401  (registers iwae, renyi, pyro_renyi)
from ppvae.infer.objectives import OBJECTIVES, Objective, build_objective

__all__ = ["OBJECTIVES", "Objective", "build_objective"]
