"""The Docker socket shim: an HTTP/1.1 proxy in front of dockerd that inspects pulls.

One client connection maps to one upstream connection. Requests are taken one at a time
(Docker clients never pipeline): a request is framed strictly (``http1``), routed as
dockerd routes it (``routes``), inspected (``inspect``) and decided (``decision``); then
it is forwarded, or answered with the 403 of the denial contract. While a request is in
flight the client is not read, so no byte reaches the daemon before the request it
belongs to has been inspected — and an attach or exec that the daemon turns into a raw
stream (``101`` or ``200`` + raw-stream) is spliced only once the daemon has said so.

Bodies stream with backpressure. A tar body (build context, ``docker load``) is scanned
as it passes; the shim stops forwarding as soon as the scanner sees the archive's end
marker and holds the rest back until the decision, so the daemon cannot finish reading
the archive — and so cannot start the build or commit the load — before it is allowed.
A denial then aborts the upstream connection mid-body.

Each connection is in one named ``State``, and moves only through
``ClientConnection._move``, which checks the move against one table (``MOVES``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import errno
import json
import os
import re
import select
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, cast
from urllib.parse import quote

import httptools

from agent.core.decision import Decision, Identity, Verdict, decide
from agent.core.desktop import unreachable_upstream_problem
from agent.core.events import DecisionEvent, NoticeEvent
from agent.core.inspection.base_pull import (
    PULL_IDLE_SECONDS,
    PULL_LIMIT_SECONDS,
    PullProgress,
    base_pull_refusal,
    form_bool,
    platform_matches,
    pull_target,
    registry_auth_header,
    registry_configs,
)
from agent.core.inspection.buildkit.inputs import BuildInputs, from_build_query
from agent.core.inspection.host_access import (
    HostAccess,
    HostAccessError,
    PathFacts,
    Protection,
    from_container_config,
    from_volume,
    judge,
    judge_windows,
    windows_lookups,
)
from agent.core.inspection.http1 import (
    MAX_HEAD_BYTES,
    BodyReader,
    ProtocolError,
    RequestHead,
    find_head_end,
    parse_request_head,
)
from agent.core.inspection.request import (
    MAX_ANCESTORS,
    MAX_JSON_BODY,
    After,
    EventAction,
    Inspection,
    InspectionError,
    LocalImage,
    Lookup,
    NeedJson,
    NeedTar,
    SettingOutcome,
    TarFindings,
    Wanted,
    image_reference,
    inspect_head,
    inspect_json_body,
    local_image_wants,
    loses_last_name,
    nameless_outcome,
    onbuild_wants,
    resolved_by_name,
    with_build_lookups,
)
from agent.core.inspection.routes import (
    Endpoint,
    Query,
    Route,
    RouteError,
    parse_query,
    route_request,
)
from agent.core.inspection.tarscan import TarScanError, TarScanner
from agent.core.inspection.windows_binds import (
    Place,
    WindowsPathFacts,
    WindowsProtection,
    system_places,
)
from agent.core.messages import defuse, denial_message
from agent.core.peer import PeerInfo, Principal, principal_of
from agent.core.policy.document import BuildsSetting, HostAccessSetting, OnCreateSetting, Policy
from agent.core.reference import Reference
from agent.core.text import printable
from agent.daemon.buildkit_builds import BuildRegistry, PendingBuild, RelayedSession
from agent.daemon.buildkit_tunnel import (
    SESSION_WAIT,
    Tunnel,
    TunnelKind,
    build_inspection,
    dockerfile_sessions,
)
from agent.daemon.bus import DecisionSink
from agent.platform import docker_api, host_paths
from agent.platform.peer import (
    ListenerError,
    check_listener,
    describe_peer,
    peer_credentials,
    peer_groups,
)
from agent.platform.unix_sockets import claim_socket_path

__all__ = ["EndpointTransport", "HeadCache", "Shim", "ShimConfig", "WindowsHostPaths"]

_RAW_STREAM_TYPES = (
    "application/vnd.docker.raw-stream",
    "application/vnd.docker.multiplexed-stream",
)
_VERBS = {
    EventAction.CREATE: "running",
    EventAction.LOAD: "loading",
    EventAction.IMPORT: "importing",
    EventAction.SERVICE: "deploying",
    EventAction.TAG: "tagging",
    EventAction.COMMIT: "committing",
}
#: Bytes after a tar's end marker the shim will hold back before refusing the request.
_MAX_HELD_BYTES = 1 << 20
#: How often a client whose build waits on the shim's pull of its base is checked for a
#: hang-up (its pull then stops: nobody is left to build for).
_HANGUP_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class _Checked:
    """A local image decided before its request went upstream: the daemon's success
    answer is held until what it made is shown to use this image (``image_id``; None
    when the name named nothing at lookup time)."""

    lookup: Lookup
    image_id: str | None
    name_wants: tuple[Wanted, ...] = ()  # the lookup's name, decided as a name


#: A held success answer (create, tag, commit) is small; a bigger one is not trusted.
_MAX_HELD_RESPONSE = 1 << 20


class IdentitySource(Protocol):
    """Who an OS user is signed in as (``agent.daemon.identities.IdentityStore``), by uid
    (Linux, macOS) or SID (Windows)."""

    def identity_for(self, uid: Principal | None) -> Identity | None: ...


class ClosingServer(Protocol):
    async def close(self) -> None: ...


ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class EndpointTransport(Protocol):
    """An endpoint that is not a unix socket: how it serves clients, reaches its daemon
    and names its client. A Windows user's named pipes (``agent.daemon.windows_desktop``);
    a shim without one serves and connects to unix sockets as it always has."""

    async def serve(self, factory: ProtocolFactory) -> ClosingServer:
        """Start serving; each client gets a protocol from ``factory``."""
        ...

    async def connect(self, factory: ProtocolFactory) -> asyncio.BaseProtocol:
        """Connect to the daemon (``ListenerError``: it is served by someone the
        endpoint's user must not reach, with the client's message)."""
        ...

    def peer(self, transport: asyncio.BaseTransport) -> PeerInfo:
        """The client on ``transport``, as the transport identified it."""
        ...

    async def request(self, method: str, target: str, timeout: float) -> docker_api.Response:
        """One request of the shim's own (``Shim.ask_daemon``)."""
        ...


class WindowsHostPaths(Protocol):
    """A Windows machine's facts for ``containers.host_access`` (binds are drive paths
    there): ``agent.platform.windows_host_paths.MachinePaths``. Blocking: called in a
    worker thread."""

    def profile(self, sid: str) -> str | None:
        """The profile folder of the user ``sid`` (None: unknown)."""
        ...

    def examine(self, paths: list[str]) -> dict[str, WindowsPathFacts]:
        """Each clean drive path as it is now; one that could not be looked at left out."""
        ...


@dataclass(frozen=True)
class ShimConfig:
    listen: Path
    upstream: Path
    socket_mode: int = 0o660
    socket_group: int | None = None
    #: Docker Desktop mode (agent.daemon.desktop): the uid this endpoint serves. The
    #: socket is theirs, only they and root may use it, and the upstream (their Desktop
    #: socket, a path they control) must be served by them (agent.core.desktop).
    user: int | None = None
    #: With ``user``: the programs that may serve that socket (``desktop_executables``);
    #: a process of the user's running anything else is refused like another user's.
    desktop_executables: tuple[str, ...] | None = None
    #: Directories no container may bind (the agent's state and audit log), besides
    #: the fixed list in agent.core.inspection.host_access.
    protected: tuple[Path, ...] = ()
    #: Binds are Windows paths, judged with Windows rules (agent.core.inspection.
    #: windows_binds) on these facts. On Windows always (None: the machine's own,
    #: agent.platform.windows_host_paths); elsewhere only when given (tests).
    windows_paths: WindowsHostPaths | None = None


