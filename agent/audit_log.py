"""The audit log writer: the one process that appends, fsyncs, rotates and recovers.

Records come from ``agent.audit`` (pure); this module owns the files:

- ``audit-<UTC time>-<first sequence>.jsonl``: the records, one line each, appended with
  one ``write`` and an ``fdatasync`` per record. The newest file is the active one.
- ``audit.state``: two 512-byte checksummed slots written alternately with ``pwrite``
  after each record (a torn slot leaves the other one): the last sequence and hash (so a
  cut tail is detected), the oldest retained file with its first prev (the chain's
  anchor after retention), and a clean-shutdown flag. It is written only *after* the
  record's fdatasync, so it never runs ahead of the durable log. It is fdatasynced itself
  only on open, rotation, retention and close: a second fsync per record would halve the
  rate, and a kill or a tamperer still sees the page cache; only a power loss can leave
  it a few seconds behind, and ``verify`` accepts a log longer than its state.
  It is also the writer's lock (``flock``): one writer per directory.
- ``<file>.<time>.torn``: a half-written last line found on open, set aside as evidence.

A failed write (disk full, read-only, permissions) cuts any partial line back off, so the
file stays whole records; ``append`` returns False and ``failing`` says why, and the agent
applies ``audit_failure``. Each later append tries again; the first that succeeds is
preceded by an ``audit-failure`` record saying what was lost and when.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.audit import (
    GENESIS,
    STATE_NAME,
    STATE_SLOT,
    AuditState,
    decode_state,
    encode_line,
    encode_state_slot,
    file_name,
    format_timestamp,
    order_files,
    parse_line,
    record_for,
    summary_line,
)
from agent.config import AuditFailure
from agent.sink import Event, NoticeEvent

__all__ = ["AuditLog", "AuditLogError", "default_audit_dir", "read_state"]

_MIB = 1024 * 1024
_TAIL_CHUNK = 64 * 1024


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


def read_state(directory: Path) -> AuditState | None:
    """The writer's ``audit.state`` (read it *before* listing files, so a record written
    meanwhile makes the log longer than the state, never shorter)."""
    try:
        return decode_state((directory / STATE_NAME).read_bytes())
    except FileNotFoundError:
        return None


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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._state_fd: int | None = None
        self._active: Path | None = None
        self._size = 0
        self._seq = 0
        self._prev = GENESIS
        self._base: tuple[str, int, str] = ("", 1, GENESIS)
        self._generation = 0
        self._failing: str | None = None
        self._failing_since: float | None = None
        self._lost = 0
        self.state_problem: str | None = None
        self.recovered: str | None = None  # what open() found and noted, if anything
        self._recovery_details: dict[str, Any] = {}

    # -- status -------------------------------------------------------------------------

    @property
    def failing(self) -> str | None:
        """Why the last append could not be written, until one succeeds again."""
        return self._failing

    @property
    def healthy(self) -> bool:
        return self._fd is not None and self._failing is None

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
        """For ``pullgate status`` and the control API."""
        return {
            "dir": str(self.directory),
            "file": str(self._active) if self._active else None,
            "sequence": self._seq,
            "healthy": self.healthy,
            "failing": self._failing,
            "failing_since": (
                format_timestamp(self._failing_since) if self._failing_since else None
            ),
            "lost_records": self._lost,
            "audit_failure": str(self.failure_mode),
            "state_problem": self.state_problem,
        }

    # -- lifecycle ----------------------------------------------------------------------

    def open(self) -> AuditLog:
        """Take the writer lock, find the active file, recover from a crash, note it."""
        with self._lock:
            if self._fd is not None:
                return self
            try:
                self._open_locked()
            except OSError as e:
                self._close_fds()
                raise AuditLogError(f"cannot open the audit log in {self.directory}: {e}") from e
        if self.recovered:
            self.append(
                NoticeEvent(
                    action="audit-recovery",
                    outcome="success",
                    reason=self.recovered,
                    severity="warning",
                    details=self._recovery_details,
                    time=self.clock(),
                )
            )
        return self

    def _open_locked(self) -> None:
        d = self.directory
        if not d.is_dir():
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        self._state_fd = os.open(d / STATE_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        if sys.platform != "win32":
            import fcntl  # noqa: PLC0415 - POSIX only

            try:
                fcntl.flock(self._state_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AuditLogError(
                    f"another writer holds the audit log in {d} (is a second agent running?)"
                ) from None
        state = decode_state(os.pread(self._state_fd, 2 * STATE_SLOT, 0))
        if state is not None:
            self._generation = state.generation
        files = order_files(d.iterdir())
        notes: list[str] = []
        details: dict[str, Any] = {}
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
            notes.append("audit.state was missing and has been recreated")
            details["state_recreated"] = True
        if files:
            self._active = files[-1]
        else:
            self._active = d / file_name(self._seq + 1, self.clock())
        self._fd = os.open(self._active, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        if not files:
            _fsync_dir(d)
        if not self._base[0] or (state is None and files):
            self._base = self._base_of(order_files(d.iterdir()))
        self._write_state(clean=False)
        self._recovery_details = details
        self.recovered = "; ".join(notes) if notes else None
        self._retain()

    def _recover_tail(
        self, files: list[Path], notes: list[str], details: dict[str, Any]
    ) -> tuple[int, str] | None:
        """Set a torn last line aside; return the last whole record's (sequence, hash)."""
        active = files[-1]
        end, torn, _ = _tail(active)
        if torn:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
            aside = active.with_name(f"{active.name}.{stamp}.torn")
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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

    def _base_of(self, files: list[Path]) -> tuple[str, int, str]:
        if not files:
            return ("", self._seq + 1, self._prev)
        link = _first_link(files[0])
        if link is None:
            return (files[0].name, self._seq + 1, self._prev)
        return (files[0].name, link[0], link[1])

    def close(self) -> None:
        """Mark the log cleanly closed and release the lock."""
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    self._write_state(clean=True)
            self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._fd, self._state_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._state_fd = None

    def __enter__(self) -> AuditLog:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        self.append(event)

    def append(self, event: Event) -> bool:
        """Write one record durably. False when it could not be written (see ``failing``)."""
        with self._lock:
            if self._fd is None:
                raise RuntimeError("AuditLog.append() before open()")
            if self._failing is not None and not self._write_event(self._failure_notice()):
                self._lost += 1
                return False
            if not self._write_event(event):
                self._lost += 1
                return False
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

    def _write_event(self, event: Event) -> bool:
        assert self._fd is not None and self._active is not None
        seq = self._seq + 1
        record = record_for(event, sequence=seq, host=self.host, prev_hash=self._prev)
        line, digest = encode_line(record)
        try:
            self._write_line(self._fd, line)
        except OSError as e:
            if self._failing is None:
                self._failing_since = self.clock()
                self._mirror("warning", f"audit log write failed: {self._active}: {e}")
            self._failing = f"{self._active.name}: {e.strerror or e}"
            return False
        if self._failing is not None:
            self._failing = self._failing_since = None
            self._lost = 0
        self._seq, self._prev = seq, digest
        self._write_state(clean=False, sync=False)
        if self._native is not None:
            level = "warning" if record.get("event.outcome") == "failure" else "info"
            self._mirror(level, f"{summary_line(record)} [seq {seq}]")
        if self._size >= self.rotate_bytes:
            self._rotate()
        return True

    def _write_line(self, fd: int, line: bytes) -> None:
        start = self._size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync:
                os.fdatasync(fd)
        except OSError:
            # Cut a partial line back off: the file must stay a sequence of whole records.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
        self._size = start + len(line)

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
            fd = os.open(new, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
            _fsync_dir(self.directory)
        except OSError as e:
            if e.errno != errno.EEXIST:
                self.state_problem = f"rotation to {new.name} failed: {e.strerror or e}"
            return  # keep appending to the current file; the next append tries again
        os.close(self._fd)
        self._fd, self._active, self._size = fd, new, 0
        self._write_state(clean=False)
        self._retain()

    def _retain(self) -> None:
        """Delete the oldest rotated files beyond ``keep_files``, moving the anchor first
        (so a crash in between leaves an extra old file, never a missing one)."""
        files = order_files(self.directory.iterdir())
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
