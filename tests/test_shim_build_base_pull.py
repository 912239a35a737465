"""A build's base image that is not on the machine: the shim pulls it first and reads its
ONBUILD triggers before the build is decided (docs/shim.md, "ONBUILD triggers of a
base the build pulls").

Against the session's real dockerd and registry: an allowed base (`acme/...`, pushed to
the registry that mirrors docker.io, then removed from the daemon) whose config holds
`ONBUILD COPY --from=someuser/tool ...` is a live way in when built on the daemon
directly; through the shim, a classic build and a BuildKit build (the Debian CLI 20.10)
of it are refused with Pullgate's message naming the trigger, the denied image never
reaches the daemon, and the base is local afterwards. A base with a harmless trigger
builds; a base the shim cannot pull is refused with the advice to `docker pull` it.
buildx's shape (tests/buildkit_client.py: a gateway solve, and the client-side frontend's
`ResolveImageConfig` of a base) is read the same way.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
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
    shim_environ,
    shim_policy,
    start_agent,
)
from tests.buildkit_client import (
    TRANSPORT_GRPC,
    GatewayBuild,
    GrpcConnection,
    Session,
    build_dirs,
    gateway_build,
)

DENIED_TRIGGER = f"ONBUILD COPY --from={DENIED_REPOSITORY} /bin/busybox /x"
HARMLESS_TRIGGER = "ONBUILD RUN echo triggered > /onbuild"
BUILD_TIMEOUT = 180.0

pytestmark = pytest.mark.usefixtures("seeded", "alpine_local")


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory, report: Reporter
) -> Iterator[AgentProcess]:
    """Enforce, community denied, ``on_create: check`` (the default)."""
    shim = start_agent(
        tmp_path_factory.mktemp("shim-base-pull"), docker_env.socket_path, shim_policy()
    )
    report(f"shim: agent answered /_ping {shim.ready_seconds:.2f} s after start")
    try:
        yield shim
    finally:
        shim.stop()


def _pushed_base(env: DockerEnv, trigger: str) -> str:
    """An `acme/...` image committed from alpine with ``trigger``, pushed to the registry
    (docker.io's mirror) and removed from the daemon: pulled again by its Hub name."""
    name = f"acme/pgtest-onpull-{uuid.uuid4().hex[:10]}:1"
    mirror = f"{env.registry}/{name}"
    container = f"pgtest-{uuid.uuid4().hex[:12]}"
    docker(env, "create", "--name", container, "--network", "none", "alpine", "true")
    try:
        image_id = docker(env, "commit", "--change", trigger, container, mirror).stdout.strip()
        docker(env, "push", mirror)
    finally:
        docker(env, "rm", "--force", container, check=False)
    docker(env, "image", "rm", mirror, check=False)
    docker(env, "image", "rm", "--force", image_id, check=False)
    return name


def _forget(env: DockerEnv, name: str) -> None:
    """The daemon holds nothing of ``name`` (the registry still does)."""
    docker(env, "image", "rm", "--force", name, check=False)
    assert not image_present(env, name)


@pytest.fixture(scope="module")
def denied_base(docker_env: DockerEnv) -> str:
    return _pushed_base(docker_env, DENIED_TRIGGER)


@pytest.fixture(scope="module")
def harmless_base(docker_env: DockerEnv) -> str:
    return _pushed_base(docker_env, HARMLESS_TRIGGER)


@pytest.fixture
def fresh(docker_env: DockerEnv, denied_base: str, harmless_base: str) -> Iterator[None]:
    """Neither base is on the machine before the test, nor after it."""
    for name in (denied_base, harmless_base):
        _forget(docker_env, name)
    yield
    for name in (denied_base, harmless_base):
        docker(docker_env, "image", "rm", "--force", name, check=False)


def _context(root: Path, base: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(f"FROM {base}\nRUN echo built > /built\n")
    return root


#: The harness's own docker CLI (``DockerEnv.docker_cli``, the one on PATH: a current
#: one without buildx, so classic builds only).
HARNESS_CLI = "harness"


def _build(
    agent: AgentProcess,
    env: DockerEnv,
    ctx: Path,
    tag: str,
    *,
    buildkit: bool,
    cli: str = DEBIAN_DOCKER_CLI,
) -> subprocess.CompletedProcess[str]:
    environ = shim_environ(agent, env, {"DOCKER_BUILDKIT": "1" if buildkit else "0"})
    args = ["build", "--network", "none", "-t", tag, str(ctx)]
    if buildkit:
        args[1:1] = ["--progress", "plain"]
    return docker_with(environ, *args, cli=cli, timeout=BUILD_TIMEOUT)


def _tag() -> str:
    return f"acme/pgtest-onpull-out-{uuid.uuid4().hex[:8]}"


@pytest.mark.usefixtures("fresh", "denied_image_absent")
def test_the_pushed_base_is_a_live_way_in_on_the_daemon_directly(
    docker_env: DockerEnv, denied_base: str, tmp_path: Path, denied_image_ids: frozenset[str]
) -> None:
    """Without the shim, the daemon pulls the base and then the trigger's denied image."""
    tag = _tag()
    result = docker_with(
        {**docker_env.env, "DOCKER_BUILDKIT": "0"},
        *("build", "--network", "none", "-t", tag, str(_context(tmp_path / "ctx", denied_base))),
        cli=DEBIAN_DOCKER_CLI,
        timeout=BUILD_TIMEOUT,
    )
    try:
        assert result.returncode == 0, describe(result)
        assert images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)
    finally:
        docker(docker_env, "image", "rm", "--force", tag, check=False)


@pytest.mark.parametrize(
    ("buildkit", "cli"),
    [(False, DEBIAN_DOCKER_CLI), (True, DEBIAN_DOCKER_CLI), (False, HARNESS_CLI)],
    ids=["classic", "buildkit", "classic-harness-cli"],
)
@pytest.mark.usefixtures("fresh", "denied_image_absent")
def test_a_missing_base_whose_trigger_pulls_a_denied_image_is_refused(
    *,
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_base: str,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
    buildkit: bool,
    cli: str,
) -> None:
    cli = docker_env.docker_cli if cli == HARNESS_CLI else cli
    since = agent.mark()
    tag = _tag()

    ctx = _context(tmp_path / "ctx", denied_base)
    result = _build(agent, docker_env, ctx, tag, buildkit=buildkit, cli=cli)

    output = result.stdout + result.stderr
    assert result.returncode != 0, describe(result, agent)
    assert "pullgate: pulling docker.io/someuser/tool:latest" in output, describe(result, agent)
    assert f"ONBUILD trigger of local image {denied_base}" in output, describe(result, agent)
    assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)
    assert not image_present(docker_env, tag)
    assert image_present(docker_env, denied_base)  # the shim's pull
    pull = agent.wait_for_decision(
        lambda r: r.get("action") == "image-pull" and r.get("input") == denied_base, since=since
    )
    assert pull["decision"] == "allow" and "pulled by Pullgate" in pull["detail"], pull
    agent.wait_for_decision(
        lambda r: (
            r.get("decision") == "deny"
            and r.get("image") == "docker.io/someuser/tool:latest"
            and "ONBUILD" in (r.get("detail") or "")
        ),
        since=since,
    )


