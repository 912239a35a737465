"""Docker Desktop mode (``enforcement: desktop``): one shim endpoint per logged-in user.

The agent runs as root (LaunchDaemon, systemd) and its policy, state and audit log are
the system's. Every few seconds it looks at who is logged in
(``agent.platform.desktop_users``), plans one endpoint per user (``agent.core.desktop``)
and applies the difference: an endpoint is a :class:`~agent.daemon.shim.Shim` listening
on ``<users_dir>/<uid>/docker.sock`` (the directory root's, 0755; the socket the
user's, 0600) and forwarding to the user's Docker Desktop socket, but only once the
kernel says that socket is served by that user, running one of ``desktop_executables``
from a file only root can change (``ShimConfig.user``, ``desktop_executables``: a process
of the user's in Desktop's place could tell the agent's connections from their own); a
per-user bypass monitor watches the Desktop socket for clients that go around the
endpoint, and reports a listener that is not Docker Desktop instead of following it (on
Linux also any process holding its connection or the listening socket that is not:
``peer.check_holders``, which the shim's per-request connections skip); and
the user's docker CLI is pointed at the endpoint by a docker context, created by running
the docker CLI as the user (so nothing in the user's home is written with root's rights).

The rescan is a supervised task: an error in one pass is counted, reported in status
and as an audit notice, and the next pass runs; if the task itself ends, status says
``running: false`` and ``pullgate doctor`` fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.keys import DesktopContext
from agent.core.desktop import (
    EndpointPlan,
    desktop_executables,
    plan_endpoints,
)
from agent.core.desktop_context import choose_context, needs_current_host
from agent.core.events import NoticeEvent
from agent.core.policy.document import Policy
from agent.daemon.bus import DecisionSink
from agent.daemon.bypass import ApprovalLedger, BypassMonitor
from agent.daemon.desktop_common import EndpointSink, RescanLoop
from agent.daemon.shim import IdentitySource, Shim, ShimConfig
from agent.platform.desktop_users import desktop_privilege_problems, make_root_dir, session_users
from agent.platform.paths import default_desktop_users_dir
from agent.platform.peer import ListenerError

__all__ = [
    "CONTEXT_NAME",
    "DEFAULT_USERS_DIR",
    "RESCAN_INTERVAL",
    "DesktopEndpoints",
    "find_docker_cli",
]

DEFAULT_USERS_DIR = default_desktop_users_dir()
RESCAN_INTERVAL = 2.0
"""Seconds between looks at who is logged in: a user who logs in waits at most this long
for their endpoint (their Docker Desktop takes longer to start anyway)."""
CONTEXT_NAME = "pullgate"
CLI_TIMEOUT = 20.0
DOCKER_CLIS = (
    "/usr/local/bin/docker",  # Docker Desktop for Mac's link; docker-ce's on some Linuxes
    "/opt/homebrew/bin/docker",
    "/Applications/Docker.app/Contents/Resources/bin/docker",
    "/usr/bin/docker",  # docker-desktop and docker-ce-cli packages on Linux
)


def find_docker_cli(candidates: tuple[str, ...] = DOCKER_CLIS) -> str | None:
    """The docker CLI the agent runs as each user to install their context."""
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class _Endpoint:
    plan: EndpointPlan
    shim: Shim
    monitor: BypassMonitor | None
    added_at: float = field(default_factory=time.time)
    context: str = "not installed yet"
    context_error: str | None = None
    # The user's config.json and our context's meta.json as (mtime, size) when the context was
    # last applied; the initial value matches no files, so a new endpoint applies it at once.
    config_stamp: tuple[tuple[int, int] | None, ...] = ()
    # Applying the context runs the docker CLI as the user, maybe slowly: a task of its
    # own per endpoint, so one user's slow CLI never holds up the others' rescans.
    context_task: asyncio.Task[None] | None = None


class DesktopEndpoints:
    """The per-user endpoints, kept in step with who is logged in (a ``Service``)."""

    def __init__(
        self,
        *,
        users_dir: Path,
        policy: Callable[[], Policy],
        sink: DecisionSink,
        audit_gate: Callable[[], str | Awaitable[str | None] | None] | None = None,
        identities: IdentitySource | None = None,
        context_mode: DesktopContext = DesktopContext.ENFORCE,
        sessions_dir: Path | None = None,
        platform: str = sys.platform,
        interval: float = RESCAN_INTERVAL,
        watch: bool = False,
        docker_cli: str | None = None,
        protected: tuple[Path, ...] = (),
        executables: tuple[str, ...] | None = None,
    ) -> None:
        self.users_dir = users_dir
        # The programs that may serve a user's Desktop socket (desktop_executables).
        self.executables = executables if executables is not None else desktop_executables(platform)
        self.protected = protected  # the agent's state and audit dirs (host_access)
        self.policy = policy
        self.sink = sink
        self.audit_gate = audit_gate
        self.identities = identities
        self.context_mode = context_mode
        self.sessions_dir = sessions_dir
        self.platform = platform
        self.watch = watch  # a bypass monitor per endpoint, with the endpoint's own approvals
        self.docker_cli = docker_cli if docker_cli is not None else find_docker_cli()
        self.endpoints: dict[int, _Endpoint] = {}
        # What the agent's own privileges stop it doing (the packaged unit's sandbox).
        self.privilege_problems: list[str] = []
        self.rescans = RescanLoop(
            self.rescan, sink, interval=interval, details={"users_dir": str(users_dir)}
        )

    # -- the service --------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(make_root_dir, self.users_dir)  # refused: the agent stops
        self.privilege_problems = await asyncio.to_thread(desktop_privilege_problems)
        if self.privilege_problems:
            self.sink.emit(
                NoticeEvent(
                    action="desktop-privileges",
                    outcome="failure",
                    severity="warning",
                    reason="pullgate: Docker Desktop mode cannot work fully here: "
                    + "; ".join(self.privilege_problems)
                    + ". Add the systemd drop-in of docs/deploy/linux.md (Docker Desktop "
                    "for Linux) and restart pullgate-agent",
                    details={"problems": self.privilege_problems},
                )
            )
        await self.rescans.start()  # the users logged in now are served before "ready"

    async def close(self) -> None:
        await self.rescans.stop()
        for uid in list(self.endpoints):
            await self._remove(uid, "agent stopping")

    def status(self) -> dict[str, Any]:
        """For ``GET /v1/status`` (``desktop``) and ``pullgate doctor``."""
        return {
            "users_dir": str(self.users_dir),
            **self.rescans.status(),
            "docker_cli": self.docker_cli,
            "context_mode": str(self.context_mode),
            "executables": list(self.executables),
            "privilege_problems": list(self.privilege_problems),
            "endpoints": [
                {
                    "uid": e.plan.uid,
                    "user": e.plan.user,
                    "listen": e.plan.listen,
                    "upstream": e.plan.upstream,
                    "upstream_problem": e.shim.upstream_problem or _held(e.monitor),
                    "context": e.context,
                    "context_error": e.context_error,
                    "bypass_monitor": e.monitor.status() if e.monitor is not None else None,
                }
                for e in sorted(self.endpoints.values(), key=lambda e: e.plan.uid)
            ],
        }

    # -- one pass -------------------------------------------------------------------------

    async def rescan(self) -> None:
        """Look who is logged in, add and remove endpoints, refresh contexts."""
        users = await asyncio.to_thread(session_users, self.sessions_dir, self.platform)
        plans = plan_endpoints(users, str(self.users_dir), self.platform)
        for uid in [uid for uid in self.endpoints if uid not in plans]:
            await self._remove(uid, "logged out")
        for uid, plan in plans.items():
            current = self.endpoints.get(uid)
            if current is not None and current.plan != plan:
                await self._remove(uid, "account changed")
                current = None
            if current is None:
                await self._add(plan)
        for endpoint in list(self.endpoints.values()):
            if endpoint.context_task is not None and not endpoint.context_task.done():
                continue
            stamp = await asyncio.to_thread(_config_stamp, endpoint.plan.home)
            if stamp != endpoint.config_stamp:
                endpoint.context_task = asyncio.get_running_loop().create_task(
                    self._install_context(endpoint), name=f"desktop-context-{endpoint.plan.uid}"
                )

    async def _add(self, plan: EndpointPlan) -> None:
        listen = Path(plan.listen)
        await asyncio.to_thread(make_root_dir, listen.parent)
        # The monitor's approvals are what went through this endpoint (EndpointSink).
        ledger = ApprovalLedger() if self.watch else None
        shim = Shim(
            ShimConfig(
                listen=listen,
                upstream=Path(plan.upstream),
                socket_mode=0o600,
                user=plan.uid,
                desktop_executables=self.executables,
                protected=self.protected,
            ),
            self.policy,
            self.sink if ledger is None else EndpointSink(self.sink, ledger),
            audit_gate=self.audit_gate,
            identities=self.identities,
        )
        await shim.start()
        monitor = None
        if ledger is not None:
            monitor = BypassMonitor(
                Path(plan.upstream),
                self.sink,
                shim_listen=listen,
                approved=ledger,
                upstream_uid=plan.uid,
                upstream_executables=self.executables,
                on_listener=lambda error: _listener_seen(shim, error),
            )
            await monitor.start()
        endpoint = _Endpoint(plan, shim, monitor)
        self.endpoints[plan.uid] = endpoint
        self.sink.emit(
            NoticeEvent(
                action="desktop-endpoint",
                outcome="success",
                reason=f"serving {plan.user} (uid {plan.uid}) on unix://{plan.listen}, "
                f"in front of their Docker Desktop at unix://{plan.upstream}",
                details={"uid": plan.uid, "listen": plan.listen, "upstream": plan.upstream},
            )
        )

    async def _remove(self, uid: int, why: str) -> None:
        endpoint = self.endpoints.pop(uid, None)
        if endpoint is None:
            return
        if endpoint.context_task is not None:
            endpoint.context_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await endpoint.context_task
        if endpoint.monitor is not None:
            await endpoint.monitor.close()
        await endpoint.shim.close()
        with contextlib.suppress(OSError):
            Path(endpoint.plan.listen).parent.rmdir()
        self.sink.emit(
            NoticeEvent(
                action="desktop-endpoint",
                outcome="success",
                reason=f"stopped serving {endpoint.plan.user} (uid {uid}): {why}",
                details={"uid": uid, "listen": endpoint.plan.listen},
            )
        )

    # -- the user's docker context --------------------------------------------------------

    async def _install_context(self, endpoint: _Endpoint) -> None:
        """Create or update the ``pullgate`` context as the user, and select it by the
        ``desktop_context`` rule. Never raises: the outcome is kept for status."""
        plan = endpoint.plan
        try:
            endpoint.context = await self._apply_context(plan)
            endpoint.context_error = None
        except asyncio.CancelledError:
            raise
        except Exception as e:  # OSError, the CLI's RuntimeError, a timeout, a bug
            message = f"the docker context for {plan.user} could not be set: {e}"
            if endpoint.context_error != message:
                self.sink.emit(
                    NoticeEvent(
                        action="desktop-context",
                        outcome="failure",
                        severity="warning",
                        reason=f"pullgate: {message}",
                        details={"uid": plan.uid},
                    )
                )
            endpoint.context_error = message
        # Whatever happened, wait for the next change of config.json (ours included).
        endpoint.config_stamp = await asyncio.to_thread(_config_stamp, plan.home)

    async def _apply_context(self, plan: EndpointPlan) -> str:
        host = f"unix://{plan.listen}"
        have = await self._docker(
            plan, "context", "inspect", CONTEXT_NAME, "--format", "{{.Endpoints.docker.Host}}"
        )
        if have is None:
            await self._docker_ok(
                plan,
                "context",
                "create",
                CONTEXT_NAME,
                "--description",
                "Docker Desktop through Pullgate's image policy",
                "--docker",
                f"host={host}",
            )
        elif have != host:
            await self._docker_ok(
                plan, "context", "update", CONTEXT_NAME, "--docker", f"host={host}"
            )
        current = await self._docker(plan, "context", "show")
        install_only = self.context_mode is DesktopContext.INSTALL
        current_host = None
        if not install_only and current is not None and needs_current_host(current, CONTEXT_NAME):
            current_host = await self._docker(
                plan, "context", "inspect", current, "--format", "{{.Endpoints.docker.Host}}"
            )
        choice = choose_context(
            install_only=install_only,
            current=current,
            current_host=current_host,
            desktop_host=f"unix://{plan.upstream}",
            ours=CONTEXT_NAME,
        )
        if choice.select:
            await self._docker_ok(plan, "context", "use", CONTEXT_NAME)
        return choice.status

    async def _docker_ok(self, plan: EndpointPlan, *args: str) -> None:
        if await self._docker(plan, *args, check=True) is None:  # pragma: no cover
            raise RuntimeError(f"docker {' '.join(args)} failed")

    async def _docker(self, plan: EndpointPlan, *args: str, check: bool = False) -> str | None:
        """Run the docker CLI as the user: its stdout stripped, None if it failed (with
        ``check``: RuntimeError naming the command and its error)."""
        if self.docker_cli is None:
            raise RuntimeError("no docker CLI found (looked at " + ", ".join(DOCKER_CLIS) + ")")
        if sys.platform == "win32":  # never run there: agent.daemon.windows_desktop is
            gid = -1
        else:
            import pwd  # noqa: PLC0415

            gid = pwd.getpwuid(plan.uid).pw_gid
        env = {
            "HOME": plan.home,
            "USER": plan.user,
            "LOGNAME": plan.user,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }
        # A thread, not the loop's subprocess support: uvloop's takes no user or group.
        try:
            done = await asyncio.to_thread(
                subprocess.run,
                [self.docker_cli, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=env,
                cwd="/",
                user=plan.uid,
                group=gid,
                extra_groups=[],
                umask=0o077,
                timeout=CLI_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise TimeoutError(
                f"`docker {' '.join(args)}` as {plan.user} took over {e.timeout} s"
            ) from e
        out, err = done.stdout, done.stderr
        if done.returncode != 0:
            if check:
                text = err.decode(errors="replace").strip().splitlines()
                raise RuntimeError(
                    f"`docker {' '.join(args)}` as {plan.user} exited with {done.returncode}: "
                    + (text[-1] if text else "no message")
                )
            return None
        return out.decode(errors="replace").strip()


def _listener_seen(shim: Shim, error: ListenerError | None) -> None:
    """The bypass monitor's word on the endpoint's upstream: a refusal is the endpoint's
    problem (status, doctor, an ``upstream-refused`` record) as when the shim refuses
    one; a checked connection clears it, as the shim's own does."""
    if error is not None:
        shim.refused_upstream(error)
    else:
        shim.upstream_problem = None


def _held(monitor: BypassMonitor | None) -> str | None:
    """The monitor's refusal by the holder check (``peer.check_holders``): the shim's own
    connections make only the listen()-time check, so their passing must not clear it."""
    return monitor.held_problem if monitor is not None else None


def _config_stamp(home: str) -> tuple[tuple[int, int] | None, ...]:
    """The user's docker config.json and the ``pullgate`` context's meta.json as
    (mtime, size) each: a change means the context may have been switched or repointed
    (``docker context update`` writes only its meta.json). ``stat`` only; the files are
    never read with root's rights."""
    docker = Path(home) / ".docker"
    meta = docker / "contexts" / "meta" / hashlib.sha256(CONTEXT_NAME.encode()).hexdigest()
    stamps: list[tuple[int, int] | None] = []
    for path in (docker / "config.json", meta / "meta.json"):
        try:
            info = os.stat(path)
        except OSError:
            stamps.append(None)
            continue
        stamps.append((info.st_mtime_ns, info.st_size))
    return tuple(stamps)
