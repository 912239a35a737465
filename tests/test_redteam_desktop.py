"""Red team, Docker Desktop mode (``enforcement: desktop``): a user of their own endpoint.

Reuses ``tests/test_desktop_mode.py``'s rig (a second OS user whose "Docker Desktop" is a
forwarder they run from the stand-in's root-owned program, leading to the session's test
dockerd; the agent as root in desktop mode). Each attack is tried for real; what gets
through is a strict xfail asserting the secure behaviour, what is refused a passing test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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


def _forwarder(rig: DesktopRig, *extra: str, program: Path | None = None) -> list[str]:
    """The stand-in Desktop's forwarder, run from its listed program (or ``program``)."""
    return [
        str(program or rig.desktop_exe),
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


# ------------------------------------------------------------------ the listener's program

_FILTER = r"""
import os, socket, struct, sys, threading, time

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
        open(sys.argv[2] + ".seen", "w").close()
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

def accept_loop(server, target, watched):
    while True:
        c, _ = server.accept()
        uid = struct.unpack("3i", c.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        threading.Thread(target=serve, args=(c, target, watched and uid == 0),
                         daemon=True).start()

def listening(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(64)
    return server

def serve_both(watched, direct, target):
    # Desktop's own socket, moved aside, is where both lead (here: the bridge)
    threading.Thread(target=accept_loop, args=(watched, target, True), daemon=True).start()
    threading.Thread(target=accept_loop, args=(listening(direct), target, False),
                     daemon=True).start()

watched = listening(sys.argv[1])  # what the agent watches
if len(sys.argv) == 5:
    # Hand the socket to a child, then become the listed program, idle: the kernel's
    # listener (the process that called listen()) now runs Docker Desktop's program.
    program = sys.argv[4]
    if os.fork():
        os.execv(program, [program, "-c", "import time; time.sleep(86400)"])
    while os.readlink(f"/proc/{os.getppid()}/exe") != program:
        time.sleep(0.01)
serve_both(watched, sys.argv[2], sys.argv[3])
print(f"ready {os.getpid()}", flush=True)
threading.Event().wait()
"""


def _monitor(rig: DesktopRig) -> dict[str, Any]:
    monitor: dict[str, Any] = rig.endpoints()[rig.user.uid]["bypass_monitor"]
    return monitor


@pytest.mark.usefixtures("restore_desktop")
def test_a_filtering_listener_in_desktops_place_is_refused_and_reported(rig: DesktopRig) -> None:
    """Was a strict xfail: a process of the user's on Desktop's path (Desktop's socket
    moved aside) tells the agent's connections (uid 0) from their own and hands the
    bypass monitor a silent ``/events`` while the user pulls denied images through
    another path to the same daemon. The listener must now run one of
    ``desktop_executables`` from a file only root can change; this one runs the
    system's python3. The endpoint refuses to forward and names it; the monitor follows
    nothing and says why: its status, the endpoint's, doctor, a ``bypass-suspected``
    record."""
    script = rig.scratch / "filter.py"
    script.write_text(_FILTER)
    script.chmod(0o644)
    direct = rig.user.home / "direct.sock"
    python = os.path.realpath(SYSTEM_PYTHON)
    try:
        rig.stop_desktop()
        rig.user.run("rm", "-f", str(rig.desktop_sock))
        proc = _start(
            rig.user.command(
                SYSTEM_PYTHON, str(script), str(rig.desktop_sock), str(direct), str(rig.bridge)
            )
        )
        rig.forwarders.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready ")
        served_by = f"served by {python} (pid {proc.pid}), which is not Docker Desktop"
        monitor = _wait(
            "the bypass monitor to refuse the listener",
            lambda: served_by in str((m := _monitor(rig))["listener_problem"]) and m,
            detail=lambda: str(_monitor(rig)),
        )
        assert not monitor["following_events"]
        got = _docker(rig, "version", "--format", "{{.Server.Version}}")
        assert got.returncode != 0
        assert "pullgate: refusing to forward" in got.stderr and served_by in got.stderr, got.stderr
        assert served_by in str(rig.endpoints()[rig.user.uid]["upstream_problem"])
        check = rig.doctor()[f"Docker Desktop of {rig.user.name} ({rig.user.uid})"]
        assert check["result"] == "FAIL" and served_by in check["detail"], check
        notices = _wait(
            "the monitor's bypass-suspected record",
            lambda: [
                r
                for r in rig.audit()
                if r.get("event.action") == "bypass-suspected"
                and "does not follow the daemon's events" in json.dumps(r)
                and served_by in json.dumps(r)
            ],
        )
        assert str(rig.desktop_sock) in json.dumps(notices[-1])
    finally:
        with contextlib.suppress(FileNotFoundError):
            direct.unlink()
        script.unlink()


@pytest.mark.usefixtures("restore_desktop")
def test_a_socket_handed_over_before_execing_desktops_program_is_refused(
    rig: DesktopRig,
) -> None:
    """Was a strict xfail: the kernel names the process that called listen()
    (``SO_PEERCRED``), not the one that accepts. A process of the user's listens on
    Desktop's path, hands the socket to a child (fork) that serves a silent ``/events``,
    then becomes Docker Desktop's listed program, idle (exec). The monitor now asks who
    holds its connection and the listening socket (``peer.check_holders``): the child,
    running the system's python3, so it follows nothing and says why, as for a listener
    that is not Desktop's: its status, the endpoint's, doctor, a ``bypass-suspected``
    record."""
    script = rig.scratch / "handover.py"
    script.write_text(_FILTER)
    script.chmod(0o644)
    direct = rig.user.home / "direct.sock"
    seen = Path(f"{direct}.seen")  # the filter's mark: the agent asked it for /events
    python = os.path.realpath(SYSTEM_PYTHON)
    child = 0
    try:
        rig.stop_desktop()
        rig.user.run("rm", "-f", str(rig.desktop_sock))
        argv = [str(rig.desktop_sock), str(direct), str(rig.bridge), str(rig.desktop_exe)]
        proc = _start(rig.user.command(SYSTEM_PYTHON, str(script), *argv))
        rig.forwarders.append(proc)  # the listener, now the listed program
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["ready"], line
        child = int(line[1])  # the user's filter, holding the socket
        served_by = f"served by {python} (pid {child}), which is not Docker Desktop"
        monitor = _wait(
            "the bypass monitor to refuse the handed-over socket",
            lambda: served_by in str((m := _monitor(rig))["listener_problem"]) and m,
            detail=lambda: str(_monitor(rig)),
        )
        assert seen.exists()  # it did reach the filter, and then refused to follow it
        assert not monitor["following_events"]
        assert served_by in str(rig.endpoints()[rig.user.uid]["upstream_problem"])
        check = rig.doctor()[f"Docker Desktop of {rig.user.name} ({rig.user.uid})"]
        assert check["result"] == "FAIL" and served_by in check["detail"], check
        notices = _wait(
            "the monitor's bypass-suspected record",
            lambda: [
                r
                for r in rig.audit()
                if r.get("event.action") == "bypass-suspected"
                and "does not follow the daemon's events" in json.dumps(r)
                and served_by in json.dumps(r)
            ],
        )
        assert str(rig.desktop_sock) in json.dumps(notices[-1])
    finally:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        for path in (direct, seen):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        script.unlink()


@pytest.mark.usefixtures("restore_desktop")
def test_the_users_own_copy_of_desktops_program_is_refused(rig: DesktopRig) -> None:
    """The listed program, copied by the user (theirs to change) and run from their home:
    not the listed path, so not Docker Desktop."""
    copy = rig.user.home / "bin" / rig.desktop_exe.name
    assert rig.user.run("mkdir", "-p", str(copy.parent)).returncode == 0
    assert rig.user.run("cp", str(rig.desktop_exe), str(copy)).returncode == 0
    try:
        _start_desktop_as(rig, *_forwarder(rig, program=copy))
        got = _docker(rig, "version", "--format", "{{.Server.Version}}")
        assert got.returncode != 0
        assert f"served by {copy} (pid " in got.stderr, got.stderr
        assert "which is not Docker Desktop" in got.stderr
    finally:
        rig.user.run("rm", "-rf", str(copy.parent))


@pytest.mark.parametrize("place", ["user-owned", "user-dir"])
@pytest.mark.usefixtures("restore_desktop")
def test_a_listed_program_a_user_could_change_is_refused(rig: DesktopRig, place: str) -> None:
    """A listed path whose file (``user-owned``) or directory (``user-dir``) is the
    user's: they could put any program there, so it is not Desktop's installation."""
    exe = rig.listed_exe(place)
    exe.parent.mkdir(parents=True, exist_ok=True)
    for directory in (exe.parent.parent, exe.parent):
        directory.chmod(0o755)
    shutil.copy(rig.desktop_exe, exe)
    exe.chmod(0o755)
    theirs = exe if place == "user-owned" else exe.parent
    os.chown(theirs, rig.user.uid, rig.user.gid)
    try:
        _start_desktop_as(rig, *_forwarder(rig, program=exe))
        got = _docker(rig, "version", "--format", "{{.Server.Version}}")
        assert got.returncode != 0
        why = f"which a user could have changed: {theirs} is owned by uid {rig.user.uid}"
        assert f"served by {exe} (pid " in got.stderr and why in got.stderr, got.stderr
    finally:
        shutil.rmtree(exe.parent)


@pytest.mark.usefixtures("restore_desktop")
def test_a_listener_whose_program_file_was_replaced_is_refused(rig: DesktopRig) -> None:
    """Served while the listed file is the one it runs; once that file is replaced
    (a new inode at the path), the running program is no longer what is installed."""
    exe = rig.listed_exe("replaced")
    exe.parent.mkdir(parents=True, exist_ok=True)
    for directory in (exe.parent.parent, exe.parent):
        directory.chmod(0o755)
    shutil.copy(rig.desktop_exe, exe)
    exe.chmod(0o755)
    try:
        _start_desktop_as(rig, *_forwarder(rig, program=exe))
        ok = _docker(rig, "version", "--format", "{{.Server.Version}}")
        assert ok.returncode == 0, ok.stderr  # listed, root's: Docker Desktop
        fresh = exe.with_name("fresh")
        shutil.copy(rig.desktop_exe, fresh)
        fresh.chmod(0o755)
        os.replace(fresh, exe)
        got = _docker(rig, "version", "--format", "{{.Server.Version}}")
        assert got.returncode != 0
        assert "started from a file that has since been deleted or replaced" in got.stderr, (
            got.stderr
        )
    finally:
        shutil.rmtree(exe.parent)


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
    _start_desktop_as(rig, str(rig.desktop_exe), "-c", _STUCK_LISTENER, str(rig.desktop_sock))
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
