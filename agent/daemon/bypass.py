"""Bypass awareness: notice when someone reaches the Docker daemon without the shim.

A shim can be routed around (``DOCKER_HOST`` at the daemon socket, a container with the
socket mounted, an SDK configured by hand). The agent cannot prevent that, so it watches
for the traces and reports each one as a ``bypass-suspected`` notice; it never "fixes"
anything itself. Three sources of evidence:

- the daemon's own event stream: an image ``pull``, ``load``, ``import`` or ``tag`` that
  the shim did not approve (reconciled against the :class:`ApprovalLedger`, which the
  decision sink feeds with every allowed decision);
- the processes holding a connection to the daemon socket, other than dockerd,
  containerd and the agent (Linux: kernel socket diagnostics, ``agent.platform.unix_diag``,
  pair each client socket with the daemon's accepted one; ``ss -xn`` is the fallback);
- containers that mount the daemon socket (or a directory holding it).

The ledger and :class:`Reconciler` are pure (values in, findings out); the monitor is the
thin I/O edge around them.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.core.events import DecisionEvent, Event, NoticeEvent
from agent.core.peer import PeerInfo
from agent.core.reference import DOCKER_HUB_ALIASES, ReferenceError, parse_normalized_named
from agent.daemon.bus import DecisionSink
from agent.platform import docker_api
from agent.platform.docker_api import DockerAPIError
from agent.platform.peer import (
    HOLDERS_CHECKED,
    ListenerError,
    check_holders,
    describe_peer,
    process_ids,
)
from agent.platform.unix_diag import (
    SHOW_NAME,
    SHOW_PEER,
    SHOW_VFS,
    STATE_ESTABLISHED,
    UnixSocket,
    dump_unix_sockets,
    socket_holders,
)

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_WINDOW",
    "ApprovalLedger",
    "BypassMonitor",
    "DaemonImageEvent",
    "Finding",
    "Reconciler",
    "SocketClient",
    "container_socket_mounts",
    "parse_daemon_event",
    "socket_clients",
]

DEFAULT_WINDOW = 600.0
"""How long an allowed decision approves the daemon events it causes. The daemon reports a
pull when it has finished, which for a large image can be minutes after the decision; a
long window only lets the same, already approved image in again."""
DEFAULT_INTERVAL = 30.0
LISTENER_RETRY = 2.5
"""Seconds between looks at a Desktop socket whose listener was refused: once Docker
Desktop's own program serves it again, the monitor follows (and status clears) soon."""
HOLDER_RECHECK = 30.0
"""Seconds between checks of who holds a followed Desktop stream's sockets: a handover
after the connect is seen within this long (a /proc scan each time, on a thread)."""
CLOCK_SKEW = 5.0
"""Daemon event times and decision times come from the same machine's clock; a little
slack covers rounding (the daemon reports whole seconds in ``time``)."""
DECISION_GRACE = 2.0
"""Daemon events are judged this long after they arrive: a subscriber may see a decision
a moment after the daemon reports what it caused."""
TAG_GRACE = 3.0
"""A ``tag`` event is judged this long after it arrives: ``docker import`` tags before it
reports the import, so the import's verdict must be seen first."""
WATCHED_ACTIONS = ("pull", "load", "import", "tag")
ALLOWED_VERDICTS = frozenset({"allow", "would_deny"})
"""Decisions after which the request went through the shim to the daemon (monitor mode
lets ``would_deny`` through)."""
DAEMON_PROCESS_NAMES = frozenset({"dockerd", "containerd", "docker-proxy"})
DEFAULT_DAEMON_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
MAX_REMEMBERED = 4096


# --------------------------------------------------------------------------- pure core


@dataclass(frozen=True)
class DaemonImageEvent:
    """One image event from ``GET /events``: what the daemon did, to which image, when."""

    action: str  # pull | load | import | tag
    subject: str  # Actor.ID: a reference for pulls, an image ID for the others
    name: str | None  # Actor.Attributes.name: the new tag for tag events
    time: float  # seconds since the epoch
    time_nano: int = 0

    @property
    def key(self) -> tuple[str, str, str | None, int]:
        return (self.action, self.subject, self.name, self.time_nano)


