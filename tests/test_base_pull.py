"""A build's missing base pulled by the shim before deciding (agent.core.inspection.base_pull
and Shim.pull_base): the credentials dockerd's classic builder would use, the pull's
target, its progress stream, and the shim's pull against a scripted daemon socket (the
real daemon's side is tests/test_shim_build_base_pull.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent.core.events import DecisionEvent, Event
from agent.core.inspection.base_pull import (
    INDEX_SERVER,
    MAX_PROGRESS_LINE,
    PullProgress,
    auth_for,
    base_pull_refusal,
    form_bool,
    platform_matches,
    pull_target,
    registry_auth_header,
    registry_configs,
)
from agent.core.inspection.buildkit.decide import dockerfile, resolve_inspection
from agent.core.inspection.buildkit.inputs import from_build_query
from agent.core.inspection.request import (
    EventAction,
    Inspection,
    InspectionError,
    LocalImage,
    Lookup,
    Wanted,
    image_reference,
    with_build_lookups,
)
from agent.core.peer import PeerInfo
from agent.daemon import shim as shim_module
from agent.daemon.bus import DecisionSink
from agent.daemon.bypass import ApprovalLedger
from agent.daemon.shim import Shim, ShimConfig
from tests.policy_builders import policy

PEER = PeerInfo(pid=1, uid=1000, gid=1000)


def _header(configs: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(configs).encode()).decode()


# --------------------------------------------------------------------------- pure


def test_registry_config_is_read_as_dockerd_reads_it() -> None:
    configs = {"registry.acme.example": {"username": "u", "password": "p"}}
    assert registry_configs(_header(configs)) == configs
    # What dockerd cannot decode it ignores: the build pulls without credentials.
    for bad in (None, "", "%%%", _header([1, 2]), base64.urlsafe_b64encode(b"{").decode()):
        assert registry_configs(bad) == {}


def test_credentials_are_picked_as_moby_resolve_auth_config_picks_them() -> None:
    hub = {"username": "hub"}
    acme = {"username": "acme"}
    legacy = {"username": "legacy"}
    configs: dict[str, object] = {INDEX_SERVER: hub, "registry.acme.example": acme}
    assert auth_for(configs, image_reference("acme/app", "x")) == hub
    assert auth_for(configs, image_reference("registry.acme.example/app:1", "x")) == acme
    assert auth_for(configs, image_reference("other.example/app", "x")) is None
    # A legacy key (a URL) matches another registry by its host name...
    configs = {"https://registry.acme.example/v1/": legacy}
    assert auth_for(configs, image_reference("registry.acme.example/app", "x")) == legacy
    # ...but Docker Hub only by its own key (moby returns the empty config for it).
    assert auth_for({"https://docker.io/": hub}, image_reference("acme/app", "x")) is None
    assert auth_for({"docker.io": hub}, image_reference("acme/app", "x")) is None


def test_the_auth_header_carries_the_chosen_credentials() -> None:
    configs: dict[str, object] = {"r.example": {"username": "u", "password": "p"}}
    header = registry_auth_header(configs, image_reference("r.example/app", "x"))
    assert header is not None
    assert json.loads(base64.urlsafe_b64decode(header)) == {"username": "u", "password": "p"}
    assert registry_auth_header(configs, image_reference("alpine", "x")) is None


def test_pull_target_is_the_builders_pull() -> None:
    ref = image_reference("acme/app", "x")
    assert pull_target(ref) == "/images/create?fromImage=docker.io%2Facme%2Fapp&tag=latest"
    digest = "sha256:" + "a" * 64
    pinned = image_reference(f"acme/app:1@{digest}", "x")
    assert pull_target(pinned, "linux/arm64") == (
        f"/images/create?fromImage=docker.io%2Facme%2Fapp&tag=sha256%3A{'a' * 64}"
        "&platform=linux%2Farm64"
    )


def test_pull_progress_finds_the_error_wherever_the_lines_split() -> None:
    lines = (
        b'{"status":"Pulling from acme/app"}\n'
        b'{"errorDetail":{"message":"denied"},"error":"denied"}\n'
    )
    progress = PullProgress()
    for i in range(len(lines)):
        progress.feed(lines[i : i + 1])
    progress.finish()
    assert progress.error == "denied" and progress.lines == 2
    detail_only = PullProgress()
    detail_only.feed(b'{"errorDetail":{"message":"manifest unknown"}}')
    detail_only.finish()
    assert detail_only.error == "manifest unknown"
    answer = PullProgress()
    answer.feed(b'{"message":"pull access denied for acme/x"}\n')
    assert answer.error is None and answer.message == "pull access denied for acme/x"
    unreadable = PullProgress()
    unreadable.feed(b"x" * (MAX_PROGRESS_LINE + 1))
    assert unreadable.error is not None
    ok = PullProgress()
    ok.feed(b'{"status":"Status: Downloaded newer image for acme/app:latest"}\n')
    ok.finish()
    assert ok.error is None


def test_refusal_says_to_pull_the_base_first() -> None:
    message = base_pull_refusal("acme/base:1", "the registry said no")
    assert message.startswith("pullgate: the build's base image acme/base:1 is not on this")
    assert "(the registry said no)" in message
    assert "Run `docker pull acme/base:1` first" in message


def test_form_bool_is_dockerds() -> None:
    assert [form_bool(v) for v in ("", "0", "no", "FALSE", " none ")] == [False] * 5
    assert [form_bool(v) for v in ("1", "true", "yes", "anything")] == [True] * 4


def test_bases_are_marked_for_the_pull_with_the_builds_platform() -> None:
    ref = image_reference("acme/base", "x")
    base = Wanted("acme/base", ref, EventAction.BUILD, detail="Dockerfile line 1: FROM", base=True)
    copied = Wanted("acme/tool", ref, EventAction.BUILD, detail="Dockerfile line 2: COPY")
    result = with_build_lookups(
        Inspection(wants=(base, copied)), platform="linux/arm64", force_pull=True
    )
    assert result.lookups == (
        Lookup("acme/base", EventAction.BUILD, base=True, platform="linux/arm64", force_pull=True),
        Lookup("acme/tool", EventAction.BUILD),
    )


def test_buildkit_builds_mark_their_bases_and_carry_platform_and_pull() -> None:
    query = {"remote": "client-session", "session": "s", "platform": "linux/arm64", "pull": "1"}
    inputs = from_build_query(query)
    assert inputs.attrs["platform"] == "linux/arm64"
    assert inputs.attrs["image-resolve-mode"] == "pull"
    found = dockerfile(
        inputs, "Dockerfile", b"FROM acme/base\nCOPY --from=acme/tool /x /x\n", policy()
    )
    assert found.lookups == (
        Lookup(
            "acme/base",
            EventAction.BUILD,
            base=True,
            platform="linux/arm64",
            force_pull=True,
            by_platform=True,
        ),
        Lookup("acme/tool", EventAction.BUILD),
    )
    plain = from_build_query({"remote": "client-session", "session": "s"})
    assert plain.attrs["image-resolve-mode"] == "default" and "platform" not in plain.attrs
    # buildx's frontend reads a base's triggers from the config a resolve fetches.
    assert resolve_inspection("acme/base", policy()).lookups[0].base


def test_the_shims_pull_record_explains_the_daemons_pull_event() -> None:
    ledger = ApprovalLedger()
    ref = image_reference("acme/base:1", "x")
    event = DecisionEvent(
        action="image-pull",
        decision="allow",
        image=ref.canonical,
        input="acme/base:1",
        category="org",
        rule="org",
        reason="",
        policy="p",
        policy_serial=1,
        endpoint="POST /build",
        message=None,
        peer=PEER,
    )
    ledger(event)
    assert ledger.was_approved("acme/base:1", event.time)


# --------------------------------------------------------------------------- the shim's pull

Handler = Callable[[str, dict[str, str], asyncio.StreamWriter], Awaitable[None]]


async def _daemon(path: Path, handler: Handler) -> asyncio.AbstractServer:
    """A unix socket that reads one request head per connection and lets ``handler``
    answer it (request line, lower-case headers)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(
            (k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in head[1:] if h)
        )
        try:
            await handler(head[0], headers, writer)
        finally:
            writer.close()

    return await asyncio.start_unix_server(serve, path=str(path))


