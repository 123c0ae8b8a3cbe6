"""ppvae: deep latent variable models written as Pyro programs.

Write a model ``p(z) p(x|z)`` and an amortized guide ``q(z|x)`` as ordinary Pyro programs
(``nn.Module``\\ s whose ``forward`` calls ``pyro.sample``, data in the plate ``"data"``);
ppvae trains them (:func:`fit`, or :func:`init` and :func:`step` in your own loop), estimates ``log p(x)`` per data point by importance
sampling with diagnostics (:func:`log_marginal_likelihood`), and runs declarative specs
of its model zoo (:func:`load_spec`, :func:`train_spec`, the ``ppvae`` command), and exports
trained runs that :func:`load_run` loads anywhere (:func:`export_run`).
"""

from ppvae._version import __version__ as __version__
from ppvae.data import DATASETS, DataBundle, load_data
from ppvae.errors import (
    CheckpointError,
    DataError,
    PpvaeError,
    PpvaeWarning,
    RunDirError,
    SpecError,
    TrainingError,
)
from ppvae.export import export_run
from ppvae.infer.callbacks import Callback
from ppvae.infer.config import TrainConfig
from ppvae.infer.importance import ImportanceResult, log_marginal_likelihood
from ppvae.infer.objectives import OBJECTIVES, Objective, build_objective
from ppvae.infer.step import History, TrainState, init, step
from ppvae.infer.train import fit
from ppvae.run import Run, load_run, train_spec
from ppvae.spec import Spec, load_spec, parse_spec

__all__ = [
    "init",
    "step",
    "fit",
    "TrainConfig",
    "TrainState",
    "History",
    "Callback",
    "log_marginal_likelihood",
    "ImportanceResult",
    "Objective",
    "OBJECTIVES",
    "build_objective",
    "load_data",
    "DATASETS",
    "DataBundle",
    "Spec",
    "load_spec",
    "parse_spec",
    "train_spec",
    "load_run",
    "export_run",
    "Run",
    "PpvaeError",
    "SpecError",
    "DataError",
    "CheckpointError",
    "RunDirError",
    "TrainingError",
    "PpvaeWarning",
]
