"""Red team, Docker Desktop mode (``enforcement: desktop``): a user of their own endpoint.

Reuses ``tests/test_desktop_mode.py``'s rig (a second OS user whose "Docker Desktop" is a
forwarder they run, leading to the session's test dockerd; the agent as root in desktop
mode). Each attack is tried for real; what gets through is a strict xfail asserting the
secure behaviour, what is refused a passing test.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_process import DENIED_REPOSITORY
from tests.test_desktop_mode import (
    SYSTEM_PYTHON,
    USER_DOCKER_CLI,
    DesktopRig,
    _start,
    _stop,
    _wait,
    rig,
)

__all__ = ["rig"]  # the module-scoped fixture, shared with test_desktop_mode's rig


def _docker(rig: DesktopRig, *args: str) -> subprocess.CompletedProcess[str]:
    return rig.user.run(USER_DOCKER_CLI, *args)


def _start_desktop_as(rig: DesktopRig, *argv: str) -> None:
    """Replace the user's Desktop stand-in with ``argv`` (run as the user), which must
    end by exec'ing the forwarder onto their Desktop socket."""
    rig.stop_desktop()
    rig.user.run("rm", "-f", str(rig.desktop_sock))
    proc = _start(rig.user.command(*argv))
    rig.forwarders.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", f"the user's forwarder did not start: {line!r}"


def _forwarder(rig: DesktopRig, *extra: str) -> list[str]:
    return [
        SYSTEM_PYTHON,
        str(rig.scratch / "fwd.py"),
        str(rig.desktop_sock),
        str(rig.bridge),
        "600",
        *extra,
    ]


@pytest.fixture
def restore_desktop(rig: DesktopRig) -> Iterator[None]:
    try:
        yield
    finally:
        rig.stop_desktop()
        rig.user.run("rm", "-f", str(rig.desktop_sock))
        rig.start_desktop()


@pytest.fixture
def victim_dir(rig: DesktopRig) -> Iterator[Path]:
    """The *other* user's home (made 0700), which the endpoint's user must not bind."""
    target = rig.other.home
    rig.other.run("chmod", "700", str(target))
    try:
        yield target
    finally:
        with contextlib.suppress(FileNotFoundError):
            (target / "pwned").unlink()


def _bind_and_write(rig: DesktopRig, host: Path) -> subprocess.CompletedProcess[str]:
    return _docker(rig, "run", "--rm", "-v", f"{host}:/x", "alpine", "busybox", "touch", "/x/pwned")


# ------------------------------------------------------------------ host_access


@pytest.mark.usefixtures("restore_desktop")
def test_bind_of_another_users_directory_is_refused(rig: DesktopRig, victim_dir: Path) -> None:
    """The baseline: the user's plain Desktop, a bind of another user's directory."""
    rig.start_desktop()
    got = _bind_and_write(rig, victim_dir)
    assert got.returncode != 0
    assert "pullgate:" in got.stderr and "containers.host_access" in got.stderr, got.stderr
    assert not (victim_dir / "pwned").exists()


@pytest.mark.usefixtures("restore_desktop")
def test_a_link_to_the_agents_state_is_refused(rig: DesktopRig) -> None:
    """The baseline: the user's plain Desktop, a link of theirs to the agent's state."""
    rig.start_desktop()
    state = rig.scratch / "state"
    proj = rig.user.home / "proj"
    rig.user.run("mkdir", "-p", str(proj))
    rig.user.run("ln", "-sfn", str(state), str(proj / "state"))
    try:
        got = _bind_and_write(rig, proj / "state")
        assert got.returncode != 0 and "containers.host_access" in got.stderr, got.stderr
        assert not (state / "pwned").exists()
    finally:
        rig.user.run("rm", "-rf", str(proj))


