"""Red team of ``containers.host_access``: ways a docker-group user gets the host's root.

Each test asserts the SECURE behaviour (Pullgate refuses the request with its message and
the daemon makes nothing) against the real dockerd (Debian's 20.10, API 1.12-1.41). Those
marked "Red team, fixed in ..." got through before that commit; the rest are hostile inputs
that were refused from the start and are not covered by tests/test_shim_host_access.py.
"""

from __future__ import annotations

import io
import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.realdocker import DockerEnv, docker, start_docker_env, stop_docker_env
from tests.agent_process import (
    AGENT_COMMAND_ENV,
    AgentProcess,
    describe,
    docker_via,
    shim_policy,
    start_agent,
    unix_request,
)

pytestmark = pytest.mark.usefixtures("seeded")

IMAGE = "alpine"
NOBODY = 65534


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    shim = start_agent(
        tmp_path_factory.mktemp("redteam-host"), docker_env.socket_path, shim_policy()
    )
    docker(docker_env, "pull", "-q", IMAGE)
    try:
        yield shim
    finally:
        shim.stop()


@pytest.fixture
def name(docker_env: DockerEnv) -> Iterator[str]:
    """A unique name; containers, volumes and plugins of that name (and `<name>-2`,
    `acme/<name>`) are removed directly afterwards."""
    value = f"pgrt-{uuid.uuid4().hex[:12]}"
    yield value
    for suffix in ("", "-2"):
        docker(docker_env, "rm", "--force", value + suffix, check=False)
    docker(docker_env, "volume", "rm", "--force", value, check=False)
    docker(docker_env, "plugin", "rm", "--force", f"acme/{value}:latest", check=False)


# --- helpers ------------------------------------------------------------------------------


def _answer(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"message": raw.decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"value": value}


