"""The audit log writer: the one process that appends, fsyncs, rotates and recovers.

Records come from ``agent.core.audit`` (pure); reading the log back and verifying it is
``agent.daemon.audit_verify``'s. This module owns the files:

- ``audit-<UTC time>-<first sequence>.jsonl``: the records, one line each. The newest
  file is the active one.
- ``audit.state``: two 512-byte checksummed slots written alternately with ``pwrite``
  after each commit (a torn slot leaves the other one): the last sequence and hash (so a
  cut tail is detected), the oldest retained file with its first prev (the chain's
  anchor after retention), and a clean-shutdown flag. It is written only *after* the
  records' fdatasync, so it never runs ahead of the durable log. It is fdatasynced itself
  only on open, rotation, retention and close: a kill or a tamperer still sees the page
  cache; only a power loss can leave it a few seconds behind, and ``verify`` accepts a
  log longer than its state (checking the state's hash where the log passes it).
- ``<file>.<time>.torn``: a half-written last line found on open, set aside as evidence;
  ``<name>.<time>.replaced``: a file found in place of one the writer had open.

Every file the writer makes is created with ``O_EXCL|O_NOFOLLOW``: a name that exists
(planted in a shared directory before the agent repaired it) is never opened; the next
second's name is taken and the skipped one noted. Every file it opens (the newest log
file, ``audit.state``, a file whose torn tail it cuts) is opened without following a
link and checked on the descriptor: a regular file, the agent's user's, one link.

One writer per directory: an ``flock`` on the directory itself, which nobody can replace
while it holds files (a lock on a file could be deleted and taken by a second agent).
The directory must be the agent's own: another owner is refused, group/world write
permission is removed (and noted), and files the agent does not own, symlinks and other
non-regular files are never opened, only named in a notice. A symlinked ``audit_dir``
(a link to another disk) is allowed when the link is the agent's user's or root's: the
directory it leads to is the one checked, locked and compared before each commit.

Writing: ``append`` writes synchronously (open, tests). In the agent, ``start_writer``
moves writing to a thread: the sink hands each event over (``__call__``) and the request
awaits ``flushed()`` before it goes on, so a record is durable before the client gets its
answer while the event loop never waits for a disk. The thread commits whatever queued
up meanwhile with one ``fdatasync`` (group commit).

Before each commit the writer checks that the paths still name the files it has open
(device and inode): a deleted or replaced active file or ``audit.state`` is set aside,
recreated, and an ``audit-recovery`` record says which records were lost.

Recovery notices (from ``open`` and from that check) are owed, not fire-and-forget: they
are written before the next record and dropped only once synced. While one that records
a gap is owed, ``audit.state`` is not rewritten (and retention waits), so a restart still
finds the gap the unwritten notice was about instead of a fresh anchor that blesses it.

A failed write (disk full, read-only, permissions) cuts any partial line back off, so the
file stays whole records; ``append`` returns False and ``failing`` says why, and the agent
applies ``audit_failure``. Each later append tries again; the first that succeeds is
preceded by an ``audit-failure`` record saying what was lost and when.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

from agent.config.keys import AuditFailure
from agent.core.audit import (
    GENESIS,
    NO_GAP_DETAILS,
    STATE_NAME,
    STATE_SLOT,
    AuditState,
    decode_state,
    encode_line,
    encode_state_slot,
    file_name,
    format_timestamp,
    parse_line,
    record_for,
    summary_line,
)
from agent.core.events import Event, NoticeEvent
from agent.daemon.audit_verify import audit_files
from agent.platform.files import pread, pwrite

__all__ = [
    "AuditLog",
    "AuditLogError",
    "default_audit_dir",
]

_MIB = 1024 * 1024
_TAIL_CHUNK = 64 * 1024
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a planted FIFO must not hang an open
# Every file the writer makes is created, never opened: O_EXCL (a name someone else took
# is skipped, not written into) and O_NOFOLLOW (a planted symlink is not followed).
_CREATE = os.O_CREAT | os.O_EXCL | _NOFOLLOW
_NAME_TRIES = 100


def _datasync(fd: int) -> None:
    """fdatasync(2); fsync(2), a superset of it, where Python's os has none: macOS (found
    by mypy --platform darwin: the audit log could not be synced there)."""
    if sys.platform == "linux":
        os.fdatasync(fd)
    else:
        os.fsync(fd)


class AuditLogError(Exception):
    """The log cannot be opened at all (directory, lock held by another writer)."""


def default_audit_dir(
    *, platform: str = sys.platform, system: bool | None = None, environ: Any = None
) -> Path:
    """Where the log lives when ``audit_dir`` is not configured.

    System agent: ``/var/log/pullgate`` (Linux), ``/Library/Logs/Pullgate`` (macOS),
    ``%ProgramData%\\Pullgate\\Logs`` (Windows, where the agent is a service). Per-user
    agent (Docker Desktop, rootless): the user's log directory from platformdirs.
    """
    env = os.environ if environ is None else environ
    if system is None:
        system = platform == "win32" or (sys.platform != "win32" and os.geteuid() == 0)
    if platform == "win32":
        return Path(env.get("ProgramData", r"C:\ProgramData")) / "Pullgate" / "Logs"
    if system:
        return Path("/Library/Logs/Pullgate" if platform == "darwin" else "/var/log/pullgate")
    import platformdirs  # noqa: PLC0415 - only per-user agents need it

    return Path(platformdirs.user_log_dir("pullgate", appauthor=False))


def native_writer() -> Callable[[str, str], None] | None:
    """A writer to the system log, or None where there is none here.

    Linux and macOS: syslog(3) (journald collects it; on macOS it lands in the unified
    log). Windows: the Application event log, source ``PullgateAgent``
    (``agent.platform.windows_eventlog``).
    """
    if sys.platform == "win32":
        from agent.platform.windows_eventlog import event_log_writer  # noqa: PLC0415

        return event_log_writer()
    else:
        try:
            import syslog  # noqa: PLC0415 - POSIX only
        except ImportError:  # pragma: no cover - Windows
            return None
        syslog.openlog("pullgate", syslog.LOG_PID, syslog.LOG_DAEMON)
        levels = {"warning": syslog.LOG_WARNING, "info": syslog.LOG_INFO}

        def write(level: str, line: str) -> None:
            syslog.syslog(levels.get(level, syslog.LOG_INFO), line)

        return write


def _reader(path: Path) -> BinaryIO:
    """``path`` opened for reading without following a link or waiting on a FIFO."""
    return os.fdopen(os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK), "rb")


def _tail(path: Path) -> tuple[int, bytes, bytes | None]:
    """(end of the whole lines, the torn bytes after them, the last whole line)."""
    with _reader(path) as f:
        size = f.seek(0, os.SEEK_END)
        buf = b""
        pos = size
        while pos > 0:
            step = min(_TAIL_CHUNK, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            last_nl = buf.rfind(b"\n")
            if last_nl < 0:
                continue
            prev_nl = buf.rfind(b"\n", 0, last_nl)
            if prev_nl >= 0 or pos == 0:
                return pos + last_nl + 1, buf[last_nl + 1 :], buf[prev_nl + 1 : last_nl + 1]
        return 0, buf, None


def _first_link(path: Path) -> tuple[int, str] | None:
    """(sequence, prev) of a file's first record."""
    try:
        with _reader(path) as f:
            first = f.readline()
        record = parse_line(first)
        return int(record["event.sequence"]), str(record["pullgate.chain.prev"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _hash_at(files: list[Path], sequence: int, window: int = 4 * _MIB) -> str | None:
    """The ``event.hash`` of the record at ``sequence``, looked for in the last ``window``
    bytes of the newest files (where a record the state lags behind can be)."""
    needle = b',"event.sequence":' + str(sequence).encode() + b","
    for path in reversed(files[-2:]):
        try:
            with _reader(path) as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - window))
                data = f.read()
        except OSError:
            return None
        for line in reversed(data.split(b"\n")):
            if needle in line:
                try:
                    return str(parse_line(line)["event.hash"])
                except (ValueError, KeyError):
                    return None
    return None


