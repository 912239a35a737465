"""Red team: the variant of a base whose ONBUILD triggers BuildKit runs, against the one
the shim read (docs/shim.md, "ONBUILD triggers of a base the build pulls").

The daemon's BuildKit (20.10, BuildKit 0.8) resolves each stage's base for the platform
the stage is built for, takes the local image of the name only when moby's
``platformMatches`` says it is of that platform (containerd's ``platforms`` as vendored
by moby 20.10), and otherwise fetches that variant from the registry and runs its
triggers. These tests look for a variant the daemon builds on that the shim never read.
Real-daemon tests where the behaviour is the daemon's; pure ones for Pullgate's logic.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.core.inspection.base_pull import platform_matches
from agent.core.inspection.buildkit.decide import dockerfile
from agent.core.inspection.buildkit.inputs import from_build_query
from agent.core.inspection.request import EventAction, LocalImage, Lookup
from agent.core.peer import PeerInfo
from agent.daemon.bus import DecisionSink
from agent.daemon.shim import Shim, ShimConfig
from bench.realdocker import DockerEnv, docker
from tests.agent_process import (
    DEBIAN_DOCKER_CLI,
    DENIED_REPOSITORY,
    AgentProcess,
    describe,
    docker_with,
    images_of,
    shim_environ,
    shim_policy,
    start_agent,
)
from tests.policy_builders import policy
from tests.test_redteam_base_pull import (
    DENIED_TRIGGER,
    INDEX,
    _put_manifest,
    _shim_pulls,
    _split_base,
    _variant,
)

BUILD_TIMEOUT = 180.0
PEER = PeerInfo(pid=1, uid=1000, gid=1000)
#: What a build refused by the denied trigger prints (Pullgate's message).
REFUSED = f"pullgate: pulling docker.io/{DENIED_REPOSITORY}:latest"

pytestmark = pytest.mark.usefixtures("seeded", "alpine_local")


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    """Enforce, community denied, ``on_create: check`` (the default)."""
    shim = start_agent(
        tmp_path_factory.mktemp("shim-rt-platform-variant"), docker_env.socket_path, shim_policy()
    )
    try:
        yield shim
    finally:
        shim.stop()


def _publish(env: DockerEnv, repo: str, entries: list[dict[str, object]]) -> str:
    """``repo:1`` as an index of ``entries`` (replacing what the tag held)."""
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}).encode()
    _put_manifest(env, repo, "1", index, INDEX)
    return f"{repo}:1"


def _repo() -> str:
    return f"acme/pgtest-rtvariant-{uuid.uuid4().hex[:10]}"


def _build(
    agent: AgentProcess,
    env: DockerEnv,
    root: Path,
    dockerfile_text: str,
    *args: str,
) -> tuple[subprocess.CompletedProcess[str], str]:
    """A BuildKit build (Debian CLI 20.10) of ``dockerfile_text`` through the shim; the
    result and the tag to remove."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile_text)
    tag = f"acme/pgtest-rtvariant-out-{uuid.uuid4().hex[:8]}"
    environ = shim_environ(agent, env, {"DOCKER_BUILDKIT": "1"})
    argv = ["build", "--network", "none", "--progress", "plain", "-t", tag, *args, str(root)]
    return docker_with(environ, *argv, cli=DEBIAN_DOCKER_CLI, timeout=BUILD_TIMEOUT), tag


def _assert_refused(
    result: subprocess.CompletedProcess[str],
    agent: AgentProcess,
    env: DockerEnv,
    denied_image_ids: frozenset[str],
) -> None:
    assert result.returncode != 0, describe(result, agent)
    assert REFUSED in result.stdout + result.stderr, describe(result, agent)
    assert not images_of(env, DENIED_REPOSITORY, denied_image_ids)


def _remove(env: DockerEnv, *names: str) -> None:
    for name in names:
        docker(env, "image", "rm", "--force", name, check=False)


# ----------------------------------------- one base named by stages of two platforms


@pytest.mark.parametrize("spelling", ["", "docker.io/"], ids=["same", "docker.io"])
@pytest.mark.usefixtures("denied_image_absent")
def test_a_base_named_for_two_platforms_is_read_as_the_daemon_then_finds_it(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
    spelling: str,
) -> None:
    """The machine holds ``base`` as pulled a while ago (amd64, no triggers); the registry's
    amd64 variant has since gained the denied trigger. ``FROM --platform=linux/arm64 base
    AS a`` and ``FROM base``: the shim read the local amd64 image for the second stage,
    then pulled arm64 for the first, and the name keeps only that one. The daemon then
    finds arm64 under the name for the amd64 stage, fetches the registry's amd64 variant
    and runs its trigger: one the shim never read. The arm64 stage may spell the name
    otherwise (``docker.io/acme/...``): it is the same image to the daemon."""
    repo = _repo()
    name = _publish(
        docker_env,
        repo,
        [_variant(docker_env, repo, "amd64", []), _variant(docker_env, repo, "arm64", [])],
    )
    docker(docker_env, "pull", name)  # amd64: the daemon's own platform here
    _publish(
        docker_env,
        repo,
        [
            _variant(docker_env, repo, "amd64", [DENIED_TRIGGER]),
            _variant(docker_env, repo, "arm64", []),
        ],
    )
    text = (
        f"FROM --platform=linux/arm64 {spelling}{name} AS a\n"
        f"FROM {name}\nCOPY --from=a /marker /m\n"
    )
    tag = ""
    try:
        since = agent.mark()
        result, tag = _build(agent, docker_env, tmp_path / "ctx", text)
        _assert_refused(result, agent, docker_env, denied_image_ids)
        # The amd64 variant, although local, pulled again: the registry's is the one run.
        assert _shim_pulls(agent, since, name), agent.stderr_tail()
    finally:
        _remove(docker_env, tag, name)