def _json_answer(status: int, body: object) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def _stream_head() -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


IMAGE = {
    "Id": "sha256:" + "b" * 64,
    "RepoTags": ["acme/base:1"],
    "RepoDigests": [],
    "Config": {"OnBuild": ["COPY --from=someuser/tool / /x"]},
}


def _shim(tmp_path: Path, events: list[Event]) -> Shim:
    sink = DecisionSink()
    sink.subscribe(events.append)
    return Shim(
        ShimConfig(listen=tmp_path / "shim.sock", upstream=tmp_path / "d.sock"),
        policy,
        sink,
    )


def test_an_allowed_base_is_recorded_then_pulled_with_the_builds_credentials(
    tmp_path: Path,
) -> None:
    seen: list[tuple[str, dict[str, str]]] = []
    pulled = False

    async def handler(line: str, headers: dict[str, str], writer: asyncio.StreamWriter) -> None:
        nonlocal pulled
        seen.append((line, headers))
        if line.startswith("POST /images/create"):
            writer.write(_stream_head() + _chunk(b'{"status":"Pulling"}\n') + b"0\r\n\r\n")
            pulled = True
        elif pulled:
            writer.write(_json_answer(200, IMAGE))
        else:
            writer.write(_json_answer(404, {"message": "no such image"}))
        await writer.drain()

    events: list[Event] = []
    shim = _shim(tmp_path, events)
    config = _header({"registry.acme.example": {"username": "u"}, INDEX_SERVER: {"username": "h"}})
    lookup = Lookup("acme/base:1", EventAction.BUILD, base=True, platform="linux/amd64")

    async def run() -> object:
        server = await _daemon(tmp_path / "d.sock", handler)
        async with server:
            return await shim.pull_base(lookup, "POST /build", PEER, config)

    image = asyncio.run(run())
    assert image is not None and getattr(image, "onbuild", ()) == (
        "COPY --from=someuser/tool / /x",
    )
    post = next(h for line, h in seen if line.startswith("POST "))
    line = next(line for line, _ in seen if line.startswith("POST "))
    assert "fromImage=docker.io%2Facme%2Fbase&tag=1&platform=linux%2Famd64" in line
    assert json.loads(base64.urlsafe_b64decode(post["x-registry-auth"])) == {"username": "h"}
    pulls = [e for e in events if isinstance(e, DecisionEvent)]
    assert [(e.action, e.decision, e.image) for e in pulls] == [
        ("image-pull", "allow", "docker.io/acme/base:1")
    ]
    assert "pulled by Pullgate" in (pulls[0].detail or "")


