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

One writer per directory: an ``flock`` on the directory itself, which nobody can replace
while it holds files (a lock on a file could be deleted and taken by a second agent).
The directory must be the agent's own: another owner is refused, group/world write
permission is removed (and noted), and files the agent does not own, symlinks and other
non-regular files are never opened, only named in a notice.

Writing: ``append`` writes synchronously (open, tests). In the agent, ``start_writer``
moves writing to a thread: the sink hands each event over (``__call__``) and the request
awaits ``flushed()`` before it goes on, so a record is durable before the client gets its
answer while the event loop never waits for a disk. The thread commits whatever queued
up meanwhile with one ``fdatasync`` (group commit).

Before each commit the writer checks that the paths still name the files it has open
(device and inode): a deleted or replaced active file or ``audit.state`` is set aside,
recreated, and an ``audit-recovery`` record says which records were lost.

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
from typing import Any

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

__all__ = [
    "AuditLog",
    "AuditLogError",
    "default_audit_dir",
]

_MIB = 1024 * 1024
_TAIL_CHUNK = 64 * 1024
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


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
        system = platform == "win32" or (os.name == "posix" and os.geteuid() == 0)
    if platform == "win32":
        return Path(env.get("ProgramData", r"C:\ProgramData")) / "Pullgate" / "Logs"
    if system:
        return Path("/Library/Logs/Pullgate" if platform == "darwin" else "/var/log/pullgate")
    import platformdirs  # noqa: PLC0415 - only per-user agents need it

    return Path(platformdirs.user_log_dir("pullgate", appauthor=False))


def native_writer() -> Callable[[str, str], None] | None:
    """A writer to the system log, or None where there is none here.

    Linux and macOS: syslog(3) (journald collects it; on macOS it lands in the unified
    log). Windows (planned): the Event Log via ``ReportEventW`` under an event source
    ``Pullgate`` registered by the installer.
    """
    try:
        import syslog  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows
        return None
    syslog.openlog("pullgate", syslog.LOG_PID, syslog.LOG_DAEMON)
    levels = {"warning": syslog.LOG_WARNING, "info": syslog.LOG_INFO}

    def write(level: str, line: str) -> None:
        syslog.syslog(levels.get(level, syslog.LOG_INFO), line)

    return write


