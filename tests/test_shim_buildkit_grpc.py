"""BuildKit's ``/grpc`` ``Control/Solve`` path through the shim (issue 12), against the real
daemon, driven by the test client of tests/buildkit_client.py (no buildx on these machines).

The build's session is opened through the shim's socket too (the shim must see the
Dockerfile's file sync), except where a test says otherwise. Allowed solves must give what
they give without the shim; denied ones end with gRPC status 7 carrying Pullgate's message,
are recorded, and leave the daemon (asked directly) without the denied image. The hostile
cases (odd sessions, tiny packets, huge files, aborted streams, malformed HTTP/2, flow
control stalls) must each leave the agent answering and nothing denied in the daemon.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from agent.core.inspection.buildkit.protos import control_pb2, llb_pb2
from bench.realdocker import DockerEnv, docker
from tests.agent_process import (
    DENIED_REPOSITORY,
    AgentProcess,
    Reporter,
    images_of,
    remove_images,
    shim_policy,
    start_agent,
    unix_request,
)
from tests.buildkit_client import (
    CONTROL_LIST_WORKERS,
    CONTROL_SOLVE,
    GrpcResult,
    Session,
    build_dirs,
    dockerfile_solve_request,
    solve,
    unary,
)
from tests.h2_probe import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PING,
    PREFACE,
    SETTINGS_TYPE,
    call_headers,
    frame,
    raw_grpc,
    raw_upgrade,
    registry_fetches,
    registry_offset,
    rss_kib,
)

DENIED = "someuser/tool"
DENIED_CANONICAL = "docker.io/someuser/tool:latest"
DENIAL = re.compile(
    r"pullgate: pulling docker\.io/someuser/tool:latest( \([^)]*\))? is not allowed"
)
PERMISSION_DENIED = 7
UNKNOWN = 2
NO_NETWORK = {"force-network-mode": "none"}
SOLVE_TIMEOUT = 45.0

pytestmark = pytest.mark.usefixtures("seeded")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    """Enforce, community denied, ``builds: deny`` (the default)."""
    shim = start_agent(
        tmp_path_factory.mktemp("shim-buildkit-grpc"), docker_env.socket_path, shim_policy()
    )
    try:
        yield shim
    finally:
        shim.stop()


@pytest.fixture
def healthy(
    agent: AgentProcess, docker_env: DockerEnv, denied_image_ids: frozenset[str]
) -> Iterator[None]:
    """After a hostile test: the agent runs, answers ``/_ping`` and a gRPC call, and the
    daemon holds nothing of the denied repository."""
    remove_images(docker_env, DENIED_REPOSITORY, denied_image_ids)
    yield
    _assert_alive(agent)
    assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids), agent.stderr_tail()


def _assert_alive(agent: AgentProcess) -> None:
    assert agent.running(), agent.stderr_tail()
    status, _, body = unix_request(agent.socket_path, "GET", "/_ping", timeout=5)
    assert status == 200, body
    workers = unary(agent.socket_path, CONTROL_LIST_WORKERS, b"", timeout=10)
    assert workers.ok, workers


# --------------------------------------------------------------------------- helpers


def _tag() -> str:
    return f"acme/pgtest-grpc-{uuid.uuid4().hex[:8]}"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, value: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _with_exporter(request: control_pb2.SolveRequest, tag: str) -> bytes:
    """The request with ``Exporter: moby`` and ``ExporterAttrs{name: tag}`` (SolveRequest
    fields 3 and 4, which the test protos leave out): the daemon stores the image."""
    entry = _field(1, b"name") + _field(2, tag.encode())
    return request.SerializeToString() + _field(3, b"moby") + _field(4, entry)


def _solve_bytes(socket_path: Path, payload: bytes, timeout: float = SOLVE_TIMEOUT) -> GrpcResult:
    return unary(socket_path, CONTROL_SOLVE, payload, timeout=timeout)


def _build(
    agent: AgentProcess,
    dirs: Mapping[str, Path],
    attrs: Mapping[str, str] | None = None,
    *,
    session_via: Path | None = None,
    solve_via: Path | None = None,
    tag: str | None = None,
    **session_kw: Any,
) -> tuple[GrpcResult, Session]:
    """One Dockerfile solve; session and solve through the shim unless told otherwise."""
    with Session(session_via or agent.socket_path, dirs, **session_kw) as session:
        request = dockerfile_solve_request(session.id, {**NO_NETWORK, **(attrs or {})})
        payload = _with_exporter(request, tag) if tag else request.SerializeToString()
        result = _solve_bytes(solve_via or agent.socket_path, payload)
    return result, session


def _assert_denied(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    result: GrpcResult,
    *,
    since: tuple[int, int],
    upfront: bool,
) -> None:
    """Refused up front: the shim answers the Solve with PERMISSION_DENIED. Refused at the
    Dockerfile sync: the shim ends the daemon's DiffCopy with the client's PACKET_ERR and
    the daemon fails the solve (UNKNOWN) quoting it, as buildx prints it. ``since``: the
    agent's mark and the registry log's offset before the build."""
    mark, offset = since
    if upfront:
        assert result.status == PERMISSION_DENIED, (result, agent.stderr_tail())
    else:
        assert result.status == UNKNOWN, (result, agent.stderr_tail())
        assert "failed to read dockerfile" in result.message, result
        assert "failed to read dockerfile: error from sender: pullgate: " in result.message, result
    assert DENIAL.search(result.message), result
    agent.wait_for_decision(
        lambda r: r.get("decision") == "deny" and r.get("image") == DENIED_CANONICAL, since=mark
    )
    assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids), agent.stderr_tail()
    assert not registry_fetches(docker_env, offset)


def _cat(env: DockerEnv, tag: str, path: str) -> str:
    return docker(env, "run", "--rm", "--network", "none", tag, "cat", path).stdout


# --------------------------------------------------------------------------- allowed


@pytest.mark.usefixtures("alpine_local")
def test_an_allowed_solve_gives_the_image_it_gives_directly(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    dockerfile = (
        "ARG BASE=alpine\nFROM ${BASE} AS first\nARG WORD\nRUN echo $WORD > /word\n"
        "FROM acme/app\nCOPY --from=first /word /word\nCOPY hello.txt /hello.txt\n"
    )
    dirs = build_dirs(tmp_path, dockerfile, {"hello.txt": "hello\n"})
    attrs = {"build-arg:WORD": f"w-{uuid.uuid4().hex[:6]}"}
    direct_tag, tag = _tag(), _tag()
    mark = agent.mark()
    try:
        direct, _ = _build(
            agent, dirs, attrs, session_via=docker_env.socket_path,
            solve_via=docker_env.socket_path, tag=direct_tag,
        )  # fmt: skip
        assert direct.ok, direct
        result, session = _build(agent, dirs, attrs, tag=tag)
        assert result.ok, (result, agent.stderr_tail())
        assert session.error is None, session.error
        for path in ("/word", "/hello.txt"):
            assert _cat(docker_env, tag, path) == _cat(docker_env, direct_tag, path)
        assert _cat(docker_env, tag, "/word") == attrs["build-arg:WORD"] + "\n"
        (sync,) = session.syncs_of("dockerfile")
        assert sync.requested == ["Dockerfile"] and sync.finished
        agent.wait_for_decision(
            lambda r: r.get("decision") == "allow" and r.get("action") == "image-build",
            since=mark,
        )
    finally:
        docker(docker_env, "image", "rm", "--force", tag, direct_tag, check=False)


# --------------------------------------------------------------------------- denied

DENIED_SOLVES: dict[str, tuple[str, dict[str, str]]] = {
    "from": (f"FROM {DENIED}\nRUN true\n", {}),
    "build-arg-override": ("ARG BASE=alpine\nFROM ${BASE}\nRUN true\n", {"build-arg:BASE": DENIED}),
    "copy-from": (f"FROM alpine\nCOPY --from={DENIED} /bin/busybox /x\n", {}),
    "syntax": (f"# syntax={DENIED}\nFROM alpine\n", {}),
    "named-context": (
        "FROM alpine\nRUN true\n",
        {"context:alpine": f"docker-image://{DENIED}"},
    ),
    "cache-from": ("FROM alpine\n", {"cache-from": f"acme/app,{DENIED}"}),
    "cache-imports": (
        "FROM alpine\n",
        {"cache-imports": json.dumps([{"Type": "registry", "Attrs": {"ref": DENIED}}])},
    ),
}


UPFRONT = ("named-context", "cache-from", "cache-imports")


@pytest.mark.parametrize("case", list(DENIED_SOLVES))
@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_a_denied_solve_fails_with_the_message_and_pulls_nothing(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
    case: str,
) -> None:
    dockerfile, attrs = DENIED_SOLVES[case]
    mark, offset = agent.mark(), registry_offset(docker_env)
    result, session = _build(agent, build_dirs(tmp_path, dockerfile), attrs)
    _assert_denied(
        agent, docker_env, denied_image_ids, result, since=(mark, offset), upfront=case in UPFRONT
    )
    if case in UPFRONT:  # the daemon never saw the solve, so never asked the session
        assert session.syncs == [], session.syncs


@pytest.mark.usefixtures("denied_image_absent")
def test_cache_imports_in_the_cache_options_are_refused_up_front(
    agent: AgentProcess, docker_env: DockerEnv, denied_image_ids: frozenset[str], tmp_path: Path
) -> None:
    mark, offset = agent.mark(), registry_offset(docker_env)
    with Session(agent.socket_path, build_dirs(tmp_path, "FROM alpine\n")) as session:
        request = dockerfile_solve_request(session.id, NO_NETWORK)
        request.Cache.Imports.add(Type="registry", Attrs={"ref": DENIED})
        request.Cache.ImportRefsDeprecated.append("acme/app")
        result = solve(agent.socket_path, request, timeout=SOLVE_TIMEOUT)
    _assert_denied(agent, docker_env, denied_image_ids, result, since=(mark, offset), upfront=True)
    assert session.syncs == []


# --------------------------------------------------------------------------- raw LLB


def _llb(image: str) -> llb_pb2.Definition:
    """A minimal LLB graph, as ``llb.Image(image).Marshal`` makes it: the image's source
    op (with its platform), then the terminal op naming it as input 0 by digest."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    source = llb_pb2.Op(source=llb_pb2.SourceOp(identifier=f"docker-image://{image}"))
    # Op.platform (10): Platform{Architecture (1), OS (2)}; not in the test protos.
    source_bytes = source.SerializeToString() + _field(
        10, _field(1, arch.encode()) + _field(2, b"linux")
    )
    digest = "sha256:" + hashlib.sha256(source_bytes).hexdigest()
    terminal = _field(1, _field(1, digest.encode()))  # Op.inputs: [Input{digest, index 0}]
    definition = llb_pb2.Definition()
    getattr(definition, "def").extend([source_bytes, terminal])
    return definition


