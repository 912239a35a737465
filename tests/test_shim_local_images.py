"""Denied content already on the machine must not be run, renamed or committed through the shim
(issue 9, leaks 5-7), checked against a real dockerd 20.10.

The denied image `someuser/tool` is put into the daemon directly (as if before the policy):
pulled (tags and RepoDigests) or loaded (tags only). Then, through the shim, it is named
every way dockerd resolves a local image: by name, by ID prefix (`abc123def456` parses as an
official image's name, and dockerd falls back to an ID prefix search), by `sha256:<prefix>`
and full ID; renamed with `docker tag` and `docker commit`; and raced with a tag that flips
between allowed and denied content while containers are created. Afterwards the daemon is
asked directly what it made.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from bench.realdocker import DockerEnv, docker
from tests.agent_process import (
    DENIED_REPOSITORY,
    AgentProcess,
    Reporter,
    describe,
    docker_via,
    remove_images,
    shim_policy,
    start_agent,
    unix_request,
)

DENIED = DENIED_REPOSITORY
LAUNDERED = "acme/app:evil"
FLIP = "acme/app:flip"

pytestmark = pytest.mark.usefixtures("seeded")


# --------------------------------------------------------------------------- helpers


def api(socket_path: Path, method: str, target: str, body: Any = None) -> tuple[int, Any]:
    """One Docker API request: (status, decoded JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    status, _, raw = unix_request(socket_path, method, target, body=data, headers=headers)
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def image_id(env: DockerEnv, ref: str) -> str | None:
    status, info = api(env.socket_path, "GET", f"/images/{quote(ref, safe='/:@')}/json")
    return str(info["Id"]) if status == 200 else None


def containers_of(env: DockerEnv, image_ids: set[str]) -> list[str]:
    """Containers (asked directly) whose image is one of `image_ids`: `ID image name`."""
    status, found = api(env.socket_path, "GET", "/containers/json?all=1")
    assert status == 200, found
    return [
        f"{c['Id'][:12]} {c['ImageID']} {c['Names']}" for c in found if c["ImageID"] in image_ids
    ]


def assert_refused(status: int, body: Any, agent: AgentProcess) -> None:
    context = f"{status} {body}\nagent stderr:\n{agent.stderr_tail()}"
    assert status == 403, context
    assert isinstance(body, dict) and str(body.get("message", "")).startswith("pullgate:"), context


def remove_containers(env: DockerEnv, image_ids: set[str]) -> None:
    for line in containers_of(env, image_ids):
        api(env.socket_path, "DELETE", f"/containers/{line.split()[0]}?force=1&v=1")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory, report: Reporter
) -> Iterator[AgentProcess]:
    shim = start_agent(tmp_path_factory.mktemp("shim-local"), docker_env.socket_path, shim_policy())
    report(f"shim: agent answered /_ping {shim.ready_seconds:.2f} s after start")
    try:
        yield shim
    finally:
        shim.stop()


@pytest.fixture
def clean(docker_env: DockerEnv, denied_image_ids: frozenset[str]) -> Iterator[set[str]]:
    """No denied content before; after: no container of it, and it and its new names gone.
    Yields the set of image IDs the test put in (filled by the test)."""
    made: set[str] = set(denied_image_ids)
    remove_images(docker_env, DENIED, denied_image_ids)
    yield made
    remove_containers(docker_env, made)
    for ref in (LAUNDERED, FLIP):
        api(docker_env.socket_path, "DELETE", f"/images/{ref}?force=1")
    remove_images(docker_env, DENIED, made)


def pull_directly(env: DockerEnv, made: set[str]) -> str:
    """someuser/tool pulled into the daemon without the shim: tags and RepoDigests."""
    docker(env, "pull", DENIED)
    found = image_id(env, DENIED)
    assert found is not None
    made.add(found)
    return found


def load_directly(env: DockerEnv, made: set[str], tmp_path: Path) -> str:
    """someuser/tool saved and loaded back without the shim: tags only, no RepoDigests."""
    found = pull_directly(env, made)
    archive = tmp_path / "tool.tar"
    docker(env, "save", "-o", str(archive), DENIED)
    docker(env, "image", "rm", "--force", found)
    docker(env, "load", "-i", str(archive))
    status, info = api(env.socket_path, "GET", f"/images/{found}/json")
    assert status == 200 and info["RepoTags"] and not info["RepoDigests"], info
    return found