class Shim:
    """The listening socket and what every connection shares."""

    def __init__(
        self,
        config: ShimConfig,
        policy: Callable[[], Policy],
        sink: DecisionSink,
        *,
        audit_gate: Callable[[], str | Awaitable[str | None] | None] | None = None,
        identities: IdentitySource | None = None,
        transport: EndpointTransport | None = None,
    ) -> None:
        self.config = config
        # None: a unix socket (config.listen) in front of a unix socket (config.upstream).
        self.endpoint_transport = transport
        #: containers.host_access's Windows rules and facts: every bind on Windows is a
        #: Windows path (Docker Desktop's), whoever made this shim.
        self.windows_paths = config.windows_paths
        if self.windows_paths is None and sys.platform == "win32":
            from agent.platform.windows_host_paths import MachinePaths  # noqa: PLC0415 - Windows only

            self.windows_paths = MachinePaths()
        self._pipe_server: ClosingServer | None = None
        # Who each OS user is signed in as (agent.daemon.identities), when sign-in is set up.
        self.identities = identities
        self.policy = policy
        self.sink = sink
        # After the decision is recorded: a refusal message when it could not be, or an
        # awaitable of one while the record is still being written (ClientConnection
        # holds what the request sends until then).
        self.audit_gate = audit_gate
        self.host = socket.gethostname()
        self._server: asyncio.AbstractServer | None = None
        self.connections: set[ClientConnection] = set()
        self.heads = HeadCache()
        self.builds = BuildRegistry()  # BuildKit builds in flight, by session
        #: (when asked, the daemon's own directories: DockerRootDir and what its command
        #: lines and daemon.json name), for containers.host_access.
        self._daemon_dirs: tuple[float, tuple[str, ...]] | None = None
        self._daemon_platform: str | None = None
        #: Why the last upstream connection was refused (ListenerError), until one passes.
        self.upstream_problem: str | None = None
        self._problem_reported = 0.0

    async def ask_daemon(self, method: str, path: str) -> tuple[int, bytes]:
        """One request of the shim's own, on a connection of its own: (status, body).

        An answer that cannot be read is an ``InspectionError`` (502), never a bare
        ``OSError``: ``_check_made`` relies on it to remove what it cannot verify.
        """
        try:
            if self.endpoint_transport is not None:
                answer = await self.endpoint_transport.request(method, path, 30)
            else:
                answer = await docker_api.request(
                    self.config.upstream,
                    method,
                    path,
                    timeout=30,
                    listener_uid=self.config.user,
                    listener_executables=self.config.desktop_executables,
                )
        except docker_api.DockerAPIError as e:
            raise InspectionError(f"pullgate: the daemon's answer cannot be read: {e}", 502) from e
        return answer.status, answer.body

    async def daemon_json(self, path: str, what: str) -> object | None:
        """The daemon's JSON answer to ``GET path`` (None: it has no such thing)."""
        status, body = await self.ask_daemon("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise InspectionError(
                f"pullgate: the daemon could not describe {what} (HTTP {status})", 502
            )
        try:
            value: object = json.loads(body)
        except ValueError as e:
            raise InspectionError(
                f"pullgate: the daemon's description of {what} is not JSON", 502
            ) from e
        return value

    async def local_image(self, name: str) -> LocalImage | None:
        """Ask the daemon what it has under ``name`` (None: it has nothing)."""
        path = "/images/" + quote(name, safe="/:@") + "/json"
        info = await self.daemon_json(path, f"image {name!r}")
        return None if info is None else LocalImage.from_daemon(info)

    async def daemon_platform(self) -> str:
        """The daemon's own platform (``GET /version``: ``Os/Arch``), which BuildKit builds
        a stage for when it names none; asked once. Empty when the daemon does not say:
        every local base then counts as of another platform (pulled first). A 32-bit ARM
        daemon builds for its CPU's variant (containerd's ``DefaultSpec``: ``arm/v6`` on a
        v6 CPU), which ``/version`` does not tell: it counts as ``arm/v5``, the variant
        every ARM daemon takes, so only a local ``v5`` or variant-less image is read where
        it is (a ``v7`` one, which a v6 daemon replaces by its own variant, is pulled)."""
        if self._daemon_platform is None:
            info = await self.daemon_json("/version", "its version")
            fields = [info.get(k) if isinstance(info, dict) else None for k in ("Os", "Arch")]
            ok = all(isinstance(v, str) and v and "/" not in v for v in fields)
            platform = "/".join(str(v) for v in fields) if ok else ""
            if platform.lower().endswith("/arm"):
                platform += "/v5"
            self._daemon_platform = platform
        return self._daemon_platform

    async def stale_variant(self, lookup: Lookup, image: LocalImage) -> bool:
        """Whether BuildKit would fetch another variant than the local ``image`` for
        ``lookup`` (``Lookup.by_platform``), whose triggers are then the ones to read."""
        if not lookup.by_platform:
            return False
        wanted = lookup.platform or await self.daemon_platform()
        return not platform_matches(wanted, image.os, image.architecture, image.variant)

    async def content_wants(
        self, lookup: Lookup, image: LocalImage
    ) -> tuple[list[Wanted], SettingOutcome | None]:
        """What local content must be allowed under: all its names; for nameless content
        (classic build steps, commits) those of its nearest named ancestor; with none,
        a setting outcome (``nameless_outcome``)."""
        if image.named:
            return local_image_wants(lookup.name, image, lookup.action), None
        ancestor = image
        for _ in range(MAX_ANCESTORS):
            parent = await self.local_image(ancestor.parent) if ancestor.parent else None
            if parent is None:
                break
            if parent.named:
                why = f"local image {lookup.name}, built on {parent.id[:19]}"
                return local_image_wants(lookup.name, parent, lookup.action, why), None
            ancestor = parent
        return [], nameless_outcome(lookup.name, lookup.action, self.policy().builds)

    async def build_lookups(
        self,
        inspection: Inspection,
        endpoint: str,
        peer: PeerInfo,
        pulled: set[str] | None = None,
    ) -> tuple[Inspection, bool]:
        """A BuildKit build's local images, judged as for a classic build: the daemon's
        BuildKit uses a local image of a base's name before pulling it, so its content
        (all its names, or its nearest named ancestor) and its ONBUILD triggers count.
        A base that is not local is pulled first (``pull_base``; BuildKit's credentials
        are in the client's session, so the shim's pull has none), so its triggers
        count too. Also whether any of them has ONBUILD triggers: those may build a
        stage of the Dockerfile that its target does not reach (``decide_build`` widens
        then). ``pulled``: bases already pulled for this build, not pulled again.

        A name BuildKit builds on for several platforms holds one variant only, the last
        pulled: once the shim pulls it for one platform, the daemon fetches the others
        from the registry whatever the machine held before, so each of them is pulled
        (and read) too rather than read where it was."""
        wants = list(inspection.wants)
        setting = inspection.setting
        triggers = False
        pulled = set() if pulled is None else pulled
        refused = self.denies_any(inspection, peer)

        def image_of(name: str) -> str:
            """The image a base's name is, however spelt (``docker.io/acme/b:latest``)."""
            try:
                return image_reference(name, "base image").canonical
            except InspectionError:
                return name

        # The images looked up as BuildKit bases for more than one platform (their lookups).
        several: dict[str, list[Lookup]] = {}
        for lookup in inspection.lookups:
            if lookup.base and lookup.by_platform:
                several.setdefault(image_of(lookup.name), []).append(lookup)
        moving: set[str] = set()
        for name, group in several.items():
            if refused or len({lk.platform for lk in group}) < 2:
                continue
            try:
                image = await self.local_image(group[0].name)
            except OSError as e:
                raise InspectionError(
                    _upstream_error(self.config.upstream, e, desktop=self.config.user is not None),
                    502,
                ) from e
            for lk in group:  # one of them is (or was, for this build) pulled
                if (
                    f"{lk.name} {lk.platform}" in pulled
                    or image is None
                    or lk.force_pull
                    or await self.stale_variant(lk, image)
                ):
                    moving.add(name)
                    break
        for lookup in inspection.lookups:
            try:
                image = await self.local_image(lookup.name)
                key = f"{lookup.name} {lookup.platform}"  # a variant of its own platform
                if (
                    lookup.base
                    and not refused
                    and key not in pulled
                    and (
                        image is None
                        or lookup.force_pull
                        or (lookup.by_platform and image_of(lookup.name) in moving)
                        or await self.stale_variant(lookup, image)
                    )
                ):
                    pulled.add(key)
                    image = await self.pull_base(lookup, endpoint, peer) or image
            except OSError as e:
                raise InspectionError(
                    _upstream_error(self.config.upstream, e, desktop=self.config.user is not None),
                    502,
                ) from e
            if image is None:
                continue
            triggers = triggers or bool(image.onbuild)
            found, outcome = await self.content_wants(lookup, image)
            wants += found
            wants += onbuild_wants(lookup.name, image, lookup.action)
            if outcome is not None and (setting is None or setting.allowed):
                setting = outcome
            # A base's trigger or names may refuse the build already: pull no more for it.
            refused = refused or self.denies_any(Inspection(tuple(wants), setting), peer)
        return Inspection(wants=tuple(wants), setting=setting), triggers

    def denies_any(self, inspection: Inspection, peer: PeerInfo) -> bool:
        """Whether the policy already refuses a build (one of its images by name, or a
        setting): it is refused whatever its bases' triggers say, so nothing is pulled."""
        if inspection.setting is not None and not inspection.setting.allowed:
            return True
        policy, now, identity = self.policy(), datetime.now(UTC), self.identity_of(peer)
        return any(
            decide(policy, w.reference, now=now, identity=identity, host=self.host).verdict
            is Verdict.DENY
            for w in inspection.wants
        )

    async def pull_base(
        self,
        lookup: Lookup,
        endpoint: str,
        peer: PeerInfo,
        registry_config: str | None = None,
    ) -> LocalImage | None:
        """Pull a build's base that the machine lacks, so its ONBUILD triggers can be
        read before the build is decided (the daemon would read them only after its own
        pull). Only a name the policy allows is pulled, recorded first as an allowed
        pull made for the build (the bypass monitor's ledger then explains it); a
        denied one is left to the build's own decision (None). A pull that fails, or
        leaves nothing under the name, refuses the build with the advice to pull first.

        ``registry_config``: a classic build's ``X-Registry-Config``, whose matching
        credentials dockerd's builder would pull with (``base_pull.auth_for``).
        """
        try:
            ref = image_reference(lookup.name, "base image")
        except InspectionError:
            return None  # not a name (an ID prefix, say): nothing to pull by it
        now, identity = datetime.now(UTC), self.identity_of(peer)
        verdict = decide(self.policy(), ref, now=now, identity=identity, host=self.host).verdict
        if verdict is Verdict.DENY:
            return None
        detail = (
            f"base image of a build ({endpoint}), pulled by Pullgate to read its ONBUILD "
            "triggers before the build"
        )
        pull = Wanted(lookup.name, ref, EventAction.PULL, detail=detail)
        denial, gate = self.record(Inspection(wants=(pull,)), endpoint, peer)
        if gate is not None:
            try:
                # Shielded: a client that hangs up cancels the pull, never the audit write.
                denial = denial or await asyncio.shield(gate)
            except Exception:  # any failure to record refuses
                denial = "pullgate: the audit log could not be written"
        if denial is not None:
            raise InspectionError(denial, 403)
        auth = registry_auth_header(registry_configs(registry_config), ref)
        image: LocalImage | None = None
        triggers: dict[str, None] = {}
        for platform in lookup.platform.split(",") if lookup.platform else [""]:
            problem = await self._pull(ref, platform.strip(), auth)
            if problem is not None:
                raise InspectionError(base_pull_refusal(lookup.name, problem), 403)
            # Read after each platform's pull: the name keeps only the last variant
            # locally, and the daemon fetches the others (their triggers) itself.
            image = await self.local_image(lookup.name)
            if image is None:
                why = "the daemon holds nothing under that name after the pull"
                raise InspectionError(base_pull_refusal(lookup.name, why), 403)
            triggers.update(dict.fromkeys(image.onbuild))
        assert image is not None
        return dataclasses.replace(image, onbuild=tuple(triggers))

    async def _pull(self, ref: Reference, platform: str, auth: str | None) -> str | None:
        """``POST /images/create`` on a connection of the shim's own, its progress read
        as it streams: None when the pull succeeded, else why it did not. Bounded by
        ``PULL_IDLE_SECONDS`` without progress and ``PULL_LIMIT_SECONDS`` in all; at
        either the shim hangs up, which cancels the daemon's pull."""
        target = pull_target(ref, platform)
        shown = ref.familiar_string() + (f" ({platform})" if platform else "")
        print(f"pullgate: pulling the build's base image {shown} first", file=sys.stderr)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PULL_LIMIT_SECONDS
        progress = PullProgress()
        status = 0
        try:
            async with asyncio.timeout(min(deadline, loop.time() + PULL_IDLE_SECONDS)) as bound:
                if self.endpoint_transport is not None:
                    # A Windows pipe: one answer, read whole (no credentials carried),
                    # so only the overall limit applies.
                    bound.reschedule(deadline)
                    answer = await self.endpoint_transport.request(
                        "POST", target, PULL_LIMIT_SECONDS
                    )
                    status = answer.status
                    progress.feed(answer.body)
                else:
                    async with docker_api.stream(
                        self.config.upstream,
                        target,
                        timeout=PULL_IDLE_SECONDS,
                        listener_uid=self.config.user,
                        listener_executables=self.config.desktop_executables,
                        method="POST",
                        headers=[("X-Registry-Auth", auth)] if auth else [],
                    ) as stream:
                        status = stream.status
                        async for chunk in stream.chunks():
                            progress.feed(chunk)
                            if progress.error is not None:
                                break
                            bound.reschedule(min(deadline, loop.time() + PULL_IDLE_SECONDS))
        except TimeoutError:
            if loop.time() >= deadline - 1:
                return f"the pull took longer than {PULL_LIMIT_SECONDS:.0f} s"
            return f"the pull made no progress for {PULL_IDLE_SECONDS:.0f} s"
        except OSError as e:  # DockerAPIError and ListenerError are OSErrors
            return f"the daemon could not be asked to pull it: {e}"
        progress.finish()
        if status != 200:
            return _pull_answer_problem(status, progress)
        if progress.error is not None:
            return f"the daemon's pull failed: {printable(progress.error)}"
        print(f"pullgate: pulled the build's base image {shown}", file=sys.stderr)
        return None

    def record(
        self, inspection: Inspection, endpoint: str, peer: PeerInfo
    ) -> tuple[str | None, Awaitable[str | None] | None]:
        """Decide and record an inspection: the message of its first denial (if any),
        and the audit write to wait for before acting on it (if one is under way)."""
        policy = self.policy()
        now = datetime.now(UTC)
        denial: str | None = None
        # Images first: a denied image says more than the setting of what could not be read.
        seen: set[tuple[str, bool, EventAction]] = set()
        for want in inspection.wants:
            key = (str(want.reference), want.all_tags, want.action)
            if key in seen:
                continue  # one image named twice (manifest.json and repositories)
            seen.add(key)
            message = self._decide_one(policy, want, now, endpoint, peer)
            if message is not None and denial is None:
                denial = message
        setting = inspection.setting
        if setting is not None:
            verdict = "allow" if setting.allowed else "deny"
            message = None
            if not setting.allowed:
                message = f"pullgate: {setting.reason}."
                if setting.hint:
                    message += f" Instead, {setting.hint}."
                denial = denial or message
            self.sink.emit(
                DecisionEvent(
                    action=str(setting.action),
                    decision=verdict,
                    image=None,
                    input=None,
                    category=None,
                    rule=setting.setting,
                    reason=setting.reason,
                    policy=policy.label,
                    policy_serial=policy.serial,
                    endpoint=endpoint,
                    message=message,
                    peer=peer,
                    identity=_email(self.identity_of(peer)),
                )
            )
        gate: Awaitable[str | None] | None = None
        if (inspection.wants or setting) and self.audit_gate:
            ready = self.audit_gate()
            if ready is None or isinstance(ready, str):
                denial = denial or ready
            else:
                gate = ready
        return denial, gate

    async def decide_build(
        self,
        inspection: Inspection,
        endpoint: str,
        peer: PeerInfo,
        every_stage: Callable[[], Inspection] | None = None,
    ) -> str | None:
        """Resolve local images, ``record``, then wait for the audit write: for the
        BuildKit tunnels. ``every_stage``: the same build with every stage decided, used
        when a local base image has ONBUILD triggers (a trigger's ``--from`` can build a
        stage the target does not reach)."""
        try:
            pulled: set[str] = set()
            looked, triggers = await self.build_lookups(inspection, endpoint, peer, pulled)
            if triggers and every_stage is not None:
                wider, _ = await self.build_lookups(every_stage(), endpoint, peer, pulled)
                # Both: the first read variants (of other platforms) no longer local.
                setting = looked.setting if wider.setting is None else wider.setting
                if looked.setting is not None and not looked.setting.allowed:
                    setting = looked.setting
                looked = Inspection(wants=looked.wants + wider.wants, setting=setting)
            inspection = looked
        except InspectionError as e:
            return e.message
        denial, gate = self.record(inspection, endpoint, peer)
        if gate is not None:
            try:
                refusal = await gate
            except Exception:  # any failure to record refuses
                refusal = "pullgate: the audit log could not be written"
            denial = denial or refusal
        return denial

    async def host_setting(
        self,
        access: HostAccess,
        action: EventAction,
        peer: PeerInfo,
        groups: frozenset[int] | None = None,
    ) -> SettingOutcome | None:
        """``containers.host_access``: refuse what hands a container the host (a denial
        outcome), or None. Host paths are resolved now, off the event loop, beneath the
        daemon's root and following links as the mount will, and judged against what
        the client could reach itself; what the daemon keeps (its data root) is asked
        of it."""
        policy = self.policy()
        if policy.containers.host_access is HostAccessSetting.ALLOW or not access:
            return None
        facts: dict[str, PathFacts] = {}
        requester = None
        protection = Protection()
        problems = None
        if self.windows_paths is not None:
            problems = await self._windows_problems(self.windows_paths, access, peer, policy)
        elif access.paths:
            paths = [p.lookup for p in access.paths]
            # Beneath a root daemon's own root; a Desktop user's listener is theirs to
            # run in any mount namespace, so there the agent's own view is used.
            daemon = self.config.upstream if self.config.user is None else None
            facts, requester = await asyncio.to_thread(
                lambda: (
                    host_paths.examine(paths, daemon=daemon),
                    host_paths.requester(
                        peer.pid, peer.uid, peer.gid, inside=peer.contained, groups=groups
                    ),
                )
            )
            protection = await self._protection(policy)
        if problems is None:
            problems = judge(access, facts, protection, requester)
        if not problems:
            return None
        return SettingOutcome(
            action,
            "containers.host_access",
            False,
            "the container would get the host's root access ("
            + "; ".join(defuse(p) for p in problems)
            + f"), which {policy.label} does not allow (containers.host_access: deny)",
            "run it without those settings, bind a project directory instead of a system "
            "one, or ask IT to allow the path (containers.allowed_host_paths)",
        )

    async def _windows_problems(
        self, machine: WindowsHostPaths, access: HostAccess, peer: PeerInfo, policy: Policy
    ) -> list[str]:
        """``host_setting`` on a Windows endpoint: the requester's profile (by the SID the
        pipe names them by) and every folder the binds walk through, looked up off the
        event loop, then judged with Windows rules (``judge_windows``)."""
        lookups = windows_lookups(access)
        sid = peer.user

        def look() -> tuple[str | None, dict[str, WindowsPathFacts]]:
            return (machine.profile(sid) if sid else None), machine.examine(lookups)

        # Only a drive path needs them; any other source is refused as written.
        profile, facts = await asyncio.to_thread(look) if lookups else (None, {})
        never, named = system_places(os.environ)
        own = tuple(Place(str(p), "Pullgate's own files") for p in self.config.protected)
        protection = WindowsProtection(
            profile=profile,
            allowed=policy.containers.allowed_host_paths,
            no_bind=never + own,
            named=named,
        )
        devices = Protection(allowed=policy.containers.allowed_host_paths)
        return judge_windows(access, facts, protection, devices)

    async def _protection(self, policy: Policy) -> Protection:
        """What containers must not bind on this machine besides the fixed list: the
        daemon's socket, data root and what its command line and daemon.json name (exec
        root, containerd, pid file), the agent's state and audit directories."""
        now = asyncio.get_running_loop().time()
        upstream = self.config.upstream
        if self._daemon_dirs is None or now - self._daemon_dirs[0] > _DAEMON_DIRS_TTL:
            info = await self.daemon_json("/info", "itself")
            root = info.get("DockerRootDir") if isinstance(info, dict) else None
            named = (
                await asyncio.to_thread(host_paths.daemon_paths, upstream)
                if self.config.user is None
                else []
            )
            own = [root] if isinstance(root, str) and root else []
            self._daemon_dirs = (now, (*own, *named))
        kept = [str(upstream), *map(str, self.config.protected), *self._daemon_dirs[1]]

        daemon = upstream if self.config.user is None else None

        def resolve(paths: list[str]) -> tuple[str, ...]:
            facts = host_paths.examine(paths, daemon=daemon)
            return tuple(facts[p].resolved if p in facts else p for p in paths)

        no_bind, exact = await asyncio.to_thread(
            lambda: (
                resolve(kept),
                resolve([str(self.config.listen)]),
            )
        )
        return Protection(
            no_bind=no_bind,
            exact_allowed=exact,
            allowed=policy.containers.allowed_host_paths,
        )

    def identity_of(self, peer: PeerInfo) -> Identity | None:
        """The identity of the client's OS user; nobody borrows another user's sign-in,
        and a client inside a container (any uid it likes) has none."""
        if self.identities is None or peer.contained:
            return None
        return self.identities.identity_for(principal_of(peer))

    def _decide_one(
        self, policy: Policy, want: Wanted, now: datetime, endpoint: str, peer: PeerInfo
    ) -> str | None:
        identity = self.identity_of(peer)
        d = decide(
            policy,
            want.reference,
            now=now,
            identity=identity,
            host=self.host,
            all_tags=want.all_tags,
        )
        message = None
        if d.verdict is not Verdict.ALLOW:
            context = "all tags" if want.all_tags else want.detail
            message = denial_message(d, context, verb=_VERBS.get(want.action, "pulling"))
        self.sink.emit(
            DecisionEvent(
                action=str(want.action),
                decision=str(d.verdict),
                image=d.canonical if not want.all_tags else f"{d.reference.name} (all tags)",
                input=want.input,
                category=str(d.category),
                rule=d.rule,
                reason=d.reason,
                policy=d.policy,
                policy_serial=d.policy_serial,
                endpoint=endpoint,
                message=message,
                detail=want.detail,
                peer=peer,
                identity=_email(identity),
                remediation=_remediation(d) if d.verdict is not Verdict.ALLOW else None,
            )
        )
        return message if d.verdict is Verdict.DENY else None

    async def start(self) -> None:
        if self.endpoint_transport is not None:
            self._pipe_server = await self.endpoint_transport.serve(lambda: ClientConnection(self))
        elif sys.platform != "win32":
            path = self.config.listen
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RuntimeError(f"cannot create the directory of {path}: {e}") from e
            claim_socket_path(path, "the Docker socket shim")
            loop = asyncio.get_running_loop()
            self._server = await loop.create_unix_server(
                lambda: ClientConnection(self), str(path), backlog=1024
            )
            os.chmod(path, self.config.socket_mode)
            if self.config.socket_group is not None or self.config.user is not None:
                owner = -1 if self.config.user is None else self.config.user
                group = -1 if self.config.socket_group is None else self.config.socket_group
                os.chown(path, owner, group)
        else:
            raise RuntimeError("pullgate: on Windows the shim serves named pipes only")

    def refused_upstream(self, error: ListenerError) -> None:
        """The upstream's listener is not the endpoint's user: keep it for status, and
        tell the audit log (at most once a minute per endpoint: every docker command
        would say it again)."""
        self.upstream_problem = str(error)
        now = asyncio.get_running_loop().time()
        if self._problem_reported and now - self._problem_reported < 60.0:
            return
        self._problem_reported = now
        self.sink.emit(
            NoticeEvent(
                action="upstream-refused",
                outcome="failure",
                severity="warning",
                reason=str(error),
                details={"listen": str(self.config.listen), "upstream": str(self.config.upstream)},
            )
        )

    def refuses_client(self, uid: int | None) -> bool:
        """A Desktop endpoint serves its user and root; anyone else is cut off at once."""
        user = self.config.user
        return user is not None and not (uid is not None and uid in (user, 0))

    async def close(self) -> None:
        if self.endpoint_transport is not None:
            if self._pipe_server is not None:
                await self._pipe_server.close()  # closes its clients' transports too
            for conn in list(self.connections):
                conn.abort()
            return
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.config.listen.unlink()


