"""A private Secret Service (gnome-keyring-daemon on its own D-Bus session bus) for the
sign-in tests, so the refresh token goes into a real keychain and never into the user's.

`start_keychain(directory)` starts a private session bus on a socket under `directory`
(`bench.desktop.start_session_bus`: it starts no service on demand), then
`gnome-keyring-daemon --foreground --unlock --components=secrets` on that bus, fed a
password on stdin so its `login` keyring is created unlocked, with HOME, XDG_DATA_HOME,
XDG_CONFIG_HOME and XDG_RUNTIME_DIR pointed under `directory` (the keyring file lands
there). It returns once a real `keyring` SecretService round trip works.
`stop_keychain` ends exactly the two PIDs it started.

`Keychain.env` is the environment a client process needs (merge it into `os.environ` for
in-process use, or pass it to a subprocess). This module has no pytest dependency;
`missing_requirements()` tells the fixture why it cannot run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.desktop import DesktopError, start_session_bus

__all__ = ["KeychainProcess", "missing_requirements", "start_keychain", "stop_keychain"]

STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


def missing_requirements() -> list[str]:
    """What is missing to run a private Secret Service here; empty when it can run."""
    problems = [
        f"needs `{tool}` (Debian package {package}; run `bash scripts/setup.sh --system-deps`)"
        for tool, package in (
            ("dbus-daemon", "dbus"),
            ("gnome-keyring-daemon", "gnome-keyring"),
        )
        if shutil.which(tool) is None
    ]
    try:
        import secretstorage  # noqa: F401
    except ImportError:
        problems.append("needs the Python package secretstorage (keyring's Linux backend)")
    return problems


@dataclass
class KeychainProcess:
    """A running private bus and keyring daemon, and the environment that reaches them."""

    directory: Path
    bus_pid: int
    keyring_pid: int
    env: dict[str, str]
    startup_seconds: float = 0.0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> str:
        path = self.directory / "gnome-keyring.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _environment(directory: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DBUS_", "GNOME_KEYRING", "XDG_", "PYTHON_KEYRING"))
    }
    for name, sub in (
        ("HOME", "home"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_RUNTIME_DIR", "run"),
    ):
        path = directory / sub
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        env[name] = str(path)
    return env


def start_keychain(directory: Path) -> KeychainProcess:
    """Start the private bus and an unlocked keyring daemon under `directory`."""
    problems = missing_requirements()
    if problems:
        raise RuntimeError("; ".join(problems))
    started = time.monotonic()
    env = _environment(directory)
    try:
        bus_pid, address = start_session_bus(directory, Path(env["XDG_RUNTIME_DIR"]) / "bus", env)
    except DesktopError as e:
        raise RuntimeError(str(e)) from None
    env["DBUS_SESSION_BUS_ADDRESS"] = address
    # No PYTHON_KEYRING_BACKEND: keyring must find the Secret Service by itself, as it
    # does on a developer's desktop.
    keychain: KeychainProcess | None = None
    try:
        with (directory / "gnome-keyring.log").open("wb") as log:
            process = subprocess.Popen(
                ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        assert process.stdin is not None
        process.stdin.write(b"pullgate-test-keyring")  # the login keyring's password
        process.stdin.close()
        keychain = KeychainProcess(directory, bus_pid, process.pid, env, process=process)
        _wait_until_usable(keychain, started + STARTUP_TIMEOUT)
    except BaseException:
        if keychain is not None:
            stop_keychain(keychain)
        else:
            _kill(bus_pid)
        raise
    keychain.startup_seconds = time.monotonic() - started
    return keychain


def _wait_until_usable(keychain: KeychainProcess, deadline: float) -> None:
    """A set/get/delete round trip through `keyring` in a child process with `env`, on the
    Secret Service that keyring picks by itself."""
    probe = (
        "import keyring\n"
        "name = type(keyring.get_keyring()).__module__\n"
        "assert name == 'keyring.backends.SecretService', name\n"
        "keyring.set_password('pullgate-probe', 'probe', 'ok')\n"
        "assert keyring.get_password('pullgate-probe', 'probe') == 'ok'\n"
        "keyring.delete_password('pullgate-probe', 'probe')\n"
    )
    last = ""
    while True:
        if keychain.process is not None and keychain.process.poll() is not None:
            raise RuntimeError(f"gnome-keyring-daemon exited: {keychain.log}")
        result = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            env=keychain.env,
            timeout=STARTUP_TIMEOUT,
            check=False,
        )
        if result.returncode == 0:
            return
        lines = result.stderr.strip().splitlines()
        last = lines[-1] if lines else f"exit {result.returncode}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"the private keychain never answered: {last}; {keychain.log}")
        time.sleep(0.1)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def stop_keychain(keychain: KeychainProcess) -> None:
    """End the keyring daemon and the bus: the two PIDs this module started, nothing else."""
    if keychain.process is not None:
        if keychain.process.poll() is None:
            keychain.process.terminate()
            try:
                keychain.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                keychain.process.kill()
                keychain.process.wait(STOP_TIMEOUT)
    else:
        _kill(keychain.keyring_pid)
    _kill(keychain.bus_pid)
