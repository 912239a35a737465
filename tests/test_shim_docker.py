"""`pullgate agent` in front of a real dockerd, driven by real clients (issue 3, "Done when").

The docker CLI 28 (API 1.41 against dockerd 20.10), Debian's CLI 20.10 for BuildKit,
docker-py and docker-compose talk to the shim's socket; the daemon is asked directly
afterwards what it holds. The seeded registry mirror serves `alpine`, `nginx` (official),
`acme/app` (the org's), `verifiedco/db` (verified publisher) and `someuser/tool` (community:
denied by the test policy, and the image no test may ever get into the daemon through the
shim).
"""

from __future__ import annotations

import gzip
import importlib
import io
import subprocess
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bench.realdocker import DockerEnv, SeededImage, docker, image_present
from tests.agent_process import (
    DENIED_REPOSITORY,
    AgentProcess,
    LineStream,
    Reporter,
    describe,
    docker_popen_with,
    docker_via,
    docker_with,
    images_of,
    reap,
    remove_images,
    shim_environ,
    shim_policy,
    skip_or_fail,
    start_agent,
    unix_request,
)

DENIED = "someuser/tool"
DENIED_CANONICAL = "docker.io/someuser/tool:latest"
DENIED_MESSAGE = "Error response from daemon: pullgate:"
FORBIDDEN_PHRASES = ("no such file or directory", "permission denied")

RULES = [
    {
        "id": "db-legacy-eol",
        "match": "verifiedco/db:legacy",
        "action": "deny",
        "message": "verifiedco/db:legacy is end-of-life, use verifiedco/db:latest",
    }
]

pytestmark = pytest.mark.usefixtures("seeded")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory, report: Reporter
) -> Iterator[AgentProcess]:
    """The module's shim: enforce, builds deny, load check, on_create check, one rule."""
    shim = start_agent(
        tmp_path_factory.mktemp("shim-docker"), docker_env.socket_path, shim_policy(rules=RULES)
    )
    report(f"shim: agent answered /_ping {shim.ready_seconds:.2f} s after start")
    try:
        yield shim
    finally:
        shim.stop()


class AgentStarter:
    """Starts further agents for one test, each with its own policy; stops them after."""

    def __init__(self, env: DockerEnv, base: Path) -> None:
        self._env = env
        self._base = base
        self._started: list[AgentProcess] = []

    def start(
        self,
        *,
        upstream: Path | None = None,
        expect_ping_ok: bool = True,
        **policy_overrides: Any,
    ) -> AgentProcess:
        shim = start_agent(
            self._base,
            upstream or self._env.socket_path,
            shim_policy(**policy_overrides),
            expect_ping_ok=expect_ping_ok,
        )
        self._started.append(shim)
        return shim

    def stop_all(self) -> None:
        errors: list[str] = []
        for shim in self._started:
            try:
                shim.stop()
            except AssertionError as e:
                errors.append(str(e))
        assert not errors, "\n\n".join(errors)


@pytest.fixture
def agents(docker_env: DockerEnv, tmp_path: Path) -> Iterator[AgentStarter]:
    starter = AgentStarter(docker_env, tmp_path / "agents")
    yield starter
    starter.stop_all()


@pytest.fixture
def denied_present(docker_env: DockerEnv, denied_image_absent: None) -> str:
    """someuser/tool pulled directly into the daemon (as if before the policy); its ID."""
    docker(docker_env, "pull", DENIED)
    return docker(docker_env, "image", "inspect", "--format", "{{.Id}}", DENIED).stdout.strip()


def assert_denied(
    result: subprocess.CompletedProcess[str], agent: AgentProcess, *names: str
) -> None:
    """A non-zero exit with the pullgate denial, naming `names`, on the CLI's stderr."""
    assert result.returncode != 0, describe(result, agent)
    assert DENIED_MESSAGE in result.stderr, describe(result, agent)
    for name in names:
        assert name in result.stderr, describe(result, agent)
    for phrase in FORBIDDEN_PHRASES:
        assert phrase not in result.stderr.lower(), describe(result, agent)


def assert_never_pulled(env: DockerEnv, ids: frozenset[str], agent: AgentProcess) -> None:
    found = images_of(env, DENIED_REPOSITORY, ids)
    assert not found, (
        f"the daemon holds {DENIED_REPOSITORY}: {found}\nagent stderr tail:\n{agent.stderr_tail()}"
    )


