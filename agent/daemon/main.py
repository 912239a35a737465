"""The running agent, assembled: the composition root of ``pullgate agent``.

Everything the agent runs is built here from the managed config and the command line's
options — the audit log first (so every later event is recorded), the policy manager,
the shim, the control server, the bypass monitor and the config watcher — and served
until SIGTERM or SIGINT. The command line (``agent.cli.agent_cmd``) only parses
arguments and loads what it was given; docs/architecture.md shows where each part lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent import __version__
from agent.config.check import socket_path_problem, trust_settings
from agent.config.keys import (
    TAKEOVER_UPSTREAM,
    AuditFailure,
    Enforcement,
    ManagedConfig,
    effective_enforcement,
)
from agent.config.parse import ConfigError
from agent.config.sources import DEFAULT_JSON_PATH
from agent.control.contract import default_control_path
from agent.core.events import NoticeEvent
from agent.core.policy.default import default_policy
from agent.core.policy.document import Policy
from agent.daemon.audit_log import AuditLog, AuditLogError, default_audit_dir
from agent.daemon.bus import DecisionSink, StderrSubscriber
from agent.daemon.bypass import ApprovalLedger, BypassMonitor
from agent.daemon.control_server import ControlServer, agent_status
from agent.daemon.desktop import DEFAULT_USERS_DIR, DesktopEndpoints
from agent.daemon.handle import AgentHandle
from agent.daemon.policy_cache import PolicyCache
from agent.daemon.policy_fetch import Fetcher
from agent.daemon.policy_manager import PolicyManager, RefreshSettings
from agent.daemon.shim import Shim, ShimConfig
from agent.daemon.watch import ConfigWatcher

if TYPE_CHECKING:
    from agent.daemon.identities import IdentityStore
from agent.platform import windows
from agent.platform.docker_context import docker_config_dir
from agent.platform.files import atomic_write
from agent.platform.paths import default_state_dir
from agent.platform.sd_notify import Notifier, watchdog_interval
from agent.platform.upstream import (
    UpstreamError,
    default_listen_path,
    find_upstream,
    parse_unix_url,
)

__all__ = ["EXIT_CONFIG", "AgentOptions", "build_manager", "process_age", "run_agent"]

EXIT_CONFIG = 2


@dataclass(frozen=True)
class AgentOptions:
    """What the command line (or a service manager) decided; every other setting comes
    from the managed config ``config`` or the platform's defaults."""

    config: ManagedConfig | None = None
    config_path: Path | None = None
    local_policy: Policy | None = None  # ``--policy FILE``, already loaded and verified
    local_policy_arg: str | None = None
    listen: Path | None = None
    upstream: str | None = None  # a unix:// URL
    control: Path | None = None
    state_dir: Path | None = None
    audit_dir: Path | None = None
    watch: bool = True
    desktop_sessions: Path | None = None  # Desktop mode on Linux: logind's /run/user
    handle: AgentHandle | None = None  # stop from another thread (the Windows service)


