"""Docker Desktop mode's listener rule: the program behind a user's Desktop socket.

A process of the user's on their Desktop socket is the user's whatever it runs, so the
agent also asks which program it is: one of ``desktop_executables``, run from a file
only root can change. First the pure judgement (``agent.core.desktop``) with values,
then the platform's reads (``agent.platform.programs``) and ``peer.check_listener`` on
real processes and files. The end-to-end attacks, through the Desktop mode rig, are in
``tests/test_redteam_desktop.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.core.desktop import (
    FileFacts,
    ListenerProgram,
    desktop_executables,
    executable_dir_groups,
    listener_program_problem,
    refused_program_message,
)
from agent.platform.peer import ListenerError, check_listener
from agent.platform.programs import program_of

EXE = "/opt/docker-desktop/bin/com.docker.backend"
LINUX = executable_dir_groups("linux")
DARWIN = executable_dir_groups("darwin")
SYSTEM_PYTHON = "/usr/bin/python3"

# --------------------------------------------------------------------- the judgement


def _dir(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> FileFacts:
    return FileFacts(path, stat.S_IFDIR | mode, uid, gid, dev=1, ino=len(path))


def _file(path: str = EXE, mode: int = 0o755, uid: int = 0, gid: int = 0) -> FileFacts:
    return FileFacts(path, stat.S_IFREG | mode, uid, gid, dev=1, ino=4242)


def _chain(path: str) -> tuple[FileFacts, ...]:
    return tuple(_dir(str(p)) for p in Path(path).parents)


def _program(path: str = EXE, **changes: Any) -> ListenerProgram:
    """Docker Desktop's backend as Docker's installer leaves it; ``changes`` spoil it."""
    good = ListenerProgram(
        pid=77, path=path, running=_file(path), at_path=_file(path), parents=_chain(path)
    )
    return replace(good, **changes)


def _parents(**by_path: FileFacts) -> tuple[FileFacts, ...]:
    return tuple(by_path.get(p.path, p) for p in _chain(EXE))


def test_desktops_own_program_from_roots_installation_is_accepted() -> None:
    assert listener_program_problem(_program(), [EXE], LINUX) is None
    assert listener_program_problem(_program(), [EXE, "/other"], DARWIN) is None


def test_a_program_not_listed_is_not_docker_desktop() -> None:
    python = "/usr/bin/python3.11"
    problem = listener_program_problem(_program(python), [EXE], LINUX)
    assert problem == (
        f"{python} (pid 77), which is not Docker Desktop (desktop_executables: {EXE})"
    )
    # a copy of Desktop's own program elsewhere (the user's) is not listed either
    copy = "/home/dev/bin/com.docker.backend"
    problem = listener_program_problem(_program(copy), [EXE], LINUX)
    assert problem is not None and "which is not Docker Desktop" in problem


def test_a_listener_the_agent_cannot_identify_is_refused() -> None:
    nobody = ListenerProgram(pid=None, unreadable="the kernel named no process")
    assert listener_program_problem(nobody, [EXE], LINUX) == (
        "a process the agent cannot identify (the kernel named no process)"
    )
    gone = ListenerProgram(pid=77, unreadable="the process has exited")
    problem = listener_program_problem(gone, [EXE], LINUX)
    assert problem is not None and "the process has exited" in problem


@pytest.mark.parametrize(
    "spoiled",
    [
        {"deleted": True},
        {"at_path": None},  # nothing at the path in the agent's view
        {"at_path": replace(_file(), ino=1)},  # another file there now
        {"at_path": replace(_file(), dev=2)},  # same inode number, another file system
        {"running": None},
    ],
    ids=["deleted", "nothing-there", "other-inode", "other-device", "unread"],
)
def test_a_program_that_is_not_the_file_at_its_path_is_refused(spoiled: dict[str, Any]) -> None:
    problem = listener_program_problem(_program(**spoiled), [EXE], LINUX)
    assert problem is not None and problem.startswith(f"{EXE} (pid 77), ")
    if spoiled.get("deleted"):
        assert "started from a file that has since been deleted or replaced" in problem
    else:
        assert f"which does not run the file now at {EXE}" in problem


@pytest.mark.parametrize(
    ("spoiled", "why"),
    [
        ({"running": _file(uid=1000)}, f"{EXE} is owned by uid 1000, not root"),
        ({"running": _file(mode=0o775)}, f"{EXE} is writable by its group or by others (mode"),
        ({"running": _file(mode=0o757)}, f"{EXE} is writable by its group or by others (mode"),
        (
            {"running": replace(_file(), mode=stat.S_IFLNK | 0o777)},
            f"{EXE} is a symbolic link, not a regular file",
        ),
        ({"parents": _parents(**{"/opt": _dir("/opt", uid=1000)})}, "/opt is owned by uid 1000"),
        (
            {"parents": _parents(**{"/opt/docker-desktop": _dir("/opt/docker-desktop", 0o777)})},
            "/opt/docker-desktop is writable by anyone (mode 0777)",
        ),
        (
            {"parents": _parents(**{"/opt": _dir("/opt", 0o775, gid=1000)})},
            "/opt is writable by group 1000 (mode 0775)",
        ),
        (
            {"parents": _parents(**{"/opt": replace(_dir("/opt"), mode=stat.S_IFLNK | 0o777)})},
            "/opt is a symbolic link, not a directory",
        ),
    ],
    ids=[
        "file-users",
        "file-group-writable",
        "file-world-writable",
        "file-a-link",
        "dir-users",
        "dir-world-writable",
        "dir-group-writable",
        "dir-a-link",
    ],
)
def test_a_listed_program_a_user_could_change_is_refused(spoiled: dict[str, Any], why: str) -> None:
    """A user who can write the file or a directory above it can put any program at the
    listed path: it is no installation of Desktop's."""
    problem = listener_program_problem(_program(**spoiled), [EXE], LINUX)
    assert problem is not None
    assert problem.startswith(f"{EXE} (pid 77), which a user could have changed: {why}")