@pytest.mark.usefixtures("restore_desktop")
def test_a_mount_namespace_listener_cannot_hide_what_a_bind_reaches(
    rig: DesktopRig, victim_dir: Path
) -> None:
    decoy = rig.user.home / "decoy"
    rig.user.run("mkdir", "-p", str(decoy))
    _start_desktop_as(
        rig,
        "unshare",
        "-Urm",
        "sh",
        "-c",
        'd="$0"; v="$1"; shift; mount --bind "$d" "$v" && exec "$@"',
        str(decoy),
        str(victim_dir),
        *_forwarder(rig),
    )
    got = _bind_and_write(rig, victim_dir)
    written = (victim_dir / "pwned").exists()
    assert got.returncode != 0 and not written, (
        f"the container wrote into {victim_dir} (another user's 0700 directory): "
        f"exit {got.returncode}, {got.stderr[-400:]}"
    )


@pytest.mark.usefixtures("restore_desktop")
def test_a_mount_namespace_listener_cannot_hide_a_link_to_the_agents_state(
    rig: DesktopRig,
) -> None:
    state = rig.scratch / "state"
    assert state.is_dir()
    proj, decoy = rig.user.home / "proj", rig.user.home / "decoyproj"
    rig.user.run("mkdir", "-p", str(proj), str(decoy / "state"))
    rig.user.run("ln", "-sfn", str(state), str(proj / "state"))
    try:
        _start_desktop_as(
            rig,
            "unshare",
            "-Urm",
            "sh",
            "-c",
            'd="$0"; v="$1"; shift; mount --bind "$d" "$v" && exec "$@"',
            str(decoy),
            str(proj),
            *_forwarder(rig),
        )
        got = _bind_and_write(rig, proj / "state")
        written = (state / "pwned").exists()
        assert got.returncode != 0 and not written, (
            f"a container wrote into the agent's state directory {state}: {got.stderr[-300:]}"
        )
    finally:
        with contextlib.suppress(FileNotFoundError):
            (state / "pwned").unlink()
        rig.user.run("rm", "-rf", str(proj), str(decoy))


@pytest.mark.usefixtures("restore_desktop")
def test_a_listener_naming_a_fifo_as_its_config_file_does_not_hang_the_agent(
    rig: DesktopRig,
) -> None:
    """The agent reads the listener's ``--config-file`` (as root, beneath its root) for
    the daemon's directories: the user names a FIFO. read_capped opens it without
    blocking and refuses it; the bind is judged and answered promptly."""
    fifo = rig.user.home / "daemon.json"
    rig.user.run("mkfifo", str(fifo))
    try:
        _start_desktop_as(rig, *_forwarder(rig, "--config-file", str(fifo)))
        started = time.monotonic()
        got = _docker(rig, "create", "-v", f"{rig.other.home}:/x", "alpine")
        assert time.monotonic() - started < 15
        assert got.returncode != 0 and "containers.host_access" in got.stderr, got.stderr
    finally:
        fifo.unlink()


# ------------------------------------------------------------------ the docker context


def _context_host(rig: DesktopRig, name: str) -> str:
    got = _docker(rig, "context", "inspect", name, "--format", "{{.Endpoints.docker.Host}}")
    return got.stdout.strip()


def test_the_pullgate_context_repointed_at_desktop_is_put_back_or_reported(
    rig: DesktopRig,
) -> None:
    endpoint_host = f"unix://{rig.endpoint}"
    direct = f"unix://{rig.desktop_sock}"
    assert _context_host(rig, "pullgate") == endpoint_host
    changed = _docker(rig, "context", "update", "pullgate", "--docker", f"host={direct}")
    assert changed.returncode == 0, changed.stderr
    try:
        time.sleep(2.25 * 2.0)  # two rescans (RESCAN_INTERVAL)
        host = _context_host(rig, "pullgate")
        state = rig.endpoints()[rig.user.uid]
        put_back = host == endpoint_host
        reported = not str(state["context"]).startswith("selected") or bool(state["context_error"])
        assert put_back or reported, (
            f"the pullgate context leads to {host}, and status says {state['context']!r}"
        )
    finally:
        _docker(rig, "context", "update", "pullgate", "--docker", f"host={endpoint_host}")


# ------------------------------------------------------------------ status to others

