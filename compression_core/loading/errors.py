"""Errors raised while reading user-supplied models and data. Each message says what to change in the input,
because the person reading it uploaded a file, not wrote this code."""

from __future__ import annotations


class LoadingError(ValueError):
    """Base class: the input file cannot be used as given."""


class CheckpointError(LoadingError):
    """A model checkpoint is in an unsupported form, or does not fit the named architecture."""


class ArchitectureError(CheckpointError):
    """An architecture reference cannot be resolved (unknown name, missing package, bad keyword arguments)."""


class CalibrationError(LoadingError):
    """Calibration data cannot be read, or is outside the configured limits."""


class ArchiveError(CalibrationError):
    """An uploaded archive is refused: unsafe member names or kinds, or decompression-bomb limits exceeded."""