# --------------------------------------------------------------------------- leak 5


FORMS = ["prefix", "sha256-prefix", "full-id", "sha256-full-id"]


@pytest.mark.parametrize("case", [f"{o}-{f}" for o in ("loaded", "pulled") for f in FORMS])
def test_create_of_denied_content_by_id_or_id_prefix_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str], tmp_path: Path, case: str
) -> None:
    origin, form = case.split("-", 1)
    if origin == "loaded":
        denied = load_directly(docker_env, clean, tmp_path)
    else:
        denied = pull_directly(docker_env, clean)
    hex_id = denied.removeprefix("sha256:")
    image = {
        "prefix": hex_id[:12],
        "sha256-prefix": f"sha256:{hex_id[:12]}",
        "full-id": hex_id,
        "sha256-full-id": denied,
    }[form]

    status, body = api(
        agent.socket_path, "POST", "/v1.41/containers/create", {"Image": image, "Cmd": ["true"]}
    )

    assert_refused(status, body, agent)
    assert "docker.io/someuser/tool" in body["message"]
    assert not containers_of(docker_env, {denied})


def test_docker_run_by_short_id_of_a_loaded_denied_image_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str], tmp_path: Path
) -> None:
    denied = load_directly(docker_env, clean, tmp_path)

    result = docker_via(agent, docker_env, "run", "--rm", "--network", "none", denied[7:19], "true")

    assert result.returncode == 125, describe(result, agent)
    assert "pullgate:" in result.stderr, describe(result, agent)
    assert not containers_of(docker_env, {denied})


def test_create_by_an_allowed_name_of_content_that_also_has_a_denied_name_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str], tmp_path: Path
) -> None:
    """The content was loaded and named `acme/app:evil` too before the policy: every name
    counts, not only the one it is run by."""
    denied = load_directly(docker_env, clean, tmp_path)
    docker(docker_env, "tag", DENIED, LAUNDERED)

    status, body = api(agent.socket_path, "POST", "/containers/create", {"Image": LAUNDERED})

    assert_refused(status, body, agent)
    assert not containers_of(docker_env, {denied})


def test_monitor_mode_lets_local_denied_content_through_and_records_it(
    docker_env: DockerEnv, clean: set[str], tmp_path: Path
) -> None:
    denied = load_directly(docker_env, clean, tmp_path)
    shim = start_agent(tmp_path / "monitor", docker_env.socket_path, shim_policy(mode="monitor"))
    try:
        status, body = api(shim.socket_path, "POST", "/containers/create", {"Image": denied[7:19]})
        assert status == 201, (status, body, shim.stderr_tail())
        record = shim.wait_for_decision(
            lambda r: r.get("decision") == "would_deny" and r.get("action") == "container-create"
        )
        assert record["image"] == "docker.io/someuser/tool:latest", record
        assert record["detail"] == f"local image {denied[7:19]}", record
        status, body = api(
            shim.socket_path, "POST", f"/images/{denied[7:19]}/tag?repo=acme/app&tag=evil"
        )
        assert status == 201, (status, body, shim.stderr_tail())
        shim.wait_for_decision(
            lambda r: r.get("decision") == "would_deny" and r.get("action") == "image-tag"
        )
    finally:
        shim.stop()


def test_create_by_name_and_by_id_of_allowed_content_still_works(
    agent: AgentProcess, docker_env: DockerEnv
) -> None:
    docker(docker_env, "pull", "alpine")
    alpine = image_id(docker_env, "alpine")
    assert alpine is not None
    made: list[str] = []
    try:
        for image in ("alpine", alpine[7:19], alpine):
            status, body = api(agent.socket_path, "POST", "/containers/create", {"Image": image})
            assert status == 201, (image, status, body, agent.stderr_tail())
            made.append(body["Id"])
            _, info = api(docker_env.socket_path, "GET", f"/containers/{body['Id']}/json")
            assert info["Image"] == alpine and info["Config"]["Image"] == image, info
    finally:
        for container in made:
            api(docker_env.socket_path, "DELETE", f"/containers/{container}?force=1")


