"""``pullgate audit``: read, verify and export the audit log.

``tail`` prints the last records as one-liners (or as stored with ``--json``) and follows
rotation with ``-f``; ``verify`` exits 0 when the chain is intact from the anchored start
to the anchored end, 1 naming the first bad line (file, line number, why), 2 when there is
no log to read, 3 when a busy writer kept changing the log through every attempt (no
verdict: try again); ``export`` prints the stored lines (hashes included, so the SIEM can
re-check them) whose ``@timestamp`` lies in ``[--since, --until)``.
Reading never takes the writer's lock: the agent keeps writing meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.config.parse import ConfigError
from agent.config.sources import load_managed_config
from agent.core.audit import FILE_RE, STATE_NAME, format_timestamp, parse_line, summary_line
from agent.daemon.audit_log import default_audit_dir
from agent.daemon.audit_verify import chain_files, verify_directory

EXIT_OK = 0
EXIT_BAD = 1
EXIT_USAGE = 2
EXIT_UNSTABLE = 3
"""``verify`` only: the log kept changing under a busy writer through every attempt; no
verdict either way (not "NOT intact"): run it again."""

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_TS_START = len(b'{"@timestamp":"')
_TS_END = _TS_START + len("2026-01-01T00:00:00.000Z")
_POLL_SECONDS = 0.2


class AuditCommandError(Exception):
    """Input or environment that makes the command impossible (exit 2)."""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "audit",
        help="read, verify and export the audit log",
        description="Read, verify and export the tamper-evident audit log.",
    )
    actions = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", metavar="DIR", help="audit directory (default: as configured)")
        p.add_argument("--config", metavar="FILE", help="managed config to read")

    tail = actions.add_parser("tail", help="print the last records")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    tail.add_argument("--json", action="store_true", help="print records as stored")
    tail.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="default 10")
    common(tail)
    tail.set_defaults(run=run_tail)

    check = actions.add_parser(
        "verify",
        help="prove the hash chain intact, or name the first bad line",
        description="Exit 0: intact; 1: NOT intact, the first bad line (file, line, why); "
        "2: no log; 3: the log kept changing under a busy writer (try again).",
    )
    common(check)
    check.set_defaults(run=run_verify)

    export = actions.add_parser(
        "export",
        help="print records in a time range as JSON lines (for SIEM import)",
        description="T is RFC 3339 (2026-05-01T00:00:00Z) or relative to now (90m, 24h, 7d).",
    )
    export.add_argument("--since", metavar="T", help="first time included (default: all)")
    export.add_argument("--until", metavar="T", help="first time excluded (default: now)")
    common(export)
    export.set_defaults(run=run_export)


def parse_time(text: str, now: datetime) -> datetime:
    """RFC 3339 with an offset, ``now``, or an age such as ``24h``."""
    m = _RELATIVE.match(text.strip())
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    if text.strip() == "now":
        return now
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AuditCommandError(
            f"not a time: {text!r} (use RFC 3339 like 2026-05-01T00:00:00Z, or 24h, 7d)"
        ) from None
    if t.tzinfo is None:
        raise AuditCommandError(f"time {text!r} has no offset: add Z or +HH:MM")
    return t.astimezone(UTC)


def audit_dir(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    try:
        config = load_managed_config(json_path=Path(args.config) if args.config else None)
    except ConfigError as e:
        raise AuditCommandError(str(e)) from e
    if config is not None and config.audit_dir is not None:
        return config.audit_dir
    return default_audit_dir()


def _files(directory: Path) -> list[Path]:
    """The files ``verify`` covers: never look-alikes another user planted (symlinks,
    FIFOs, files the directory's owner does not own), nor files before the state's base
    (outside the anchored chain): tail and export must not read what verify does not."""
    try:
        return chain_files(directory)
    except FileNotFoundError:
        raise AuditCommandError(f"no audit log in {directory}") from None
    except OSError as e:
        raise AuditCommandError(f"cannot read {directory}: {e.strerror or e}") from None


def _guard(run: Any, args: argparse.Namespace) -> int:
    try:
        result: int = run(args)
        return result
    except AuditCommandError as e:
        print(f"pullgate audit {args.audit_command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `pullgate audit export | head`: the reader is gone, which is fine.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


# --------------------------------------------------------------------------- tail


def _last_lines(path: Path, n: int) -> list[bytes]:
    """The last ``n`` whole lines of a file, read from the end."""
    if n <= 0:
        return []
    with path.open("rb") as f:
        pos = f.seek(0, os.SEEK_END)
        buf = b""
        while pos > 0 and buf.count(b"\n") <= n:
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
    lines = buf.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()  # a line being written (or torn): not a record yet
    if pos > 0 and lines:
        lines.pop(0)  # may start mid-line
    return lines[-n:]


def _whole_lines_end(path: Path) -> int:
    """Where following starts: after the last whole line (a record being written now
    is printed once it is complete)."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - (1 << 16)))
        tail = f.read()
    return size - (len(tail) - tail.rfind(b"\n") - 1)


def _show(line: bytes, as_json: bool) -> str:
    text = line.decode("utf-8", "replace").rstrip("\n")
    if as_json:
        return text
    try:
        return summary_line(parse_line(line))
    except ValueError:
        return f"(unreadable line) {text[:200]}"


def run_tail(args: argparse.Namespace) -> int:
    return _guard(_tail, args)


def _tail(args: argparse.Namespace) -> int:
    directory = audit_dir(args)
    files = _files(directory)
    wanted: deque[bytes] = deque(maxlen=max(0, args.lines))
    for path in reversed(files):
        need = wanted.maxlen - len(wanted) if wanted.maxlen else 0
        if need <= 0:
            break
        try:
            last = _last_lines(path, need)
        except FileNotFoundError:
            continue  # retention removed it since the listing: it held the oldest lines
        for line in reversed(last):
            wanted.appendleft(line)
    for line in wanted:
        print(_show(line, args.json))
    sys.stdout.flush()
    if not args.follow:
        return EXIT_OK
    current = files[-1] if files else None
    offset = _whole_lines_end(current) if current else 0
    pending = b""

    def drain() -> bool:
        nonlocal offset, pending
        if current is None:
            return False
        try:
            with current.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            return False  # retention removed it; the loop moves on to the next file
        offset += len(chunk)
        *whole, pending = (pending + chunk).split(b"\n")
        for line in whole:
            print(_show(line + b"\n", args.json), flush=True)
        return bool(whole)

    try:
        while True:
            if drain():
                continue
            files = _files(directory)
            later = [p for p in files if current is None or _rank(p) > _rank(current)]
            if later:
                # Rotation: the writer finished the old file before creating the next;
                # read what it wrote since our last look, then move on.
                drain()
                current, offset, pending = later[0], 0, b""
                continue
            time.sleep(_POLL_SECONDS)
    except KeyboardInterrupt:
        return EXIT_OK


def _rank(path: Path) -> int:
    """A file's place in the chain: its first sequence, from its name."""
    m = FILE_RE.match(path.name)
    return int(m.group(2)) if m else 0


# --------------------------------------------------------------------------- verify


def run_verify(args: argparse.Namespace) -> int:
    return _guard(_verify, args)


def _verify(args: argparse.Namespace) -> int:
    directory = audit_dir(args)
    try:
        # A consistent snapshot against a live writer (see verify_directory).
        checked = verify_directory(directory)
    except FileNotFoundError:
        raise AuditCommandError(f"no audit log in {directory}") from None
    except OSError as e:
        raise AuditCommandError(f"cannot read {directory}: {e.strerror or e}") from e
    result, state = checked.result, checked.state
    if not checked.stable:
        print(
            f"pullgate audit verify: could not get a stable snapshot of a log that is being "
            f"written (try again): {directory} was still changing after "
            f"{checked.attempts} attempt(s); this is not a verdict either way"
        )
        return EXIT_UNSTABLE
    if not checked.files and state is None and result.first_bad is None:
        raise AuditCommandError(f"no audit log in {directory}")
    for name in checked.foreign:
        print(
            f"{directory / name}:0: ignored: not written by the agent (another owner, a "
            "symlink or not a regular file)"
        )
    for name in result.before_base:
        print(
            f"{directory / name}:0: not verified (before the chain's base "
            f"{state.base_file if state else '?'}): outside the anchored chain; tail and "
            "export skip it"
        )
    if result.first_bad is not None:
        bad = result.first_bad
        print(f"{directory / bad.file}:{bad.line}: {bad.reason}")
        print(
            f"pullgate audit verify: the audit log in {directory} is NOT intact "
            f"({result.records} record(s) verified before this line)"
        )
        return EXIT_BAD
    if state is None and result.records:
        print(
            f"{directory / STATE_NAME}:0: missing: the chain is intact but the end of the "
            "log cannot be proven complete without audit.state"
        )
        return EXIT_BAD
    for note in result.notes:
        kind = "gap" if note.gap else "note"
        print(
            f"{directory / note.file}:{note.line}: {kind}: {note.action} "
            f"(sequence {note.sequence}): {note.reason}"
        )
    if result.gaps:
        print(
            f"pullgate audit verify: the audit log in {directory} is NOT intact: the chain "
            f"links, but the agent recorded {len(result.gaps)} gap(s) in it (above)"
        )
        return EXIT_BAD
    span = f"sequence {result.first_sequence}-{result.last_sequence}" if result.records else "empty"
    print(
        f"pullgate audit verify: intact: {result.records} record(s) ({span}) in "
        f"{result.files} file(s) in {directory}, end anchored by {STATE_NAME}"
    )
    return EXIT_OK


# --------------------------------------------------------------------------- export


def run_export(args: argparse.Namespace) -> int:
    return _guard(_export, args)


def _export(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else now
    if since is not None and since >= until:
        raise AuditCommandError("--since must be before --until")
    low = format_timestamp(since.timestamp()).encode() if since else b""
    high = format_timestamp(until.timestamp()).encode()
    out = sys.stdout.buffer
    count = 0
    for path in _files(audit_dir(args)):
        try:
            f = path.open("rb", buffering=1 << 20)
        except FileNotFoundError:
            continue  # retention removed the oldest file since the listing
        with f:
            for line in f:
                stamp = line[_TS_START:_TS_END]
                if low <= stamp < high and line.endswith(b"\n"):
                    out.write(line)
                    count += 1
    out.flush()
    print(
        json.dumps(
            {"exported": count, "since": since and since.isoformat(), "until": until.isoformat()}
        ),
        file=sys.stderr,
    )
    return EXIT_OK