def is_denial_of(image: str) -> Callable[[dict[str, Any]], bool]:
    def matches(record: dict[str, Any]) -> bool:
        return record.get("decision") == "deny" and record.get("image") == image

    return matches


# --------------------------------------------------------------------------- pulls


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("alpine", "docker.io/library/alpine:latest"),
        ("nginx", "docker.io/library/nginx:latest"),
        ("acme/app", "docker.io/acme/app:latest"),
        ("verifiedco/db", "docker.io/verifiedco/db:latest"),
    ],
)
def test_allowed_pull_succeeds_and_is_recorded(
    agent: AgentProcess,
    docker_env: DockerEnv,
    seeded: dict[str, SeededImage],
    name: str,
    canonical: str,
) -> None:
    docker(docker_env, "image", "rm", "--force", name, check=False)
    mark = agent.mark()

    result = docker_via(agent, docker_env, "pull", name)

    assert result.returncode == 0, describe(result, agent)
    assert f"Digest: {seeded[name].digest}" in result.stdout, describe(result, agent)
    assert image_present(docker_env, name)
    agent.wait_for_decision(
        lambda r: r.get("decision") == "allow" and r.get("image") == canonical, since=mark
    )


@pytest.mark.usefixtures("denied_image_absent")
def test_community_pull_is_refused_with_the_pullgate_message(
    agent: AgentProcess, docker_env: DockerEnv, denied_image_ids: frozenset[str]
) -> None:
    mark = agent.mark()

    result = docker_via(agent, docker_env, "pull", DENIED)

    assert_denied(result, agent, DENIED_CANONICAL, "community")
    assert_never_pulled(docker_env, denied_image_ids, agent)
    agent.wait_for_decision(is_denial_of(DENIED_CANONICAL), since=mark)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--all-tags", DENIED], id="all-tags"),
        pytest.param(["-a", f"docker.io/{DENIED}"], id="all-tags-docker.io"),
        pytest.param([f"{DENIED}@{{digest}}"], id="by-digest"),
        pytest.param([f"{DENIED}:1.0"], id="other-tag"),
        pytest.param([f"registry-1.docker.io/{DENIED}"], id="alias-registry-1"),
        pytest.param([f"index.docker.io/{DENIED}"], id="alias-index"),
        pytest.param([f"registry.hub.docker.com/{DENIED}"], id="alias-registry-hub"),
        pytest.param([f"docker.io/{DENIED}:latest"], id="fully-qualified"),
    ],
)
@pytest.mark.usefixtures("denied_image_absent")
def test_every_form_of_a_denied_pull_is_refused(
    agent: AgentProcess,
    docker_env: DockerEnv,
    seeded: dict[str, SeededImage],
    denied_image_ids: frozenset[str],
    args: list[str],
) -> None:
    argv = [a.replace("{digest}", seeded[DENIED].digest) for a in args]

    result = docker_via(agent, docker_env, "pull", *argv)

    assert_denied(result, agent, DENIED)
    assert_never_pulled(docker_env, denied_image_ids, agent)


def test_denial_suggests_the_official_image_of_the_same_name(
    agent: AgentProcess, docker_env: DockerEnv
) -> None:
    docker(docker_env, "image", "rm", "--force", "someuser/nginx", check=False)

    result = docker_via(agent, docker_env, "pull", "someuser/nginx")

    assert_denied(result, agent, "docker.io/someuser/nginx:latest", "'nginx'")
    assert not images_of(docker_env, "someuser/nginx")


def test_rule_message_reaches_the_cli(agent: AgentProcess, docker_env: DockerEnv) -> None:
    result = docker_via(agent, docker_env, "pull", "verifiedco/db:legacy")

    assert_denied(result, agent, "docker.io/verifiedco/db:legacy", "end-of-life")


# --------------------------------------------------------------------------- containers


@pytest.mark.usefixtures("denied_image_absent")
def test_run_of_a_denied_image_is_refused_before_any_pull(
    agent: AgentProcess, docker_env: DockerEnv, denied_image_ids: frozenset[str]
) -> None:
    result = docker_via(agent, docker_env, "run", "--rm", "--network", "none", DENIED, "true")

    assert_denied(result, agent, DENIED)
    assert result.returncode == 125, describe(result, agent)
    assert_never_pulled(docker_env, denied_image_ids, agent)