# -------------------------------- a stage platform from a build argument or global ARG


@pytest.mark.parametrize("arg", ["TARGETPLATFORM", "BUILDPLATFORM"])
@pytest.mark.usefixtures("denied_image_absent")
def test_a_platform_argument_overridden_by_a_build_arg_is_the_stages(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
    arg: str,
) -> None:
    """``--build-arg TARGETPLATFORM=linux/arm64``: BuildKit's Dockerfile frontend lets a
    build argument replace the platform arguments (``setKVValue`` over
    ``getPlatformArgs``), so ``FROM --platform=$TARGETPLATFORM base`` builds on the arm64
    variant, denied trigger and all, while the shim read the build's (amd64) one."""
    name = _split_base(docker_env, {"amd64": [], "arm64": [DENIED_TRIGGER]})
    tag = ""
    try:
        result, tag = _build(
            agent,
            docker_env,
            tmp_path / "ctx",
            f"FROM --platform=${arg} {name}\n",
            "--build-arg",
            f"{arg}=linux/arm64",
        )
        _assert_refused(result, agent, docker_env, denied_image_ids)
    finally:
        _remove(docker_env, tag, name)


def test_a_build_arg_platform_is_read_for_the_stage() -> None:
    """The pure side of the above: the lookup is for the build argument's platform."""
    inputs = from_build_query(
        {
            "remote": "client-session",
            "session": "s",
            "buildargs": json.dumps(
                {"TARGETPLATFORM": "linux/ARM64", "BUILDPLATFORM": "linux/s390x"}
            ),
        }
    )
    text = (
        b"FROM --platform=$TARGETPLATFORM acme/a AS a\n"
        b"FROM --platform=$BUILDPLATFORM acme/b\nCOPY --from=a / /\n"
    )
    found = dockerfile(inputs, "Dockerfile", text, policy())
    assert found.setting is None
    assert {(lk.name, lk.platform) for lk in found.lookups if lk.base} == {
        ("acme/a", "linux/arm64"),
        ("acme/b", "linux/s390x"),
    }


@pytest.mark.usefixtures("denied_image_absent")
def test_a_platform_argument_redefined_by_a_global_arg_is_the_stages(
    agent: AgentProcess, docker_env: DockerEnv, denied_image_ids: frozenset[str], tmp_path: Path
) -> None:
    """``ARG TARGETPLATFORM=linux/arm64`` before the first ``FROM``: the meta args come after
    the platform arguments in ``metaArgsToMap``, so the default wins and the stage builds
    on arm64 (denied trigger); the shim reads the build's platform."""
    name = _split_base(docker_env, {"amd64": [], "arm64": [DENIED_TRIGGER]})
    tag = ""
    try:
        text = f"ARG TARGETPLATFORM=linux/arm64\nFROM --platform=$TARGETPLATFORM {name}\n"
        result, tag = _build(agent, docker_env, tmp_path / "ctx", text)
        _assert_refused(result, agent, docker_env, denied_image_ids)
    finally:
        _remove(docker_env, tag, name)


# ------------------------------------------------------ containerd 20.10's normalisation


@pytest.mark.parametrize(
    ("wanted", "local", "daemon_takes"),
    [
        # moby 20.10's containerd keeps amd64's v1; its fallback takes no-variant images.
        ("linux/amd64", ("linux", "amd64", "v1"), False),
        ("linux/amd64/v1", ("linux", "amd64", ""), True),
        ("linux/amd64", ("linux", "amd64", "v2"), False),
        ("linux/amd64/v2", ("linux", "amd64", ""), True),
        ("linux/arm64", ("linux", "aarch64", ""), True),
        ("linux/arm64/v8", ("linux", "arm64", ""), True),
        ("linux/arm/v7", ("linux", "arm", "v8"), False),
        ("windows/amd64", ("linux", "amd64", ""), False),
    ],
)
def test_pullgate_never_takes_a_local_variant_the_daemon_would_not(
    wanted: str, local: tuple[str, str, str], daemon_takes: bool
) -> None:
    """Where Pullgate says a local image is of the stage's platform, every daemon must
    take it too (the other way round only costs a pull). A local image whose config says
    ``amd64`` variant ``v1`` (``docker pull --platform linux/amd64/v1`` of an index with
    such an entry, or one pulled by its manifest's digest) is not ``linux/amd64`` to moby
    20.10.24 as Docker ships it: its vendored containerd
    (``vendor/github.com/containerd/containerd/platforms/database.go``) normalizes
    ``x86_64`` to a variant-less ``amd64`` but keeps ``amd64``'s ``v1``, and
    ``OnlyPlatformWithFallback`` takes a variant-less image only. BuildKit then fetches the
    index's plain amd64 variant and runs its triggers, while Pullgate (dropping ``v1`` as
    containerd 1.6+ does) read the local one. The test daemon here is Debian's
    20.10.24+dfsg1, built against containerd 1.6's ``platforms`` (it pulls the plain
    entry for ``linux/amd64/v1``), so this is checked on Pullgate's side only."""
    if not daemon_takes:
        assert not platform_matches(wanted, *local)


