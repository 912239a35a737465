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

import pytest

from agent.core.inspection.request import (
    EventAction,
    Inspection,
    Wanted,
    image_reference,
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
from tests.policy_builders import policy

DENIED_TRIGGER = f"ONBUILD COPY --from={DENIED_REPOSITORY} /bin/busybox /x"
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


def _variant(env: DockerEnv, repo: str, arch: str, onbuild: list[str]) -> dict[str, object]:
    """One platform's image (a one-file layer, ``onbuild`` triggers): its index entry."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        member = tarfile.TarInfo("marker")
        payload = arch.encode()
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"OnBuild": onbuild or None, "Cmd": ["true"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()],
            },
            "history": [{"created_by": f"pgtest {arch}"}],
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
    return {
        "mediaType": MANIFEST,
        "size": len(manifest),
        "digest": digest,
        "platform": {"architecture": arch, "os": "linux"},
    }


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
    """``FROM --platform=linux/arm64`` of a missing base that the shim pulls for the
    daemon's platform (amd64, no triggers). The 20.10 daemon behind these tests builds on
    the local variant whatever the stage's platform (classic ``GetImage`` and BuildKit's
    ``resolveLocal`` do not match platforms there), so the trigger the shim read is the
    one run: the denied image never arrives, refused or not. A daemon that matches the
    local image's platform fetches the arm64 variant itself: docs/shim.md's limits."""
    tag = _tag()
    ctx = _context(tmp_path / "ctx", f"FROM --platform=linux/arm64 {split_base}\n")
    try:
        result = _build(agent, docker_env, ctx, tag, buildkit=buildkit)
        output = result.stdout + result.stderr
        assert not images_of(docker_env, DENIED_REPOSITORY, denied_image_ids), describe(
            result, agent
        )
        if result.returncode != 0:
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
