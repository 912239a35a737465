"""Bypass awareness: the pure ledger and reconciler, then the monitor against a real daemon.

The real tests reach the private dockerd directly (DOCKER_HOST at its socket, a container
mounting it, a process holding it) and expect a `bypass-suspected` notice within a bounded
wait; the same pull approved by the shim (a real agent's decision) must produce none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agent.core.events import DecisionEvent, Event, NoticeEvent
from agent.daemon.bus import DecisionSink
from agent.daemon.bypass import (
    ApprovalLedger,
    BypassMonitor,
    DaemonImageEvent,
    Reconciler,
    container_socket_mounts,
    parse_daemon_event,
    socket_clients,
)
from bench.realdocker import DockerEnv, SeededImage, docker
from tests.agent_process import docker_via, shim_policy, start_agent

T = TypeVar("T")
WAIT = 20.0
"""Bound on every wait for a notice from the real daemon."""


def run(coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def allowed(image: str | None, at: float, action: str = "image-pull") -> DecisionEvent:
    return DecisionEvent(
        action=action,
        decision="allow",
        image=image,
        input=image,
        category="official",
        rule="category:official",
        reason="test",
        policy="test",
        policy_serial=1,
        endpoint="POST /images/create",
        time=at,
    )


def event(
    action: str, subject: str, name: str | None = None, at: float = 1000.0
) -> DaemonImageEvent:
    return DaemonImageEvent(action, subject, name, at, int(at * 1e9))


IMAGE_ID = "sha256:" + "ab" * 32


# --------------------------------------------------------------------------- ledger


def test_ledger_approves_the_daemons_familiar_name_of_an_allowed_canonical_reference() -> None:
    ledger = ApprovalLedger(window=60)
    ledger(allowed("docker.io/library/alpine:latest", 1000.0))
    assert ledger.was_approved("alpine:latest", 1010.0)
    assert ledger.was_approved("alpine", 1010.0)
    assert ledger.was_approved("registry-1.docker.io/library/alpine:latest", 1010.0)
    assert not ledger.was_approved("alpine:3", 1010.0)
    assert not ledger.was_approved("someuser/alpine:latest", 1010.0)


def test_ledger_forgets_approvals_older_than_the_window() -> None:
    ledger = ApprovalLedger(window=60)
    ledger(allowed("docker.io/library/alpine:latest", 1000.0))
    assert ledger.was_approved("alpine:latest", 1060.0)
    assert not ledger.was_approved("alpine:latest", 1100.0)
    assert not ledger.was_approved("alpine:latest", 900.0), "an event before the decision"


def test_ledger_ignores_denials_and_counts_monitor_mode_would_deny() -> None:
    ledger = ApprovalLedger()
    base = allowed("docker.io/someuser/tool:1.0", 1000.0)
    ledger(DecisionEvent(**{**base.to_json(), "decision": "deny", "peer": base.peer}))
    assert not ledger.was_approved("someuser/tool:1.0", 1001.0)
    ledger(DecisionEvent(**{**base.to_json(), "decision": "would_deny", "peer": base.peer}))
    assert ledger.was_approved("someuser/tool:1.0", 1001.0)


def test_ledger_matches_digests_and_all_tags_pulls() -> None:
    digest = "sha256:" + "cd" * 32
    ledger = ApprovalLedger()
    ledger(allowed(f"docker.io/library/nginx@{digest}", 1000.0))
    ledger(allowed("docker.io/acme/app (all tags)", 1000.0))
    assert ledger.was_approved(f"nginx@{digest}", 1001.0)
    assert not ledger.was_approved("nginx:latest", 1001.0)
    assert ledger.was_approved("acme/app:v7", 1001.0)
    assert not ledger.was_approved("not a reference!", 1001.0)


# --------------------------------------------------------------------------- reconciler


def test_unapproved_pull_is_a_warning_naming_the_image() -> None:
    findings = Reconciler(ApprovalLedger(), grace=0).observe(
        event("pull", "someuser/tool:1.0"), 1000.0
    )
    assert len(findings) == 1
    assert findings[0].severity == "warning"
    assert findings[0].details["image"] == "someuser/tool:1.0"
    assert "someuser/tool:1.0" in findings[0].reason


def test_approved_pull_is_not_reported() -> None:
    ledger = ApprovalLedger()
    ledger(allowed("docker.io/someuser/tool:1.0", 999.0))
    assert Reconciler(ledger, grace=0).observe(event("pull", "someuser/tool:1.0"), 1000.0) == []


def test_a_decision_recorded_just_after_the_daemon_event_still_approves_it() -> None:
    ledger = ApprovalLedger()
    reconciler = Reconciler(ledger, grace=2.0)
    assert reconciler.observe(event("pull", "alpine:latest", at=1000.0), 1000.0) == []
    assert reconciler.observe(event("pull", "nginx:latest", at=1000.0), 1000.0) == []
    ledger(allowed("docker.io/library/alpine:latest", 999.5))  # reaches the ledger late
    assert reconciler.due(1001.0) == [], "judged only after the grace"
    assert [f.details["image"] for f in reconciler.due(1002.0)] == ["nginx:latest"]
    assert reconciler.pending == 0


def test_load_is_approved_by_an_allowed_load_decision_and_so_are_its_tags() -> None:
    ledger = ApprovalLedger()
    ledger(allowed(None, 999.0, action="image-load"))
    reconciler = Reconciler(ledger, grace=0, tag_grace=1.0)
    assert reconciler.observe(event("load", IMAGE_ID), 1000.0) == []
    assert reconciler.observe(event("tag", IMAGE_ID, "whatever:1"), 1000.0) == []
    assert reconciler.due(1010.0) == []


def test_unapproved_import_folds_its_earlier_tag_into_one_warning() -> None:
    reconciler = Reconciler(ApprovalLedger(), grace=0, tag_grace=1.0)
    assert reconciler.observe(event("tag", IMAGE_ID, "imp/x:1"), 1000.0) == []
    findings = reconciler.observe(event("import", IMAGE_ID), 1000.1)
    assert [f.severity for f in findings] == ["warning"]
    assert findings[0].details["tags"] == ["imp/x:1"]
    assert reconciler.due(1010.0) == [], "the tag was reported with the import"


def test_undecided_tag_is_reported_as_info_after_the_grace() -> None:
    reconciler = Reconciler(ApprovalLedger(), grace=0, tag_grace=2.0)
    assert reconciler.observe(event("tag", IMAGE_ID, "built/x:1"), 1000.0) == []
    assert reconciler.due(1001.0) == []
    findings = reconciler.due(1002.5)
    assert [(f.severity, f.details["image"]) for f in findings] == [("info", "built/x:1")]
    assert "may have bypassed the shim" in findings[0].reason


@pytest.mark.parametrize("action", ["image-tag", "container-commit", "image-build"])
def test_tag_after_an_allowed_tag_commit_or_build_is_not_reported(action: str) -> None:
    # Those decisions name the content used, not the new name the daemon then reports.
    ledger = ApprovalLedger()
    ledger(allowed("docker.io/acme/app:1", 999.0, action=action))
    reconciler = Reconciler(ledger, grace=0, tag_grace=0.0)
    assert reconciler.observe(event("tag", IMAGE_ID, "acme/other:9"), 1000.0) == []
    assert reconciler.due(1001.0) == []


@pytest.mark.parametrize(
    "hostile",
    [
        {"Actor": "not an object"},
        {"Actor": {"ID": ["x"], "Attributes": {"name": "alpine"}}},
        {"Actor": {"ID": "alpine:latest", "Attributes": "x"}},
        {"timeNano": "1795854420111753047", "time": "soon"},
        {"timeNano": None, "time": 1e400},
        {"timeNano": True},
    ],
)
def test_hostile_daemon_events_are_skipped_or_read_never_raise(hostile: dict[str, Any]) -> None:
    pull = {"Type": "image", "Action": "pull", "Actor": {"ID": "alpine:latest"}, "time": 1}
    parsed = parse_daemon_event({**pull, **hostile})
    assert parsed is None or isinstance(parsed.subject, str)


def test_tag_with_an_approved_name_is_not_reported() -> None:
    ledger = ApprovalLedger()
    ledger(allowed("docker.io/acme/app:2", 999.0, action="image-build"))
    reconciler = Reconciler(ledger, grace=0, tag_grace=0.0)
    assert reconciler.observe(event("tag", IMAGE_ID, "acme/app:2"), 1000.0) == []
    assert reconciler.due(1001.0) == []


def test_a_callable_decides_instead_of_a_ledger() -> None:
    reconciler = Reconciler(lambda ev: ev.subject.startswith("alpine"), grace=0)
    assert reconciler.observe(event("pull", "alpine:latest"), 1000.0) == []
    assert len(reconciler.observe(event("pull", "nginx:latest"), 1000.0)) == 1


def test_parse_daemon_event_keeps_only_image_events_we_reconcile() -> None:
    pull = {
        "status": "pull",
        "id": "alpine:latest",
        "Type": "image",
        "Action": "pull",
        "Actor": {"ID": "alpine:latest", "Attributes": {"name": "alpine"}},
        "scope": "local",
        "time": 1795854420,
        "timeNano": 1795854420111753047,
    }
    parsed = parse_daemon_event(pull)
    assert parsed is not None
    assert (parsed.action, parsed.subject, parsed.name) == ("pull", "alpine:latest", "alpine")
    assert parsed.time == pytest.approx(1795854420.111753047)
    assert parse_daemon_event({**pull, "Action": "delete", "status": "delete"}) is None
    assert parse_daemon_event({**pull, "Type": "container"}) is None


def test_container_socket_mounts_finds_the_socket_and_directories_holding_it() -> None:
    upstream = Path("/tmp/somewhere/docker.sock")

    def mounts(*sources: str) -> dict[str, Any]:
        return {"Mounts": [{"Type": "bind", "Source": s, "Destination": "/x"} for s in sources]}

    assert container_socket_mounts(mounts(str(upstream)), upstream)
    assert container_socket_mounts(mounts("/var/run/docker.sock"), upstream)
    assert container_socket_mounts(mounts("/tmp/somewhere"), upstream)
    assert not container_socket_mounts(mounts("/tmp/elsewhere", "/home"), upstream)
    volume = {"Mounts": [{"Type": "volume", "Source": str(upstream)}]}
    assert not container_socket_mounts(volume, upstream)


# --------------------------------------------------------------------------- real daemon


class Collector:
    """A sink subscriber that keeps bypass notices and waits for one, bounded."""

    def __init__(self) -> None:
        self.notices: list[NoticeEvent] = []

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, NoticeEvent) and ev.action == "bypass-suspected":
            self.notices.append(ev)

    async def wait(self, what: str, match: Callable[[NoticeEvent], bool]) -> NoticeEvent:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for notice in self.notices:
                if match(notice):
                    return notice
            await asyncio.sleep(0.05)
        raise AssertionError(
            f"no bypass-suspected notice for {what} within {WAIT:.0f} s; got "
            + repr([(n.reason, n.details) for n in self.notices])
        )


def names_image(image: str) -> Callable[[NoticeEvent], bool]:
    return lambda n: n.details.get("source") == "daemon-events" and n.details.get("image") == image


async def started_monitor(
    env: DockerEnv, ledger: ApprovalLedger, tmp_path: Path, interval: float = 3600.0
) -> tuple[BypassMonitor, Collector]:
    sink = DecisionSink()
    collector = Collector()
    sink.subscribe(collector)
    monitor = BypassMonitor(
        env.socket_path,
        sink,
        shim_listen=tmp_path / "shim.sock",
        approved=ledger,
        interval=interval,
    )
    await monitor.start()
    await asyncio.wait_for(monitor.connected.wait(), 10.0)
    return monitor, collector


async def cli(env: DockerEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(docker, env, *args)


@pytest.mark.usefixtures("denied_image_absent")
def test_direct_pull_is_reported_and_an_approved_one_is_not(
    docker_env: DockerEnv, seeded: dict[str, SeededImage], tmp_path: Path
) -> None:
    async def scenario() -> None:
        ledger = ApprovalLedger()
        monitor, collector = await started_monitor(docker_env, ledger, tmp_path)
        try:
            # As if the shim had allowed it: the decision reaches the ledger first.
            ledger(allowed("docker.io/someuser/tool:1.0", time.time()))
            await cli(docker_env, "pull", "-q", "someuser/tool:1.0")
            # Straight at the daemon socket, no decision: a bypass.
            await cli(docker_env, "pull", "-q", "someuser/tool:latest")
            notice = await collector.wait(
                "someuser/tool:latest", names_image("someuser/tool:latest")
            )
            assert notice.severity == "warning"
            assert notice.outcome == "unknown"
            assert "someuser/tool:latest" in notice.reason
            assert notice.details["upstream"] == str(docker_env.socket_path)
            assert "pullgate context install" in notice.details["fix"]
            # Events arrive in order: the approved pull came first and was not reported.
            assert not [n for n in collector.notices if names_image("someuser/tool:1.0")(n)]
        finally:
            await monitor.close()

    run(scenario())


def test_pull_through_a_real_agent_is_approved_while_a_direct_one_is_reported(
    docker_env: DockerEnv, seeded: dict[str, SeededImage], tmp_path: Path
) -> None:
    docker(docker_env, "image", "rm", "--force", "alpine:latest", "nginx:latest", check=False)
    agent = start_agent(tmp_path, docker_env.socket_path, shim_policy())

    async def scenario() -> None:
        ledger = ApprovalLedger()
        monitor, collector = await started_monitor(docker_env, ledger, tmp_path)
        try:
            mark = agent.mark()
            result = await asyncio.to_thread(docker_via, agent, docker_env, "pull", "-q", "alpine")
            assert result.returncode == 0, result.stderr
            # The agent's real decision records feed the ledger (in the agent, the sink does).
            for record in agent.decisions(mark):
                ledger.approve(record["action"], record["image"], record["time"])
            assert ledger.was_approved("alpine:latest", time.time())
            await cli(docker_env, "pull", "-q", "nginx")
            await collector.wait("nginx:latest", names_image("nginx:latest"))
            assert not [n for n in collector.notices if names_image("alpine:latest")(n)]
        finally:
            await monitor.close()

    try:
        run(scenario())
    finally:
        agent.stop()


def test_container_mounting_the_daemon_socket_is_reported_once(
    docker_env: DockerEnv, seeded: dict[str, SeededImage], container_name: str, tmp_path: Path
) -> None:
    docker(docker_env, "pull", "-q", "alpine")

    async def scenario() -> None:
        monitor, _ = await started_monitor(docker_env, ApprovalLedger(), tmp_path)
        try:
            await cli(
                docker_env,
                "create",
                "--name",
                container_name,
                "--network",
                "none",
                "-v",
                f"{docker_env.socket_path}:/var/run/docker.sock",
                "alpine",
                "sleep",
                "60",
            )
            notices = await monitor.scan_containers()
            mine = [n for n in notices if n.details["container"]["name"] == container_name]
            assert len(mine) == 1, notices
            assert mine[0].severity == "warning"
            assert mine[0].details["mounts"][0]["source"] == str(docker_env.socket_path)
            assert container_name in mine[0].reason
            again = await monitor.scan_containers()
            assert not [n for n in again if n.details["container"]["name"] == container_name]
        finally:
            await monitor.close()

    run(scenario())


def test_starting_a_container_that_mounts_the_socket_is_reported_from_the_event_stream(
    docker_env: DockerEnv, seeded: dict[str, SeededImage], container_name: str, tmp_path: Path
) -> None:
    docker(docker_env, "pull", "-q", "alpine")

    async def scenario() -> None:
        monitor, collector = await started_monitor(docker_env, ApprovalLedger(), tmp_path)
        try:
            await cli(
                docker_env,
                "run",
                "-d",
                "--name",
                container_name,
                "--network",
                "none",
                "-v",
                f"{docker_env.socket_path.parent}:/host-run",
                "alpine",
                "sleep",
                "60",
            )
            notice = await collector.wait(
                container_name,
                lambda n: n.details.get("container", {}).get("name") == container_name,
            )
            assert notice.details["mounts"][0]["destination"] == "/host-run"
        finally:
            await monitor.close()

    run(scenario())


def test_process_holding_the_daemon_socket_is_named_with_pid_once(
    docker_env: DockerEnv, tmp_path: Path
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.connect(sys.argv[1])\n"
            "print('connected', flush=True)\n"
            "time.sleep(60)\n",
            str(docker_env.socket_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "connected"
        # connect() returns once the connection is queued; dockerd accepts it a moment
        # later, and only then is the pair visible. Poll, bounded.
        deadline = time.monotonic() + 10
        clients = socket_clients(docker_env.socket_path, exclude_pids={os.getpid()})
        while holder.pid not in [c.pid for c in clients] and time.monotonic() < deadline:
            time.sleep(0.05)
            clients = socket_clients(docker_env.socket_path, exclude_pids={os.getpid()})
        assert holder.pid in [c.pid for c in clients], clients

        async def scenario() -> None:
            monitor, collector = await started_monitor(docker_env, ApprovalLedger(), tmp_path)
            try:
                # The monitor scans once when it starts, then every `interval`.
                notice = await collector.wait(
                    f"pid {holder.pid}",
                    lambda n: (n.details.get("process") or {}).get("pid") == holder.pid,
                )
                process = notice.details["process"]
                assert process["name"] == Path(sys.executable).name or "python" in process["name"]
                assert process["executable"]
                assert notice.peer is not None and notice.peer.pid == holder.pid
                assert f"pid {holder.pid}" in notice.reason
                assert os.getpid() not in [
                    (n.details.get("process") or {}).get("pid") for n in collector.notices
                ], "the monitor's own process is never reported"
                again = await monitor.scan()
                assert not [
                    n for n in again if (n.details.get("process") or {}).get("pid") == holder.pid
                ], "reported once, not on every scan"
            finally:
                await monitor.close()

        run(scenario())
    finally:
        holder.kill()
        holder.wait(10)


def test_socket_clients_names_the_connected_process_unless_excluded(tmp_path: Path) -> None:
    path = tmp_path / "other.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    accepted, _ = server.accept()
    try:
        assert [c.pid for c in socket_clients(path)] == [os.getpid()]
        assert socket_clients(path, exclude_pids={os.getpid()}) == []
    finally:
        for s in (accepted, client, server):
            s.close()


async def _relay(listen: Path, upstream: Path) -> asyncio.Server:
    """A byte relay from `listen` to the daemon: closing it cuts the monitor's stream the
    way a daemon restart does, without restarting the session's daemon."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(upstream))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    return await asyncio.start_unix_server(handle, str(listen))


