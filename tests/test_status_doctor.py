"""``pullgate status`` and ``pullgate doctor`` against a real agent in front of a real dockerd.

The agent runs as ``pullgate agent --control PATH`` (tests/agent_process.py); the CLI runs
as ``python -m agent`` subprocesses with the environment a developer would have, so doctor
resolves the docker CLI's target from real ``DOCKER_HOST`` values and a real context store.
The event-stream check reads the control API with ``curl --unix-socket`` during a real pull.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bench.realdocker import DockerEnv
from tests.agent_process import (
    AgentProcess,
    LineStream,
    docker_via,
    shim_policy,
    start_agent,
)

REPO = Path(__file__).resolve().parent.parent
CLI_TIMEOUT = 30.0
EVENTS_URL = "http://localhost/v1/events"
CLI_COMMAND_ENV = "PULLGATE_TEST_CLI_COMMAND"


def cli_command() -> list[str]:
    """How to run `pullgate`: PULLGATE_TEST_CLI_COMMAND (split like a shell command line,
    e.g. an installed `pullgate`), else this interpreter's `python -m agent`."""
    configured = os.environ.get(CLI_COMMAND_ENV, "").strip()
    return shlex.split(configured) if configured else [sys.executable, "-m", "agent"]


class WiredAgent:
    """A running agent and the path of its control socket."""

    def __init__(self, agent: AgentProcess, control: Path) -> None:
        self.agent = agent
        self.control = control


@pytest.fixture
def wired(docker_env: DockerEnv, tmp_path: Path) -> Iterator[WiredAgent]:
    short = Path(tempfile.mkdtemp(prefix="pgsd-", dir="/tmp"))  # sun_path is 108 bytes
    control = short / "control.sock"
    agent = start_agent(
        tmp_path, docker_env.socket_path, shim_policy(), ["--control", str(control)]
    )
    try:
        yield WiredAgent(agent, control)
        agent.stop()
    finally:
        agent.kill()
        shutil.rmtree(short, ignore_errors=True)


def pullgate(
    *args: str, env: Mapping[str, str], timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_command(), *args],
        capture_output=True,
        text=True,
        env=dict(env),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def cli_env(docker_env: DockerEnv, **overrides: str | None) -> dict[str, str]:
    """The docker CLI's private environment (empty DOCKER_CONFIG) with ``overrides``."""
    env = dict(docker_env.env)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def doctor_checks(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    checks: list[dict[str, Any]] = json.loads(result.stdout)
    return {c["name"]: c for c in checks}


def use_context(config_dir: Path, name: str, host: str) -> None:
    """A docker context store with ``name`` -> ``host`` selected in config.json."""
    meta = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host}}})
    )
    (config_dir / "config.json").write_text(json.dumps({"currentContext": name}))


# --- status ---------------------------------------------------------------------------


def test_status_summarises_the_running_agent_and_its_last_decision(
    wired: WiredAgent, docker_env: DockerEnv
) -> None:
    denied = docker_via(wired.agent, docker_env, "pull", "someuser/tool")
    assert denied.returncode != 0
    result = pullgate("status", "--control", str(wired.control), env=cli_env(docker_env))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "mode:           enforce" in out
    assert "org:            acme" in out
    assert f"unix://{wired.agent.socket_path}" in out
    assert f"unix://{docker_env.socket_path} (--upstream)" in out
    assert "state local" in out
    assert "sign-in is not configured (no oidc_issuer)" in out
    assert "deny" in out and "docker.io/someuser/tool:latest" in out


def test_status_json_carries_the_contract_fields(wired: WiredAgent, docker_env: DockerEnv) -> None:
    result = pullgate("status", "--json", "--control", str(wired.control), env=cli_env(docker_env))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["mode"] == "enforce"
    assert status["org"] == "acme"
    assert status["policy"]["serial"] == 1
    assert status["policy"]["state"] == "local"
    assert status["listen"] == str(wired.agent.socket_path)
    assert status["upstream"] == str(docker_env.socket_path)
    assert status["identity"] == {"configured": False}
    assert status["agent"]["pid"] == wired.agent.proc.pid
    assert status["caller"] == {"uid": 0}
    assert isinstance(status["last_decisions"], list)


