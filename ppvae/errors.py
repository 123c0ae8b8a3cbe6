"""Exceptions and warnings that a user of ppvae can cause.

Every error a user can trigger (bad data, a bad spec, a missing run folder, a corrupted
checkpoint) is a :class:`PpvaeError` carrying one sentence: what was wrong, where, and
what is allowed. The command-line interface prints ``error: <sentence>`` and exits with
status 2. Internal bugs raise ordinary Python exceptions.
"""

from __future__ import annotations

__all__ = [
    "PpvaeError",
    "SpecError",
    "DataError",
    "CheckpointError",
    "RunDirError",
    "TrainingError",
    "PpvaeWarning",
    "SpecChangedError",
]


class PpvaeError(Exception):
    """Base class of the errors a user can cause; the message is one sentence."""


class SpecError(PpvaeError, ValueError):
    """A model spec (TOML file or ``--set`` override) is invalid."""


class DataError(PpvaeError, ValueError):
    """A data set is missing, unreadable or does not fit what is asked of it."""


class CheckpointError(PpvaeError):
    """A checkpoint is missing, truncated, corrupted or does not match its run."""


class RunDirError(PpvaeError):
    """A run folder is missing, or exists and would be overwritten."""


class TrainingError(PpvaeError):
    """Training cannot go on (for example a NaN loss), with where it happened."""


class PpvaeWarning(UserWarning):
    """Warnings issued by ppvae itself (turned into errors in the test suite)."""


class SpecChangedError(CheckpointError):
    """A run folder's ``spec.toml`` differs from the spec its checkpoint was trained with."""