def run_agent(options: AgentOptions, *, started: float | None = None) -> int:
    """Assemble the agent and serve until SIGTERM/SIGINT: the composition root.

    ``started``: the monotonic time the process began (for "ready in"); exit 2 for a
    configuration the agent cannot run with, 1 if serving failed, 0 after a clean stop.
    """
    if started is None:
        started = time.monotonic() - process_age()
    _raise_open_file_limit()
    prog = "pullgate agent"
    config = options.config
    sink = DecisionSink()
    sink.subscribe(StderrSubscriber())
    try:
        state_dir = options.state_dir or default_state_dir()
        settings = config or ManagedConfig()
        audit = AuditLog(
            options.audit_dir or settings.audit_dir or default_audit_dir(),
            rotate_bytes=settings.audit_rotate_bytes,
            keep_files=settings.audit_keep_files,
            failure_mode=settings.audit_failure,
            native_log=settings.audit_native_log,
        ).open()
        # The audit log subscribes first: every later event, including policy loading,
        # is recorded. Its writer thread syncs off the event loop; the shim awaits the
        # write (_audit_gate), so a decision is on disk before the request goes on.
        audit.start_writer()
        sink.subscribe(audit)
        manager: PolicyManager | None = None
        if options.local_policy is not None:
            policy: Policy = options.local_policy
            describe = f"{policy.label} (--policy)"
        elif config is not None and config.policy_url:
            manager = build_manager(config, state_dir, sink)
            policy = manager.current()
            describe = f"org policy from {config.policy_url} (now: {policy.label})"
        else:
            policy = default_policy()
            describe = policy.label
        if sys.platform == "win32":
            # The LocalSystem service: Docker Desktop mode only, one pair of pipes per
            # signed-in user (agent.daemon.windows_desktop); these name the pattern.
            # Desktop whatever the default elsewhere; a policy that sets another mode is
            # refused, not silently ignored.
            if "enforcement" in settings.set_keys and settings.enforcement is not (
                Enforcement.DESKTOP
            ):
                why = "on Windows the agent serves Docker Desktop only (enforcement: desktop)"
                raise ConfigError(settings.source, "enforcement", why)
            desktop = True
            listen = Path(windows.shim_pipe_pattern())
            upstream = Path(windows.DESKTOP_ENGINE_PIPE)
            source = "enforcement: desktop (Docker Desktop's pipe, for each signed-in user)"
        else:
            uid = os.geteuid()
            mode = effective_enforcement(settings, platform=sys.platform, system=uid == 0)
            desktop = mode is Enforcement.DESKTOP
            if desktop and uid != 0:
                why = "desktop mode serves every logged-in user: run the agent as root"
                raise ConfigError(settings.source, "enforcement", why)
            if options.listen is not None:
                listen, listen_source = options.listen, "--listen"
            elif config is not None and config.listen is not None:
                listen, listen_source = config.listen, config.source
            else:
                listen, listen_source = default_listen_path(uid, os.environ), "default"
            problem = socket_path_problem(listen)
            if problem is not None:  # a file on the way, not a traceback from the shim's start
                raise ConfigError(listen_source, None if options.listen else "listen", problem)
            if desktop:  # one socket per user below listen, each user's Desktop upstream
                listen = settings.desktop_users_dir or DEFAULT_USERS_DIR
                upstream, source = Path("~/.docker"), "enforcement: desktop (each user's Desktop)"
            elif options.upstream:
                upstream, source = parse_unix_url(options.upstream), "--upstream"
            elif config is not None and config.upstream:
                upstream, source = parse_unix_url(config.upstream), "managed config"
            elif settings.enforcement is Enforcement.TAKEOVER:
                # Never discovered: /var/run/docker.sock leads to this agent in takeover mode.
                upstream, source = parse_unix_url(TAKEOVER_UPSTREAM), "enforcement: takeover"
            else:
                choice = find_upstream(listen, os.environ, Path.home(), uid)
                upstream, source = choice.path, choice.source
    except (UpstreamError, ConfigError, AuditLogError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    group = _socket_group()
    shim_config = ShimConfig(
        listen=listen,
        upstream=upstream,
        socket_mode=0o660 if group is not None else 0o600,
        socket_group=group,
        protected=(state_dir, audit.directory),
    )
    current = manager.current if manager is not None else (lambda: policy)
    identities = build_identities(config, sink) if config is not None else None
    shim = Shim(
        shim_config,
        current,
        sink,
        audit_gate=functools.partial(_audit_gate, audit),
        identities=identities,
    )
    # The control socket sits beside the shim's socket unless told otherwise, so agents
    # started with their own --listen (tests, several daemons) never collide.
    if sys.platform == "win32":
        control_path = Path(windows.control_pipe_pattern())  # one per user (see above)
    elif options.control is not None:
        control_path = options.control
    elif options.listen is not None:
        control_path = listen.parent / "control.sock"
    else:
        control_path = default_control_path(uid, os.environ)
    ledger = ApprovalLedger()
    monitor = (
        BypassMonitor(upstream, sink, shim_listen=listen, approved=ledger)
        if options.watch and not desktop
        else None
    )
    front: Service = shim
    desktop_status = None
    windows_endpoints = None
    if sys.platform == "win32":
        from agent.daemon.windows_desktop import PipeMachine  # noqa: PLC0415
        from agent.daemon.windows_endpoints import WindowsDesktopEndpoints  # noqa: PLC0415

        front = windows_endpoints = WindowsDesktopEndpoints(
            machine=PipeMachine(),
            policy=current,
            sink=sink,
            control=None,  # the control server below, once made
            audit_gate=functools.partial(_audit_gate, audit),
            identities=identities,
            context_mode=settings.desktop_context,
            protected=(state_dir, audit.directory),
            watch=options.watch,  # a bypass monitor per user on Desktop's pipe
        )
        desktop_status = windows_endpoints.status
    elif desktop:
        # Docker Desktop mode (agent.daemon.desktop): no shared socket, but one endpoint
        # per logged-in user in front of their own Docker Desktop, each with its monitor.
        front = endpoints = DesktopEndpoints(
            users_dir=listen,
            policy=current,
            sink=sink,
            audit_gate=functools.partial(_audit_gate, audit),
            identities=identities,
            context_mode=settings.desktop_context,
            sessions_dir=options.desktop_sessions,
            watch=options.watch,
            protected=(state_dir, audit.directory),
            executables=settings.desktop_executables,
        )
        desktop_status = endpoints.status
    control = ControlServer(
        control_path,
        status=functools.partial(
            agent_status,
            policy=current,
            manager=manager,
            local_policy=options.local_policy_arg,
            listen=listen,
            upstream=upstream,
            upstream_source=source,
            control=control_path,
            started_at=time.time(),
            audit=audit.status,
            bypass_monitor=monitor.status if monitor is not None else None,
            desktop=desktop_status,
        ),
        refresh=manager.refresh_now if manager is not None else None,
        identities=identities,
        serve_socket=sys.platform != "win32",  # Windows: each user's control pipe
    )
    if sys.platform == "win32" and windows_endpoints is not None:
        windows_endpoints.control = control
    sink.subscribe(control)
    sink.subscribe(ledger)  # before the shim forwards: a decision is approved first
    services: list[Service] = [control]
    if identities is not None:
        services.append(identities)
    if manager is not None:
        services.append(_Refresher(manager))
    if monitor is not None:
        services.append(monitor)
    if options.watch:
        watcher = ConfigWatcher(
            sink,
            shim_listen=listen,
            docker_config=None if desktop else docker_config_dir(os.environ, Path.home()),
            managed_config=options.config_path or DEFAULT_JSON_PATH,
            policy_cache=state_dir,
        )
        sink.subscribe(watcher)
        services.append(watcher)
    try:
        return _run_loop(
            _serve(
                shim,
                services,
                manager,
                state_dir,
                describe,
                started,
                source,
                handle=options.handle,
                front=front,
            )
        )
    except RuntimeError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    finally:
        audit.close()


def _socket_group() -> int | None:
    """Like dockerd: root's socket is group ``docker`` when that group exists."""
    if sys.platform == "win32":  # pipes carry a security descriptor instead
        return None
    else:
        if os.geteuid() != 0:
            return None
        import grp  # noqa: PLC0415 - POSIX only: the module imports on Windows

        try:
            return grp.getgrnam("docker").gr_gid
        except KeyError:
            return None


def build_manager(config: ManagedConfig, state_dir: Path, sink: DecisionSink) -> PolicyManager:
    """The org policy from the managed config: cache now, refresh in the background."""
    assert config.policy_url is not None
    timeout = config.fetch_timeout.total_seconds()
    fetcher = Fetcher(
        config.policy_url,
        ca_bundle=config.ca_bundle,
        connect_timeout=timeout,
        read_timeout=timeout,
        max_bytes=config.policy_max_bytes,
    )
    manager = PolicyManager(
        trust_settings(config),
        PolicyCache(state_dir),
        default_policy(),
        sink,
        fetcher=fetcher,
        refresh=RefreshSettings(interval=config.refresh_interval),
    )
    manager.load_cache()
    return manager


def build_identities(config: ManagedConfig, sink: DecisionSink) -> IdentityStore | None:
    """Sign-in from the managed config (docs/sign-in.md); None when no issuer is set."""
    if config.oidc_issuer is None or config.oidc_client_id is None:
        return None
    # PyJWT and cryptography load only on agents that verify sign-ins.
    from agent.daemon.identities import IdentityStore, VerifierSettings  # noqa: PLC0415

    settings = VerifierSettings(
        issuer=config.oidc_issuer,
        client_id=config.oidc_client_id,
        scopes=config.oidc_scopes,
        groups_claim=config.oidc_groups_claim,
        methods=config.sign_in_methods,
        max_age=config.identity_max_age,
        allowed_domains=config.allowed_domains,
        ca_bundle=config.ca_bundle,
        # A sign-in waits for the keys: a slow provider must not hold it for minutes.
        timeout=min(config.fetch_timeout.total_seconds(), 10.0),
    )
    return IdentityStore(settings, sink.emit)


def _raise_open_file_limit() -> None:
    """Like dockerd: take the hard limit, since every client is two descriptors here."""
    if sys.platform != "win32":  # Windows has no such limit on handles
        try:
            import resource  # noqa: PLC0415 - POSIX only

            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            if hard == resource.RLIM_INFINITY or hard > soft:
                target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ImportError, ValueError, OSError):
            pass


