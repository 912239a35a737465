"""Containers that would get the host's root are refused: ``containers.host_access``.

A docker-group user reaches dockerd only through the shim, but an allowed image run with
``-v /:/host``, ``--privileged`` or ``--pid=host`` is root on the host and talks to
dockerd's own socket around the policy (the Linux red-team finding, test_packaging_linux
``test_08b``). Each case here runs the real docker CLI 28 through a real agent in front
of the real dockerd, then asks the daemon directly that nothing was made.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.realdocker import DockerEnv, docker
from tests.agent_process import (
    AgentProcess,
    describe,
    docker_via,
    shim_policy,
    start_agent,
    unix_request,
)

pytestmark = pytest.mark.usefixtures("seeded")

IMAGE = "alpine"
RULE = "containers.host_access"


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    shim = start_agent(
        tmp_path_factory.mktemp("host-access"), docker_env.socket_path, shim_policy()
    )
    docker(docker_env, "pull", "-q", IMAGE)
    try:
        yield shim
    finally:
        shim.stop()


@pytest.fixture
def name(docker_env: DockerEnv) -> Iterator[str]:
    value = f"pghost-{uuid.uuid4().hex[:12]}"
    yield value
    docker(docker_env, "rm", "--force", value, check=False)
    docker(docker_env, "volume", "rm", "--force", value, check=False)


def exists(env: DockerEnv, kind: str, name: str) -> bool:
    return docker(env, kind, "inspect", name, check=False).returncode == 0


def refused(agent: AgentProcess, env: DockerEnv, name: str, *args: str) -> dict[str, Any]:
    """`docker create` with `args` is refused with Pullgate's message, recorded as a
    denial of containers.host_access, and the daemon holds no such container."""
    mark = agent.mark()
    result = docker_via(agent, env, "create", "--name", name, "--network", "none", *args)
    assert result.returncode != 0, describe(result, agent)
    assert "pullgate" in result.stderr and "host's root" in result.stderr, describe(result)
    assert not exists(env, "container", name)
    return agent.wait_for_decision(lambda r: r.get("rule") == RULE, since=mark)


def created(agent: AgentProcess, env: DockerEnv, name: str, *args: str) -> None:
    result = docker_via(agent, env, "create", "--name", name, "--network", "none", *args)
    assert result.returncode == 0, describe(result, agent)
    assert exists(env, "container", name)


@pytest.mark.parametrize(
    "args",
    [
        ("-v", "/:/host"),
        ("--mount", "type=bind,source=/,target=/host"),
        ("-v", "/run:/host-run"),
        ("-v", "/var/run:/host-run:ro"),  # read-only still connects to sockets
        ("-v", "/proc:/host-proc"),
        ("-v", "/etc:/host-etc:ro"),  # holds /etc/shadow
        ("-v", "/usr:/host-usr"),  # writable /usr replaces what root runs
        ("-v", "/var/lib:/l"),
        ("-v", "/tmp/../:/host"),
        ("--privileged",),
        ("--pid", "host"),
        ("--ipc", "host"),
        ("--userns", "host"),
        ("--cap-add", "SYS_ADMIN"),
        ("--cap-add", "cap_sys_module"),
        ("--cap-add", "all"),
        ("--cap-add", "DAC_READ_SEARCH"),
        ("--security-opt", "seccomp=unconfined"),
        ("--security-opt", "apparmor=unconfined"),
        ("--security-opt", "systempaths=unconfined"),
        ("--security-opt", "label=disable"),
        ("--device", "/dev/mem"),
        ("--device-cgroup-rule", "a *:* rwm"),
        (
            "--mount",
            "type=volume,target=/h,volume-opt=type=none,volume-opt=o=bind,volume-opt=device=/",
        ),
    ],
    ids=" ".join,
)
def test_settings_that_hand_over_the_host_are_refused(
    agent: AgentProcess, docker_env: DockerEnv, name: str, args: tuple[str, ...]
) -> None:
    record = refused(agent, docker_env, name, *args, IMAGE, "true")
    assert record["decision"] == "deny"
    assert record["action"] == "container-create"


def test_the_daemon_socket_and_the_agents_files_are_not_bound(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    upstream = docker_env.socket_path
    for source in (upstream, upstream.parent, agent.socket_path.parent / "audit"):
        if not source.exists():
            continue
        refused(agent, docker_env, name, "-v", f"{source}:/x", IMAGE, "true")


def test_a_symbolic_link_to_the_root_is_judged_where_it_leads(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/")
    record = refused(agent, docker_env, name, "-v", f"{link}:/host", IMAGE, "true")
    assert "that is /" in record["reason"]


def test_ordinary_development_settings_are_allowed(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    args = [
        "-v",
        f"{project}:/src",
        "-v",
        "/etc/localtime:/etc/localtime:ro",
        "-v",
        "/usr/share:/host-share:ro",
        "-v",
        f"{name}:/data",  # a named volume
        "--tmpfs",
        "/scratch",
        "--cap-add",
        "SYS_PTRACE",
        "--cap-add",
        "NET_ADMIN",
        "--security-opt",
        "no-new-privileges",
    ]
    if Path("/dev/fuse").exists():
        args += ["--device", "/dev/fuse"]
    created(agent, docker_env, name, *args, IMAGE, "true")


def test_the_agents_own_socket_may_be_mounted(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    """Testcontainers and the like mount the Docker socket: the agent's applies the policy."""
    created(agent, docker_env, name, "-v", f"{agent.socket_path}:/var/run/docker.sock", IMAGE)