@pytest.mark.parametrize("base", ["prefix", "sha256-prefix", "laundered-name"])
def test_classic_build_on_local_denied_content_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str], tmp_path: Path, base: str
) -> None:
    """The classic builder takes `FROM` from the machine first (by name, else by ID
    prefix): the content it would build on is judged by all its names."""
    denied = load_directly(docker_env, clean, tmp_path)
    docker(docker_env, "tag", DENIED, LAUNDERED)
    name = {
        "prefix": denied[7:19],
        "sha256-prefix": denied[:19],
        "laundered-name": LAUNDERED,
    }[base]
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {name}\nRUN true\n")
    tag = f"acme/built:{uuid.uuid4().hex[:8]}"

    result = docker_via(
        agent,
        docker_env,
        "build",
        "--network",
        "none",
        "-t",
        tag,
        str(context),
        extra_env={"DOCKER_BUILDKIT": "0"},
    )

    assert result.returncode != 0, describe(result, agent)
    assert "pullgate:" in result.stderr, describe(result, agent)
    assert image_id(docker_env, tag) is None
    status, images = api(docker_env.socket_path, "GET", "/images/json?all=1")
    assert status == 200
    assert not [i["Id"] for i in images if i.get("ParentId") == denied]


def nameless_archive(env: DockerEnv, tmp_path: Path) -> bytes:
    """`docker save someuser/tool` with its names taken out of the archive."""
    archive = tmp_path / "named.tar"
    docker(env, "save", "-o", str(archive), DENIED)
    out = io.BytesIO()
    with tarfile.open(archive) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name == "repositories":
                continue
            if member.name == "manifest.json" and data is not None:
                manifest = json.loads(data)
                for entry in manifest:
                    entry["RepoTags"] = None
                data = json.dumps(manifest).encode()
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def test_nameless_denied_content_is_not_run_or_renamed_by_id(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str], tmp_path: Path
) -> None:
    """Content loaded without any name has nothing to be judged by: by ID it is refused.
    (The shim refuses such a load under `load: check`; here it was loaded directly, as
    before Pullgate was installed.)"""
    denied = pull_directly(docker_env, clean)
    data = nameless_archive(docker_env, tmp_path)
    docker(docker_env, "image", "rm", "--force", denied)
    result = docker_via(agent, docker_env, "load", input=data)
    assert result.returncode != 0 and "no name" in result.stderr, result.stderr
    status, _, _ = unix_request(docker_env.socket_path, "POST", "/images/load?quiet=1", body=data)
    assert status == 200
    status, info = api(docker_env.socket_path, "GET", f"/images/{denied}/json")
    assert status == 200 and not info["RepoTags"] and not info["RepoDigests"], info

    status, body = api(agent.socket_path, "POST", "/containers/create", {"Image": denied[7:19]})
    assert_refused(status, body, agent)
    assert "no name and no named ancestor" in body["message"], body
    status, body = api(
        agent.socket_path, "POST", f"/images/{denied[7:19]}/tag?repo=acme/app&tag=evil"
    )
    assert_refused(status, body, agent)
    assert not containers_of(docker_env, {denied})
    assert image_id(docker_env, LAUNDERED) is None


def test_nameless_content_passes_when_uninspected_builds_are_allowed(
    docker_env: DockerEnv, clean: set[str], tmp_path: Path
) -> None:
    """BuildKit's untagged outputs have neither a name nor a parent: with `builds: allow`
    they are run by ID as their build was allowed."""
    denied = pull_directly(docker_env, clean)
    data = nameless_archive(docker_env, tmp_path)
    docker(docker_env, "image", "rm", "--force", denied)
    status, _, _ = unix_request(docker_env.socket_path, "POST", "/images/load?quiet=1", body=data)
    assert status == 200
    shim = start_agent(tmp_path / "builds", docker_env.socket_path, shim_policy(builds="allow"))
    try:
        status, body = api(shim.socket_path, "POST", "/containers/create", {"Image": denied[7:19]})
        assert status == 201, (status, body, shim.stderr_tail())
    finally:
        shim.stop()


