"""The second hostile battery (issue 9, leaks 1-4): build contexts and image archives whose
final content differs from what a naive reading shows, and Dockerfiles the classic builder
reads differently from BuildKit.

Every case is first sent straight to the real dockerd, which must then hold the denied
content: that proves the case is a live way in on this daemon. The same bytes through the
shim must be refused, and the daemon asked directly must hold nothing of it afterwards.
Look-alike requests that real clients send (a context holding a plain link, a classic
build with a `# syntax=` line) must still pass.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

from bench.realdocker import DockerEnv, SeededImage, docker, image_present, seed_image
from tests.agent_process import (
    DENIED_REPOSITORY,
    AgentProcess,
    Reporter,
    images_of,
    registry_image_id,
    remove_images,
    shim_policy,
    start_agent,
    unix_request,
)

#: An image of the library namespace that the test policy denies by rule: a stage name
#: can name it (`COPY --from=pgtool`), which `someuser/tool` cannot.
RULED = "pgtool"
#: A name `strconv.ParseInt` cannot take, so `COPY --from=` pulls it as an image.
HUGE_INDEX = "99999999999999999999"
RULES = [
    {"id": "no-pgtool", "match": RULED, "action": "deny", "message": "pgtool is banned"},
    {"id": "no-huge", "match": HUGE_INDEX, "action": "deny", "message": "not an index"},
]
DENIED_FROM = f"FROM {DENIED_REPOSITORY}\n"
BUILD_TIMEOUT = 120.0

pytestmark = pytest.mark.usefixtures("seeded")


# --------------------------------------------------------------------------- archives


@dataclass(frozen=True)
class Entry:
    """One tar entry: a file (`data`), a symbolic or hard link, or a directory."""

    name: str
    data: bytes = b""
    symlink: str | None = None
    hardlink: str | None = None
    directory: bool = False


def archive(entries: list[Entry], *, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mtime = int(time.time())
            if entry.symlink is not None:
                info.type, info.linkname = tarfile.SYMTYPE, entry.symlink
            elif entry.hardlink is not None:
                info.type, info.linkname = tarfile.LNKTYPE, entry.hardlink
            elif entry.directory:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            else:
                info.size, info.mode = len(entry.data), 0o644
            tar.addfile(info, io.BytesIO(entry.data) if info.isreg() else None)
    data = buf.getvalue()
    return gzip.compress(data) if compress else data


@dataclass(frozen=True)
class BuildCase:
    """A classic build: its context and build args, and what it pulls."""

    context: list[Entry]
    build_args: Mapping[str, str] = field(default_factory=dict)
    compress: bool = False
    pulls: str = DENIED_REPOSITORY
    dockerfile: str = ""
    #: The shim refuses it by deciding the image (not as an unreadable request).
    decided: bool = True

    def target(self) -> str:
        query = "rm=1&forcerm=1&networkmode=none"
        if self.dockerfile:
            query += "&dockerfile=" + quote(self.dockerfile, safe="")
        if self.build_args:
            query += "&buildargs=" + quote(json.dumps(dict(self.build_args)))
        return f"/v1.41/build?{query}"

    def body(self) -> bytes:
        return archive(self.context, compress=self.compress)


BENIGN = b"FROM alpine\n"
EVIL = DENIED_FROM.encode()

DENIED_BUILDS: dict[str, BuildCase] = {
    # 1. A linked `Dockerfile` beside a benign lower-case `dockerfile`.
    "symlinked-dockerfile-with-lowercase-fallback": BuildCase(
        [Entry("dockerfile", BENIGN), Entry("evil", EVIL), Entry("Dockerfile", symlink="evil")],
        decided=False,
    ),
    "hardlinked-dockerfile-with-lowercase-fallback": BuildCase(
        [Entry("dockerfile", BENIGN), Entry("evil", EVIL), Entry("Dockerfile", hardlink="evil")],
        decided=False,
    ),
    # 2. A symlinked parent directory: extraction writes through it.
    "dockerfile-through-a-symlink-to-the-root": BuildCase(
        [Entry("Dockerfile", BENIGN), Entry("x", symlink="."), Entry("x/Dockerfile", EVIL)],
        decided=False,
    ),
    "dockerfile-through-a-symlink-gzip": BuildCase(
        [Entry("Dockerfile", BENIGN), Entry("x", symlink="."), Entry("x/Dockerfile", EVIL)],
        compress=True,
        decided=False,
    ),
    "dockerfile-through-a-symlinked-subdirectory": BuildCase(
        [
            Entry("Dockerfile", BENIGN),
            Entry("d", directory=True),
            Entry("d/up", symlink=".."),
            Entry("d/up/Dockerfile", EVIL),
        ],
        decided=False,
    ),
    # A backslash is part of a name to a Linux daemon, not a separator.
    "backslash-in-the-dockerfile-path": BuildCase(
        [
            Entry("foo", directory=True),
            Entry("foo/Dockerfile", BENIGN),
            Entry("foo\\Dockerfile", EVIL),
        ],
        dockerfile="foo\\Dockerfile",
        decided=False,
    ),
    # 3. Classic-builder argument semantics.
    "proxy-build-arg-in-from": BuildCase(
        [Entry("Dockerfile", b"FROM ${HTTP_PROXY:-alpine}\n")],
        {"HTTP_PROXY": DENIED_REPOSITORY},
    ),
    "proxy-build-arg-in-a-meta-arg-default": BuildCase(
        [Entry("Dockerfile", b"ARG BASE=${no_proxy:-alpine}\nFROM $BASE\n")],
        {"no_proxy": DENIED_REPOSITORY},
    ),
    "platform-arg-is-not-automatic": BuildCase(
        [Entry("Dockerfile", b"FROM ${TARGETARCH:-someuser/tool}\n")], {"TARGETARCH": "amd64"}
    ),
    "arg-redeclared-without-a-value-is-unset": BuildCase(
        [Entry("Dockerfile", b"ARG B=alpine\nARG B\nFROM ${B:-someuser/tool}\n")]
    ),
    "quoted-arg-name-is-expanded": BuildCase(
        [Entry("Dockerfile", b'ARG B=alpine\nARG "B"=someuser/tool\nFROM $B\n')]
    ),
    "leading-bom-is-dropped-from-a-word": BuildCase(
        [
            Entry(
                "Dockerfile",
                "ARG B=\ufeff\nARG E=${B:+alpine}\nARG H=${E:-someuser/tool}\nFROM $H\n".encode(),
            )
        ]
    ),
    # Parsers before BuildKit 0.13 stop reading directives at `check`: no backtick escape.
    "check-directive-unknown-to-older-parsers": BuildCase(
        [
            Entry(
                "Dockerfile",
                b"# check=skip=all\n# escape=`\nFROM alpine\nRUN true #`\nFROM someuser/tool\n",
            )
        ]
    ),
    # A heredoc formed only by joining continued lines: a daemon without heredocs reads
    # its body as instructions.
    "heredoc-formed-by-a-line-continuation": BuildCase(
        [
            Entry("Dockerfile", b"FROM alpine\nCOPY <\\\n<# /x\nFROM someuser/tool\n#\n"),
            Entry("<<#", b"x\n"),
        ]
    ),
    "onbuild-copy-from-an-index-out-of-range": BuildCase(
        [
            Entry(
                "Dockerfile",
                f"FROM alpine AS base\nONBUILD COPY --from={HUGE_INDEX} /bin/busybox /x\n"
                "FROM base\n".encode(),
            )
        ],
        pulls=HUGE_INDEX,
    ),
    # 4. COPY --from a later stage's name pulls that name from the registry.
    "copy-from-a-later-stage-name": BuildCase(
        [
            Entry(
                "Dockerfile",
                f"FROM alpine\nCOPY --from={RULED} /bin/busybox /x\n"
                f"FROM alpine AS {RULED}\n".encode(),
            )
        ],
        pulls=RULED,
    ),
}

ALLOWED_BUILDS: dict[str, BuildCase] = {
    # The classic builder ignores the syntax line: nothing is pulled for it.
    "syntax-directive": BuildCase(
        [Entry("Dockerfile", b"# syntax=docker/dockerfile:1\n" + BENIGN)]
    ),
    # What `docker build` sends for a context holding links: the links, nothing below them.
    "context-with-plain-links": BuildCase(
        [
            Entry("Dockerfile", BENIGN),
            Entry("docs", symlink="../common/docs"),
            Entry("real", directory=True),
            Entry("real/notes.txt", b"notes\n"),
            Entry("notes", symlink="real/notes.txt"),
        ]
    ),
    "copy-from-an-earlier-stage-in-another-case": BuildCase(
        [Entry("Dockerfile", b"FROM alpine AS first\nFROM alpine\nCOPY --from=FIRST /bin /b\n")]
    ),
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ruled(docker_env: DockerEnv) -> list[SeededImage]:
    """`pgtool` and the huge "index" in the registry mirror (docker.io/library/...),
    denied by rule."""
    return [seed_image(docker_env, RULED), seed_image(docker_env, HUGE_INDEX)]


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory, report: Reporter
) -> Iterator[AgentProcess]:
    shim = start_agent(
        tmp_path_factory.mktemp("shim-archives"),
        docker_env.socket_path,
        shim_policy(rules=RULES),
    )
    report(f"shim: agent answered /_ping {shim.ready_seconds:.2f} s after start")
    try:
        yield shim
    finally:
        shim.stop()


@pytest.fixture(scope="module")
def alpine(docker_env: DockerEnv) -> None:
    if not image_present(docker_env, "alpine"):
        docker(docker_env, "pull", "alpine")


def content_ids(env: DockerEnv, repository: str) -> frozenset[str]:
    """Image IDs the registry mirror serves for `repository` (Docker Hub path), any tag."""
    path = repository if "/" in repository else f"library/{repository}"
    tags = ["latest", "1.0"] if repository == DENIED_REPOSITORY else ["latest"]
    return frozenset(registry_image_id(env, path, tag) for tag in tags)


@pytest.fixture
def clean(docker_env: DockerEnv, ruled: list[SeededImage]) -> Iterator[dict[str, frozenset[str]]]:
    """No denied image is in the daemon before or after the test."""
    names = (DENIED_REPOSITORY, RULED, HUGE_INDEX)
    ids = {name: content_ids(docker_env, name) for name in names}
    for name, image_ids in ids.items():
        remove_images(docker_env, name, image_ids)
    yield ids
    for name, image_ids in ids.items():
        remove_images(docker_env, name, image_ids)


def post(socket_path: Path, target: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    status, _, reply = unix_request(
        socket_path,
        "POST",
        target,
        body=body,
        headers={"Content-Type": content_type},
        timeout=BUILD_TIMEOUT,
    )
    return status, reply


def assert_refused(status: int, reply: bytes, agent: AgentProcess) -> str:
    assert status in (400, 403), f"HTTP {status}: {reply[:500]!r}\n{agent.stderr_tail()}"
    message = json.loads(reply)["message"]
    assert isinstance(message, str) and message.startswith("pullgate:"), message
    return message


# --------------------------------------------------------------------------- builds


@pytest.mark.parametrize("case", list(DENIED_BUILDS))
@pytest.mark.usefixtures("alpine")
def test_build_case_is_a_live_way_in_when_sent_to_the_daemon_directly(
    docker_env: DockerEnv, clean: dict[str, frozenset[str]], case: str
) -> None:
    build = DENIED_BUILDS[case]

    status, reply = post(docker_env.socket_path, build.target(), build.body(), "application/x-tar")

    assert status == 200, reply[:500]
    assert images_of(docker_env, build.pulls, clean[build.pulls]), (
        f"the daemon did not pull {build.pulls}; the case no longer tests anything:\n"
        f"{reply[-800:]!r}"
    )


@pytest.mark.parametrize("case", list(DENIED_BUILDS))
@pytest.mark.usefixtures("alpine")
def test_build_case_is_refused_by_the_shim_and_pulls_nothing(
    agent: AgentProcess,
    docker_env: DockerEnv,
    clean: dict[str, frozenset[str]],
    case: str,
) -> None:
    build = DENIED_BUILDS[case]
    mark = agent.mark()

    status, reply = post(agent.socket_path, build.target(), build.body(), "application/x-tar")

    message = assert_refused(status, reply, agent)
    for name, image_ids in clean.items():
        assert not images_of(docker_env, name, image_ids), f"{name} reached the daemon"
    if build.decided:
        # Decided on the Dockerfile: the record names what the daemon would have pulled.
        pulled = (
            f"docker.io/{build.pulls}:latest"
            if "/" in build.pulls
            else f"docker.io/library/{build.pulls}:latest"
        )
        assert pulled in message, message
        agent.wait_for_decision(
            lambda r: r.get("decision") == "deny" and r.get("image") == pulled, since=mark
        )


@pytest.mark.parametrize("case", list(ALLOWED_BUILDS))
@pytest.mark.usefixtures("alpine")
def test_look_alike_builds_that_pull_nothing_denied_pass(
    agent: AgentProcess, docker_env: DockerEnv, case: str
) -> None:
    build = ALLOWED_BUILDS[case]

    status, reply = post(agent.socket_path, build.target(), build.body(), "application/x-tar")

    assert status == 200, f"HTTP {status}: {reply[:500]!r}"
    lines = [json.loads(line) for line in reply.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line or "errorDetail" in line]
    assert not errors, errors
    assert any("Successfully built" in str(line.get("stream", "")) for line in lines), lines


# --------------------------------------------------------------------------- load


@pytest.fixture(scope="module")
def saved_denied(docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """`docker save` of someuser/tool:latest, taken directly; the daemon holds none after."""
    ids = content_ids(docker_env, DENIED_REPOSITORY)
    remove_images(docker_env, DENIED_REPOSITORY, ids)
    path = tmp_path_factory.mktemp("saved-denied") / "tool.tar"
    docker(docker_env, "pull", DENIED_REPOSITORY)
    try:
        docker(docker_env, "save", "-o", str(path), DENIED_REPOSITORY)
    finally:
        remove_images(docker_env, DENIED_REPOSITORY, ids)
    return path.read_bytes()


def manifest_through_a_link(saved: bytes, *, compress: bool) -> bytes:
    """The saved archive rewritten: a `manifest.json` with no names first, then `x -> .`,
    then `x/manifest.json` naming the image; no `repositories` file."""
    entries: list[Entry] = []
    manifest = b""
    with tarfile.open(fileobj=io.BytesIO(saved)) as tar:
        for member in tar.getmembers():
            if member.name in ("manifest.json", "repositories"):
                if member.name == "manifest.json":
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    manifest = extracted.read()
                continue
            if member.isdir():
                entries.append(Entry(member.name, directory=True))
            elif member.isreg():
                extracted = tar.extractfile(member)
                assert extracted is not None
                entries.append(Entry(member.name, extracted.read()))
            elif member.issym():
                entries.append(Entry(member.name, symlink=member.linkname))
    nameless = json.loads(manifest)
    for image in nameless:
        image["RepoTags"] = None
    entries.append(Entry("manifest.json", json.dumps(nameless).encode()))
    entries.append(Entry("x", symlink="."))
    entries.append(Entry("x/manifest.json", manifest))
    return archive(entries, compress=compress)


def rewritten_manifest(saved: bytes, edit: Callable[[bytes], bytes]) -> bytes:
    """The saved archive with its `manifest.json` passed through `edit`, and no
    `repositories` file (the daemon would read names there too)."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(saved)) as tar,
        tarfile.open(fileobj=out, mode="w") as rewritten,
    ):
        for member in tar.getmembers():
            if member.name == "repositories":
                continue
            data = tar.extractfile(member) if member.isreg() else None
            if member.name == "manifest.json":
                assert data is not None
                text = edit(data.read())
                member.size = len(text)
                data = io.BufferedReader(io.BytesIO(text))
            rewritten.addfile(member, data)
    return out.getvalue()