def test_monitor_reconnects_when_the_daemon_goes_away_and_comes_back(
    docker_env: DockerEnv, seeded: dict[str, SeededImage], tmp_path: Path
) -> None:
    path = Path(tempfile.mkdtemp(prefix="pgrelay-", dir="/tmp")) / "d.sock"

    async def scenario() -> None:
        sink = DecisionSink()
        collector = Collector()
        sink.subscribe(collector)
        monitor = BypassMonitor(
            path,
            sink,
            shim_listen=tmp_path / "shim.sock",
            approved=ApprovalLedger(),
            interval=3600.0,
            max_backoff=0.5,
        )
        await monitor.start()  # nothing listens yet: it keeps retrying
        try:
            await asyncio.sleep(0.3)
            assert not monitor.connected.is_set()
            relay = await _relay(path, docker_env.socket_path)
            await asyncio.wait_for(monitor.connected.wait(), 10.0)
            relay.close()
            if sys.version_info >= (3, 12):  # pragma: no cover
                relay.close_clients()
            for task in asyncio.all_tasks():
                if task.get_coro().__qualname__.startswith("_relay.<locals>.handle"):  # type: ignore[union-attr]
                    task.cancel()
            deadline = time.monotonic() + 10.0
            while monitor.connected.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not monitor.connected.is_set(), "the stream did not notice the drop"
            path.unlink(missing_ok=True)
            relay = await _relay(path, docker_env.socket_path)
            await asyncio.wait_for(monitor.connected.wait(), 10.0)
            await cli(docker_env, "image", "rm", "--force", "verifiedco/db:latest")
            await cli(docker_env, "pull", "-q", "verifiedco/db")
            await collector.wait("verifiedco/db:latest", names_image("verifiedco/db:latest"))
            relay.close()
        finally:
            await monitor.close()

    try:
        run(scenario())
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


