"""The audit log of a real agent: real pulls recorded with the client process, a kill -9
in a burst of pulls, and a full disk under both audit_failure settings."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.realdocker import DockerEnv, SeededImage, docker
from tests.agent_process import (
    AgentProcess,
    docker_via,
    in_ci,
    shim_policy,
    skip_or_fail,
    start_agent,
)

CLI = [sys.executable, "-m", "agent"]


def audit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "audit", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def records(audit_dir: Path) -> list[dict[str, Any]]:
    proc = audit("export", "--dir", str(audit_dir), "--since", "1h")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def wait_for(predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def agent_with_audit(
    tmp_path: Path, docker_env: DockerEnv, seeded: dict[str, SeededImage]
) -> Iterator[tuple[AgentProcess, Path]]:
    audit_dir = tmp_path / "audit"
    agent = start_agent(
        tmp_path / "agents",
        docker_env.socket_path,
        shim_policy(),
        ["--audit-dir", str(audit_dir), "--no-watch"],
    )
    try:
        yield agent, audit_dir
    finally:
        agent.kill()


def test_a_real_pull_is_recorded_with_the_client_process_and_its_parents(
    agent_with_audit: tuple[AgentProcess, Path], docker_env: DockerEnv
) -> None:
    agent, audit_dir = agent_with_audit
    docker(docker_env, "rmi", "-f", "someuser/tool", check=False)
    result = docker_via(agent, docker_env, "pull", "someuser/tool")
    assert result.returncode != 0 and "pullgate:" in result.stderr

    def denied() -> dict[str, Any] | None:
        return next(
            (
                r
                for r in records(audit_dir)
                if r.get("event.action") == "image-pull"
                and r.get("container.image.name") == "docker.io/someuser/tool:latest"
            ),
            None,
        )

    record = wait_for(denied)
    assert record["pullgate.decision"] == "deny"
    assert record["event.outcome"] == "failure"
    assert record["user.name"] == "root"
    assert record["process.name"] == "docker"
    assert record["process.executable"].endswith("docker")
    ancestors = record["pullgate.process.ancestors"]
    assert ancestors and ancestors[0]["pid"] == record["process.parent.pid"]
    assert record["rule.id"] == "category:community"
    assert "event.hash" in record and "pullgate.chain.prev" in record
    starts = [r for r in records(audit_dir) if r.get("event.action") == "agent-start"]
    assert starts, "the agent's start is in the log"
    verify = audit("verify", "--dir", str(audit_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _pull_burst(agent: AgentProcess, env: DockerEnv, stop: threading.Event) -> None:
    images = ["alpine", "someuser/tool", "nginx", "acme/app"]
    i = 0
    while not stop.is_set():
        docker_via(agent, env, "pull", "-q", images[i % len(images)], timeout=30)
        i += 1


def test_kill_9_in_a_burst_of_pulls_leaves_a_log_that_verifies_after_restart(
    tmp_path: Path, docker_env: DockerEnv, seeded: dict[str, SeededImage]
) -> None:
    audit_dir = tmp_path / "audit"
    args = ["--audit-dir", str(audit_dir), "--no-watch"]
    agent = start_agent(tmp_path / "a1", docker_env.socket_path, shim_policy(), args)
    stop = threading.Event()
    workers = [
        threading.Thread(target=_pull_burst, args=(agent, docker_env, stop), daemon=True)
        for _ in range(3)
    ]
    try:
        for worker in workers:
            worker.start()
        wait_for(lambda: len(agent.decisions()) >= 6, timeout=30)
        agent.proc.kill()  # SIGKILL mid-burst
        agent.proc.wait(10)
    finally:
        stop.set()
        for worker in workers:
            worker.join(40)
        agent.kill()
    restarted = start_agent(tmp_path / "a2", docker_env.socket_path, shim_policy(), args)
    try:
        verify = audit("verify", "--dir", str(audit_dir))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        actions = [r.get("event.action") for r in records(audit_dir)]
        assert "audit-recovery" in actions, "the unclean shutdown is noted in the log itself"
        assert actions.count("agent-start") == 2
    finally:
        restarted.stop()


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs for the full-disk test: {result.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    _mount_tmpfs(mount, "256k")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


def _fill(disk: Path) -> None:
    """Fill the filesystem to the last byte (unbuffered, so nothing is left to flush)."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", ["deny", "allow"])
