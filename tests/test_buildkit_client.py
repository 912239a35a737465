"""tests/buildkit_client.py works: BuildKit builds over `/session` + `/grpc` Control/Solve,
directly against the real daemon (no shim), and fsutil's walk order without one.

Also buildx's two differences, against the same daemon (Debian's dockerd 20.10, BuildKit
0.8): a session carried inside a `Control/Session` call on `/grpc` (grpchijack), and a
build run through the daemon's gateway forwarder (`Control/Solve` with no frontend, then
`LLBBridge` Ping / ResolveImageConfig / Solve / Return with the build id as metadata). This
daemon implements both."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.realdocker import DockerEnv, SeededImage
from tests.agent_process import Reporter
from tests.buildkit_client import (
    BUILD_ID_METADATA,
    CONTROL_LIST_WORKERS,
    DEFAULT_DATA_CHUNK,
    DIFFCOPY,
    GATEWAY_SOLVE,
    HEALTH_CHECK,
    TRANSPORT_GRPC,
    GrpcConnection,
    GrpcResult,
    Override,
    Session,
    build_dirs,
    dockerfile_solve_request,
    gateway_build,
    gateway_solve_request,
    read_gateway_message,
    solve,
    unary,
    walk,
)

SOLVE_TIMEOUT = 60.0
NO_NETWORK = {"force-network-mode": "none"}
"""The private daemon runs with --bridge=none: RUN steps get no network (as `--network none`)."""

DOCKERFILE = """\
FROM alpine
COPY hello.txt /hello.txt
COPY sub/ /sub/
RUN cat /hello.txt /sub/data.txt && echo built > /built
"""


@pytest.fixture
def daemon(docker_env: DockerEnv, seeded: dict[str, SeededImage]) -> Path:
    """The real daemon's socket, with `alpine` (busybox) on its registry mirror."""
    assert "alpine" in seeded
    return docker_env.socket_path


def _solve(
    daemon: Path,
    dirs: dict[str, Path],
    attrs: dict[str, str] | None = None,
    *,
    shared_key: str | None = None,
    data_chunk: int = DEFAULT_DATA_CHUNK,
    frame_size: int | None = None,
    override: Override | None = None,
) -> tuple[GrpcResult, Session]:
    """One Dockerfile build in a fresh session over `dirs`; the session is closed after."""
    with Session(
        daemon,
        dirs,
        shared_key=shared_key,
        data_chunk=data_chunk,
        frame_size=frame_size,
        override=override,
    ) as session:
        request = dockerfile_solve_request(session.id, {**NO_NETWORK, **(attrs or {})})
        result = solve(daemon, request, timeout=SOLVE_TIMEOUT)
    assert session.error is None, session.error
    assert session.closed.is_set() and not session.running
    return result, session


def _describe(session: Session) -> str:
    return "; ".join(
        f"{s.dir_name}: followpaths={s.followpaths} include={s.include_patterns} "
        f"exclude={s.exclude_patterns} sent={s.sent} requested={s.requested} fin={s.finished}"
        for s in session.syncs
    )


def test_list_workers_unary(daemon: Path) -> None:
    result = unary(daemon, CONTROL_LIST_WORKERS, b"", timeout=15)
    assert result.ok, result
    assert len(result.responses) == 1
    # ListWorkersResponse{record: [WorkerRecord{ID: "moby", platforms: [{OS: "linux"}...]}]}
    assert b"\x04moby" in result.responses[0]
    assert b"linux" in result.responses[0]


def test_unknown_method_is_unimplemented(daemon: Path) -> None:
    result = unary(daemon, "/moby.buildkit.v1.Control/NoSuchMethod", b"", timeout=15)
    assert result.status == 12, result