def manifest_in_lower_case(saved: bytes) -> bytes:
    """`repotags` for `RepoTags`: Go's JSON decoding matches fields in any case."""
    return rewritten_manifest(saved, lambda text: text.replace(b'"RepoTags"', b'"repotags"'))


def test_load_with_a_lower_case_repotags_key_is_a_live_way_in(
    docker_env: DockerEnv, clean: dict[str, frozenset[str]], saved_denied: bytes
) -> None:
    body = manifest_in_lower_case(saved_denied)

    status, reply = post(docker_env.socket_path, "/v1.41/images/load", body, "application/x-tar")

    assert status == 200, reply[:500]
    assert b"someuser/tool:latest" in reply, reply[:500]


def test_load_with_a_lower_case_repotags_key_is_decided_by_the_shim(
    agent: AgentProcess,
    docker_env: DockerEnv,
    clean: dict[str, frozenset[str]],
    saved_denied: bytes,
) -> None:
    body = manifest_in_lower_case(saved_denied)

    status, reply = post(agent.socket_path, "/v1.41/images/load", body, "application/x-tar")

    message = assert_refused(status, reply, agent)
    assert "docker.io/someuser/tool:latest" in message, message
    assert not images_of(docker_env, DENIED_REPOSITORY, clean[DENIED_REPOSITORY])


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "gzip"])
def test_load_with_manifest_through_a_link_is_a_live_way_in(
    docker_env: DockerEnv,
    clean: dict[str, frozenset[str]],
    saved_denied: bytes,
    compress: bool,
) -> None:
    body = manifest_through_a_link(saved_denied, compress=compress)

    status, reply = post(docker_env.socket_path, "/v1.41/images/load", body, "application/x-tar")

    assert status == 200, reply[:500]
    assert b"someuser/tool:latest" in reply, reply[:500]
    assert images_of(docker_env, DENIED_REPOSITORY, clean[DENIED_REPOSITORY])


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "gzip"])
def test_load_with_manifest_through_a_link_is_refused_by_the_shim(
    agent: AgentProcess,
    docker_env: DockerEnv,
    clean: dict[str, frozenset[str]],
    saved_denied: bytes,
    compress: bool,
) -> None:
    body = manifest_through_a_link(saved_denied, compress=compress)

    status, reply = post(agent.socket_path, "/v1.41/images/load", body, "application/x-tar")

    message = assert_refused(status, reply, agent)
    assert "symbolic link 'x'" in message, message
    assert not images_of(docker_env, DENIED_REPOSITORY, clean[DENIED_REPOSITORY])


