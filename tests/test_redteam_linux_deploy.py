"""Red team of the Linux takeover's installed files (issue 15), read as systemd and
systemd-tmpfiles read them: the docker.socket drop-in, the tmpfiles entry and the agent's
unit. Pure (no systemd, no root); the booted-system test of the same review is
``test_08b`` in tests/test_packaging_linux.py.

Each test pins a defence confirmed in the review, so that a later edit of
installers/linux/ cannot quietly reopen a way to dockerd or weaken the agent's sandbox.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALLERS = ROOT / "installers" / "linux"
DAEMON_SOCKET = "/run/pullgate/dockerd.sock"
SHIM_SOCKET = "/run/pullgate/docker.sock"


def _unit(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order, as systemd reads a unit or drop-in (no line
    continuations are used in these files: one is refused here)."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}: continuation lines not expected"
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def _values(entries: list[tuple[str, str, str]], section: str, key: str) -> list[str]:
    return [v for s, k, v in entries if s == section and k == key]


def _effective_list(values: list[str]) -> list[str]:
    """A list setting (ListenStream=, ReadWritePaths=): an empty assignment resets it."""
    out: list[str] = []
    for value in values:
        if value == "":
            out = []
        else:
            out += value.split()
    return out


# ------------------------------------------------------------------ docker.socket drop-in


def test_dropin_leaves_docker_socket_one_root_only_unix_listener() -> None:
    """The drop-in resets the package's ListenStream (and any earlier drop-in's, such as a
    TCP port) before its own, and owns the socket root:root 0600: no second way in from
    docker.socket itself."""
    conf = _unit(INSTALLERS / "pullgate-takeover.conf")
    listen = _values(conf, "Socket", "ListenStream")
    assert listen[0] == "", "the package's /run/docker.sock must be reset first"
    assert _effective_list(listen) == [DAEMON_SOCKET]
    for other in ("ListenDatagram", "ListenSequentialPacket", "ListenFIFO", "Symlinks"):
        assert not _values(conf, "Socket", other), other
    assert _values(conf, "Socket", "SocketUser") == ["root"]
    assert _values(conf, "Socket", "SocketGroup") == ["root"]
    assert _values(conf, "Socket", "SocketMode") == ["0600"]
    mode = int(_values(conf, "Socket", "DirectoryMode")[0], 8)
    assert mode & 0o022 == 0  # /run/pullgate, if systemd creates it, is not writable by users


def test_dropin_applies_after_an_admins_systemctl_edit_override() -> None:
    """systemd applies drop-ins of every unit directory in file-name order: the
    ``override.conf`` of ``systemctl edit docker.socket`` (e.g. a TCP ListenStream added
    before Pullgate was installed) comes before Pullgate's, whose empty ListenStream=
    clears it."""
    assert sorted(["override.conf", "pullgate-takeover.conf"])[-1] == "pullgate-takeover.conf"


# ------------------------------------------------------------------ tmpfiles


def test_tmpfiles_runtime_dir_is_roots_and_docker_sock_leads_to_the_agent() -> None:
    lines = [
        line.split()
        for line in (INSTALLERS / "pullgate.tmpfiles").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    by_path = {fields[1]: fields for fields in lines}
    directory = by_path["/run/pullgate"]
    assert directory[0] == "d"
    assert int(directory[2], 8) & 0o022 == 0  # nobody but root places a socket there
    assert directory[3:5] == ["root", "root"]
    link = by_path["/run/docker.sock"]
    # L+ replaces whatever is there (a socket dockerd left) with the link to the agent.
    assert link[0] == "L+" and link[-1] == SHIM_SOCKET
    assert set(by_path) == {"/run/pullgate", "/run/docker.sock"}


# ------------------------------------------------------------------ the agent's unit


def test_agent_unit_writes_only_its_dirs_and_takes_nothing_from_users() -> None:
    unit = _unit(INSTALLERS / "pullgate-agent.service")
    service = [(k, v) for s, k, v in unit if s == "Service"]
    keys = {k for k, _ in service}
    assert _values(unit, "Service", "ProtectSystem") == ["strict"]
    writable = _effective_list(_values(unit, "Service", "ReadWritePaths"))
    assert sorted(writable) == ["/run/pullgate", "/var/lib/pullgate", "/var/log/pullgate"]
    assert _values(unit, "Service", "NoNewPrivileges") == ["yes"]
    assert _values(unit, "Service", "ProtectHome") in (["read-only"], ["yes"], ["tmpfs"])
    caps = set(_effective_list(_values(unit, "Service", "CapabilityBoundingSet")))
    assert caps <= {"CAP_CHOWN", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"}, caps
    assert _values(unit, "Service", "AmbientCapabilities") in ([], [""])
    # Nothing a user can write reaches the agent: no environment or working directory
    # taken from outside /etc and the root-owned bundle, no second Exec line.
    assert not keys & {"EnvironmentFile", "Environment", "WorkingDirectory", "PassEnvironment"}
    assert [k for k in keys if k.startswith("Exec")] == ["ExecStart"]
    exec_start = _values(unit, "Service", "ExecStart")[0]
    assert re.fullmatch(r"/opt/pullgate/pullgate agent", exec_start), exec_start
    # A configuration the agent refuses (exit 2) stays down: the socket fails closed.
    assert _values(unit, "Service", "RestartPreventExitStatus") == ["2"]
    assert _values(unit, "Service", "Type") == ["notify"]
    # Only the main process may send READY=/WATCHDOG= (the default NotifyAccess=main):
    # no child or other process of the unit can feed a hung agent's watchdog.
    assert _values(unit, "Service", "NotifyAccess") in ([], ["main"])


# --- extra dockerd listeners (red-team finding 2): doctor's takeover check sees them -------


@pytest.mark.parametrize(
    ("argv", "daemon_json", "extra"),
    [
        (["dockerd", "-H", "fd://", "--containerd=/run/containerd/containerd.sock"], None, []),
        (["dockerd", "-H", "fd://", "-H", "tcp://127.0.0.1:2375"], None, ["tcp://127.0.0.1:2375"]),
        (["dockerd", "-Htcp://0.0.0.0:2375"], None, ["tcp://0.0.0.0:2375"]),
        (["dockerd", "--host=unix:///var/run/docker.sock"], None, ["unix:///var/run/docker.sock"]),
        (["dockerd", "-H=fd://3"], {"hosts": ["tcp://10.0.0.1:2376"]}, ["tcp://10.0.0.1:2376"]),
        (["dockerd", "--host", "unix:///run/pullgate/dockerd.sock"], {"hosts": []}, []),
    ],
)
def test_dockerd_listeners_besides_the_upstream_are_found(
    argv: list[str], daemon_json: dict[str, object] | None, extra: list[str]
) -> None:
    from agent.core.dockerd_hosts import dockerd_hosts, extra_listeners

    hosts = dockerd_hosts(argv, daemon_json)
    assert extra_listeners(hosts, "/run/pullgate/dockerd.sock") == extra


def test_doctor_fails_a_takeover_where_dockerd_also_listens_on_tcp(tmp_path: Path) -> None:
    """DOCKER_OPTS="-H tcp://127.0.0.1:2375" (or `hosts` in daemon.json) beside the takeover:
    every local user reaches dockerd with no policy, and doctor used to say OK."""
    import os

    from agent.cli.status_cmd import check_enforcement
    from agent.config.keys import Enforcement, ManagedConfig

    shim = tmp_path / "docker.sock"
    shim.touch()
    upstream = tmp_path / "dockerd.sock"
    upstream.touch()
    os.chmod(upstream, 0o600)
    config = ManagedConfig(enforcement=Enforcement.TAKEOVER)
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text('{"hosts": ["tcp://127.0.0.1:2375"]}')

    def run(argvs: list[list[str]], json_path: Path) -> tuple[str, str]:
        check = check_enforcement(
            shim,
            upstream,
            load=lambda: config,
            default_socket=shim,
            dockerd_argvs=lambda: argvs,
            daemon_json=json_path,
        )
        return check.result, check.detail

    ok = run([["dockerd", "-H", "fd://"]], tmp_path / "absent.json")
    assert ok[0] == "OK" and "nowhere else" in ok[1]
    opts = run([["dockerd", "-H", "fd://", "-H", "tcp://127.0.0.1:2375"]], tmp_path / "absent")
    assert opts[0] == "FAIL" and "tcp://127.0.0.1:2375" in opts[1]
    configured = run([["dockerd", "-H", "fd://"]], daemon_json)
    assert configured[0] == "FAIL" and "tcp://127.0.0.1:2375" in configured[1]