def _pull_answer_problem(status: int, progress: PullProgress) -> str:
    """Why a pull the daemon answered with an error status failed: its JSON message
    (``{"message": ...}``, read by ``PullProgress`` as a line without ``error``)."""
    why = progress.error or progress.message
    if why is not None:
        return f"the daemon refused the pull (HTTP {status}): {printable(why)}"
    return f"the daemon refused the pull (HTTP {status})"


def _remediation(d: Decision) -> dict[str, str]:
    r = d.remediation
    parts = (
        ("alternative", r.alternative),
        ("hint", r.hint),
        ("help_url", r.help_url),
        ("contact", r.contact),
    )
    return {k: v for k, v in parts if v}


def _email(identity: Identity | None) -> str | None:
    return identity.email if identity is not None else None


#: Headers that carry secrets: a head holding one is never kept in the HeadCache.
_SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "proxy-authorization", "x-registry-auth", "x-registry-config"}
)


class HeadCache:
    """Parsed heads of recent pass-through requests, keyed by their exact bytes.

    Pollers (IDE plugins, dashboards, ``watch docker ps``, the CLI's ``/_ping`` before
    every command) send byte-identical heads again and again. Parsing and routing are
    pure functions of those bytes, so a repeat costs one dict lookup. Only heads routed
    to endpoints that are not inspected, small, and free of credentials are kept; an
    inspected request is always parsed afresh, and a refused head raises before it
    could be kept. Oldest out first once ``limit`` is reached.
    """

    __slots__ = ("entries", "limit")

    #: Longer heads are parsed every time (and a full cache stays well under 1 MiB).
    MAX_HEAD = 2048

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self.entries: dict[bytes, tuple[RequestHead, Route]] = {}

    def add(self, raw: bytes, head: RequestHead, route: Route) -> None:
        if route.inspected or len(raw) > self.MAX_HEAD:
            return
        if any(name in _SECRET_HEADERS for name, _ in head.headers):
            return
        if len(self.entries) >= self.limit:
            del self.entries[next(iter(self.entries))]
        self.entries[raw] = (head, route)