# --------------------------------------------------------------------------- nameless loads


def nameless(saved: bytes) -> bytes:
    """The saved archive as `docker save <ID>` writes it: no RepoTags."""

    def drop_names(text: bytes) -> bytes:
        manifest = json.loads(text)
        for image in manifest:
            image["RepoTags"] = None
        return json.dumps(manifest).encode()

    return rewritten_manifest(saved, drop_names)


def test_nameless_load_is_a_live_way_in(
    docker_env: DockerEnv, clean: dict[str, frozenset[str]], saved_denied: bytes
) -> None:
    status, reply = post(
        docker_env.socket_path, "/v1.41/images/load", nameless(saved_denied), "application/x-tar"
    )

    assert status == 200, reply[:500]
    assert images_of(docker_env, DENIED_REPOSITORY, clean[DENIED_REPOSITORY])


def test_nameless_load_is_refused_under_load_check(
    agent: AgentProcess,
    docker_env: DockerEnv,
    clean: dict[str, frozenset[str]],
    saved_denied: bytes,
) -> None:
    status, reply = post(
        agent.socket_path, "/v1.41/images/load", nameless(saved_denied), "application/x-tar"
    )

    message = assert_refused(status, reply, agent)
    assert "no name" in message, message
    assert not images_of(docker_env, DENIED_REPOSITORY, clean[DENIED_REPOSITORY])


