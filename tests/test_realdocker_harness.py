"""The real-Docker harness works: a private dockerd pulls seeded images through the local
registry mirror, and containers run, exec, stream logs and go away.

The session's daemon and its seeded images come from tests/conftest.py (`docker_env`,
`seeded`), shared with every other module. Needs root and the packages of
scripts/install-system-deps.sh: without them the Docker tests skip locally, and fail under
CI (CI=true), where a skipped integration test would hide a broken machine setup.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bench.realdocker import (
    DockerEnv,
    SeededImage,
    docker,
    docker_popen,
    hub_repository,
    image_present,
)

PULLED = ("alpine", "nginx", "acme/app", "verifiedco/db", "someuser/tool", "someuser/nginx")
"""Seeded images (tests/conftest.py) that test_pull_through_the_mirror pulls by name."""


def _read_lines(proc: subprocess.Popen[str], want: int, timeout: float) -> tuple[list[str], bool]:
    """Read up to `want` lines of proc's stdout within `timeout`; also say if it hit EOF."""
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return got, False
        if line is None:
            return got, True
        got.append(line)
    return got, False


# --------------------------------------------------------------------------- no Docker needed


@pytest.mark.parametrize(
    ("name", "repository", "tag"),
    [
        ("alpine", "library/alpine", "latest"),
        ("library/nginx", "library/nginx", "latest"),
        ("acme/app", "acme/app", "latest"),
        ("someuser/tool:1.0", "someuser/tool", "1.0"),
        ("docker.io/verifiedco/db:2", "verifiedco/db", "2"),
        ("a/b/c:x", "a/b/c", "x"),
    ],
)
def test_hub_repository(name: str, repository: str, tag: str) -> None:
    assert hub_repository(name) == (repository, tag)


@pytest.mark.parametrize(
    "name", ["ghcr.io/x/y", "localhost:5000/x", "alpine@sha256:" + "0" * 64, "Alpine", "x:"]
)
def test_hub_repository_rejects(name: str) -> None:
    with pytest.raises(ValueError, match=r"seed|Docker Hub"):
        hub_repository(name)


# --------------------------------------------------------------------------- real Docker


def test_daemon_is_private(docker_env: DockerEnv) -> None:
    info = docker(docker_env, "info", "--format", "{{json .}}").stdout
    assert str(docker_env.data_root) in info
    assert '"Driver":"vfs"' in info
    assert f"http://{docker_env.registry}/" in info  # the registry mirror
    assert docker_env.env["DOCKER_HOST"] == docker_env.docker_host
    assert Path(docker_env.env["DOCKER_CONFIG"]).is_dir()


def test_seeding_leaves_nothing_in_the_daemon(
    docker_env: DockerEnv, seeded: dict[str, SeededImage]
) -> None:
    for image in seeded.values():
        assert not image_present(docker_env, image.mirror_ref)


def test_seeded_images_are_distinct(seeded: dict[str, SeededImage]) -> None:
    digests = [image.digest for image in seeded.values()]
    assert all(d.startswith("sha256:") for d in digests)
    assert len(set(digests)) == len(digests)


@pytest.mark.parametrize("name", PULLED)
def test_pull_through_the_mirror(
    docker_env: DockerEnv, seeded: dict[str, SeededImage], name: str
) -> None:
    image = seeded[name]
    docker(docker_env, "image", "rm", "--force", name, check=False)
    assert not image_present(docker_env, name)

    pulled = docker(docker_env, "pull", name)

    assert f"Digest: {image.digest}" in pulled.stdout
    assert image_present(docker_env, name)
    assert image_present(docker_env, image.hub_ref)
    assert image_present(docker_env, f"{name}@{image.digest}")
    content = docker(
        docker_env, "run", "--rm", "--network", "none", name, "cat", "/pullgate-image"
    ).stdout
    assert content == f"{image.hub_ref}\n"


def test_pull_with_a_tag(docker_env: DockerEnv, seeded: dict[str, SeededImage]) -> None:
    image = seeded["someuser/tool:1.0"]
    docker(docker_env, "image", "rm", "--force", "someuser/tool:1.0", check=False)
    pulled = docker(docker_env, "pull", "someuser/tool:1.0")
    assert f"Digest: {image.digest}" in pulled.stdout
    assert image_present(docker_env, "docker.io/someuser/tool:1.0")


def test_unseeded_pull_fails_fast_and_locally(docker_env: DockerEnv) -> None:
    started = time.monotonic()
    result = docker(docker_env, "pull", "nosuchuser/nothing", check=False)
    assert result.returncode != 0
    # Not served by the mirror: dockerd falls back to Docker Hub, through the dead-end proxy.
    assert "connection refused" in result.stderr
    assert time.monotonic() - started < 15


def test_run_echo(docker_env: DockerEnv, seeded: dict[str, SeededImage]) -> None:
    assert "alpine" in seeded
    result = docker(docker_env, "run", "--rm", "--network", "none", "alpine", "echo", "hi")
    assert result.stdout == "hi\n"


def test_exec_interactive(
    docker_env: DockerEnv, seeded: dict[str, SeededImage], container_name: str
) -> None:
    assert "alpine" in seeded
    docker(
        docker_env,
        *("run", "--detach", "--network", "none", "--name", container_name),
        *("alpine", "sleep", "300"),
    )
    echoed = docker(docker_env, "exec", "-i", container_name, "cat", input="hello\nworld\n")
    assert echoed.stdout == "hello\nworld\n"
    assert docker(docker_env, "exec", container_name, "echo", "x").stdout == "x\n"
    failed = docker(docker_env, "exec", container_name, "sh", "-c", "exit 3", check=False)
    assert failed.returncode == 3


def test_logs_follow(
    docker_env: DockerEnv, seeded: dict[str, SeededImage], container_name: str
) -> None:
    assert "alpine" in seeded
    script = "echo ready; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"
    docker(
        docker_env,
        *("run", "--detach", "--network", "none", "--name", container_name),
        *("alpine", "sh", "-c", script),
    )
    follower = docker_popen(docker_env, "logs", "--follow", container_name)
    try:
        lines, eof = _read_lines(follower, want=4, timeout=20)
        assert not eof
        assert lines == ["ready\n", "tick 0\n", "tick 1\n", "tick 2\n"]
        # The stream ends when the container does.
        docker(docker_env, "kill", container_name)
        follower.wait(timeout=20)
    finally:
        follower.kill()
        follower.communicate()


def test_detached_run_and_remove(docker_env: DockerEnv, seeded: dict[str, SeededImage]) -> None:
    assert "alpine" in seeded
    cid = docker(
        docker_env, "run", "--detach", "--network", "none", "alpine", "sleep", "300"
    ).stdout.strip()
    try:
        assert len(cid) == 64
        running = docker(docker_env, "ps", "--quiet", "--no-trunc").stdout.split()
        assert cid in running
    finally:
        docker(docker_env, "rm", "--force", cid)
    remaining = docker(docker_env, "ps", "--all", "--quiet", "--no-trunc").stdout.split()
    assert cid not in remaining
