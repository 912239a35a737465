"""A Shim on a Windows-style endpoint (Docker Desktop on Windows) judges binds with Windows
rules: it asks the machine (agent.platform.windows_host_paths, faked here: there is no
Windows) for the requester's profile by the SID the endpoint names them by, and for every
folder a bind walks through, off the event loop, then refuses what
agent.core.inspection.windows_binds refuses; a (re)start judges the container as Docker
Desktop's daemon describes it (its VM path of a drive path).

The endpoint is the shim's EndpointTransport over unix sockets, as in
tests/test_windows_platform.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path

from agent.core.events import DecisionEvent
from agent.core.inspection.windows_binds import WindowsPathFacts
from agent.core.peer import PeerInfo
from agent.daemon.bus import DecisionSink
from agent.daemon.shim import ProtocolFactory, Shim, ShimConfig
from agent.platform import docker_api, windows
from tests.policy_builders import policy

SID = "S-1-5-21-3623811015-3361044348-30300820-1013"
PROFILE = r"C:\Users\dev"
VM_PATH = "Docker Desktop's Linux VM"


class _Transport:
    """An EndpointTransport over unix sockets, naming every client ``SID`` (the seam
    agent.daemon.windows_desktop.PipeEndpoint fills on Windows)."""

    def __init__(self, listen: Path, upstream: Path) -> None:
        self.listen, self.upstream = listen, upstream

    async def serve(self, factory: ProtocolFactory) -> _Closing:
        server = await asyncio.get_running_loop().create_unix_server(factory, str(self.listen))
        return _Closing(server)

    async def connect(self, factory: ProtocolFactory) -> asyncio.BaseProtocol:
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_unix_connection(factory, str(self.upstream))
        return protocol

    def peer(self, transport: asyncio.BaseTransport) -> PeerInfo:
        return PeerInfo(pid=4242, user=SID)

    async def request(self, method: str, target: str, timeout: float) -> docker_api.Response:
        return await docker_api.request_over(
            lambda: asyncio.open_unix_connection(str(self.upstream)),
            method,
            target,
            timeout=timeout,
        )


class _Closing:
    def __init__(self, server: asyncio.AbstractServer) -> None:
        self.server = server

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


class _Machine:
    """The Windows machine's facts (agent.platform.windows_host_paths.MachinePaths)."""

    def __init__(self, reparse: Iterable[str] = ()) -> None:
        self.reparse = set(reparse)
        self.profiles: list[str] = []
        self.examined: list[str] = []

    def profile(self, sid: str) -> str | None:
        self.profiles.append(sid)
        return PROFILE if sid == SID else None

    def examine(self, paths: list[str]) -> dict[str, WindowsPathFacts]:
        self.examined += paths
        return {p: WindowsPathFacts(exists=True, reparse=p in self.reparse) for p in paths}


class _Daemon:
    """Answers creates and starts; describes container ``kept`` with the bind ``source``
    as Docker Desktop's daemon keeps it."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.kept_source = "/run/desktop/mnt/host/c/Users/dev/proj"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
        except asyncio.IncompleteReadError:
            return  # a connection the shim opened and closed unused
        length = next(
            (int(line.split(":", 1)[1]) for line in head.split("\r\n") if ":" in line
             and line.split(":", 1)[0].lower() == "content-length"),
            0,
        )  # fmt: skip
        await reader.readexactly(length)
        request = head.split("\r\n", 1)[0]
        self.requests.append(request)
        if request.startswith("GET /containers/kept/json"):
            mounts = [{"Type": "bind", "Source": self.kept_source, "RW": True}]
            body = json.dumps({"Id": "kept", "HostConfig": {}, "Mounts": mounts}).encode()
            status = "200 OK"
        elif "/containers/kept/start" in request:
            body, status = b"", "204 No Content"
        else:
            body, status = b'{"Id":"made","Warnings":[]}', "201 Created"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()


async def _send(path: Path, method: str, target: str, body: object = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(
        f"{method} {target} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def test_a_shim_on_a_windows_endpoint_judges_binds_with_windows_rules(tmp_path: Path) -> None:
    events: list[object] = []
    daemon = _Daemon()
    machine = _Machine(reparse=[r"C:\Users\dev\junction"])
    answers: dict[str, bytes] = {}

    async def scenario() -> None:
        upstream, listen = tmp_path / "daemon.sock", tmp_path / "shim.sock"
        server = await asyncio.start_unix_server(daemon.serve, str(upstream))
        sink = DecisionSink()
        sink.subscribe(events.append)
        shim = Shim(
            ShimConfig(
                listen=Path(windows.shim_pipe(SID)),
                upstream=upstream,
                protected=(Path(r"C:\ProgramData\Pullgate\State"),),
                windows_paths=machine,
            ),
            lambda: policy(on_create="allow"),
            sink,
            transport=_Transport(listen, upstream),
        )
        await shim.start()
        try:
            for name, bind in (
                ("socket", "//var/run/docker.sock:/var/run/docker.sock"),
                ("project", r"C:\Users\dev\proj:/app"),
                ("junction", r"C:\Users\dev\junction\x:/x"),
                ("state", r"C:\ProgramData\Pullgate\State:/s"),
            ):
                config = {"Image": "alpine", "HostConfig": {"Binds": [bind]}}
                answers[name] = await _send(listen, "POST", "/v1.47/containers/create", config)
            answers["kept"] = await _send(listen, "POST", "/v1.47/containers/kept/start")
            daemon.kept_source = "/run/desktop/mnt/host/c/Windows"
            answers["windows"] = await _send(listen, "POST", "/v1.47/containers/kept/start")
        finally:
            await shim.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    assert answers["socket"].startswith(b"HTTP/1.1 403"), answers["socket"]
    assert VM_PATH.encode() in answers["socket"]
    assert answers["project"].startswith(b"HTTP/1.1 201"), answers["project"]
    assert answers["junction"].startswith(b"HTTP/1.1 403") and b"junction" in answers["junction"]
    assert answers["state"].startswith(b"HTTP/1.1 403") and b"Pullgate" in answers["state"]
    assert answers["kept"].startswith(b"HTTP/1.1 204"), answers["kept"]
    assert answers["windows"].startswith(b"HTTP/1.1 403"), answers["windows"]
    assert b"Windows' own folder" in answers["windows"]
    # Only the allowed create and the first start reached the daemon.
    assert [r for r in daemon.requests if not r.startswith("GET")] == [
        "POST /v1.47/containers/create HTTP/1.1",
        "POST /v1.47/containers/kept/start HTTP/1.1",
    ]
    # The profile is the client's, by the SID the endpoint names them by; the machine
    # looked at every folder on the way, and nothing for the VM path.
    assert set(machine.profiles) == {SID}
    assert r"C:\Users\dev\proj" in machine.examined and r"C:\Users" in machine.examined
    assert not any("var" in p for p in machine.examined)
    denials = [e for e in events if isinstance(e, DecisionEvent) and e.decision == "deny"]
    assert len(denials) == 4
    assert {e.rule for e in denials} == {"containers.host_access"}
    assert all(e.peer.user == SID and e.peer.uid is None for e in denials)