def parse_daemon_event(obj: Mapping[str, Any]) -> DaemonImageEvent | None:
    """A daemon event as a value, or None if it is not an image event we reconcile."""
    if obj.get("Type") != "image":
        return None
    action = str(obj.get("Action") or obj.get("status") or "")
    if action not in WATCHED_ACTIONS:
        return None
    # The daemon's bytes are untrusted here: anything of the wrong shape is skipped, never
    # allowed to end the loop that follows the stream.
    actor = obj.get("Actor")
    actor = actor if isinstance(actor, dict) else {}
    subject = actor.get("ID") or obj.get("id") or ""
    if not isinstance(subject, str):
        return None
    attributes = actor.get("Attributes")
    attributes = attributes if isinstance(attributes, dict) else {}
    name = attributes.get("name")
    nano = obj.get("timeNano")
    seconds = obj.get("time") or 0
    if isinstance(nano, int) and not isinstance(nano, bool):
        time_nano = nano
    elif isinstance(seconds, int | float) and not isinstance(seconds, bool):
        try:
            time_nano = int(float(seconds) * 1e9)
        except (OverflowError, ValueError):
            return None
    else:
        return None
    return DaemonImageEvent(
        action=action,
        subject=subject,
        name=str(name) if isinstance(name, str) else None,
        time=time_nano / 1e9,
        time_nano=time_nano,
    )


def _keys(ref: str) -> tuple[str, set[str]] | None:
    """(repository, {"tag:T", "digest:D"}) of a reference, Docker Hub aliases folded."""
    all_tags = ref.endswith(" (all tags)")
    if all_tags:
        ref = ref[: -len(" (all tags)")]
    try:
        parsed = parse_normalized_named(ref)
    except ReferenceError:
        return None
    domain = "docker.io" if parsed.domain in DOCKER_HUB_ALIASES else parsed.domain
    name = f"{domain}/{parsed.path}"
    if all_tags:
        return name, {"*"}
    forms: set[str] = set()
    if parsed.tag is not None:
        forms.add("tag:" + parsed.tag)
    if parsed.digest is not None:
        forms.add("digest:" + parsed.digest)
    return name, forms or {"tag:latest"}


@dataclass(frozen=True)
class _Approval:
    action: str
    repository: str | None
    forms: frozenset[str]
    at: float


class ApprovalLedger:
    """What the shim let through recently: a DecisionSink subscriber, pure otherwise.

    ``was_approved`` answers whether a daemon event naming ``ref`` at time ``at`` is
    explained by an allowed decision (same repository and tag or digest, within
    ``window`` seconds before it).
    """

    def __init__(self, window: float = DEFAULT_WINDOW, max_entries: int = 100_000) -> None:
        self.window = window
        self._entries: deque[_Approval] = deque(maxlen=max_entries)
        self._image_ids: OrderedDict[str, float] = OrderedDict()

    def __call__(self, event: Event) -> None:
        if isinstance(event, DecisionEvent) and event.decision in ALLOWED_VERDICTS:
            self.approve(event.action, event.image, event.time)

    def approve(self, action: str, image: str | None, at: float) -> None:
        """Record an allowed decision (``image`` None: a setting allowed the request)."""
        keys = _keys(image) if image else None
        repository, forms = keys if keys else (None, set())
        self._entries.append(_Approval(action, repository, frozenset(forms), at))
        self._prune(at)

    def approve_image_id(self, image_id: str, at: float) -> None:
        """An image the shim let in (an approved load or import): its tags are approved."""
        self._image_ids[image_id] = at
        self._image_ids.move_to_end(image_id)
        while len(self._image_ids) > MAX_REMEMBERED:
            self._image_ids.popitem(last=False)

    def _recent(self, at: float) -> Iterable[_Approval]:
        return (
            e
            for e in reversed(self._entries)
            if e.at <= at + CLOCK_SKEW and at - e.at <= self.window + CLOCK_SKEW
        )

    def was_approved(self, ref: str, at: float) -> bool:
        keys = _keys(ref)
        if keys is None:
            return False
        repository, forms = keys
        return any(
            e.repository == repository and ("*" in e.forms or e.forms & forms)
            for e in self._recent(at)
        )

    def saw_action(self, action: str, at: float) -> bool:
        """Whether any request of ``action`` (e.g. ``image-load``) was allowed recently."""
        return any(e.action == action for e in self._recent(at))

    def image_id_approved(self, image_id: str, at: float) -> bool:
        seen = self._image_ids.get(image_id)
        return seen is not None and at - seen <= self.window + CLOCK_SKEW

    def _prune(self, now: float) -> None:
        horizon = now - self.window - 2 * CLOCK_SKEW
        while self._entries and self._entries[0].at < horizon:
            self._entries.popleft()