@pytest.mark.parametrize("form", ["name", "full-id", "short-id"])
def test_run_of_a_denied_image_already_present_is_refused_under_on_create_check(
    agent: AgentProcess, docker_env: DockerEnv, denied_present: str, form: str
) -> None:
    image = {"name": DENIED, "full-id": denied_present, "short-id": denied_present[7:19]}[form]

    result = docker_via(agent, docker_env, "run", "--rm", "--network", "none", image, "true")

    assert_denied(result, agent, DENIED)
    assert result.returncode == 125, describe(result, agent)
    created = docker(docker_env, "ps", "--all", "--quiet", "--filter", f"ancestor={DENIED}")
    assert created.stdout.strip() == "", "a container was created from the denied image"


def test_run_of_a_denied_image_already_present_works_under_on_create_allow(
    agents: AgentStarter, docker_env: DockerEnv, denied_present: str
) -> None:
    shim = agents.start(on_create="allow", rules=RULES)

    result = docker_via(
        shim, docker_env, "run", "--rm", "--network", "none", DENIED, "cat", "/pullgate-image"
    )

    assert result.returncode == 0, describe(result, shim)
    assert result.stdout == f"{DENIED_CANONICAL}\n", describe(result, shim)


# --------------------------------------------------------------------------- classic builds


