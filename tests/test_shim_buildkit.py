"""BuildKit builds through the shim, decided by what their Dockerfile pulls (issue 12).

Debian's docker CLI 20.10 with ``DOCKER_BUILDKIT=1`` talks to the real dockerd 20.10's
BuildKit through the shim: ``POST /session`` (the daemon reads the context and the
Dockerfile from the CLI over HTTP/2) and ``POST /build?version=2``. Allowed builds must
give what they give without the shim; each denied build must fail with Pullgate's
message in the build output, be recorded, and leave the daemon without the denied image
(asked directly afterwards).
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from bench.realdocker import DockerEnv, docker, image_present
from tests.agent_process import (
    DEBIAN_DOCKER_CLI,
    DENIED_REPOSITORY,
    AgentProcess,
    Reporter,
    describe,
    docker_with,
    images_of,
    remove_images,
    shim_environ,
    shim_policy,
    start_agent,
)

DENIED = "someuser/tool"
DENIED_CANONICAL = "docker.io/someuser/tool:latest"
#: What the build prints (after BuildKit's "failed to read dockerfile: error from sender: ").
DENIAL = re.compile(
    r"pullgate: pulling docker\.io/someuser/tool:latest( \([^)]*\))? is not allowed"
)

pytestmark = pytest.mark.usefixtures("seeded")


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory, report: Reporter
) -> Iterator[AgentProcess]:
    """Enforce, community denied, ``builds: deny`` (the default)."""
    shim = start_agent(
        tmp_path_factory.mktemp("shim-buildkit"), docker_env.socket_path, shim_policy()
    )
    report(f"shim: agent answered /_ping {shim.ready_seconds:.2f} s after start")
    try:
        yield shim
    finally:
        shim.stop()


def _context(root: Path, files: Mapping[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def buildkit(
    environ: Mapping[str, str], ctx: Path, tag: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """``docker build`` with the Debian CLI's built-in BuildKit client."""
    return docker_with(
        {**environ, "DOCKER_BUILDKIT": "1"},
        *("build", "--network", "none", "--progress", "plain", "-t", tag, *args, str(ctx)),
        cli=DEBIAN_DOCKER_CLI,
    )


def _cat(env: DockerEnv, tag: str, path: str) -> str:
    return docker(env, "run", "--rm", "--network", "none", tag, "cat", path).stdout


def _tag() -> str:
    return f"acme/pgtest-bk-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- allowed

ALLOWED: dict[str, tuple[dict[str, str | bytes], list[str], str, str]] = {
    # id: (context, build args, file to read in the image, what it must hold)
    "multi-stage-copy-from-stage": (
        {
            "Dockerfile": (
                "FROM alpine AS first\nRUN echo one > /one\n"
                "FROM acme/app\nCOPY --from=first /one /one\n"
            )
        },
        [],
        "/one",
        "one\n",
    ),
    "build-arg-and-target": (
        {
            "Dockerfile": (
                "ARG BASE=alpine\nFROM ${BASE} AS wanted\nARG WORD\nRUN echo $WORD > /word\n"
                f"FROM {DENIED} AS never\n"
            )
        },
        ["--build-arg", "WORD=hello", "--target", "wanted"],
        "/word",
        "hello\n",
    ),
    "dockerignore-and-copy": (
        {
            "Dockerfile": "FROM alpine\nCOPY . /ctx/\nRUN ls /ctx | sort | tr '\\n' ' ' > /list\n",
            ".dockerignore": "secret.txt\n",
            "secret.txt": "never in the image\n",
            "kept.txt": "kept\n",
        },
        [],
        "/list",
        "Dockerfile kept.txt ",
    ),
    "dockerfile-elsewhere": (
        {
            "Dockerfile": f"FROM {DENIED}\n",
            "build/app.Dockerfile": "FROM alpine\nRUN echo f > /f\n",
        },
        ["-f", "{ctx}/build/app.Dockerfile"],
        "/f",
        "f\n",
    ),
    "large-context": (
        {
            "Dockerfile": "FROM alpine\nCOPY big.bin /big.bin\nRUN wc -c < /big.bin > /size\n",
            "big.bin": b"\0" * (24 << 20),
        },
        [],
        "/size",
        f"{24 << 20}\n",
    ),
}


@pytest.mark.parametrize("case", list(ALLOWED))
@pytest.mark.usefixtures("alpine_local")
def test_an_allowed_buildkit_build_gives_what_it_gives_without_the_shim(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path, case: str
) -> None:
    files, args, path, expected = ALLOWED[case]
    ctx = _context(tmp_path / "ctx", files)
    args = [a.replace("{ctx}", str(ctx)) for a in args]
    direct_tag, tag = _tag(), _tag()
    mark = agent.mark()
    try:
        direct = buildkit(docker_env.env, ctx, direct_tag, *args)
        assert direct.returncode == 0, describe(direct)
        assert _cat(docker_env, direct_tag, path) == expected

        result = buildkit(shim_environ(agent, docker_env), ctx, tag, *args)

        assert result.returncode == 0, describe(result, agent)
        assert _cat(docker_env, tag, path) == expected
        agent.wait_for_decision(
            lambda r: r.get("decision") == "allow" and r.get("action") == "image-build",
            since=mark,
        )
    finally:
        docker(docker_env, "image", "rm", "--force", tag, direct_tag, check=False)