def _credentials(transport: asyncio.BaseTransport) -> tuple[int | None, int | None, int | None]:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return None, None, None
    return peer_credentials(sock)


def _json_response(status: int, message: str, *, close: bool) -> bytes:
    reason = {
        400: "Bad Request",
        403: "Forbidden",
        431: "Request Header Fields Too Large",
        501: "Not Implemented",
        502: "Bad Gateway",
        505: "HTTP Version Not Supported",
    }.get(status, "Error")
    body = json.dumps({"message": defuse(message)}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _upstream_error(path: Path, error: OSError, *, desktop: bool = False) -> str:
    """The client's message for a daemon that cannot be reached; ``desktop``: the
    upstream is the user's own Docker Desktop (``ShimConfig.user``)."""
    if isinstance(error, ListenerError):
        return str(error)  # already the client's message (agent.core.desktop)
    if error.errno in (errno.EMFILE, errno.ENFILE):
        return (
            "pullgate: the agent has run out of file descriptors (too many open connections); "
            "raise its open-file limit (LimitNOFILE) or close idle clients"
        )
    why = {
        errno.ENOENT: "there is no socket at that path",
        errno.ECONNREFUSED: "nothing is listening on it",
        errno.EACCES: "this agent may not open it",
    }.get(error.errno or 0, error.strerror or str(error))
    if desktop:
        return (
            f"pullgate: cannot reach your Docker Desktop at unix://{path} ({why}). Is Docker "
            "Desktop running? Start it and try again, or run `pullgate doctor`."
        )
    return (
        f"pullgate: cannot reach the Docker daemon at unix://{path} ({why}). Is dockerd "
        "running? Check the agent's --upstream setting or run `pullgate doctor`."
    )


#: The reader of every request without a body that goes straight through: framing
#: nothing, it is never fed or changed, so one serves all.
_NO_BODY = BodyReader(None, False)


def _renamed_session(raw: bytes, daemon_id: str) -> bytes:
    """A ``/session`` head with its one X-Docker-Expose-Session-Uuid value replaced."""
    return re.sub(
        rb"(?im)^(x-docker-expose-session-uuid[ \t]*:)[^\r\n]*",
        lambda m: m.group(1) + b" " + daemon_id.encode(),
        raw,
        count=1,
    )


def _renamed_query(target: str, key: str, value: str) -> str:
    """``target`` with the one query parameter ``key`` set to ``value`` (URL-safe), every
    other byte as the client sent it (keys compared decoded, as Go compares them)."""
    path, _, raw_query = target.partition("?")
    parts = raw_query.split("&")
    for n, part in enumerate(parts):
        items = parse_query(part).items
        if items and items[0][0] == key:
            parts[n] = f"{key}={value}"
    return f"{path}?{'&'.join(parts)}"


def _renamed_target(raw: bytes, target: str) -> bytes:
    """A head with its request line's target replaced."""
    line, sep, rest = raw.partition(b"\r\n")
    method, _, tail = line.partition(b" ")
    _, _, version = tail.rpartition(b" ")
    return method + b" " + target.encode("latin-1") + b" " + version + sep + rest


# --- states ---------------------------------------------------------------------------


class State(enum.IntEnum):
    """Where a client connection is. The legal moves between states are ``MOVES``."""

    #: Between requests: the next head is read (where a connection starts).
    HEAD = 0
    #: The head went upstream; the body follows as it arrives.
    BODY = 1
    #: A JSON body is read whole and held; nothing of the request has gone upstream.
    BUFFER = 2
    #: The head went upstream; the archive streams through the scanner, its end held.
    TAR = 3
    #: The client is paused: the daemon is asked (lookups), or a refusal waits for its
    #: audit record.
    DECIDING = 4
    #: The whole request went upstream; its response ends before the next request.
    WAIT = 5
    #: The daemon switched to a raw stream: bytes flow both ways untouched.
    SPLICE = 6
    #: Refused and answered: the rest of the body is read and dropped (bounded).
    DRAIN = 7
    CLOSED = 8
    #: A BuildKit ``/session`` or ``/grpc`` upgrade: HTTP/2 is terminated on both sides
    #: and relayed by a ``buildkit_tunnel.Tunnel``, which reads what builds need.
    TUNNEL = 9


# The hot path compares these module names by identity: ``State.HEAD`` is an attribute
# lookup on the enum class, several times slower than a global (Python 3.11).
_HEAD = State.HEAD
_BODY = State.BODY
_BUFFER = State.BUFFER
_TAR = State.TAR
_DECIDING = State.DECIDING
_WAIT = State.WAIT
_SPLICE = State.SPLICE
_DRAIN = State.DRAIN
_CLOSED = State.CLOSED
_TUNNEL = State.TUNNEL

#: Every legal move, state -> the states it may go to next (``ClientConnection._move``
#: makes each move and refuses any other). Refusing a request answers and then drains
#: (DRAIN) or closes (CLOSED), from any state with a request in progress; while the
#: request's audit record is being written a refusal waits in DECIDING. Closing is legal
#: from every state, CLOSED included (the transport reports what the shim closed).
MOVES: dict[State, frozenset[State]] = {
    # a head: passes (BODY, or WAIT without a body), or is inspected with its body
    # (BUFFER: JSON, TAR: archive)
    _HEAD: frozenset({_BODY, _WAIT, _BUFFER, _TAR, _DECIDING, _DRAIN, _CLOSED}),
    # the body ended (WAIT); the daemon may switch to a raw stream before it has
    _BODY: frozenset({_WAIT, _SPLICE, _DECIDING, _DRAIN, _CLOSED}),
    # the JSON is read: the daemon is asked first (DECIDING), or it is decided and goes
    _BUFFER: frozenset({_DECIDING, _WAIT, _DRAIN, _CLOSED}),
    # the archive is read: the daemon is asked first (DECIDING), or it is decided and
    # its held end goes
    _TAR: frozenset({_DECIDING, _WAIT, _DRAIN, _CLOSED}),
    # answers came: a JSON request is decided from BUFFER again, an archive's end goes;
    # a BuildKit build whose session has started goes on (BODY)
    _DECIDING: frozenset({_BUFFER, _BODY, _WAIT, _DECIDING, _DRAIN, _CLOSED}),
    # the response ended (HEAD) or became a raw stream (SPLICE) or an HTTP/2 tunnel
    # (TUNNEL); a held answer can still be refused
    _WAIT: frozenset({_HEAD, _SPLICE, _TUNNEL, _DECIDING, _DRAIN, _CLOSED}),
    _SPLICE: frozenset({_CLOSED}),
    _TUNNEL: frozenset({_CLOSED}),
    _DRAIN: frozenset({_CLOSED}),
    _CLOSED: frozenset({_CLOSED}),
}
#: MOVES indexed by state, for ``_move`` (a tuple index and an int hash: cheap).
_NEXT: tuple[frozenset[State], ...] = tuple(MOVES[State(i)] for i in range(len(State)))


class IllegalMoveError(RuntimeError):
    """A move ``MOVES`` does not allow: a bug in the shim, never something a client did."""


#: After a refusal, how long and how much of the rest of a request body is read and dropped.
_DRAIN_SECONDS = 30.0
#: How long the daemon's own directories (``/info``, its command line) are taken as
#: known: they change only with a daemon restart, and each create with host paths
#: needs them.
_DAEMON_DIRS_TTL = 60.0
#: Bytes a client may send ahead of the response to its request before it is paused.
_MAX_BACKLOG = 256 * 1024
_DRAIN_BYTES = 1 << 30


class UpstreamProtocol(asyncio.Protocol):
    """The daemon side of one client connection; hands everything to its client."""

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.client.upstream_data(data)

    def eof_received(self) -> bool:
        return self.client.upstream_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.upstream_lost(self)

    def pause_writing(self) -> None:
        self.client.pause_client_reading("upstream")

    def resume_writing(self) -> None:
        self.client.resume_client_reading("upstream")


class ClientConnection(asyncio.Protocol):
    """One client connection: frames, inspects and forwards its requests."""

    def __init__(self, shim: Shim) -> None:
        self.shim = shim
        self.transport: asyncio.Transport | None = None
        self._peer: PeerInfo | None = None
        self.buf = bytearray()
        self.state: State = _HEAD
        self.head: RequestHead | None = None
        self.route: Route | None = None
        self.reader: BodyReader | None = None
        # what the request needs before it may go upstream
        self.held: list[bytes] = []  # request bytes not yet forwarded
        self.held_size = 0
        self.payload = bytearray()
        self.tar: TarScanner | None = None
        self.tar_plan: NeedTar | None = None
        self.holding_tail = False
        self.checked: _Checked | None = None  # see _verify_response
        # the client left while a held request was upstream: its answer is still checked
        self.orphaned = False
        self.response_held: list[bytes] = []
        self.task: asyncio.Task[None] | None = None  # a lookup or a check under way
        # while this request's audit records are written: what it would send meanwhile
        self.audit_wait: asyncio.Future[str | None] | None = None
        self.audit_held: list[bytes] = []
        self.refusal_held: tuple[int, str, bool] | None = None

        # upstream
        self.upstream: UpstreamProtocol | None = None
        self.upstream_pending: list[bytes] = []
        self.connecting: asyncio.Task[None] | None = None
        # response side
        self.rtracker: _ResponseTracker | None = None
        self._spare_tracker: _ResponseTracker | None = None  # see _ResponseTracker.reset
        self.request_done = False
        self.response_done = True
        self.close_after_response = False
        self._paused_by: set[str] = set()
        self.client_eof = False
        self.daemon_eof = False
        self.drained = 0
        self.drain_timer: asyncio.TimerHandle | None = None
        # BuildKit: the upgrade asked for (/session or /grpc), then its tunnel; the
        # registration of a build (POST /build?version=2) until its answer ends
        self.tunnel_kind: str | None = None
        self.tunnel_session: RelayedSession | None = None
        self.tunnel: Tunnel | None = None
        self.build_token: int | None = None

    def _move(self, to: State) -> None:
        """Go to state ``to``; IllegalMoveError if ``MOVES`` does not allow it from here."""
        if to not in _NEXT[self.state]:
            raise IllegalMoveError(f"pullgate: shim state {self.state.name} cannot go to {to.name}")
        self.state = to

    # -- client transport -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        # A pipe's clients were judged before the transport existed (NamedPipeServer: the
        # pipe's ACL, then the client's token); a unix socket's are judged here.
        if self.shim.config.user is not None and self.shim.endpoint_transport is None:
            uid = _credentials(transport)[1]
            if self.shim.refuses_client(uid):
                print(f"pullgate: refused uid {uid} on {self.shim.config.listen}", file=sys.stderr)
                self._move(_CLOSED)
                self.transport.abort()
                return
        # Connect to the daemon while the client is still sending its first request.
        self.connecting = asyncio.get_running_loop().create_task(self._connect(eager=True))
        self.shim.connections.add(self)

    @property
    def _desktop(self) -> bool:
        """This connection is to a user's Docker Desktop endpoint (agent.daemon.desktop)."""
        return self.shim.config.user is not None

    @property
    def peer(self) -> PeerInfo:
        """The client process, looked up once and only when a decision needs it."""
        if self._peer is None and self.shim.endpoint_transport is not None:
            assert self.transport is not None
            self._peer = self.shim.endpoint_transport.peer(self.transport)
        if self._peer is None:
            credentials: tuple[int | None, int | None, int | None] = (None, None, None)
            if self.transport is not None:
                credentials = _credentials(self.transport)
            self._peer = describe_peer(*credentials)
        return self._peer

    def _peer_groups(self) -> frozenset[int] | None:
        """The client's groups as the kernel took them when it connected."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        return peer_groups(sock) if sock is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._move(_CLOSED)
        if self.drain_timer is not None:
            self.drain_timer.cancel()
        self.shim.connections.discard(self)
        self._unregister_build()
        if self.tunnel is not None:
            self.tunnel.close(None)
        if self.tunnel_session is not None:
            self.shim.builds.close_session(self.tunnel_session)
        self._release_upstream(abort=False)

    def _release_upstream(self, *, abort: bool) -> None:
        """The client is gone: cut the daemon off, unless a create, tag or commit was sent
        and its answer is held. Then the answer is still read and checked, and what the
        daemon made is removed if it must be: hanging up cannot skip the check."""
        sent = self.upstream is not None or self.connecting is not None
        if self.checked is not None and sent and self.audit_wait is None:
            self.orphaned = True
            return
        self._close_upstream(abort=abort)

    def data_received(self, data: bytes) -> None:
        if self.state is _HEAD and not self.buf:
            known = self.shim.heads.entries.get(data)
            if known is not None:
                # The read is exactly a head seen before (the cache holds single heads
                # that parsed cleanly and route to endpoints that are not inspected).
                self._pass_through(*known)
                return
        if self.state is _SPLICE:
            self._to_upstream(data)
            return
        if self.state is _TUNNEL:
            if self.tunnel is not None:
                self.tunnel.client_data(data)
            return
        if self.state is _DRAIN:
            self.drained += len(data)
            if self.drained > _DRAIN_BYTES:
                self._end_drain()
            return
        if not self.buf and self.state in (_BODY, _TAR):
            # Fast path for body bytes (load, build contexts, stdin): no copies.
            try:
                n = self._body_bytes(data)
            except ProtocolError as e:
                self._refuse(e.status, f"pullgate: {e.message}")
                return
            except InspectionError as e:
                self._refuse(e.status, e.message)
                return
            except TarScanError as e:
                self._refuse(400, f"pullgate: cannot inspect the {self._tar_what()}: {e}")
                return
            if n == len(data):
                return
            data = data[n:]
        if (
            self.state is _HEAD
            and not self.buf
            and data.endswith(b"\r\n\r\n")
            and data.find(b"\r\n\r\n") == len(data) - 4
        ):
            self._process(head=data)  # exactly one head, nothing after it
            return
        self.buf += data
        if self.state in (_WAIT, _DECIDING):
            if len(self.buf) > _MAX_BACKLOG:
                self.pause_client_reading("backlog")
            return
        self._process()

    def _body_bytes(self, data: bytes) -> int:
        """Pass or scan body bytes straight from a read; returns how many belonged to it."""
        reader = self.reader
        assert reader is not None
        with memoryview(data) as view:
            n, pieces = reader.feed(view)
            if self.state is _TAR:
                assert self.tar is not None
                for piece in pieces:
                    self.tar.feed(piece)
            del pieces
        raw = data if n == len(data) else data[:n]
        if self.state is _BODY:
            if n:
                self._to_upstream(raw)
            if reader.done:
                self._request_complete()
        else:
            self._tar_forward(raw)
        return n

    def eof_received(self) -> bool:
        if self.state is _DRAIN:
            self._end_drain()
            return False
        if self.state is _TUNNEL and self.tunnel is not None:
            self.tunnel.close(None)
            return False
        if self.state is _SPLICE and self.upstream and self.upstream.transport:
            self.client_eof = True
            if self.daemon_eof:
                self._close_both()
                return False
            if self.upstream.transport.can_write_eof():
                self.upstream.transport.write_eof()
            return True
        if self.state in (_WAIT, _DECIDING) and not self.buf:
            # Half-closed after sending its request: it is still owed the response.
            self.close_after_response = True
            return True
        self.abort(client=True)
        return False

    def pause_writing(self) -> None:
        if self.upstream and self.upstream.transport:
            self.upstream.transport.pause_reading()
        if self.state is _TUNNEL:
            # HTTP/2 answers frames itself (PING, SETTINGS acknowledgements): a client
            # that does not read must not be able to make it answer without end.
            self.pause_client_reading("unread")

    def resume_writing(self) -> None:
        if self.upstream and self.upstream.transport:
            self.upstream.transport.resume_reading()
        self.resume_client_reading("unread")

    def pause_client_reading(self, why: str) -> None:
        if not self._paused_by and self.transport and not self.transport.is_closing():
            self.transport.pause_reading()
        self._paused_by.add(why)

    def resume_client_reading(self, why: str) -> None:
        if why not in self._paused_by:
            return  # the common case, once per response: nothing to undo
        self._paused_by.discard(why)
        if not self._paused_by and self.transport and not self.transport.is_closing():
            self.transport.resume_reading()

    def _close_both(self) -> None:
        """Both directions of a spliced stream ended: flush and close both sides."""
        self._move(_CLOSED)
        if self.transport is not None:
            self.transport.close()
        self._close_upstream()

    def abort(self, *, client: bool = False) -> None:
        """Drop both sides. ``client``: the client broke off (see _release_upstream);
        otherwise the daemon's side cannot be trusted either."""
        self._move(_CLOSED)
        if self.transport is not None:
            self.transport.abort()
        if client:
            self._release_upstream(abort=True)
        else:
            self.checked, self.orphaned = None, False
            self._close_upstream(abort=True)

    # -- requests ---------------------------------------------------------------------

    def _process(self, head: bytes | None = None) -> None:
        """Advance the request side as far as the buffered bytes allow.

        ``head`` is a complete request head read straight off the socket (the common
        case: one request per read), handled without copying it through ``buf``.
        """
        try:
            if head is not None:
                self._handle_head(head)
            while self.buf and self.state not in (_WAIT, _DECIDING, _CLOSED, _SPLICE, _DRAIN):
                if self.state is _HEAD:
                    if not self._start_request():
                        return
                elif self.state is _BODY:
                    self._pass_body()
                elif self.state is _BUFFER:
                    self._buffer_body()
                elif self.state is _TAR:
                    self._tar_body()
        except ProtocolError as e:
            self._refuse(e.status, f"pullgate: {e.message}")
        except (InspectionError, RouteError) as e:
            self._refuse(
                e.status,
                e.message if e.message.startswith("pullgate:") else f"pullgate: {e.message}",
            )
        except TarScanError as e:
            self._refuse(400, f"pullgate: cannot inspect the {self._tar_what()}: {e}")

    def _tar_what(self) -> str:
        return self.tar_plan.what if self.tar_plan else "archive"

    def _start_request(self) -> bool:
        end = find_head_end(self.buf)
        if end < 0:
            if len(self.buf) > MAX_HEAD_BYTES:
                raise ProtocolError(431, f"request head larger than {MAX_HEAD_BYTES} bytes")
            return False
        raw = bytes(self.buf[:end])
        del self.buf[:end]
        known = self.shim.heads.entries.get(raw)
        if known is not None:
            self._pass_through(*known)
        else:
            self._handle_head(raw)
        return True

    def _pass_through(self, head: RequestHead, route: Route) -> None:
        """Forward a request to an endpoint that is not inspected; its body streams after.

        The hot path of the shim (``/_ping``, ``/containers/json``, logs, stats...).
        """
        self.head, self.route = head, route
        self.close_after_response = not head.keep_alive
        self._expect_response(head.method, route)
        self._to_upstream(head.raw)
        if head.content_length is None and not head.chunked:
            # No body (most requests): the request is complete; its response comes next.
            self.reader = _NO_BODY
            self.request_done = True
            self._move(_WAIT)
            return
        self.request_done = False
        self.reader = BodyReader(head.content_length, head.chunked)
        self._move(_BODY)
        if self.reader.done:
            self._request_complete()

    def _handle_head(self, raw: bytes) -> None:
        """Frame, route and inspect one head the HeadCache does not know; forward or refuse."""
        head = parse_request_head(raw)
        route = route_request(head.target)
        if not route.inspected:
            self.shim.heads.add(raw, head, route)
            self._pass_through(head, route)
            return
        self.held, self.held_size = [], 0
        self.head, self.route = head, route
        self.request_done = False
        self.close_after_response = not head.keep_alive
        reader = BodyReader(head.content_length, head.chunked)
        self.reader = reader
        if route.endpoint is Endpoint.BUILDKIT_SESSION:
            self._begin_tunnel(head, route)
            return
        plan = inspect_head(route, head, self.shim.policy())
        if isinstance(plan, Inspection) and plan.host_container:
            self._move(_DECIDING)
            self.pause_client_reading("deciding")
            loop = asyncio.get_running_loop()
            self.task = loop.create_task(self._host_then_forward(head, plan))
            return
        if route.endpoint is Endpoint.BUILD:
            query = parse_query(route.raw_query)
            if query.get("version") == "2":
                self._buildkit_build(head, query)
                return
        if isinstance(plan, Inspection):
            if self._apply(plan):
                self._begin_forward(head)
                self._move(_BODY)
                if reader.done:
                    self._request_complete()
            return
        if isinstance(plan, NeedJson):
            reader.want_payload = True
            self.payload = bytearray()
            self.held = [head.raw]
            self._move(_BUFFER)
            if reader.done:
                self._json_ready()
            return
        # NeedTar: the head goes now; the body streams through the scanner.
        reader.want_payload = True
        self.tar = TarScanner(plan.wanted)
        self.tar_plan = plan
        self.holding_tail = False
        self._begin_forward(head)
        self._move(_TAR)
        if reader.done:
            self._tar_ready()
        return

    def _buildkit_build(self, head: RequestHead, query: Query) -> None:
        """``POST /build?version=2``: decide what the request names outright, then
        register the build so its session's Dockerfile is decided when the daemon asks
        for it (``buildkit_tunnel``); the build stays registered until its answer ends.
        A build whose session has not started yet waits for it first."""
        inputs = from_build_query(query)
        registry = self.shim.builds
        if any(registry.daemon_id(s) is None for s in dockerfile_sessions(inputs)):
            self._move(_DECIDING)
            self.pause_client_reading("deciding")
            loop = asyncio.get_running_loop()
            self.task = loop.create_task(self._buildkit_build_later(head, inputs))
            return
        self._buildkit_build_now(head, inputs)

    async def _buildkit_build_later(self, head: RequestHead, inputs: BuildInputs) -> None:
        for session in dockerfile_sessions(inputs):
            await self.shim.builds.wait_for_session(session, SESSION_WAIT)
        if self.state is _CLOSED:
            return
        self.resume_client_reading("deciding")
        self._buildkit_build_now(head, inputs)
        self._process()

    def _buildkit_build_now(self, head: RequestHead, inputs: BuildInputs) -> None:
        registry = self.shim.builds
        sessions, inspection, _ = build_inspection(registry, inputs, self.shim.policy())
        if not self._apply(inspection):
            return
        build = PendingBuild(inputs, self.peer, "POST /build", sessions)
        self.build_token = registry.add(build)
        daemon_session = registry.daemon_id(inputs.session)
        if daemon_session is not None:
            target = _renamed_query(head.target, "session", daemon_session)
            head.raw = _renamed_target(head.raw, target)
        self._begin_forward(head)
        self._move(_BODY)
        assert self.reader is not None
        if self.reader.done:
            self._request_complete()

    def _unregister_build(self) -> None:
        if self.build_token is not None:
            self.shim.builds.remove(self.build_token)
            self.build_token = None

    def _begin_tunnel(self, head: RequestHead, route: Route) -> None:
        """``/session`` or ``/grpc``: forward the upgrade; the tunnel starts on its 101."""
        what = f"BuildKit's {route.path}"
        if head.method != "POST":
            raise InspectionError(f"pullgate: {what} takes POST, not {head.method}")
        if (head.get("upgrade") or "").strip().lower() != "h2c":
            raise InspectionError(
                f"pullgate: {what} must upgrade to h2c; Pullgate relays no other protocol there"
            )
        if head.chunked or (head.content_length or 0) != 0:
            raise InspectionError(f"pullgate: {what} carries no request body")
        session = None
        if route.endpoint is Endpoint.BUILDKIT_SESSION and route.path.endswith("/session"):
            # trimmed as Go's textproto trims a header value, and no more
            session = (head.get("x-docker-expose-session-uuid") or "").strip(" \t")
            if not session:
                raise InspectionError(
                    f"pullgate: {what} names no session (X-Docker-Expose-Session-Uuid)"
                )
        self.tunnel_kind = TunnelKind.SESSION if session is not None else TunnelKind.GRPC
        if session is not None:
            # The daemon knows the session only by an id of the shim's (buildkit_builds).
            self.tunnel_session = self.shim.builds.open_session(session)
            head.raw = _renamed_session(head.raw, self.tunnel_session.daemon_id)
        assert self.reader is not None
        self._begin_forward(head)
        self._move(_BODY)
        if self.reader.done:
            self._request_complete()

    def _start_tunnel(self, rest: bytes) -> None:
        """The daemon switched to HTTP/2: from now on a ``Tunnel`` relays both sides."""
        self._move(_TUNNEL)
        self.response_done = True
        self.rtracker = None
        up = self.upstream.transport if self.upstream is not None else None
        client = self.transport
        if up is None or client is None:
            self.abort()
            return
        assert self.tunnel_kind is not None
        self.tunnel = tunnel = Tunnel(
            self.tunnel_kind,
            self.tunnel_session,
            client.write,
            up.write,
            self._tunnel_closed,
            registry=self.shim.builds,
            decide=self.shim.decide_build,
            policy=self.shim.policy,
            peer=self.peer,
        )
        if rest:
            tunnel.daemon_data(rest)
        if self.buf:
            pending = bytes(self.buf)
            self.buf.clear()
            tunnel.client_data(pending)
        self.resume_client_reading("backlog")

    def _tunnel_closed(self, why: str | None) -> None:
        if why is not None:
            # Bytes the shim could not follow ended a build's tunnel: IT sees it.
            self.shim.sink.emit(
                NoticeEvent(
                    action="buildkit-tunnel-closed",
                    outcome="failure",
                    reason=f"pullgate: a BuildKit tunnel was closed: {why}",
                    severity="warning",
                    details={"kind": self.tunnel_kind or ""},
                    peer=self.peer,
                )
            )
        if self.state is not _CLOSED:
            self._move(_CLOSED)
        if self.transport is not None:
            self.transport.close()
        self._close_upstream()

    def _begin_forward(self, head: RequestHead) -> None:
        self._expect_response(head.method, self.route)
        self._to_upstream(head.raw)

    def _expect_response(self, method: str, route: Route | None) -> None:
        """A request goes upstream now: follow its response from the first byte."""
        self.response_done = False
        if route is not None and route.endpoint is Endpoint.HIJACK:
            self.rtracker = _HijackTracker(method)
        elif self._spare_tracker is not None:
            self.rtracker = self._spare_tracker
            self.rtracker.reset(method)
            self._spare_tracker = None
        else:
            self.rtracker = _ResponseTracker(method)

    def _pass_body(self) -> None:
        assert self.reader is not None
        n, _ = self.reader.feed(memoryview(self.buf))
        if n:
            self._to_upstream(bytes(self.buf[:n]))
            del self.buf[:n]
        if self.reader.done:
            self._request_complete()

    def _request_complete(self) -> None:
        """The whole request went upstream; its response comes before the next request.

        Bytes that arrive meanwhile wait in ``buf`` (Docker clients never pipeline, so
        there are none, and pausing the socket every request would cost two syscalls);
        a client that floods is paused once ``buf`` passes a bound.
        """
        self.request_done = True
        self._move(_WAIT)

    def _take_body(self) -> tuple[bytes, bytes]:
        """Consume this request's bytes from ``buf``: (raw bytes, payload without framing)."""
        assert self.reader is not None
        with memoryview(self.buf) as view:
            n, pieces = self.reader.feed(view)
            payload = b"".join(pieces)
            del pieces
        raw = bytes(self.buf[:n])
        del self.buf[:n]
        return raw, payload

    def _buffer_body(self) -> None:
        assert self.reader is not None
        raw, payload = self._take_body()
        self.payload += payload
        if raw:
            self.held.append(raw)
        if len(self.payload) > MAX_JSON_BODY:
            raise InspectionError(f"pullgate: request body larger than {MAX_JSON_BODY} bytes")
        if self.reader.done:
            self._json_ready()

    def _json_ready(self) -> None:
        assert self.route is not None
        policy = self.shim.policy()
        inspection = inspect_json_body(
            self.route,
            bytes(self.payload),
            policy.on_create,
            host_access=policy.containers.host_access,
            windows=self.shim.windows_paths is not None,
        )
        self.payload = bytearray()
        if inspection.lookups or inspection.host or inspection.host_container:
            self._move(_DECIDING)
            self.pause_client_reading("deciding")
            self.task = asyncio.get_running_loop().create_task(self._lookup_then_decide(inspection))
            return
        self._finish_buffered(inspection)

    async def _lookup_then_decide(self, inspection: Inspection, *, tar: bool = False) -> None:
        """Resolve local images as the daemon will, then decide them by all their names.

        A name the daemon finds by ID (prefix) is not decided as a name: the image's
        own names are. What was checked is remembered to verify the daemon's answer.
        ``tar``: a build whose archive is held (its head and most of it went upstream).
        """
        wants = list(inspection.wants)
        setting = inspection.setting
        checked: _Checked | None = None
        sources: set[str] = set()
        try:
            pulls = tar and any(lookup.base for lookup in inspection.lookups)
            refused = pulls and self.shim.denies_any(inspection, self.peer)
            access = await self._gathered_access(inspection)
            if access:
                action = inspection.host_action or EventAction.CREATE
                setting = (
                    await self.shim.host_setting(access, action, self.peer, self._peer_groups())
                    or setting
                )
            for lookup in inspection.lookups:
                image = await self._lookup_image(lookup)
                if pulls and not refused and lookup.base and (image is None or lookup.force_pull):
                    # A missing base is pulled first, so its ONBUILD triggers are read.
                    image = await self._pull_base(lookup) or image
                if lookup.moves:
                    # Moving a name away can leave content nameless. With a Parent its
                    # ancestors judge it then; without, it is refused by ID — except with
                    # builds: allow (_content_wants): only then may its names not be lost.
                    # A tag onto the content it already names moves nothing.
                    same = (
                        lookup.action is EventAction.TAG
                        and image is not None
                        and image.id in sources
                    )
                    if (
                        image is not None
                        and not same
                        and not image.parent
                        and self.shim.policy().builds is BuildsSetting.ALLOW
                        and loses_last_name(lookup.name, image)
                    ):
                        why = "its last name would move to other content"
                        wants += local_image_wants(lookup.name, image, lookup.action, why)
                    continue
                if image is not None:
                    sources.add(image.id)
                if lookup.after is not None:
                    named = tuple(w for w in inspection.wants if w.input == lookup.name)
                    checked = _Checked(lookup, image.id if image is not None else None, named)
                if image is None:
                    continue
                if lookup.action is EventAction.CREATE and not resolved_by_name(lookup.name, image):
                    # Found by ID: a create never pulls, so the name names nothing it uses
                    # (a build or a service may still pull it: there it stays decided).
                    wants = [w for w in wants if w.input != lookup.name]
                found, outcome = await self.shim.content_wants(lookup, image)
                wants += found
                if lookup.action is EventAction.BUILD:
                    wants += onbuild_wants(lookup.name, image, lookup.action)
                if outcome is not None and (setting is None or setting.allowed):
                    setting = outcome
                if pulls and not refused:
                    # A base's trigger or names may refuse the build already: pull no more.
                    decided = Inspection(tuple(wants), setting)
                    refused = self.shim.denies_any(decided, self.peer)
        except Exception as e:  # a bug too must refuse the request, never leave it waiting
            if not self._refuse_for(e):
                raise
            return
        if self.state is _CLOSED:
            return
        decided = Inspection(wants=tuple(wants), setting=setting)
        self.resume_client_reading("deciding")
        if tar:
            self._finish_tar(decided)
        else:
            self._move(_BUFFER)
            self.checked = checked
            self._finish_buffered(decided)
        self._process()

    def _finish_buffered(self, inspection: Inspection) -> None:
        assert self.head is not None
        if not self._apply(inspection):
            return
        if self.checked is not None:
            # Held until what the daemon made is shown to use the content decided.
            self.response_done = False
            self.rtracker = _HeldTracker(self.head.method)
        else:
            self._expect_response(self.head.method, self.route)
        for chunk in self.held:
            self._to_upstream(chunk)
        self.held = []
        self._request_complete()

    def _refuse_for(self, error: Exception) -> bool:
        """Answer a decision that failed: the daemon unreachable (502), a request that
        cannot be read (its status), or a bug (500). False for a bug, for the caller to
        raise on (the task's failure is then logged)."""
        if isinstance(error, OSError):
            upstream = self.shim.config.upstream
            self._refuse(502, _upstream_error(upstream, error, desktop=self._desktop))
            return True
        if isinstance(error, InspectionError):
            self._refuse(error.status, error.message)
            return True
        self._refuse(500, f"pullgate: internal error while deciding: {type(error).__name__}")
        return False

    async def _gathered_access(self, inspection: Inspection) -> HostAccess:
        """What the request asks of the host, with what it takes from elsewhere: the
        container a (re)start or copy acts on, the containers it borrows mounts or
        namespaces from, and the volumes it mounts, each as the daemon describes it."""
        access = inspection.host
        if inspection.host_container:
            access += await self._container_host_access(inspection.host_container)
        for name in dict.fromkeys(access.borrowed):
            lent = await self._container_host_access(name)
            access += lent.of(f"container {name} (borrowed)")
        for name in dict.fromkeys(access.volumes):
            path = "/volumes/" + quote(name, safe="")
            info = await self.shim.daemon_json(path, f"volume {name!r}")
            if info is not None:
                try:
                    windows = self.shim.windows_paths is not None
                    access += from_volume(name, info, windows=windows)
                except HostAccessError as e:
                    raise InspectionError(
                        f"pullgate: the daemon's volume {name!r}: {e}", 502
                    ) from e
        return access

    async def _host_then_forward(self, head: RequestHead, plan: Inspection) -> None:
        """A request whose body streams (``docker cp`` into a container): judge the
        container's mounts first, then send the head and let the body follow."""
        try:
            access = await self._gathered_access(plan)
            action = plan.host_action or EventAction.ARCHIVE
            setting = (
                await self.shim.host_setting(access, action, self.peer, self._peer_groups())
                if access
                else None
            )
        except Exception as e:  # a bug too must refuse the request, never leave it waiting
            if not self._refuse_for(e):
                raise
            return
        if self.state is _CLOSED:
            return
        self.resume_client_reading("deciding")
        if not self._apply(Inspection(setting=setting)):
            return
        self._begin_forward(head)
        self._move(_BODY)
        assert self.reader is not None
        if self.reader.done:
            self._request_complete()
        self._process()

    async def _container_host_access(self, name: str) -> HostAccess:
        """A container's settings as the daemon keeps them, for a (re)start: its binds
        are mounted again, through whatever their paths lead to now. A container the
        daemon does not know is left to the daemon's own answer."""
        path = "/containers/" + quote(name, safe="") + "/json"
        info = await self.shim.daemon_json(path, f"container {name!r}")
        if info is None:
            return HostAccess()
        try:
            windows = self.shim.windows_paths is not None
            return from_container_config(info, described=True, windows=windows)
        except HostAccessError as e:
            raise InspectionError(f"pullgate: the daemon's container {name!r}: {e}", 502) from e

    async def _pull_base(self, lookup: Lookup) -> LocalImage | None:
        """``Shim.pull_base`` for this classic build, with the credentials its client
        sent for the daemon's own pulls (``X-Registry-Config``, the first one, as Go's
        ``Header.Get`` reads it)."""
        assert self.head is not None and self.route is not None
        config = next((v for k, v in self.head.headers if k == "x-registry-config"), None)
        endpoint = f"{self.head.method} {self.route.path}"
        pull = asyncio.ensure_future(self.shim.pull_base(lookup, endpoint, self.peer, config))
        gone = asyncio.ensure_future(self._client_hung_up())
        try:
            await asyncio.wait((pull, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not pull.done():
                # The client is gone (or this task is cancelled): closing the shim's
                # connection to the daemon cancels the daemon's pull.
                pull.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pull
        if pull.cancelled():
            raise InspectionError(
                "pullgate: the client hung up while Pullgate pulled its build's base image", 400
            )
        return pull.result()

    async def _client_hung_up(self) -> None:
        """Return once the client has closed its connection, which a paused transport
        does not notice: polled for ``POLLHUP``, which Linux reports for a unix socket
        whose peer closed it (not for one only half-closed, ``shutdown(SHUT_WR)``, whose
        client still waits for the answer). Never returns where that cannot be told."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sys.platform != "win32" and sock is not None:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLHUP)
            while self.state is not _CLOSED:
                if any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0)):
                    return
                await asyncio.sleep(_HANGUP_POLL_SECONDS)
            return
        await asyncio.Future()

    async def _lookup_image(self, lookup: Lookup) -> LocalImage | None:
        """The image a lookup means: by name or ID, or a container's image."""
        if not lookup.container:
            return await self.shim.local_image(lookup.name)
        path = "/containers/" + quote(lookup.name, safe="") + "/json"
        info = await self.shim.daemon_json(path, f"container {lookup.name!r}")
        if info is None:
            return None
        image_id = info.get("Image") if isinstance(info, dict) else None
        if not isinstance(image_id, str) or not image_id.startswith("sha256:"):
            raise InspectionError(f"pullgate: the daemon named no image of {lookup.name!r}", 502)
        image = await self.shim.local_image(image_id)
        # The image may be gone (removed with force): the container still holds it.
        return image if image is not None else LocalImage(image_id)

    def _tar_body(self) -> None:
        assert self.reader is not None and self.tar is not None
        raw, payload = self._take_body()
        if raw:
            self.tar.feed(payload)
        self._tar_forward(raw)

    def _tar_forward(self, raw: bytes) -> None:
        """Forward scanned tar body bytes, or hold them once the archive may be ending."""
        assert self.reader is not None and self.tar is not None
        if raw:
            if not self.holding_tail and self.tar.end_started:
                self.holding_tail = True
            if self.holding_tail or self.reader.done:
                self.held.append(raw)
                self.held_size += len(raw)
                if self.held_size > _MAX_HELD_BYTES:
                    raise InspectionError(
                        f"pullgate: more than {_MAX_HELD_BYTES} bytes after the end of the "
                        f"{self._tar_what()}"
                    )
            else:
                self._to_upstream(raw)
        if self.reader.done:
            self._tar_ready()

    def _tar_ready(self) -> None:
        assert self.tar is not None and self.tar_plan is not None
        self.tar.finish()
        found = TarFindings(
            final={name: m.data for name, m in self.tar.members().items()},
            every=[(m.name, m.data) for m in self.tar.all_members()],
            links={**self.tar.symlinks(), **self.tar.hardlinks()},
            link_on_path=self.tar.link_on_path,
        )
        inspection = self.tar_plan.finish(found)
        self.tar = None
        if self.shim.policy().on_create is OnCreateSetting.CHECK and self.route is not None:
            query = parse_query(self.route.raw_query)
            inspection = with_build_lookups(
                inspection,
                query.get_all("t"),
                platform=query.get("platform") or "",
                force_pull=form_bool(query.get("pull") or ""),
            )
        if inspection.lookups:
            # The archive's last bytes stay held while the daemon is asked.
            self._move(_DECIDING)
            self.pause_client_reading("deciding")
            self.task = asyncio.get_running_loop().create_task(
                self._lookup_then_decide(inspection, tar=True)
            )
            return
        self._finish_tar(inspection)

    def _finish_tar(self, inspection: Inspection) -> None:
        if not self._apply(inspection, abort_upstream=True):
            return
        for chunk in self.held:
            self._to_upstream(chunk)
        self.held, self.held_size = [], 0
        self._request_complete()

    # -- decisions --------------------------------------------------------------------

    def _apply(self, inspection: Inspection, *, abort_upstream: bool = False) -> bool:
        """Decide an inspection; on a denial answer 403 and return False."""
        denial = self._denial(inspection)
        if denial is None:
            return True
        if abort_upstream:
            # The daemon has the head and part of the body: cut it off mid-body so it
            # never sees a complete request.
            self._close_upstream(abort=True)
            self.response_done = True
        self._refuse(403, denial, log=False)
        return False

    def _denial(self, inspection: Inspection) -> str | None:
        """Decide and record an inspection: the message of its first denial, if any."""
        assert self.head is not None and self.route is not None
        endpoint = f"{self.head.method} {self.route.path}"
        denial, gate = self.shim.record(inspection, endpoint, self.peer)
        if gate is not None:
            self._await_audit(gate)
        return denial

    def _await_audit(self, gate: Awaitable[str | None]) -> None:
        """Hold what the request sends upstream (or its refusal) until its audit records
        are durable: the write happens off the loop, the answer still comes after it."""
        self.pause_client_reading("audit")
        self.audit_wait = asyncio.ensure_future(gate)
        self.audit_wait.add_done_callback(self._audit_done)

    def _audit_done(self, future: asyncio.Future[str | None]) -> None:
        self.audit_wait = None
        held, self.audit_held = self.audit_held, []
        refusal_held, self.refusal_held = self.refusal_held, None
        if self.state is _CLOSED or self.transport is None:
            return
        self.resume_client_reading("audit")
        if future.cancelled() or future.exception() is not None:
            refusal: str | None = "pullgate: the audit log could not be written"
        else:
            refusal = future.result()
        if refusal_held is not None:
            self._refuse(*refusal_held[:2], log=refusal_held[2])
        elif refusal is not None:
            self._refuse(403, refusal, log=False)
        else:
            for data in held:
                self._to_upstream(data)
            self._process()

    def _refuse(self, status: int, message: str, *, log: bool = True) -> None:
        """Answer locally and close: the rest of this request is never forwarded."""
        if self.state is _CLOSED or self.transport is None:
            return
        if self.audit_wait is not None:  # the answer waits for the audit record
            self.refusal_held = (status, message, log)
            self._move(_DECIDING)
            return
        if log:
            print(f"pullgate: refused a request: {message}", file=sys.stderr)
        if not self.response_done:
            # Part of this request already went upstream (a tar body): drop that side.
            self._close_upstream(abort=True)
        self._close_upstream()
        self.transport.write(_json_response(status, message, close=True))
        if self.reader is not None and self.reader.done and not self.buf:
            self._move(_CLOSED)
            self.transport.close()
            return
        # The client may still be sending the body. Closing now would reset the
        # connection under it, and it would report "broken pipe" instead of our message:
        # end our side, then read and discard until it stops (bounded in bytes and time).
        self._move(_DRAIN)
        self.drained = len(self.buf)
        self.buf.clear()
        self.resume_client_reading("backlog")
        self.resume_client_reading("deciding")
        if self.transport.can_write_eof():
            self.transport.write_eof()
        loop = asyncio.get_running_loop()
        self.drain_timer = loop.call_later(_DRAIN_SECONDS, self._end_drain)

    def _end_drain(self) -> None:
        self._move(_CLOSED)
        if self.drain_timer is not None:
            self.drain_timer.cancel()
            self.drain_timer = None
        if self.transport is not None:
            self.transport.close()

    # -- upstream ---------------------------------------------------------------------

    def _to_upstream(self, data: bytes) -> None:
        if self.audit_wait is not None:
            self.audit_held.append(data)
            return
        up = self.upstream
        if up is not None and up.transport is not None and not up.transport.is_closing():
            up.transport.write(data)
            return
        self.upstream_pending.append(data)
        if self.connecting is None and (
            up is None or up.transport is None or up.transport.is_closing()
        ):
            self.connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self, *, eager: bool = False) -> None:
        loop = asyncio.get_running_loop()
        path = self.shim.config.upstream
        try:
            if self.shim.endpoint_transport is not None:
                protocol = await self._connect_transport(self.shim.endpoint_transport)
            else:
                protocol = await self._connect_unix(loop, path)
        except OSError as e:
            self.connecting = None
            if eager and not self.upstream_pending:
                return  # nothing to send yet: the first request retries and reports
            self.upstream_pending = []
            self.response_done = True
            self._refuse(502, _upstream_error(path, e, desktop=self._desktop))
            return
        self.connecting = None
        if self.state is _CLOSED:
            # The client left before anything reached the daemon: nothing to check.
            self.checked, self.orphaned = None, False
            assert protocol.transport is not None
            protocol.transport.close()
            return
        self.upstream = protocol
        assert protocol.transport is not None
        pending, self.upstream_pending = self.upstream_pending, []
        protocol.transport.writelines(pending)

    async def _connect_unix(self, loop: asyncio.AbstractEventLoop, path: Path) -> UpstreamProtocol:
        user = self.shim.config.user
        if user is not None:
            # Root never connects, for a user, where they could not (red-team finding).
            problem = await asyncio.to_thread(host_paths.user_reach_problem, str(path), user)
            if problem == host_paths.NO_SOCKET:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
            if problem is not None:
                error = ListenerError(unreachable_upstream_problem(str(path), user, problem))
                self.shim.refused_upstream(error)
                raise error
        transport, protocol = await loop.create_unix_connection(
            lambda: UpstreamProtocol(self), str(path)
        )
        if self.shim.config.user is not None:
            try:
                # Off the loop: the program rule reads /proc/PID/exe and stats its file,
                # which a user's listener may keep on a file system that never answers.
                await asyncio.to_thread(
                    check_listener,
                    transport.get_extra_info("socket"),
                    path,
                    self.shim.config.user,
                    self.shim.config.desktop_executables,
                )
            except ListenerError as e:
                transport.abort()
                self.shim.refused_upstream(e)
                raise
            self.shim.upstream_problem = None
        return protocol

    async def _connect_transport(self, via: EndpointTransport) -> UpstreamProtocol:
        """The daemon through the endpoint's own transport (a Windows user's Desktop
        pipe); a refused listener is reported as on a unix Desktop endpoint."""
        try:
            protocol = await via.connect(lambda: UpstreamProtocol(self))
        except ListenerError as e:
            self.shim.refused_upstream(e)
            raise
        self.shim.upstream_problem = None
        return cast(UpstreamProtocol, protocol)

    def _close_upstream(self, *, abort: bool = False) -> None:
        up = self.upstream
        self.upstream = None
        self.upstream_pending = []
        if up is not None and up.transport is not None:
            if abort:
                up.transport.abort()
            else:
                up.transport.close()

    def upstream_lost(self, up: UpstreamProtocol) -> None:
        if self.tunnel is not None and up is self.upstream:
            self.tunnel.close(None)
        if up is not self.upstream:
            return
        self.upstream = None
        if self.orphaned:
            self._orphan_unverified("the daemon closed the connection before answering")
            return
        if self.state is _CLOSED or self.transport is None:
            return
        if self.response_done and self.state is _HEAD and not self.buf:
            return  # idle keep-alive connection closed by the daemon; reconnect on demand
        self.transport.close()
        self._move(_CLOSED)

    def upstream_eof(self) -> bool:
        if self.orphaned:
            return False  # upstream_lost follows: unverified if the answer was not whole
        if self.state is _TUNNEL and self.tunnel is not None:
            self.tunnel.close(None)
            return False
        if self.state is _SPLICE:
            self.daemon_eof = True
            if self.client_eof:
                self._close_both()
                return False
            if self.transport is not None and self.transport.can_write_eof():
                self.transport.write_eof()
            return True
        # A response that runs until the connection closes ends here; so does everything
        # the daemon was still owed. An idle keep-alive connection just reconnects later.
        if not self.response_done and self.transport is not None:
            self.transport.close()
            self._move(_CLOSED)
        return False

    # -- responses --------------------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        if self.orphaned:
            self._orphan_data(data)
            return
        transport = self.transport
        if transport is None or self.state in (_CLOSED, _DRAIN):
            return
        if self.state is _SPLICE:
            transport.write(data)
            return
        if self.state is _TUNNEL:
            if self.tunnel is not None:
                self.tunnel.daemon_data(data)
            return
        tracker = self.rtracker
        if self.response_done or tracker is None:
            # The daemon spoke out of turn (no request in flight): stop trusting framing.
            self.abort()
            return
        upgraded = False
        offset = len(data)
        try:
            tracker.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            upgraded = True
            if e.args and isinstance(e.args[0], int):
                offset = e.args[0]
        except httptools.HttpParserError as e:
            print(f"pullgate: bad response from the daemon: {e}", file=sys.stderr)
            self.abort()
            return
        if tracker.held:
            self._hold_response(data, tracker)
            return
        if self.tunnel_kind is not None and (upgraded or tracker.upgraded):
            if tracker.status != 101:
                self.abort()
                return
            transport.write(data[:offset])
            self._start_tunnel(data[offset:])
            return
        # Bytes go to the client exactly as the daemon sent them, in one write.
        transport.write(data)
        if tracker.extra:
            # The daemon sent bytes after the response (or a second response): we cannot
            # tell whose they are.
            self.abort()
            return
        if upgraded or tracker.upgraded or (tracker.hijack and self._is_hijack(tracker)):
            self._splice()
            return
        if tracker.complete:
            if not tracker.keep_alive:
                self.close_after_response = True
            elif not tracker.hijack and not tracker.head_request:
                # llhttp is ready for the next response: reuse it for the next request.
                self._spare_tracker = tracker
            self._response_complete()

    def _orphan_data(self, data: bytes) -> None:
        """The answer to a held request whose client has left: read it to the end, then
        check it like any other (``_verify_response``)."""
        tracker = self.rtracker
        if tracker is None or not tracker.held:
            self._orphan_unverified("no answer was expected")
            return
        try:
            tracker.parser.feed_data(data)
        except (httptools.HttpParserUpgrade, httptools.HttpParserError):
            self._orphan_unverified("its answer could not be read")
            return
        self._hold_response(data, tracker)

    def _orphan_unverified(self, why: str) -> None:
        lookup = self.checked.lookup if self.checked is not None else None
        self.checked, self.orphaned = None, False
        self.response_held = []
        self._close_upstream(abort=True)
        name = repr(lookup.name) if lookup is not None else "a local image"
        print(
            f"pullgate: a request using {name} whose client left could not be verified: {why}",
            file=sys.stderr,
        )

    def _hold_response(self, data: bytes, tracker: _ResponseTracker) -> None:
        """Keep the answer to a create, tag or commit until ``_verify_response`` is done."""
        self.response_held.append(data)
        size = sum(len(piece) for piece in self.response_held)
        if tracker.extra or tracker.upgraded or size > _MAX_HELD_RESPONSE:
            if self.orphaned:
                self._orphan_unverified("its answer was not a plain HTTP answer")
            else:
                self.abort()
            return
        if not tracker.complete:
            return
        self.orphaned = False  # the whole answer is here: the check runs as for anyone
        # This connection to the daemon has served its purpose; the next request gets a
        # fresh one, so nothing the daemon does with it can reach the client meanwhile.
        self._close_upstream()
        checked, self.checked = self.checked, None
        assert checked is not None and isinstance(tracker, _HeldTracker)
        held, self.response_held = b"".join(self.response_held), []
        self.task = asyncio.get_running_loop().create_task(
            self._verify_response(checked, tracker, held)
        )

    async def _verify_response(self, checked: _Checked, tracker: _HeldTracker, held: bytes) -> None:
        """Release the daemon's answer only if what it made uses the content decided.

        The request still names the image as the client wrote it (so ``docker ps``
        shows that name), and the daemon resolves it again: a retag in between would
        make it use other content. Then that content is decided too, and if it is
        denied what was made is removed and the client gets the 403 instead.
        """
        status, denial = 403, None
        try:
            if 200 <= tracker.status < 300:
                denial = await self._check_made(checked, tracker.body)
        except (OSError, ValueError, InspectionError) as e:
            why = e.message.removeprefix("pullgate: ") if isinstance(e, InspectionError) else e
            status, denial = 502, f"pullgate: could not verify what the daemon made: {why}"
        if self.state is _CLOSED or self.transport is None:
            return
        self.rtracker = None
        if denial is None:
            self.transport.write(held)
            if not tracker.keep_alive:
                self.close_after_response = True
            self._response_complete()
            return
        self.response_done = True
        self._refuse(status, denial)

    async def _check_made(self, checked: _Checked, body: bytes) -> str | None:
        """A denial if the daemon made something from other content than ``checked``."""
        lookup = checked.lookup
        made = ""
        if lookup.after is not After.TAG:
            info = json.loads(body) if body else None
            made_id = info.get("Id") if isinstance(info, dict) else None
            if not isinstance(made_id, str) or not made_id:
                raise InspectionError("pullgate: the daemon's answer names nothing it made", 502)
            made = made_id
        actual: object = None
        image: LocalImage | None = None
        with contextlib.suppress(InspectionError):  # what cannot be verified is removed
            if lookup.after is After.TAG:
                image = await self.shim.local_image(lookup.new_name)
                actual = image.id if image is not None else None
            elif lookup.after is After.CONTAINER:
                path = "/containers/" + quote(made, safe="") + "/json"
                info = await self.shim.daemon_json(path, f"container {made}")
                actual = info.get("Image") if isinstance(info, dict) else None
            else:
                image = await self.shim.local_image(made)
                actual = image.parent if image is not None else None
            if isinstance(actual, str) and actual and actual == checked.image_id:
                return None
            if isinstance(actual, str) and actual:
                image = await self.shim.local_image(actual)
            else:
                actual, image = None, None
        wants: list[Wanted] = []
        outcome = None
        if image is not None:
            if not lookup.container and resolved_by_name(lookup.name, image):
                wants += checked.name_wants
            found, outcome = await self.shim.content_wants(lookup, image)
            wants += found
        denial = self._denial(Inspection(wants=tuple(wants), setting=outcome))
        if denial is None and actual is not None:
            return None
        await self._remove_made(lookup, made)
        what = f"{lookup.name!r} changed while Pullgate was checking it"
        why = (denial or "").removeprefix("pullgate: ")
        return f"pullgate: {what}, and what the daemon made was removed. {why}".strip()

    async def _remove_made(self, lookup: Lookup, made: str) -> None:
        if lookup.after is After.CONTAINER:
            path = "/containers/" + quote(made, safe="") + "?force=1&v=1"
        elif lookup.after is After.TAG:
            path = "/images/" + quote(lookup.new_name, safe="/:@") + "?force=1&noprune=1"
        else:
            path = "/images/" + quote(made, safe="/:@") + "?force=1"
        status, _ = await self.shim.ask_daemon("DELETE", path)
        if status not in (200, 204, 404):
            raise InspectionError(
                f"pullgate: could not remove what the daemon made from {lookup.name!r} "
                f"(HTTP {status}); remove it with docker rm / docker rmi",
                502,
            )

    def _is_hijack(self, tracker: _ResponseTracker) -> bool:
        """dockerd's "200 then raw stream" answer to an attach or exec without Upgrade."""
        if not tracker.headers_done or tracker.status != 200:
            return False
        media = tracker.content_type.split(b";")[0].strip().lower().decode("latin-1")
        return media in _RAW_STREAM_TYPES

    def _splice(self) -> None:
        """From now on bytes flow both ways untouched (attach, exec, BuildKit)."""
        self._move(_SPLICE)
        self.response_done = True
        self.rtracker = None
        if self.buf:
            self._to_upstream(bytes(self.buf))
            self.buf.clear()
        self.resume_client_reading("backlog")

    def _response_complete(self) -> None:
        if self.response_done:
            return
        self._unregister_build()
        self.response_done = True
        self.rtracker = None
        if self.close_after_response or not self.request_done:
            if self.transport is not None:
                self.transport.close()
            self._move(_CLOSED)
            self._close_upstream()
            return
        self._move(_HEAD)
        self.resume_client_reading("backlog")
        if self.buf:
            self._process()


class _ResponseTracker:
    """llhttp callbacks that follow one response as it streams past, in C.

    The shim forwards response bytes untouched; it only needs to know when the response
    ends (to read the client's next request) and whether the daemon switched the
    connection to a raw stream.
    """

    __slots__ = (
        "complete",
        "content_type",
        "extra",
        "head_request",
        "headers_done",
        "keep_alive",
        "parser",
        "status",
        "upgraded",
    )
    #: Whether the request may be answered with "200 then raw stream" (_HijackTracker).
    hijack = False
    #: Whether the answer is held back until it is verified (_HeldTracker).
    held = False

    def __init__(self, method: str) -> None:
        # Only a hijack-capable request needs the content type (see _HijackTracker);
        # llhttp skips callbacks a tracker does not define, which keeps the rest cheap.
        self.parser = httptools.HttpResponseParser(self)
        self.reset(method)

    def reset(self, method: str) -> None:
        """Follow the next response on the same connection with the same parser.

        Only after a complete, keep-alive response to anything but HEAD: llhttp is then
        at the start of the next message, exactly where a new parser would be.
        """
        self.head_request = method == "HEAD"
        self.status = 0
        self.content_type = b""
        self.headers_done = False
        self.complete = False
        self.upgraded = False
        self.extra = False
        self.keep_alive = True

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:
            self.content_type = b""
            return  # interim (100 Continue): the final response follows
        self.headers_done = True
        if self.status == 101:
            self.upgraded = True
        elif self.head_request:
            # A response to HEAD has no body whatever its Content-Length says.
            self.complete = True

    def on_message_complete(self) -> None:
        if self.headers_done:
            # Ask now: once the callback returns, llhttp resets for the next message.
            self.keep_alive = self.parser.should_keep_alive()
            self.complete = True


class _HeldTracker(_ResponseTracker):
    """For a create, tag or commit whose answer is held: also keeps its body."""

    __slots__ = ("body",)
    held = True

    def reset(self, method: str) -> None:
        super().reset(method)
        self.body = b""

    def on_body(self, body: bytes) -> None:
        self.body += body


class _HijackTracker(_ResponseTracker):
    """For attach and exec start: also notes the content type of the answer."""

    __slots__ = ()
    hijack = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 12 and name.lower() == b"content-type":
            self.content_type = value