def _tar(files: Mapping[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write_context(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLASSIC = {"DOCKER_BUILDKIT": "0"}

DENIED_BUILDS: dict[str, tuple[dict[str, str], list[str], str]] = {
    # id: (context files, extra build args, how the context is given: dir | tar | tgz | file)
    "from": ({"Dockerfile": f"FROM {DENIED}\nRUN true\n"}, [], "dir"),
    "lower-case-from": ({"Dockerfile": f"from {DENIED}:latest as base\n"}, [], "dir"),
    "arg-from": ({"Dockerfile": f"ARG BASE={DENIED}\nFROM $BASE\nRUN true\n"}, [], "dir"),
    "build-arg-over-allowed-default": (
        {"Dockerfile": "ARG BASE=alpine\nFROM ${BASE}\nRUN true\n"},
        ["--build-arg", f"BASE={DENIED}"],
        "dir",
    ),
    "later-stage": (
        {
            "Dockerfile": (
                "FROM alpine AS first\nRUN echo one > /one\n"
                f"FROM {DENIED}\nCOPY --from=first /one /one\n"
            )
        },
        [],
        "dir",
    ),
    "copy-from": (
        {"Dockerfile": f"FROM alpine\nCOPY --from={DENIED} /bin/busybox /x\n"},
        [],
        "dir",
    ),
    "dockerfile-in-subdirectory": (
        {"Dockerfile": "FROM alpine\n", "sub/Dockerfile.tool": f"FROM {DENIED}\nRUN true\n"},
        ["-f", "{ctx}/sub/Dockerfile.tool"],
        "dir",
    ),
    "context-tar-on-stdin": ({"Dockerfile": f"FROM {DENIED}\nRUN true\n"}, [], "tar"),
    "context-tar-gz-on-stdin": (
        {"Dockerfile": f"FROM {DENIED}\nRUN true\n", "data.txt": "x" * 10000},
        [],
        "tgz",
    ),
    "dockerfile-on-stdin": ({"Dockerfile": f"FROM {DENIED}\nRUN true\n"}, [], "file"),
    # The Dockerfile comes first in the context tar, 16 MB follow it: the refusal, decided
    # early, must still reach the CLI while it is sending the rest.
    "large-context": (
        {"Dockerfile": f"FROM {DENIED}\nRUN true\n", "large.txt": "x" * (16 << 20)},
        [],
        "dir",
    ),
}


def _build(
    shim: AgentProcess,
    env: DockerEnv,
    *,
    root: Path,
    files: Mapping[str, str],
    args: list[str],
    given: str,
    tag: str,
) -> subprocess.CompletedProcess[str]:
    ctx = _write_context(root / "ctx", files)
    argv = ["build", "--network", "none", "-t", tag, *[a.replace("{ctx}", str(ctx)) for a in args]]
    if given == "dir":
        return docker_via(shim, env, *argv, str(ctx), extra_env=CLASSIC)
    if given == "tar":
        data = _tar(files)
    elif given == "tgz":
        data = gzip.compress(_tar(files))
    else:
        data = files["Dockerfile"].encode()
    return docker_via(shim, env, *argv, "-", input=data, extra_env=CLASSIC)


@pytest.mark.parametrize("case", list(DENIED_BUILDS))
@pytest.mark.usefixtures("denied_image_absent", "alpine_local")
def test_classic_build_of_a_denied_image_is_refused(
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
    case: str,
) -> None:
    files, args, given = DENIED_BUILDS[case]
    tag = f"acme/pgtest-denied-{uuid.uuid4().hex[:8]}"
    mark = agent.mark()

    result = _build(agent, docker_env, root=tmp_path, files=files, args=args, given=given, tag=tag)

    assert result.returncode != 0, describe(result, agent)
    assert "pullgate:" in result.stdout + result.stderr, describe(result, agent)
    assert_never_pulled(docker_env, denied_image_ids, agent)
    assert not image_present(docker_env, tag)
    agent.wait_for_decision(is_denial_of(DENIED_CANONICAL), since=mark)


@pytest.mark.parametrize("given", ["dir", "tgz"])
def test_classic_build_from_an_allowed_image_produces_the_image(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path, given: str
) -> None:
    docker(docker_env, "image", "rm", "--force", "acme/app", check=False)
    files = {"Dockerfile": "FROM acme/app\nCOPY hello.txt /hello.txt\n", "hello.txt": "built\n"}
    tag = f"acme/pgtest-built-{uuid.uuid4().hex[:8]}"
    try:
        result = _build(
            agent, docker_env, root=tmp_path, files=files, args=[], given=given, tag=tag
        )

        assert result.returncode == 0, describe(result, agent)
        content = docker(docker_env, "run", "--rm", "--network", "none", tag, "cat", "/hello.txt")
        assert content.stdout == "built\n"
    finally:
        docker(docker_env, "image", "rm", "--force", tag, check=False)


# --------------------------------------------------------------------------- BuildKit
# Builds the shim can read are decided by what they pull (tests/test_shim_buildkit.py);
# `builds` decides only what it cannot read, such as a context the daemon fetches itself.

REMOTE_BUILD = "/build?version=2&remote=https%3A%2F%2Fgit.example.invalid%2Frepo.git&session=s1"


def test_an_unreadable_buildkit_build_is_refused_and_recorded_when_builds_is_deny(
    agent: AgentProcess,
) -> None:
    mark = agent.mark()

    status, _, body = unix_request(agent.socket_path, "POST", REMOTE_BUILD)

    assert status == 403, body
    assert b"builds: deny" in body
    agent.wait_for_decision(
        lambda r: r.get("decision") == "deny" and r.get("rule") == "builds", since=mark
    )


def test_an_unreadable_buildkit_build_goes_to_the_daemon_when_builds_is_allow(
    agents: AgentStarter,
) -> None:
    shim = agents.start(builds="allow")
    mark = shim.mark()

    status, _, body = unix_request(shim.socket_path, "POST", REMOTE_BUILD, timeout=60)

    # The daemon itself answers (it cannot fetch the context here): not the shim's 403.
    assert status != 403 or b"pullgate" not in body, body
    shim.wait_for_decision(
        lambda r: r.get("decision") == "allow" and r.get("rule") == "builds", since=mark
    )


# --------------------------------------------------------------------------- load / import


@pytest.fixture(scope="module")
def saved(
    docker_env: DockerEnv,
    seeded: dict[str, SeededImage],
    denied_image_ids: frozenset[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """`docker save` tars taken directly from the daemon: the denied someuser/tool:1.0, the
    allowed acme/app, both in one tar; and a root file system tar for `docker import`."""
    root = tmp_path_factory.mktemp("saved")
    docker(docker_env, "pull", f"{DENIED}:1.0")
    docker(docker_env, "pull", "acme/app")
    tars = {"denied": root / "tool.tar", "allowed": root / "app.tar", "mixed": root / "mixed.tar"}
    docker(docker_env, "save", "-o", str(tars["denied"]), f"{DENIED}:1.0")
    docker(docker_env, "save", "-o", str(tars["allowed"]), "acme/app:latest")
    docker(docker_env, "save", "-o", str(tars["mixed"]), "acme/app:latest", f"{DENIED}:1.0")
    remove_images(docker_env, DENIED_REPOSITORY, denied_image_ids)
    tars["rootfs"] = root / "rootfs.tar"
    tars["rootfs"].write_bytes(_tar({"hello.txt": "imported\n"}))
    return tars


@pytest.mark.usefixtures("denied_image_absent")
def test_load_of_a_denied_image_is_refused_under_load_check(
    agent: AgentProcess,
    docker_env: DockerEnv,
    saved: dict[str, Path],
    denied_image_ids: frozenset[str],
) -> None:
    result = docker_via(agent, docker_env, "load", "-i", str(saved["denied"]))

    assert_denied(result, agent, f"docker.io/{DENIED}:1.0")
    assert_never_pulled(docker_env, denied_image_ids, agent)


@pytest.mark.usefixtures("denied_image_absent")
def test_load_of_a_tar_with_one_denied_image_among_allowed_is_refused(
    agent: AgentProcess,
    docker_env: DockerEnv,
    saved: dict[str, Path],
    denied_image_ids: frozenset[str],
) -> None:
    result = docker_via(agent, docker_env, "load", "-i", str(saved["mixed"]))

    assert_denied(result, agent, f"docker.io/{DENIED}:1.0")
    assert_never_pulled(docker_env, denied_image_ids, agent)


def test_load_of_only_allowed_images_passes_under_load_check(
    agent: AgentProcess, docker_env: DockerEnv, saved: dict[str, Path]
) -> None:
    docker(docker_env, "image", "rm", "--force", "acme/app", check=False)

    result = docker_via(agent, docker_env, "load", "-i", str(saved["allowed"]))

    assert result.returncode == 0, describe(result, agent)
    assert "Loaded image: acme/app:latest" in result.stdout, describe(result, agent)
    assert image_present(docker_env, "acme/app:latest")


@pytest.mark.usefixtures("denied_image_absent")
def test_load_of_a_denied_image_passes_under_load_allow(
    agents: AgentStarter, docker_env: DockerEnv, saved: dict[str, Path]
) -> None:
    shim = agents.start(load="allow")

    result = docker_via(shim, docker_env, "load", "-i", str(saved["denied"]))

    assert result.returncode == 0, describe(result, shim)
    assert image_present(docker_env, f"{DENIED}:1.0")


def test_load_of_allowed_images_is_refused_under_load_deny(
    agents: AgentStarter, docker_env: DockerEnv, saved: dict[str, Path]
) -> None:
    docker(docker_env, "image", "rm", "--force", "acme/app", check=False)
    shim = agents.start(load="deny")

    result = docker_via(shim, docker_env, "load", "-i", str(saved["allowed"]))

    assert_denied(result, shim)
    assert not image_present(docker_env, "acme/app:latest")


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(("check", f"{DENIED}:imported", False), id="check-denied-name"),
        pytest.param(("check", "acme/pgtest-imported:1", True), id="check-allowed-name"),
        pytest.param(("allow", f"{DENIED}:imported", True), id="allow-denied-name"),
        pytest.param(("deny", "acme/pgtest-imported:1", False), id="deny-allowed-name"),
    ],
)
@pytest.mark.usefixtures("denied_image_absent")
def test_import_follows_the_load_setting(
    agents: AgentStarter,
    docker_env: DockerEnv,
    saved: dict[str, Path],
    case: tuple[str, str, bool],
) -> None:
    load, repository, allowed = case
    docker(docker_env, "image", "rm", "--force", repository, check=False)
    shim = agents.start(load=load)
    try:
        result = docker_via(shim, docker_env, "import", str(saved["rootfs"]), repository)

        if allowed:
            assert result.returncode == 0, describe(result, shim)
            assert image_present(docker_env, repository)
        else:
            assert_denied(result, shim)
            assert not image_present(docker_env, repository)
    finally:
        docker(docker_env, "image", "rm", "--force", repository, check=False)


# --------------------------------------------------------------------------- streams


def _routes(agent: AgentProcess, env: DockerEnv) -> dict[str, dict[str, str]]:
    """The same docker CLI environment twice: straight to the daemon, and through the shim."""
    return {"direct": dict(env.env), "shim": shim_environ(agent, env)}


def _run_detached(env: DockerEnv, name: str, *command: str, interactive: bool = False) -> None:
    flags = ["--interactive"] if interactive else []
    docker(env, "run", "--detach", *flags, "--network", "none", "--name", name, "alpine", *command)


@pytest.mark.usefixtures("alpine_local")
def test_exec_stdin_round_trips_as_without_the_shim(
    agent: AgentProcess, docker_env: DockerEnv, container_name: str
) -> None:
    _run_detached(docker_env, container_name, "sleep", "300")
    big = "".join(f"line {i:07d}\n" for i in range(80_000))  # ~1 MB, more than any buffer
    seen: dict[str, tuple[int, str, int, str, int]] = {}
    for route, environ in _routes(agent, docker_env).items():
        small = docker_with(
            environ, "exec", "-i", container_name, "cat", input="hello", cli=docker_env.docker_cli
        )
        large = docker_with(
            environ, "exec", "-i", container_name, "cat", input=big, cli=docker_env.docker_cli
        )
        failing = docker_with(
            environ, "exec", container_name, "sh", "-c", "exit 3", cli=docker_env.docker_cli
        )
        seen[route] = (
            small.returncode,
            small.stdout,
            large.returncode,
            large.stdout[-20:] + str(len(large.stdout)),
            failing.returncode,
        )
    expected = (0, "hello", 0, big[-20:] + str(len(big)), 3)
    assert seen["direct"] == expected
    assert seen["shim"] == expected, agent.stderr_tail()


@pytest.mark.usefixtures("alpine_local")
def test_run_interactive_pipes_stdin_through_as_without_the_shim(
    agent: AgentProcess, docker_env: DockerEnv
) -> None:
    seen = {}
    for route, environ in _routes(agent, docker_env).items():
        result = docker_with(
            environ,
            *("run", "--rm", "-i", "--network", "none", "alpine", "sh", "-c", "cat; echo done"),
            input="hello\nworld\n",
            cli=docker_env.docker_cli,
        )
        seen[route] = (result.returncode, result.stdout)
    assert seen["direct"] == (0, "hello\nworld\ndone\n")
    assert seen["shim"] == seen["direct"], agent.stderr_tail()


def _attach_session(environ: Mapping[str, str], cli: str, name: str) -> tuple[list[str], int]:
    """Attach to a container running `sh`: send two commands, read their output, exit 3."""
    proc = docker_popen_with(environ, "attach", name, cli=cli, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    assert proc.stdout is not None
    out = LineStream(proc.stdout)
    got: list[str] = []
    try:
        for word in ("one", "two"):
            proc.stdin.write(f"echo {word}\n")
            proc.stdin.flush()
            got.append(out.next(timeout=15) or "<eof>")
        proc.stdin.write("exit 3\n")
        proc.stdin.flush()
        got.extend(out.until_eof(timeout=15))
        return got, proc.wait(timeout=15)
    finally:
        reap(proc)


@pytest.mark.usefixtures("alpine_local")
def test_attach_streams_both_ways_as_without_the_shim(
    agent: AgentProcess, docker_env: DockerEnv
) -> None:
    seen = {}
    for route, environ in _routes(agent, docker_env).items():
        name = f"pgtest-attach-{route}-{uuid.uuid4().hex[:8]}"
        try:
            _run_detached(docker_env, name, "sh", interactive=True)
            seen[route] = _attach_session(environ, docker_env.docker_cli, name)
        finally:
            docker(docker_env, "rm", "--force", name, check=False)
    assert seen["direct"] == (["one\n", "two\n"], 3)
    assert seen["shim"] == seen["direct"], agent.stderr_tail()


@pytest.mark.usefixtures("alpine_local")
def test_logs_follow_streams_live_and_ends_with_the_container(
    agent: AgentProcess, docker_env: DockerEnv, container_name: str
) -> None:
    script = "echo start; i=0; while [ $i -lt 8 ]; do echo tick $i; i=$((i+1)); sleep 0.25; done"
    _run_detached(docker_env, container_name, "sh", "-c", script)
    followers = {
        route: docker_popen_with(environ, "logs", "-f", container_name, cli=docker_env.docker_cli)
        for route, environ in _routes(agent, docker_env).items()
    }
    try:
        streams = {}
        for route, proc in followers.items():
            assert proc.stdout is not None
            streams[route] = LineStream(proc.stdout)
        first = streams["shim"].next(timeout=15)
        running = docker(docker_env, "inspect", "--format", "{{.State.Running}}", container_name)
        assert first == "start\n"
        assert running.stdout.strip() == "true", "the first line came only after the container"
        seen = {}
        for route, stream in streams.items():
            stream.until_eof(timeout=30)
            seen[route] = (stream.lines, followers[route].wait(timeout=10))
    finally:
        for proc in followers.values():
            reap(proc)
    expected = ["start\n", *(f"tick {i}\n" for i in range(8))]
    assert seen["direct"] == (expected, 0)
    assert seen["shim"] == seen["direct"], agent.stderr_tail()


@pytest.mark.usefixtures("alpine_local")
def test_events_between_since_and_until_match_the_daemons(
    agent: AgentProcess, docker_env: DockerEnv, container_name: str
) -> None:
    since = int(time.time()) - 1
    docker(
        docker_env, "run", "--rm", "--network", "none", "--name", container_name, "alpine", "true"
    )
    until = int(time.time()) + 1
    time.sleep(max(0.0, until - time.time()) + 0.2)
    seen = {
        route: docker_with(
            environ,
            *("events", "--since", str(since), "--until", str(until)),
            *("--filter", f"container={container_name}", "--format", "{{.Type}} {{.Action}}"),
            cli=docker_env.docker_cli,
            timeout=30,
        )
        for route, environ in _routes(agent, docker_env).items()
    }
    direct = seen["direct"]
    assert direct.returncode == 0, describe(direct)
    for action in ("create", "start", "die", "destroy"):
        assert f"container {action}" in direct.stdout.splitlines(), direct.stdout
    shim = seen["shim"]
    assert (shim.returncode, shim.stdout) == (0, direct.stdout), describe(shim, agent)


@pytest.mark.usefixtures("alpine_local")
def test_live_events_show_a_container_starting_and_going(
    agent: AgentProcess, docker_env: DockerEnv, container_name: str
) -> None:
    events = docker_popen_with(
        shim_environ(agent, docker_env),
        *("events", "--since", str(int(time.time()) - 1)),
        *("--filter", f"container={container_name}", "--format", "{{.Action}}"),
        cli=docker_env.docker_cli,
    )
    try:
        assert events.stdout is not None
        stream = LineStream(events.stdout)
        _run_detached(docker_env, container_name, "sleep", "300")
        actions: list[str] = []
        while "start" not in actions:
            actions.append((stream.next(timeout=15) or "<eof>").strip())
        docker(docker_env, "rm", "--force", container_name)
        while "destroy" not in actions:
            actions.append((stream.next(timeout=15) or "<eof>").strip())
        assert actions[:2] == ["create", "start"], actions
        assert events.poll() is None, "the events stream ended by itself"
    finally:
        reap(events)


# --------------------------------------------------------------------------- docker-py


@dataclass(frozen=True)
class Sdk:
    """A docker-py client connected to the shim, and docker-py's APIError."""

    client: Any
    api_error: type[Exception]


@pytest.fixture(scope="module")
def docker_sdk() -> ModuleType:
    """docker-py (`docker` on PyPI): skipped locally when missing, a failure in CI."""
    try:
        return importlib.import_module("docker")
    except ImportError:
        skip_or_fail("docker-py is not installed: add `docker>=7` to the dev dependencies")


@pytest.fixture
def sdk(agent: AgentProcess, docker_sdk: ModuleType) -> Iterator[Sdk]:
    client = docker_sdk.DockerClient(base_url=agent.docker_host, timeout=60)
    try:
        yield Sdk(client=client, api_error=docker_sdk.errors.APIError)
    finally:
        client.close()


@pytest.mark.usefixtures("denied_image_absent")
def test_docker_py_pull_of_a_denied_image_raises_with_the_message(
    agent: AgentProcess, docker_env: DockerEnv, sdk: Sdk, denied_image_ids: frozenset[str]
) -> None:
    with pytest.raises(sdk.api_error) as refused:
        sdk.client.images.pull(DENIED)

    error: Any = refused.value
    assert error.status_code == 403, agent.stderr_tail()
    assert str(error.explanation).startswith("pullgate:"), error.explanation
    assert DENIED_CANONICAL in error.explanation
    assert_never_pulled(docker_env, denied_image_ids, agent)


def test_docker_py_pull_of_an_allowed_image_works(docker_env: DockerEnv, sdk: Sdk) -> None:
    docker(docker_env, "image", "rm", "--force", "alpine", check=False)

    image = sdk.client.images.pull("alpine")

    assert "alpine:latest" in image.tags
    assert image_present(docker_env, "alpine")


@pytest.mark.usefixtures("denied_image_absent")
def test_docker_py_run_of_a_denied_image_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, sdk: Sdk, denied_image_ids: frozenset[str]
) -> None:
    with pytest.raises(sdk.api_error) as refused:
        sdk.client.containers.run(DENIED, ["true"], network_mode="none", remove=True)

    error: Any = refused.value
    assert str(error.explanation).startswith("pullgate:"), error.explanation
    assert_never_pulled(docker_env, denied_image_ids, agent)


# --------------------------------------------------------------------------- docker-compose

COMPOSE = "/usr/bin/docker-compose"


def _compose(
    agent: AgentProcess, env: DockerEnv, project_dir: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    compose_file = project_dir / "docker-compose.yml"
    environ = shim_environ(agent, env, {"COMPOSE_INTERACTIVE_NO_CLI": "1"})
    for name in ("PYTHONPATH", "PYTHONHOME"):  # Debian's compose needs Debian's docker-py
        environ.pop(name, None)
    return docker_with(
        environ,
        *("--file", str(compose_file), "--project-name", project_dir.name, *args),
        cli=COMPOSE,
    )


@pytest.fixture
def compose_project(tmp_path: Path, docker_env: DockerEnv) -> Iterator[Path]:
    """A compose project directory with a unique project name; its containers are removed."""
    if not Path(COMPOSE).is_file():
        skip_or_fail(f"{COMPOSE} missing: install Debian's docker-compose")
    project = tmp_path / f"pgtest{uuid.uuid4().hex[:8]}"
    project.mkdir()
    yield project
    label = f"label=com.docker.compose.project={project.name}"
    leftover = docker(docker_env, "ps", "--all", "--quiet", "--filter", label).stdout.split()
    if leftover:
        docker(docker_env, "rm", "--force", *leftover, check=False)


def _compose_file(image: str) -> str:
    return (
        'version: "3"\nservices:\n  svc:\n'
        f'    image: {image}\n    command: ["sleep", "300"]\n    network_mode: none\n'
    )


@pytest.mark.parametrize("command", [["pull"], ["up", "-d"]])
@pytest.mark.usefixtures("denied_image_absent")
def test_compose_with_a_denied_service_fails_with_the_message(
    agent: AgentProcess,
    docker_env: DockerEnv,
    compose_project: Path,
    denied_image_ids: frozenset[str],
    command: list[str],
) -> None:
    (compose_project / "docker-compose.yml").write_text(_compose_file(DENIED))

    result = _compose(agent, docker_env, compose_project, *command)

    assert result.returncode != 0, describe(result, agent)
    assert "pullgate:" in result.stdout + result.stderr, describe(result, agent)
    assert_never_pulled(docker_env, denied_image_ids, agent)


def test_compose_up_and_down_of_an_allowed_service_work(
    agent: AgentProcess, docker_env: DockerEnv, compose_project: Path
) -> None:
    docker(docker_env, "image", "rm", "--force", "alpine", check=False)
    (compose_project / "docker-compose.yml").write_text(_compose_file("alpine"))
    label = f"label=com.docker.compose.project={compose_project.name}"

    up = _compose(agent, docker_env, compose_project, "up", "-d")

    assert up.returncode == 0, describe(up, agent)
    running = docker(docker_env, "ps", "--quiet", "--filter", label).stdout.split()
    assert len(running) == 1

    down = _compose(agent, docker_env, compose_project, "down", "--timeout", "0")

    assert down.returncode == 0, describe(down, agent)
    assert docker(docker_env, "ps", "--all", "--quiet", "--filter", label).stdout.split() == []


# --------------------------------------------------------------------------- modes, failures


@pytest.mark.usefixtures("denied_image_absent")
def test_monitor_mode_lets_a_denied_pull_through_and_records_would_deny(
    agents: AgentStarter, docker_env: DockerEnv
) -> None:
    shim = agents.start(mode="monitor")
    mark = shim.mark()

    result = docker_via(shim, docker_env, "pull", DENIED)

    assert result.returncode == 0, describe(result, shim)
    assert image_present(docker_env, DENIED)
    shim.wait_for_decision(
        lambda r: r.get("decision") == "would_deny" and r.get("image") == DENIED_CANONICAL,
        since=mark,
    )


@pytest.mark.parametrize("args", [["version"], ["pull", "alpine"]], ids=["version", "pull"])
def test_an_unreachable_daemon_is_reported_with_where_the_agent_looked(
    agents: AgentStarter, docker_env: DockerEnv, tmp_path: Path, args: list[str]
) -> None:
    upstream = tmp_path / "nothing-here" / "docker.sock"
    shim = agents.start(upstream=upstream, expect_ping_ok=False)

    result = docker_via(shim, docker_env, *args, timeout=30)

    assert result.returncode != 0, describe(result, shim)
    assert str(upstream) in result.stderr, describe(result, shim)
    status, _, body = unix_request(shim.socket_path, "GET", "/_ping")
    assert status != 200, "an agent without its daemon answered /_ping as healthy"
    assert str(upstream) in body.decode(errors="replace"), body