@pytest.mark.parametrize("buildkit", [False, True], ids=["classic", "buildkit"])
@pytest.mark.usefixtures("fresh")
def test_a_missing_base_with_a_harmless_trigger_is_pulled_and_builds(
    *,
    agent: AgentProcess,
    docker_env: DockerEnv,
    harmless_base: str,
    tmp_path: Path,
    buildkit: bool,
) -> None:
    tag = _tag()
    try:
        result = _build(
            agent, docker_env, _context(tmp_path / "ctx", harmless_base), tag, buildkit=buildkit
        )

        assert result.returncode == 0, describe(result, agent)
        assert image_present(docker_env, harmless_base)
        out = docker(docker_env, "run", "--rm", "--network", "none", tag, "cat", "/onbuild")
        assert out.stdout == "triggered\n"
    finally:
        docker(docker_env, "image", "rm", "--force", tag, check=False)


@pytest.mark.parametrize("buildkit", [False, True], ids=["classic", "buildkit"])
def test_a_base_the_shim_cannot_pull_is_refused_with_the_advice_to_pull_it(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path, buildkit: bool
) -> None:
    missing = f"acme/pgtest-nowhere-{uuid.uuid4().hex[:10]}:1"
    tag = _tag()

    result = _build(agent, docker_env, _context(tmp_path / "ctx", missing), tag, buildkit=buildkit)

    output = result.stdout + result.stderr
    assert result.returncode != 0, describe(result, agent)
    assert f"base image {missing} is not on this machine" in output, describe(result, agent)
    assert f"Run `docker pull {missing}` first" in output, describe(result, agent)
    assert not image_present(docker_env, tag)


