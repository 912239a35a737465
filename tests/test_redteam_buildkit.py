"""Red-team proofs of concept: builds through the shim's socket that make the real daemon
(dockerd 20.10.24, BuildKit v0.8.4-0.20221020190723-eeb7b65ab7d6, fsutil 0834f99) fetch an
image the policy denies.

Each test asserts what must hold (the daemon asked the registry mirror for nothing
denied); each was a strict xfail until its bypass was closed. Evidence is taken from the daemon's
side: the registry mirror's log of ``/v2/<repository>/`` requests (BuildKit keeps what it
pulls in its own store, not as images) and, for the classic builder, the daemon's images.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import tarfile
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from agent.core.inspection.buildkit.protos import control_pb2
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
    unix_request,
)
from tests.buildkit_client import (
    CONTROL_SOLVE,
    GrpcResult,
    Session,
    build_dirs,
    dockerfile_solve_request,
    unary,
)
from tests.h2_probe import (
    registry_fetches,
    registry_offset,
)

DENIED = "someuser/tool"
#: The helper image BuildKit v0.8's Dockerfile frontend runs COPY/ADD in when FileOp is
#: disabled: a Docker Hub community repository to this policy (only ``library/`` is
#: official, ``verifiedco`` the verified publisher).
COPY_HELPER_REPOSITORY = "docker/dockerfile-copy"
NO_NETWORK = {"force-network-mode": "none"}
SOLVE_TIMEOUT = 60.0

pytestmark = pytest.mark.usefixtures("seeded")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    """Enforce, community denied, ``builds: deny`` (the default)."""
    shim = start_agent(
        tmp_path_factory.mktemp("redteam-buildkit"), docker_env.socket_path, shim_policy()
    )
    try:
        yield shim
    finally:
        shim.stop()


# --------------------------------------------------------------------------- helpers


def _tag() -> str:
    return f"acme/pgtest-redteam-{uuid.uuid4().hex[:8]}"


def _solve(agent: AgentProcess, request: control_pb2.SolveRequest) -> GrpcResult:
    return unary(
        agent.socket_path, CONTROL_SOLVE, request.SerializeToString(), timeout=SOLVE_TIMEOUT
    )


def _cli_build(agent: AgentProcess, env: DockerEnv, ctx: Path, *args: str) -> tuple[int, str]:
    """``docker build`` (Debian CLI 20.10, built-in BuildKit) through the shim."""
    tag = _tag()
    try:
        result = docker_with(
            {**shim_environ(agent, env), "DOCKER_BUILDKIT": "1"},
            *("build", "--network", "none", "--progress", "plain", "-t", tag, *args, str(ctx)),
            cli=DEBIAN_DOCKER_CLI,
        )
        return result.returncode, describe(result, agent)
    finally:
        docker(env, "image", "rm", "--force", tag, check=False)


def _context(root: Path, files: Mapping[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def _multipart(boundary: str, fields: Mapping[str, str]) -> bytes:
    out = b""
    for name, value in fields.items():
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    return out + f"--{boundary}--\r\n".encode()


@contextlib.contextmanager
def _serve_text(body: str) -> Iterator[str]:
    """An HTTP server on loopback answering every GET with ``body`` as text/plain."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/Dockerfile"
    finally:
        server.shutdown()
        server.server_close()


def _report(what: str, detail: str, fetched: list[str]) -> str:
    return f"{what}: the daemon fetched {fetched}; build said: {detail[-600:]}"


# --------------------------------------------------------------------------- findings


