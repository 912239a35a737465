"""The audit record and its hash chain: pure functions from events to bytes and back.

One record is one line of flat ECS fields (``event.action``, ``user.name``...), which
Filebeat's ndjson parser reads with ``expand_keys: true``. The line is the record's
canonical JSON (sorted keys, compact separators, ASCII-escaped so it is valid UTF-8
whatever a process name holds) with ``"event.hash"`` appended as the *last* field::

    line = canonical_json(record)[:-1] + b',"event.hash":"' + hex + b'"}' + b"\\n"
    hex  = sha256(raw_bytes(prev_hash) + canonical_json(record)).hexdigest()

so verifying a line is a bytes operation (cut the fixed 82-byte tail, put back ``}``,
hash): no JSON is parsed on the fast path, and a million records verify in seconds.
``pullgate.chain.prev`` repeats the previous hash inside the record, so a broken link
can be told apart from an edited line. The first record ever has prev = 64 zeros; the
chain runs on across rotated files.

What the chain alone cannot show is a cut *tail* (the last lines removed) or a removed
*oldest* file. The writer therefore keeps ``audit.state`` (see ``AuditState``): the last
sequence and hash, fsynced after each record, and the first retained file with its first
sequence and prev (the anchor that replaces the zeros once retention deleted files).
``verify_chain`` takes that state and checks both ends against it.

This is tamper-*evident*, not tamper-proof: whoever can rewrite every file and the state
can forge a consistent log. Shipping records to a SIEM (``pullgate audit export``) is
what pins history outside the machine.

Pure: no file is opened here. ``verify_chain`` reads each file's lines through the
:class:`LogFile` its caller hands it; ``agent.daemon.audit_verify`` opens the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, Final, Protocol, TypeVar

from agent.core.events import DecisionEvent, Event, NoticeEvent, PolicyEvent
from agent.core.peer import PeerInfo
from agent.core.redaction import redact_details, redact_text

__all__ = [
    "GENESIS",
    "NO_GAP_DETAILS",
    "AuditNote",
    "AuditState",
    "BadLine",
    "LogFile",
    "VerifyResult",
    "canonical_json",
    "encode_line",
    "file_name",
    "format_timestamp",
    "order_files",
    "parse_line",
    "record_for",
    "summary_line",
    "verify_chain",
]

GENESIS: Final = "0" * 64
"""The ``pullgate.chain.prev`` of the first record ever written."""

HASH_HEAD: Final = b',"event.hash":"'
_TAIL_LEN: Final = len(HASH_HEAD) + 64 + 3  # ,"event.hash":"<64 hex>"}\n
_SEQ_KEY: Final = b',"event.sequence":'
_PREV_KEY: Final = b',"pullgate.chain.prev":"'

FILE_RE: Final = re.compile(r"^audit-(\d{8}T\d{6}Z)-(\d{12})\.jsonl$")
STATE_NAME: Final = "audit.state"

# Event kinds (ECS ``event.kind``): a bypass suspicion is something IT must look at.
_ALERT_ACTIONS: Final = frozenset({"bypass-suspected"})
# ECS categorisation of notices, by action (exact, then by prefix): only values ECS
# defines, each type among those ECS expects for its category.
_NOTICE_CATEGORY: Final[dict[str, tuple[str, str]]] = {
    "agent-start": ("process", "start"),
    "sign-in": ("authentication", "start"),
    "sign-out": ("authentication", "end"),
    "identity-expired": ("authentication", "end"),
    "agent-stop": ("process", "end"),
    "bypass-suspected": ("intrusion_detection", "info"),
    "audit-": ("file", "info"),
    "policy-cache-modified": ("configuration", "change"),
    "policy-": ("configuration", "info"),
    "config-": ("configuration", "change"),
    "docker-": ("configuration", "change"),
}
_NOTICE_DEFAULT: Final = ("host", "info")


# --------------------------------------------------------------------------- records


def format_timestamp(t: float) -> str:
    """RFC 3339 in UTC with milliseconds: fixed width, so text order is time order."""
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def record_for(event: Event, *, sequence: int, host: str, prev_hash: str) -> dict[str, Any]:
    """The ECS record of one sink event, without ``event.hash`` (``encode_line`` adds it).

    ``event.outcome`` says whether the client's operation was let through: ``allow`` and
    ``would_deny`` (monitor mode) are ``success``, ``deny`` is ``failure``; the policy's
    verdict itself is ``pullgate.decision``. Fields without a value are left out.
    """
    record: dict[str, Any] = {
        "@timestamp": format_timestamp(event.time),
        "event.sequence": sequence,
        "event.action": event.action,
        "event.module": "pullgate",
        "event.dataset": "pullgate.audit",
        "host.name": host,
        "pullgate.chain.prev": prev_hash,
    }
    if isinstance(event, DecisionEvent):
        _decision_fields(record, event)
    elif isinstance(event, PolicyEvent):
        _policy_fields(record, event)
    else:
        _notice_fields(record, event)
    return {k: v for k, v in record.items() if v is not None and v not in ([], {})}


def _decision_fields(record: dict[str, Any], e: DecisionEvent) -> None:
    method, _, path = e.endpoint.partition(" ")
    record.update(
        {
            "event.kind": "event",
            # ECS: intrusion_detection expects allowed/denied (package does not).
            "event.category": ["intrusion_detection"],
            "event.type": ["denied"] if e.decision == "deny" else ["allowed"],
            "event.outcome": "failure" if e.decision == "deny" else "success",
            "event.reason": e.reason,
            "pullgate.decision": e.decision,
            "container.image.name": e.image,
            "pullgate.reference.original": e.input,
            "pullgate.category": e.category,
            "pullgate.detail": e.detail,
            "pullgate.endpoint": e.endpoint,
            "http.request.method": method or None,
            "url.path": path or None,
            "rule.id": e.rule,
            "rule.version": str(e.policy_serial),
            "rule.ruleset": e.policy,
            "message": e.message or e.reason,
        }
    )
    _peer_fields(record, e.peer)
    record["pullgate.identity"] = e.identity


def _policy_fields(record: dict[str, Any], e: PolicyEvent) -> None:
    record.update(
        {
            "event.kind": "event",
            "event.category": ["configuration"],
            "event.type": ["change"] if e.outcome == "success" else ["info"],
            "event.outcome": e.outcome,
            "event.reason": e.reason,
            "rule.version": None if e.serial is None else str(e.serial),
            "organization.name": e.org,
            "pullgate.policy.source": redact_text(e.source),
            "pullgate.policy.state": e.state,
            "message": e.reason,
        }
    )


def _notice_fields(record: dict[str, Any], e: NoticeEvent) -> None:
    category, kind = _notice_category(e.action)
    record.update(
        {
            "event.kind": "alert" if e.action in _ALERT_ACTIONS else "event",
            "event.category": [category],
            "event.type": [kind],
            "event.outcome": e.outcome,
            "event.reason": e.reason,
            "log.level": e.severity,
            "pullgate.details": redact_details(e.details),
            "message": e.reason,
        }
    )
    if e.peer is not None:
        _peer_fields(record, e.peer)
    if category == "authentication":  # sign-in, sign-out, expiry: whose identity
        record["pullgate.identity"] = e.details.get("email")


def _notice_category(action: str) -> tuple[str, str]:
    found = _NOTICE_CATEGORY.get(action)
    if found is not None:
        return found
    for prefix, value in _NOTICE_CATEGORY.items():
        if prefix.endswith("-") and action.startswith(prefix):
            return value
    return _NOTICE_DEFAULT


def _peer_fields(record: dict[str, Any], peer: PeerInfo) -> None:
    parent = peer.parents[0] if peer.parents else None
    record.update(
        {
            "user.name": peer.user,
            "user.id": None if peer.uid is None else str(peer.uid),
            "group.id": None if peer.gid is None else str(peer.gid),
            "pullgate.identity": None,  # the signed-in identity: set by the caller
            "process.pid": peer.pid,
            "process.name": peer.name,
            "process.executable": peer.executable,
            "process.command_line": shlex.join(peer.command_line) if peer.command_line else None,
            "process.args": list(peer.command_line),
            "process.parent.pid": parent.pid if parent else None,
            "process.parent.name": parent.name if parent else None,
            "process.parent.executable": parent.executable if parent else None,
            "pullgate.process.ancestors": [
                {
                    k: v
                    for k, v in (("pid", p.pid), ("name", p.name), ("executable", p.executable))
                    if v is not None
                }
                for p in peer.parents
            ],
        }
    )


def canonical_json(record: dict[str, Any]) -> bytes:
    """Sorted keys, compact separators, ASCII escapes (valid UTF-8 even for odd names)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode_line(record: dict[str, Any]) -> tuple[bytes, str]:
    """(the line to append, its ``event.hash``), chained to ``pullgate.chain.prev``."""
    body = canonical_json(record)
    digest = hashlib.sha256(bytes.fromhex(record["pullgate.chain.prev"]) + body).hexdigest()
    return body[:-1] + HASH_HEAD + digest.encode() + b'"}\n', digest


