"""buildx-shaped BuildKit builds through the shim (issue 12), against the real daemon.

No buildx exists on the test machines; tests/buildkit_client.py makes its requests. buildx
(buildkit client/build.go ``Build``) differs from the Debian CLI's built-in client twice:
its session runs inside a ``Control/Session`` call on ``/grpc`` (the session's HTTP/2 in
``BytesMessage`` chunks, buildkit session/grpchijack), and it runs the frontend
client-side: a ``Control/Solve`` naming no frontend stays open in the daemon's gateway
forwarder while the client calls ``LLBBridge`` Ping, ResolveImageConfig, Solve (the
``dockerfile.v0`` frontend and the build's attrs) and Return, the build id in the
``buildkit-controlapi-buildid`` metadata. The daemon (dockerd 20.10, BuildKit 0.8)
implements all of it (tests/test_buildkit_client.py).

Allowed builds must build; denied ones fail with Pullgate's message, are recorded, and
leave the daemon (asked directly) without the denied image. A denial read from the
Dockerfile ends the daemon's file sync with PERMISSION_DENIED, which the daemon's frontend
wraps: the gateway solve (and then the build) fails with UNKNOWN quoting it, as buildx
prints it. What the shim decides from a request alone it refuses itself, with
PERMISSION_DENIED.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from bench.realdocker import DockerEnv
from tests.agent_process import (
    DENIED_REPOSITORY,
    AgentProcess,
    images_of,
    shim_policy,
    start_agent,
)
from tests.buildkit_client import (
    BUILD_ID_METADATA,
    CONTROL_SOLVE,
    DEFAULT_DATA_CHUNK,
    DIFFCOPY,
    GATEWAY_RESOLVE_IMAGE_CONFIG,
    GATEWAY_SOLVE,
    HEALTH_CHECK,
    TRANSPORT_GRPC,
    TRANSPORT_SESSION,
    GatewayBuild,
    GrpcConnection,
    Session,
    build_dirs,
    dockerfile_solve_request,
    gateway_build,
    gateway_solve_request,
    resolve_image_config_request,
    unary,
)

DENIED = "someuser/tool"
DENIED_CANONICAL = "docker.io/someuser/tool:latest"
DENIAL = re.compile(r"pullgate: pulling docker\.io/someuser/tool:latest( \(.*?\))? is not allowed")
#: How the daemon's frontend quotes the shim's refusal of the Dockerfile sync.
SYNC_DENIAL = "error from sender: pullgate: pulling docker.io/someuser/tool:latest"
UNKNOWN = 2
INVALID_ARGUMENT = 3
PERMISSION_DENIED = 7
NO_NETWORK = {"force-network-mode": "none"}
TIMEOUT = 45.0
GATEWAY_SOLVE_ENDPOINT = "POST /grpc LLBBridge/Solve"

pytestmark = pytest.mark.usefixtures("seeded")


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    """Enforce, community denied, ``builds: deny`` (the default)."""
    shim = start_agent(
        tmp_path_factory.mktemp("shim-buildx"), docker_env.socket_path, shim_policy()
    )
    try:
        yield shim
    finally:
        shim.stop()


def _buildx(
    agent: AgentProcess,
    tmp: Path,
    dockerfile: str,
    attrs: Mapping[str, str] | None = None,
    *,
    files: Mapping[str, str | bytes] | None = None,
    transport: str = TRANSPORT_GRPC,
    shared: bool = True,
    resolve: tuple[str, ...] = (),
    control_attrs: Mapping[str, str] | None = None,
    frame_size: int | None = None,
    data_chunk: int = DEFAULT_DATA_CHUNK,
) -> tuple[GatewayBuild, Session]:
    """A build as buildx makes it, through the shim: the session in ``Control/Session``
    on the build's own ``/grpc`` connection (``shared``) or on one of its own, or on
    ``POST /session`` (``transport``)."""
    dirs = build_dirs(tmp, dockerfile, files)
    with GrpcConnection(agent.socket_path) as conn:
        session = Session(
            agent.socket_path,
            dirs,
            transport=transport,
            connection=conn if shared and transport == TRANSPORT_GRPC else None,
            shared_key=uuid.uuid4().hex,
            frame_size=frame_size,
            data_chunk=data_chunk,
        )
        with session:
            built = gateway_build(
                conn,
                session.id,
                {**NO_NETWORK, **(attrs or {})},
                resolve=resolve,
                control_attrs=control_attrs,
                timeout=TIMEOUT,
            )
        assert conn.error is None, conn.error
    assert session.error is None, session.error
    return built, session


def _explain(built: GatewayBuild, agent: AgentProcess) -> str:
    """Every call's whole message, and the agent's last words."""
    calls = {"gateway solve": built.gateway_solve, "build": built.solve, "ping": built.ping}
    lines = [f"{name}: {r.status} {r.message}" for name, r in calls.items() if r is not None]
    return "\n".join([built.describe(), *lines, agent.stderr_tail(8)])


# --------------------------------------------------------------------------- allowed

ALLOWED_DOCKERFILE = """\
FROM alpine AS first
RUN echo one > /one
FROM alpine
ARG WORD
COPY --from=first /one /one
COPY big.bin /big.bin
RUN test "$(cat /one)" = one && test "$WORD" = hello && test "$(wc -c < /big.bin)" = 3145728
"""


@pytest.mark.parametrize(
    ("transport", "shared"),
    [(TRANSPORT_GRPC, True), (TRANSPORT_GRPC, False), (TRANSPORT_SESSION, False)],
    ids=["control-session-shared", "control-session-own-connection", "post-session"],
)
@pytest.mark.usefixtures("alpine_local")
def test_an_allowed_buildx_build_builds(
    agent: AgentProcess, tmp_path: Path, transport: str, shared: bool
) -> None:
    mark = agent.mark()
    built, session = _buildx(
        agent,
        tmp_path,
        ALLOWED_DOCKERFILE,
        {"build-arg:WORD": "hello"},
        files={"big.bin": bytes(range(256)) * (3 << 12)},
        transport=transport,
        shared=shared,
        resolve=("docker.io/library/alpine:latest",),
    )
    assert built.ok, _explain(built, agent)
    assert built.gateway_solve is not None and built.gateway_solve.ok
    assert [r.status for r in built.resolved] == [0]
    (dockerfile_sync,) = session.syncs_of("dockerfile")
    assert dockerfile_sync.requested == ["Dockerfile"] and dockerfile_sync.finished
    (context,) = [s for s in session.syncs_of("context") if "big.bin" in s.followpaths]
    assert context.requested == ["big.bin"] and context.finished
    agent.wait_for_decision(
        lambda r: (
            r.get("decision") == "allow"
            and r.get("endpoint") == GATEWAY_SOLVE_ENDPOINT
            and r.get("detail") == "Dockerfile line 1: FROM alpine AS first"
        ),
        since=mark,
    )


# --------------------------------------------------------------------------- denied

DENIED_BUILDS: dict[str, tuple[str, dict[str, str]]] = {
    "from": (f"FROM {DENIED}\nRUN true\n", {}),
    "build-arg-override": (
        "ARG BASE=alpine\nFROM ${BASE}\nRUN true\n",
        {"build-arg:BASE": DENIED},
    ),
    "copy-from": (f"FROM alpine\nCOPY --from={DENIED} /bin/busybox /x\n", {}),
}


@pytest.mark.parametrize("case", list(DENIED_BUILDS))
@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_a_denied_buildx_build_fails_with_the_message_and_pulls_nothing(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
    case: str,
) -> None:
    dockerfile, attrs = DENIED_BUILDS[case]
    mark = agent.mark()
    built, session = _buildx(agent, tmp_path, dockerfile, attrs)
    described = _explain(built, agent)
    gateway_solve = built.gateway_solve
    assert gateway_solve is not None, described
    assert gateway_solve.status == UNKNOWN, described
    assert SYNC_DENIAL in gateway_solve.message, described
    assert DENIAL.search(gateway_solve.message), described
    # the client hands the error back; the build ends with it
    assert built.returned is not None and built.returned.ok, described
    assert built.solve is not None and built.solve.status == UNKNOWN, described
    assert DENIAL.search(built.solve.message), described
    (dockerfile_sync,) = session.syncs_of("dockerfile")
    # the frontend reads the context's .dockerignore beside the Dockerfile, no more
    context = [s.followpaths for s in session.syncs_of("context")]
    assert context in ([], [[".dockerignore"]]), context
    assert dockerfile_sync.requested == ["Dockerfile"]
    assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)
    agent.wait_for_decision(
        lambda r: (
            r.get("decision") == "deny"
            and r.get("image") == DENIED_CANONICAL
            and r.get("endpoint") == GATEWAY_SOLVE_ENDPOINT
        ),
        since=mark,
    )


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_a_denied_dockerfile_in_tiny_bytes_messages_is_still_denied(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
) -> None:
    """3-byte HTTP/2 frames of the session, each its own BytesMessage, 7-byte file packets."""
    built, _ = _buildx(
        agent, tmp_path, f"FROM alpine AS a\nFROM {DENIED}\n", frame_size=3, data_chunk=7
    )
    assert built.gateway_solve is not None, built.describe()
    assert DENIAL.search(built.gateway_solve.message), built.describe()
    assert built.solve is not None and not built.solve.ok
    assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_a_denied_named_context_is_refused_at_the_gateway_solve(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
) -> None:
    """What the gateway solve names outright is refused before the daemon sees it (here
    the ``Control/Solve`` carries no attrs, so the gateway solve is the one that names it)."""
    built, session = _buildx(
        agent,
        tmp_path,
        "FROM alpine\nRUN true\n",
        {"context:alpine": f"docker-image://{DENIED_CANONICAL}"},
        control_attrs={},
    )
    assert built.gateway_solve is not None, built.describe()
    assert built.gateway_solve.status == PERMISSION_DENIED, built.describe()
    assert DENIAL.search(built.gateway_solve.message), built.describe()
    assert built.solve is not None and not built.solve.ok
    assert not session.syncs, "the daemon read the session of a refused gateway solve"
    assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)


# --------------------------------------------------------------------------- image resolves


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_resolve_image_config_is_decided_as_a_pull(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
) -> None:
    mark = agent.mark()
    built, _ = _buildx(
        agent,
        tmp_path,
        "FROM alpine\n",
        resolve=(DENIED_CANONICAL, "docker.io/library/alpine:latest"),
    )
    denied, allowed = built.resolved
    assert denied.status == PERMISSION_DENIED, denied
    assert DENIAL.search(denied.message), denied
    assert allowed.ok and allowed.responses, allowed
    assert built.ok, built.describe()
    agent.wait_for_decision(
        lambda r: (
            r.get("decision") == "deny"
            and r.get("image") == DENIED_CANONICAL
            and r.get("endpoint") == "POST /grpc LLBBridge/ResolveImageConfig"
        ),
        since=mark,
    )
    # outside any build too
    with GrpcConnection(agent.socket_path) as conn:
        alone = conn.unary(
            GATEWAY_RESOLVE_IMAGE_CONFIG,
            resolve_image_config_request(DENIED_CANONICAL),
            metadata=[(BUILD_ID_METADATA, "no-such-build")],
            timeout=TIMEOUT,
        )
    assert alone.status == PERMISSION_DENIED and DENIAL.search(alone.message), alone
    assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)


# --------------------------------------------------------------------------- unreadable


@pytest.mark.parametrize(
    "build_ids", [["no-such-build"], [], ["a", "b"]], ids=["unknown", "none", "two"]
)
def test_a_gateway_solve_of_no_build_in_flight_follows_builds(
    agent: AgentProcess, build_ids: list[str]
) -> None:
    mark = agent.mark()
    with GrpcConnection(agent.socket_path) as conn:
        result = conn.unary(
            GATEWAY_SOLVE,
            gateway_solve_request({"build-arg:X": "y"}),
            metadata=[(BUILD_ID_METADATA, b) for b in build_ids],
            timeout=TIMEOUT,
        )
    assert result.status == PERMISSION_DENIED, result
    assert "names no build in flight" in result.message and "(builds: deny)" in result.message
    agent.wait_for_decision(
        lambda r: (
            r.get("decision") == "deny"
            and r.get("rule") == "builds"
            and r.get("endpoint") == GATEWAY_SOLVE_ENDPOINT
        ),
        since=mark,
    )


def test_a_gateway_solve_of_no_build_with_builds_allow_reaches_the_daemon(
    docker_env: DockerEnv, tmp_path: Path
) -> None:
    """``builds: allow``: relayed; the daemon itself knows no such build."""
    shim = start_agent(tmp_path / "agent", docker_env.socket_path, shim_policy(builds="allow"))
    try:
        with GrpcConnection(shim.socket_path) as conn:
            result = conn.unary(
                GATEWAY_SOLVE,
                gateway_solve_request({}),
                metadata=[(BUILD_ID_METADATA, "no-such-build")],
                timeout=TIMEOUT,
            )
        assert result.status == UNKNOWN and "no such job no-such-build" in result.message, result
    finally:
        shim.stop()


def test_a_control_session_with_two_session_ids_is_refused(
    agent: AgentProcess, tmp_path: Path
) -> None:
    """The daemon would take the first id; which one the daemon's builds read cannot be
    told, so the shim refuses the session before the daemon sees it."""
    metadata = [
        ("x-docker-expose-session-uuid", uuid.uuid4().hex),
        ("x-docker-expose-session-uuid", uuid.uuid4().hex),
        ("x-docker-expose-session-name", "two-ids"),
        ("x-docker-expose-session-sharedkey", "two-ids"),
        ("x-docker-expose-session-grpc-method", DIFFCOPY),
        ("x-docker-expose-session-grpc-method", HEALTH_CHECK),
    ]
    dirs = build_dirs(tmp_path, f"FROM {DENIED}\n")
    with Session(agent.socket_path, dirs, transport=TRANSPORT_GRPC, metadata=metadata) as session:
        assert session.stream is not None
        result = session.stream.result(10)
    assert result.status == INVALID_ARGUMENT, result
    assert "names no single session id" in result.message
    assert session.calls == [], "the daemon reached a refused session"


def test_a_build_asking_for_privileged_steps_is_refused(agent: AgentProcess) -> None:
    """`docker buildx build --allow security.insecure` (Entitlements, field 9, which
    Pullgate's subset of the message does not name): its `RUN --security=insecure` steps
    would be privileged containers (containers.host_access)."""
    request = dockerfile_solve_request("sess-" + uuid.uuid4().hex[:8])
    entitlement = b"security.insecure"
    payload = request.SerializeToString() + bytes([9 << 3 | 2, len(entitlement)]) + entitlement
    mark = agent.mark()
    result = unary(agent.socket_path, CONTROL_SOLVE, payload, timeout=TIMEOUT)
    assert result.status == PERMISSION_DENIED, result
    assert "security.insecure" in result.message and "host_access" in result.message
    agent.wait_for_decision(
        lambda r: r.get("decision") == "deny" and r.get("rule") == "containers.host_access",
        since=mark,
    )