def _ours(fd: int, uid: int) -> bool:
    """Whether ``fd`` is a regular file the agent's user owns and nobody linked in from
    elsewhere (checked after opening, so what was checked is what gets written)."""
    return _own_regular(os.fstat(fd), uid)


def _own_regular(st: os.stat_result, uid: int) -> bool:
    # One link only: a hard link planted before the directory was repaired could name
    # any file of the agent's user (another log, a system file) under an audit name.
    return stat.S_ISREG(st.st_mode) and (
        os.name != "posix" or (st.st_uid == uid and st.st_nlink == 1)
    )


def _same_dir(fd: int, path: Path) -> bool:
    """Whether ``path`` still leads to the directory open as ``fd``. Follows a symlinked
    ``audit_dir`` (an admin's link to another disk is the same directory, not a new one)."""
    try:
        a = os.fstat(fd)
        b = os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not deleted, not replaced)."""
    try:
        a = os.fstat(fd)
        b = os.lstat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _stamp(t: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t))


def _resolve(done: Iterable[tuple[asyncio.Future[bool], bool]]) -> None:
    for future, ok in done:
        if not future.done():
            future.set_result(ok)


class AuditLog:
    """The single writer of the audit log; a ``DecisionSink`` subscriber.

    ``fsync=False`` is for tests and benchmarks that need volume, not durability.
    """

    def __init__(
        self,
        directory: Path,
        *,
        rotate_bytes: int = 64 * _MIB,
        keep_files: int = 10,
        failure_mode: AuditFailure = AuditFailure.DENY,
        native_log: bool = True,
        host: str | None = None,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.rotate_bytes = rotate_bytes
        self.keep_files = max(1, keep_files)
        self.failure_mode = failure_mode
        self.host = host or socket.gethostname()
        self.clock = clock
        self._fsync = fsync
        self._native = native_writer() if native_log else None
        self._uid = os.geteuid() if hasattr(os, "geteuid") else 0
        self._lock = threading.Lock()  # the files and the chain: one commit at a time
        self._dir_fd: int | None = None  # the single-writer lock (flock on the directory)
        self._fd: int | None = None
        self._state_fd: int | None = None
        self._active: Path | None = None
        self._file_first = 1  # the first sequence written to the active file
        self._size = 0
        self._seq = 0
        self._prev = GENESIS
        self._base: tuple[str, int, str] = ("", 1, GENESIS)
        self._generation = 0
        self._failing: str | None = None
        self._failing_since: float | None = None
        self._lost = 0
        self._integrity: str | None = None  # records known lost under this writer
        self.ignored: list[str] = []  # look-alike files the writer will not touch
        self.state_problem: str | None = None
        self.recovered: str | None = None  # what open() found and noted, if anything
        self._recovery_details: dict[str, Any] = {}
        # Notices owed to the log (recovery notes, the set-aside or skipped files): written
        # before the next record, dropped only once synced. While one that records a gap
        # is owed, audit.state is not advanced: it keeps the anchor that shows the gap.
        self._pending: list[NoticeEvent] = []
        self._skipped: list[str] = []  # names someone else took when the writer created a file
        # The writer thread (start_writer): events queue up, the thread commits them.
        self._cond = threading.Condition()
        self._queue: list[Event] = []
        self._submitted = 0
        self._done = 0
        self._last_ok = True
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[bool]]] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- status -------------------------------------------------------------------------

    @property
    def failing(self) -> str | None:
        """Why the last append could not be written, until one succeeds again."""
        return self._failing

    @property
    def writable(self) -> bool:
        """The last write succeeded: what ``audit_failure`` goes by."""
        return self._fd is not None and self._failing is None

    @property
    def healthy(self) -> bool:
        """Writable, and no record is known to be lost under this writer."""
        return self.writable and self.integrity_problem() is None

    def integrity_problem(self) -> str | None:
        """Records lost under the running writer (its files deleted, replaced or changed
        by someone else), or its files gone right now. Cheap: two ``stat`` calls."""
        if self._integrity is not None:
            return self._integrity
        fd, active, state_fd = self._fd, self._active, self._state_fd
        # (Compared again after the stat: a rotation in between is not a problem.)
        if (
            fd is not None
            and active is not None
            and not _same_file(fd, active)
            and (fd, active) == (self._fd, self._active)
        ):
            return (
                f"{active.name} was deleted or replaced while the agent had it open: the "
                "records in it are lost (the agent notes it and opens a new file)"
            )
        if (
            state_fd is not None
            and not _same_file(state_fd, self.directory / STATE_NAME)
            and state_fd == self._state_fd
        ):
            return f"{STATE_NAME} was deleted or replaced (the agent rewrites it)"
        return None

    @property
    def active_file(self) -> Path | None:
        return self._active

    @property
    def sequence(self) -> int:
        return self._seq

    @property
    def last_hash(self) -> str:
        return self._prev

    def status(self) -> dict[str, Any]:
        """For ``pullgate status``, ``doctor`` and the control API (never blocks on the
        writer: it reads what the last commit left)."""
        problem = self.integrity_problem()
        return {
            "dir": str(self.directory),
            "file": str(self._active) if self._active else None,
            "sequence": self._seq,
            "last_hash": self._prev,
            "healthy": self.writable and problem is None,
            "writable": self.writable,
            "failing": self._failing,
            "failing_since": (
                format_timestamp(self._failing_since) if self._failing_since else None
            ),
            "lost_records": self._lost,
            "integrity": problem,
            "ignored_files": list(self.ignored),
            "audit_failure": str(self.failure_mode),
            "state_problem": self.state_problem,
        }

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> AuditLog:
        """Take the writer lock, check the directory, find the active file, recover from a
        crash, note it."""
        with self._lock:
            if self._fd is not None:
                return self
            try:
                self._open_locked()
            except AuditLogError:
                self._close_fds()
                raise
            except OSError as e:
                self._close_fds()
                raise AuditLogError(f"cannot open the audit log in {self.directory}: {e}") from e
        if self._pending:
            self._commit([])  # the recovery notice; kept owed if it cannot be written now
        return self

    def _open_locked(self) -> None:
        d = self.directory
        # A symlinked audit_dir (a link to another disk) is allowed: the link must be the
        # agent's user's or root's (else its owner could re-point it), and the directory
        # it leads to is checked (owner, mode) and locked like any other.
        self._check_link()
        if not d.exists():
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        notes: list[str] = []
        details: dict[str, Any] = {}
        if sys.platform != "win32":
            self._dir_fd = os.open(d, os.O_RDONLY | _DIRECTORY)
            self._check_directory(self._dir_fd, notes, details)
        # Windows opens no directory as a file: no lock; the MSI's ACL (SYSTEM and
        # Administrators only) guards the directory, the SCM runs one service instance.
        state = self._open_state(notes, details)
        if state is not None:
            self._generation = state.generation
        files, self.ignored = audit_files(d, self._uid)
        if self.ignored:
            notes.append(
                f"{len(self.ignored)} file(s) named like audit files are not the agent's own "
                f"(another owner, a symlink or not a regular file) and are ignored: "
                f"{', '.join(self.ignored[:5])}"
            )
            details["ignored_files"] = self.ignored[:20]
        last: tuple[int, str] | None = None
        if files:
            last = self._recover_tail(files, notes, details)
        if state is not None and not state.clean:
            notes.append(
                "the previous writer stopped without closing the log (crash, kill -9 or power loss)"
            )
            details["unclean_shutdown"] = True
        self._seq, self._prev = last or (0, GENESIS)
        if state is not None:
            self._reconcile(state, last, files, notes, details)
        elif last is not None:
            notes.append(
                "audit.state was missing and has been recreated: the start and the end of "
                "the log before this record cannot be proven complete"
            )
            details["state_recreated"] = True
        self._fd = self._open_active(files[-1]) if files else None
        if self._fd is not None:
            self._active = files[-1]
            link = _first_link(self._active)
            self._file_first = link[0] if link else self._seq + 1
        else:
            if files:
                # A hard link (planted before the directory was repaired, or an admin's
                # cp -al), or a file swapped as it was opened: read, verified, not written.
                notes.append(
                    f"the newest file {files[-1].name} is not only the agent's (it has other "
                    "hard links, or changed as it was opened): it is not written to"
                )
            self._fd, self._active = self._create_file(self._seq + 1)
            self._file_first = self._seq + 1
        self._size = os.fstat(self._fd).st_size
        self._note_skipped(notes, details)
        if not self._base[0] or (state is None and files):
            self._base = self._base_of(audit_files(d, self._uid)[0])
        self._recovery_details = details
        self.recovered = "; ".join(notes) if notes else None
        if notes:
            self._owe(notes, details)
        self._write_state(clean=False)
        self._retain()

    def _check_link(self) -> None:
        """A symlinked ``audit_dir`` must be a link the agent's user (or root) owns."""
        if os.name != "posix":
            return
        try:
            st = os.lstat(self.directory)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (self._uid, 0):
            raise AuditLogError(
                f"the audit directory {self.directory} is a symlink owned by uid {st.st_uid}: "
                "its owner could point it elsewhere; make the link the agent's own or root's, "
                "or set audit_dir to the directory itself"
            )

    def _open_active(self, path: Path) -> int | None:
        """Open the newest listed file to append to; None when it is not (any longer) a
        regular file the agent owns (checked on the open descriptor)."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | _NOFOLLOW | _NONBLOCK)
        except OSError:
            return None
        if not _ours(fd, self._uid):
            os.close(fd)
            return None
        return fd

    def _create_file(self, first: int) -> tuple[int, Path]:
        """A new audit file starting at ``first``. A name that exists (planted by another
        user in a shared directory before it was repaired, or left by this writer) is never
        opened: the next second's name is tried, and the taken one noted. When all of
        them are taken (a flood of planted names), the last one, if not the agent's own,
        is moved aside (``.foreign``) to make room."""
        t = self.clock()
        for k in range(_NAME_TRIES):
            path = self.directory / file_name(first, t + k)
            for _ in range(2):
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND | _CREATE, 0o600)
                except FileExistsError:
                    if k < _NAME_TRIES - 1 or self._own_file(path):
                        break
                    self._set_aside(path, "foreign")
                    continue
                if self._dir_fd is not None and self._fsync:
                    os.fsync(self._dir_fd)
                return fd, path
            self._skipped.append(path.name)
        raise OSError(errno.EEXIST, f"{_NAME_TRIES} names for a new audit file are taken")

    def _own_file(self, path: Path) -> bool:
        try:
            return _own_regular(os.lstat(path), self._uid)
        except FileNotFoundError:
            return False

    def _note_skipped(self, notes: list[str], details: dict[str, Any]) -> None:
        """Name the files whose names the writer could not take (not written into)."""
        if not self._skipped:
            return
        skipped, self._skipped = self._skipped, []
        notes.append(
            f"{len(skipped)} file name(s) the agent was about to create already existed "
            f"and were not used (never opened): {', '.join(skipped[:5])}"
        )
        for name in skipped:
            if name not in self.ignored:
                self.ignored.append(name)
        details["ignored_files"] = list(
            dict.fromkeys([*details.get("ignored_files", []), *skipped])
        )[:20]

    def _owe(self, notes: list[str], details: dict[str, Any]) -> NoticeEvent:
        """Queue an ``audit-recovery`` notice for the next commit (see ``_pending``)."""
        notice = NoticeEvent(
            action="audit-recovery",
            outcome="failure" if set(details) - NO_GAP_DETAILS else "success",
            reason="; ".join(notes),
            severity="warning",
            details=details,
            time=self.clock(),
        )
        self._pending.append(notice)
        return notice

    def _gap_owed(self) -> bool:
        return any(n.outcome == "failure" for n in self._pending)

    def _check_directory(self, dir_fd: int, notes: list[str], details: dict[str, Any]) -> None:
        """The directory must be the agent's own: refuse another owner's, take back group
        and world write permission from ours (others could add, swap or delete files)."""
        d = self.directory
        if sys.platform == "win32":  # os.name != "posix": not called there (_open_locked)
            return
        else:
            st = os.fstat(dir_fd)
            if st.st_uid != self._uid:
                raise AuditLogError(
                    f"the audit directory {d} belongs to uid {st.st_uid}, not to the agent "
                    f"(uid {self._uid}): refusing to keep the audit log where another user "
                    "controls it; make it the agent's own (chown) or set audit_dir elsewhere"
                )
            import fcntl  # noqa: PLC0415 - POSIX only

            try:
                fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AuditLogError(
                    f"another writer holds the audit log in {d} (is a second agent running?)"
                ) from None
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o022:
                os.fchmod(dir_fd, 0o700)
                notes.append(
                    f"the audit directory had mode {mode:04o} (other users could add, replace or "
                    "delete files) and has been set to 0700"
                )
                details["directory_mode"] = f"{mode:04o}"

    def _open_state(self, notes: list[str], details: dict[str, Any]) -> AuditState | None:
        """Open (or create) ``audit.state``; one the agent does not own is moved aside."""
        path = self.directory / STATE_NAME
        fd: int | None
        try:
            fd = os.open(path, os.O_RDWR | _NOFOLLOW | _NONBLOCK)
            st = os.fstat(fd)
            foreign = not (
                stat.S_ISREG(st.st_mode) and (os.name != "posix" or st.st_uid == self._uid)
            )
            if not foreign and st.st_nlink > 1:
                # The agent's state, hard-linked elsewhere (a backup's cp -al): read it,
                # then write on in a copy of its own, never through the other link.
                data = pread(fd, 2 * STATE_SLOT, 0)
                os.close(fd)
                os.unlink(path)
                fd = os.open(path, os.O_RDWR | _CREATE, 0o600)
                pwrite(fd, data, 0)
                notes.append(
                    f"{STATE_NAME} had other hard links: the agent writes a copy of its own"
                )
        except FileNotFoundError:
            fd, foreign = None, False
        except OSError:  # a symlink (ELOOP), a directory...
            fd, foreign = None, True
        if foreign:
            if fd is not None:
                os.close(fd)
                fd = None
            owner = -1
            with contextlib.suppress(OSError):
                owner = os.lstat(path).st_uid
            aside = self._set_aside(path, "foreign")
            notes.append(
                f"{STATE_NAME} was not the agent's own (owner uid {owner}, or not a regular "
                f"file) and was moved aside into {aside}"
            )
            details["foreign_state"] = aside
        if fd is None:
            fd = os.open(path, os.O_RDWR | _CREATE, 0o600)
        self._state_fd = fd
        return decode_state(pread(fd, 2 * STATE_SLOT, 0))

    def _set_aside(self, path: Path, why: str) -> str | None:
        """Rename what is at ``path`` out of the chain's way, keeping it as evidence."""
        base = f"{path.name}.{_stamp(self.clock())}-{self._seq}"
        aside = path.with_name(f"{base}.{why}")
        for k in range(1, _NAME_TRIES):  # never rename over earlier evidence
            if not os.path.lexists(aside):
                break
            aside = path.with_name(f"{base}.{k}.{why}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        return aside.name

    def _recover_tail(
        self, files: list[Path], notes: list[str], details: dict[str, Any]
    ) -> tuple[int, str] | None:
        """Set a torn last line aside; return the last whole record's (sequence, hash)."""
        active = files[-1]
        end, torn, _ = _tail(active)
        if torn:
            fd, aside = self._create_aside(active, "torn")
            try:
                os.write(fd, torn)
                os.fsync(fd)
            finally:
                os.close(fd)
            fd = os.open(active, os.O_WRONLY | _NOFOLLOW | _NONBLOCK)
            try:
                cut = _ours(fd, self._uid)  # else not the agent's alone: not written
                if cut:
                    os.ftruncate(fd, end)
                    os.fsync(fd)
            finally:
                os.close(fd)
            notes.append(
                f"a torn last line ({len(torn)} bytes) of {active.name} was "
                + ("set aside" if cut else "copied (not cut: the file has other links)")
                + f" into {aside.name}"
            )
            details.update(torn_file=aside.name, torn_bytes=len(torn))
        for path in reversed(files):
            _, _, line = _tail(path)
            if line is None:
                continue
            try:
                record = parse_line(line)
                return int(record["event.sequence"]), str(record["event.hash"])
            except (ValueError, KeyError, TypeError):
                notes.append(f"the last record of {path.name} is unreadable")
                details["unreadable_last_record"] = path.name
                return None
        return None

    def _create_aside(self, path: Path, why: str) -> tuple[int, Path]:
        """A new evidence file next to ``path`` (created, never an existing one)."""
        base = f"{path.name}.{_stamp(self.clock())}"
        for k in range(_NAME_TRIES):
            aside = path.with_name(f"{base}.{why}" if k == 0 else f"{base}.{k}.{why}")
            try:
                return os.open(aside, os.O_WRONLY | _CREATE, 0o600), aside
            except FileExistsError:
                continue
        raise OSError(errno.EEXIST, f"no free name for the {why} part of {path.name}")

    def _reconcile(
        self,
        state: AuditState,
        last: tuple[int, str] | None,
        files: list[Path],
        notes: list[str],
        details: dict[str, Any],
    ) -> None:
        """Compare the log's end with the state; never paper over a loss."""
        names = {p.name for p in files}
        if state.base_file in names:
            self._base = (state.base_file, state.base_sequence, state.base_prev)
        elif state.sequence > 0 and files:
            # Keep the old anchor: verify goes on naming the missing file.
            self._base = (state.base_file, state.base_sequence, state.base_prev)
            notes.append(f"the oldest retained file {state.base_file} is missing")
            details["missing_file"] = state.base_file
        seq = last[0] if last else 0
        if state.sequence > seq:
            notes.append(
                f"the log ends at sequence {seq} but audit.state recorded {state.sequence}: "
                f"{state.sequence - seq} record(s) are missing; the chain continues from "
                "audit.state, so verify keeps showing the gap"
            )
            details.update(log_sequence=seq, state_sequence=state.sequence)
            self._seq, self._prev = state.sequence, state.hash
            if not files:
                self._base = ("", state.sequence + 1, state.hash)
        elif last is not None and state.sequence == seq and state.hash != last[1]:
            notes.append("the last record differs from the hash audit.state recorded for it")
            details["state_hash_mismatch"] = True
        elif last is not None and seq > state.sequence > 0:
            # The log runs past the state (a crash between a commit and its state write,
            # or records added while the agent was down): the state's record must still
            # be the one it recorded, or writing on would bless a rewritten tail.
            found = _hash_at(files, state.sequence)
            if found != state.hash:
                notes.append(
                    f"the record at sequence {state.sequence} is not the one audit.state "
                    "recorded (records up to the end were rewritten)"
                    if found
                    else f"the record at sequence {state.sequence}, which audit.state "
                    "recorded, cannot be found near the end of the log"
                )
                details["state_hash_mismatch"] = True
            if state.clean:
                notes.append(
                    f"{seq - state.sequence} record(s) after sequence {state.sequence} were "
                    "added after the agent closed the log cleanly: it did not write them"
                )
                details["appended_after_close"] = seq - state.sequence

    def _base_of(self, files: list[Path]) -> tuple[str, int, str]:
        if not files:
            return ("", self._seq + 1, self._prev)
        link = _first_link(files[0])
        if link is None:
            return (files[0].name, self._seq + 1, self._prev)
        return (files[0].name, link[0], link[1])

    def close(self) -> None:
        """Write what is queued, mark the log cleanly closed and release the lock."""
        self.stop_writer()
        if self._fd is not None and self._pending:
            self._commit([])  # owed notices (a skipped name at the last rotation...)
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    self._write_state(clean=True)  # not while a gap's record is owed
            self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._fd, self._state_fd, self._dir_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._state_fd = self._dir_fd = None

    def __enter__(self) -> AuditLog:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the writer thread --------------------------------------------------------------

    def start_writer(self) -> None:
        """Write on a thread from now on: ``__call__`` queues, ``flushed`` awaits."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(
                target=self._writer, name="pullgate-audit-writer", daemon=True
            )
            self._thread.start()

    def stop_writer(self) -> None:
        """Commit what is queued, then end the thread (``close`` calls it)."""
        with self._cond:
            thread = self._thread
            if thread is None:
                return
            self._stopping = True
            self._cond.notify()
        thread.join()
        self._thread = None

    def flushed(self) -> bool | asyncio.Future[bool]:
        """Whether the newest queued record is written and synced: the answer at once when
        nothing is pending, else a future of the running loop that the writer completes.
        A request awaits it before it goes on (or is refused)."""
        with self._cond:
            if self._done >= self._submitted:
                return self._last_ok
            loop = asyncio.get_running_loop()
            future: asyncio.Future[bool] = loop.create_future()
            self._waiters.append((self._submitted, loop, future))
            return future

    def _writer(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            try:
                results = self._commit(batch)
            except Exception as e:  # the thread must never die with requests waiting
                self._failing = f"audit writer: {e!r}"
                results = [False] * len(batch)
            self._finish(results)

    def _finish(self, results: list[bool]) -> None:
        """Complete the waiters of this commit: one hand-over per event loop."""
        with self._cond:
            start = self._done
            self._done += len(results)
            self._last_ok = results[-1]
            ready = [w for w in self._waiters if w[0] <= self._done]
            if ready:
                self._waiters = [w for w in self._waiters if w[0] > self._done]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool]]] = {}
        for ticket, loop, future in ready:
            by_loop.setdefault(loop, []).append((future, results[ticket - start - 1]))
        for loop, done in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, done)

    # -- writing ------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """The sink's hand-over: queued for the writer thread when it runs, else written."""
        if self._thread is None:
            self.append(event)
            return
        with self._cond:
            self._queue.append(event)
            self._submitted += 1
            self._cond.notify()

    def append(self, event: Event) -> bool:
        """Write one record durably now. False when it could not be written (see
        ``failing``)."""
        if self._fd is None:
            raise RuntimeError("AuditLog.append() before open()")
        return self._commit([event])[0]

    def _commit(self, events: list[Event]) -> list[bool]:
        """Write ``events`` in order with one fdatasync, then the state (group commit)."""
        with self._lock:
            if self._fd is None:
                raise RuntimeError("AuditLog: writing after close()")
            try:
                self._check_files()
            except AuditLogError as e:
                self._fail(OSError(errno.EPERM, str(e)))
                self._lost += len(events)
                return [False] * len(events)
            except OSError as e:
                self._fail(e)
                self._lost += len(events)
                return [False] * len(events)
            assert self._fd is not None
            start = (
                self._size,
                self._seq,
                self._prev,
                self._failing,
                self._failing_since,
                self._lost,
            )
            owed = list(self._pending)
            results: list[bool] = []
            if not events:
                self._write_owed(owed)
            for event in events:
                ok = self._write_owed(owed) and self._write_event(event)
                if not ok:
                    self._lost += 1
                results.append(ok)
            if self._seq != start[1]:
                if not self._sync(start):
                    self._lost += len(events)
                    return [False] * len(events)
                self._pending = owed
                self._write_state(clean=False, sync=False)
                if self._size >= self.rotate_bytes:
                    self._rotate()
            return results

    def _write_owed(self, owed: list[NoticeEvent]) -> bool:
        """Write what the log is owed before the next record: the ``audit-failure`` notice
        after failed writes, then pending recovery notices (taken off ``owed`` as they are
        written; the caller drops them from ``_pending`` once synced)."""
        if self._failing is not None:
            if not self._write_event(self._failure_notice()):
                return False
            self._failing = self._failing_since = None
            self._lost = 0
        while owed:
            if not self._write_event(owed[0]):
                return False
            del owed[0]
        return True

    def _check_files(self) -> None:
        """Do the paths still name the files this writer has open (and is the active file
        as long as it wrote it)? Deleted, replaced or changed files are set aside or left
        as found, a new one is started, and a notice saying what was lost is owed."""
        assert self._fd is not None and self._active is not None and self._state_fd is not None
        assert self._dir_fd is not None
        notes: list[str] = []
        details: dict[str, Any] = {}
        if not _same_dir(self._dir_fd, self.directory) and self._relock_directory(notes, details):
            # Moved or replaced: the lock must follow the path, or a second agent could
            # take the new directory. (Raises, failing the commit, when it cannot.)
            notes.append(
                f"the audit directory {self.directory} was moved or replaced under the agent; "
                "it took the new one over (checked and locked); the records written before "
                "are wherever the old directory went"
            )
            details["directory_replaced"] = True
        old = self._active
        same = _same_file(self._fd, old)
        size = os.fstat(self._fd).st_size
        if not same or size != self._size:
            lost = (
                f"sequence {self._file_first}-{self._seq}"
                if self._seq >= self._file_first
                else "none"
            )
            if not same:
                aside = self._set_aside(old, "replaced")
                what = "replaced (set aside into " + aside + ")" if aside else "deleted"
                notes.append(
                    f"the active file {old.name} was {what} while the agent was writing "
                    f"it: the records in it ({lost}) are lost"
                )
                details.update(replaced_file=old.name, lost_records=lost)
            else:
                notes.append(
                    f"the active file {old.name} was changed by someone else ({size} bytes, "
                    f"the agent wrote {self._size}): it is left as found for verify"
                )
                details.update(changed_file=old.name, size=size, written=self._size)
            fd, new = self._create_file(self._seq + 1)
            os.close(self._fd)
            self._fd, self._active, self._size, self._file_first = fd, new, 0, self._seq + 1
            notes[-1] += f"; writing goes on in {new.name}"
            self._integrity = f"{format_timestamp(self.clock())}: {notes[-1]}"
        state_path = self.directory / STATE_NAME
        if not _same_file(self._state_fd, state_path):
            aside = self._set_aside(state_path, "replaced")
            fd = os.open(state_path, os.O_RDWR | _CREATE, 0o600)
            os.close(self._state_fd)
            self._state_fd = fd
            notes.append(
                f"{STATE_NAME} was deleted or replaced under the agent"
                + (f" (set aside into {aside})" if aside else "")
                + "; it was rewritten from the writer's own anchor"
            )
            details["state_rewritten"] = True
        self._note_skipped(notes, details)
        if notes:
            self._mirror("warning", f"audit log: {'; '.join(notes)}")
            self._owe(notes, details)
        if details.get("state_rewritten"):
            self._write_state(clean=False)  # not while a gap's record is owed

    def _relock_directory(self, notes: list[str], details: dict[str, Any]) -> bool:
        """Check and lock what the path leads to now; False when that is the directory
        already held (a second ``flock`` on it would conflict with the agent's own)."""
        self._check_link()
        fd = os.open(self.directory, os.O_RDONLY | _DIRECTORY)
        assert self._dir_fd is not None
        held, now = os.fstat(self._dir_fd), os.fstat(fd)
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            os.close(fd)
            return False
        try:
            self._check_directory(fd, notes, details)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._dir_fd)
        self._dir_fd = fd
        return True

    def _failure_notice(self) -> NoticeEvent:
        since = format_timestamp(self._failing_since or self.clock())
        now = self.clock()
        return NoticeEvent(
            action="audit-failure",
            outcome="failure",
            reason=(
                f"the audit log could not be written from {since} until "
                f"{format_timestamp(now)} ({self._failing}); {self._lost} record(s) were "
                f"not written (audit_failure={self.failure_mode})"
            ),
            severity="warning",
            details={"since": since, "lost_records": self._lost, "error": self._failing},
            time=now,
        )

    def _fail(self, e: OSError) -> None:
        if self._failing is None:
            self._failing_since = self.clock()
            self._mirror("warning", f"audit log write failed: {self._active}: {e}")
        name = self._active.name if self._active else str(self.directory)
        self._failing = f"{name}: {e.strerror or e}"

    def _write_event(self, event: Event) -> bool:
        """Append one record (not yet synced); on failure cut any partial line off."""
        assert self._fd is not None
        seq = self._seq + 1
        record = record_for(event, sequence=seq, host=self.host, prev_hash=self._prev)
        line, digest = encode_line(record)
        start = self._size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            # The file must stay a sequence of whole records.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            self._fail(e)
            return False
        self._size = start + len(line)
        self._seq, self._prev = seq, digest
        if self._native is not None:
            level = "warning" if record.get("event.outcome") == "failure" else "info"
            self._mirror(level, f"{summary_line(record)} [seq {seq}]")
        return True

    def _sync(self, start: tuple[int, int, str, str | None, float | None, int]) -> bool:
        """One fdatasync for the commit; if it fails, the commit's records are cut off
        again (none of them may count as written) and the chain goes back to ``start``."""
        assert self._fd is not None
        if not self._fsync:
            return True
        try:
            _datasync(self._fd)
        except OSError as e:
            size, seq, prev, failing, since, lost = start
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            self._size = size
            self._seq, self._prev = seq, prev
            self._failing, self._failing_since, self._lost = failing, since, lost
            self._fail(e)
            return False
        return True

    def _write_state(self, *, clean: bool, sync: bool = True) -> None:
        assert self._state_fd is not None and self._active is not None
        if self._gap_owed():
            # The record of a gap is not on disk yet: a fresh anchor now would bless the
            # gap (a restart would find nothing to note). The old state keeps showing it.
            return
        self._generation += 1
        state = AuditState(
            sequence=self._seq,
            hash=self._prev,
            file=self._active.name,
            base_file=self._base[0] or self._active.name,
            base_sequence=self._base[1],
            base_prev=self._base[2],
            clean=clean,
            generation=self._generation,
        )
        try:
            pwrite(self._state_fd, encode_state_slot(state), (self._generation % 2) * STATE_SLOT)
            if sync and self._fsync:
                _datasync(self._state_fd)
            self.state_problem = None
        except OSError as e:
            # The record itself is durable; only the tail anchor lags. Say so in status.
            self.state_problem = f"{STATE_NAME}: {e.strerror or e}"

    def _rotate(self) -> None:
        """Start the next file; the chain simply continues into it."""
        assert self._fd is not None
        try:
            fd, new = self._create_file(self._seq + 1)
        except OSError as e:
            self.state_problem = f"rotation failed: {e.strerror or e}"
            return  # keep appending to the current file; the next commit tries again
        os.close(self._fd)
        self._fd, self._active, self._size, self._file_first = fd, new, 0, self._seq + 1
        notes: list[str] = []
        details: dict[str, Any] = {}
        self._note_skipped(notes, details)
        if notes:
            self._owe(notes, details)  # written before the next record
        self._write_state(clean=False)
        self._retain()

    def _retain(self) -> None:
        """Delete the oldest rotated files beyond ``keep_files``, moving the anchor first
        (so a crash in between leaves an extra old file, never a missing one)."""
        if self._gap_owed():
            return  # the anchor cannot move yet (see _write_state); the next rotation retains
        files, _ = audit_files(self.directory, self._uid)
        rotated = files[:-1]
        excess = len(rotated) - self.keep_files
        if excess <= 0:
            return
        doomed, kept = files[:excess], files[excess:]
        link = _first_link(kept[0])
        if link is None:
            return
        self._base = (kept[0].name, link[0], link[1])
        self._write_state(clean=False)
        for path in doomed:
            with contextlib.suppress(OSError):
                path.unlink()

    def _mirror(self, level: str, line: str) -> None:
        if self._native is not None:
            with contextlib.suppress(OSError, ValueError):
                self._native(level, line)
