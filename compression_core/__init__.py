"""L² post-training model-size compression (Lossy and Lossless, ICCV 2023), as a plain library.

Public entry points::

    from compression_core import compress, CompressionConfig, load_l2
    result = compress(model, calibration_inputs, target_ratio=10.0)
    result.write("model.l2")
    state_dict = load_l2("model.l2")      # bit-exact equal to result.state_dict

The library never imports the service (`api`, `worker`); the service imports it.
"""

from compression_core.config import CompressionConfig, ConfigError
from compression_core.progress import CompressionCanceled, ProgressEvent

__version__ = "0.1.0"

__all__ = [
    "CompressionCanceled", "CompressionConfig", "ConfigError", "ProgressEvent", "__version__", "compress",
    "load_l2", "write_l2",
]


def __getattr__(name: str):
    """Lazy imports keep `import compression_core` light for the command line and the API process."""
    if name == "compress":
        from compression_core.compressor import compress

        return compress
    if name in ("load_l2", "write_l2"):
        from compression_core import coding

        return getattr(coding, name)
    raise AttributeError(name)