@pytest.fixture
def frontend_allowed_agent(docker_env: DockerEnv, tmp_path: Path) -> Iterator[AgentProcess]:
    """The same policy with the ``docker`` namespace a verified publisher, as a site that
    lets developers use ``# syntax=docker/dockerfile`` would configure it."""
    policy = shim_policy()
    policy["hub"]["verified_publisher_namespaces"] = ["verifiedco", "docker"]
    shim = start_agent(tmp_path / "agent", docker_env.socket_path, policy)
    try:
        yield shim
    finally:
        shim.stop()


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_an_unknown_directive_before_syntax_hides_a_denied_frontend(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    ctx = _context(
        tmp_path / "ctx",
        {"Dockerfile": f"# foo=bar\n# syntax={DENIED}\nFROM alpine\nRUN true\n"},
    )
    offset = registry_offset(docker_env)
    _, said = _cli_build(agent, docker_env, ctx)
    fetched = registry_fetches(docker_env, offset)
    assert not fetched, _report("docker build (CLI)", said, fetched)


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_build_args_in_a_multipart_body_of_build_v2(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    """Held: the shim relays the body of ``/build?version=2`` unread and refuses only
    urlencoded bodies, but dockerd 20.10.24 reads no form values from a /build body at
    all (even an urlencoded ``buildargs={`` goes unparsed), so a multipart ``buildargs``
    is ignored. Kept as a regression check should a daemon start honouring it."""
    dirs = build_dirs(tmp_path, "ARG BASE=alpine\nFROM ${BASE}\nRUN true\n")
    boundary = uuid.uuid4().hex
    body = _multipart(boundary, {"buildargs": json.dumps({"BASE": DENIED})})
    offset = registry_offset(docker_env)
    with Session(agent.socket_path, dirs) as session:
        target = (
            f"/v1.41/build?version=2&remote=client-session&session={session.id}"
            f"&networkmode=none&buildid={uuid.uuid4().hex}"
        )
        status, _, answer = unix_request(
            agent.socket_path,
            "POST",
            target,
            body=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=SOLVE_TIMEOUT,
        )
    fetched = registry_fetches(docker_env, offset)
    assert not fetched, _report(f"POST /build?version=2 -> {status}", answer.decode(), fetched)


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_a_classic_build_body_that_is_also_a_multipart_form(
    agent: AgentProcess, docker_env: DockerEnv, denied_image_ids: frozenset[str]
) -> None:
    """Held: a tar context (benign Dockerfile) that Go's multipart reader would also read
    as a form naming ``remote`` (a Dockerfile served on loopback). The daemon builds the
    tar's Dockerfile: it does not read form values from the body."""
    boundary = uuid.uuid4().hex
    with _serve_text(f"FROM {DENIED}\nRUN true\n") as url:
        form = b"\r\n" + _multipart(boundary, {"remote": url})
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in (("form.txt", form), ("Dockerfile", b"FROM alpine\nRUN true\n")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        offset = registry_offset(docker_env)
        tag = _tag()
        try:
            status, _, answer = unix_request(
                agent.socket_path,
                "POST",
                f"/v1.41/build?t={tag}&networkmode=none",
                body=archive.getvalue(),
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                timeout=SOLVE_TIMEOUT,
            )
        finally:
            docker(docker_env, "image", "rm", "--force", tag, check=False)
    fetched = registry_fetches(docker_env, offset)
    held = images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)
    assert not fetched and not held, _report(
        f"classic POST /build -> {status}, daemon holds {held}", answer.decode(), fetched
    )


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_override_copy_image_pulls_a_denied_image(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    dirs = build_dirs(tmp_path, "FROM alpine\nCOPY hello.txt /hello.txt\n", {"hello.txt": "hi\n"})
    attrs = {
        **NO_NETWORK,
        "override-copy-image": DENIED,
        "build-arg:BUILDKIT_DISABLE_FILEOP": "1",
    }
    offset = registry_offset(docker_env)
    with Session(agent.socket_path, dirs) as session:
        result = _solve(agent, dockerfile_solve_request(session.id, attrs))
    fetched = registry_fetches(docker_env, offset)
    assert not fetched, _report("Control/Solve", f"{result.status} {result.message}", fetched)


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_a_second_syntax_line_wins_on_the_daemon(
    frontend_allowed_agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    dockerfile = (
        f"# syntax=docker/dockerfile:1.2\n# foo=bar\n# syntax={DENIED}\nFROM alpine\nRUN true\n"
    )
    ctx = _context(tmp_path / "ctx", {"Dockerfile": dockerfile})
    offset = registry_offset(docker_env)
    _, said = _cli_build(frontend_allowed_agent, docker_env, ctx)
    fetched = registry_fetches(docker_env, offset)
    assert not fetched, _report("docker build (CLI)", said, fetched)


@pytest.mark.usefixtures("alpine_local")
def test_disable_fileop_fetches_the_copy_helper_image(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    ctx = _context(
        tmp_path / "ctx", {"Dockerfile": "FROM alpine\nCOPY a.txt /a.txt\n", "a.txt": "a\n"}
    )
    offset = registry_offset(docker_env)
    _, said = _cli_build(agent, docker_env, ctx, "--build-arg", "BUILDKIT_DISABLE_FILEOP=1")
    fetched = registry_fetches(docker_env, offset, COPY_HELPER_REPOSITORY)
    assert not fetched, _report("docker build --build-arg BUILDKIT_DISABLE_FILEOP=1", said, fetched)


@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_local_sessionid_points_the_shim_at_the_wrong_session(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path
) -> None:
    evil = build_dirs(tmp_path / "evil", f"FROM {DENIED}\nRUN true\n")
    decoy = build_dirs(tmp_path / "decoy", "FROM alpine\nRUN true\n")
    offset = registry_offset(docker_env)
    with (
        Session(agent.socket_path, {"context": evil["context"], "df": evil["context"]}) as real,
        Session(agent.socket_path, {"context": decoy["context"], "df": decoy["context"]}) as shown,
    ):
        attrs = {**NO_NETWORK, "dockerfilekey": "df", "local-sessionid:df": shown.id}
        result = _solve(agent, dockerfile_solve_request(real.id, attrs))
    fetched = registry_fetches(docker_env, offset)
    assert not fetched, _report(
        "Control/Solve",
        f"{result.status} {result.message}; syncs of the real session "
        f"{[s.requested for s in real.syncs_of('df')]}, of the decoy "
        f"{[s.requested for s in shown.syncs_of('df')]}",
        fetched,
    )