def test_status_without_an_agent_says_so_and_exits_1(tmp_path: Path) -> None:
    result = pullgate("status", "--control", str(tmp_path / "none.sock"), env={})
    assert result.returncode == 1
    assert "not reachable" in result.stderr


# --- doctor ---------------------------------------------------------------------------


def test_doctor_fails_with_the_fix_while_docker_host_is_the_upstream_daemon(
    wired: WiredAgent, docker_env: DockerEnv
) -> None:
    env = cli_env(docker_env, DOCKER_HOST=docker_env.docker_host)
    result = pullgate("doctor", "--control", str(wired.control), env=env)
    assert result.returncode == 1, result.stdout
    assert f"FAIL  docker uses the shim: docker uses {docker_env.docker_host} (DOCKER_HOST)" in (
        result.stdout
    )
    assert f"fix: export DOCKER_HOST=unix://{wired.agent.socket_path}" in result.stdout
    checks = doctor_checks(pullgate("doctor", "--json", "--control", str(wired.control), env=env))
    assert [name for name, c in checks.items() if c["result"] == "FAIL"] == ["docker uses the shim"]


def test_doctor_passes_when_docker_host_is_the_shim(
    wired: WiredAgent, docker_env: DockerEnv
) -> None:
    env = cli_env(docker_env, DOCKER_HOST=wired.agent.docker_host)
    result = pullgate("doctor", "--control", str(wired.control), env=env)
    assert result.returncode == 0, result.stdout
    checks = doctor_checks(pullgate("doctor", "--json", "--control", str(wired.control), env=env))
    for name in (
        "agent reachable",
        "upstream reachable",
        "shim reachable",
        "docker uses the shim",
        "policy fresh and verified",
        "clock sane",
    ):
        assert checks[name]["result"] == "OK", checks[name]
    assert all(c["result"] in ("OK", "SKIP") for c in checks.values()), checks


def test_doctor_follows_the_current_docker_context(
    wired: WiredAgent, docker_env: DockerEnv, tmp_path: Path
) -> None:
    to_shim, to_daemon = tmp_path / "shim-config", tmp_path / "daemon-config"
    use_context(to_shim, "pullgate", wired.agent.docker_host)
    use_context(to_daemon, "direct", docker_env.docker_host)
    control = ("--json", "--control", str(wired.control))
    env = cli_env(docker_env, DOCKER_HOST=None, DOCKER_CONFIG=str(to_shim))
    assert (
        doctor_checks(pullgate("doctor", *control, env=env))["docker uses the shim"]["result"]
        == "OK"
    )
    env = cli_env(docker_env, DOCKER_HOST=None, DOCKER_CONFIG=str(to_daemon))
    check = doctor_checks(pullgate("doctor", *control, env=env))["docker uses the shim"]
    assert check["result"] == "FAIL"
    assert "docker context 'direct'" in check["detail"]
    assert check["fix"].startswith("pullgate context install")


def test_doctor_reports_a_dead_upstream_and_shim(docker_env: DockerEnv, tmp_path: Path) -> None:
    """The agent answers, but the daemon it forwards to is gone: both pings fail."""
    dead = Path(tempfile.mkdtemp(prefix="pgdead-", dir="/tmp"))
    try:
        upstream = dead / "gone.sock"
        control = dead / "control.sock"
        agent = start_agent(
            tmp_path,
            upstream,
            shim_policy(),
            ["--control", str(control)],
            expect_ping_ok=False,
        )
        try:
            env = cli_env(docker_env, DOCKER_HOST=agent.docker_host)
            result = pullgate("doctor", "--json", "--control", str(control), env=env)
            agent.stop()
        finally:
            agent.kill()
    finally:
        shutil.rmtree(dead, ignore_errors=True)
    assert result.returncode == 1
    checks = doctor_checks(result)
    assert checks["upstream reachable"]["result"] == "FAIL"
    assert "start the Docker daemon" in checks["upstream reachable"]["fix"]
    assert checks["shim reachable"]["result"] == "FAIL"


def test_doctor_without_an_agent_fails_and_names_the_fix(tmp_path: Path) -> None:
    result = pullgate("doctor", "--control", str(tmp_path / "none.sock"), env={})
    assert result.returncode == 1
    assert "FAIL  agent reachable" in result.stdout
    assert "fix: start the agent" in result.stdout


# --- the event stream during a real pull ----------------------------------------------