@dataclass(frozen=True)
class Finding:
    """One suspicion, ready to become a ``bypass-suspected`` notice."""

    key: tuple[Any, ...]  # for de-duplication
    severity: str  # warning | info
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    peer: PeerInfo | None = None

    def notice(self) -> NoticeEvent:
        return NoticeEvent(
            action="bypass-suspected",
            outcome="unknown",
            reason=self.reason,
            severity=self.severity,
            details=self.details,
            peer=self.peer,
        )


_LOAD_ACTIONS = {"load": "image-load", "import": "image-import"}
#: Requests through the shim that make the daemon tag an image (their decisions name the
#: content used, not the new name).
_TAGGING_ACTIONS = ("image-tag", "container-commit", "image-build")


def _event_details(ev: DaemonImageEvent) -> dict[str, Any]:
    return {
        "source": "daemon-events",
        "daemon_action": ev.action,
        "image": ev.name if ev.action == "tag" else ev.subject,
        "image_id": ev.subject if ev.subject.startswith("sha256:") else None,
        "event_time": ev.time,
    }


class Reconciler:
    """Daemon image events against the ledger; pure (the caller passes ``now``).

    Every event is judged ``grace`` seconds after it arrives, so a decision that reaches
    the ledger a moment after the daemon reported its effect still counts. Tags wait a
    further ``tag_grace``: an import tags before it reports itself, and an approved load
    or import approves the tags of the image it brought.
    """

    def __init__(
        self,
        approved: ApprovalLedger | Callable[[DaemonImageEvent], bool],
        *,
        grace: float = DECISION_GRACE,
        tag_grace: float = TAG_GRACE,
    ) -> None:
        self.approved = approved
        self.grace = grace
        self.tag_grace = tag_grace
        self._queue: deque[tuple[float, DaemonImageEvent]] = deque()
        self._tags: OrderedDict[str, tuple[float, list[DaemonImageEvent]]] = OrderedDict()

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._tags)

    def observe(self, ev: DaemonImageEvent, now: float) -> list[Finding]:
        """Queue ``ev``; the findings now due (with ``grace`` 0, including this one's)."""
        self._queue.append((now + self.grace, ev))
        return self.due(now)

    def due(self, now: float) -> list[Finding]:
        out: list[Finding] = []
        while self._queue and self._queue[0][0] <= now:
            _, ev = self._queue.popleft()
            out.extend(self._judge(ev, now))
        for image_id in [k for k, (deadline, _) in self._tags.items() if deadline <= now]:
            _, held = self._tags.pop(image_id)
            ledger = self.approved
            if isinstance(ledger, ApprovalLedger) and ledger.image_id_approved(image_id, now):
                continue
            out.extend(self._unapproved_tag(ev) for ev in held)
        return out

    def _judge(self, ev: DaemonImageEvent, now: float) -> list[Finding]:
        ledger = self.approved
        if not isinstance(ledger, ApprovalLedger):
            tags = self._tags.pop(ev.subject, (0.0, []))[1]
            return [] if ledger(ev) else [self._unapproved(ev, tags)]
        if ev.action == "pull":
            return [] if ledger.was_approved(ev.subject, ev.time) else [self._unapproved(ev, [])]
        if ev.action in _LOAD_ACTIONS:
            tags = self._tags.pop(ev.subject, (0.0, []))[1]
            if ledger.saw_action(_LOAD_ACTIONS[ev.action], ev.time):
                ledger.approve_image_id(ev.subject, ev.time)
                return []
            return [self._unapproved(ev, tags)]
        # tag
        if (
            (ev.name and ledger.was_approved(ev.name, ev.time))
            or ledger.image_id_approved(ev.subject, ev.time)
            or any(ledger.saw_action(action, ev.time) for action in _TAGGING_ACTIONS)
        ):
            return []
        deadline, held = self._tags.get(ev.subject, (now + self.tag_grace, []))
        held.append(ev)
        self._tags[ev.subject] = (deadline, held)
        return []

    @staticmethod
    def _unapproved(ev: DaemonImageEvent, tags: list[DaemonImageEvent]) -> Finding:
        details = _event_details(ev)
        if tags:
            details["tags"] = [t.name for t in tags if t.name]
        what = {"pull": "pulled", "load": "loaded", "import": "imported"}.get(ev.action, ev.action)
        named = f" {ev.subject}" if ev.action == "pull" else f" {ev.subject[:19]}"
        if tags:
            named += " (" + ", ".join(t.name for t in tags if t.name) + ")"
        return Finding(
            key=("event", *ev.key),
            severity="warning",
            reason=f"the daemon {what} image{named} that pullgate did not approve: "
            "something reached the Docker daemon without going through the shim",
            details=details,
        )

    @staticmethod
    def _unapproved_tag(ev: DaemonImageEvent) -> Finding:
        return Finding(
            key=("event", *ev.key),
            severity="info",
            reason=f"the daemon tagged image {ev.subject[:19]} as {ev.name} with no tag, "
            "commit, build or load allowed through the shim shortly before: a client may have "
            "bypassed the shim (or a build through it ran longer than the approval window)",
            details=_event_details(ev),
        )