def test_a_sticky_directory_above_is_fine_its_entries_are_their_owners() -> None:
    path = "/tmp/desktop/bin/com.docker.backend"
    parents = tuple(_dir(p.path, 0o1777) if p.path == "/tmp" else p for p in _program(path).parents)
    assert listener_program_problem(_program(path, parents=parents), [path], LINUX) is None


def test_the_admin_group_may_write_a_directory_above_on_macos_only() -> None:
    """/Applications is root:admin 0775: accepted on macOS (admins can become root
    anyway), not for a group of that number on Linux."""
    path = "/Applications/Docker.app/Contents/MacOS/com.docker.backend"
    parents = tuple(
        _dir(p.path, 0o775, gid=80) if p.path == "/Applications" else p
        for p in _program(path).parents
    )
    program = _program(path, parents=parents)
    assert listener_program_problem(program, [path], DARWIN) is None
    problem = listener_program_problem(program, [path], LINUX)
    assert problem is not None and "/Applications is writable by group 80" in problem


def test_directories_not_all_examined_are_refused() -> None:
    for parents in ((), _chain(EXE)[:-1], tuple(reversed(_chain(EXE)))):
        problem = listener_program_problem(_program(parents=parents), [EXE], LINUX)
        assert problem is not None and "whose directories could not all be examined" in problem
    relative = listener_program_problem(_program("bin/x", parents=()), ["bin/x"], LINUX)
    assert relative is not None and "could not all be examined" in relative


def test_the_clients_message_names_the_listener_and_what_to_do() -> None:
    problem = listener_program_problem(_program("/usr/bin/python3.11"), [EXE], LINUX)
    assert problem is not None
    message = refused_program_message("/home/a/.docker/desktop/docker.sock", 1000, problem)
    assert message.startswith(
        "pullgate: refusing to forward to unix:///home/a/.docker/desktop/docker.sock: the "
        "socket there is served by /usr/bin/python3.11 (pid 77), which is not Docker Desktop"
    )
    assert "uid 1000's own Docker Desktop" in message and "pullgate doctor" in message
    for phrase in ("permission denied", "no such file"):  # the denial contract's
        assert phrase not in message.lower()


def test_default_programs_per_platform() -> None:
    assert desktop_executables("darwin") == (
        "/Applications/Docker.app/Contents/MacOS/com.docker.backend",
    )
    assert desktop_executables("linux") == ("/opt/docker-desktop/bin/com.docker.backend",)
    assert executable_dir_groups("linux") == frozenset({0})
    assert executable_dir_groups("darwin") == frozenset({0, 80})


# --------------------------------------------------------------------- the platform's reads

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/PID/exe (Linux)"
)


@linux_only
def test_program_of_this_process_is_its_executable_and_directories() -> None:
    program = program_of(os.getpid())
    assert program.path == os.path.realpath("/proc/self/exe")
    assert program.running is not None and program.at_path is not None
    assert (program.running.dev, program.running.ino) == (
        program.at_path.dev,
        program.at_path.ino,
    )
    assert [p.path for p in program.parents] == [str(p) for p in Path(program.path).parents]
    assert not program.deleted