_GET_STATUS = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"GET /v1/status HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
out = b""
while chunk := s.recv(65536):
    out += chunk
sys.stdout.write(out.decode(errors="replace"))
"""


def test_status_shows_a_user_only_their_own_endpoint(rig: DesktopRig) -> None:
    secret = "ssh://alice@build-7.secret.example"
    made = _docker(rig, "context", "create", "remote", "--docker", f"host={secret}")
    assert made.returncode == 0, made.stderr
    try:
        assert _docker(rig, "context", "use", "remote").returncode == 0
        _wait(
            "the agent to see the user's own context",
            lambda: secret in str(rig.endpoints()[rig.user.uid]["context"]),
        )
        seen = rig.other.run(SYSTEM_PYTHON, "-c", _GET_STATUS, str(rig.control))
        assert " 200 " in seen.stdout.splitlines()[0], seen.stdout + seen.stderr
        assert secret not in seen.stdout, "another user reads the user's own docker context"
        assert f'"uid": {rig.user.uid}' not in seen.stdout
    finally:
        _docker(rig, "context", "use", "pullgate")
        _docker(rig, "context", "rm", "-f", "remote")
        _wait(
            "the context selected", lambda: rig.endpoints()[rig.user.uid]["context"] == "selected"
        )


# ------------------------------------------------------------------ root's reach


@pytest.mark.usefixtures("restore_desktop")
def test_the_agent_never_connects_where_the_user_could_not(rig: DesktopRig) -> None:
    hidden = rig.scratch / "root-only"
    hidden.mkdir(mode=0o700)
    target = hidden / "service.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(target))
    server.listen(16)
    server.settimeout(0.2)
    accepted: list[int] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        rig.stop_desktop()
        rig.user.run("rm", "-f", str(rig.desktop_sock))
        assert rig.user.run("ln", "-s", str(target), str(rig.desktop_sock)).returncode == 0
        own = rig.user.run(SYSTEM_PYTHON, "-c", _CONNECT, str(rig.desktop_sock))
        assert "PermissionError" in own.stdout + own.stderr, own  # the user cannot connect
        got = _docker(rig, "version", "--format", "{{.Server.Version}}")
        assert got.returncode != 0
        said = got.stderr
        assert not accepted, f"root connected {len(accepted)} time(s) for the user: {said}"
        assert "served by root" not in said, said
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        hidden.rmdir()


_CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(type(e).__name__)
else:
    print("connected")
"""


# ------------------------------------------------------------------ the bypass monitor

_FILTER = r"""
import os, socket, struct, sys, threading

def pipe(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

def serve(client, target, watched):
    first = client.recv(65536)
    if watched and b"/events" in first.split(b"\r\n", 1)[0]:
        # the agent's bypass monitor: a stream that never says anything
        client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n")
        while client.recv(65536):
            pass
        return
    up = socket.socket(socket.AF_UNIX)
    up.connect(target)
    up.sendall(first)
    threading.Thread(target=pipe, args=(up, client), daemon=True).start()
    pipe(client, up)

def listen(path, target, watched):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(64)
    def loop():
        while True:
            c, _ = server.accept()
            uid = struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
            threading.Thread(target=serve, args=(c, target, watched and uid == 0),
                             daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()

# Desktop's own socket, moved aside, is where both lead (here: the bridge)
listen(sys.argv[1], sys.argv[3], True)  # what the agent watches
listen(sys.argv[2], sys.argv[3], False)  # the user's own way in
print("ready", flush=True)
threading.Event().wait()
"""


