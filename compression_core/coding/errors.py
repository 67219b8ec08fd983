"""The one error a reader of `.l2` files raises for anything wrong with the file itself."""

from __future__ import annotations


class L2FormatError(ValueError):
    """The file is not a valid `.l2` artifact: foreign, truncated, corrupted, or written by a newer format
    version. The message names the tensor or field at fault. A reader never returns weights from a file
    that fails any check."""