@linux_only
def test_program_of_no_process_or_a_gone_one() -> None:
    assert program_of(None).unreadable == "the kernel named no process"
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: nothing has that pid now (short of its reuse since)
    gone = program_of(child.pid)
    assert (gone.pid, gone.path, gone.unreadable) == (child.pid, None, "the process has exited")


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A copy of ``sleep`` run from ``tmp_path`` (a process of ours, ended by its PID)."""
    found = shutil.which("sleep")
    if found is None:
        pytest.skip("needs sleep(1)")
    copy = tmp_path / "com.docker.backend"
    shutil.copy(os.path.realpath(found), copy)
    copy.chmod(0o755)
    proc = subprocess.Popen([str(copy), "60"])
    try:
        yield copy, proc
    finally:
        proc.kill()
        proc.wait(timeout=5)


@linux_only
def test_a_program_whose_file_was_replaced_is_seen_as_deleted(
    sleeper: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    copy, proc = sleeper
    before = program_of(proc.pid)
    assert before.path == str(copy) and not before.deleted
    fresh = copy.with_name("fresh")
    shutil.copy(copy, fresh)
    os.replace(fresh, copy)  # a new inode at the path; the process runs the old one
    after = program_of(proc.pid)
    assert after.path == str(copy) and after.deleted
    assert after.running is not None and after.at_path is not None
    assert after.running.ino != after.at_path.ino
    problem = listener_program_problem(after, [str(copy)], LINUX)
    assert problem is not None and "deleted or replaced" in problem


@linux_only
def test_a_listed_path_names_the_program_by_its_file_not_the_kernels_spelling(
    sleeper: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """/proc/PID/exe spells the path from some root (a chroot, a sandbox's mount
    namespace): the listed path whose file is that very inode names the program; a
    listed path with another file does not."""
    copy, proc = sleeper
    if os.geteuid() != 0:
        pytest.skip("a bind mount needs root")
    seen = tmp_path / "seen"  # the same directory, reached by another path
    seen.mkdir()
    subprocess.run(["mount", "--bind", str(copy.parent), str(seen)], check=True)
    try:
        listed = str(seen / copy.name)
        program = program_of(proc.pid, [listed])
        assert (program.path, program.deleted) == (listed, False)
        assert program.running is not None and program.at_path is not None
        assert (program.running.ino, program.at_path.ino) == (copy.stat().st_ino,) * 2
        other = tmp_path / "other"
        shutil.copy(copy, other)
        unmatched = program_of(proc.pid, [str(other)])
        assert unmatched.path == str(copy)  # the kernel's spelling, for the message
        problem = listener_program_problem(unmatched, [str(other)], LINUX)
        assert problem is not None and "not Docker Desktop" in problem
    finally:
        subprocess.run(["umount", str(seen)], check=True)


def _listen(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    return server


def _connected(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    return client


@linux_only
def test_check_listener_names_a_program_that_is_not_listed(tmp_path: Path) -> None:
    path = tmp_path / "docker.sock"
    with _listen(path), _connected(path) as client:
        check_listener(client, path, os.getuid())  # the uid alone: fine
        with pytest.raises(ListenerError) as caught:
            check_listener(client, path, os.getuid(), [EXE])
    me = os.path.realpath("/proc/self/exe")
    assert caught.value.listener == (
        f"{me} (pid {os.getpid()}), which is not Docker Desktop (desktop_executables: {EXE})"
    )
    assert str(caught.value).startswith(f"pullgate: refusing to forward to unix://{path}: ")


_LISTENER = """
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
print("ready", flush=True)
time.sleep(60)
"""


@linux_only
def test_check_listener_on_a_listed_program_as_root_installs_it(tmp_path: Path) -> None:
    """A real listener run from a copy of python in root's 0755 directories: accepted
    when listed; refused once the file or its directory could be changed by a user."""
    if os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("needs root (to own the program's file) and the system's python3")
    directory = tmp_path / "desktop" / "bin"
    directory.mkdir(parents=True)
    for each in (tmp_path, directory.parent, directory):
        each.chmod(0o755)
    exe = directory / "com.docker.backend"
    shutil.copy(os.path.realpath(SYSTEM_PYTHON), exe)
    exe.chmod(0o755)
    path = tmp_path / "docker.sock"
    proc = subprocess.Popen(
        [str(exe), "-c", _LISTENER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

        def check() -> None:
            with _connected(path) as client:
                check_listener(client, path, 0, [str(exe)])

        check()
        steps: list[tuple[Callable[[], None], Callable[[], None], str]] = [
            (lambda: exe.chmod(0o775), lambda: exe.chmod(0o755), "writable by its group"),
            (lambda: os.chown(exe, 4242, -1), lambda: os.chown(exe, 0, -1), "owned by uid 4242"),
            (
                lambda: directory.chmod(0o777),
                lambda: directory.chmod(0o755),
                f"{directory} is writable by anyone",
            ),
        ]
        for spoil, restore, why in steps:
            spoil()
            with pytest.raises(ListenerError, match="which a user could have changed") as caught:
                check()
            assert why in str(caught.value)
            restore()
            check()
    finally:
        proc.kill()
        proc.wait(timeout=5)
