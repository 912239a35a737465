"""Files the agent and its tools write and read: all or nothing, and never unbounded."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["FileTooLargeError", "atomic_write", "read_capped", "same_file"]


class FileTooLargeError(ValueError):
    """A file larger than its limit: most likely the wrong file."""


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Temp file, fsync, rename, fsync of the directory: readers see the old file or
    the new one, never a torn one, even across a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_capped(path: str | Path, limit: int) -> bytes:
    """Read at most ``limit`` bytes; raises OSError, or FileTooLargeError beyond it."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FileTooLargeError(f"{path} is larger than {limit} bytes")
    return data


def same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name the same file: the same path once resolved, or (both
    existing) the same inode through another link."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