# --------------------------------------------------------------------------- who holds the socket


@dataclass(frozen=True)
class SocketClient:
    """A process with a connection to the daemon socket."""

    pid: int
    name: str | None
    inode: int


# A value, not a platform check, so mypy --platform darwin still checks the Linux code.
_ON_LINUX = sys.platform.startswith("linux")


_SS_LINE = re.compile(r"^\S+\s+ESTAB\s+\d+\s+\d+\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)")


def _ss_unix_sockets() -> list[UnixSocket]:
    """The connected sockets and their peers from ``ss -xn`` (the fallback when
    ``unix_diag``'s netlink is unavailable)."""
    ss = shutil.which("ss")
    if ss is None:
        raise OSError("neither sock_diag netlink nor `ss` is available")
    result = subprocess.run(
        [ss, "-xn", "state", "established"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    out: list[UnixSocket] = []
    for line in result.stdout.splitlines():
        # "state established" drops the State column: re-add it for one pattern.
        m = _SS_LINE.match(line.replace("u_str ", "u_str ESTAB ", 1)) or _SS_LINE.match(line)
        if m:
            local = m.group(1)
            name = None if local == "*" else local
            out.append(UnixSocket(int(m.group(2)), STATE_ESTABLISHED, name, int(m.group(4))))
    return out


def _same_socket(name: str | None, vfs: int | None, path: Path, st_ino: int | None) -> bool:
    if vfs is not None and st_ino is not None and vfs == st_ino:
        return True
    if not name or name.startswith("@") or "\0" in name:
        return False  # abstract sockets (``@name``, or NUL-led from sock_diag) have no path
    return name == str(path) or os.path.realpath(name) == os.path.realpath(path)


def socket_clients(path: Path, *, exclude_pids: Iterable[int] = ()) -> list[SocketClient]:
    """Processes connected to the unix socket ``path``, except the server's own and
    ``exclude_pids``. Linux only: elsewhere (and without /proc) returns []."""
    if not _ON_LINUX:
        return []
    try:
        st_ino: int | None = path.stat().st_ino
    except OSError:
        st_ino = None
    try:
        sockets = dump_unix_sockets(1 << STATE_ESTABLISHED, SHOW_NAME | SHOW_VFS | SHOW_PEER)
    except OSError:
        sockets = _ss_unix_sockets()
    peers = {s.peer for s in sockets if s.peer and _same_socket(s.name, s.vfs_ino, path, st_ino)}
    import psutil  # noqa: PLC0415 - loaded when a scan runs, not at agent start

    excluded = set(exclude_pids)
    clients: list[SocketClient] = []
    owners = socket_holders(peers, first_only=True).holders
    for inode, pid in sorted((inode, pids[0]) for inode, pids in owners.items()):
        if pid in excluded:
            continue
        try:
            name: str | None = psutil.Process(pid).name()
        except psutil.Error:
            name = None
        if name in DAEMON_PROCESS_NAMES or (name or "").startswith("containerd-shim"):
            continue
        clients.append(SocketClient(pid, name, inode))
    return clients


def container_socket_mounts(
    container: Mapping[str, Any], upstream: Path, *, resolve: bool = True
) -> list[dict[str, str]]:
    """The mounts of a container (from ``/containers/json`` or ``/containers/{id}/json``)
    that expose the daemon socket: the socket itself or a directory holding it.

    ``resolve=False`` (a Windows user's Desktop pipe): names are compared as written and
    a ``npipe`` mount counts too; nothing is resolved, since resolving a pipe's name as
    LocalSystem would open it, as a client the pipe's server could impersonate."""
    socket_paths = {str(upstream), *DEFAULT_DAEMON_SOCKETS}
    if resolve:
        socket_paths.add(os.path.realpath(upstream))
    kinds = ("bind",) if resolve else ("bind", "npipe")
    exposing: list[dict[str, str]] = []
    for mount in container.get("Mounts") or []:
        if not isinstance(mount, Mapping) or mount.get("Type", "bind") not in kinds:
            continue
        source = str(mount.get("Source") or "")
        if not source:
            continue
        real = os.path.realpath(source) if resolve else source
        hit = source in socket_paths or real in socket_paths
        if not hit:
            folder = real.rstrip("/") + "/"
            hit = any(p.startswith(folder) for p in socket_paths if p.startswith("/"))
        if hit:
            exposing.append({"source": source, "destination": str(mount.get("Destination") or "")})
    return exposing


# --------------------------------------------------------------------------- the I/O edge


USER_AGENT = "pullgate-bypass-monitor"


def _json_objects(buffer: str) -> tuple[list[Any], str]:
    """Complete JSON values at the start of ``buffer`` (the daemon separates events with
    newlines, but chunks need not end on one), and the unparsed rest."""
    decoder = json.JSONDecoder()
    out: list[Any] = []
    pos = 0
    while True:
        while pos < len(buffer) and buffer[pos].isspace():
            pos += 1
        if pos >= len(buffer):
            return out, ""
        try:
            obj, pos = decoder.raw_decode(buffer, pos)
        except ValueError:
            return out, buffer[pos:]
        out.append(obj)


class BypassMonitor:
    """Follows the daemon's events, scans socket clients and containers, and emits
    ``bypass-suspected`` notices to ``sink``, each finding once."""

    def __init__(
        self,
        upstream: Path,
        sink: DecisionSink,
        *,
        shim_listen: Path,
        approved: ApprovalLedger | Callable[[DaemonImageEvent], bool],
        own_pid: int | None = None,
        interval: float = DEFAULT_INTERVAL,
        request_timeout: float = 10.0,
        max_backoff: float = 30.0,
        grace: float = DECISION_GRACE,
        tag_grace: float = TAG_GRACE,
        connect: docker_api.Connect | None = None,
        fix: str | None = None,
        upstream_uid: int | None = None,
        upstream_executables: tuple[str, ...] | None = None,
        on_listener: Callable[[ListenerError | None], None] | None = None,
        holder_interval: float = HOLDER_RECHECK,
    ) -> None:
        self.upstream = upstream
        # Docker Desktop mode: the daemon must be this user's (agent.core.desktop); the
        # monitor, root, must not read another daemon's events through their link, nor
        # follow a listener of the user's that is not Docker Desktop's own program (it
        # could hand the monitor a silent /events while the user pulls another way).
        self.upstream_uid = upstream_uid
        self.upstream_executables = upstream_executables
        # Told each refused listener, and None once one passes (the endpoint's status).
        self.on_listener = on_listener
        self.listener_problem: str | None = None
        # A refusal by the holder check, which the shim's connections do not make: it
        # stays the endpoint's problem until the monitor passes again.
        self.held_problem: str | None = None
        self.holder_interval = holder_interval
        self.sink = sink
        # A Windows user's Desktop pipe: opened (and its server checked) by ``connect``;
        # no unix socket to resolve or find clients of. ``fix``: what a user does instead.
        self.connect = connect
        self.fix = fix
        self.shim_listen = shim_listen
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self.interval = interval
        self.request_timeout = request_timeout
        self.max_backoff = max_backoff
        self.reconciler = Reconciler(approved, grace=grace, tag_grace=tag_grace)
        self.connected = asyncio.Event()
        """Set while the event stream is open (tests wait for it before acting)."""
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._last_nano = 0
        self._scan_lock = asyncio.Lock()
        self.errors = 0
        """Unexpected errors in the monitor's loops (each also a notice)."""
        self.last_error: str | None = None

    def status(self) -> dict[str, Any]:
        """For ``GET /v1/status``: whether the monitor runs and follows the daemon, and the
        unexpected errors its loops survived."""
        running = bool(self._tasks) and not any(t.done() for t in self._tasks)
        return {
            "running": running,
            "following_events": self.connected.is_set(),
            "listener_problem": self.listener_problem,
            "errors": self.errors,
            "last_error": self.last_error,
        }

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._follow_events(), name="bypass-events"),
            loop.create_task(self._periodic(), name="bypass-scan"),
        ]

    async def close(self) -> None:
        """Stop following and scanning; bounded, so a stuck read never blocks shutdown."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=3.0)
            for task in pending:
                task.cancel()
        self._tasks = []

    # -- findings ---------------------------------------------------------------------

    def _emit(self, finding: Finding) -> bool:
        if finding.key in self._seen:
            return False
        self._seen[finding.key] = None
        while len(self._seen) > MAX_REMEMBERED:
            self._seen.popitem(last=False)
        details = {"upstream": str(self.upstream), "shim": str(self.shim_listen)}
        details.update(finding.details)
        self.sink.emit(
            Finding(finding.key, finding.severity, finding.reason, details, finding.peer).notice()
        )
        return True

    # -- the daemon's event stream ----------------------------------------------------

    def _events_target(self) -> str:
        filters = {
            "type": ["image", "container"],
            "event": [*WATCHED_ACTIONS, "start"],
        }
        target = "/events?filters=" + urllib.parse.quote(json.dumps(filters))
        if self._last_nano:
            # Resume where we left off, so a daemon restart does not hide a pull.
            secs, nanos = divmod(self._last_nano, 1_000_000_000)
            target += f"&since={secs}.{nanos:09d}"
        return target

    async def _follow_events(self) -> None:
        backoff = 0.5
        while not self._closing:
            followed = False
            try:
                async with self._open_events() as answer:
                    await self._check_holders(answer)
                    self._listener_passed()
                    if answer.status != 200:
                        raise DockerAPIError(f"GET /events answered {answer.status}")
                    backoff, followed = 0.5, True
                    self.connected.set()
                    await self._follow(answer)
            except ListenerError as e:
                self._listener_refused(e)
                backoff = min(backoff, LISTENER_RETRY)
            except (OSError, ValueError):  # includes timeouts and unreadable answers
                pass
            except Exception as e:  # a bug must not end the loop: say so, reconnect
                self._internal_error("following the daemon's events", e)
            finally:
                self.connected.clear()
            await asyncio.sleep(backoff)
            if not followed:
                backoff = min(backoff * 2, self.max_backoff)

    async def _follow(self, answer: docker_api.Stream) -> None:
        """Read the event stream until it ends; where its holders are checked, check
        them again every ``holder_interval`` seconds meanwhile, so a socket handed over
        after the connect is caught too (``ListenerError`` ends the stream)."""
        if not self._holders_checked():
            await self._read_events(answer)
            return
        reading = asyncio.get_running_loop().create_task(
            self._read_events(answer), name="bypass-events-read"
        )
        try:
            while True:
                done, _ = await asyncio.wait({reading}, timeout=self.holder_interval)
                if done:
                    return reading.result()
                await self._check_holders(answer)
        finally:
            if not reading.done():
                reading.cancel()
                await asyncio.wait({reading})

    async def _read_events(self, answer: docker_api.Stream) -> None:
        buffer = ""
        # A character split across two chunks is decoded once both arrived.
        text = codecs.getincrementaldecoder("utf-8")("replace")
        async for chunk in answer.chunks():
            objects, buffer = _json_objects(buffer + text.decode(chunk))
            for obj in objects:
                if isinstance(obj, dict):
                    await self._on_event_supervised(obj)

    def _holders_checked(self) -> bool:
        """Docker Desktop mode on Linux: the processes holding the monitor's connection
        and the listening socket are checked, not only the one that called listen()."""
        return (
            HOLDERS_CHECKED
            and self.connect is None
            and self.upstream_uid is not None
            and self.upstream_executables is not None
        )

    async def _check_holders(self, answer: docker_api.Stream) -> None:
        """``peer.check_holders`` on the stream's connection, once its answer began (the
        server has accepted it); ``ListenerError`` if they are not all Desktop's."""
        if not self._holders_checked():
            return
        uid, executables = self.upstream_uid, self.upstream_executables
        assert uid is not None and executables is not None
        if answer.socket is None:
            raise ListenerError(f"no socket to examine for {self.upstream}", held=True)
        await asyncio.to_thread(check_holders, answer.socket, self.upstream, uid, executables)

    def _listener_refused(self, error: ListenerError) -> None:
        """Docker Desktop mode: the socket the monitor watches is not served by the
        user's own Docker Desktop, so its events say nothing. Reported (a notice per
        listener, the endpoint's status through ``on_listener``), never followed."""
        self.listener_problem = str(error)
        self.held_problem = str(error) if error.held else None
        if self.on_listener is not None:
            self.on_listener(error)
        why = f"served by {error.listener}" if error.listener else str(error)
        self._emit(
            Finding(
                key=("listener", str(error)),
                severity="warning",
                reason=f"the bypass monitor does not follow the daemon's events at "
                f"{self.upstream} ({why}): what reaches the daemon there goes unseen until "
                "Docker Desktop's own program serves that socket again",
                details={"source": "listener", "problem": str(error)},
            )
        )

    def _listener_passed(self) -> None:
        """A checked connection passed: whatever was refused before is gone."""
        self.listener_problem = None
        self.held_problem = None
        if self.on_listener is not None:
            self.on_listener(None)

    def _open_events(self) -> contextlib.AbstractAsyncContextManager[docker_api.Stream]:
        """``GET /events`` on the daemon's socket (its listener checked in Docker Desktop
        mode), or over ``connect``."""
        target = self._events_target()
        if self.connect is not None:
            return docker_api.stream_over(
                self.connect, target, timeout=self.request_timeout, user_agent=USER_AGENT
            )
        return docker_api.stream(
            self.upstream,
            target,
            timeout=self.request_timeout,
            user_agent=USER_AGENT,
            listener_uid=self.upstream_uid,
            listener_executables=self.upstream_executables,
        )

    async def _request(self, target: str) -> docker_api.Response:
        """``GET target`` as :meth:`_open_events` connects."""
        if self.connect is not None:
            return await docker_api.request_over(
                self.connect, "GET", target, timeout=self.request_timeout, user_agent=USER_AGENT
            )
        return await docker_api.request(
            self.upstream,
            "GET",
            target,
            timeout=self.request_timeout,
            user_agent=USER_AGENT,
            listener_uid=self.upstream_uid,
            listener_executables=self.upstream_executables,
        )

    async def _get_json(self, target: str) -> Any:
        """The daemon's JSON answer to ``GET target``; OSError or ValueError if none."""
        answer = await self._request(target)
        if answer.status != 200:
            raise DockerAPIError(f"GET {target} answered {answer.status}")
        return json.loads(answer.body)

    async def _on_event_supervised(self, obj: dict[str, Any]) -> None:
        try:
            await self._on_event(obj)
        except (asyncio.CancelledError, OSError):
            raise
        except Exception as e:
            self._internal_error("judging a daemon event", e)

    def _internal_error(self, doing: str, error: BaseException) -> None:
        """An unexpected error in a monitor loop: reported once per kind, the loop goes on."""
        self.errors += 1
        self.last_error = f"{doing}: {type(error).__name__}: {error}"[:500]
        self._emit(
            Finding(
                key=("monitor-error", doing, type(error).__name__),
                severity="warning",
                reason=f"the bypass monitor failed while {doing} ({type(error).__name__}: "
                f"{str(error)[:200]}); it carries on, but may have missed a bypass",
                details={"error": self.last_error},
            )
        )

    async def _on_event(self, obj: dict[str, Any]) -> None:
        nano = obj.get("timeNano")
        if isinstance(nano, int):
            self._last_nano = max(self._last_nano, nano)
        if obj.get("Type") == "container":
            container_id = (obj.get("Actor") or {}).get("ID") or obj.get("id")
            if isinstance(container_id, str):
                await self._check_container(container_id)
            return
        ev = parse_daemon_event(obj)
        if ev is None:
            return
        findings = self.reconciler.observe(ev, time.time())
        if findings:
            await self._report_events(findings)

    async def _report_events(self, findings: list[Finding]) -> None:
        """Event findings carry the socket's current clients as suspects."""
        clients = await self._client_findings()
        suspects = [c.details["process"] for c in clients]
        for finding in findings:
            details = dict(finding.details)
            details["suspects"] = suspects
            if finding.severity == "warning":
                details["fix"] = self.fix or (
                    f"point docker at the shim (unix://{self.shim_listen}): "
                    "`pullgate context install`, or unset DOCKER_HOST"
                )
            self._emit(Finding(finding.key, finding.severity, finding.reason, details))
        for client in clients:
            self._emit(client)

    # -- periodic scans ---------------------------------------------------------------

    async def _periodic(self) -> None:
        next_scan = 0.0
        while not self._closing:
            now = time.monotonic()
            try:
                due = self.reconciler.due(time.time())
                if due:
                    await self._report_events(due)
                if now >= next_scan:
                    next_scan = now + self.interval
                    await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug must not end the loop: say so, go on
                self._internal_error("scanning", e)
            await asyncio.sleep(0.25 if self.reconciler.pending else min(1.0, self.interval))

    async def scan(self) -> list[NoticeEvent]:
        """Scan socket clients and containers now; the notices newly emitted."""
        emitted: list[NoticeEvent] = []
        for finding in await self._client_findings():
            if self._emit(finding):
                emitted.append(finding.notice())
        emitted.extend(await self.scan_containers())
        return emitted

    async def _client_findings(self) -> list[Finding]:
        if self.connect is not None:  # no unix socket whose clients the kernel could name
            return []
        async with self._scan_lock:
            try:
                return await asyncio.to_thread(self._client_findings_sync)
            except OSError:
                return []

    def _client_findings_sync(self) -> list[Finding]:
        import psutil  # noqa: PLC0415 - loaded when a scan runs, not at agent start

        findings = []
        for client in socket_clients(self.upstream, exclude_pids={self.own_pid}):
            try:
                proc = psutil.Process(client.pid)
                uid, gid = process_ids(proc)
                started = proc.create_time()
                peer = describe_peer(client.pid, uid, gid)
            except psutil.Error:
                continue
            process = {
                "pid": peer.pid,
                "name": peer.name,
                "executable": peer.executable,
                "user": peer.user,
                "command_line": list(peer.command_line),
                "parents": [p.name for p in peer.parents],
            }
            findings.append(
                Finding(
                    key=("process", client.pid, started),
                    severity="warning",
                    reason=f"process {peer.name or '?'} (pid {client.pid}, user "
                    f"{peer.user or '?'}) is connected to the Docker daemon socket "
                    f"{self.upstream} directly, not through the shim",
                    details={"source": "socket-clients", "process": process},
                    peer=peer,
                )
            )
        return findings

    async def scan_containers(self) -> list[NoticeEvent]:
        try:
            containers = await self._get_json("/containers/json?all=1")
        except (OSError, ValueError):
            return []
        emitted = []
        for container in containers if isinstance(containers, list) else []:
            finding = self._container_finding(container)
            if finding is not None and self._emit(finding):
                emitted.append(finding.notice())
        return emitted

    async def _check_container(self, container_id: str) -> None:
        try:
            container = await self._get_json(f"/containers/{urllib.parse.quote(container_id)}/json")
        except (OSError, ValueError):
            return
        if isinstance(container, dict):
            finding = self._container_finding(container)
            if finding is not None:
                self._emit(finding)

    def _container_finding(self, container: Mapping[str, Any]) -> Finding | None:
        mounts = container_socket_mounts(container, self.upstream, resolve=self.connect is None)
        if not mounts:
            return None
        container_id = str(container.get("Id") or "")
        names = container.get("Names")
        name = (
            str(names[0]).lstrip("/")
            if isinstance(names, list) and names
            else str(container.get("Name") or "").lstrip("/")
        )
        image = container.get("Image")
        if not isinstance(image, str) or image.startswith("sha256:"):
            config = container.get("Config")
            image = config.get("Image") if isinstance(config, dict) else image
        return Finding(
            key=("container", container_id),
            severity="warning",
            reason=f"container {name or container_id[:12]} ({image}) mounts the Docker "
            f"daemon socket ({mounts[0]['source']}): it can pull without the shim",
            details={
                "source": "containers",
                "container": {"id": container_id, "name": name, "image": image},
                "mounts": mounts,
            },
        )