def test_untagged_classic_build_and_commit_outputs_run_by_id(
    agent: AgentProcess, docker_env: DockerEnv, tmp_path: Path, container_name: str
) -> None:
    """Nameless, but built (or committed) on named content: that content's names count."""
    docker(docker_env, "pull", "alpine")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM alpine\nRUN echo one > /one\nRUN echo two > /two\n")
    built = docker_via(
        agent,
        docker_env,
        "build",
        "-q",
        "--network",
        "none",
        str(context),
        extra_env={"DOCKER_BUILDKIT": "0"},
    )
    assert built.returncode == 0, describe(built, agent)
    docker(docker_env, "create", "--name", container_name, "alpine", "true")
    committed = docker_via(agent, docker_env, "commit", container_name)
    assert committed.returncode == 0, describe(committed, agent)
    made: list[str] = []
    try:
        for image in (built.stdout.strip(), committed.stdout.strip()):
            status, body = api(
                agent.socket_path, "POST", "/containers/create", {"Image": image[7:19]}
            )
            assert status == 201, (image, status, body, agent.stderr_tail())
            made.append(body["Id"])
    finally:
        for container in made:
            api(docker_env.socket_path, "DELETE", f"/containers/{container}?force=1")


# --------------------------------------------------------------------------- leak 6


@pytest.mark.parametrize("source", ["name", "short-id", "digest"])
def test_retag_of_pulled_denied_content_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str], source: str
) -> None:
    """Tag, then untag the original (dropping its RepoDigests), then run the new name:
    the first step is refused, so the content keeps its denied names."""
    denied = pull_directly(docker_env, clean)
    _, info = api(docker_env.socket_path, "GET", f"/images/{denied}/json")
    name = {"name": DENIED, "short-id": denied[7:19], "digest": info["RepoDigests"][0]}[source]

    result = docker_via(agent, docker_env, "tag", name, LAUNDERED)

    assert result.returncode != 0, describe(result, agent)
    assert "pullgate:" in result.stderr, describe(result, agent)
    assert image_id(docker_env, LAUNDERED) is None
    # the rest of the laundering, had the tag gone through
    docker(docker_env, "image", "rm", DENIED, check=False)
    status, body = api(agent.socket_path, "POST", "/containers/create", {"Image": LAUNDERED})
    assert status in (403, 404), (status, body)
    assert not containers_of(docker_env, {denied})


def test_retag_of_loaded_denied_content_by_id_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str], tmp_path: Path
) -> None:
    denied = load_directly(docker_env, clean, tmp_path)

    status, body = api(
        agent.socket_path, "POST", f"/v1.41/images/{denied[7:19]}/tag?repo=acme%2Fapp&tag=evil"
    )

    assert_refused(status, body, agent)
    assert image_id(docker_env, LAUNDERED) is None


def test_commit_of_a_container_of_denied_content_is_refused(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str]
) -> None:
    denied = pull_directly(docker_env, clean)
    container = f"pgtest-{uuid.uuid4().hex[:12]}"
    docker(docker_env, "create", "--name", container, DENIED, "true")

    result = docker_via(agent, docker_env, "commit", container, LAUNDERED)

    assert result.returncode != 0, describe(result, agent)
    assert "pullgate:" in result.stderr, describe(result, agent)
    assert image_id(docker_env, LAUNDERED) is None
    status, images = api(docker_env.socket_path, "GET", "/images/json?all=1")
    assert status == 200
    assert not [i["Id"] for i in images if i.get("ParentId") == denied]


def test_tag_and_commit_of_allowed_content_work(
    agent: AgentProcess, docker_env: DockerEnv, container_name: str
) -> None:
    docker(docker_env, "pull", "alpine")
    try:
        result = docker_via(agent, docker_env, "tag", "alpine", "acme/app:from-alpine")
        assert result.returncode == 0, describe(result, agent)
        assert image_id(docker_env, "acme/app:from-alpine") == image_id(docker_env, "alpine")
        docker(docker_env, "create", "--name", container_name, "alpine", "true")
        result = docker_via(agent, docker_env, "commit", container_name, "acme/app:committed")
        assert result.returncode == 0, describe(result, agent)
        assert image_id(docker_env, "acme/app:committed") is not None
    finally:
        for ref in ("acme/app:from-alpine", "acme/app:committed"):
            api(docker_env.socket_path, "DELETE", f"/images/{ref}?force=1")