# ------------------------------------------------------------- the daemon's own platform


def _json_answer(status: int, body: object) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


@pytest.mark.parametrize(
    ("version", "local", "stale"),
    [
        # BuildKit builds for platforms.DefaultSpec(), which on 32-bit ARM carries the
        # CPU's variant (v6 on a Raspberry Pi Zero); /version says only "arm". A local
        # arm/v7 image is not taken by a v6 daemon; an arm/v5 or variant-less one is
        # taken by every ARM daemon.
        ({"Os": "linux", "Arch": "arm"}, ("linux", "arm", "v7"), True),
        ({"Os": "linux", "Arch": "arm"}, ("linux", "arm", "v5"), False),
        ({"Os": "linux", "Arch": "arm"}, ("linux", "arm", ""), False),
        ({"Os": "linux", "Arch": "amd64"}, ("linux", "amd64", ""), False),
        ({"Os": "linux"}, ("linux", "amd64", ""), True),
    ],
)
def test_the_daemons_own_platform_is_taken_at_its_least(
    tmp_path: Path, version: dict[str, str], local: tuple[str, str, str], stale: bool
) -> None:
    """A stage with no platform builds on the daemon's own, whose ARM variant ``/version``
    does not tell: a local ARM image counts as of that platform only if every ARM
    daemon takes it."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n", 1)[0]
        if line.startswith("GET /version"):
            writer.write(_json_answer(200, version))
        else:
            writer.write(_json_answer(404, {"message": "no such image"}))
        await writer.drain()
        writer.close()

    shim = Shim(
        ShimConfig(listen=tmp_path / "shim.sock", upstream=tmp_path / "d.sock"),
        policy,
        DecisionSink(),
    )
    image = LocalImage("sha256:" + "e" * 64, ("acme/base:1",), (), "", (), *local)
    lookup = Lookup("acme/base:1", EventAction.BUILD, base=True, by_platform=True)

    async def run() -> bool:
        daemon = await asyncio.start_unix_server(serve, path=str(tmp_path / "d.sock"))
        async with daemon:
            return await shim.stale_variant(lookup, image)

    assert asyncio.run(run()) is stale


@pytest.mark.parametrize(
    ("text", "platform"),
    [
        ("ARG TARGETPLATFORM=linux/arm64\nFROM --platform=$TARGETPLATFORM acme/a\n", "linux/arm64"),
        ("ARG BUILDPLATFORM=linux/s390x\nFROM --platform=${BUILDPLATFORM} acme/a\n", "linux/s390x"),
        ("ARG P=linux/arm/v7\nFROM --platform=$P acme/a\n", "linux/arm/v7"),
        ("ARG OS=linux\nARG ARCH=arm64\nFROM --platform=$OS/$ARCH acme/a\n", "linux/arm64"),
        ("FROM --platform=$TARGETPLATFORM acme/a\n", "linux/ppc64le"),  # the build's
        ("FROM --platform=$BUILDPLATFORM acme/a\n", ""),  # the daemon's
        ("ARG TARGETPLATFORM\nFROM --platform=$TARGETPLATFORM acme/a\n", "linux/ppc64le"),
    ],
)
def test_a_stage_platform_is_read_after_the_global_args(text: str, platform: str) -> None:
    """dockerfile2llb expands ``FROM --platform`` with the meta args, which come after
    (and so replace) its own platform args: the shim reads the same value."""
    inputs = from_build_query(
        {"remote": "client-session", "session": "s", "platform": "linux/ppc64le"}
    )
    found = dockerfile(inputs, "Dockerfile", text.encode(), policy())
    assert found.setting is None, found.setting
    assert [lk.platform for lk in found.lookups if lk.base] == [platform]


@pytest.mark.parametrize(
    "text",
    [
        "FROM --platform=$TARGETARCH acme/a\n",  # an automatic arg Pullgate does not know
        "ARG P\nFROM --platform=$P acme/a\n",  # empty: BuildKit cannot parse it
        "FROM --platform=$TARGETPLATFORM-x acme/a\n",
    ],
)
def test_a_stage_platform_pullgate_cannot_tell_follows_builds(text: str) -> None:
    inputs = from_build_query({"remote": "client-session", "session": "s"})
    found = dockerfile(inputs, "Dockerfile", text.encode(), policy(builds="deny"))
    assert found.setting is not None and not found.setting.allowed
    assert "stage platform" in found.setting.reason