def test_a_denied_base_is_not_pulled(tmp_path: Path) -> None:
    events: list[Event] = []
    shim = _shim(tmp_path, events)
    lookup = Lookup("someuser/tool", EventAction.BUILD, base=True)
    # No daemon at all: nothing may be asked.
    assert asyncio.run(shim.pull_base(lookup, "POST /build", PEER)) is None
    assert events == []


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (
            _stream_head() + _chunk(b'{"error":"manifest unknown"}\n') + b"0\r\n\r\n",
            "the daemon's pull failed: manifest unknown",
        ),
        (
            _json_answer(404, {"message": "pull access denied for acme/base"}),
            "the daemon refused the pull (HTTP 404): pull access denied for acme/base",
        ),
    ],
    ids=["error-in-progress", "error-status"],
)
def test_a_failed_pull_refuses_with_the_advice(tmp_path: Path, answer: bytes, why: str) -> None:
    async def handler(line: str, headers: dict[str, str], writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    shim = _shim(tmp_path, [])
    lookup = Lookup("acme/base:1", EventAction.BUILD, base=True)

    async def run() -> None:
        server = await _daemon(tmp_path / "d.sock", handler)
        async with server:
            await shim.pull_base(lookup, "POST /build", PEER)

    with pytest.raises(InspectionError) as caught:
        asyncio.run(run())
    assert caught.value.status == 403
    assert caught.value.message == base_pull_refusal("acme/base:1", why)


def test_a_pull_without_progress_is_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shim_module, "PULL_IDLE_SECONDS", 0.3)

    async def handler(line: str, headers: dict[str, str], writer: asyncio.StreamWriter) -> None:
        writer.write(_stream_head() + _chunk(b'{"status":"Pulling"}\n'))
        await writer.drain()
        await asyncio.sleep(1)  # the registry stalls

    shim = _shim(tmp_path, [])
    lookup = Lookup("acme/base:1", EventAction.BUILD, base=True)

    async def run() -> None:
        server = await _daemon(tmp_path / "d.sock", handler)
        async with server:
            await shim.pull_base(lookup, "POST /build", PEER)

    with pytest.raises(InspectionError) as caught:
        asyncio.run(run())
    assert "the pull made no progress for 0 s" in caught.value.message
    assert "docker pull acme/base:1" in caught.value.message


@pytest.mark.parametrize(
    ("wanted", "local", "matches"),
    [
        ("linux/amd64", ("linux", "amd64", ""), True),
        ("Linux/AMD64", ("linux", "x86_64", ""), True),
        ("linux/arm64", ("linux", "arm64", "v8"), True),  # arm64 is v8 unless it says
        ("linux/arm64/v8", ("linux", "aarch64", ""), True),
        ("linux/arm/v7", ("linux", "arm", ""), True),  # no variant: same OS and arch
        ("linux/arm", ("linux", "arm", "v7"), True),  # arm is v7 unless it says
        ("linux/arm/v7", ("linux", "arm", "v6"), False),  # BuildKit takes it; Pullgate pulls
        ("linux/arm64", ("linux", "amd64", ""), False),
        ("linux/amd64", ("windows", "amd64", ""), False),
        ("linux/amd64", ("", "", ""), False),  # the daemon did not say
        ("", ("linux", "amd64", ""), False),  # nor did the daemon's /version
        ("linux/amd64,linux/arm64", ("linux", "amd64", ""), False),  # each its own variant
        ("linux//v7", ("linux", "arm", "v7"), False),
        ("linux/arm/v7/x", ("linux", "arm", "v7"), False),
    ],
)
def test_a_local_variant_matches_as_buildkit_matches_it(
    wanted: str, local: tuple[str, str, str], matches: bool
) -> None:
    assert platform_matches(wanted, *local) is matches


def test_a_local_image_says_its_platform() -> None:
    info = {"Id": "sha256:" + "1" * 64, "Os": "linux", "Architecture": "arm64", "Variant": "v8"}
    image = LocalImage.from_daemon(info)
    assert (image.os, image.architecture, image.variant) == ("linux", "arm64", "v8")
    odd = LocalImage.from_daemon({"Id": "sha256:" + "1" * 64, "Os": 7, "Architecture": None})
    assert (odd.os, odd.architecture, odd.variant) == ("", "", "")
