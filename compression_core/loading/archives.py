"""Safe extraction of uploaded .zip / .tar / .tar.gz archives into a folder the caller owns.

Refused outright (the whole archive, before or while extracting): members whose path is absolute or climbs
out with ``..``, symlinks and hardlinks (they can point anywhere once extracted), device files, FIFOs and
sparse files, encrypted zip members, more than ``max_members`` members, more than ``max_total_bytes``
uncompressed, or an uncompressed/compressed ratio above ``max_ratio`` (decompression bombs). Sizes declared
in headers are checked first and the bytes actually written are counted too, so a lying header cannot
smuggle more data through.
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from compression_core.loading.errors import ArchiveError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 100_000
    max_total_bytes: int = 2 * 1024**3
    max_ratio: float = 100.0
    ratio_floor: int = 1024**2  # below this many bytes, ratios say nothing (tiny files compress very well)


class _Budget:
    """Running totals shared by the header checks and the byte counting."""

    def __init__(self, limits: ArchiveLimits, archive_bytes: int, name: str):
        self.limits, self.archive_bytes, self.name = limits, max(archive_bytes, 1), name
        self.members = 0
        self.declared = 0
        self.written = 0

    def member(self, member: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveError(
                f"{self.name} has more than {self.limits.max_members} members; upload at most "
                "that many files (or raise max_count)"
            )

    def declare(self, member: str, size: int, compressed: int | None) -> None:
        self.declared += size
        self._check(self.declared, member)
        if (
            compressed is not None
            and size > self.limits.ratio_floor
            and size / max(compressed, 1) > self.limits.max_ratio
        ):
            raise ArchiveError(
                f"{self.name}: member {member!r} expands {size / max(compressed, 1):.0f}× "
                f"(limit {self.limits.max_ratio:.0f}×): refused as a decompression bomb"
            )

    def wrote(self, n: int, member: str) -> None:
        self.written += n
        self._check(self.written, member)

    def _check(self, total: int, member: str) -> None:
        if total > self.limits.max_total_bytes:
            raise ArchiveError(
                f"{self.name} expands to more than {self.limits.max_total_bytes} bytes (at member "
                f"{member!r}); upload fewer or smaller files (or raise max_total_bytes)"
            )
        if total > self.limits.ratio_floor and total / self.archive_bytes > self.limits.max_ratio:
            raise ArchiveError(
                f"{self.name} expands more than {self.limits.max_ratio:.0f}× its compressed size "
                f"(at member {member!r}): refused as a decompression bomb"
            )


def extract_archive(path: str | Path, dest: str | Path, limits: ArchiveLimits | None = None) -> int:
    """Extract the zip or tar archive ``path`` (any compression tarfile reads) into the existing folder
    ``dest``; returns the number of files written. Raises `ArchiveError` naming the offending member."""
    path, dest = Path(path), Path(dest).resolve()
    budget = _Budget(limits or ArchiveLimits(), path.stat().st_size, path.name)
    if zipfile.is_zipfile(path):
        return _extract_zip(path, dest, budget)
    try:
        return _extract_tar(path, dest, budget)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ArchiveError(f"{path.name} is not a readable .zip, .tar or .tar.gz archive: {e}") from e


def _target(dest: Path, name: str, archive: str) -> Path | None:
    """Where member ``name`` goes inside ``dest``; None for the archive root itself."""
    norm = name.replace("\\", "/")
    if "\x00" in norm or norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise ArchiveError(
            f"{archive}: member {name!r} has an absolute path; archive the folder with relative paths"
        )
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(
            f"{archive}: member {name!r} points outside the archive folder ('..'); "
            "re-create the archive from inside the image folder"
        )
    if not parts:
        return None
    target = dest.joinpath(*parts)
    if not target.resolve().is_relative_to(dest):  # e.g. through a directory that already is a symlink
        raise ArchiveError(f"{archive}: member {name!r} would be written outside the extraction folder")
    return target


def _copy(src: BinaryIO, target: Path, budget: _Budget, member: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while block := src.read(_CHUNK):
            budget.wrote(len(block), member)
            out.write(block)


def _extract_zip(path: Path, dest: Path, budget: _Budget) -> int:
    files = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            budget.member(info.filename)
            mode = stat.S_IFMT(info.external_attr >> 16)  # 0 when the tool stored no Unix type (e.g. Windows)
            if stat.S_ISLNK(mode):
                raise ArchiveError(
                    f"{path.name}: member {info.filename!r} is a symbolic link; links are refused, "
                    "archive the files themselves"
                )
            if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ArchiveError(
                    f"{path.name}: member {info.filename!r} is a special file (device, FIFO or "
                    "socket); only regular files and folders are accepted"
                )
            if info.flag_bits & 0x1:
                raise ArchiveError(
                    f"{path.name}: member {info.filename!r} is encrypted; upload an unencrypted archive"
                )
            target = _target(dest, info.filename, path.name)
            if target is None:
                continue
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            budget.declare(info.filename, info.file_size, info.compress_size)
            with zf.open(info) as src:
                _copy(src, target, budget, info.filename)
            files += 1
    return files


def _extract_tar(path: Path, dest: Path, budget: _Budget) -> int:
    files = 0
    with tarfile.open(path, "r:*") as tf:
        for member in tf:  # lazy: a bomb is refused at its header, before its data is decompressed
            budget.member(member.name)
            if member.issym() or member.islnk():
                raise ArchiveError(
                    f"{path.name}: member {member.name!r} is a {'symbolic' if member.issym() else 'hard'} "
                    f"link (to {member.linkname!r}); links are refused, archive the files themselves"
                )
            if not (member.isreg() or member.isdir()) or member.issparse():
                raise ArchiveError(
                    f"{path.name}: member {member.name!r} is a special file (device, FIFO or sparse); "
                    "only regular files and folders are accepted"
                )
            target = _target(dest, member.name, path.name)
            if target is None:
                continue
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            budget.declare(member.name, member.size, None)
            src = tf.extractfile(member)
            if src is None:
                continue
            with src:
                _copy(src, target, budget, member.name)
            files += 1
    return files