def test_a_full_disk_makes_the_agent_follow_audit_failure(
    mode: str,
    tmp_path: Path,
    small_disk: Path,
    docker_env: DockerEnv,
    seeded: dict[str, SeededImage],
) -> None:
    if not in_ci() and not Path("/proc/mounts").exists():
        pytest.skip("needs Linux mounts")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"audit_failure": mode, "audit_native_log": False}))
    audit_dir = small_disk / "audit"
    agent = start_agent(
        tmp_path / "agents",
        docker_env.socket_path,
        shim_policy(),
        ["--audit-dir", str(audit_dir), "--config", str(config), "--no-watch"],
    )
    try:
        docker(docker_env, "rmi", "-f", "alpine", check=False)
        _fill(small_disk)
        # tmpfs hands out whole pages: the log's last page may still take a record or
        # two, so pull until a record cannot be written.
        outcomes = []
        for _ in range(6):
            result = docker_via(agent, docker_env, "pull", "alpine")
            outcomes.append(result)
            if result.returncode != 0:
                break
        if mode == "deny":
            refused = outcomes[-1]
            assert refused.returncode != 0, "a pull is refused once the log is full"
            assert "audit log cannot be written" in refused.stderr
            assert "permission denied" not in refused.stderr.lower()
        else:
            assert all(r.returncode == 0 for r in outcomes), outcomes[-1].stderr
        status = subprocess.run(
            [*CLI, "status", "--json", "--control", str(agent.socket_path.parent / "control.sock")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        audit_status = json.loads(status.stdout)["audit"]
        assert audit_status["healthy"] is False
        assert audit_status["failing"]
        (small_disk / "filler").unlink()
        # Space is back: the next decision is written, with a note of what was lost.
        docker_via(agent, docker_env, "pull", "nginx")
        found = wait_for(
            lambda: [r for r in records(audit_dir) if r.get("event.action") == "audit-failure"]
        )
        assert found[0]["pullgate.details"]["lost_records"] >= 1
    finally:
        agent.kill()


def test_a_symlinked_audit_dir_records_every_pull_and_stays_healthy(
    tmp_path: Path, docker_env: DockerEnv, seeded: dict[str, SeededImage]
) -> None:
    """/var/log/pullgate linked to another disk, audit_failure: deny: no pull is refused
    because the agent takes its own directory for a replaced one."""
    real = tmp_path / "disk2" / "pullgate"
    real.mkdir(parents=True, mode=0o700)
    link = tmp_path / "audit"
    link.symlink_to(real)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"audit_failure": "deny", "audit_native_log": False}))
    agent = start_agent(
        tmp_path / "agents",
        docker_env.socket_path,
        shim_policy(),
        ["--audit-dir", str(link), "--config", str(config), "--no-watch"],
    )
    try:
        for _ in range(2):
            result = docker_via(agent, docker_env, "pull", "alpine")
            assert result.returncode == 0, result.stderr
        status = subprocess.run(
            [*CLI, "status", "--json", "--control", str(agent.socket_path.parent / "control.sock")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        audit_status = json.loads(status.stdout)["audit"]
        assert audit_status["healthy"] is True, audit_status
    finally:
        agent.kill()
    got = records(link)
    assert [r for r in got if r.get("event.action") == "image-pull"]
    assert not [r for r in got if r.get("event.action") == "audit-recovery"]
    verify = audit("verify", "--dir", str(link))
    assert verify.returncode == 0, verify.stdout + verify.stderr
