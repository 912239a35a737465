"""The shim's cache of parsed pass-through heads: what it keeps, and what it never may."""

from __future__ import annotations

from agent.core.inspection.http1 import parse_request_head
from agent.core.inspection.routes import route_request
from agent.daemon.shim import HeadCache


def _head(target: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: docker", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _add(cache: HeadCache, raw: bytes) -> None:
    head = parse_request_head(raw)
    cache.add(raw, head, route_request(head.target))


def test_pass_through_heads_are_kept_by_their_exact_bytes() -> None:
    cache = HeadCache()
    raw = _head("/v1.47/_ping")
    _add(cache, raw)
    found = cache.entries.get(bytes(raw))  # an equal, distinct bytes object
    assert found is not None
    head, route = found
    assert (head.method, head.target, route.path) == ("GET", "/v1.47/_ping", "/_ping")
    # A byte of difference is a different head.
    assert cache.entries.get(raw.replace(b"Host: docker", b"Host: dockeR")) is None


def test_inspected_requests_are_never_kept() -> None:
    cache = HeadCache()
    for raw in (
        _head("/images/create?fromImage=alpine&tag=3", method="POST"),
        _head("/v1.41/containers/create", "Content-Length: 2", method="POST"),
        _head("/build?dockerfile=Dockerfile", method="POST"),
        _head("/images/load", method="POST"),
    ):
        _add(cache, raw)
    assert cache.entries == {}


def test_heads_with_credentials_are_never_kept() -> None:
    cache = HeadCache()
    for header in (
        "X-Registry-Auth: eyJ1c2VybmFtZSI6ImEiLCJwYXNzd29yZCI6ImIifQ==",
        "x-registry-config: e30=",
        "Authorization: Bearer abc",
        "Cookie: a=b",
    ):
        _add(cache, _head("/images/acme/app/push?tag=1", header, method="POST"))
    assert cache.entries == {}


def test_large_heads_are_not_kept() -> None:
    cache = HeadCache()
    _add(cache, _head("/containers/json", "X-Pad: " + "a" * HeadCache.MAX_HEAD))
    assert cache.entries == {}


def test_the_oldest_head_goes_first_once_full() -> None:
    cache = HeadCache(limit=3)
    heads = [_head(f"/containers/{i}/json") for i in range(5)]
    for raw in heads:
        _add(cache, raw)
    assert list(cache.entries) == heads[2:]