def api(
    socket: Path, target: str, body: object = None, *, data: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    """POST `target` over `socket` with a JSON `body` (or raw `data`)."""
    payload = data if data is not None else json.dumps(body).encode()
    status, _, answer = unix_request(
        socket,
        "POST",
        target,
        body=payload,
        headers={"Content-Type": "application/json"},
    )
    return status, _answer(answer)


def _chunked_post(socket_path: Path, target: str, chunks: list[bytes]) -> tuple[int, bytes]:
    """A POST whose body is sent with Transfer-Encoding: chunked, in `chunks`."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    head = (
        f"POST {target} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(socket_path))
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    payload = data.partition(b"\r\n\r\n")[2]
    start, end = payload.find(b"{"), payload.rfind(b"}")
    return status, payload[start : end + 1] if start >= 0 else payload


def daemon_get(env: DockerEnv, target: str) -> Any:
    status, _, answer = unix_request(env.socket_path, "GET", target)
    return json.loads(answer) if status == 200 else None


def exists(env: DockerEnv, kind: str, name: str) -> bool:
    return docker(env, kind, "inspect", name, check=False).returncode == 0


def assert_refused(status: int, answer: dict[str, Any]) -> None:
    assert 400 <= status < 500, (status, answer)
    assert "pullgate" in str(answer.get("message", "")), answer


def daemon_dir(env: DockerEnv) -> Path:
    """The directory of the daemon's own socket: what a container must never bind."""
    return env.socket_path.parent


# --- 1. HostConfig fields at the top level of a create body ------------------------------


# Red team, fixed in 9a38900 (was a strict xfail): dockerd's
# runconfig.ContainerConfigWrapper embeds a deprecated *container.HostConfig, so
# HostConfig fields at the TOP level of a create body are the container's HostConfig
# when the body has no (or a null) HostConfig; from_container_config only reads
# body['HostConfig']
@pytest.mark.parametrize(
    "body",
    [
        {"Binds": ["/:/host"]},
        {"HostConfig": None, "Binds": ["/:/host"]},
        {"Privileged": True},
        {"Mounts": [{"Type": "bind", "Source": "/", "Target": "/host"}]},
        {"PidMode": "host", "CapAdd": ["SYS_ADMIN"]},
    ],
    ids=["binds", "null-hostconfig", "privileged", "mounts", "pid-host"],
)
def test_host_config_fields_at_the_top_level(
    agent: AgentProcess, docker_env: DockerEnv, name: str, body: dict[str, Any]
) -> None:
    payload = {"Image": IMAGE, "Cmd": ["true"], "NetworkMode": "none", **body}
    status, answer = api(agent.socket_path, f"/v1.41/containers/create?name={name}", payload)
    assert not exists(docker_env, "container", name)
    assert_refused(status, answer)


def test_top_level_fields_beside_a_host_config_are_ignored_by_the_daemon(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    """Not a bypass: with an inner HostConfig the daemon takes only memory/CPU fields from
    the top level (getHostConfig), so a top-level Privileged there is not applied."""
    payload = {"Image": IMAGE, "HostConfig": {"NetworkMode": "none"}, "Privileged": True}
    status, answer = api(agent.socket_path, f"/v1.41/containers/create?name={name}", payload)
    if status != 201:  # refusing it as well is fine
        assert_refused(status, answer)
        return
    privileged = daemon_get(docker_env, f"/containers/{name}/json")["HostConfig"]["Privileged"]
    assert privileged is False


# --- 2. '..' after a symbolic link: the agent resolves physically, dockerd cleans lexically


def _dotdot_setup(tmp_path: Path, env: DockerEnv) -> str:
    """`<tmp>/l` -> `<tmp>/a/b` and `<tmp>/x` -> the daemon's socket directory. The agent
    resolves `<tmp>/l/../x` as `<tmp>/a/x` (a harmless directory); dockerd's path.Clean
    makes it `<tmp>/x`, and the mount follows that link to the daemon's socket."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x").mkdir()  # what the agent judges (and dockerd stats for --mount)
    (tmp_path / "l").symlink_to(tmp_path / "a" / "b")
    (tmp_path / "x").symlink_to(daemon_dir(env))
    return f"{tmp_path}/l/../x"


# Red team, fixed in 9a38900 (was a strict xfail): files.resolved_paths uses
# os.path.realpath, which applies '..' after following the link before it; dockerd
# path.Clean()s the bind source first (lexically) and the mount follows the link that
# remains: no race needed
@pytest.mark.parametrize("how", ["binds", "mounts"])
def test_dotdot_after_a_symbolic_link(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path, how: str
) -> None:
    source = _dotdot_setup(tmp_path, docker_env)
    host: dict[str, Any] = {"NetworkMode": "none"}
    if how == "binds":
        host["Binds"] = [f"{source}:/h"]
    else:
        host["Mounts"] = [{"Type": "bind", "Source": source, "Target": "/h"}]
    status, answer = api(
        agent.socket_path,
        f"/v1.41/containers/create?name={name}",
        {"Image": IMAGE, "Cmd": ["ls", "/h"], "HostConfig": host},
    )
    assert not exists(docker_env, "container", name)
    assert_refused(status, answer)


def test_dotdot_over_a_missing_directory_is_judged_as_dockerd_cleans_it(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    result = docker_via(
        agent,
        docker_env,
        "create",
        "--name",
        name,
        "--network",
        "none",
        "-v",
        f"{tmp_path}/missing/" + "../" * 20 + f"{daemon_dir(docker_env).relative_to('/')}:/h",
        IMAGE,
        "true",
    )
    assert result.returncode != 0 and "pullgate" in result.stderr, describe(result, agent)
    assert not exists(docker_env, "container", name)


# --- 3. local volumes: a relative device, an overlay of host directories --------------------


def _relative_to_anywhere(path: Path) -> str:
    """A relative path that names `path` from any working directory dockerd runs in."""
    return "../" * 30 + str(path).lstrip("/")


# Red team, fixed in 9a38900 (was a strict xfail): _local_volume ignores a device that
# does not start with '/', but the local driver passes it to mount(2), which resolves it
# from dockerd's working directory: device=../../..<path> with o=bind binds any host
# path
def test_a_local_volume_with_a_relative_device(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    body = {
        "Name": name,
        "Driver": "local",
        "DriverOpts": {
            "type": "none",
            "o": "bind",
            "device": _relative_to_anywhere(daemon_dir(docker_env)),
        },
    }
    status, answer = api(agent.socket_path, "/v1.41/volumes/create", body)
    assert not exists(docker_env, "volume", name)
    assert_refused(status, answer)


# Red team, fixed in 9a38900 (was a strict xfail): --mount type=volume with volume-opt
# device=<relative path>, o=bind creates the same local volume inside containers/create
def test_a_volume_mount_with_a_relative_device(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    device = _relative_to_anywhere(daemon_dir(docker_env))
    result = docker_via(
        agent,
        docker_env,
        "create",
        "--name",
        name,
        "--network",
        "none",
        "--mount",
        f"type=volume,source={name},target=/h,volume-opt=type=none,"
        f"volume-opt=o=bind,volume-opt=device={device}",
        IMAGE,
        "true",
    )
    assert not exists(docker_env, "container", name)
    assert not exists(docker_env, "volume", name)
    assert result.returncode != 0 and "pullgate" in result.stderr, describe(result)


# Red team, fixed in 9a38900 (was a strict xfail): a local volume of type=overlay has
# device=overlay (not absolute), so _local_volume ignores it; its
# o=lowerdir=/etc:<daemon dir>,upperdir=... shows the host's /etc (shadow) and the
# daemon's socket to the container, and an upperdir in a system directory writes there
def test_an_overlay_volume_of_host_directories(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    (tmp_path / "up").mkdir()
    (tmp_path / "work").mkdir()
    body = {
        "Name": name,
        "DriverOpts": {
            "type": "overlay",
            "device": "overlay",
            "o": f"lowerdir={daemon_dir(docker_env)}:/etc,upperdir={tmp_path}/up,"
            f"workdir={tmp_path}/work",
        },
    }
    status, answer = api(agent.socket_path, "/v1.41/volumes/create", body)
    assert not exists(docker_env, "volume", name)
    assert_refused(status, answer)


# Red team, fixed in 9a38900 (was a strict xfail): _local_volume reads o=bind,ro,rw as
# read-only ('ro' in the list), but mount options apply in order and the later 'rw'
# wins: a writable bind of /usr/local (or /etc/profile.d, /usr/lib/systemd) passes as a
# read-only one
def test_a_local_volume_read_only_then_read_write(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    body: dict[str, Any] = {
        "Name": name,
        "DriverOpts": {"type": "none", "o": "bind", "device": "/usr/local"},
    }
    status, answer = api(agent.socket_path, "/v1.41/volumes/create", body)
    assert_refused(status, answer)  # writable /usr/local: refused
    body["DriverOpts"]["o"] = "bind,ro,rw"
    status, answer = api(agent.socket_path, "/v1.41/volumes/create", body)
    assert not exists(docker_env, "volume", name)
    assert_refused(status, answer)


# Red team, fixed in 9a38900 (was a strict xfail): _local_volume only judges an absolute
# device; a local volume of a kernel file system (type=proc device=proc, sysfs, cgroup2,
# devtmpfs, binfmt_misc) is mounted by dockerd in the host's namespaces: a fresh read-
# write procfs shows every host process and a writable /proc/sys/kernel/core_pattern
# (root runs its helper)
@pytest.mark.parametrize("fs", ["proc", "sysfs", "cgroup2", "devtmpfs", "binfmt_misc"])
def test_a_local_volume_of_a_kernel_file_system(
    agent: AgentProcess, docker_env: DockerEnv, name: str, fs: str
) -> None:
    body = {"Name": name, "DriverOpts": {"type": fs, "device": fs}}
    status, answer = api(agent.socket_path, "/v1.41/volumes/create", body)
    assert not exists(docker_env, "volume", name)
    assert_refused(status, answer)


def test_a_local_volume_read_only_is_mounted_read_only(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    """Control for the test above: o=bind,ro really is read-only in the container."""
    body = {"Name": name, "DriverOpts": {"type": "none", "o": "bind,ro", "device": str(tmp_path)}}
    status, answer = api(agent.socket_path, "/v1.41/volumes/create", body)
    assert status == 201, answer
    result = docker(
        docker_env,
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{name}:/h",
        IMAGE,
        "sh",
        "-c",
        "echo x > /h/written",
        check=False,
    )
    assert result.returncode != 0 and not (tmp_path / "written").exists(), result


# --- 4. plugins: created from a tar, or re-pointed with `plugin set` --------------------------


def _plugin_tar(config: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        data = json.dumps(config).encode()
        info = tarfile.TarInfo("config.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        rootfs = tarfile.TarInfo("rootfs")
        rootfs.type = tarfile.DIRTYPE
        rootfs.mode = 0o755
        tar.addfile(rootfs)
    return out.getvalue()


def _plugin_config(mount: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {
        "description": "red team",
        "documentation": "https://example.com",
        "entrypoint": ["/bin/sh", "-c", "sleep 1000"],
        "interface": {"types": ["docker.volumedriver/1.0"], "socket": "rt.sock"},
        "network": {"type": "none"},
        "mounts": [mount],
        **more,
    }


def _plugin_create(socket: Path, name: str, config: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, _, answer = unix_request(
        socket,
        "POST",
        f"/v1.41/plugins/create?name=acme/{name}:latest",
        body=_plugin_tar(config),
        headers={"Content-Type": "application/x-tar"},
    )
    return status, _answer(answer)


# Red team, fixed in 9a38900 (was a strict xfail): /plugins/create (load: check) decides
# only the plugin's name; the tar's config.json asks for host mounts (here / read-
# write), devices, capabilities or the host's pid namespace with no privilege prompt,
# and plugins/{name}/enable (not inspected) runs its entrypoint as root with them
def test_a_plugin_created_from_a_tar_with_host_mounts(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    config = _plugin_config(
        {"source": "/", "destination": "/host", "type": "bind", "options": ["rbind", "rw"]},
        linux={"capabilities": ["CAP_SYS_ADMIN"], "allowAllDevices": True},
        pidhost=True,
    )
    status, answer = _plugin_create(agent.socket_path, name, config)
    assert daemon_get(docker_env, "/plugins") == []
    assert_refused(status, answer)


# Red team, fixed in 9a38900 (was a strict xfail): /plugins/{name}/set is not inspected:
# a settable mount source (or device path) of an installed plugin is re-pointed at / (or
# /dev/mem), and the plugin runs as root with it on enable
def test_plugin_set_repoints_a_mount_at_the_host_root(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    # Installed by an administrator (directly): a plugin with a settable data directory.
    config = _plugin_config(
        {
            "name": "data",
            "source": str(tmp_path),
            "destination": "/data",
            "type": "bind",
            "options": ["rbind", "rw"],
            "settable": ["source"],
        }
    )
    status, answer = _plugin_create(docker_env.socket_path, name, config)
    assert status == 204, answer
    status, answer = api(
        agent.socket_path, f"/v1.41/plugins/acme/{name}:latest/set", ["data.source=/"]
    )
    settings = daemon_get(docker_env, f"/plugins/acme/{name}:latest/json")["Settings"]
    assert settings["Mounts"][0]["Source"] == str(tmp_path)
    assert_refused(status, answer)


# Red team, fixed in 9a38900 (was a strict xfail): from_plugin_privileges refuses a
# privilege only if any(values): a 'mount' privilege whose source is the empty string (a
# settable mount in the plugin's config) is accepted, and plugins/{name}/set then points
# it at /
def test_a_plugin_mount_privilege_with_an_empty_source(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    privileges = [{"Name": "mount", "Description": "", "Value": [""]}]
    target = f"/v1.41/plugins/pull?remote=acme/{name}:latest&name=acme/{name}:latest"
    status, answer = api(agent.socket_path, target, privileges)
    assert daemon_get(docker_env, "/plugins") == []
    assert_refused(status, answer)


# --- 5. container names with '/': links, routed by dockerd's {name:.*} --------------------


@pytest.fixture
def linked(agent: AgentProcess, docker_env: DockerEnv, name: str) -> str:
    """`<name>` (made directly, running) and `<name>-2`, created through the shim with
    `--link <name>:alias`: dockerd registers the name `/<name>-2/alias` for `<name>`."""
    docker(docker_env, "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "60")
    status, answer = api(
        agent.socket_path,
        f"/v1.41/containers/create?name={name}-2",
        {
            "Image": IMAGE,
            "Cmd": ["true"],
            "HostConfig": {"NetworkMode": "none", "Links": [f"{name}:alias"]},
        },
    )
    assert status == 201, answer
    return f"{name}-2/alias"


# Red team, fixed in 9a38900 (was a strict xfail): routes.py matches
# /containers/([^/]+)/exec, but dockerd routes /containers/{name:.*}/exec and a legacy
# link registers the name <parent>/<alias>: /containers/<parent>/<alias>/exec is PASS,
# so exec --privileged is not inspected
@pytest.mark.parametrize("encoded", [False, True], ids=["slash", "percent-2F"])
def test_a_privileged_exec_through_a_link_name(
    agent: AgentProcess, docker_env: DockerEnv, name: str, linked: str, encoded: bool
) -> None:
    path = linked.replace("/", "%2F") if encoded else linked
    status, answer = api(
        agent.socket_path,
        f"/v1.41/containers/{path}/exec",
        {"Privileged": True, "Cmd": ["id"], "AttachStdout": True},
    )
    assert daemon_get(docker_env, f"/containers/{name}/json")["ExecIDs"] in (None, [])
    assert_refused(status, answer)


# Red team, fixed in 9a38900 (was a strict xfail): the same link name reaches
# /v1.23/containers/{name:.*}/start, where an old-API HostConfig body (Binds /:/host) is
# applied to the target container without inspection
def test_an_old_api_start_body_through_a_link_name(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    docker(docker_env, "create", "--name", name, "--network", "none", IMAGE, "true")
    status, answer = api(
        agent.socket_path,
        f"/v1.41/containers/create?name={name}-2",
        {"Image": IMAGE, "HostConfig": {"NetworkMode": "none", "Links": [f"{name}:alias"]}},
    )
    assert status == 201, answer
    status, answer = api(
        agent.socket_path, f"/v1.23/containers/{name}-2/alias/start", {"Binds": ["/:/host"]}
    )
    binds = daemon_get(docker_env, f"/containers/{name}/json")["HostConfig"]["Binds"]
    assert not binds, binds
    assert_refused(status, answer)


# --- 6. the agent's own view of the file system (systemd PrivateTmp=yes) -------------------


# Red team, fixed in 5867095 (was a strict xfail): installers/linux/pullgate-
# agent.service runs the agent with PrivateTmp=yes, so it resolves /tmp and /var/tmp in
# its own mount namespace: a user's /tmp/x -> /var/run is 'missing' to the agent (judged
# as written, harmless) while dockerd follows the real link; modelled here with a
# private bind mount over the directory the user writes in, in the agent's own mount
# namespace
def test_a_link_the_agent_cannot_see_behind_private_tmp(
    docker_env: DockerEnv,
    name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shared = tmp_path / "tmp"  # the user's /tmp as the daemon sees it
    private = tmp_path / "private-tmp"  # the agent's /tmp
    shared.mkdir()
    private.mkdir()
    script = f"mount --bind {shlex.quote(str(private))} {shlex.quote(str(shared))}"
    command = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        f'{script} && exec "$0" "$@"',
        sys.executable,
        "-m",
        "agent",
        "agent",
    ]
    monkeypatch.setenv(AGENT_COMMAND_ENV, shlex.join(command))
    hidden = start_agent(tmp_path / "agent", docker_env.socket_path, shim_policy())
    try:
        (shared / "innocent").symlink_to(daemon_dir(docker_env))
        result = docker_via(
            hidden,
            docker_env,
            "create",
            "--name",
            name,
            "--network",
            "none",
            "-v",
            f"{shared}/innocent:/h",
            IMAGE,
            "true",
        )
    finally:
        hidden.stop()
    assert not exists(docker_env, "container", name)
    assert result.returncode != 0 and "pullgate" in result.stderr, describe(result)


# --- 7. host access a container takes from another container --------------------------------


# Red team, fixed in 9a38900 (was a strict xfail): HostConfig.VolumesFrom is not read: a
# container made outside the shim (by root, or before the agent: portainer, cadvisor, a
# CI runner binding /var/run) lends its host binds, here the daemon's socket directory,
# to any new container (likewise PidMode/IpcMode container:<one with host pid/ipc>)
def test_volumes_from_a_container_with_host_binds(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    docker(
        docker_env,
        "create",
        "--name",
        f"{name}-2",
        "--network",
        "none",
        "-v",
        f"{daemon_dir(docker_env)}:/var/run/host:ro",
        IMAGE,
        "true",
    )
    result = docker_via(
        agent,
        docker_env,
        "create",
        "--name",
        name,
        "--network",
        "none",
        "--volumes-from",
        f"{name}-2",
        IMAGE,
        "true",
    )
    assert not exists(docker_env, "container", name)
    assert result.returncode != 0 and "pullgate" in result.stderr, describe(result)


@pytest.mark.usefixtures("alpine_local")
def test_a_read_only_bind_of_a_socket_the_user_cannot_connect_to(
    nobody_agent: AgentProcess, docker_env: DockerEnv, name: str, open_dir: Path
) -> None:
    path = open_dir / "rootd.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(1)
        path.chmod(0o755)  # what umask 022 gives a root daemon's socket
        body = {
            "Image": IMAGE,
            "HostConfig": {"NetworkMode": "none", "Binds": [f"{path}:/rootd.sock:ro"]},
        }
        status, answer = api_as_nobody(
            nobody_agent.socket_path, f"/v1.41/containers/create?name={name}", body
        )
    assert not exists(docker_env, "container", name)
    assert_refused(status, answer)


@pytest.mark.usefixtures("alpine_local")
def test_a_container_process_borrows_a_host_users_access_by_its_uid(
    nobody_agent: AgentProcess, docker_env: DockerEnv, name: str, open_dir: Path
) -> None:
    home = open_dir / "home-4242"  # another user's home, 0700
    home.mkdir(mode=0o700)
    os.chown(home, 4242, 4242)
    body = {"Image": IMAGE, "HostConfig": {"NetworkMode": "none", "Binds": [f"{home}:/h"]}}
    target = f"/v1.41/containers/create?name={name}"
    status, answer = api_as_nobody(nobody_agent.socket_path, target, body)
    assert_refused(status, answer)  # a user who is not 4242: refused
    status, answer = api_as_nobody(nobody_agent.socket_path, target, body, contained_uid=4242)
    assert not exists(docker_env, "container", name)
    assert_refused(status, answer)


@pytest.mark.usefixtures("alpine_local")
@pytest.mark.parametrize(
    "source",
    ["/tmp/tmux-0", "/efi", "/opt/cni/bin"],
)
def test_root_private_paths_outside_the_lists(
    nobody_agent: AgentProcess, docker_env: DockerEnv, name: str, source: str
) -> None:
    """What NO_BIND/READ_ONLY do not list (root's sockets in /tmp, the EFI partition,
    CNI plugins root runs) is judged by what the requesting user may reach."""
    body = {"Image": IMAGE, "HostConfig": {"NetworkMode": "none", "Binds": [f"{source}:/h"]}}
    existed = Path(source).exists()
    try:
        status, answer = api_as_nobody(
            nobody_agent.socket_path, f"/v1.41/containers/create?name={name}", body
        )
        assert not exists(docker_env, "container", name)
        assert_refused(status, answer)
    finally:
        assert existed or not Path(source).exists(), "created, never started: nothing made"


# Red team, fixed in 5867095 (was a strict xfail): (configuration) _protection keeps the
# daemon's socket and data root (/info DockerRootDir) but not its exec root: with
# --exec-root outside /run (as in this test daemon) <exec-
# root>/containerd/containerd.sock, the containerd dockerd runs, is bound freely and
# runs privileged containers around dockerd
def test_the_daemons_exec_root_is_not_bound(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    containerd = daemon_dir(docker_env) / "exec" / "containerd"
    assert (containerd / "containerd.sock").exists(), "dockerd runs its own containerd here"
    body = {
        "Image": IMAGE,
        "HostConfig": {"NetworkMode": "none", "Binds": [f"{containerd}:/run/containerd"]},
    }
    status, answer = api(agent.socket_path, f"/v1.41/containers/create?name={name}", body)
    assert not exists(docker_env, "container", name)
    assert_refused(status, answer)


# Red team, fixed in 5867095 (was a strict xfail): a named volume is judged only at
# volumes/create through the shim; one made directly (by root, compose before the agent)
# as a local bind of the daemon's socket directory is used with -v <name>:/x (or --mount
# type=volume) unjudged
@pytest.mark.parametrize("how", ["binds", "mounts"])
def test_a_named_volume_made_outside_the_shim(
    agent: AgentProcess, docker_env: DockerEnv, name: str, how: str
) -> None:
    docker(
        docker_env,
        "volume",
        "create",
        "--opt",
        "type=none",
        "--opt",
        "o=bind",
        "--opt",
        f"device={daemon_dir(docker_env)}",
        name,
    )
    host: dict[str, Any] = {"NetworkMode": "none"}
    if how == "binds":
        host["Binds"] = [f"{name}:/h"]
    else:
        host["Mounts"] = [{"Type": "volume", "Source": name, "Target": "/h"}]
    status, answer = api(
        agent.socket_path,
        f"/v1.41/containers/create?name={name}",
        {"Image": IMAGE, "Cmd": ["ls", "/h"], "HostConfig": host},
    )
    assert not exists(docker_env, "container", name)
    assert_refused(status, answer)


# Red team, fixed in 5867095 (was a strict xfail): PUT /containers/{id}/archive (docker
# cp) mounts a stopped container's binds as they are now, like start, but is not judged
# again: create with a project directory, swap it for a link to a system directory, and
# docker cp writes there as root (no race: the user picks the moment)
def test_docker_cp_into_a_bind_swapped_for_a_link(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    result = docker_via(
        agent, docker_env, "create", "--name", name, "--network", "none",
        "-v", f"{project}:/p", IMAGE, "true",
    )  # fmt: skip
    assert result.returncode == 0, describe(result, agent)
    project.rmdir()
    project.symlink_to(daemon_dir(docker_env))
    proof = daemon_dir(docker_env) / f"{name}-proof"
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(proof.name)
        info.size = 6
        tar.addfile(info, io.BytesIO(b"proof\n"))
    try:
        status, _, raw = unix_request(
            agent.socket_path,
            "PUT",
            f"/v1.41/containers/{name}/archive?path=/p",
            body=archive.getvalue(),
            headers={"Content-Type": "application/x-tar"},
        )
        assert not proof.exists(), "written into the daemon's socket directory"
        assert_refused(status, _answer(raw))
    finally:
        proof.unlink(missing_ok=True)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_docker_cp_out_of_a_bind_swapped_for_a_link(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path, method: str
) -> None:
    """Reading through the swapped bind (docker cp out, its stat) mounts it as well."""
    project = tmp_path / "project"
    project.mkdir()
    result = docker_via(
        agent, docker_env, "create", "--name", name, "--network", "none",
        "-v", f"{project}:/p", IMAGE, "true",
    )  # fmt: skip
    assert result.returncode == 0, describe(result, agent)
    project.rmdir()
    project.symlink_to(daemon_dir(docker_env))
    status, headers, raw = unix_request(
        agent.socket_path, method, f"/v1.41/containers/{name}/archive?path=/p/docker.pid"
    )
    assert "x-docker-container-path-stat" not in headers, headers
    assert 400 <= status < 500, (status, raw[:200])
    if method == "GET":
        assert b"pullgate" in raw, raw[:200]


# Red team, fixed in 5867095 (was a strict xfail): a (re)start judges the container's
# binds again as they lead now, but not the device of a local volume it uses: the local
# driver mounts device= at that start, following a link the user swapped in after
# volumes/create
def test_start_with_a_volume_whose_device_was_swapped_for_a_link(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    project = tmp_path / "data"
    project.mkdir()
    opts = ["--opt", "type=none", "--opt", "o=bind", "--opt", f"device={project}"]
    result = docker_via(agent, docker_env, "volume", "create", *opts, name)
    assert result.returncode == 0, describe(result, agent)
    result = docker_via(
        agent, docker_env, "create", "--name", name, "--network", "none",
        "-v", f"{name}:/h", IMAGE, "ls", "/h",
    )  # fmt: skip
    assert result.returncode == 0, describe(result, agent)
    project.rmdir()
    project.symlink_to(daemon_dir(docker_env))
    result = docker_via(agent, docker_env, "start", "-a", name)
    assert "docker.sock" not in result.stdout, "the container listed the daemon's socket"
    assert result.returncode != 0 and "pullgate" in result.stderr, describe(result)


_AS_NOBODY = """
import http.client, json, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
c = C("docker", timeout=20)
c.request("POST", sys.argv[2], body=sys.argv[3].encode(),
          headers={"Content-Type": "application/json"})
r = c.getresponse()
print(json.dumps([r.status, r.read().decode("utf-8", "replace")]))
"""


def api_as_nobody(
    socket_path: Path, target: str, body: object, *, contained_uid: int | None = None
) -> tuple[int, dict[str, Any]]:
    """POST as uid/gid 65534 (a docker-group user is no more than that to the host); with
    `contained_uid`, as that uid in a PID namespace of its own instead: what the agent
    sees of a container's process talking to the agent's socket mounted into it."""
    argv = ["/usr/bin/python3", "-c", _AS_NOBODY, str(socket_path), target, json.dumps(body)]
    who: dict[str, Any] = {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    if contained_uid is not None:
        ids = ["--reuid", str(contained_uid), "--regid", str(contained_uid), "--clear-groups"]
        argv = ["unshare", "--pid", "--fork", "--", "setpriv", *ids, *argv]
        who = {}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, **who)
    assert result.returncode == 0, result.stderr
    status, raw = json.loads(result.stdout)
    return int(status), _answer(raw.encode())


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory under /tmp that anyone may search (pytest's own are root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="pgrt-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nobody_agent(docker_env: DockerEnv, open_dir: Path) -> Iterator[AgentProcess]:
    """An agent whose socket uid 65534 can reach."""
    shim = start_agent(open_dir / "agent", docker_env.socket_path, shim_policy())
    for parent in (open_dir / "agent", shim.socket_path.parent):
        parent.chmod(0o755)
    shim.socket_path.chmod(0o666)
    try:
        yield shim
    finally:
        shim.stop()


@pytest.mark.usefixtures("alpine_local")
def test_a_user_cannot_bind_what_they_cannot_reach(
    nobody_agent: AgentProcess, docker_env: DockerEnv, name: str, open_dir: Path
) -> None:
    private = open_dir / "root-only"
    private.mkdir(mode=0o700)
    body = {"Image": IMAGE, "HostConfig": {"NetworkMode": "none", "Binds": [f"{private}:/h:ro"]}}
    status, answer = api_as_nobody(
        nobody_agent.socket_path, f"/v1.41/containers/create?name={name}", body
    )
    assert_refused(status, answer)
    assert not exists(docker_env, "container", name)


@pytest.mark.usefixtures("alpine_local")
def test_a_user_binds_a_shared_directory_holding_roots_private_one(
    nobody_agent: AgentProcess, docker_env: DockerEnv, name: str, open_dir: Path
) -> None:
    shared = open_dir / "tmp"  # stands for /tmp
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "tmux-0").mkdir(mode=0o700)  # root's
    body = {"Image": IMAGE, "HostConfig": {"NetworkMode": "none", "Binds": [f"{shared}:/t"]}}
    status, answer = api_as_nobody(
        nobody_agent.socket_path, f"/v1.41/containers/create?name={name}", body
    )
    assert not exists(docker_env, "container", name)
    assert_refused(status, answer)


# --- 8. the same settings through swarm services ---------------------------------------------


@pytest.fixture
def swarm(docker_env: DockerEnv, name: str) -> Iterator[None]:
    """The test daemon as a one-node swarm; the services named `<name>*` and the swarm
    are removed afterwards (directly)."""
    docker(docker_env, "swarm", "leave", "--force", check=False)
    init = ("swarm", "init", "--advertise-addr", "127.0.0.1")
    if docker(docker_env, *init, check=False).returncode != 0:
        time.sleep(1)  # a swarm left a moment ago may still be shutting down
        docker(docker_env, *init)
    try:
        yield
    finally:
        services = docker(docker_env, "service", "ls", "-q", "--filter", f"name={name}")
        for service in services.stdout.split():
            docker(docker_env, "service", "rm", service, check=False)
        docker(docker_env, "swarm", "leave", "--force", check=False)
        docker(docker_env, "volume", "rm", "--force", f"{name}-vol", check=False)


def _service(name: str, mount: dict[str, Any]) -> dict[str, Any]:
    return {
        "Name": name,
        "TaskTemplate": {
            "ContainerSpec": {"Image": IMAGE, "Command": ["ls", "/h"], "Mounts": [mount]},
            "RestartPolicy": {"Condition": "none"},
        },
    }


def _services(env: DockerEnv, name: str) -> list[str]:
    found = daemon_get(env, "/services") or []
    return [s["Spec"]["Name"] for s in found if s["Spec"]["Name"].startswith(name)]


@pytest.mark.usefixtures("swarm")
def test_a_service_binding_the_root_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    mount = {"Type": "bind", "Source": "/", "Target": "/h"}
    status, answer = api(agent.socket_path, "/v1.41/services/create", _service(name, mount))
    assert_refused(status, answer)
    assert _services(docker_env, name) == []


# Red team, fixed in 9a38900 (was a strict xfail): services/create reads
# ContainerSpec.Mounts with the same _local_volume and resolved_paths: a relative local-
# volume device, or '..' after a symbolic link in a bind source, makes a service whose
# task binds the daemon's socket
@pytest.mark.usefixtures("swarm")
@pytest.mark.parametrize("how", ["relative-device", "dotdot-bind"])
def test_a_service_with_the_same_mounts(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path, how: str
) -> None:
    if how == "relative-device":
        options = {
            "type": "none",
            "o": "bind",
            "device": _relative_to_anywhere(daemon_dir(docker_env)),
        }
        mount: dict[str, Any] = {
            "Type": "volume",
            "Source": f"{name}-vol",
            "Target": "/h",
            "VolumeOptions": {"DriverConfig": {"Name": "local", "Options": options}},
        }
    else:
        mount = {"Type": "bind", "Source": _dotdot_setup(tmp_path, docker_env), "Target": "/h"}
    status, answer = api(agent.socket_path, "/v1.41/services/create", _service(name, mount))
    assert _services(docker_env, name) == []
    assert_refused(status, answer)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_udp_port_below_49152() -> int:
    """A free UDP port dockerd accepts as a swarm data path port (1024-49151)."""
    for port in random.sample(range(20000, 49152), 200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free UDP port for the swarm data path")


# Red team, fixed in 5867095 (was a strict xfail): /swarm/join (and /swarm/init, whose
# manager token lets a remote node in) is not inspected: joined to a manager the user
# controls, the node runs whatever tasks that manager schedules (binds of /, any image
# from any registry) with no request through the shim at all
def test_joining_a_swarm_the_user_controls(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    manager = start_docker_env(tmp_path / "manager")
    try:
        port, worker_port = _free_port(), _free_port()
        docker(
            manager,
            "swarm",
            "init",
            "--advertise-addr",
            f"127.0.0.1:{port}",
            "--listen-addr",
            f"127.0.0.1:{port}",
            "--data-path-port",
            str(_free_udp_port_below_49152()),
        )
        token = docker(manager, "swarm", "join-token", "-q", "worker").stdout.strip()
        body = {
            "ListenAddr": f"127.0.0.1:{worker_port}",
            "AdvertiseAddr": f"127.0.0.1:{worker_port}",
            "RemoteAddrs": [f"127.0.0.1:{port}"],
            "JoinToken": token,
        }
        status, answer = api(agent.socket_path, "/v1.41/swarm/join", body)
        state = docker(docker_env, "info", "-f", "{{.Swarm.LocalNodeState}}").stdout.strip()
        assert state == "inactive", state
        assert_refused(status, answer)
    finally:
        docker(docker_env, "swarm", "leave", "--force", check=False)
        stop_docker_env(manager)


# Red team, fixed in 5867095 (was a strict xfail): /swarm/init is not inspected either:
# GET /swarm then hands the user the manager join token, a machine of theirs joins as a
# manager, and services it creates on its own dockerd run here (binds of /, any image)
# without the shim
def test_making_the_node_a_swarm_manager(agent: AgentProcess, docker_env: DockerEnv) -> None:
    port = _free_port()
    body = {"ListenAddr": f"127.0.0.1:{port}", "AdvertiseAddr": f"127.0.0.1:{port}"}
    try:
        status, answer = api(agent.socket_path, "/v1.41/swarm/init", body)
        state = docker(docker_env, "info", "-f", "{{.Swarm.LocalNodeState}}").stdout.strip()
        assert state == "inactive", state
        assert_refused(status, answer)
    finally:
        docker(docker_env, "swarm", "leave", "--force", check=False)


# --- 9. a path the agent cannot read: the decision dies, the client hangs ------------------


# Red team, fixed in 9a38900 (was a strict xfail): (robustness, failed closed) a NUL in
# a bind source makes os.path.realpath raise ValueError (not OSError) in host_setting;
# the decision task dies without a record or an answer and the client waits ~300 s
def test_a_nul_in_a_bind_source_is_answered(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    body = {"Image": IMAGE, "HostConfig": {"NetworkMode": "none", "Binds": ["/tmp/a\x00b:/h"]}}
    try:
        status, _, raw = unix_request(
            agent.socket_path,
            "POST",
            f"/v1.41/containers/create?name={name}",
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            timeout=5.0,
        )
    finally:
        assert not exists(docker_env, "container", name)
    assert_refused(status, _answer(raw))


# --- hostile inputs that are correctly refused ------------------------------------------------


@pytest.mark.parametrize(
    ("host_config", "status"),
    [
        ({"Bind\u017f": ["/:/host"]}, 403),  # long s: Go's EqualFold matches "Binds"
        ({"Mas\u212aedPaths": []}, 403),  # Kelvin sign: matches "MaskedPaths"
        ({"\u017fecurityOpt": ["seccomp=unconfined"]}, 403),
        ({"SecurityOpt": ["disable"]}, 403),  # moby's bare "disable" is label=disable
        ({"SecurityOpt": ["label:type:spc_t"]}, 403),
        ({"Devices": [{"PathOnHost": "/dev/dri/../mem", "PathInContainer": "/dev/m"}]}, 403),
        ({"Binds": ["/tmp/../var/./run/:/h:ro"]}, 403),
        ({"Binds": ["//var//run:/h"]}, 403),
        ({"Binds": ["/proc/self/root/var/run:/h"]}, 403),
        ({"Binds": ["/var/lib/docker/../../../etc/cron.d:/h"]}, 403),
        ({"CapAdd": ["Cap_Sys_Admin"]}, 403),
        ({"Capabilities": ["\u017fys_admin"]}, 403),  # Go upper-cases the long s to "S"
        (
            {
                "Mounts": [
                    {
                        "Type": "volume",
                        "Target": "/h",
                        "VolumeOptions": {
                            "DriverConfig": {
                                "Options": {"type": "none", "o": "bind", "device": "/etc"}
                            }
                        },
                    }
                ]
            },
            403,
        ),
        ({"Binds": ["/:/h"], "binds": []}, 400),
        ({"Privileged": 1}, 400),
    ],
)
def test_hostile_spellings_are_refused(
    agent: AgentProcess,
    docker_env: DockerEnv,
    name: str,
    host_config: dict[str, Any],
    status: int,
) -> None:
    body = {"Image": IMAGE, "HostConfig": {"NetworkMode": "none", **host_config}}
    got, answer = api(agent.socket_path, f"/v1.41/containers/create?name={name}", body)
    assert got == status, answer
    assert "pullgate" in answer.get("message", "")
    assert not exists(docker_env, "container", name)


@pytest.mark.parametrize(
    "privileges",
    [
        [{"Name": "mount", "Value": ["/"]}],
        [{"Name": "host pid namespace", "Value": ["true"]}],
        [{"Name": "allow-all-devices", "Value": ["true"]}],
        [
            {"Name": "network", "Value": ["host"]},
            {"Name": "capabilities", "Value": ["CAP_SYS_ADMIN"]},
        ],
    ],
    ids=["mount", "pid", "devices", "caps"],
)
def test_plugin_privileges_that_hand_over_the_host_are_refused(
    agent: AgentProcess, docker_env: DockerEnv, name: str, privileges: list[dict[str, Any]]
) -> None:
    target = f"/v1.41/plugins/pull?remote=acme/{name}:latest&name=acme/{name}:latest"
    status, answer = api(agent.socket_path, target, privileges)
    assert_refused(status, answer)
    assert daemon_get(docker_env, "/plugins") == []


def test_a_duplicate_host_config_key_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    """Go merges a repeated object key into the same struct: the first one's Privileged
    would survive a harmless second HostConfig. Refused as ambiguous."""
    data = (
        b'{"Image":"alpine","HostConfig":{"Privileged":true},"HostConfig":{"NetworkMode":"none"}}'
    )
    got, answer = api(agent.socket_path, f"/v1.41/containers/create?name={name}", data=data)
    assert got == 400 and "pullgate" in answer.get("message", ""), answer
    assert not exists(docker_env, "container", name)


def test_a_privileged_exec_spelled_otherwise_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    docker(docker_env, "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "60")
    for body in ({"privileged": True, "Cmd": ["id"]}, {"PRIVILEGED": True, "Cmd": ["id"]}):
        got, answer = api(agent.socket_path, f"/v1.24/containers/{name}/exec", body)
        assert_refused(got, answer)
    assert daemon_get(docker_env, f"/containers/{name}/json")["ExecIDs"] in (None, [])


def test_a_chunked_old_api_start_body_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    docker(docker_env, "create", "--name", name, "--network", "none", IMAGE, "true")

    status, raw = _chunked_post(
        agent.socket_path, f"/v1.23/containers/{name}/start", [b'{"Binds":', b'["/:/host"]}']
    )
    assert_refused(status, _answer(raw))
    assert not daemon_get(docker_env, f"/containers/{name}/json")["HostConfig"]["Binds"]


def test_a_local_volume_through_a_symbolic_link_is_judged_where_it_leads(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    (tmp_path / "l").symlink_to(daemon_dir(docker_env))
    body = {
        "Name": name,
        "DriverOpts": {"type": "none", "o": "bind,ro", "device": f"{tmp_path}/l"},
    }
    status, answer = api(agent.socket_path, "/v1.41/volumes/create", body)
    assert_refused(status, answer)
    assert not exists(docker_env, "volume", name)