def test_solve_copies_and_runs_then_hits_the_cache(
    daemon: Path, tmp_path: Path, report: Reporter
) -> None:
    dirs = build_dirs(
        tmp_path, DOCKERFILE, {"hello.txt": "hello\n", "sub/data.txt": b"x" * 100_000}
    )
    first, session = _solve(daemon, dirs)
    assert first.ok, first
    report(f"buildkit session, first build: calls={sorted(set(session.calls))}")
    report(f"buildkit session, first build: {_describe(session)}")
    assert set(session.calls) - {HEALTH_CHECK} == {DIFFCOPY}  # a slow build sees a check
    assert {s.dir_name for s in session.syncs} >= {"dockerfile", "context"}
    (dockerfile_sync,) = session.syncs_of("dockerfile")
    # the frontend also accepts a lower-case `dockerfile` (moby/moby#10858)
    assert dockerfile_sync.followpaths == ["Dockerfile", "Dockerfile.dockerignore", "dockerfile"]
    assert dockerfile_sync.requested == ["Dockerfile"]
    assert all(s.finished for s in session.syncs)
    # the context is read twice: its .dockerignore, then only what COPY names
    dockerignore, context = session.syncs_of("context")
    assert dockerignore.followpaths == [".dockerignore"]
    assert dockerignore.sent == []
    assert context.followpaths == ["hello.txt", "sub"]
    assert context.requested == ["hello.txt", "sub/data.txt"]

    # The same build again, in a new session over the same dirs: the daemon's copy of the
    # locals is current, so no file is transferred again, and the build is a cache hit.
    second, again = _solve(daemon, dirs)
    assert second.ok, second
    report(f"buildkit session, second build: {_describe(again)}")
    assert all(not s.requested for s in again.syncs), _describe(again)

    # A changed Dockerfile (new modTime) is transferred again.
    (dirs["dockerfile"] / "Dockerfile").write_text(DOCKERFILE + "RUN true\n")
    third, changed = _solve(daemon, dirs)
    assert third.ok, third
    (dockerfile_sync,) = changed.syncs_of("dockerfile")
    assert dockerfile_sync.requested == ["Dockerfile"]


def test_missing_copy_source_fails_with_the_daemons_message(
    daemon: Path, tmp_path: Path, report: Reporter
) -> None:
    dirs = build_dirs(tmp_path, "FROM alpine\nCOPY missing.txt /\n", {"present.txt": "x"})
    result, _ = _solve(daemon, dirs)
    report(f"buildkit solve, missing COPY source: status={result.status} {result.message!r}")
    assert result.status != 0
    assert "missing.txt" in result.message


def test_frontend_attrs_reach_the_build(daemon: Path, tmp_path: Path) -> None:
    dockerfile = (
        'FROM alpine AS base\nARG WANT\nRUN test "$WANT" = yes\nFROM base AS broken\nRUN false\n'
    )
    dirs = build_dirs(tmp_path, "", {"build.Dockerfile": dockerfile})
    attrs = {"filename": "build.Dockerfile", "target": "base", "build-arg:WANT": "yes"}
    result, session = _solve(daemon, dirs, attrs=attrs)
    assert result.ok, result
    (dockerfile_sync,) = session.syncs_of("dockerfile")
    assert dockerfile_sync.requested == ["build.Dockerfile"]

    failed, _ = _solve(daemon, dirs, attrs={**attrs, "build-arg:WANT": "no"})
    assert failed.status != 0
    assert 'test "$WANT" = yes' in failed.message, failed
    assert "exit code: 1" in failed.message, failed


def test_syntax_directive_pulls_the_frontend_image(
    daemon: Path, tmp_path: Path, report: Reporter
) -> None:
    dirs = build_dirs(tmp_path, "# syntax=docker/dockerfile:1\nFROM alpine\n")
    result, session = _solve(daemon, dirs)
    report(f"buildkit solve, # syntax= offline: status={result.status} {result.message!r}")
    report(f"buildkit session, # syntax=: {_describe(session)}")
    assert result.status != 0
    assert "docker/dockerfile" in result.message


def test_small_frames_and_chunks_still_build(daemon: Path, tmp_path: Path) -> None:
    dirs = build_dirs(tmp_path, DOCKERFILE, {"hello.txt": "tiny\n", "sub/data.txt": "y" * 3000})
    result, session = _solve(daemon, dirs, data_chunk=7, frame_size=3, shared_key="small-frames")
    assert result.ok, result
    (context,) = [s for s in session.syncs_of("context") if "sub" in s.followpaths]
    assert context.requested == ["hello.txt", "sub/data.txt"]
    assert context.finished


