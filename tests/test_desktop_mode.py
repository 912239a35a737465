"""Docker Desktop mode (``enforcement: desktop``): the rules, then the real thing.

The pure rules first (``agent.core.desktop``: which users get an endpoint, whom an
endpoint trusts, when the agent selects its context), and the platform edge's
observations and checks on real files and sockets.

Then an honest stand-in for Docker Desktop on this Linux machine: a second OS user
(``useradd``) runs a socket forwarder of their own (``tests/unix_forwarder.py`` under
``setpriv``) on ``~/.docker/desktop/docker.sock``, so the socket is served by that user
exactly as Desktop's is; it leads (through a root bridge the user may connect to) to the
session's test dockerd. The forwarder runs from the stand-in's "installation": a copy of
the system's python3 named like Desktop's backend, in root-owned 0755 directories of the
test's own, which the agent's config lists as ``desktop_executables`` (the system's
python3 itself is not listed: a listener run from it is any program of the user's). The
agent runs as root in desktop mode, with a temporary users' root (``desktop_users_dir``)
and a temporary stand-in for logind's ``/run/user`` (``--desktop-sessions``): a directory
named by the user's uid and owned by them is a login, removing it a logout. The user's
own docker CLI (``/usr/local/bin/docker``, no ``DOCKER_HOST``) reaches the agent through the
context the agent installed for them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.cli import context_cmd
from agent.config.keys import Enforcement, ManagedConfig, effective_enforcement
from agent.config.parse import parse_config
from agent.core.desktop import (
    SessionUser,
    client_allowed,
    desktop_socket,
    plan_endpoints,
    should_select_context,
    upstream_peer_problem,
)
from agent.platform.desktop_users import (
    USER_PROCESS,
    UnsafeDirectoryError,
    console_user,
    darwin_users,
    gui_session_names,
    logind_users,
    make_root_dir,
    missing_capabilities,
)
from agent.platform.paths import default_desktop_users_dir
from agent.platform.peer import ListenerError, check_listener
from bench.realdocker import DockerEnv, SeededImage
from tests.agent_process import (
    DENIED_REPOSITORY,
    agent_command,
    shim_policy,
    skip_or_fail,
    unix_request,
)

REPO = Path(__file__).resolve().parent.parent
USER_DOCKER_CLI = "/usr/local/bin/docker"
SYSTEM_PYTHON = "/usr/bin/python3"
DESKTOP_PROGRAM = "com.docker.backend"
WAIT = 15.0

# --------------------------------------------------------------------- the pure rules


def _user(uid: int, name: str = "", home: str | None = None) -> SessionUser:
    return SessionUser(uid, name or f"u{uid}", f"/home/u{uid}" if home is None else home)


def test_plan_endpoints_one_per_user_below_the_users_dir() -> None:
    plans = plan_endpoints(
        [_user(1000), _user(1001), _user(1000)], "/var/run/pullgate/users", "linux"
    )
    assert sorted(plans) == [1000, 1001]
    assert plans[1000].listen == "/var/run/pullgate/users/1000/docker.sock"
    assert plans[1000].upstream == "/home/u1000/.docker/desktop/docker.sock"


def test_plan_endpoints_never_root_nor_linux_system_users() -> None:
    users = [_user(0, "root", "/root"), _user(120, "gdm"), _user(1000)]
    assert sorted(plan_endpoints(users, "/r", "linux")) == [1000]
    # macOS: admin-created users start at 501
    mac = plan_endpoints(
        [_user(0, "root", "/var/root"), _user(501, "dev", "/Users/dev")], "/r", "darwin"
    )
    assert sorted(mac) == [501]
    assert mac[501].upstream == "/Users/dev/.docker/run/docker.sock"


def test_plan_endpoints_skips_users_without_a_home() -> None:
    users = [_user(1000, home=""), _user(1001, home="/"), _user(1002, home="relative")]
    assert plan_endpoints(users, "/r", "linux") == {}


def test_desktop_socket_per_platform() -> None:
    assert desktop_socket("/Users/a", "darwin") == "/Users/a/.docker/run/docker.sock"
    assert desktop_socket("/home/a", "linux") == "/home/a/.docker/desktop/docker.sock"


def test_upstream_peer_rule_accepts_only_the_endpoints_user() -> None:
    assert upstream_peer_problem("/home/a/.docker/desktop/docker.sock", 1000, 1000) is None
    to_root = upstream_peer_problem("/home/a/.docker/desktop/docker.sock", 1000, 0)
    assert to_root is not None
    assert to_root.startswith("pullgate: refusing to forward")
    assert "served by root" in to_root and "uid 1000" in to_root
    other = upstream_peer_problem("/p", 1000, 1001)
    assert other is not None and "uid 1001" in other
    unknown = upstream_peer_problem("/p", 1000, None)
    assert unknown is not None and "unknown user" in unknown
    for message in (to_root, other, unknown):  # the denial contract's forbidden phrases
        assert "permission denied" not in message.lower()
        assert "no such file" not in message.lower()


def test_client_rule_the_user_and_root_only() -> None:
    assert client_allowed(1000, 1000)
    assert client_allowed(1000, 0)
    assert not client_allowed(1000, 1001)
    assert not client_allowed(1000, None)


@pytest.mark.parametrize(
    ("current", "host", "selected"),
    [
        (None, None, True),
        ("default", None, True),
        ("desktop-linux", "unix:///home/a/.docker/desktop/docker.sock", True),
        ("mine", "unix:///home/a/.docker/desktop/docker.sock", True),  # Desktop by another name
        ("remote", "ssh://ci.example", False),  # the user's own engine elsewhere
        ("pullgate", "unix:///var/run/pullgate/users/1000/docker.sock", False),  # already
    ],
)
def test_select_context_rule(current: str | None, host: str | None, selected: bool) -> None:
    desktop = "unix:///home/a/.docker/desktop/docker.sock"
    assert should_select_context(current, host, desktop, "pullgate") is selected


def test_effective_enforcement_desktop_is_the_macos_system_agents_default() -> None:
    def run(config: ManagedConfig | None, platform: str, system: bool) -> Enforcement:
        return effective_enforcement(config, platform=platform, system=system)

    assert run(None, "darwin", True) is Enforcement.DESKTOP
    assert run(ManagedConfig(org="acme", set_keys=frozenset({"org"})), "darwin", True) is (
        Enforcement.DESKTOP
    )
    assert run(None, "darwin", False) is Enforcement.CONTEXT  # a per-user agent
    assert run(None, "linux", True) is Enforcement.CONTEXT
    takeover = ManagedConfig(enforcement=Enforcement.TAKEOVER, set_keys=frozenset({"enforcement"}))
    assert run(takeover, "darwin", True) is Enforcement.TAKEOVER  # the profile's choice
    desktop = parse_config({"enforcement": "desktop"}, "test")
    assert run(desktop, "linux", True) is Enforcement.DESKTOP


def test_context_command_points_at_the_users_endpoint_in_desktop_mode(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"enforcement": "desktop", "desktop_users_dir": "/srv/pg"}))
    args = argparse.Namespace(listen=None, config=str(config))
    assert context_cmd._listen(args) == Path(f"/srv/pg/{os.geteuid()}/docker.sock")
    config.write_text(json.dumps({"enforcement": "desktop"}))
    expected = default_desktop_users_dir() / str(os.geteuid()) / "docker.sock"
    assert context_cmd._listen(args) == expected


# ------------------------------------------------------------ the platform's edge


def test_logind_users_are_uid_named_dirs_owned_by_that_uid(tmp_path: Path) -> None:
    me = os.getuid()
    (tmp_path / str(me)).mkdir()
    (tmp_path / "not-a-uid").mkdir()
    (tmp_path / "4242").mkdir()  # owned by us, not by 4242: not a session of 4242
    (tmp_path / "4243").symlink_to(tmp_path / str(me))
    users = logind_users(tmp_path)
    assert [u.uid for u in users] == [me]
    assert users[0].name == pwd.getpwuid(me).pw_name
    assert logind_users(tmp_path / "missing") == []


def test_missing_capabilities_read_from_capeff() -> None:
    full = "Name:\tpullgate\nCapEff:\t000001ffffffffff\n"
    assert missing_capabilities(full) == []
    # The packaged unit's bounding set: CAP_CHOWN, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE.
    takeover = f"CapEff:\t{(1 << 0) | (1 << 2) | (1 << 19):016x}\n"
    assert missing_capabilities(takeover) == ["CAP_DAC_OVERRIDE", "CAP_SETGID", "CAP_SETUID"]
    with_drop_in = f"CapEff:\t{(1 << 0) | (1 << 1) | (1 << 2) | (1 << 6) | (1 << 7):016x}\n"
    assert missing_capabilities(with_drop_in) == []
    assert missing_capabilities("Name:\tx\n") == []  # no line: nothing to say
    assert missing_capabilities("CapEff:\tzz\n") == []


def test_console_user_is_the_owner_of_the_console(tmp_path: Path) -> None:
    console = tmp_path / "console"
    console.touch()
    owner = console.stat().st_uid
    got = console_user(console)
    assert (got is None) if owner == 0 else (got is not None and got.uid == owner)
    assert console_user(tmp_path / "missing") is None


def test_gui_sessions_are_console_logins_in_utmpx() -> None:
    records = [
        ("alice", "console", USER_PROCESS),
        ("bob", "console", USER_PROCESS),  # switched away from: still logged in
        ("carol", "ttys001", USER_PROCESS),  # a terminal, not a graphical login
        ("dave", "console", 8),  # DEAD_PROCESS: logged out
        ("", "console", USER_PROCESS),
        ("alice", "console", USER_PROCESS),  # once per user
    ]
    assert gui_session_names(records) == ["alice", "bob"]


def test_darwin_users_are_the_console_owner_and_every_graphical_login(tmp_path: Path) -> None:
    """Fast user switching: the user at the console and the one switched away from both
    keep an endpoint; root never gets one; a name without an account is skipped."""
    import pwd

    console = tmp_path / "console"
    console.touch()
    nobody = pwd.getpwnam("nobody")
    os.chown(console, nobody.pw_uid, -1)
    root = pwd.getpwuid(0).pw_name
    records = [
        ("no-such-user-here", "console", USER_PROCESS),
        (root, "console", USER_PROCESS),
        (pwd.getpwuid(1).pw_name, "console", USER_PROCESS),  # daemon, switched away
    ]
    users = darwin_users(console, lambda: records)
    assert [u.uid for u in users] == [1, nobody.pw_uid]
    assert [u.uid for u in darwin_users(tmp_path / "missing", lambda: records)] == [1]
    assert darwin_users(tmp_path / "missing", list) == []


def test_make_root_dir_refuses_what_others_could_swap(tmp_path: Path) -> None:
    users = tmp_path / "users"
    make_root_dir(users)
    assert stat.S_IMODE(users.stat().st_mode) == 0o755
    users.chmod(0o777)
    make_root_dir(users)  # put right again
    assert stat.S_IMODE(users.stat().st_mode) == 0o755
    open_parent = tmp_path / "open"
    open_parent.mkdir()
    open_parent.chmod(0o777)
    with pytest.raises(UnsafeDirectoryError, match="writable by others"):
        make_root_dir(open_parent / "users")
    if os.geteuid() == 0:  # chown: macOS's /var/run is root:daemon 0775, and is fine
        system = tmp_path / "var-run"
        system.mkdir()
        os.chown(system, 0, 1)
        system.chmod(0o775)
        make_root_dir(system / "pullgate" / "users")
        os.chown(system, 0, 4242)  # a group of users could swap the directory
        with pytest.raises(UnsafeDirectoryError, match="writable by others"):
            make_root_dir(system / "pullgate" / "users")
    (tmp_path / "file").touch()
    with pytest.raises((UnsafeDirectoryError, FileExistsError)):
        make_root_dir(tmp_path / "file")


def test_check_listener_reads_the_kernels_credentials(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    with server, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        check_listener(client, path, os.getuid())  # our own listener: fine
        with pytest.raises(ListenerError, match="refusing to forward") as caught:
            check_listener(client, path, os.getuid() + 4242)
        assert isinstance(caught.value, OSError)


# ------------------------------------------------------------ the real thing (root)


@dataclass
class OSUser:
    name: str
    uid: int
    gid: int
    home: Path

    def command(self, *argv: str, env: dict[str, str] | None = None) -> list[str]:
        """``argv`` run as this user with a clean login-like environment (no DOCKER_*)."""
        environ = {
            "HOME": str(self.home),
            "USER": self.name,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }
        environ.update(env or {})
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in environ.items()),
            *argv,
        ]

    def run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
            stdin=subprocess.DEVNULL,
        )


def _create_user(prefix: str) -> OSUser:
    name = f"{prefix}{os.urandom(3).hex()}"
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/sh", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    entry = pwd.getpwnam(name)
    return OSUser(name, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir))


def _remove_user(user: OSUser) -> None:
    subprocess.run(["userdel", "--remove", user.name], capture_output=True, timeout=30, check=False)


def _wait(
    what: str, probe: Callable[[], Any], timeout: float = WAIT, detail: Callable[[], str] = str
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {detail()}")
        time.sleep(0.1)


def _start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[str] | None) -> None:
    """End a process this module started, by its PID."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@dataclass