async def _fake_daemon(path: Path, events: list[bytes]) -> asyncio.AbstractServer:
    """A daemon socket whose `/events` streams `events` (chunked) and then stays open."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for line in events:
            writer.write(b"%x\r\n%s\r\n" % (len(line), line))
        await writer.drain()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await asyncio.sleep(3600)

    return await asyncio.start_unix_server(handle, str(path))


def test_the_event_loop_survives_hostile_events_and_its_own_errors(tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="pgfake-", dir="/tmp"))
    path = base / "d.sock"
    pull = {"Type": "image", "Action": "pull", "time": 1795854420}
    events = [
        json.dumps({**pull, "Actor": "x"}).encode() + b"\n",
        json.dumps({**pull, "Actor": {"ID": "boom:1"}}).encode() + b"\n",
        json.dumps({**pull, "Actor": {"ID": "someuser/tool:latest"}}).encode() + b"\n",
    ]

    async def scenario() -> None:
        server = await _fake_daemon(path, events)
        sink = DecisionSink()
        collector = Collector()
        sink.subscribe(collector)
        monitor = BypassMonitor(
            path,
            sink,
            shim_listen=tmp_path / "shim.sock",
            approved=ApprovalLedger(),
            interval=3600.0,
            grace=0.0,
        )
        observe = monitor.reconciler.observe

        def flaky(ev: DaemonImageEvent, now: float) -> list[Any]:
            if ev.subject == "boom:1":
                raise KeyError("a bug in the reconciler")
            return observe(ev, now)

        monitor.reconciler.observe = flaky  # type: ignore[method-assign]
        await monitor.start()
        try:
            await collector.wait("someuser/tool:latest", names_image("someuser/tool:latest"))
            errors = [n for n in collector.notices if "bypass monitor failed" in n.reason]
            assert len(errors) == 1 and "KeyError" in errors[0].reason
            status = monitor.status()
            assert status["running"] and status["errors"] == 1
            assert "KeyError" in str(status["last_error"])
        finally:
            await monitor.close()
            server.close()

    try:
        run(scenario())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_an_abstract_socket_named_with_a_nul_is_no_path() -> None:
    """sock_diag reports abstract sockets with a leading NUL: realpath() of such a name
    raised ValueError and took `pullgate doctor` (and a bypass scan) down with it."""
    from agent.daemon.bypass import _same_socket

    path = Path("/var/run/docker.sock")
    assert not _same_socket("\0/containerd-shim/abc.sock", None, path, 7)
    assert not _same_socket("@/containerd-shim/abc.sock", None, path, 7)
    assert _same_socket(None, 7, path, 7)
    assert _same_socket(str(path), None, path, None)
