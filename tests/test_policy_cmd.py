"""``pullgate policy status|refresh`` finding the agent by its pid file (agent/cli/policy_cmd.py).

A pid file outlives its agent, and its number can be reused by any process: refresh must
signal only a live Pullgate agent serving this state directory, never pid 0 or -1 (a process
group, every process), and status must not call a loop "running" when no agent runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import policy_cmd

REPO = Path(__file__).resolve().parent.parent


def refresh_args(state_dir: Path, timeout: float = 0.5) -> argparse.Namespace:
    return argparse.Namespace(
        state_dir=str(state_dir), timeout=timeout, control=str(state_dir / "no-control.sock")
    )


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process of this user; SIGHUP would end it."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


@pytest.mark.parametrize("pid", ["0", "-1", "1"])
def test_refresh_never_signals_pid_0_minus_1_or_init(
    tmp_path: Path, pid: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "agent.pid").write_text(f"{pid}\n")
    sent: list[tuple[int, int]] = []

    def fake_kill(target: int, sig: int) -> None:
        if sig != 0:  # a liveness probe is harmless; anything else must not happen
            sent.append((target, sig))

    monkeypatch.setattr(os, "kill", fake_kill)

    assert policy_cmd.run_refresh(refresh_args(tmp_path)) == policy_cmd.EXIT_PROBLEM
    assert sent == []
    assert "not running" in capsys.readouterr().err


def test_refresh_does_not_signal_an_unrelated_process_named_by_a_stale_pid_file(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "agent.pid").write_text(f"{sleeper.pid}\n")

    assert policy_cmd.run_refresh(refresh_args(tmp_path)) == policy_cmd.EXIT_PROBLEM
    time.sleep(0.2)
    assert sleeper.poll() is None, "the unrelated process got SIGHUP"
    assert "not running" in capsys.readouterr().err


def _fake_agent(tmp_path: Path, state_dir: Path) -> subprocess.Popen[bytes]:
    """A process whose command line is `python … -m agent agent --state-dir DIR` and that
    records a SIGHUP instead of dying of it."""
    marker = tmp_path / "hup"
    ready = tmp_path / "ready"
    script = (
        "import pathlib, signal, time\n"
        f"signal.signal(signal.SIGHUP, lambda *_: pathlib.Path({str(marker)!r}).touch())\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, "-m", "agent", "agent", "--state-dir", str(state_dir)]
    )
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return process


def test_refresh_signals_the_agent_of_this_state_dir_only(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    other = tmp_path / "other"
    state_dir.mkdir()
    other.mkdir()
    agent = _fake_agent(tmp_path, other)
    try:
        (state_dir / "agent.pid").write_text(f"{agent.pid}\n")
        (other / "agent.pid").write_text(f"{agent.pid}\n")

        assert policy_cmd.run_refresh(refresh_args(state_dir)) == policy_cmd.EXIT_PROBLEM
        time.sleep(0.2)
        assert not (tmp_path / "hup").exists(), "signalled the agent of another state dir"

        policy_cmd.run_refresh(refresh_args(other))  # no status follows: times out, exit 1
        deadline = time.monotonic() + 5
        while not (tmp_path / "hup").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (tmp_path / "hup").exists(), "the agent of its own state dir was not signalled"
    finally:
        agent.kill()
        agent.wait()


def test_status_does_not_say_loop_running_without_a_running_agent(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    (tmp_path / "agent.pid").write_text(f"{sleeper.pid}\n")
    (tmp_path / "status.json").write_text(
        json.dumps({"org": "acme", "state": "fresh", "refresh_loop": "running"})
    )

    result = subprocess.run(
        [sys.executable, "-m", "agent", "policy", "status", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )

    assert result.returncode == 1, result
    assert "loop running" not in result.stdout, result.stdout
    assert "the agent is not running" in result.stdout, result.stdout
    assert sleeper.poll() is None