# --------------------------------------------------------------------------- ONBUILD


ONBUILD_CHANGE = f"ONBUILD COPY --from={DENIED_REPOSITORY} /bin/busybox /x"


@pytest.fixture
def onbuild_base(docker_env: DockerEnv, container_name: str) -> Iterator[str]:
    """`acme/pgtest-onbuild:1`, committed directly from an alpine container with an ONBUILD
    trigger that pulls someuser/tool in any classic build based on it."""
    tag = "acme/pgtest-onbuild:1"
    docker(docker_env, "create", "--name", container_name, "--network", "none", "alpine", "true")
    docker(docker_env, "commit", "--change", ONBUILD_CHANGE, container_name, tag)
    try:
        yield tag
    finally:
        docker(docker_env, "image", "rm", "--force", tag, check=False)


def base_build(tag: str) -> BuildCase:
    return BuildCase([Entry("Dockerfile", f"FROM {tag}\n".encode())])


@pytest.mark.usefixtures("alpine")
def test_build_on_a_local_base_with_an_onbuild_pull_is_a_live_way_in(
    docker_env: DockerEnv, clean: dict[str, frozenset[str]], onbuild_base: str
) -> None:
    build = base_build(onbuild_base)

    status, reply = post(docker_env.socket_path, build.target(), build.body(), "application/x-tar")

    assert status == 200, reply[:500]
    assert images_of(docker_env, DENIED_REPOSITORY, clean[DENIED_REPOSITORY]), reply[-800:]


