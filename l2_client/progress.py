"""A one-line progress bar on a terminal (phase, percent, ETA), or one line per change when the stream is not
a terminal (pipeline logs). Plain text: the client depends on httpx and pydantic only."""

from __future__ import annotations

import sys
from typing import TextIO


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class ProgressBar:
    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = None

    def update(self, fraction: float, phase: str | None, eta_s: float | None) -> None:
        fraction = min(1.0, max(0.0, fraction))
        filled = int(round(fraction * self.width))
        line = (
            f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {100 * fraction:5.1f}% "
            f"{phase or '':<16} ETA {_duration(eta_s)}"
        )
        if self.tty:
            self.stream.write("\r" + line)
        elif (phase, int(100 * fraction)) != self._last:
            self.stream.write(line + "\n")
        self._last = (phase, int(100 * fraction))
        self.stream.flush()

    def close(self, message: str = "") -> None:
        if self.tty:
            self.stream.write("\n")
        if message:
            self.stream.write(message + "\n")
        self.stream.flush()