def parse_line(line: bytes) -> dict[str, Any]:
    """One stored line as a dict (raises ``ValueError`` on anything else)."""
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def summary_line(record: dict[str, Any]) -> str:
    """One human line: time, decision, image, user, process (and parents), reason."""
    what = record.get("pullgate.decision") or record.get("event.outcome") or "-"
    subject = record.get("container.image.name") or record.get("rule.id") or ""
    chain = [record.get("process.name")] + [
        a.get("name") for a in record.get("pullgate.process.ancestors", [])[:3]
    ]
    names = [str(n) for n in chain if n]
    parts = [
        record.get("@timestamp", "?"),
        f"{what:<10}",
        f"{record.get('event.action', '?'):<16}",
        subject,
    ]
    if record.get("user.name"):
        parts.append(f"user={record['user.name']}")
    if names:
        parts.append(f"process={'<-'.join(names)}")
    reason = record.get("event.reason") or record.get("message") or ""
    return " ".join(p for p in parts if p) + (f": {reason}" if reason else "")


# --------------------------------------------------------------------------- files


def file_name(first_sequence: int, t: float) -> str:
    """``audit-<UTC time>-<first sequence>.jsonl``: the sequence orders the files."""
    stamp = datetime.fromtimestamp(t, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"audit-{stamp}-{first_sequence:012d}.jsonl"


_P = TypeVar("_P", bound=PurePath)


def order_files(paths: Iterable[_P]) -> list[_P]:
    """Audit files (not ``.torn`` or other names) in chain order."""
    found = []
    for p in paths:
        m = FILE_RE.match(p.name)
        if m:
            found.append((int(m.group(2)), p))
    return [p for _, p in sorted(found)]


@dataclass(frozen=True)
class AuditState:
    """The writer's anchors, kept in ``audit.state`` beside the files.

    ``sequence``/``hash``: the last record written (0/``GENESIS`` before any). The log
    must reach at least this far, so removing the last lines is detected; it may be one
    record ahead (a crash between the record's fsync and the state's).
    ``base_*``: the oldest retained file, its first sequence and that record's prev: the
    trusted start of the chain once retention has deleted older files.
    ``clean``: the writer closed the log itself; ``False`` on open means a crash.
    """

    sequence: int
    hash: str
    file: str
    base_file: str
    base_sequence: int
    base_prev: str
    clean: bool = False
    generation: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "gen": self.generation,
            "seq": self.sequence,
            "hash": self.hash,
            "file": self.file,
            "base_file": self.base_file,
            "base_seq": self.base_sequence,
            "base_prev": self.base_prev,
            "clean": self.clean,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditState:
        return cls(
            sequence=int(data["seq"]),
            hash=str(data["hash"]),
            file=str(data["file"]),
            base_file=str(data["base_file"]),
            base_sequence=int(data["base_seq"]),
            base_prev=str(data["base_prev"]),
            clean=bool(data["clean"]),
            generation=int(data["gen"]),
        )


STATE_SLOT: Final = 512


def encode_state_slot(state: AuditState) -> bytes:
    """One 512-byte slot: checksum, JSON, padding. Two slots alternate, so a torn write
    of one leaves the other (one record older) readable."""
    payload = json.dumps(state.to_json(), sort_keys=True, separators=(",", ":")).encode()
    slot = hashlib.sha256(payload).hexdigest().encode() + b" " + payload
    if len(slot) > STATE_SLOT - 1:
        raise ValueError("audit state does not fit its slot")
    return slot.ljust(STATE_SLOT - 1) + b"\n"


def decode_state(data: bytes) -> AuditState | None:
    """The newest intact slot of an ``audit.state`` file, or ``None``."""
    best: AuditState | None = None
    for i in range(0, len(data) - STATE_SLOT + 1, STATE_SLOT):
        slot = data[i : i + STATE_SLOT]
        checksum, _, payload = slot.partition(b" ")
        payload = payload.rstrip()
        if hashlib.sha256(payload).hexdigest().encode() != checksum:
            continue
        try:
            state = AuditState.from_json(json.loads(payload))
        except (ValueError, KeyError, TypeError):
            continue
        if best is None or state.generation > best.generation:
            best = state
    return best


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class BadLine:
    """The first line that breaks the chain: file, 1-based line number, why."""

    file: str
    line: int
    reason: str


@dataclass(frozen=True)
class AuditNote:
    """A record the writer made about its own log (``audit-recovery``, ``audit-failure``).

    ``gap``: the writer found records or anchors missing (state recreated, records or a
    file gone, a file replaced under it): the log cannot be called intact across it. A
    crash's torn line or unclean shutdown and a write failure are notes without a gap.
    """

    file: str
    line: int
    sequence: int
    action: str
    reason: str
    gap: bool


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    files: int
    first_sequence: int | None = None
    last_sequence: int | None = None
    tail_anchored: bool = False
    first_bad: BadLine | None = None
    notes: tuple[AuditNote, ...] = ()
    last_hash: str | None = None
    before_base: tuple[str, ...] = ()
    """Files that sort before the state's base file: not part of the anchored chain, not
    verified (retention moved the anchor and had not yet deleted them, or someone put
    them there); readers (tail, export) skip them too."""

    @property
    def gaps(self) -> tuple[AuditNote, ...]:
        return tuple(n for n in self.notes if n.gap)


class _ChainBreakError(Exception):
    """``_verify_file``' stop: the 1-based line, a short code (``torn``, ``malformed``,
    ``hash``, ``sequence``, ``anchor``), and the chain position it expected there."""

    def __init__(self, line: int, reason: str, expect_seq: int, prev: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason
        self.expect_seq = expect_seq
        self.prev = prev


def _sequence_of(line: bytes) -> int | None:
    i = line.find(_SEQ_KEY)
    if i < 0:
        return None
    start = i + len(_SEQ_KEY)
    end = line.find(b",", start)
    try:
        return int(line[start:end])
    except ValueError:
        return None


def _prev_of(line: bytes) -> str | None:
    i = line.find(_PREV_KEY)
    if i < 0:
        return None
    start = i + len(_PREV_KEY)
    return line[start : start + 64].decode("ascii", "replace")


class LogFile(Protocol):
    """One file of the log as ``verify_chain`` reads it: its name, and its lines (bytes,
    each with its newline) each time ``lines`` is entered. Opening the file is the
    caller's; ``lines`` may raise ``OSError``, which verify reports as unreadable."""

    @property
    def name(self) -> str: ...

    def lines(self) -> AbstractContextManager[Iterable[bytes]]: ...


def verify_chain(files: Sequence[LogFile], state: AuditState | None = None) -> VerifyResult:
    """Prove the chain over ``files`` (in order) intact, or name the first bad line.

    See :func:`_verify_chain`; the result also names the files before the state's base
    (``before_base``), which lie outside the anchored chain and are not verified."""
    result = _verify_chain(files, state)
    if state is None or state.sequence <= 0:
        return result
    names = [f.name for f in files]
    if state.base_file not in names:
        return result
    before = tuple(names[: names.index(state.base_file)])
    return dataclasses.replace(result, before_base=before) if before else result


def _verify_chain(files: Sequence[LogFile], state: AuditState | None) -> VerifyResult:
    """Prove the chain over ``files`` (in order) intact, or name the first bad line.

    With ``state`` the chain must start at its base (file, sequence, prev), reach its last
    sequence, and have its hash *at* that sequence even when the log runs on past it (a
    live writer is ahead of the state it last wrote; a rewritten, re-chained tail is
    not). A state the writer closed cleanly is the end: records after it were appended
    by someone else. A state whose sequence lies before the chain's start (0 over
    records, or below the base sequence - 1) anchors nothing and is reported as not the
    writer's. Without ``state`` the start is trusted as found (zeros for sequence
    1) and a cut tail cannot be seen (``tail_anchored`` is False). The writer's own
    ``audit-recovery`` records that report a gap make the result not ``ok`` (``notes``).
    """
    records = 0
    first_seq: int | None = None
    expect_seq = 1
    prev = GENESIS
    last_hash = GENESIS
    last_line: tuple[str, int] = ("", 0)
    anchor = (state.sequence, state.hash.encode()) if state is not None else (0, b"")
    marks: list[tuple[LogFile, int]] = []
    if state is not None:
        forged = _anchor_before_chain(files, state)
        if forged is not None:
            return VerifyResult(False, 0, len(files), first_bad=forged)
    if state is not None and state.sequence > 0:
        if not files:
            return VerifyResult(
                False, 0, 0, first_bad=BadLine(STATE_NAME, 0, _missing_files(state))
            )
        names = [p.name for p in files]
        if state.base_file in names:
            # Older files still present: retention moved the anchor and was about to
            # delete them (or was interrupted). They lie before the trusted start.
            files = files[names.index(state.base_file) :]
        else:
            return VerifyResult(
                False,
                0,
                len(files),
                first_bad=BadLine(
                    files[0].name,
                    1,
                    f"deleted: the oldest retained file {state.base_file} is missing "
                    f"(audit.state anchors the chain there, at sequence {state.base_sequence})",
                ),
            )
        expect_seq, prev = state.base_sequence, state.base_prev
    else:
        start = _unanchored_start(files)
        if start is not None:
            expect_seq, prev = start
    start_seq = expect_seq
    for file in files:
        found: list[int] = []
        try:
            with file.lines() as f:
                n, expect_seq, prev = _verify_file(f, expect_seq, prev, anchor, found)
        except _ChainBreakError as bad:
            done = records + bad.line - 1
            return VerifyResult(
                False,
                done,
                len(files),
                start_seq if done else None,
                bad.expect_seq - 1 if done else None,
                first_bad=BadLine(file.name, bad.line, _explain_safely(file, bad, state)),
                notes=_notes(marks + [(file, i) for i in found]),
            )
        except OSError as e:
            return VerifyResult(
                False, records, len(files), first_bad=BadLine(file.name, 0, f"unreadable: {e}")
            )
        marks += [(file, i) for i in found]
        if n:
            first_seq = start_seq
            records += n
            last_line = (file.name, n)
            last_hash = prev
    last_seq = expect_seq - 1 if records else None
    notes = _notes(marks)
    if state is not None:
        end_bad = _end_against_state(files, state, last_seq or 0, last_hash, last_line)
        if end_bad is not None:
            return VerifyResult(
                False, records, len(files), first_seq, last_seq, first_bad=end_bad, notes=notes
            )
    ok = not any(n.gap for n in notes)
    return VerifyResult(
        ok,
        records,
        len(files),
        first_seq,
        last_seq,
        state is not None,
        None,
        notes,
        last_hash if records else None,
    )


def _end_against_state(
    files: Sequence[LogFile],
    state: AuditState,
    reached: int,
    last_hash: str,
    last_line: tuple[str, int],
) -> BadLine | None:
    """Where the chain ends against ``audit.state``: cut short, edited at the anchor, or
    run on after a clean close (records the writer did not write)."""
    name, line = last_line
    if reached < state.sequence:
        if not name:
            name, line = files[-1].name, 0
        gone = "" if any(p.name == state.file for p in files) else f" ({state.file} is gone)"
        return BadLine(
            name,
            line + 1,
            f"truncated: the log ends at sequence {reached} but audit.state records "
            f"sequence {state.sequence}: {state.sequence - reached} record(s) at the "
            f"end are missing{gone}",
        )
    if reached == state.sequence and last_hash != state.hash:
        # Only reachable when the anchor check could not run (an empty state).
        return BadLine(name, line, "edited: the last record's hash differs from audit.state's")
    if state.clean and reached > state.sequence:
        extra = reached - state.sequence
        return BadLine(
            name,
            line - extra + 1,
            f"appended: {extra} record(s) after sequence {state.sequence}, where the "
            "writer closed the log (audit.state is marked clean): the agent did not "
            "write them",
        )
    return None


def _anchor_before_chain(files: Sequence[LogFile], state: AuditState) -> BadLine | None:
    """A state whose last sequence lies before the chain it anchors is not the writer's:
    the writer's state is at most a group commit behind the log, never behind its start.
    Such a state (sequence 0 over a log with records, or below the base's sequence - 1)
    would otherwise anchor nothing: the anchor hash is never passed, so a cut tail and a
    deleted oldest file would both go unseen."""
    if state.sequence > 0:
        if state.base_sequence - 1 <= state.sequence:
            return None
        oldest = state.base_sequence
    else:
        start = _unanchored_start(files)
        if start is None:
            return None  # no records: an empty log, and sequence 0 is its anchor
        oldest = start[0]
    return BadLine(
        STATE_NAME,
        0,
        f"audit.state records sequence {state.sequence}, before the oldest kept record "
        f"{oldest}: it is not the writer's anchor (the last records or the oldest files "
        "may have been removed and audit.state forged to hide it)",
    )


_NOTE_MARK: Final = b'"event.action":"audit-'
# Where a notice's event.action starts in its canonical line: right after the fixed-width
# @timestamp (a notice has no key that sorts between them), so finding the writer's own
# notes costs one comparison per line, not a search through it.
_NOTE_AT: Final = len(b'{"@timestamp":"2026-01-01T00:00:00.000Z",')
NO_GAP_DETAILS: Final = frozenset(
    {
        "unclean_shutdown",  # a crash: at most the record being written, never acknowledged
        "torn_file",
        "torn_bytes",
        "state_rewritten",  # the writer rewrote a deleted audit.state from its own anchor
        "directory_mode",  # group/world write permission taken back from the directory
        "ignored_files",  # look-alike files another user planted, never part of the chain
    }
)


def _notes(marks: Sequence[tuple[LogFile, int]]) -> tuple[AuditNote, ...]:
    """Read the writer's own notices (slow path, JSON, only for the few marked lines)."""
    if not marks:
        return ()
    notes: list[AuditNote] = []
    by_file: dict[LogFile, list[int]] = {}
    for file, line in marks:
        by_file.setdefault(file, []).append(line)
    for file, wanted in by_file.items():
        want = set(wanted)
        try:
            with file.lines() as f:
                for n, raw in enumerate(f, 1):
                    if n not in want:
                        continue
                    try:
                        record = parse_line(raw)
                    except ValueError:
                        continue
                    action = str(record.get("event.action", ""))
                    details = record.get("pullgate.details")
                    keys = set(details) if isinstance(details, dict) else set()
                    gap = action == "audit-recovery" and bool(keys - NO_GAP_DETAILS)
                    if action not in ("audit-recovery", "audit-failure"):
                        continue
                    notes.append(
                        AuditNote(
                            file.name,
                            n,
                            int(record.get("event.sequence", 0)),
                            action,
                            str(record.get("event.reason", "")),
                            gap,
                        )
                    )
        except OSError:
            continue
    return tuple(notes)


def _missing_files(state: AuditState) -> str:
    return (
        f"deleted: no audit files, but audit.state records {state.sequence} record(s) "
        f"(last in {state.file})"
    )


def _verify_file(
    lines: Iterable[bytes],
    expect_seq: int,
    prev: str,
    anchor: tuple[int, bytes],
    marks: list[int],
) -> tuple[int, int, str]:
    """The fast loop over one file's lines: bytes slicing and one sha256 per line, no JSON.

    Starts at ``expect_seq`` chained to ``prev``; returns (lines read, the next expected
    sequence, the last hash), or raises :class:`_ChainBreakError` at the first bad line.
    ``anchor`` is the state's (sequence, hash) checked where the chain passes it;
    ``marks`` collects the line numbers of the writer's own ``audit-*`` notices."""
    sha256 = hashlib.sha256
    prev_raw = bytes.fromhex(prev)
    n = 0
    head = HASH_HEAD
    anchor_seq, anchor_hash = anchor
    mark, mark_at = _NOTE_MARK, _NOTE_AT
    for n, line in enumerate(lines, 1):
        if line[-3:] != b'"}\n' or line[-_TAIL_LEN:-67] != head:
            code = "torn" if not line.endswith(b"\n") else "malformed"
            raise _ChainBreakError(n, code, expect_seq, prev_raw.hex())
        digest = sha256(prev_raw + line[:-_TAIL_LEN] + b"}")
        if digest.hexdigest().encode() != line[-67:-3]:
            raise _ChainBreakError(n, "hash", expect_seq, prev_raw.hex())
        if _sequence_of(line) != expect_seq:
            raise _ChainBreakError(n, "sequence", expect_seq, prev_raw.hex())
        if expect_seq == anchor_seq and line[-67:-3] != anchor_hash:
            raise _ChainBreakError(n, "anchor", expect_seq, prev_raw.hex())
        if line.startswith(mark, mark_at):
            marks.append(n)
        expect_seq += 1
        prev_raw = digest.digest()
    return n, expect_seq, prev_raw.hex()


def _unanchored_start(files: Sequence[LogFile]) -> tuple[int, str] | None:
    """Without audit.state, the first record's own link is the start: zeros for
    sequence 1, else whatever it names (retention deleted what came before)."""
    for file in files:
        try:
            with file.lines() as f:
                first = next(iter(f), b"")
        except OSError:
            return None
        if first:
            seq, prev = _sequence_of(first), _prev_of(first)
            if seq is None or prev is None:
                return None
            return seq, GENESIS if seq == 1 else prev
    return None


def _explain_safely(file: LogFile, bad: _ChainBreakError, state: AuditState | None) -> str:
    """``_explain``, or the fast loop's code when the file cannot be read again (retention
    deleted it meanwhile): the caller's snapshot check then sees the file gone."""
    try:
        return _explain(file, bad, state)
    except OSError as e:
        return f"{bad.reason}: the file could not be read again to say more ({e})"


def _explain(file: LogFile, bad: _ChainBreakError, state: AuditState | None = None) -> str:
    """Turn the fast loop's failure into a reason IT can act on (slow path, JSON)."""
    if bad.reason == "anchor" and state is not None:
        return (
            f"edited: the record at sequence {state.sequence} is not the one audit.state "
            "recorded (its hash differs): the records up to here were rewritten and "
            "re-chained"
        )
    with file.lines() as f:
        lines = list(f)
    line = lines[bad.line - 1]
    if bad.reason == "torn":
        return (
            f"truncated: the last line is incomplete ({len(line)} bytes, no newline): "
            "a torn write or a cut file"
        )
    expect_seq, prev = bad.expect_seq, bad.prev
    try:
        record = parse_line(line)
    except ValueError:
        return "malformed: not a JSON audit record"
    seq = record.get("event.sequence")
    stored_prev = record.get("pullgate.chain.prev")
    if not isinstance(seq, int) or not isinstance(stored_prev, str):
        return "malformed: no event.sequence or pullgate.chain.prev"
    if bad.reason == "malformed":
        return "malformed: not an audit record line (no event.hash at the end)"
    body = line[:-_TAIL_LEN] + b"}"
    try:
        self_consistent = hashlib.sha256(
            bytes.fromhex(stored_prev) + body
        ).hexdigest() == record.get("event.hash")
    except ValueError:
        self_consistent = False
    if seq < expect_seq:
        return f"reordered: sequence goes backwards (expected {expect_seq}, found {seq})"
    if seq > expect_seq:
        later = [
            i
            for i, other in enumerate(lines[bad.line :], bad.line + 1)
            if _sequence_of(other) == expect_seq
        ]
        if later:
            return (
                f"reordered: expected sequence {expect_seq}, found {seq}; "
                f"sequence {expect_seq} is at line {later[0]}"
            )
        return (
            f"deleted: expected sequence {expect_seq}, found {seq}: "
            f"{seq - expect_seq} record(s) missing before this line"
        )
    if not self_consistent:
        return "edited: the record does not match its event.hash"
    if stored_prev != prev:
        if seq == expect_seq and bad.line == 1:
            return (
                "deleted: the chain link into this file is broken (pullgate.chain.prev is "
                "not the last hash of the file before): a file or records are missing"
            )
        return (
            "edited: pullgate.chain.prev does not match the hash of the record before "
            "(that record was replaced, or records were removed)"
        )
    return "edited: the record does not match its event.hash"