def _tail(path: Path) -> tuple[int, bytes, bytes | None]:
    """(end of the whole lines, the torn bytes after them, the last whole line)."""
    with path.open("rb") as f:
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
        with path.open("rb") as f:
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
            with path.open("rb") as f:
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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        if self.recovered:
            gap = bool(set(self._recovery_details) - NO_GAP_DETAILS)
            self.append(
                NoticeEvent(
                    action="audit-recovery",
                    outcome="failure" if gap else "success",
                    reason=self.recovered,
                    severity="warning",
                    details=self._recovery_details,
                    time=self.clock(),
                )
            )
        return self

    def _open_locked(self) -> None:
        d = self.directory
        if not d.exists():
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        self._dir_fd = os.open(d, os.O_RDONLY | _DIRECTORY)
        notes: list[str] = []
        details: dict[str, Any] = {}
        self._check_directory(self._dir_fd, notes, details)
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
        if files:
            self._active = files[-1]
            link = _first_link(self._active)
            self._file_first = link[0] if link else self._seq + 1
        else:
            self._active = d / file_name(self._seq + 1, self.clock())
            self._file_first = self._seq + 1
        self._fd = os.open(self._active, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
        self._size = os.fstat(self._fd).st_size
        if not files:
            _fsync_dir(d)
        if not self._base[0] or (state is None and files):
            self._base = self._base_of(audit_files(d, self._uid)[0])
        self._write_state(clean=False)
        self._recovery_details = details
        self.recovered = "; ".join(notes) if notes else None
        self._retain()

    def _check_directory(self, dir_fd: int, notes: list[str], details: dict[str, Any]) -> None:
        """The directory must be the agent's own: refuse another owner's, take back group
        and world write permission from ours (others could add, swap or delete files)."""
        d = self.directory
        if os.name != "posix":
            return
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
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and not (
            stat.S_ISREG(st.st_mode) and (os.name != "posix" or st.st_uid == self._uid)
        ):
            aside = self._set_aside(path, "foreign")
            notes.append(
                f"{STATE_NAME} was not the agent's own (owner uid {st.st_uid}, or not a regular "
                f"file) and was moved aside into {aside}"
            )
            details["foreign_state"] = aside
        self._state_fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
        return decode_state(os.pread(self._state_fd, 2 * STATE_SLOT, 0))

    def _set_aside(self, path: Path, why: str) -> str | None:
        """Rename what is at ``path`` out of the chain's way, keeping it as evidence."""
        aside = path.with_name(f"{path.name}.{_stamp(self.clock())}-{self._seq}.{why}")
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
            aside = active.with_name(f"{active.name}.{_stamp(self.clock())}.torn")
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o600)
            try:
                os.write(fd, torn)
                os.fsync(fd)
            finally:
                os.close(fd)
            with active.open("r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
            notes.append(
                f"a torn last line ({len(torn)} bytes) of {active.name} was set aside "
                f"into {aside.name}"
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
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    self._write_state(clean=True)
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
                notice = self._check_files()
            except AuditLogError as e:
                self._fail(OSError(errno.EPERM, str(e)))
                self._lost += len(events)
                return [False] * len(events)
            except OSError as e:
                self._fail(e)
                self._lost += len(events)
                return [False] * len(events)
            assert self._fd is not None
            start = (self._size, self._seq, self._prev, self._failing, self._failing_since)
            results: list[bool] = []
            if notice is not None:
                self._write_event(notice)
            for event in events:
                ok = (
                    self._failing is None or self._write_event(self._failure_notice())
                ) and self._write_event(event)
                if not ok:
                    self._lost += 1
                results.append(ok)
            written = sum(results)
            if (written or notice is not None) and not self._sync(start):
                self._lost += written
                results = [False] * len(events)
            if self._seq != start[1]:
                self._write_state(clean=False, sync=False)
                if self._size >= self.rotate_bytes:
                    self._rotate()
            return results

    def _check_files(self) -> NoticeEvent | None:
        """Do the paths still name the files this writer has open (and is the active file
        as long as it wrote it)? Deleted, replaced or changed files are set aside or left
        as found, a new one is started, and the returned notice says what was lost."""
        assert self._fd is not None and self._active is not None and self._state_fd is not None
        assert self._dir_fd is not None
        notes: list[str] = []
        details: dict[str, Any] = {}
        if not _same_file(self._dir_fd, self.directory):
            # Moved or replaced: the lock must follow the path, or a second agent could
            # take the new directory. (Raises, failing the commit, when it cannot.)
            self._relock_directory(notes, details)
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
            new = self.directory / file_name(self._seq + 1, self.clock())
            fd = os.open(new, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
            _fsync_dir(self.directory)
            os.close(self._fd)
            self._fd, self._active, self._size, self._file_first = fd, new, 0, self._seq + 1
            notes[-1] += f"; writing goes on in {new.name}"
            self._integrity = f"{format_timestamp(self.clock())}: {notes[-1]}"
        state_path = self.directory / STATE_NAME
        if not _same_file(self._state_fd, state_path):
            aside = self._set_aside(state_path, "replaced")
            fd = os.open(state_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
            os.close(self._state_fd)
            self._state_fd = fd
            self._write_state(clean=False)
            notes.append(
                f"{STATE_NAME} was deleted or replaced under the agent"
                + (f" (set aside into {aside})" if aside else "")
                + "; it was rewritten from the writer's own anchor"
            )
            details["state_rewritten"] = True
        if not notes:
            return None
        reason = "; ".join(notes)
        self._mirror("warning", f"audit log: {reason}")
        return NoticeEvent(
            action="audit-recovery",
            outcome="failure" if set(details) - NO_GAP_DETAILS else "success",
            reason=reason,
            severity="warning",
            details=details,
            time=self.clock(),
        )

    def _relock_directory(self, notes: list[str], details: dict[str, Any]) -> None:
        fd = os.open(self.directory, os.O_RDONLY | _DIRECTORY)
        try:
            self._check_directory(fd, notes, details)
        except BaseException:
            os.close(fd)
            raise
        assert self._dir_fd is not None
        os.close(self._dir_fd)
        self._dir_fd = fd

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
        if self._failing is not None:
            self._failing = self._failing_since = None
            self._lost = 0
        self._seq, self._prev = seq, digest
        if self._native is not None:
            level = "warning" if record.get("event.outcome") == "failure" else "info"
            self._mirror(level, f"{summary_line(record)} [seq {seq}]")
        return True

    def _sync(self, start: tuple[int, int, str, str | None, float | None]) -> bool:
        """One fdatasync for the commit; if it fails, the commit's records are cut off
        again (none of them may count as written) and the chain goes back to ``start``."""
        assert self._fd is not None
        if not self._fsync:
            return True
        try:
            os.fdatasync(self._fd)
        except OSError as e:
            size, seq, prev, failing, since = start
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            self._size = size
            self._seq, self._prev = seq, prev
            self._failing, self._failing_since = failing, since
            self._fail(e)
            return False
        return True

    def _write_state(self, *, clean: bool, sync: bool = True) -> None:
        assert self._state_fd is not None and self._active is not None
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
            os.pwrite(self._state_fd, encode_state_slot(state), (self._generation % 2) * STATE_SLOT)
            if sync and self._fsync:
                os.fdatasync(self._state_fd)
            self.state_problem = None
        except OSError as e:
            # The record itself is durable; only the tail anchor lags. Say so in status.
            self.state_problem = f"{STATE_NAME}: {e.strerror or e}"

    def _rotate(self) -> None:
        """Start the next file; the chain simply continues into it."""
        assert self._fd is not None
        new = self.directory / file_name(self._seq + 1, self.clock())
        try:
            fd = os.open(new, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
            _fsync_dir(self.directory)
        except OSError as e:
            if e.errno != errno.EEXIST:
                self.state_problem = f"rotation to {new.name} failed: {e.strerror or e}"
            return  # keep appending to the current file; the next commit tries again
        os.close(self._fd)
        self._fd, self._active, self._size, self._file_first = fd, new, 0, self._seq + 1
        self._write_state(clean=False)
        self._retain()

    def _retain(self) -> None:
        """Delete the oldest rotated files beyond ``keep_files``, moving the anchor first
        (so a crash in between leaves an extra old file, never a missing one)."""
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