def process_age() -> float:
    """Seconds since this process started (from /proc), so "ready in" counts Python's
    own start and imports too; falls back to 0 where /proc is missing."""
    if sys.platform == "win32":
        return 0.0
    else:
        try:
            fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            start_ticks = int(fields[19])
            uptime = float(Path("/proc/uptime").read_text().split()[0])
            return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError):
            return 0.0


def _audit_gate(audit: AuditLog) -> str | Awaitable[str | None] | None:
    """After a request's records were handed to the writer thread: wait until they are
    durable (an awaitable while they are not), then, with ``audit_failure: deny``, let
    nothing through that could not be recorded.

    The OS error stays in status: its text ("Permission denied") must not reach the CLI.
    """
    written = audit.flushed()
    if isinstance(written, bool):
        return _audit_verdict(audit, written)
    return _audit_verdict_when(audit, written)


async def _audit_verdict_when(audit: AuditLog, written: Awaitable[bool]) -> str | None:
    return _audit_verdict(audit, await written)


def _audit_verdict(audit: AuditLog, written: bool) -> str | None:
    if written or audit.failure_mode is not AuditFailure.DENY:
        return None
    return (
        "pullgate: the audit log cannot be written, so image pulls are refused until it can "
        "(audit_failure: deny). Run `pullgate status` for the cause and tell your IT "
        "administrator."
    )


