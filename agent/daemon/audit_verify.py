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
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.core.audit import (
    STATE_NAME,
    STATE_SLOT,
    AuditState,
    BadLine,
    VerifyResult,
    decode_state,
    order_files,
    verify_chain,
)
from agent.platform.files import pread

__all__ = [
    "AuditStateError",
    "DirectoryVerify",
    "audit_files",
    "chain_files",
    "read_state",
    "verify",
    "verify_directory",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


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


class AuditStateError(Exception):
    """``audit.state`` is there but is not the writer's: not a regular file (a FIFO, a
    directory, a socket, a symlink) or owned by another user than the directory. The
    message says which; verify reports the log as not intact."""


def read_state(directory: Path) -> AuditState | None:
    """The writer's ``audit.state``, or None when there is none.

    Opened with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO put in its place must not hang the
    reader) and checked on the open descriptor: it must be a regular file owned by the
    directory's owner (the rule ``audit_files`` applies to the log files), else
    :class:`AuditStateError`. Raises ``OSError`` when it cannot be read."""
    path = directory / STATE_NAME
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise AuditStateError(
                f"{STATE_NAME} is a symlink, not the writer's file: it is not read"
            ) from None
        if e.errno == errno.ENXIO:  # a socket (or a FIFO opened for writing)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                return None
            raise AuditStateError(_not_regular(mode)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AuditStateError(_not_regular(st.st_mode))
        if os.name == "posix":
            owner = directory.stat().st_uid
            if st.st_uid != owner:
                raise AuditStateError(
                    f"{STATE_NAME} belongs to uid {st.st_uid}, not to the directory's owner "
                    f"(uid {owner}): it is not the writer's anchor"
                )
        return decode_state(pread(fd, 2 * STATE_SLOT, 0))
    finally:
        os.close(fd)


def _not_regular(mode: int) -> str:
    kind = (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a symlink"
        if stat.S_ISLNK(mode)
        else "not a regular file"
    )
    return f"{STATE_NAME} is {kind}, not the writer's file: it is not read"


def chain_files(directory: Path) -> list[Path]:
    """The files ``verify`` covers: ``audit_files`` without the files before the state's
    base (retention moved the anchor past them, or someone planted them there). ``tail``
    and ``export`` read only these. With no usable state, every file of ours."""
    files, _ = audit_files(directory)
    try:
        state = read_state(directory)
    except AuditStateError:
        return files
    if state is None or state.sequence <= 0:
        return files
    names = [p.name for p in files]
    if state.base_file in names:
        return files[names.index(state.base_file) :]
    return files


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
    """``verify_directory``'s answer: the result, the snapshot it verified, look-alikes.

    ``stable`` is False when the log kept changing through the last attempt (a writer
    busy enough that no snapshot held still): ``result`` then says nothing either way,
    and the caller must say "try again", not "not intact"."""

    def __init__(
        self,
        result: VerifyResult,
        state: AuditState | None,
        files: list[Path],
        foreign: list[str],
        attempts: int,
        *,
        stable: bool = True,
    ) -> None:
        self.result = result
        self.state = state
        self.files = files
        self.foreign = foreign
        self.attempts = attempts
        self.stable = stable


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


def _being_written(result: VerifyResult, files: list[Path], state: AuditState | None) -> bool:
    """A failure a live writer causes for a moment, while it has the log open (the state
    is not clean): the newest file ends in a line without its newline (a record being
    written), or the state still says sequence 0 over the first records (the writer's
    very first commit, before it updates the state)."""
    bad = result.first_bad
    if bad is None or state is None or state.clean:
        return False
    if bad.file == STATE_NAME:
        return state.sequence == 0 and bad.reason.startswith("audit.state records sequence 0")
    return (
        bool(files)
        and bad.file == files[-1].name
        and bad.reason.startswith("truncated: the last line is incomplete")
    )


def _state_generation(directory: Path) -> int:
    try:
        return _generation(read_state(directory))
    except AuditStateError:
        return -2


SETTLE_SECONDS = 0.05
"""How long verify waits before re-reading what a live writer may be writing (times the
attempt number: at most 0.75 s over five attempts)."""


def verify_directory(directory: Path, *, attempts: int = 5) -> DirectoryVerify:
    """Verify the log in ``directory`` consistently while its writer may be running.

    A snapshot is the file list, then the state, then the list again (a rotation in
    between starts over). A failed verify is only reported when it holds still: if the
    list, a file's size or the state's generation changed while it ran (the writer
    rotated, retention deleted a file being read, a record was being written), it starts
    over, up to ``attempts`` times. A torn last line in the newest file, or a state at
    sequence 0 over records, while the state is not clean is re-read after a short sleep
    (a record being written, the writer's first commit), however still it looked. A real
    break does not move, so it is reported once it held still; if the log was still
    moving at the last attempt the answer is ``stable=False`` ("try again"), never "not
    intact". An ``audit.state`` that is not the writer's (not a regular file, another
    owner) is reported at once as not intact.
    """
    last: DirectoryVerify | None = None
    moved = False
    seen: tuple[list[Path], list[int], int] | None = None
    for attempt in range(1, attempts + 1):
        before, _ = audit_files(directory)
        try:
            state = read_state(directory)
        except AuditStateError as e:
            files, foreign = audit_files(directory)
            bad = BadLine(STATE_NAME, 0, str(e))
            result = VerifyResult(False, 0, len(files), first_bad=bad)
            return DirectoryVerify(result, None, files, foreign, attempt)
        files, foreign = audit_files(directory)
        moved = files != before
        if moved and attempt < attempts:
            continue
        sizes = _sizes(files)
        result = verify(files, state)
        last = DirectoryVerify(result, state, files, foreign, attempt)
        if result.first_bad is None:
            return last
        snapshot = (files, sizes, _generation(state))
        now, _ = audit_files(directory)
        held = (
            now == files
            and _sizes(now) == sizes
            and _state_generation(directory) == _generation(state)
        )
        moved = moved or not held or (seen is not None and seen != snapshot)
        seen = snapshot
        settling = _being_written(result, files, state)
        if held and not settling:
            return last  # a real break holds still
        if settling:
            time.sleep(SETTLE_SECONDS * attempt)
    assert last is not None
    last.stable = not moved
    return last
