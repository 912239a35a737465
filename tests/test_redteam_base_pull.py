"""Red team: a build's base pulled by the shim to read its ONBUILD triggers
(docs/shim.md, "ONBUILD triggers of a base the build pulls").

Against the session's real dockerd and registry. A base published as an image index
whose variants differ: the variant the shim pulls and reads (the build's platform, or
the daemon's own) has no triggers, the one the daemon builds on has
``ONBUILD COPY --from=<denied image>``. The daemon picks the variant by the stage's
``FROM --platform`` (and BuildKit by each platform of a multi-platform build); a local
image of another platform is not used (classic ``GetImage`` with a platform, BuildKit's
``resolveLocal`` platform match), so it pulls the other variant and runs its triggers.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.core.inspection.buildkit.decide import dockerfile
from agent.core.inspection.buildkit.inputs import from_build_query
from agent.core.inspection.request import (
    EventAction,
    Inspection,
    LocalImage,
    Lookup,
    Wanted,
    image_reference,
    onbuild_wants,
    with_build_lookups,
)
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
from tests.buildkit_client import (
    BUILD_ID_METADATA,
    GATEWAY_RESOLVE_IMAGE_CONFIG,
    GrpcConnection,
    resolve_image_config_request,
)
from tests.policy_builders import policy

#: A trigger as an image config holds it (``Config.OnBuild``: without the ``ONBUILD``).
DENIED_TRIGGER = f"COPY --from={DENIED_REPOSITORY} /bin/busybox /x"
BUILD_TIMEOUT = 180.0
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX = "application/vnd.docker.distribution.manifest.list.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
PEER = PeerInfo(pid=1, uid=1000, gid=1000)

pytestmark = pytest.mark.usefixtures("seeded", "alpine_local")


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    """Enforce, community denied, ``on_create: check`` (the default)."""
    shim = start_agent(
        tmp_path_factory.mktemp("shim-rt-base-pull"), docker_env.socket_path, shim_policy()
    )
    try:
        yield shim
    finally:
        shim.stop()


def _put_blob(env: DockerEnv, repo: str, data: bytes) -> str:
    """Upload ``data`` to the registry as a blob of ``repo`` (one monolithic PUT)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = urllib.request.Request(f"{env.registry_url}/v2/{repo}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(start, timeout=30) as answer:
        location = urllib.parse.urljoin(env.registry_url + "/", answer.headers["Location"])
    sep = "&" if "?" in location else "?"
    put = urllib.request.Request(
        f"{location}{sep}digest={digest}",
        data=data,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    urllib.request.urlopen(put, timeout=30).close()
    return digest


def _put_manifest(env: DockerEnv, repo: str, ref: str, body: bytes, media_type: str) -> str:
    put = urllib.request.Request(
        f"{env.registry_url}/v2/{repo}/manifests/{ref}",
        data=body,
        method="PUT",
        headers={"Content-Type": media_type},
    )
    urllib.request.urlopen(put, timeout=30).close()
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _variant(
    env: DockerEnv, repo: str, arch: str, onbuild: list[str], variant: str = ""
) -> dict[str, object]:
    """One platform's image (a one-file layer, ``onbuild`` triggers; ``variant`` in its
    config and its index entry): its index entry."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        member = tarfile.TarInfo("marker")
        payload = f"{arch}/{variant}/{uuid.uuid4().hex}".encode()
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    platform = {"architecture": arch, "os": "linux"} | ({"variant": variant} if variant else {})
    config = json.dumps(
        {
            **platform,
            "config": {"OnBuild": onbuild or None, "Cmd": ["true"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()],
            },
            "history": [{"created_by": f"pgtest {arch} {variant}"}],
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {
                "mediaType": CONFIG,
                "size": len(config),
                "digest": _put_blob(env, repo, config),
            },
            "layers": [
                {"mediaType": LAYER, "size": len(layer), "digest": _put_blob(env, repo, layer)}
            ],
        }
    ).encode()
    digest = _put_manifest(
        env, repo, "sha256:" + hashlib.sha256(manifest).hexdigest(), manifest, MANIFEST
    )
    return {"mediaType": MANIFEST, "size": len(manifest), "digest": digest, "platform": platform}


def _split_base(env: DockerEnv, triggers: dict[str, list[str]]) -> str:
    """An ``acme/...:1`` index in the registry (docker.io's mirror), one variant per
    architecture with its triggers; the daemon holds nothing of it."""
    repo = f"acme/pgtest-rtplat-{uuid.uuid4().hex[:10]}"
    entries = [_variant(env, repo, arch, onbuild) for arch, onbuild in triggers.items()]
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}).encode()
    _put_manifest(env, repo, "1", index, INDEX)
    return f"{repo}:1"


@pytest.fixture
def split_base(docker_env: DockerEnv) -> Iterator[str]:
    """amd64 (the daemon's own platform here) without triggers, arm64 with the denied one."""
    name = _split_base(docker_env, {"amd64": [], "arm64": [DENIED_TRIGGER]})
    yield name
    docker(docker_env, "image", "rm", "--force", name, check=False)


def _build(
    agent: AgentProcess | None,
    env: DockerEnv,
    ctx: Path,
    tag: str,
    *,
    buildkit: bool,
    platform: str = "",
) -> subprocess.CompletedProcess[str]:
    overrides = {"DOCKER_BUILDKIT": "1" if buildkit else "0"}
    environ = shim_environ(agent, env, overrides) if agent else {**env.env, **overrides}
    args = ["build", "--network", "none", "-t", tag]
    if platform:
        args += ["--platform", platform]
    if buildkit:
        args += ["--progress", "plain"]
    return docker_with(environ, *args, str(ctx), cli=DEBIAN_DOCKER_CLI, timeout=BUILD_TIMEOUT)


def _context(root: Path, dockerfile: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    return root


def _tag() -> str:
    return f"acme/pgtest-rtplat-out-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("buildkit", [False, True], ids=["classic", "buildkit"])
@pytest.mark.usefixtures("denied_image_absent")
def test_from_platform_variant_with_a_denied_trigger_is_refused(
    *,
    agent: AgentProcess,
    docker_env: DockerEnv,
    split_base: str,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
    buildkit: bool,
) -> None:
    """``FROM --platform=linux/arm64`` of a missing base. The 20.10 daemon's BuildKit
    builds that stage on the arm64 variant (and runs its trigger, fetching the denied
    image into its content store, where no image list shows it), so the shim pulls and
    reads that variant: refused. Its classic builder builds on the local variant
    whatever the stage's platform (its ``GetImage`` does not match platforms), which is
    the one the shim pulled and read: the denied image never arrives, refused or not."""
    tag = _tag()
    ctx = _context(tmp_path / "ctx", f"FROM --platform=linux/arm64 {split_base}\n")
    try:
        since = agent.mark()
        result = _build(agent, docker_env, ctx, tag, buildkit=buildkit)
        output = result.stdout + result.stderr
        assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids), describe(
            result, agent
        )
        if buildkit:
            assert result.returncode != 0, describe(result, agent)
            # Refused by the arm64 variant's trigger, before the daemon read the Dockerfile.
            agent.wait_for_decision(
                lambda r: (
                    r.get("decision") == "deny"
                    and r.get("image") == "docker.io/someuser/tool:latest"
                ),
                since=since,
            )
            assert "pullgate: pulling docker.io/someuser/tool:latest" in output, describe(
                result, agent
            )
        elif result.returncode != 0:
            assert "pullgate:" in output, describe(result, agent)
        else:
            assert "build trigger" not in output, describe(result, agent)
    finally:
        docker(docker_env, "image", "rm", "--force", tag, check=False)


# --------------------------------------------------------------- a client that hangs up


def _build_request(dockerfile: bytes) -> bytes:
    """A classic ``POST /build`` whose context holds only ``dockerfile``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        member = tarfile.TarInfo("Dockerfile")
        member.size = len(dockerfile)
        tar.addfile(member, io.BytesIO(dockerfile))
    body = raw.getvalue()
    head = (
        "POST /v1.41/build?t=acme%2Fout HTTP/1.1\r\nHost: docker\r\n"
        f"Content-Type: application/x-tar\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_a_client_that_hangs_up_stops_the_shims_pull(tmp_path: Path) -> None:
    """The shim pulls as root for the build's client: once that client is gone, its pull
    must stop (the daemon cancels a pull whose connection closes) and its build never
    reach the daemon, or hanging up at once after many builds makes the agent pull them
    all, each for up to ``PULL_LIMIT_SECONDS``."""
    pull_closed = asyncio.Event()
    seen: list[str] = []
    build_bytes: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        line = head.split("\r\n", 1)[0]
        seen.append(line)
        try:
            if line.startswith("POST /images/create"):
                writer.write(_stream_head())
                while True:  # a pull that progresses forever
                    writer.write(_chunk(b'{"status":"Downloading"}\n'))
                    await writer.drain()
                    await asyncio.sleep(0.05)
            elif line.startswith("POST /v1.41/build"):
                # The archive's head went on before the decision; its end is held.
                build_bytes.append(len(await reader.read()))
            else:
                writer.write(_json_answer(404, {"message": "no such image"}))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if line.startswith("POST /images/create"):
                pull_closed.set()
            writer.close()

    async def run() -> None:
        daemon = await asyncio.start_unix_server(serve, path=str(tmp_path / "d.sock"))
        shim = Shim(
            ShimConfig(listen=tmp_path / "shim.sock", upstream=tmp_path / "d.sock"),
            policy,
            DecisionSink(),
        )
        await shim.start()
        try:
            _, client = await asyncio.open_unix_connection(str(tmp_path / "shim.sock"))
            request = _build_request(b"FROM acme/base:1\n")
            client.write(request)
            await client.drain()
            for _ in range(200):  # the shim's pull is under way
                if any(s.startswith("POST /images/create") for s in seen):
                    break
                await asyncio.sleep(0.02)
            assert any(s.startswith("POST /images/create") for s in seen), seen
            client.close()
            await asyncio.wait_for(pull_closed.wait(), 5)
            for _ in range(100):  # the build's connection to the daemon is cut too
                if build_bytes:
                    break
                await asyncio.sleep(0.05)
            (sent,) = build_bytes
            assert sent < len(request) - request.index(b"\r\n\r\n") - 4  # never whole
        finally:
            await shim.close()
            daemon.close()

    asyncio.run(run())


def _stream_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _json_answer(status: int, body: object) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def test_nothing_more_is_pulled_for_a_build_a_local_bases_trigger_refuses(
    tmp_path: Path,
) -> None:
    """``FROM acme/a`` (local, ``ONBUILD COPY --from=someuser/tool``) then ``FROM acme/b``
    (missing): the build is refused by the first base's trigger, so the root agent pulls
    nothing for it (docs/shim.md: nothing is pulled for a build already refused)."""
    seen: list[str] = []
    local_a = {
        "Id": "sha256:" + "a" * 64,
        "RepoTags": ["acme/a:1"],
        "RepoDigests": [],
        "Config": {"OnBuild": ["COPY --from=someuser/tool / /x"]},
    }

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n", 1)[0]
        seen.append(line)
        if line.startswith("GET /images/acme/a:1/json"):
            writer.write(_json_answer(200, local_a))
        elif line.startswith("POST /images/create"):
            writer.write(_stream_head() + _chunk(b'{"status":"Pulled"}\n') + b"0\r\n\r\n")
        else:
            writer.write(_json_answer(404, {"message": "no such image"}))
        await writer.drain()
        writer.close()

    def base(name: str, line: int) -> Wanted:
        ref = image_reference(name, "base")
        return Wanted(name, ref, EventAction.BUILD, detail=f"line {line}", base=True)

    inspection = with_build_lookups(Inspection(wants=(base("acme/a:1", 1), base("acme/b:1", 2))))
    shim = Shim(
        ShimConfig(listen=tmp_path / "shim.sock", upstream=tmp_path / "d.sock"),
        policy,
        DecisionSink(),
    )

    async def run() -> Inspection:
        daemon = await asyncio.start_unix_server(serve, path=str(tmp_path / "d.sock"))
        async with daemon:
            looked, _ = await shim.build_lookups(inspection, "POST /grpc", PEER)
            return looked

    looked = asyncio.run(run())
    assert shim.denies_any(looked, PEER)
    assert not any(line.startswith("POST /images/create") for line in seen), seen


# ------------------------------------------------- triggers are read one by one, as run

#: A trigger ending in a line continuation, then the denied one: read joined, the second
#: is swallowed by the first; the daemon parses each trigger on its own (classic
#: ``dispatchTriggeredOnBuild``, BuildKit ``initOnBuildTriggers``) and runs both.
SWALLOWING = ["COPY --from=alpine /bin/busybox /a \\", DENIED_TRIGGER]


@pytest.mark.parametrize(
    "triggers",
    [SWALLOWING, ["RUN true \\", DENIED_TRIGGER], ["RUN true `", DENIED_TRIGGER]],
    ids=["copy-backslash", "run-backslash", "backtick"],
)
def test_each_trigger_is_read_on_its_own(triggers: list[str]) -> None:
    image = LocalImage("sha256:" + "c" * 64, ("acme/b:1",), (), "", tuple(triggers))
    found = {w.input for w in onbuild_wants("acme/b:1", image, EventAction.BUILD)}
    assert DENIED_REPOSITORY in found, found


@pytest.mark.parametrize("buildkit", [False, True], ids=["classic", "buildkit"])
@pytest.mark.usefixtures("denied_image_absent")
def test_a_trigger_swallowed_by_a_continuation_is_still_decided(
    *,
    agent: AgentProcess,
    docker_env: DockerEnv,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
    buildkit: bool,
) -> None:
    """A missing base whose triggers are ``SWALLOWING``: the shim pulls it and must
    refuse the build for its second trigger."""
    base = _split_base(docker_env, {"amd64": SWALLOWING})
    tag = _tag()
    try:
        result = _build(
            agent, docker_env, _context(tmp_path / "ctx", f"FROM {base}\n"), tag, buildkit=buildkit
        )
        output = result.stdout + result.stderr
        assert result.returncode != 0, describe(result, agent)
        assert "pullgate: pulling docker.io/someuser/tool:latest" in output, describe(result, agent)
        assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)
    finally:
        for name in (tag, base):
            docker(docker_env, "image", "rm", "--force", name, check=False)


def test_a_stage_of_its_own_platform_pulls_its_base_for_that_platform() -> None:
    """BuildKit builds a ``FROM --platform=P`` stage on P's variant, fetched whatever
    variant is local: a base of another platform than the build's is pulled (again) for
    P. ``$BUILDPLATFORM`` is the daemon's own, ``$TARGETPLATFORM`` the build's, global
    ARGs are expanded; a value from BuildKit's other args cannot be told."""
    inputs = from_build_query(
        {"remote": "client-session", "session": "s", "platform": "linux/arm64"}
    )
    text = (
        b"FROM --platform=linux/ARM/v7 acme/a AS a\n"
        b"FROM --platform=$BUILDPLATFORM acme/b AS b\n"
        b"FROM --platform=${TARGETPLATFORM} acme/c\n"
        b"COPY --from=a /x /a\nCOPY --from=b /x /b\n"
    )
    found = dockerfile(inputs, "Dockerfile", text, policy())
    # Each base is looked up once, for the platform its stage builds for (acme/c's is
    # the build's), and pulled for it unless the local variant is of that platform.
    assert all(lk.by_platform and not lk.force_pull for lk in found.lookups if lk.base)
    assert {(lk.name, lk.platform) for lk in found.lookups if lk.base} == {
        ("acme/a", "linux/arm/v7"),
        ("acme/b", ""),
        ("acme/c", "linux/arm64"),
    }
    assert found.setting is None
    # A global ARG is expanded as BuildKit expands it; an arg it sets alone is not known.
    known = dockerfile(
        inputs, "Dockerfile", b"ARG P=linux/s390x\nFROM --platform=$P acme/a\n", policy()
    )
    assert [lk.platform for lk in known.lookups if lk.base] == ["linux/s390x"]
    unknown = dockerfile(
        inputs, "Dockerfile", b"FROM --platform=$TARGETOS/s390x acme/a\n", policy()
    )
    assert unknown.setting is not None and not unknown.setting.allowed
    assert "stage platform '$TARGETOS/s390x'" in unknown.setting.reason


def test_every_platform_pulled_is_read(tmp_path: Path) -> None:
    """``platform=linux/amd64,linux/arm64``: the name keeps only the last variant
    locally, so each is read right after its own pull; a trigger of any counts."""
    variants = {
        "linux/amd64": [DENIED_TRIGGER],
        "linux/arm64": [],
    }
    current: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n", 1)[0]
        if line.startswith("POST /images/create"):
            platform = urllib.parse.parse_qs(line.split()[1].split("?", 1)[1])["platform"][0]
            current[:] = [platform]
            writer.write(_stream_head() + _chunk(b'{"status":"Pulled"}\n') + b"0\r\n\r\n")
        elif current:
            image = {
                "Id": "sha256:" + hashlib.sha256(current[0].encode()).hexdigest(),
                "RepoTags": ["acme/base:1"],
                "RepoDigests": [],
                "Config": {"OnBuild": variants[current[0]]},
            }
            writer.write(_json_answer(200, image))
        else:
            writer.write(_json_answer(404, {"message": "no such image"}))
        await writer.drain()
        writer.close()

    shim = Shim(
        ShimConfig(listen=tmp_path / "shim.sock", upstream=tmp_path / "d.sock"),
        policy,
        DecisionSink(),
    )
    lookup = Lookup("acme/base:1", EventAction.BUILD, base=True, platform="linux/amd64,linux/arm64")

    async def run() -> LocalImage | None:
        daemon = await asyncio.start_unix_server(serve, path=str(tmp_path / "d.sock"))
        async with daemon:
            return await shim.pull_base(lookup, "POST /grpc", PEER)

    image = asyncio.run(run())
    assert image is not None and image.onbuild == (DENIED_TRIGGER,)


# ------------------------------------------- a local base of another platform (BuildKit)


def _shim_pulls(agent: AgentProcess, since: int, name: str) -> list[dict[str, Any]]:
    """The pulls the shim made itself for a build's base ``name`` since ``since``."""
    return [
        r
        for r in agent.decisions(since)
        if r.get("action") == "image-pull"
        and r.get("input") == name
        and "pulled by Pullgate" in str(r.get("detail"))
    ]


@pytest.fixture
def arm64_local(docker_env: DockerEnv) -> Iterator[str]:
    """A base whose amd64 variant (the daemon's platform here) has the denied trigger and
    whose arm64 variant, none, is on the machine (``docker pull --platform``)."""
    name = _split_base(docker_env, {"amd64": [DENIED_TRIGGER], "arm64": []})
    docker(docker_env, "pull", "--platform", "linux/arm64", name)
    yield name
    docker(docker_env, "image", "rm", "--force", name, check=False)


@pytest.mark.usefixtures("denied_image_absent")
def test_a_local_base_of_another_platform_is_pulled_for_the_builds(
    agent: AgentProcess,
    docker_env: DockerEnv,
    arm64_local: str,
    denied_image_ids: frozenset[str],
    tmp_path: Path,
) -> None:
    """The machine holds the arm64 variant of a base; a BuildKit ``FROM base`` builds for
    the daemon's platform (amd64 here). BuildKit uses a local image only when its
    platform matches (``platformMatches`` in moby's builder-next), so it fetches the
    amd64 variant and runs that one's trigger: the shim must read that variant, not the
    local one."""
    tag = _tag()
    try:
        ctx = _context(tmp_path / "ctx", f"FROM {arm64_local}\n")
        since = agent.mark()
        result = _build(agent, docker_env, ctx, tag, buildkit=True)
        assert result.returncode != 0, describe(result, agent)
        assert "pullgate: pulling docker.io/someuser/tool:latest" in (
            result.stdout + result.stderr
        ), describe(result, agent)
        assert _shim_pulls(agent, since, arm64_local), agent.stderr_tail()
        assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)
    finally:
        docker(docker_env, "image", "rm", "--force", tag, check=False)


def test_a_local_base_of_the_stages_platform_is_not_pulled_again(
    agent: AgentProcess, docker_env: DockerEnv, arm64_local: str, tmp_path: Path
) -> None:
    """``FROM --platform=linux/arm64 base`` with that variant on the machine: BuildKit
    uses it, so the shim reads it where it is and pulls nothing (a private base, which
    the shim cannot pull, then builds once the user has pulled it)."""
    tag = _tag()
    try:
        ctx = _context(tmp_path / "ctx", f"FROM --platform=linux/arm64 {arm64_local}\n")
        since = agent.mark()
        result = _build(agent, docker_env, ctx, tag, buildkit=True)
        assert result.returncode == 0, describe(result, agent)
        assert not _shim_pulls(agent, since, arm64_local), agent.stderr_tail()
        agent.wait_for_decision(
            lambda r: r.get("decision") == "allow" and r.get("input") == arm64_local,
            since=since,
        )
    finally:
        docker(docker_env, "image", "rm", "--force", tag, check=False)


@pytest.mark.usefixtures("denied_image_absent")
def test_a_resolve_for_another_platform_than_the_local_base_reads_that_variant(
    agent: AgentProcess, docker_env: DockerEnv, denied_image_ids: frozenset[str]
) -> None:
    """buildx's frontend reads a base's ONBUILD triggers from the config a
    ``ResolveImageConfig`` returns, asked for the stage's platform; the daemon answers
    from the local image only when it is of that platform. With the amd64 variant local,
    an arm64 resolve returns the arm64 config, whose trigger is denied: the shim must
    read that variant, not the local one."""
    name = _split_base(docker_env, {"amd64": [], "arm64": [DENIED_TRIGGER]})
    try:
        docker(docker_env, "pull", name)  # the daemon's own platform, amd64 here
        since = agent.mark()
        with GrpcConnection(agent.socket_path) as conn:
            resolved = conn.unary(
                GATEWAY_RESOLVE_IMAGE_CONFIG,
                resolve_image_config_request(name, "linux/arm64"),
                metadata=[(BUILD_ID_METADATA, "no-such-build")],
                timeout=BUILD_TIMEOUT,
            )
            # PERMISSION_DENIED by the shim, not the daemon's "no such job"
            assert resolved.status == 7, (resolved, agent.stderr_tail())
            assert "pulling docker.io/someuser/tool:latest" in resolved.message, resolved
            assert _shim_pulls(agent, since, name), agent.stderr_tail()
            # The platform it is local for is answered from the machine, nothing pulled.
            docker(docker_env, "pull", name)
            again = agent.mark()
            local = conn.unary(
                GATEWAY_RESOLVE_IMAGE_CONFIG,
                resolve_image_config_request(name, "linux/amd64"),
                metadata=[(BUILD_ID_METADATA, "no-such-build")],
                timeout=BUILD_TIMEOUT,
            )
        # Allowed: on to the daemon, which knows no such build.
        assert "no such job" in local.message, (local, agent.stderr_tail())
        assert not _shim_pulls(agent, again, name), agent.stderr_tail()
        assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids)
    finally:
        docker(docker_env, "image", "rm", "--force", name, check=False)