@pytest.mark.xfail(
    strict=True,
    reason="red team: the bypass monitor follows /events on the user's own Desktop socket, "
    "and check_listener only asks that the listener be the user: any process of theirs "
    "there (Desktop's socket moved aside) can tell the agent's connections (SO_PEERCRED "
    "uid 0) from their own and hand the monitor a silent /events, while the user pulls "
    "denied images through another path to the same daemon; nothing is reported",
)
@pytest.mark.usefixtures("restore_desktop", "denied_image_absent")
def test_direct_pulls_are_reported_even_behind_a_filtering_listener(rig: DesktopRig) -> None:
    script = rig.scratch / "filter.py"
    script.write_text(_FILTER)
    script.chmod(0o644)
    direct = rig.user.home / "direct.sock"
    try:
        _start_desktop_as(
            rig, SYSTEM_PYTHON, str(script), str(rig.desktop_sock), str(direct), str(rig.bridge)
        )
        _wait(
            "the bypass monitor to follow the filtered events",
            lambda: rig.endpoints()[rig.user.uid]["bypass_monitor"]["following_events"],
        )
        before = len(rig.audit())
        got = _docker(rig, "-H", f"unix://{direct}", "pull", DENIED_REPOSITORY)
        assert got.returncode == 0, got.stderr
        deadline = time.monotonic() + 8.0
        found: list[object] = []
        while not found and time.monotonic() < deadline:
            found = [
                r
                for r in rig.audit()[before:]
                if r.get("event.action") == "bypass-suspected" and DENIED_REPOSITORY in str(r)
            ]
            time.sleep(0.25)
        assert found, f"{DENIED_REPOSITORY} was pulled around the endpoint and not reported"
    finally:
        with contextlib.suppress(FileNotFoundError):
            direct.unlink()
        script.unlink()


# ------------------------------------------------------------------ doctor


@pytest.mark.usefixtures("restore_desktop")
def test_doctor_does_not_call_root_s_daemon_the_users_desktop(rig: DesktopRig) -> None:
    ok = _docker(rig, "version", "--format", "{{.Server.Version}}")  # no problem on record
    assert ok.returncode == 0, ok.stderr
    rig.stop_desktop()
    rig.user.run("rm", "-f", str(rig.desktop_sock))
    link = rig.user.run("ln", "-s", str(rig.docker_env.socket_path), str(rig.desktop_sock))
    assert link.returncode == 0, link.stderr
    check = rig.doctor()[f"Docker Desktop of {rig.user.name} ({rig.user.uid})"]
    assert check["result"] == "FAIL", check


# ------------------------------------------------------------------ refused as they should be


@pytest.mark.usefixtures("restore_desktop")
def test_a_link_to_another_users_desktop_is_refused(rig: DesktopRig) -> None:
    theirs = rig.other.home / ".docker" / "desktop" / "docker.sock"
    rig.other.run("mkdir", "-p", str(theirs.parent))
    proc = _start(rig.other.command(*_forwarder(rig)[:2], str(theirs), str(rig.bridge), "666"))
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        rig.other.run(
            "chmod", "755", str(rig.other.home), str(theirs.parent.parent), str(theirs.parent)
        )
        rig.stop_desktop()
        rig.user.run("rm", "-f", str(rig.desktop_sock))
        assert rig.user.run("ln", "-s", str(theirs), str(rig.desktop_sock)).returncode == 0
        got = _docker(rig, "version", "--format", "{{.Server.Version}}")
        assert got.returncode != 0
        assert "not the user's own socket" in got.stderr, got.stderr
    finally:
        _stop(proc)
        rig.other.run("rm", "-rf", str(rig.other.home / ".docker"))
        rig.other.run("chmod", "700", str(rig.other.home))


@pytest.mark.usefixtures("restore_desktop")
def test_a_fifo_or_directory_at_the_desktop_path_fails_promptly(rig: DesktopRig) -> None:
    for make in (["mkfifo"], ["mkdir"]):
        rig.stop_desktop()
        rig.user.run("rm", "-rf", str(rig.desktop_sock))
        assert rig.user.run(*make, str(rig.desktop_sock)).returncode == 0
        started = time.monotonic()
        got = _docker(rig, "version", "--format", "{{.Server.Version}}")
        assert time.monotonic() - started < 10
        assert got.returncode != 0
        assert "pullgate: cannot reach your Docker Desktop" in got.stderr, got.stderr
        assert rig.status()["desktop"]["running"] is True
        rig.user.run("rm", "-rf", str(rig.desktop_sock))


# ------------------------------------------------------------------ the shared worker threads