# --------------------------------------------------------------------------- buildx's shape

PERMISSION_DENIED = 7


def _buildx(
    agent: AgentProcess, tmp: Path, dockerfile: str, resolve: tuple[str, ...]
) -> GatewayBuild:
    """A build as buildx makes it, through the shim: its session in ``Control/Session``
    on the build's ``/grpc`` connection, the client-side frontend's resolves first."""
    dirs = build_dirs(tmp, dockerfile)
    with GrpcConnection(agent.socket_path) as conn:
        session = Session(
            agent.socket_path,
            dirs,
            transport=TRANSPORT_GRPC,
            connection=conn,
            shared_key=uuid.uuid4().hex,
        )
        with session:
            built = gateway_build(
                conn,
                session.id,
                {"force-network-mode": "none"},
                resolve=resolve,
                timeout=BUILD_TIMEOUT,
            )
        assert conn.error is None, conn.error
    assert session.error is None, session.error
    return built


@pytest.mark.usefixtures("fresh", "denied_image_absent")
def test_buildx_resolve_and_solve_of_a_missing_base_read_its_triggers(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_base: str,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
) -> None:
    """The client-side frontend reads a base's triggers from the config its resolve
    fetches: the resolve of the missing base is refused for its trigger, and so is the
    gateway solve of a Dockerfile built on it."""
    canonical = f"docker.io/{denied_base}"
    built = _buildx(agent, tmp_path, f"FROM {denied_base}\n", (canonical,))

    (resolved,) = built.resolved
    assert resolved.status == PERMISSION_DENIED, resolved
    assert "pullgate: pulling docker.io/someuser/tool:latest" in resolved.message, resolved
    assert "ONBUILD trigger of local image" in resolved.message, resolved
    assert not built.ok, built.describe()
    assert image_present(docker_env, denied_base)
    assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)


@pytest.mark.usefixtures("fresh")
def test_buildx_resolve_of_a_missing_harmless_base_pulls_it_and_builds(
    agent: AgentProcess, docker_env: DockerEnv, harmless_base: str, tmp_path: Path
) -> None:
    canonical = f"docker.io/{harmless_base}"
    built = _buildx(agent, tmp_path, f"FROM {harmless_base}\nRUN test -f /onbuild\n", (canonical,))

    assert [r.status for r in built.resolved] == [0], built.describe()
    assert built.ok, built.describe()
    assert image_present(docker_env, harmless_base)


@pytest.mark.parametrize("buildkit", [False, True], ids=["classic", "buildkit"])
@pytest.mark.usefixtures("fresh")
def test_with_pull_a_local_base_is_pulled_again_by_the_shim_first(
    agent: AgentProcess,
    docker_env: DockerEnv,
    harmless_base: str,
    tmp_path: Path,
    buildkit: bool,
) -> None:
    """``--pull``: the daemon pulls the base again whatever it has, so the shim does too
    and decides what it got (a tag moved after that is docs/shim.md's residual)."""
    docker(docker_env, "pull", harmless_base)
    since = agent.mark()
    tag = _tag()
    try:
        ctx = _context(tmp_path / "ctx", harmless_base)
        environ = shim_environ(agent, docker_env, {"DOCKER_BUILDKIT": "1" if buildkit else "0"})
        result = docker_with(
            environ,
            *("build", "--pull", "--network", "none", "-t", tag, str(ctx)),
            cli=DEBIAN_DOCKER_CLI,
            timeout=BUILD_TIMEOUT,
        )
        assert result.returncode == 0, describe(result, agent)
        pull = agent.wait_for_decision(
            lambda r: r.get("action") == "image-pull" and r.get("input") == harmless_base,
            since=since,
        )
        assert "pulled by Pullgate" in pull["detail"], pull
    finally:
        docker(docker_env, "image", "rm", "--force", tag, check=False)