def _llb_request(image: str, session: str) -> control_pb2.SolveRequest:
    request = control_pb2.SolveRequest(Ref=uuid.uuid4().hex, Session=session)
    request.Definition.CopyFrom(_llb(image))
    return request


@pytest.mark.usefixtures("denied_image_absent")
def test_a_raw_llb_solve_of_a_denied_image_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, denied_image_ids: frozenset[str], tmp_path: Path
) -> None:
    mark, offset = agent.mark(), registry_offset(docker_env)
    with Session(agent.socket_path, build_dirs(tmp_path, "")) as session:
        request = _llb_request(f"docker.io/{DENIED}:latest", session.id)
        result = solve(agent.socket_path, request, timeout=SOLVE_TIMEOUT)
    _assert_denied(agent, docker_env, denied_image_ids, result, since=(mark, offset), upfront=True)


@pytest.mark.usefixtures("alpine_local")
def test_a_raw_llb_solve_of_an_allowed_image_builds(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    """The hand-built graph is valid: the daemon solves it directly, and through the shim."""
    image = "docker.io/library/alpine:latest"
    with Session(docker_env.socket_path, build_dirs(tmp_path, "")) as session:
        direct = solve(docker_env.socket_path, _llb_request(image, session.id), timeout=30)
    assert direct.ok, direct
    mark = agent.mark()
    with Session(agent.socket_path, build_dirs(tmp_path, "")) as session:
        result = solve(agent.socket_path, _llb_request(image, session.id), timeout=30)
    assert result.ok, (result, agent.stderr_tail())
    assert session.syncs == []
    agent.wait_for_decision(
        lambda r: r.get("decision") == "allow" and r.get("image") == image, since=mark
    )


@pytest.mark.usefixtures("alpine_local")
def test_a_raw_llb_solve_without_a_session_builds(
    agent: AgentProcess, docker_env: DockerEnv
) -> None:
    image = "docker.io/library/alpine:latest"
    direct = solve(docker_env.socket_path, _llb_request(image, ""), timeout=30)
    assert direct.ok, direct
    result = solve(agent.socket_path, _llb_request(image, ""), timeout=30)
    assert result.ok, result


# --------------------------------------------------------------------------- frontends


def _foo_request(session: str) -> control_pb2.SolveRequest:
    request = dockerfile_solve_request(session, NO_NETWORK)
    request.Frontend = "foo.v0"
    return request


def test_an_unknown_frontend_follows_builds(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    dirs = build_dirs(tmp_path, "FROM alpine\n")
    mark = agent.mark()
    with Session(agent.socket_path, dirs) as session:
        denied = solve(agent.socket_path, _foo_request(session.id), timeout=SOLVE_TIMEOUT)
    assert denied.status == PERMISSION_DENIED, denied
    assert "frontend foo.v0" in denied.message and "builds: deny" in denied.message, denied
    agent.wait_for_decision(lambda r: r.get("decision") == "deny", since=mark)

    allowing = start_agent(tmp_path / "agent", docker_env.socket_path, shim_policy(builds="allow"))
    try:
        with Session(allowing.socket_path, dirs) as session:
            result = solve(allowing.socket_path, _foo_request(session.id), timeout=SOLVE_TIMEOUT)
            direct = solve(docker_env.socket_path, _foo_request(session.id), timeout=SOLVE_TIMEOUT)
        assert result.status == direct.status == UNKNOWN, (result, direct)
        assert "foo.v0" in result.message and "pullgate" not in result.message, result
        assert result.message == direct.message
    finally:
        allowing.stop()


# --------------------------------------------------------------------------- sessions


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_a_session_no_build_names_is_never_read_and_a_foreign_solve_of_it_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, denied_image_ids: frozenset[str], tmp_path: Path
) -> None:
    """A session through the shim that no solve names is only health-checked. The daemon
    knows it only by an id the shim minted, so a solve sent to the daemon directly,
    naming the id the client announced, finds no session at all: nothing is read."""
    dirs = build_dirs(tmp_path, f"FROM {DENIED}\nRUN true\n")
    with Session(agent.socket_path, dirs) as session:
        time.sleep(2.5)
        assert session.health_checks >= 1 and session.syncs == []
        assert not session.closed.is_set()
        offset = registry_offset(docker_env)
        request = dockerfile_solve_request(session.id, NO_NETWORK)
        result = solve(docker_env.socket_path, request, timeout=SOLVE_TIMEOUT)
        assert session.syncs == []
    assert result.status == UNKNOWN, result
    assert "no active session" in result.message, result
    assert not registry_fetches(docker_env, offset)
    _assert_alive(agent)


@pytest.mark.usefixtures("healthy")
def test_a_solve_naming_a_session_that_does_not_exist_fails(agent: AgentProcess) -> None:
    """The shim waits for the session as the daemon would (5 s), then refuses: a build
    whose Dockerfile comes from a session Pullgate does not relay cannot be read
    (``builds: deny``). Nothing is registered after the answer."""
    mark = agent.mark()
    request = dockerfile_solve_request(uuid.uuid4().hex, NO_NETWORK)
    result = solve(agent.socket_path, request, timeout=SOLVE_TIMEOUT)
    assert result.status == PERMISSION_DENIED, result
    assert "not relayed by Pullgate" in result.message, result
    assert "builds: deny" in result.message, result
    agent.wait_for_decision(lambda r: r.get("rule") == "builds", since=mark)


def _bypass_report(
    what: str, result: GrpcResult, session: Session, env: DockerEnv, offset: int
) -> str:
    syncs = [s.requested for s in session.syncs_of("dockerfile")]
    return (
        f"{what}: status {result.status} {result.message[:300]!r}; Dockerfile syncs seen by"
        f" the session: {syncs}; the daemon fetched from the mirror:"
        f" {[line[:160] for line in registry_fetches(env, offset)]}"
    )


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_a_session_opened_directly_with_the_solve_through_the_shim(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    """The daemon reads the Dockerfile from a session the client opened on the daemon's
    own socket: the shim never sees it, so it must not allow the Solve on trust."""
    offset = registry_offset(docker_env)
    dirs = build_dirs(tmp_path, f"FROM {DENIED}\nRUN true\n")
    result, session = _build(agent, dirs, session_via=docker_env.socket_path)
    assert result.status != 0 and not registry_fetches(docker_env, offset), _bypass_report(
        "solve through the shim, session direct", result, session, docker_env, offset
    )


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_a_second_solve_sharing_a_session_is_decided_with_its_own_args(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    """buildx bake shares one session between its builds."""
    dirs = build_dirs(tmp_path, "ARG BASE=alpine\nFROM ${BASE}\nRUN true\n")
    with Session(agent.socket_path, dirs) as session:
        first = solve(
            agent.socket_path, dockerfile_solve_request(session.id, NO_NETWORK), timeout=30
        )
        assert first.ok, (first, agent.stderr_tail())
        offset = registry_offset(docker_env)
        second = solve(
            agent.socket_path,
            dockerfile_solve_request(session.id, {**NO_NETWORK, "build-arg:BASE": DENIED}),
            timeout=30,
        )
    assert second.status != 0 and not registry_fetches(docker_env, offset), _bypass_report(
        "second solve in the session", second, session, docker_env, offset
    )


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_two_concurrent_solves_sharing_a_session(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
    report: Reporter,
) -> None:
    """Both solves are registered before the daemon asks for the Dockerfile: the sync is
    decided for both, so the denial of one fails the other too (stricter, never looser)."""
    dirs = build_dirs(tmp_path, "ARG BASE=alpine\nFROM ${BASE}\nRUN true\n")
    results: dict[str, GrpcResult | BaseException] = {}
    mark, offset = agent.mark(), registry_offset(docker_env)
    with Session(agent.socket_path, dirs) as session:
        requests = {
            "allowed": dockerfile_solve_request(session.id, NO_NETWORK),
            "denied": dockerfile_solve_request(
                session.id, {**NO_NETWORK, "build-arg:BASE": DENIED}
            ),
        }

        def run(name: str) -> None:
            try:
                results[name] = solve(agent.socket_path, requests[name], timeout=30)
            except BaseException as e:  # reported below
                results[name] = e

        threads = [threading.Thread(target=run, args=(n,)) for n in requests]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
    denied, allowed = results["denied"], results["allowed"]
    assert isinstance(denied, GrpcResult) and isinstance(allowed, GrpcResult), results
    report(
        f"two concurrent solves in one session: allowed one -> {allowed.status}"
        f" {allowed.message[-120:]!r}; Dockerfile syncs"
        f" {[s.requested for s in session.syncs_of('dockerfile')]}"
    )
    _assert_denied(agent, docker_env, denied_image_ids, denied, since=(mark, offset), upfront=False)
    assert allowed.ok or DENIAL.search(allowed.message), allowed


# --------------------------------------------------------------------------- hostile syncs


@pytest.mark.parametrize("base", ["alpine", DENIED])
@pytest.mark.usefixtures("healthy", "alpine_local")
def test_a_dockerfile_in_many_small_packets_is_decided(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
    base: str,
) -> None:
    """One byte of file a packet, five bytes of gRPC a DATA frame."""
    mark, offset = agent.mark(), registry_offset(docker_env)
    dirs = build_dirs(tmp_path, f"FROM {base}\nRUN echo tiny > /t\n")
    result, session = _build(agent, dirs, data_chunk=1, frame_size=5)
    (sync,) = session.syncs_of("dockerfile")
    assert sync.requested == ["Dockerfile"]
    if base == DENIED:
        _assert_denied(
            agent, docker_env, denied_image_ids, result, since=(mark, offset), upfront=False
        )
    else:
        assert result.ok, (result, agent.stderr_tail())
        assert sync.finished


@pytest.mark.usefixtures("healthy", "alpine_local")
def test_a_dockerfile_over_the_cap_is_refused_and_one_under_it_decided(
    agent: AgentProcess, docker_env: DockerEnv, denied_image_ids: frozenset[str], tmp_path: Path
) -> None:
    line = "# " + "x" * 1021 + "\n"  # 1 KiB
    result, _ = _build(agent, build_dirs(tmp_path / "huge", line * (5 << 10) + "FROM alpine\n"))
    assert result.status == UNKNOWN, result
    assert "error from sender: pullgate: " in result.message, result
    assert "more than 4194304 bytes" in result.message, result

    mark, offset = agent.mark(), registry_offset(docker_env)
    dirs = build_dirs(tmp_path / "under", line * (3 << 10) + f"FROM {DENIED}\n")
    result, _ = _build(agent, dirs)
    _assert_denied(agent, docker_env, denied_image_ids, result, since=(mark, offset), upfront=False)


@pytest.mark.parametrize("base", ["alpine", DENIED])
@pytest.mark.usefixtures("healthy", "alpine_local")
def test_a_client_that_closes_mid_sync_fails_its_build(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path, base: str
) -> None:
    offset = registry_offset(docker_env)
    padding = "# padding\n" * 20_000  # 200 kB: the session drops inside the Dockerfile
    dirs = build_dirs(tmp_path, f"FROM {base}\n{padding}")
    with Session(agent.socket_path, dirs, abort_after=100_000) as session:
        request = dockerfile_solve_request(session.id, NO_NETWORK)
        result = solve(agent.socket_path, request, timeout=SOLVE_TIMEOUT)
        assert session.closed.wait(5)
    assert result.status == UNKNOWN, result
    (sync,) = session.syncs_of("dockerfile")
    assert not sync.finished
    assert not registry_fetches(docker_env, offset)


# --------------------------------------------------------------------------- malformed HTTP/2


SETTINGS = frame(SETTINGS_TYPE, 0, 0, b"")
#: A frame that declares more than the 16 KiB the shim accepts, then delivers it: h2
#: checks a frame's length only once the whole frame is buffered.
OVERSIZED = frame(DATA, 0, 1, b"x" * (1 << 20))

#: What a hostile peer writes after the 101, by tunnel: (path, bytes). On ``/grpc`` the
#: client is the HTTP/2 client (preface first); on ``/session`` it is the server.
MALFORMED: dict[str, tuple[str, bytes]] = {
    "grpc-garbage-preface": ("/grpc", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 64),
    "grpc-settings-bad-length": ("/grpc", PREFACE + frame(SETTINGS_TYPE, 0, 0, b"\x00" * 5)),
    "grpc-ping-bad-length": ("/grpc", PREFACE + SETTINGS + frame(PING, 0, 0, b"\x00" * 7)),
    "grpc-oversized-frame": ("/grpc", PREFACE + SETTINGS + OVERSIZED),
    "grpc-data-on-stream-0": ("/grpc", PREFACE + SETTINGS + frame(DATA, 0, 0, b"abc")),
    "grpc-bad-hpack": ("/grpc", PREFACE + SETTINGS + frame(HEADERS, END_HEADERS, 1, b"\xff" * 9)),
    "grpc-data-before-headers": (
        "/grpc",
        PREFACE + SETTINGS + frame(DATA, END_STREAM, 1, b"hello"),
    ),
    "session-garbage": ("/session", b"\x00\x00\x05garbage!" + b"\xff" * 64),
    "session-settings-bad-length": ("/session", frame(SETTINGS_TYPE, 0, 0, b"\x00" * 5)),
    "session-oversized-frame": ("/session", SETTINGS + OVERSIZED),
    "session-data-on-stream-0": ("/session", SETTINGS + frame(DATA, 0, 0, b"abc")),
    "session-bad-hpack": ("/session", SETTINGS + frame(HEADERS, END_HEADERS, 1, b"\xff" * 9)),
    "session-data-on-unopened-stream": ("/session", SETTINGS + frame(DATA, END_STREAM, 2, b"hi")),
}


def _until_closed(sock: socket.socket, timeout: float) -> bool:
    """Read until the peer closes; False if it is still open after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.usefixtures("healthy")
def test_malformed_http2_ends_that_tunnel_only(
    agent: AgentProcess, tmp_path: Path, case: str
) -> None:
    path, payload = MALFORMED[case]
    with Session(agent.socket_path, build_dirs(tmp_path, "FROM alpine\n")) as bystander:
        sock, _ = raw_upgrade(agent.socket_path, path)
        with sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(payload)
            # On /session the shim is the HTTP/2 client, and h2 does not insist on the
            # server's SETTINGS first: garbage that reads as frames of unknown types is
            # ignored, a long declared length awaited; the daemon's failed health
            # checks (about 10 s) end that session.
            wait = 15 if case == "session-garbage" else 5
            assert _until_closed(sock, wait), f"{case}: the tunnel stayed open"
        checks = bystander.health_checks
        workers = unary(agent.socket_path, CONTROL_LIST_WORKERS, b"", timeout=10)
        assert workers.ok, workers
        deadline = time.monotonic() + 5
        while bystander.health_checks <= checks and time.monotonic() < deadline:
            time.sleep(0.1)
        assert bystander.health_checks > checks, "the other session stopped being served"
        assert not bystander.closed.is_set() and bystander.error is None


# --------------------------------------------------------------------------- flow control

RSS_GROWTH_KIB = 64 << 10


class _NoAckConnection(h2.connection.H2Connection):
    """Never opens a window again: the daemon's side stalls once it has filled ours."""

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        pass


@pytest.mark.usefixtures("healthy", "alpine_local")
def test_a_session_that_never_acknowledges_stalls_without_growing_the_agent(
    agent: AgentProcess, tmp_path: Path
) -> None:
    """10,000 files: the daemon's file requests (PACKET_REQ) outgrow the 64 KiB window
    the session grants, which it never reopens; the build waits, then fails when the
    session goes."""
    files = {f"f/{i:05d}": str(i) for i in range(10_000)}
    dirs = build_dirs(tmp_path, "FROM alpine\nCOPY f /f\n", files)
    before = rss_kib(agent.proc.pid)
    session = Session(agent.socket_path, dirs)
    session._conn = _NoAckConnection(
        h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    )
    outcome: list[GrpcResult | BaseException] = []

    def run() -> None:
        try:
            request = dockerfile_solve_request(session.id, NO_NETWORK)
            outcome.append(solve(agent.socket_path, request, timeout=30))
        except BaseException as e:  # reported below
            outcome.append(e)

    with session:
        solver = threading.Thread(target=run)
        solver.start()
        deadline = time.monotonic() + 15
        while not any(s.requested for s in session.syncs_of("context")):
            assert time.monotonic() < deadline and not outcome, outcome
            time.sleep(0.1)
        time.sleep(2)
        assert not outcome, f"the build did not stall: {outcome}"
        assert agent.running()
        grown = rss_kib(agent.proc.pid) - before
    solver.join(30)
    assert outcome and isinstance(outcome[0], GrpcResult), outcome
    assert outcome[0].status != 0, outcome
    assert grown < RSS_GROWTH_KIB, f"agent RSS grew by {grown} KiB"


@pytest.mark.usefixtures("healthy")
def test_a_client_that_ignores_its_window_is_bounded(agent: AgentProcess) -> None:
    """Sends 16 MiB of DATA frames after a ``Control/Status`` request without looking at
    a window. The shim relays to the daemon only as the daemon's window allows and
    reopens the client's only as bytes leave, so it holds at most the windows it grants:
    either the client overruns them (the tunnel ends: FLOW_CONTROL_ERROR) or the daemon
    keeps up and answers the call (``no such job``)."""
    before = rss_kib(agent.proc.pid)
    sock, conn = raw_grpc(agent.socket_path)
    with sock:
        conn.send_headers(1, call_headers("/moby.buildkit.v1.Control/Status"))
        status_request = control_pb2.BytesMessage(data=b"x").SerializeToString()  # Ref "x"
        out = conn.data_to_send() + frame(
            DATA, 0, 1, b"\x00" + struct.pack(">I", len(status_request)) + status_request
        )
        junk = frame(DATA, 0, 1, b"\x00" * 16384)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(out + junk * 1024)
        grown = rss_kib(agent.proc.pid) - before
        ended, deadline = False, time.monotonic() + 10
        while not ended and time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                ended = True  # the tunnel ended
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    ended = True
    assert ended, "neither the call nor the tunnel ended"
    assert grown < RSS_GROWTH_KIB, f"agent RSS grew by {grown} KiB"


@pytest.mark.usefixtures("healthy")
def test_unfinished_solve_requests_do_not_grow_the_agent_unboundedly(
    agent: AgentProcess,
) -> None:
    """Three Solve streams of 30 MiB each, never ended: held whole before decided."""
    before = rss_kib(agent.proc.pid)
    sock, conn = raw_grpc(agent.socket_path)
    chunk = b"\x0a" * 16384
    with sock:
        for sid in (1, 3, 5):
            conn.send_headers(sid, call_headers(CONTROL_SOLVE))
            sock.sendall(conn.data_to_send())
            # a prefix for one 32 MiB - 1 message, then 30 MiB of it
            sock.sendall(frame(DATA, 0, sid, b"\x00" + struct.pack(">I", (32 << 20) - 1)))
            for _ in range(30 << 6):
                sock.sendall(frame(DATA, 0, sid, chunk))
        time.sleep(0.5)
        grown = rss_kib(agent.proc.pid) - before
    assert grown < RSS_GROWTH_KIB, f"agent RSS grew by {grown} KiB holding unfinished requests"