def test_override_replaces_a_file_per_request(daemon: Path, tmp_path: Path) -> None:
    dirs = build_dirs(tmp_path, "FROM alpine\nCOPY hello.txt /\nRUN grep -q swapped /hello.txt\n")
    (dirs["context"] / "hello.txt").write_text("original\n")
    result, session = _solve(
        daemon,
        dirs,
        shared_key="override",
        override=lambda sync: {"hello.txt": b"swapped\n"} if sync.dir_name == "context" else None,
    )
    assert result.ok, result
    assert any("hello.txt" in s.requested for s in session.syncs_of("context"))


def test_abort_mid_stream_fails_the_build(daemon: Path, tmp_path: Path, report: Reporter) -> None:
    dirs = build_dirs(tmp_path, DOCKERFILE, {"hello.txt": "x", "sub/data.txt": b"z" * 300_000})
    with Session(daemon, dirs, shared_key="abort", abort_after=100_000) as session:
        request = dockerfile_solve_request(session.id, NO_NETWORK)
        result = solve(daemon, request, timeout=SOLVE_TIMEOUT)
        assert session.closed.wait(5)
    report(f"buildkit solve, session dropped mid-sync: status={result.status} {result.message!r}")
    assert result.status != 0, result
    (context,) = [s for s in session.syncs_of("context") if "sub" in s.followpaths]
    assert context.requested and not context.finished


def test_session_answers_health_checks(daemon: Path, tmp_path: Path) -> None:
    """The daemon checks a session's health every second and drops it on a failure."""
    with Session(daemon, build_dirs(tmp_path, "FROM alpine\n")) as session:
        deadline = time.monotonic() + 5
        while session.health_checks < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert session.health_checks >= 2
        assert not session.closed.is_set()
    assert session.calls == [HEALTH_CHECK] * session.health_checks
    assert session.error is None
    assert not session.running