def test_a_privileged_exec_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    docker(docker_env, "run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "60")
    mark = agent.mark()
    result = docker_via(agent, docker_env, "exec", "--privileged", name, "true")
    assert result.returncode != 0 and "pullgate" in result.stderr, describe(result, agent)
    record = agent.wait_for_decision(lambda r: r.get("rule") == RULE, since=mark)
    assert record["action"] == "container-exec"
    plain = docker_via(agent, docker_env, "exec", name, "true")
    assert plain.returncode == 0, describe(plain, agent)


def test_a_local_volume_of_a_host_path_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    opts = ["--opt", "type=none", "--opt", "o=bind", "--opt", "device=/"]
    result = docker_via(agent, docker_env, "volume", "create", *opts, name)
    assert result.returncode != 0 and "pullgate" in result.stderr, describe(result, agent)
    assert not exists(docker_env, "volume", name)
    project = tmp_path / "data"
    project.mkdir()
    opts[-1] = f"device={project}"
    result = docker_via(agent, docker_env, "volume", "create", *opts, name)
    assert result.returncode == 0, describe(result, agent)


def api(agent: AgentProcess, target: str, body: object) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    status, _, answer = unix_request(
        agent.socket_path,
        "POST",
        target,
        body=data,
        headers={"Content-Type": "application/json"},
    )
    return status, json.loads(answer) if answer.startswith(b"{") else {}


@pytest.mark.parametrize(
    ("host_config", "status"),
    [
        ({"privileged": True}, 403),  # Go matches keys case-insensitively
        ({"PRIVILEGED": True}, 403),
        ({"Privileged": "true"}, 400),  # the daemon would refuse it; so do we
        ({"Privileged": False, "privileged": True}, 400),  # two spellings: ambiguous
        ({"binds": ["/:/host"]}, 403),
        ({"Mounts": [{"type": "BIND", "source": "/", "target": "/h"}]}, 403),
        ({"MaskedPaths": [], "ReadonlyPaths": []}, 403),  # unmasks /proc and /sys
        ({"Capabilities": ["CAP_SYS_ADMIN"]}, 403),
        ({"Mounts": [{"Type": "npipe", "Source": "x", "Target": "/x"}]}, 403),
    ],
)
def test_raw_api_bodies_are_read_as_the_daemon_reads_them(
    agent: AgentProcess,
    docker_env: DockerEnv,
    name: str,
    host_config: dict[str, Any],
    status: int,
) -> None:
    body = {"Image": IMAGE, "HostConfig": {"NetworkMode": "none", **host_config}}
    got, answer = api(agent, f"/v1.47/containers/create?name={name}", body)
    assert got == status, answer
    assert "pullgate" in answer.get("message", "")
    assert not exists(docker_env, "container", name)


def test_a_host_config_on_start_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    docker(docker_env, "create", "--name", name, "--network", "none", IMAGE, "true")
    got, answer = api(agent, f"/v1.23/containers/{name}/start", {"Binds": ["/:/host"]})
    assert got == 403 and "pullgate" in answer["message"], answer
    state = docker(docker_env, "inspect", "-f", "{{.State.Status}}", name).stdout.strip()
    assert state == "created"


def test_the_policy_can_allow_host_access_or_single_paths(
    docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    free = start_agent(
        tmp_path / "free", docker_env.socket_path, shim_policy(containers={"host_access": "allow"})
    )
    try:
        created(free, docker_env, name, "--privileged", "-v", "/:/host", IMAGE, "true")
    finally:
        free.stop()
    docker(docker_env, "rm", "--force", name)
    kept = docker_env.socket_path.parent
    policy = shim_policy(containers={"allowed_host_paths": [os.path.realpath(kept)]})
    some = start_agent(tmp_path / "some", docker_env.socket_path, policy)
    try:
        created(some, docker_env, name, "-v", f"{kept}:/kept:ro", IMAGE, "true")
        docker(docker_env, "rm", "--force", name)
        refused(some, docker_env, name, "-v", "/:/host", IMAGE, "true")
    finally:
        some.stop()


def test_a_link_swapped_in_after_the_create_is_refused_at_start(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    """The mount happens at start, through whatever the path leads to then."""
    project = tmp_path / "project"
    project.mkdir()
    created(agent, docker_env, name, "-v", f"{project}:/src", IMAGE, "true")
    project.rmdir()
    project.symlink_to("/")
    mark = agent.mark()
    result = docker_via(agent, docker_env, "start", name)
    assert result.returncode != 0 and "host's root" in result.stderr, describe(result, agent)
    record = agent.wait_for_decision(lambda r: r.get("rule") == RULE, since=mark)
    assert record["action"] == "container-start"
    state = docker(docker_env, "inspect", "-f", "{{.State.Status}}", name).stdout.strip()
    assert state == "created"
    result = docker_via(agent, docker_env, "restart", name)
    assert result.returncode != 0 and "host's root" in result.stderr, describe(result, agent)


def test_a_container_made_around_the_agent_is_judged_when_started_through_it(
    agent: AgentProcess, docker_env: DockerEnv, name: str
) -> None:
    docker(docker_env, "create", "--name", name, "--privileged", IMAGE, "true")
    result = docker_via(agent, docker_env, "start", name)
    assert result.returncode != 0 and "--privileged" in result.stderr, describe(result, agent)


def test_ordinary_containers_start_and_restart(
    agent: AgentProcess, docker_env: DockerEnv, name: str, tmp_path: Path
) -> None:
    result = docker_via(
        agent, docker_env, "run", "-d", "--name", name, "--network", "none",
        "-v", f"{tmp_path}:/src", IMAGE, "sleep", "60",
    )  # fmt: skip
    assert result.returncode == 0, describe(result, agent)
    result = docker_via(agent, docker_env, "restart", "-t", "0", name)
    assert result.returncode == 0, describe(result, agent)