def test_denied_pull_reaches_the_event_stream_within_100_ms(
    wired: WiredAgent, docker_env: DockerEnv
) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "curl is not installed (scripts/install-system-deps.sh)"
    proc = subprocess.Popen(
        [curl, "-sS", "-N", "--max-time", "60", "--unix-socket", str(wired.control), EVENTS_URL],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    try:
        assert proc.stdout is not None
        lines = LineStream(proc.stdout)
        first = lines.next(10.0)
        assert first is not None and first.startswith(": pullgate"), first
        denied = docker_via(wired.agent, docker_env, "pull", "someuser/tool")
        assert "pullgate:" in denied.stderr
        deadline = time.monotonic() + 10.0
        while True:
            line = lines.next(max(0.01, deadline - time.monotonic()))
            arrived = time.time()
            assert line is not None
            if line.startswith("data: ") and '"type":"decision"' in line:
                event = json.loads(line[len("data: ") :])
                break
    finally:
        proc.terminate()
        proc.wait(5)
    assert event["decision"] == "deny"
    assert event["image"] == "docker.io/someuser/tool:latest"
    assert event["peer"]["uid"] == 0
    assert arrived - event["time"] < 0.1, f"{(arrived - event['time']) * 1000:.0f} ms"


def test_doctor_fails_an_audit_log_the_agent_cannot_write(tmp_path: Path) -> None:
    from agent.cli.status_cmd import check_audit

    checks = check_audit(
        {
            "dir": str(tmp_path),
            "healthy": False,
            "failing": "No space left on device",
            "failing_since": "2026-01-01T00:00:00Z",
            "lost_records": 3,
            "audit_failure": "deny",
        }
    )
    assert checks[0].result == "FAIL"
    assert "No space left on device" in checks[0].detail
    assert "audit_failure=deny" in checks[0].detail
    assert checks[0].fix is not None and "free disk space" in checks[0].fix


def test_doctor_compares_the_agents_sequence_and_hash_with_the_chain_on_disk(
    tmp_path: Path,
) -> None:
    """A file deleted under the running agent: the agent wrote records the disk does not
    have. A rewritten tail: the disk has another hash at the agent's sequence."""
    from agent.cli.status_cmd import check_audit
    from agent.daemon.audit_log import AuditLog
    from tests.test_audit import decision_event

    log = AuditLog(tmp_path, native_log=False, host="laptop").open()
    for _ in range(3):
        log.append(decision_event())
    status = log.status()
    log.close()  # (the clean close is not needed by the check; it keeps the test simple)
    checks = check_audit(status)
    assert [c.result for c in checks] == ["OK", "OK"], checks

    ahead = {**status, "sequence": status["sequence"] + 4}
    chain = check_audit(ahead)[1]
    assert chain.result == "FAIL" and "4 record(s) (up to sequence 7)" in chain.detail
    assert "not in the log on disk" in chain.detail

    other = {**status, "last_hash": "ab" * 32}
    chain = check_audit(other)[1]
    assert chain.result == "FAIL" and "is not the one the agent wrote" in chain.detail


def test_doctor_reports_records_lost_under_a_writable_agent(tmp_path: Path) -> None:
    from agent.cli.status_cmd import check_audit

    checks = check_audit(
        {
            "dir": str(tmp_path),
            "healthy": False,
            "writable": True,
            "integrity": "audit-x.jsonl was deleted: records sequence 1-3 are lost",
        }
    )
    assert checks[0].result == "FAIL" and "records were lost" in checks[0].detail


@pytest.mark.parametrize(
    ("monitor", "result", "fragment"),
    [
        ({"running": True, "following_events": True, "errors": 0}, "OK", "following"),
        ({"running": False, "errors": 0}, "FAIL", "stopped"),
        ({"running": True, "errors": 2, "last_error": "judging: KeyError"}, "FAIL", "KeyError"),
        (None, "SKIP", "--no-watch"),
        (
            {
                "running": True,
                "following_events": False,
                "errors": 0,
                "listener_problem": "served by /usr/bin/python3 (pid 7), which is not Docker "
                "Desktop",
            },
            "FAIL",
            "not following the daemon's events: served by /usr/bin/python3",
        ),
    ],
)
def test_doctor_fails_a_stopped_or_erring_bypass_watch(
    monitor: dict[str, Any] | None, result: str, fragment: str
) -> None:
    from agent.cli.status_cmd import check_bypass_monitor

    check = check_bypass_monitor(monitor)
    assert (check.result, fragment in check.detail) == (result, True), check


def test_doctor_fails_a_disk_ahead_of_the_agent_once_asked_again(tmp_path: Path) -> None:
    """Records on disk past the agent's last one: read after the status, so asked again;
    if the agent still has not written that far, someone else wrote them."""
    from agent.cli.status_cmd import check_audit
    from agent.daemon.audit_log import AuditLog
    from tests.test_audit import decision_event

    log = AuditLog(tmp_path, native_log=False, host="laptop").open()
    for _ in range(3):
        log.append(decision_event())
    behind = log.status()  # what the agent says before the disk runs on
    for _ in range(2):
        log.append(decision_event())
    now = log.status()
    log.close()

    chain = check_audit(behind, lambda: behind)[1]  # asked again: still at 3
    assert chain.result == "FAIL", chain
    assert "runs 2 record(s) past the agent's last record (sequence 3" in chain.detail
    assert check_audit(behind)[1].result == "FAIL"  # no answer: the first status stands

    assert check_audit(behind, lambda: now)[1].result == "OK"  # it had written on meanwhile
    forged = {**now, "last_hash": "ab" * 32}
    chain = check_audit(behind, lambda: forged)[1]
    assert chain.result == "FAIL" and "is not the one the agent wrote" in chain.detail


def test_doctor_says_try_again_when_the_log_never_holds_still(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent.cli.status_cmd import check_audit_chain
    from agent.daemon import audit_verify

    class Moving:
        stable = False

    monkeypatch.setattr(audit_verify, "verify_directory", lambda directory: Moving())
    chain = check_audit_chain(tmp_path, {})
    assert chain.result == "SKIP" and "try again" in chain.detail


@pytest.mark.parametrize(("uptime", "flagged"), [(120.0, True), (None, True), (2.0, False)])
def test_doctor_fails_a_refresh_loop_that_never_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uptime: float | None, flagged: bool
) -> None:
    from agent.cli import status_cmd

    status = {
        "agent": {"pid": 4242, "uptime_seconds": uptime},
        "upstream": str(tmp_path / "upstream.sock"),
        "listen": str(tmp_path / "shim.sock"),
        "policy": {
            "state": "fresh",
            "enforcing": 'org "acme" policy serial 1',
            "source": "cache",
            "expires_at": "2999-01-01T00:00:00+00:00",
            "refresh_loop": "not started",
        },
    }
    monkeypatch.setattr(status_cmd, "fetch_status", lambda control: (tmp_path / "c.sock", status))

    checks = status_cmd.diagnose(None, {}, tmp_path)

    unstarted = [c for c in checks if "has not started" in c.detail]
    if flagged:
        assert len(unstarted) == 1 and unstarted[0].result == status_cmd.FAIL, checks
        assert unstarted[0].fix == "restart the agent"
    else:
        assert unstarted == [], checks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/exe")
def test_doctor_asks_desktops_listener_what_the_agent_asks(tmp_path: Path) -> None:
    """Doctor's own ping of a user's Desktop socket applies the agent's program rule
    (status' ``executables``) besides the uid, and says what the agent's sandbox stops."""
    from agent.cli.status_cmd import check_desktop

    path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    endpoint = {"uid": os.getuid(), "user": "me", "upstream": str(path), "context": "pullgate"}
    desktop: dict[str, Any] = {
        "running": True,
        "endpoints": [endpoint],
        "executables": ["/opt/docker-desktop/bin/com.docker.backend"],
        "privilege_problems": ["without CAP_DAC_OVERRIDE the agent cannot open users' sockets"],
    }
    try:
        checks = {c.name: c for c in check_desktop(desktop, 0)}
    finally:
        server.close()
    ping = checks["Docker Desktop of me (" + str(os.getuid()) + ")"]
    assert ping.result == "FAIL" and "which is not Docker Desktop" in ping.detail, ping
    privileges = checks["agent's privileges for Desktop mode"]
    assert privileges.result == "FAIL" and "CAP_DAC_OVERRIDE" in privileges.detail
    assert "docs/deploy/linux.md" in (privileges.fix or "")