# --------------------------------------------------------------------------- denied

DENIED_BUILDS: dict[str, tuple[dict[str, str | bytes], list[str]]] = {
    "from": ({"Dockerfile": f"FROM {DENIED}\nRUN true\n"}, []),
    "arg-from": ({"Dockerfile": f"ARG BASE={DENIED}\nFROM $BASE\nRUN true\n"}, []),
    "build-arg-override": (
        {"Dockerfile": "ARG BASE=alpine\nFROM ${BASE}\nRUN true\n"},
        ["--build-arg", f"BASE={DENIED}"],
    ),
    "later-stage": (
        {
            "Dockerfile": (
                "FROM alpine AS first\nRUN echo one > /one\n"
                f"FROM {DENIED}\nCOPY --from=first /one /one\n"
            )
        },
        [],
    ),
    "copy-from": ({"Dockerfile": f"FROM alpine\nCOPY --from={DENIED} /bin/busybox /x\n"}, []),
    "run-mount-from": (
        {"Dockerfile": f"FROM alpine\nRUN --mount=type=bind,from={DENIED},target=/t true\n"},
        [],
    ),
    "target-stage": (
        {"Dockerfile": f"FROM alpine AS ok\nRUN true\nFROM {DENIED} AS bad\nRUN true\n"},
        ["--target", "bad"],
    ),
    "syntax-frontend": ({"Dockerfile": f"# syntax={DENIED}\nFROM alpine\n"}, []),
    "dockerfile-elsewhere": (
        {"Dockerfile": "FROM alpine\n", "sub/Dockerfile.tool": f"FROM {DENIED}\nRUN true\n"},
        ["-f", "{ctx}/sub/Dockerfile.tool"],
    ),
    "lower-case-dockerfile": ({"dockerfile": f"FROM {DENIED}\nRUN true\n"}, []),
}


@pytest.mark.parametrize("case", list(DENIED_BUILDS))
@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_a_denied_buildkit_build_fails_with_the_message_and_pulls_nothing(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
    case: str,
) -> None:
    files, args = DENIED_BUILDS[case]
    ctx = _context(tmp_path / "ctx", files)
    args = [a.replace("{ctx}", str(ctx)) for a in args]
    tag = _tag()
    mark = agent.mark()

    result = buildkit(shim_environ(agent, docker_env), ctx, tag, *args)

    output = result.stdout + result.stderr
    assert result.returncode != 0, describe(result, agent)
    assert DENIAL.search(output), describe(result, agent)
    # Told as the client's own file sync error: a gRPC status alone sometimes reached
    # the client as the daemon's "failed to read dockerfile: context canceled".
    assert "failed to read dockerfile: error from sender: pullgate: " in output, output
    assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids), agent.stderr_tail()
    assert not image_present(docker_env, tag)
    agent.wait_for_decision(
        lambda r: r.get("decision") == "deny" and r.get("image") == DENIED_CANONICAL, since=mark
    )


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_an_unchanged_dockerfile_the_daemon_has_cached_is_still_read(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
) -> None:
    """The daemon asks only for files whose size or mtime changed since its cached copy
    of the session's Dockerfile local: a build of the same directory made directly
    first must not let the shim's build skip the Dockerfile."""
    ctx = _context(tmp_path / "ctx", {"Dockerfile": f"FROM {DENIED}\nRUN true\n"})
    direct = buildkit(docker_env.env, ctx, _tag())
    assert direct.returncode == 0, describe(direct)
    remove_images(docker_env, DENIED_REPOSITORY, denied_image_ids)

    result = buildkit(shim_environ(agent, docker_env), ctx, _tag())

    assert result.returncode != 0, describe(result, agent)
    assert DENIAL.search(result.stdout + result.stderr), describe(result, agent)
    assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)


@pytest.mark.usefixtures("alpine_local")
def test_the_same_directory_builds_twice_through_the_shim(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    """The second build finds its Dockerfile local cached by the daemon: it is still
    sent (and decided), and the build still works."""
    ctx = _context(tmp_path / "ctx", {"Dockerfile": "FROM alpine\nRUN echo again > /again\n"})
    tags = [_tag(), _tag()]
    try:
        for tag in tags:
            result = buildkit(shim_environ(agent, docker_env), ctx, tag)
            assert result.returncode == 0, describe(result, agent)
            assert _cat(docker_env, tag, "/again") == "again\n"
    finally:
        docker(docker_env, "image", "rm", "--force", *tags, check=False)


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_builds_allow_does_not_let_a_readable_denied_build_through(
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
) -> None:
    """``builds`` now governs only what the shim cannot read."""
    shim = start_agent(tmp_path / "agent", docker_env.socket_path, shim_policy(builds="allow"))
    try:
        ctx = _context(tmp_path / "ctx", {"Dockerfile": f"FROM {DENIED}\nRUN true\n"})
        result = buildkit(shim_environ(shim, docker_env), ctx, _tag())
        assert result.returncode != 0, describe(result, shim)
        assert "pullgate:" in result.stdout + result.stderr
        assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)
    finally:
        shim.stop()