@pytest.mark.parametrize(
    "case", [f"{b}-{h}" for b in ("deny", "allow") for h in ("tag", "commit", "build")]
)
def test_moving_the_last_name_off_denied_content_never_makes_it_usable(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str], tmp_path: Path, case: str
) -> None:
    """Loaded denied content named only `someuser/tool:latest`; the name is put on other
    content. Nameless and parentless, it is refused by ID — so the rename may go through
    (a rebuild under a name the policy denies keeps working) — except with `builds:
    allow`, where nameless content runs: there the rename is refused."""
    builds, how = case.split("-")
    denied = load_directly(docker_env, clean, tmp_path)
    docker(docker_env, "pull", "alpine")
    shim = agent
    if builds == "allow":
        shim = start_agent(tmp_path / "allow", docker_env.socket_path, shim_policy(builds="allow"))
    target = f"{DENIED}:latest"
    try:
        if how == "tag":
            result = docker_via(shim, docker_env, "tag", "alpine", target)
        elif how == "commit":
            container = f"pgtest-{uuid.uuid4().hex[:12]}"
            docker(docker_env, "create", "--name", container, "alpine", "true")
            result = docker_via(shim, docker_env, "commit", container, target)
            docker(docker_env, "rm", "--force", container)
        else:
            context = tmp_path / "ctx"
            context.mkdir()
            (context / "Dockerfile").write_text("FROM alpine\nRUN true\n")
            result = docker_via(
                shim,
                docker_env,
                "build",
                "--network",
                "none",
                "-t",
                target,
                str(context),
                extra_env={"DOCKER_BUILDKIT": "0"},
            )
        if builds == "allow":
            assert result.returncode != 0, describe(result, shim)
            assert "pullgate:" in result.stderr, describe(result, shim)
            assert image_id(docker_env, target) == denied
        else:
            assert result.returncode == 0, describe(result, shim)
            assert image_id(docker_env, target) != denied
        status, body = api(shim.socket_path, "POST", "/containers/create", {"Image": denied[7:19]})
        assert_refused(status, body, shim)
        assert not containers_of(docker_env, {denied})
    finally:
        if shim is not agent:
            shim.stop()
        if builds == "deny":
            api(docker_env.socket_path, "DELETE", f"/images/{target}?force=1")


def test_moving_the_last_name_off_allowed_content_works(
    agent: AgentProcess, docker_env: DockerEnv, container_name: str
) -> None:
    docker(docker_env, "pull", "alpine")
    docker(docker_env, "create", "--name", container_name, "alpine", "true")
    try:
        result = docker_via(agent, docker_env, "commit", container_name, "acme/app:c1")
        assert result.returncode == 0, describe(result, agent)
        result = docker_via(agent, docker_env, "tag", "alpine", "acme/app:c1")
        assert result.returncode == 0, describe(result, agent)
        assert image_id(docker_env, "acme/app:c1") == image_id(docker_env, "alpine")
    finally:
        api(docker_env.socket_path, "DELETE", "/images/acme/app:c1?force=1")