def test_walk_order_matches_fsutil(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").write_text("1")
    (tmp_path / "a.txt").write_text("2")
    (tmp_path / "B").write_text("3")
    (tmp_path / "a" / "link").symlink_to("../a.txt")
    (tmp_path / "skip").mkdir()
    (tmp_path / "skip" / "keep").write_text("4")
    (tmp_path / "skip" / "drop").write_text("5")
    entries = walk(tmp_path)
    assert [s.path for s in entries] == [
        "B",
        "a",
        "a/b",
        "a/link",
        "a.txt",
        "skip",
        "skip/drop",
        "skip/keep",
    ]
    modes = {s.path: s.mode for s in entries}
    assert modes["a"] == 1 << 31 | (os.stat(tmp_path / "a").st_mode & 0o777)
    assert modes["a/link"] == 1 << 27 | 0o777
    assert [s.path for s in walk(tmp_path, exclude_patterns=["skip", "!skip/keep"])] == [
        "B",
        "a",
        "a/b",
        "a/link",
        "a.txt",
        "skip",
        "skip/keep",
    ]
    assert [s.path for s in walk(tmp_path, followpaths=["a/link", "B"])] == [
        "B",
        "a",
        "a/link",
        "a.txt",
    ]


# --------------------------------------------------------------------------- buildx's shape


def test_session_over_control_session_serves_a_build(
    daemon: Path, tmp_path: Path, report: Reporter
) -> None:
    """A session inside `Control/Session` on its own `/grpc` connection: the daemon
    checks its health and reads the locals from it as from `POST /session`."""
    dirs = build_dirs(tmp_path, DOCKERFILE, {"hello.txt": "nested\n", "sub/data.txt": "d" * 70_000})
    with Session(daemon, dirs, transport=TRANSPORT_GRPC, shared_key="nested") as session:
        deadline = time.monotonic() + 5
        while session.health_checks < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        request = dockerfile_solve_request(session.id, NO_NETWORK)
        result = solve(daemon, request, timeout=SOLVE_TIMEOUT)
        assert session.stream is not None and not session.stream.ended.is_set()
    assert result.ok, result
    assert session.error is None, session.error
    assert session.health_checks >= 1
    report(f"buildkit Control/Session: {_describe(session)}")
    (dockerfile_sync,) = session.syncs_of("dockerfile")
    assert dockerfile_sync.requested == ["Dockerfile"]
    (context,) = [s for s in session.syncs_of("context") if "sub" in s.followpaths]
    assert context.requested == ["hello.txt", "sub/data.txt"] and context.finished
    # closing the session ends the request side; the daemon then ends the call cleanly
    assert session.stream.result(5).ok


def test_small_frames_in_a_control_session_still_build(daemon: Path, tmp_path: Path) -> None:
    """Each tiny HTTP/2 write of the session is a BytesMessage of its own."""
    dirs = build_dirs(tmp_path, DOCKERFILE, {"hello.txt": "tiny\n", "sub/data.txt": "t" * 2000})
    with Session(
        daemon, dirs, transport=TRANSPORT_GRPC, frame_size=3, data_chunk=7, shared_key="tiny"
    ) as session:
        result = solve(daemon, dockerfile_solve_request(session.id, NO_NETWORK), timeout=60)
    assert result.ok, result
    assert session.error is None


def test_a_buildx_shaped_build_runs_through_the_gateway_forwarder(
    daemon: Path, tmp_path: Path, report: Reporter
) -> None:
    """One `/grpc` connection for everything, as buildx: the session in `Control/Session`,
    the build's `Control/Solve` held open by the daemon's gateway forwarder until the
    client's `LLBBridge/Return`. The gateway solve returns the Dockerfile's LLB lazily: a
    failing RUN fails the `Control/Solve`, not the gateway solve."""
    dockerfile = 'FROM alpine\nARG WANT\nCOPY hello.txt /\nRUN test "$WANT" = yes\n'
    dirs = build_dirs(tmp_path, dockerfile, {"hello.txt": "gateway\n"})
    started = time.monotonic()
    with (
        GrpcConnection(daemon) as conn,
        Session(daemon, dirs, transport=TRANSPORT_GRPC, connection=conn) as session,
    ):
        built = gateway_build(
            conn,
            session.id,
            {**NO_NETWORK, "build-arg:WANT": "yes"},
            resolve=["docker.io/library/alpine:latest"],
            timeout=SOLVE_TIMEOUT,
        )
        report(f"buildkit gateway build: {built.describe()} {time.monotonic() - started:.2f} s")
        assert built.ok, built.describe()
        assert built.ping.ok and built.gateway_solve is not None and built.gateway_solve.ok
        assert built.returned is not None and built.returned.ok
        assert built.status_messages > 0
        (resolved,) = built.resolved
        assert resolved.ok, resolved
        config = read_gateway_message("ResolveImageConfigResponse", resolved.responses[0])
        # From the registry it comes with its digest; an image already in the daemon's
        # store (an earlier test pulled alpine) resolves locally, without one.
        assert config.get("Config"), config
        assert config.get("Digest", "sha256:").startswith("sha256:"), config
        (dockerfile_sync,) = session.syncs_of("dockerfile")
        assert dockerfile_sync.requested == ["Dockerfile"]

        failed = gateway_build(
            conn, session.id, {**NO_NETWORK, "build-arg:WANT": "no"}, timeout=SOLVE_TIMEOUT
        )
    report(f"buildkit gateway build, failing RUN: {failed.describe()}")
    assert failed.gateway_solve is not None and failed.gateway_solve.ok
    assert failed.solve is not None and failed.solve.status == 2, failed.describe()
    assert 'test "$WANT" = yes' in failed.solve.message
    assert session.error is None and conn.error is None


def test_a_gateway_call_naming_no_build_is_refused_by_the_daemon(daemon: Path) -> None:
    """The forwarder waits 3 s for the build id to appear, then refuses the call."""
    with GrpcConnection(daemon) as conn:
        started = time.monotonic()
        result = conn.unary(
            GATEWAY_SOLVE,
            gateway_solve_request({}),
            metadata=[(BUILD_ID_METADATA, "no-such-build")],
            timeout=20,
        )
    assert result.status == 2, result
    assert "no such job no-such-build" in result.message
    assert time.monotonic() - started >= 2.5
