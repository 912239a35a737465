"""Files the agent and its tools write and read: all or nothing, and never unbounded."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from pathlib import Path

__all__ = [
    "FileTooLargeError",
    "NotRegularFileError",
    "atomic_write",
    "pread",
    "pwrite",
    "read_capped",
    "same_file",
]


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
            if sys.platform != "win32":  # Windows: the directory's inherited ACL applies
                os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sys.platform != "win32":  # a directory cannot be opened for fsync on Windows
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def pread(fd: int, length: int, offset: int) -> bytes:
    """``os.pread``; on Windows (no pread) a seek and a read, so there one descriptor
    must not be used by two threads at once (the audit log's state file is not)."""
    if sys.platform == "win32":
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, length)
    else:
        return os.pread(fd, length, offset)


def pwrite(fd: int, data: bytes, offset: int) -> int:
    """``os.pwrite``; on Windows a seek and a write (see :func:`pread`)."""
    if sys.platform == "win32":
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)
    else:
        return os.pwrite(fd, data, offset)


class NotRegularFileError(OSError):
    """A path that names a FIFO, a device, a socket or a directory, not a file."""


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def read_capped(path: str | Path, limit: int, *, follow_symlinks: bool = True) -> bytes:
    """Read at most ``limit`` bytes of a regular file.

    Raises OSError — ``NotRegularFileError`` for a FIFO, device, socket or directory,
    which is opened without blocking and never read (a FIFO with no writer would hang the
    reader, ``/dev/zero`` would never end) — or FileTooLargeError beyond ``limit``.
    ``follow_symlinks=False`` refuses a symbolic link as the last component (ELOOP):
    for files only the agent writes, such as those in its state directory.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in _KINDS if test(mode)), "not a file")
        raise NotRegularFileError(
            errno.EINVAL, f"not a regular file ({kind}); refusing to read it", str(path)
        )
    with open(fd, "rb") as f:
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
