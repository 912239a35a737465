"""Hostile HTTP against the shim's socket: no request may make the daemon pull a denied image.

Raw bytes over the unix socket (smuggling, odd encodings, duplicate parameters, odd paths,
pipelining, split writes); after each, the daemon is asked directly that it holds nothing
of `someuser/tool` (by any name, or by image ID), the reply is checked to be a refusal
(400/403, never the daemon's success), and the shim must still answer `GET /_ping`.
A hypothesis test then throws generated variations of the same at it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from bench.realdocker import DockerEnv, SeededImage
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

PULL = "/v1.41/images/create"
TOOL = "fromImage=someuser%2Ftool&tag=latest"
CRLF = "\r\n"
REFUSED = frozenset({400, 403})
REPLY_TIMEOUT = 15.0

pytestmark = pytest.mark.usefixtures("seeded")


# --------------------------------------------------------------------------- raw HTTP


@dataclass(frozen=True)
class Reply:
    """One response read off the socket; status None if the connection ended first."""

    status: int | None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    def message(self) -> str | None:
        """The `message` of a Docker-style JSON error body, if that is what it is."""
        try:
            value = json.loads(self.body)
        except ValueError:
            return None
        message = value.get("message") if isinstance(value, dict) else None
        return message if isinstance(message, str) else None


def request(
    method: str,
    target: str,
    headers: Sequence[str] = ("Host: localhost",),
    body: str = "",
    *,
    version: str = "HTTP/1.1",
    eol: str = CRLF,
) -> bytes:
    head = f"{method} {target} {version}{eol}" + "".join(f"{h}{eol}" for h in headers)
    return (head + eol + body).encode("latin-1")


def chunked(data: str) -> str:
    return f"{len(data.encode()):x}\r\n{data}\r\n0\r\n\r\n"


class Conversation:
    """A client connection to the shim that writes raw bytes and reads raw replies."""

    def __init__(self, path: Path, timeout: float = REPLY_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.rfile = self.sock.makefile("rb")
        self.timeout = timeout

    def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        """Write `pieces` one write each; a shim that stops reading early is fine."""
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for piece in pieces:
                self.sock.sendall(piece)
                if pause:
                    time.sleep(pause)

    def end_writes(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def reply(self, *, to_head: bool = False) -> Reply:
        """Read one response (head and body: Content-Length, chunked or to EOF).

        ``to_head``: the answer to a HEAD request, which has no body whatever it says.
        """
        try:
            line = self.rfile.readline(65537)
            if not line:
                return Reply(None)
            parts = line.decode("latin-1").split(" ", 2)
            status = int(parts[1])
            headers: list[tuple[str, str]] = []
            while (field := self.rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                name, _, value = field.decode("latin-1").partition(":")
                headers.append((name.strip().lower(), value.strip()))
            body = b"" if to_head else self._body(status, dict(headers))
        except TimeoutError:
            raise AssertionError(f"no complete reply within {self.timeout:.0f} s") from None
        except ConnectionResetError:
            return Reply(None)
        return Reply(status, tuple(headers), body)

    def _body(self, status: int, headers: dict[str, str]) -> bytes:
        if status < 200 or status in (204, 304):
            return b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        if "content-length" in headers:
            return bytes(self.rfile.read(int(headers["content-length"])))
        return bytes(self.rfile.read())

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


@contextlib.contextmanager
def conversation(agent: AgentProcess, timeout: float = REPLY_TIMEOUT) -> Iterator[Conversation]:
    talk = Conversation(agent.socket_path, timeout)
    try:
        yield talk
    finally:
        talk.close()


def exchange(agent: AgentProcess, *pieces: bytes, replies: int = 1) -> list[Reply]:
    with conversation(agent) as talk:
        talk.send(*pieces)
        return [talk.reply() for _ in range(replies)]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def agent(
    docker_env: DockerEnv, tmp_path_factory: pytest.TempPathFactory, report: Reporter
) -> Iterator[AgentProcess]:
    shim = start_agent(
        tmp_path_factory.mktemp("shim-hostile"), docker_env.socket_path, shim_policy()
    )
    report(f"shim: agent answered /_ping {shim.ready_seconds:.2f} s after start")
    try:
        yield shim
    finally:
        shim.stop()


@pytest.fixture(scope="module")
def digest(seeded: dict[str, SeededImage]) -> str:
    return seeded[DENIED_REPOSITORY].digest


@pytest.fixture(scope="module")
def layer_url(docker_env: DockerEnv) -> str:
    """A URL of someuser/tool's root file system (its layer blob in the local registry),
    which `POST /images/create?fromSrc=URL` would import."""
    url = f"{docker_env.registry_url}/v2/{DENIED_REPOSITORY}/manifests/latest"
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, headers=accept), timeout=10) as resp:
        manifest = json.loads(resp.read())
    layer = manifest["layers"][0]["digest"]
    return f"{docker_env.registry_url}/v2/{DENIED_REPOSITORY}/blobs/{layer}"


@pytest.fixture
def guarded(
    agent: AgentProcess, docker_env: DockerEnv, denied_image_ids: frozenset[str]
) -> Iterator[None]:
    """Before: the daemon holds nothing of someuser/tool. After: still nothing, and the shim
    still answers `GET /_ping` with 200."""
    remove_images(docker_env, DENIED_REPOSITORY, denied_image_ids)
    yield
    assert_never_pulled(agent, docker_env, denied_image_ids)
    assert_alive(agent)


def assert_never_pulled(agent: AgentProcess, env: DockerEnv, ids: frozenset[str]) -> None:
    found = images_of(env, DENIED_REPOSITORY, ids)
    assert not found, f"the daemon pulled {found}\nagent stderr:\n{agent.stderr_tail()}"


def assert_alive(agent: AgentProcess) -> None:
    assert agent.running(), f"the agent exited:\n{agent.stderr_tail()}"
    status, _, body = unix_request(agent.socket_path, "GET", "/_ping", timeout=10)
    assert (status, body) == (200, b"OK"), f"GET /_ping: {status} {body[:200]!r}"


def assert_refused(reply: Reply, agent: AgentProcess, allowed: frozenset[int] = REFUSED) -> None:
    context = f"reply: {reply}\nagent stderr:\n{agent.stderr_tail()}"
    assert reply.status in allowed, context
    if reply.status == 403:
        assert reply.header("content-type") == ["application/json"], context
        assert (reply.message() or "").startswith("pullgate:"), context
    if reply.status == 400:
        assert reply.message(), f"a 400 without a JSON message\n{context}"


# --------------------------------------------------------------------------- the battery

SMUGGLED = f"POST {PULL}?{TOOL} HTTP/1.1\r\nHost: localhost\r\n\r\n"
ALPINE = f"{PULL}?fromImage=alpine&tag=latest"


def _cases(digest: str, layer_url: str) -> dict[str, tuple[bytes, frozenset[int]]]:
    """id: (request bytes, acceptable statuses)."""
    form = "application/x-www-form-urlencoded"
    at = digest.replace(":", "%3A")
    source = quote(layer_url, safe="")
    return {
        "duplicate-fromImage": (
            request("POST", f"{PULL}?fromImage=alpine&fromImage=someuser%2Ftool&tag=latest"),
            frozenset({400}),
        ),
        "duplicate-fromImage-reversed": (
            request("POST", f"{PULL}?fromImage=someuser%2Ftool&fromImage=alpine&tag=latest"),
            REFUSED,
        ),
        "duplicate-tag": (request("POST", f"{PULL}?{TOOL}&tag=1.0"), REFUSED),
        "form-body-overrides-query": (
            request(
                "POST",
                ALPINE,
                ["Host: localhost", f"Content-Type: {form}", f"Content-Length: {len(TOOL)}"],
                TOOL,
            ),
            REFUSED,
        ),
        "form-body-only": (
            request(
                "POST",
                PULL,
                ["Host: localhost", f"Content-Type: {form}", f"Content-Length: {len(TOOL)}"],
                TOOL,
            ),
            REFUSED,
        ),
        "content-length-with-chunked": (
            request(
                "POST",
                ALPINE,
                [
                    "Host: localhost",
                    f"Content-Length: {len('0' + CRLF + CRLF)}",
                    "Transfer-Encoding: chunked",
                ],
                "0\r\n\r\n" + SMUGGLED,
            ),
            frozenset({400}),
        ),
        "two-content-lengths": (
            request(
                "POST",
                ALPINE,
                ["Host: localhost", "Content-Length: 0", f"Content-Length: {len(SMUGGLED)}"],
                SMUGGLED,
            ),
            frozenset({400}),
        ),
        "chunked-then-identity": (
            request(
                "POST",
                ALPINE,
                ["Host: localhost", "Transfer-Encoding: chunked, identity"],
                chunked(SMUGGLED),
            ),
            frozenset({400}),
        ),
        "obs-folded-header": (
            request("POST", ALPINE, ["Host: localhost", "X-Pad: a", " folded: b"]),
            frozenset({400}),
        ),
        "obs-folded-transfer-encoding": (
            request(
                "POST",
                ALPINE,
                ["Host: localhost", "Transfer-Encoding:", " chunked"],
                chunked(SMUGGLED),
            ),
            frozenset({400}),
        ),
        "bare-cr-in-header": (
            request(
                "POST",
                ALPINE,
                ["Host: localhost", "X-Pad: a\rTransfer-Encoding: chunked"],
                chunked(SMUGGLED),
            ),
            frozenset({400}),
        ),
        "bare-lf-line-endings": (request("POST", f"{PULL}?{TOOL}", eol="\n"), REFUSED),
        "percent-encoded-path": (request("POST", f"/v1.41/images/%63reate?{TOOL}"), REFUSED),
        "encoded-slash-in-path": (request("POST", f"/v1.41/images%2Fcreate?{TOOL}"), REFUSED),
        "double-slash-unversioned": (request("POST", f"//images/create?{TOOL}"), REFUSED),
        "double-slash-versioned": (request("POST", f"/v1.41//images/create?{TOOL}"), REFUSED),
        "dot-dot-segment": (request("POST", f"/v1.41/x/../images/create?{TOOL}"), REFUSED),
        "dot-segment": (request("POST", f"/v1.41/images/./create?{TOOL}"), REFUSED),
        "lower-case-method": (request("post", f"{PULL}?{TOOL}"), REFUSED),
        "absolute-form-target": (
            request("POST", f"http://localhost/v1.41/images/create?{TOOL}"),
            REFUSED,
        ),
        "bad-chunk-size": (
            request(
                "POST",
                ALPINE,
                ["Host: localhost", "Transfer-Encoding: chunked"],
                f"zz\r\n{SMUGGLED}\r\n0\r\n\r\n",
            ),
            frozenset({400}),
        ),
        "encoded-name": (request("POST", f"{PULL}?fromImage=someuser%2Ftool"), frozenset({403})),
        "upper-case-name": (
            request("POST", f"{PULL}?fromImage=SomeUser%2Ftool&tag=latest"),
            frozenset({400}),
        ),
        "digest-as-tag": (
            request("POST", f"{PULL}?fromImage=someuser%2Ftool&tag={at}"),
            frozenset({403}),
        ),
        "at-digest-as-tag": (
            request("POST", f"{PULL}?fromImage=someuser%2Ftool&tag=%40{at}"),
            REFUSED,
        ),
        "raw-at-digest-as-tag": (
            request("POST", f"{PULL}?fromImage=someuser%2Ftool&tag=@{digest}"),
            REFUSED,
        ),
        "digest-in-fromImage": (
            request("POST", f"{PULL}?fromImage=someuser%2Ftool%40{at}"),
            frozenset({403}),
        ),
        "tag-in-fromImage-and-digest-tag": (
            request("POST", f"{PULL}?fromImage=someuser%2Ftool%3Alatest&tag={at}"),
            REFUSED,
        ),
        "all-tags": (request("POST", f"{PULL}?fromImage=someuser%2Ftool"), frozenset({403})),
        "unversioned-path": (request("POST", f"/images/create?{TOOL}"), frozenset({403})),
        "old-api-version": (request("POST", f"/v1.24/images/create?{TOOL}"), REFUSED),
        "semicolon-separator": (
            request("POST", f"{PULL}?fromImage=alpine;fromImage=someuser%2Ftool"),
            REFUSED,
        ),
        "nul-in-name": (request("POST", f"{PULL}?fromImage=alpine%00someuser%2Ftool"), REFUSED),
        "http-1.0-without-host": (
            request("POST", f"{PULL}?{TOOL}", [], version="HTTP/1.0"),
            frozenset({403}),
        ),
        "hub-alias": (
            request("POST", f"{PULL}?fromImage=index.docker.io%2Fsomeuser%2Ftool&tag=latest"),
            frozenset({403}),
        ),
        # Import (load "check"): the daemon would download the layer and name it someuser/tool.
        "import-from-url-into-denied-name": (
            request("POST", f"{PULL}?fromSrc={source}&repo=someuser%2Ftool&tag=latest"),
            frozenset({403}),
        ),
    }


CASE_IDS = list(_cases("sha256:" + "0" * 64, "http://localhost/layer"))


@pytest.mark.usefixtures("guarded")
@pytest.mark.parametrize("case", CASE_IDS)
def test_hostile_request_is_refused_and_pulls_nothing(
    agent: AgentProcess, digest: str, layer_url: str, case: str
) -> None:
    payload, statuses = _cases(digest, layer_url)[case]

    (reply,) = exchange(agent, payload)

    assert_refused(reply, agent, statuses)


@pytest.mark.usefixtures("guarded")
def test_request_split_into_tiny_writes_is_still_inspected(agent: AgentProcess) -> None:
    payload = request("POST", f"{PULL}?{TOOL}", ["Host: localhost", "User-Agent: slow/1.0"])
    pieces = [payload[i : i + 3] for i in range(0, len(payload), 3)]
    with conversation(agent) as talk:
        talk.send(*pieces, pause=0.002)
        reply = talk.reply()

    assert_refused(reply, agent, frozenset({403}))


@pytest.mark.usefixtures("guarded")
def test_oversized_header_is_refused(agent: AgentProcess) -> None:
    payload = request("POST", f"{PULL}?{TOOL}", ["Host: localhost", "X-Big: " + "a" * 100_000])

    (reply,) = exchange(agent, payload)

    assert reply.status in (400, 431), reply


@pytest.mark.usefixtures("guarded")
def test_pipelined_pull_after_an_allowed_request_is_inspected(agent: AgentProcess) -> None:
    payload = request("GET", "/_ping") + request("POST", f"{PULL}?{TOOL}")

    ping, pull = exchange(agent, payload, replies=2)

    assert (ping.status, ping.body) == (200, b"OK"), ping
    assert_refused(pull, agent)


@pytest.mark.usefixtures("guarded")
def test_keep_alive_connection_inspects_every_request(
    agent: AgentProcess, docker_env: DockerEnv
) -> None:
    with conversation(agent, timeout=60) as talk:
        talk.send(request("POST", ALPINE))
        allowed = talk.reply()
        talk.send(request("POST", f"{PULL}?{TOOL}"))
        denied = talk.reply()

    assert allowed.status == 200, allowed
    assert b"error" not in allowed.body.lower(), allowed.body[-500:]
    assert_refused(denied, agent, frozenset({403}))


def test_one_connection_mixing_head_chunked_repeats_and_a_pull_stays_in_step(
    agent: AgentProcess,
) -> None:
    """The shim reuses its response parser and its parsed heads across a connection.

    A HEAD answer declares a length but has no body, `/containers/json` comes back
    chunked or not, identical heads come from the cache: the replies must stay in step
    with the requests, and the pull at the end is still inspected and refused.
    """
    ping = request("GET", "/_ping")
    with conversation(agent) as talk:
        for _ in range(3):
            for raw, status, want in (
                (ping, 200, b"OK"),
                (request("HEAD", "/_ping"), 200, b""),
                (request("GET", "/v1.41/containers/json?all=1"), 200, b"["),
                # dockerd has no HEAD /version: a 404 whose Content-Length has no body
                (request("HEAD", "/v1.41/version"), 404, b""),
                (ping, 200, b"OK"),
            ):
                talk.send(raw)
                reply = talk.reply(to_head=raw.startswith(b"HEAD"))
                assert reply.status == status, (raw, reply)
                assert reply.body.startswith(want), (raw, reply)
        talk.send(request("POST", f"{PULL}?{TOOL}"))
        denied = talk.reply()
    assert_refused(denied, agent, frozenset({403}))


# --------------------------------------------------------------------------- generated

_NAMES = [
    "someuser/tool",
    "someuser%2Ftool",
    "someuser%2ftool",
    "docker.io%2Fsomeuser%2Ftool",
    "index.docker.io/someuser/tool",
    "registry-1.docker.io%2Fsomeuser%2Ftool",
    "registry.hub.docker.com/someuser/tool",
    "INDEX.DOCKER.IO/someuser/tool",
    "docker.io:443/someuser/tool",
    "someuser/tool:latest",
    "someuser/tool%3A1.0",
    "someuser/tool@{digest}",
    "someuser/tool%40{digest}",
    "%73omeuser/tool",
    "someuser/too%6C",
    "someuser//tool",
    "someuser/./tool",
    "someuser/x/../tool",
    "SomeUser/tool",
    "+someuser/tool",
    "someuser/tool%00",
    "someuser/tool%20",
    "someuser/tool#x",
    "someuser/tool%23x",
    "someuser/tool&fromImage=alpine",
    "alpine&fromImage=someuser/tool",
    "someuser/tool%26tag=1.0",
]
_KEYS = [
    "fromImage",
    "fromImage",
    "fromImage",
    "fromimage",
    "FromImage",
    "from%49mage",
    "fromImage ",
]
_TAGS = ["latest", "1.0", "{digest}", "@{digest}", "%40{digest}", "", "%6Catest", "latest%00"]
_PATHS = [
    "/images/create",
    "/v1.41/images/create",
    "/v1.24/images/create",
    "/v1.41//images/create",
    "//images/create",
    "/images/%63reate",
    "/images%2Fcreate",
    "/images%2fcreate",
    "/v1.41/x/../images/create",
    "/v1.41/images/./create",
    "/./images/create",
    "/images/create/",
    "/IMAGES/create",
    "/v1.41/images/create;x",
    "http://localhost/images/create",
    "/v1%2E41/images/create",
    "/%2E/images/create",
    "/v1.41/images/create%3FfromImage=someuser%2Ftool",
    "/images/create#frag",
]
_METHODS = ["POST", "POST", "POST", "post", "Post", "PUT", "GET", "POST\t", "PO ST"]
_VERSIONS = ["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.1 "]
_HEADERS = [
    "Host: localhost",
    "Host: a\r\nHost: b",
    "Content-Type: application/x-www-form-urlencoded",
    "Content-Type: application/json",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: chunked, identity",
    "Transfer-Encoding: identity",
    "Transfer-Encoding:\r\n chunked",
    "Content-Length: {n}",
    "Content-Length: {n}\r\nContent-Length: {n1}",
    "Content-Length: 0",
    "Content-Length: +{n}",
    "Content-Length: {n}, {n}",
    "X-Registry-Auth: e30=",
    "Connection: close",
    "Connection: Upgrade\r\nUpgrade: tcp",
    "Expect: 100-continue",
    "X-Pad: a\rb",
    "X-Pad: a\r\n folded",
    " Leading: space",
    "X-Pad : b",
]
_BODIES = [
    "",
    "fromImage=someuser%2Ftool&tag=latest",
    chunked("fromImage=someuser%2Ftool&tag=latest"),
    SMUGGLED,
    chunked(SMUGGLED),
    f"zz\r\n{SMUGGLED}\r\n0\r\n\r\n",
    "0\r\n\r\n" + SMUGGLED,
]


@st.composite
def hostile_requests(draw: st.DrawFn) -> bytes:
    """A request around POST /images/create that names someuser/tool one way or another."""
    params = draw(
        st.lists(
            st.tuples(st.sampled_from(_KEYS), st.sampled_from(_NAMES))
            | st.tuples(st.just("tag"), st.sampled_from(_TAGS))
            | st.tuples(st.just("platform"), st.sampled_from(["linux/amd64", "linux%2Famd64"])),
            min_size=1,
            max_size=4,
        )
    )
    separator = draw(st.sampled_from(["&", "&", "&", ";", "&&"]))
    query = separator.join(f"{k}={v}" if v else k for k, v in params)
    body = draw(st.sampled_from(_BODIES))
    headers = [
        h.replace("{n}", str(len(body))).replace("{n1}", str(len(body) + 1))
        for h in draw(st.lists(st.sampled_from(_HEADERS), max_size=4))
    ]
    eol = draw(st.sampled_from([CRLF] * 9 + ["\n"]))
    method = draw(st.sampled_from(_METHODS))
    target = draw(st.sampled_from(_PATHS)) + draw(st.sampled_from(["?", "?", "??", "?&"])) + query
    return request(
        method,
        target,
        headers,
        body,
        version=draw(st.sampled_from(_VERSIONS)),
        eol=eol,
    )


@pytest.fixture(scope="module")
def fuzz_ready(
    agent: AgentProcess, docker_env: DockerEnv, denied_image_ids: frozenset[str]
) -> frozenset[str]:
    remove_images(docker_env, DENIED_REPOSITORY, denied_image_ids)
    return denied_image_ids


@settings(
    max_examples=200,
    deadline=None,
    # Shrinking re-sends requests that may each wait out a reply timeout; the failing
    # example is reported unshrunk instead.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(payload=hostile_requests())
def test_generated_hostile_requests_never_pull_and_never_crash_the_shim(
    agent: AgentProcess,
    docker_env: DockerEnv,
    digest: str,
    fuzz_ready: frozenset[str],
    payload: bytes,
) -> None:
    payload = payload.replace(b"{digest}", digest.encode())
    with conversation(agent, timeout=10) as talk:
        talk.send(payload)
        talk.end_writes()
        reply = talk.reply()
    event(f"status {reply.status}")

    assert_never_pulled(agent, docker_env, fuzz_ready)
    assert_alive(agent)


def test_client_that_half_closes_after_its_request_still_gets_the_response(
    agent: AgentProcess,
) -> None:
    for payload, status in (
        (request("GET", "/_ping", ["Host: localhost"]), 200),
        (request("POST", f"{PULL}?{TOOL}", ["Host: localhost"]), 403),
    ):
        with conversation(agent) as talk:
            talk.send(payload)
            talk.end_writes()
            assert talk.reply().status == status