class DesktopRig:
    scratch: Path
    user: OSUser
    other: OSUser
    sessions: Path
    users_dir: Path
    control: Path
    audit_dir: Path
    desktop_sock: Path
    bridge: Path
    desktop_exe: Path  # the stand-in Desktop's program, listed in desktop_executables
    agent: subprocess.Popen[str]
    agent_log: Path
    forwarders: list[subprocess.Popen[str]]
    docker_env: DockerEnv

    @property
    def endpoint(self) -> Path:
        return self.users_dir / str(self.user.uid) / "docker.sock"

    def listed_exe(self, place: str) -> Path:
        """A further path ``desktop_executables`` lists (the file is the test's to make):
        one of LISTED_PLACES, for the red team's listeners run from a listed path that a
        user could change."""
        assert place in LISTED_PLACES
        return self.scratch / "listed" / place / DESKTOP_PROGRAM

    def status(self) -> dict[str, Any]:
        code, _, body = unix_request(self.control, "GET", "/v1/status")
        assert code == 200, body
        value: dict[str, Any] = json.loads(body)
        return value

    def endpoints(self) -> dict[int, dict[str, Any]]:
        return {e["uid"]: e for e in self.status()["desktop"]["endpoints"]}

    def status_text(self) -> str:
        """``pullgate status`` as root, as IT reads it."""
        done = subprocess.run(
            [*agent_command()[:-1], "status", "--control", str(self.control)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=REPO,
        )
        return done.stdout

    def doctor(self) -> dict[str, dict[str, Any]]:
        """``pullgate doctor --json`` as root: the checks by name."""
        done = subprocess.run(
            [*agent_command()[:-1], "doctor", "--json", "--control", str(self.control)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=REPO,
        )
        return {c["name"]: c for c in json.loads(done.stdout)}

    def audit(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for path in sorted(self.audit_dir.glob("audit-*.jsonl")):
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
        return records

    def start_desktop(self, user: OSUser | None = None) -> Path:
        """A user's "Docker Desktop" (the rig's user's by default): their own listener on
        ~/.docker/desktop/docker.sock; its path."""
        user = user or self.user
        sock = user.home / ".docker" / "desktop" / "docker.sock"
        user.run("mkdir", "-p", str(sock.parent))
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        proc = _start(
            user.command(
                str(self.desktop_exe),
                str(self.scratch / "fwd.py"),
                str(sock),
                str(self.bridge),
            )
        )
        self.forwarders.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", (
            "the user's Desktop stand-in did not start"
        )
        return sock

    def stop_desktop(self) -> None:
        for proc in self.forwarders[1:]:
            _stop(proc)
        del self.forwarders[1:]


LISTED_PLACES = ("user-owned", "user-dir", "replaced")


def _install_desktop_program(scratch: Path) -> Path:
    """The stand-in Desktop's installation: the system's python3, copied into root-owned
    0755 directories under the test's own scratch directory (itself root's, 0755)."""
    directory = scratch / "desktop" / "bin"
    directory.mkdir(parents=True)
    for each in (directory.parent, directory):
        each.chmod(0o755)
    exe = directory / DESKTOP_PROGRAM
    shutil.copy(os.path.realpath(SYSTEM_PYTHON), exe)
    exe.chmod(0o755)
    return exe


@pytest.fixture(scope="module")
def rig(docker_env: DockerEnv, seeded: dict[str, SeededImage]) -> Iterator[DesktopRig]:
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("setpriv") is None:
        skip_or_fail("needs root, useradd and setpriv to stand in for a Docker Desktop user")
    for tool in (USER_DOCKER_CLI, SYSTEM_PYTHON):
        if not os.access(tool, os.X_OK):
            skip_or_fail(f"needs {tool} (run as a second OS user)")
    scratch = Path(tempfile.mkdtemp(prefix="pgdesk-", dir="/tmp"))
    scratch.chmod(0o755)  # the users reach their forwarder script and the bridge
    user = _create_user("pgd")
    other = _create_user("pgo")
    forwarders: list[subprocess.Popen[str]] = []
    agent: subprocess.Popen[str] | None = None
    try:
        shutil.copy(REPO / "tests" / "unix_forwarder.py", scratch / "fwd.py")
        (scratch / "fwd.py").chmod(0o644)
        bridge = scratch / "bridge.sock"
        root_bridge = _start(
            [
                sys.executable,
                str(scratch / "fwd.py"),
                str(bridge),
                str(docker_env.socket_path),
                "666",
            ]
        )
        forwarders.append(root_bridge)
        assert root_bridge.stdout is not None and root_bridge.stdout.readline().strip() == "ready"
        sessions = scratch / "sessions"
        sessions.mkdir(mode=0o755)
        users_dir = scratch / "users"
        desktop_exe = _install_desktop_program(scratch)
        listed = [str(scratch / "listed" / place / DESKTOP_PROGRAM) for place in LISTED_PLACES]
        config = scratch / "config.json"
        config.write_text(
            json.dumps(
                {
                    "enforcement": "desktop",
                    "desktop_users_dir": str(users_dir),
                    "desktop_executables": [str(desktop_exe), *listed],
                }
            )
        )
        policy = scratch / "policy.json"
        policy.write_text(json.dumps(shim_policy()))
        control = scratch / "control.sock"
        audit_dir = scratch / "audit"
        agent_log = scratch / "agent.log"
        with agent_log.open("w") as log:
            agent = subprocess.Popen(
                [
                    *agent_command(),
                    "--config",
                    str(config),
                    "--policy",
                    str(policy),
                    "--state-dir",
                    str(scratch / "state"),
                    "--audit-dir",
                    str(audit_dir),
                    "--control",
                    str(control),
                    "--desktop-sessions",
                    str(sessions),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")},
                cwd=REPO,
                text=True,
                start_new_session=True,
            )
        rig = DesktopRig(
            scratch=scratch,
            user=user,
            other=other,
            sessions=sessions,
            users_dir=users_dir,
            control=control,
            audit_dir=audit_dir,
            desktop_sock=user.home / ".docker" / "desktop" / "docker.sock",
            bridge=bridge,
            desktop_exe=desktop_exe,
            agent=agent,
            agent_log=agent_log,
            forwarders=forwarders,
            docker_env=docker_env,
        )
        rig.start_desktop()
        _wait("the agent's control API", lambda: agent.poll() is not None or control.exists())
        assert agent.poll() is None, agent_log.read_text()
        login(rig)
        yield rig
    finally:
        _stop(agent)
        for proc in forwarders:
            _stop(proc)
        _remove_user(user)
        _remove_user(other)
        shutil.rmtree(scratch, ignore_errors=True)


def login(rig: DesktopRig) -> dict[str, Any]:
    session = rig.sessions / str(rig.user.uid)
    session.mkdir(exist_ok=True)
    os.chown(session, rig.user.uid, rig.user.gid)
    endpoint: dict[str, Any] = _wait(
        "the user's endpoint and context",
        lambda: (
            (e := rig.endpoints().get(rig.user.uid)) and e["context"].startswith("selected") and e
        ),
        detail=lambda: f"{rig.status()['desktop']}\n{rig.agent_log.read_text()[-3000:]}",
    )
    return endpoint


def _docker(rig: DesktopRig, user: OSUser, *args: str) -> subprocess.CompletedProcess[str]:
    return user.run(USER_DOCKER_CLI, *args)


def test_endpoint_is_the_users_socket_in_roots_directory(rig: DesktopRig) -> None:
    info = rig.endpoint.lstat()
    assert stat.S_ISSOCK(info.st_mode)
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (rig.user.uid, 0o600)
    directory = rig.endpoint.parent.lstat()
    assert (directory.st_uid, stat.S_IMODE(directory.st_mode)) == (0, 0o755)
    users = rig.users_dir.lstat()
    assert (users.st_uid, stat.S_IMODE(users.st_mode)) == (0, 0o755)


def test_users_docker_cli_goes_through_the_installed_context(rig: DesktopRig) -> None:
    shown = _docker(rig, rig.user, "context", "show")
    assert shown.stdout.strip() == "pullgate", shown.stderr
    host = _docker(
        rig, rig.user, "context", "inspect", "pullgate", "--format", "{{.Endpoints.docker.Host}}"
    )
    assert host.stdout.strip() == f"unix://{rig.endpoint}"
    meta = rig.user.home / ".docker" / "contexts" / "meta"
    owners = {p.stat().st_uid for p in [meta, *meta.rglob("*")]}
    assert owners == {rig.user.uid}, "the context is written as the user, not as root"


def test_users_docker_gets_pullgates_denial_and_allowed_pulls(rig: DesktopRig) -> None:
    denied = _docker(rig, rig.user, "pull", DENIED_REPOSITORY)
    assert denied.returncode != 0
    assert "Error response from daemon: pullgate:" in denied.stderr, denied.stderr
    assert f"docker.io/{DENIED_REPOSITORY}:latest" in denied.stderr
    allowed = _docker(rig, rig.user, "pull", "alpine")
    assert allowed.returncode == 0, allowed.stderr + allowed.stdout
    decisions = [r for r in rig.audit() if r.get("pullgate.decision") in ("allow", "deny")]
    mine = [r for r in decisions if r.get("user.id") in (rig.user.uid, str(rig.user.uid))]
    assert {r["pullgate.decision"] for r in mine} >= {"allow", "deny"}, decisions[-4:]


def test_context_is_enforced_again_but_a_remote_engine_is_left_alone(rig: DesktopRig) -> None:
    """``desktop_context: enforce``: a context that leads straight to the user's Desktop
    is replaced by Pullgate's within a rescan; a context to another engine is theirs."""
    u = rig.user
    direct = f"host=unix://{rig.desktop_sock}"
    for name, host in (("mine", direct), ("remote", "host=ssh://builder.example")):
        made = _docker(rig, u, "context", "create", name, "--docker", host)
        assert made.returncode == 0, made.stderr
    try:
        assert _docker(rig, u, "context", "use", "mine").returncode == 0
        _wait(
            "the agent to select its context again",
            lambda: _docker(rig, u, "context", "show").stdout.strip() == "pullgate",
        )
        assert _docker(rig, u, "context", "use", "remote").returncode == 0
        time.sleep(2.25 * 2.0)  # two rescans (RESCAN_INTERVAL)
        assert _docker(rig, u, "context", "show").stdout.strip() == "remote"
        endpoint = rig.endpoints()[u.uid]
        assert "'remote'" in endpoint["context"] and "kept" in endpoint["context"]
    finally:
        _docker(rig, u, "context", "use", "pullgate")
        _docker(rig, u, "context", "rm", "-f", "mine", "remote")
    _wait("the context selected", lambda: rig.endpoints()[u.uid]["context"] == "selected")


def test_another_user_cannot_use_the_endpoint(rig: DesktopRig) -> None:
    env_host = f"unix://{rig.endpoint}"
    got = rig.other.run(
        USER_DOCKER_CLI, "-H", env_host, "version", "--format", "{{.Server.Version}}"
    )
    assert got.returncode != 0
    assert "permission denied" in got.stderr.lower(), got.stderr
    code, _, _ = unix_request(rig.endpoint, "GET", "/_ping")  # root may, as it could anyway
    assert code == 200


@pytest.mark.usefixtures("denied_image_absent")
def test_direct_use_of_the_desktop_socket_is_reported(rig: DesktopRig) -> None:
    """What the user can still do (docs/deploy/macos.md): talk to Docker Desktop's own
    socket. It is not prevented; the endpoint's bypass monitor reports what it brings in."""
    direct = f"unix://{rig.desktop_sock}"
    got = _docker(rig, rig.user, "-H", direct, "pull", DENIED_REPOSITORY)
    assert got.returncode == 0, got.stderr
    found = _wait(
        "the bypass-suspected record",
        lambda: [
            r
            for r in rig.audit()
            if r.get("event.action") == "bypass-suspected" and DENIED_REPOSITORY in json.dumps(r)
        ],
    )
    assert str(rig.desktop_sock) in json.dumps(found[-1])


def _monitor_following(rig: DesktopRig, uid: int) -> bool:
    """``uid``'s endpoint has its context and its monitor follows its Desktop's events."""
    endpoint = rig.endpoints().get(uid)
    return (
        endpoint is not None
        and endpoint["context"].startswith("selected")
        and bool(endpoint["bypass_monitor"]["following_events"])
    )


def test_one_users_allowed_pull_does_not_explain_anothers_direct_pull(rig: DesktopRig) -> None:
    """Each endpoint's bypass monitor judges its daemon's events by what went through that
    endpoint only: the user pulls alpine through theirs, then the other user, with a
    Desktop of their own, pulls alpine from it directly within the approval window; the
    other user's monitor reports it (a ledger shared by both endpoints explained it).

    Both stand-in Desktops lead to the one test dockerd, so each monitor also sees the
    other's pulls: only the record of the other user's monitor for a pull after the
    user's is looked for."""
    other = rig.other
    session = rig.sessions / str(other.uid)
    other_sock = rig.start_desktop(other)
    try:
        session.mkdir()
        os.chown(session, other.uid, other.gid)
        for uid in (rig.user.uid, other.uid):
            _wait(
                f"uid {uid}'s monitor following its Desktop's events",
                functools.partial(_monitor_following, rig, uid),
                detail=lambda: str(rig.status()["desktop"]),
            )
        through = _docker(rig, rig.user, "pull", "alpine")
        assert through.returncode == 0, through.stderr
        started = time.time()
        direct = other.run(USER_DOCKER_CLI, "-H", f"unix://{other_sock}", "pull", "alpine")
        assert direct.returncode == 0, direct.stderr

        def reported() -> list[dict[str, Any]]:
            return [
                r
                for r in rig.audit()
                if r.get("event.action") == "bypass-suspected"
                and (d := r.get("pullgate.details") or {}).get("upstream") == str(other_sock)
                and "alpine" in str(d.get("image"))
                and float(d.get("event_time") or 0) >= started
            ]

        (found, *_) = _wait("the other user's direct pull reported", reported, timeout=20)
        assert found["pullgate.details"]["shim"] == str(
            rig.users_dir / str(other.uid) / "docker.sock"
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            session.rmdir()
        _wait("the other user's endpoint to go", lambda: other.uid not in rig.endpoints())
        _stop(rig.forwarders.pop())
        other.run("rm", "-f", str(other_sock))


def test_symlink_to_a_root_daemon_is_refused_reported_and_audited(rig: DesktopRig) -> None:
    rig.stop_desktop()
    rig.user.run("rm", "-f", str(rig.desktop_sock))
    link = rig.user.run("ln", "-s", str(rig.docker_env.socket_path), str(rig.desktop_sock))
    assert link.returncode == 0, link.stderr
    try:
        got = _docker(rig, rig.user, "pull", "alpine")
        assert got.returncode != 0
        assert "pullgate: refusing to forward" in got.stderr, got.stderr
        assert "does not lead to a socket of" in got.stderr
        endpoint = rig.endpoints()[rig.user.uid]
        assert (
            endpoint["upstream_problem"]
            and "does not lead to a socket of" in endpoint["upstream_problem"]
        )
        refused = _wait(
            "the audit record",
            lambda: [r for r in rig.audit() if r.get("event.action") == "upstream-refused"],
        )
        assert "does not lead to a socket of" in json.dumps(refused[-1])
        status = rig.status_text()
        row = next(line for line in status.splitlines() if line.startswith(f"user {rig.user.name}"))
        assert "does not lead to a socket of" in row, status
        check = rig.doctor()[f"Docker Desktop of {rig.user.name} ({rig.user.uid})"]
        assert check["result"] == "FAIL" and "does not lead to a socket of" in check["detail"]
    finally:
        rig.user.run("rm", "-f", str(rig.desktop_sock))
        rig.start_desktop()
    ok = _docker(rig, rig.user, "version", "--format", "{{.Server.Version}}")
    assert ok.returncode == 0, ok.stderr
    assert rig.endpoints()[rig.user.uid]["upstream_problem"] is None


def test_desktop_not_running_is_said_in_the_users_terms(rig: DesktopRig) -> None:
    rig.stop_desktop()
    rig.user.run("rm", "-f", str(rig.desktop_sock))
    try:
        got = _docker(rig, rig.user, "pull", "alpine")
        assert got.returncode != 0
        assert "pullgate: cannot reach your Docker Desktop" in got.stderr, got.stderr
        assert "Is Docker Desktop running?" in got.stderr
        assert "no such file" not in got.stderr.lower()
    finally:
        rig.start_desktop()
    ok = _docker(rig, rig.user, "version", "--format", "{{.Server.Version}}")
    assert ok.returncode == 0, ok.stderr


def test_logout_removes_the_endpoint_and_login_brings_it_back(rig: DesktopRig) -> None:
    (rig.sessions / str(rig.user.uid)).rmdir()
    _wait("the endpoint to go", lambda: rig.user.uid not in rig.endpoints())
    assert not rig.endpoint.exists()
    assert not rig.endpoint.parent.exists()
    login(rig)
    assert rig.endpoint.exists()
    ok = _docker(rig, rig.user, "version", "--format", "{{.Server.Version}}")
    assert ok.returncode == 0, ok.stderr


def test_status_reports_the_supervised_rescan(rig: DesktopRig) -> None:
    desktop = rig.status()["desktop"]
    assert desktop["running"] is True
    assert desktop["failing"] is False
    assert desktop["scans"] >= 1
    assert desktop["privilege_problems"] == []  # root with every capability
    checks = rig.doctor()
    assert checks["desktop endpoints"]["result"] == "OK", checks
    assert "agent's privileges for Desktop mode" not in checks
    who = f"{rig.user.name} ({rig.user.uid})"
    assert checks[f"Docker Desktop of {who}"]["result"] == "OK", checks
    assert checks[f"docker context of {who}"]["result"] == "OK", checks
    assert checks["bypass watch"]["result"] == "OK", checks
    assert rig.agent.poll() is None


def test_a_failing_rescan_is_visible_and_the_others_keep_their_endpoint(rig: DesktopRig) -> None:
    """A file squatting the second user's endpoint directory: each rescan fails (status,
    doctor, an audit notice), the first user's endpoint stays; gone, all is well again."""
    squat = rig.users_dir / str(rig.other.uid)
    squat.write_text("not a directory")
    session = rig.sessions / str(rig.other.uid)
    session.mkdir()
    os.chown(session, rig.other.uid, rig.other.gid)
    try:
        desktop = _wait("a failing rescan", lambda: (d := rig.status()["desktop"])["failing"] and d)
        assert desktop["running"] is True and str(squat) in desktop["last_error"]
        check = rig.doctor()["desktop endpoints"]
        assert check["result"] == "FAIL" and "last rescan failed" in check["detail"]
        notices = [r for r in rig.audit() if r.get("event.action") == "desktop-failure"]
        assert notices and str(squat) in json.dumps(notices[-1])
        ok = _docker(rig, rig.user, "version", "--format", "{{.Server.Version}}")
        assert ok.returncode == 0, ok.stderr
    finally:
        session.rmdir()
        squat.unlink()
    _wait("the rescan to pass again", lambda: not rig.status()["desktop"]["failing"])
    assert rig.doctor()["desktop endpoints"]["result"] == "OK"
