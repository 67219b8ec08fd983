"""Inputs users actually have: model checkpoints (state_dict + architecture, torch.export, TorchScript) and
calibration data (image folders and archives, tensor files), read without running code from the files."""

from compression_core.loading.architectures import (
    build_architecture,
    register_architecture,
    registered_architectures,
    unregister_architecture,
)
from compression_core.loading.calibration import (
    CalibrationData,
    CalibrationSpec,
    load_calibration,
    split_holdout,
)
from compression_core.loading.checkpoints import SUPPORTED_FORMS, LoadedModel, export_decoded, load_model
from compression_core.loading.errors import (
    ArchitectureError,
    ArchiveError,
    CalibrationError,
    CheckpointError,
    LoadingError,
)

__all__ = [
    "SUPPORTED_FORMS",
    "ArchitectureError",
    "ArchiveError",
    "CalibrationData",
    "CalibrationError",
    "CalibrationSpec",
    "CheckpointError",
    "LoadedModel",
    "LoadingError",
    "build_architecture",
    "export_decoded",
    "load_calibration",
    "load_model",
    "register_architecture",
    "registered_architectures",
    "split_holdout",
    "unregister_architecture",
]