_STUCK_LISTENER = """
import os, socket, sys, threading
try:
    os.unlink(sys.argv[1])
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(0)  # never accepted: once the backlog is full, a blocking connect() waits
print("ready", flush=True)
threading.Event().wait()
"""

_FLOOD = """
import json, socket, sys, threading, time
endpoint, seconds, width = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
body = json.dumps({"Image": "alpine", "HostConfig": {"Binds": ["/srv/x:/x"]}}).encode()
head = (b"POST /v1.45/containers/create HTTP/1.1\\r\\nHost: d\\r\\n"
        b"Content-Type: application/json\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body))
end = time.monotonic() + seconds
def one():
    while time.monotonic() < end:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(3)
        try:
            s.connect(endpoint)
            s.sendall(head + body)
            s.recv(65536)
        except OSError:
            pass
        finally:
            s.close()
threads = [threading.Thread(target=one) for _ in range(width)]
for t in threads:
    t.start()
print("flooding", flush=True)
for t in threads:
    t.join()
"""


@pytest.mark.usefixtures("restore_desktop")
def test_one_users_requests_do_not_stall_another_users_login(rig: DesktopRig) -> None:
    """A Desktop that never accepts (its backlog full) and 48 clients creating containers
    with binds without pause: each is answered 502 at once (the asynchronous connect fails
    before any worker thread is held), and another user's login gets its endpoint at the
    next rescan."""
    _start_desktop_as(rig, SYSTEM_PYTHON, "-c", _STUCK_LISTENER, str(rig.desktop_sock))
    flood = _start(rig.user.command(SYSTEM_PYTHON, "-c", _FLOOD, str(rig.endpoint), "12", "48"))
    session = rig.sessions / str(rig.other.uid)
    try:
        assert flood.stdout is not None and flood.stdout.readline().strip() == "flooding"
        time.sleep(3.0)
        session.mkdir()
        os.chown(session, rig.other.uid, rig.other.gid)
        started = time.monotonic()
        _wait(
            "the other user's endpoint",
            lambda: rig.other.uid in rig.endpoints(),
            timeout=20.0,
        )
        took = time.monotonic() - started
        assert took < 8.0, f"another user's login waited {took:.1f} s for its endpoint"
    finally:
        _stop(flood)
        with contextlib.suppress(FileNotFoundError):
            session.rmdir()
        _wait("the other user's endpoint to go", lambda: rig.other.uid not in rig.endpoints(), 30)


def test_a_context_to_the_desktop_socket_by_another_spelling_is_replaced(
    rig: DesktopRig,
) -> None:
    spelled = f"unix://{rig.desktop_sock.parent}//{rig.desktop_sock.name}"
    made = _docker(rig, "context", "create", "mine2", "--docker", f"host={spelled}")
    assert made.returncode == 0, made.stderr
    try:
        assert _docker(rig, "context", "use", "mine2").returncode == 0
        time.sleep(2.25 * 2.0)  # two rescans (RESCAN_INTERVAL)
        shown = _docker(rig, "context", "show").stdout.strip()
        assert shown == "pullgate", rig.endpoints()[rig.user.uid]["context"]
    finally:
        _docker(rig, "context", "use", "pullgate")
        _docker(rig, "context", "rm", "-f", "mine2")
        _wait(
            "the context selected",
            lambda: str(rig.endpoints()[rig.user.uid]["context"]).startswith("selected"),
        )


@pytest.mark.usefixtures("restore_desktop")
def test_a_link_back_to_the_users_own_endpoint_is_refused_not_looped(rig: DesktopRig) -> None:
    rig.stop_desktop()
    rig.user.run("rm", "-f", str(rig.desktop_sock))
    assert rig.user.run("ln", "-s", str(rig.endpoint), str(rig.desktop_sock)).returncode == 0
    started = time.monotonic()
    got = _docker(rig, "version", "--format", "{{.Server.Version}}")
    assert time.monotonic() - started < 10
    assert got.returncode != 0
    assert "refusing to forward" in got.stderr, got.stderr
