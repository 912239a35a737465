"""``read_capped`` (agent/platform/files.py) reads regular files only, and never blocks.

A FIFO planted in the state directory (``mkfifo status.json``) used to hang ``pullgate
policy status`` and, as ``policy.envelope``, the agent's start; a device such as /dev/zero
would be read up to the cap. Each is refused at once with an OSError naming what it is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.daemon.policy_cache import PolicyCache
from agent.platform.files import NotRegularFileError, read_capped

REPO = Path(__file__).resolve().parent.parent


def finishes(call: Callable[[], object], seconds: float = 5.0) -> object:
    """``call()``'s result or exception, or fail when it blocks (a daemon thread is left)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as e:
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"blocked for {seconds} s"
    return outcome[0]


def test_a_regular_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"data")
    assert read_capped(path, 10) == b"data"
    assert read_capped(path, 10, follow_symlinks=False) == b"data"


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "status.json"
    os.mkfifo(fifo)
    result = finishes(lambda: read_capped(fifo, 1024))
    assert isinstance(result, NotRegularFileError), result
    assert isinstance(result, OSError) and result.strerror is not None
    assert "a FIFO" in result.strerror


@pytest.mark.parametrize(
    ("path", "kind"), [("/dev/zero", "a character device"), ("/", "a directory")]
)
def test_devices_and_directories_are_refused(path: str, kind: str) -> None:
    result = finishes(lambda: read_capped(path, 1 << 30))
    assert isinstance(result, NotRegularFileError), result
    assert kind in str(result)


def test_a_symlink_is_refused_where_the_caller_asks(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_capped(link, 10) == b"x"  # config files may be links
    with pytest.raises(OSError):
        read_capped(link, 10, follow_symlinks=False)


def test_policy_status_does_not_hang_on_a_fifo_status_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "status.json")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "policy", "status", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 1, result
    assert "no agent status" in result.stderr, result.stderr


def test_a_fifo_as_the_cached_envelope_is_a_problem_not_a_hang(tmp_path: Path) -> None:
    cache = PolicyCache(tmp_path)
    os.mkfifo(cache.envelope_path)
    loaded = finishes(cache.load)
    assert not isinstance(loaded, BaseException), loaded
    assert getattr(loaded, "envelope", "missing") is None
    assert any("FIFO" in problem for problem in getattr(loaded, "problems", ())), loaded
