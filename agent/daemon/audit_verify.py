"""Reading the audit log back: its files, its ``audit.state``, and the chain over them.

``agent.core.audit`` holds the records, the state's encoding and the chain check itself,
all pure; this module opens the files for them. The writer (``agent.daemon.audit_log``)
lists its directory with ``audit_files``; ``pullgate audit`` and ``pullgate doctor`` verify
with ``verify_directory``. Reading never takes the writer's lock.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.core.audit import (
    STATE_NAME,
    STATE_SLOT,
    AuditState,
    VerifyResult,
    decode_state,
    order_files,
    verify_chain,
)

__all__ = [
    "DirectoryVerify",
    "audit_files",
    "read_state",
    "verify",
    "verify_directory",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True)
class _PathFile:
    """A file of the log on disk, as ``verify_chain`` reads it (a ``LogFile``)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @contextmanager
    def lines(self) -> Iterator[Iterable[bytes]]:
        with self.path.open("rb", buffering=1 << 20) as f:
            yield f


def verify(files: Sequence[Path], state: AuditState | None = None) -> VerifyResult:
    """``agent.core.audit.verify_chain`` over the files at ``files``, in that order."""
    return verify_chain([_PathFile(path) for path in files], state)


def read_state(directory: Path) -> AuditState | None:
    """The writer's ``audit.state``, or None when there is none (or it is not a file)."""
    try:
        fd = os.open(directory / STATE_NAME, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None  # a symlink planted in its place: not the writer's state
        raise
    try:
        return decode_state(os.pread(fd, 2 * STATE_SLOT, 0))
    finally:
        os.close(fd)


def audit_files(directory: Path, uid: int | None = None) -> tuple[list[Path], list[str]]:
    """The chain's files in order, and the names of look-alikes the writer never wrote:
    symlinks and other non-regular files, and files another user than ``uid`` (default:
    the directory's owner) owns. Raises ``OSError`` when the directory cannot be read."""
    if uid is None:
        uid = directory.stat().st_uid
    ours: list[Path] = []
    foreign: list[str] = []
    for path in order_files(directory.iterdir()):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue  # retention removed it meanwhile
        if stat.S_ISREG(st.st_mode) and (os.name != "posix" or st.st_uid == uid):
            ours.append(path)
        else:
            foreign.append(path.name)
    return ours, foreign


class DirectoryVerify:
    """``verify_directory``'s answer: the result, the snapshot it verified, look-alikes."""

    def __init__(
        self,
        result: VerifyResult,
        state: AuditState | None,
        files: list[Path],
        foreign: list[str],
        attempts: int,
    ) -> None:
        self.result = result
        self.state = state
        self.files = files
        self.foreign = foreign
        self.attempts = attempts


def _generation(state: AuditState | None) -> int:
    return -1 if state is None else state.generation


def _sizes(files: list[Path]) -> list[int]:
    sizes = []
    for path in files:
        try:
            sizes.append(path.stat().st_size)
        except FileNotFoundError:
            sizes.append(-1)
    return sizes


def verify_directory(directory: Path, *, attempts: int = 5) -> DirectoryVerify:
    """Verify the log in ``directory`` consistently while its writer may be running.

    A snapshot is the file list, then the state, then the list again (a rotation in
    between starts over). A failed verify is only reported when it holds still: if the
    list, a file's size or the state's generation changed while it ran (the writer
    rotated, retention deleted a file being read, a record was being written), it starts
    over, up to ``attempts`` times. A real break does not move, so it is reported at once.
    """
    last: DirectoryVerify | None = None
    for attempt in range(1, attempts + 1):
        before, _ = audit_files(directory)
        state = read_state(directory)
        files, foreign = audit_files(directory)
        if files != before and attempt < attempts:
            continue
        sizes = _sizes(files)
        result = verify(files, state)
        last = DirectoryVerify(result, state, files, foreign, attempt)
        if result.first_bad is None:
            return last
        now, _ = audit_files(directory)
        if (
            now == files
            and _sizes(now) == sizes
            and _generation(read_state(directory)) == _generation(state)
        ):
            return last
    assert last is not None
    return last