class Service(Protocol):
    """A part of the agent with a lifetime: started before serving, closed after."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class _Refresher:
    """The policy manager's refresh loop as a service; SIGHUP asks for a refresh now."""

    def __init__(self, manager: PolicyManager) -> None:
        self.manager = manager
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if sys.platform != "win32":  # a service has no signals: `pullgate policy refresh`
            loop.add_signal_handler(signal.SIGHUP, self.manager.trigger)
        self.task = loop.create_task(self.manager.run())

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def _run_loop(main: Any) -> int:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, plain asyncio otherwise
    except ImportError:
        result: int = asyncio.run(main)
        return result
    return int(uvloop.run(main))


async def _serve(  # noqa: PLR0917 - one call site, every argument distinct
    shim: Shim,
    services: list[Service],
    manager: PolicyManager | None,
    state_dir: Path,
    describe: str,
    started: float,
    source: str,
    handle: AgentHandle | None = None,
    front: Service | None = None,  # what serves clients: the shim, or Desktop's endpoints
) -> int:
    front = front or shim
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if sys.platform != "win32":  # a Windows service stops through its handle instead
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    if handle is not None:
        handle.attach(loop, stop.set)
    running: list[Service] = []
    try:
        for service in services:
            await service.start()
            running.append(service)
        await front.start()
    except BaseException:
        for service in reversed(running):
            await service.close()
        raise
    pidfile = state_dir / "agent.pid"
    with contextlib.suppress(OSError):
        atomic_write(pidfile, f"{os.getpid()}\n".encode())
    ready = time.monotonic() - started
    # systemd (Type=notify): the unit is started once the shim serves; the watchdog is
    # fed from this event loop, so a loop that hangs gets the agent restarted.
    notifier = Notifier.from_environ(os.environ)
    notifier.notify(ready="1", status=f"serving {shim.config.listen}", mainpid=str(os.getpid()))
    interval = watchdog_interval(os.environ, os.getpid())
    watchdog = (
        loop.create_task(_feed_watchdog(notifier, interval), name="sd-watchdog")
        if notifier.enabled and interval is not None
        else None
    )
    shim.sink.emit(
        NoticeEvent(
            action="agent-start",
            outcome="success",
            reason=f"pullgate agent {__version__} started; policy: {describe}",
            details={"listen": str(shim.config.listen), "upstream": str(shim.config.upstream)},
        )
    )
    if front is shim:
        where = (
            f"listening on {shim.config.listen}, upstream unix://{shim.config.upstream} "
            f"({source}), policy: {describe}. "
            f"Point docker at it: export DOCKER_HOST=unix://{shim.config.listen}"
        )
    elif sys.platform == "win32":  # the service: a pair of pipes per signed-in user
        where = (
            f"serving each signed-in user at {shim.config.listen} in front of Docker "
            f"Desktop's {shim.config.upstream} ({source}), policy: {describe}; each user's "
            "'pullgate' docker context is installed to point at theirs (`docker context use "
            "pullgate` selects it)"
        )
    else:  # Docker Desktop mode: one endpoint per logged-in user
        where = (
            f"serving each logged-in user at {shim.config.listen}/<uid>/docker.sock in front "
            f"of their own Docker Desktop ({source}), policy: {describe}; each user's "
            "'pullgate' docker context points at theirs"
        )
    print(
        f"pullgate agent: ready in {ready * 1000:.0f} ms, {where}",
        file=sys.stderr,
        flush=True,
    )
    if handle is not None:
        handle.mark_ready()
    await stop.wait()
    notifier.notify(stopping="1")
    if watchdog is not None:
        watchdog.cancel()
    await front.close()
    for service in reversed(running):
        await service.close()
    shim.sink.emit(NoticeEvent(action="agent-stop", outcome="success", reason="agent stopped"))
    with contextlib.suppress(OSError):
        pidfile.unlink()
    print("pullgate agent: stopped", file=sys.stderr, flush=True)
    if handle is not None:
        handle.detach()
    return 0


async def _feed_watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.notify(watchdog="1")
        await asyncio.sleep(interval)