def raw_exchange(socket_path: Path, payload: bytes) -> tuple[int | None, bytes]:
    """Write raw request bytes; read one reply (status, raw reply)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(15)
        sock.connect(str(socket_path))
        with contextlib.suppress(OSError):
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                reply += chunk
    first = reply.split(b"\r\n", 1)[0].split()
    return (int(first[1]) if len(first) > 1 and first[1].isdigit() else None), reply


HOSTILE_RENAMES = {
    # id: (method, target, extra headers, body, statuses)
    "tag-by-name": ("POST", "/v1.41/images/someuser/tool/tag?{to}", [], "", {403}),
    "tag-by-canonical-name": (
        "POST",
        "/images/docker.io/someuser/tool:latest/tag?{to}",
        [],
        "",
        {403},
    ),
    "tag-by-digest": ("POST", "/images/{digest_ref}/tag?{to}", [], "", {403}),
    "tag-by-id-prefix": ("POST", "/images/{prefix}/tag?{to}", [], "", {403}),
    "tag-by-sha256-prefix": ("POST", "/images/sha256:{prefix}/tag?{to}", [], "", {403}),
    "tag-percent-encoded-path": ("POST", "/images/someuser%2Ftool/tag?{to}", [], "", {400}),
    "tag-non-clean-path": ("POST", "/v1.41//images/someuser/tool/tag?{to}", [], "", {400}),
    "tag-duplicate-repo": ("POST", "/images/someuser/tool/tag?repo=x&{to}", [], "", {400}),
    "tag-form-body": (
        "POST",
        "/images/someuser/tool/tag",
        ["Content-Type: application/x-www-form-urlencoded"],
        "repo=acme%2Fapp&tag=evil",
        {400},
    ),
    "tag-chunked-body": (
        "POST",
        "/images/{prefix}/tag?{to}",
        ["Transfer-Encoding: chunked"],
        "0\r\n\r\n",
        {403},
    ),
    "commit-by-name": ("POST", "/v1.41/commit?container={container}&{to}", [], "{{}}", {403}),
    "commit-by-id-prefix": ("POST", "/commit?container={container_prefix}&{to}", [], "", {403}),
}


@pytest.mark.parametrize("case", list(HOSTILE_RENAMES))
def test_hostile_renames_of_denied_content_are_refused(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str], case: str
) -> None:
    denied = pull_directly(docker_env, clean)
    _, info = api(docker_env.socket_path, "GET", f"/images/{denied}/json")
    container = f"pgtest-{uuid.uuid4().hex[:12]}"
    created = docker(docker_env, "create", "--name", container, DENIED, "true").stdout.strip()
    method, target, headers, body, statuses = HOSTILE_RENAMES[case]
    values = {
        "to": "repo=acme%2Fapp&tag=evil",
        "digest_ref": info["RepoDigests"][0],
        "prefix": denied[7:19],
        "container": container,
        "container_prefix": created[:12],
    }
    target, body = target.format(**values), body.format(**values)
    length = [] if "Transfer-Encoding: chunked" in headers else [f"Content-Length: {len(body)}"]
    head = [f"{method} {target} HTTP/1.1", "Host: docker", *headers, *length]
    payload = ("\r\n".join(head) + "\r\n\r\n" + body).encode()

    status, reply = raw_exchange(agent.socket_path, payload)

    assert status in statuses, (status, reply[:300], agent.stderr_tail())
    assert b'"message":"pullgate:' in reply.replace(b": ", b":"), reply[:300]
    assert image_id(docker_env, LAUNDERED) is None
    status, images = api(docker_env.socket_path, "GET", "/images/json?all=1")
    assert not [i["Id"] for i in images if i.get("ParentId") == denied]
    _, now = api(docker_env.socket_path, "GET", f"/images/{denied}/json")
    assert sorted(now["RepoTags"]) == sorted(info["RepoTags"]), now


# --------------------------------------------------------------------------- leak 7


class Flipper:
    """A thread moving `acme/app:flip` between allowed content (alpine) and denied content
    (someuser/tool, pulled directly), as any path the shim cannot order would."""

    def __init__(self, env: DockerEnv, clean: set[str]) -> None:
        self.denied = pull_directly(env, clean)
        docker(env, "pull", "alpine")
        allowed = image_id(env, "alpine")
        assert allowed is not None
        self.allowed = allowed
        self.flips = 0
        self._env = env
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flip, daemon=True)
        self._thread.start()

    def _flip(self) -> None:
        while not self._stop.is_set():
            for source in (self.allowed, self.denied):
                api(self._env.socket_path, "POST", f"/images/{source}/tag?repo=acme/app&tag=flip")
                self.flips += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


RACE_SECONDS = 4.0
RACE_MAX_CREATES = 400


def test_tag_flip_race_never_leaves_a_container_of_denied_content(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str], report: Reporter
) -> None:
    """A thread moves `acme/app:flip` between allowed and denied content (directly, as any
    path the shim cannot order would) while containers of `acme/app:flip` are created
    through the shim: every 201 must be a container of the allowed content, and no
    container of the denied content may be left. Bounded in time and count."""
    created: list[str] = []
    refused = 0
    other: list[tuple[int, Any]] = []

    def create() -> None:
        nonlocal refused
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline and len(created) + refused < RACE_MAX_CREATES:
            status, body = api(agent.socket_path, "POST", "/containers/create", {"Image": FLIP})
            if status == 201:
                created.append(body["Id"])
            elif status == 403:
                refused += 1
            else:
                other.append((status, body))

    flipper = Flipper(docker_env, clean)
    allowed, denied = flipper.allowed, flipper.denied
    creators = [threading.Thread(target=create, daemon=True) for _ in range(2)]
    for thread in creators:
        thread.start()
    for thread in creators:
        thread.join(RACE_SECONDS + 60)
    flipper.stop()
    caught = sum(
        1 for line in agent.stderr_lines() if "changed while Pullgate was checking it" in line
    )
    report(
        f"tag-flip race: {len(created) + refused} creates in {RACE_SECONDS:.0f} s, "
        f"{len(created)} allowed, {refused} refused ({caught} after the daemon used other "
        f"content), {flipper.flips} flips"
    )

    assert not other, other[:5]
    assert created and refused, (len(created), refused)
    wrong = []
    for container in created:
        status, info = api(docker_env.socket_path, "GET", f"/containers/{container}/json")
        if status != 200 or info["Image"] != allowed:
            wrong.append((container[:12], status, info.get("Image") if status == 200 else info))
    assert not wrong, f"{len(wrong)} of {len(created)} answered 201 ran other content: {wrong[:5]}"
    assert not containers_of(docker_env, {denied}), agent.stderr_tail()
    remove_containers(docker_env, {allowed})


def test_tag_flip_race_never_leaves_a_new_name_on_denied_content(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str], report: Reporter
) -> None:
    """The same race for `docker tag acme/app:flip acme/app:copy`: whenever the shim
    answers 201, `acme/app:copy` names the allowed content; it never names the denied."""
    flipper = Flipper(docker_env, clean)
    allowed, denied = flipper.allowed, flipper.denied
    answers: dict[int, int] = {}
    wrong: list[str | None] = []
    try:
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline and sum(answers.values()) < RACE_MAX_CREATES:
            status, _ = api(agent.socket_path, "POST", f"/images/{FLIP}/tag?repo=acme/app&tag=copy")
            answers[status] = answers.get(status, 0) + 1
            copy = image_id(docker_env, "acme/app:copy")
            if status == 201 and copy != allowed:
                wrong.append(copy)
            if copy == denied:
                wrong.append(copy)
    finally:
        flipper.stop()
        api(docker_env.socket_path, "DELETE", "/images/acme/app:copy?force=1")
    report(f"tag-flip race (tag): answers {answers}")

    assert not wrong, wrong[:5]
    assert answers.get(201) and answers.get(403), answers
    assert set(answers) <= {201, 403}, answers


def _hang_up_after(socket_path: Path, method: str, target: str, body: bytes, wait: float) -> None:
    """Send a request and the start of another (so the shim cannot take the close for a
    half-close that is still owed the answer), then close without reading."""
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(socket_path))
        sock.sendall(head + body + b"GET /_ping HTTP/1.1\r\n")
        time.sleep(wait)


@pytest.mark.parametrize("what", ["create", "tag"])
def test_hanging_up_during_the_held_answer_never_leaves_denied_content(
    agent: AgentProcess, docker_env: DockerEnv, clean: set[str], report: Reporter, what: str
) -> None:
    """Clients that hang up while the shim holds the daemon's 201 for checking (a red-team
    finding: the check used to be skipped) while `acme/app:flip` moves between allowed and
    denied content: no container of, and no new name on, the denied content may remain.
    Bounded in time and count."""
    flipper = Flipper(docker_env, clean)
    allowed, denied = flipper.allowed, flipper.denied
    sent = 0
    try:
        deadline = time.monotonic() + RACE_SECONDS
        while time.monotonic() < deadline and sent < 150:
            if what == "create":
                body = json.dumps({"Image": FLIP, "Cmd": ["true"]}).encode()
                _hang_up_after(agent.socket_path, "POST", "/containers/create", body, 0.005)
            else:
                target = f"/images/{FLIP}/tag?repo=acme/app&tag=copy{sent}"
                _hang_up_after(agent.socket_path, "POST", target, b"", 0.005)
            sent += 1
    finally:
        flipper.stop()
    # The shim finishes its checks of the last answers on its own, each in well under a
    # second; a loaded machine may take longer, so wait for the outcome, up to a bound.
    names = [f"acme/app:copy{i}" for i in range(sent)]
    settle = time.monotonic() + 30.0
    while True:
        time.sleep(1.0)
        on_denied = [n for n in names if image_id(docker_env, n) == denied]
        left = containers_of(docker_env, {denied})
        if not (on_denied or left) or time.monotonic() > settle:
            break
    report(f"hang-up race ({what}): {sent} requests, left on denied content: {left or on_denied}")
    for name in names:
        api(docker_env.socket_path, "DELETE", f"/images/{name}?force=1")
    remove_containers(docker_env, {allowed, denied})

    assert not left, (left[:5], agent.stderr_tail())
    assert not on_denied, (on_denied[:5], agent.stderr_tail())