@pytest.mark.usefixtures("alpine")
def test_build_on_a_local_base_with_an_onbuild_pull_is_refused(
    agent: AgentProcess,
    docker_env: DockerEnv,
    clean: dict[str, frozenset[str]],
    onbuild_base: str,
) -> None:
    build = base_build(onbuild_base)

    status, reply = post(agent.socket_path, build.target(), build.body(), "application/x-tar")

    message = assert_refused(status, reply, agent)
    assert "docker.io/someuser/tool:latest" in message, message
    assert not images_of(docker_env, DENIED_REPOSITORY, clean[DENIED_REPOSITORY])


@pytest.mark.usefixtures("alpine")
def test_commit_adding_an_onbuild_pull_is_refused_and_plain_changes_pass(
    agent: AgentProcess, docker_env: DockerEnv, container_name: str
) -> None:
    docker(docker_env, "create", "--name", container_name, "--network", "none", "alpine", "true")
    target = f"/v1.41/commit?container={container_name}&repo=acme/pgtest-commit&tag=1"
    onbuild = target + "&changes=" + quote("ENV A=1") + "&changes=" + quote(ONBUILD_CHANGE)
    plain = target + "&changes=" + quote("ENV A=1") + "&changes=" + quote("LABEL b=2")
    try:
        status, reply = post(agent.socket_path, onbuild, b"", "application/json")
        message = assert_refused(status, reply, agent)
        assert "docker.io/someuser/tool:latest" in message, message
        assert not image_present(docker_env, "acme/pgtest-commit:1")

        status, reply = post(agent.socket_path, plain, b"", "application/json")
        assert status == 201, reply[:500]
    finally:
        docker(docker_env, "image", "rm", "--force", "acme/pgtest-commit:1", check=False)
