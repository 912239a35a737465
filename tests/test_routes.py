"""Routing as dockerd routes: decoded paths, version prefixes, strict query strings."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.inspection.routes import Endpoint, RouteError, parse_query, route_request


@pytest.mark.parametrize(
    ("target", "endpoint"),
    [
        ("/_ping", Endpoint.PASS),
        ("/v1.41/containers/json", Endpoint.PASS),
        ("/images/create?fromImage=alpine", Endpoint.IMAGE_CREATE),
        ("/v1.41/images/create", Endpoint.IMAGE_CREATE),
        ("/v1.24/images/load", Endpoint.IMAGE_LOAD),
        ("/v1.41/build?dockerfile=Dockerfile", Endpoint.BUILD),
        ("/session", Endpoint.BUILDKIT_SESSION),
        ("/v1.41/grpc", Endpoint.BUILDKIT_SESSION),
        ("/v1.41/containers/create?name=x", Endpoint.CONTAINER_CREATE),
        ("/v1.41/containers/abc/attach?stream=1", Endpoint.HIJACK),
        ("/v1.41/containers/abc/attach/ws", Endpoint.HIJACK),
        ("/v1.41/exec/abc/start", Endpoint.HIJACK),
        ("/v1.41/plugins/pull?remote=x", Endpoint.PLUGIN_PULL),
        ("/v1.41/plugins/vieux/sshfs:latest/upgrade?remote=x", Endpoint.PLUGIN_PULL),
        ("/v1.41/services/abc/update", Endpoint.SERVICE_UPDATE),
        ("/v1.41/distribution/someuser/tool:1/json", Endpoint.DISTRIBUTION),
        ("/v1.41/images/someuser/tool:latest/tag?repo=x", Endpoint.IMAGE_TAG),
        ("/images/load/tag?repo=x", Endpoint.IMAGE_TAG),
        ("/images/a/push/tag", Endpoint.IMAGE_TAG),
        ("/images/a/tag/push", Endpoint.PASS),
        ("/images/someuser/tool/json", Endpoint.PASS),
        ("/v1.41/commit?container=web", Endpoint.COMMIT),
        ("/v1.41/IMAGES/create", Endpoint.PASS),
        ("/v1.41/images/create/", Endpoint.PASS),
        ("/vx/images/create", Endpoint.PASS),
    ],
)
def test_endpoints_are_classified(target: str, endpoint: Endpoint) -> None:
    assert route_request(target).endpoint is endpoint


def test_distribution_name_comes_from_the_path() -> None:
    assert route_request("/v1.41/distribution/someuser/tool:1/json").name == "someuser/tool:1"


@pytest.mark.parametrize(
    "target",
    [
        "/v1.41/images/%63reate?fromImage=x",
        "/images%2Fcreate",
        "//images/create",
        "/v1.41/x/../images/create",
        "/v1.41/./images/create",
        "/v1.41/images/create%",
        "/v1.41/images/cr%zzeate",
    ],
)
def test_encoded_or_non_canonical_paths_to_inspected_endpoints_are_refused(target: str) -> None:
    with pytest.raises(RouteError):
        route_request(target)


def test_non_canonical_path_to_an_ordinary_endpoint_passes() -> None:
    assert route_request("/v1.41/containers//json").endpoint is Endpoint.PASS


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("fromImage=a&fromImage=b", "more than once"),
        ("fromImage=a;tag=b", "';'"),
        ("fromImage=%zz", "percent"),
        ("fromImage=%ff", "UTF-8"),
    ],
)
def test_ambiguous_queries_are_refused(query: str, fragment: str) -> None:
    with pytest.raises(RouteError, match=fragment):
        parse_query(query).get("fromImage")


def test_query_decoding_matches_go() -> None:
    q = parse_query("fromImage=someuser%2Ftool&tag=a+b&from%49mage2=x&empty")
    assert q.get("fromImage") == "someuser/tool"
    assert q.get("tag") == "a b"
    assert q.get("fromImage2") == "x"
    assert q.get("empty") == ""
    assert q.get("FromImage") is None


# --- fuzz: no path that dockerd would route to an inspected endpoint passes uninspected ---

_INSPECTED = {
    "/images/create",
    "/images/load",
    "/build",
    "/session",
    "/grpc",
    "/containers/create",
    "/services/create",
    "/plugins/pull",
    "/plugins/privileges",
    "/plugins/create",
}
_INSPECTED_RE = re.compile(r"/plugins/.+/upgrade|/services/[^/]+/update|/distribution/.+/json")


def _go_view(path: str) -> str | None:
    """What gorilla/mux would route on: decoded, and only if already clean."""
    decoded = unquote(path)
    parts = [p for p in decoded.split("/")]
    if "//" in decoded or any(p in (".", "..") for p in parts):
        return None  # mux answers with a redirect, never a handler
    return re.sub(r"^/v[0-9.]+(?=/)", "", decoded)


def _is_inspected(path: str) -> bool:
    return path in _INSPECTED or _INSPECTED_RE.fullmatch(path) is not None


_pieces = st.sampled_from(
    [
        "/",
        "images",
        "create",
        "load",
        "build",
        "v1.41",
        "v1",
        "%2F",
        "%2f",
        "%63",
        "%",
        ".",
        "..",
        "containers",
        "session",
        "grpc",
        "plugins",
        "x",
        "upgrade",
        "distribution",
        "json",
        "?",
        "&",
        "fromImage=x",
        "%25",
        "%2e",
        "services",
        "update",
        "c%72eate",
        "//",
    ]
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_pieces, min_size=1, max_size=10).map(lambda xs: "/" + "".join(xs)))
def test_fuzzed_paths_never_reach_an_inspected_endpoint_uninspected(target: str) -> None:
    path = target.split("?", 1)[0]
    try:
        route = route_request(target)
    except RouteError:
        return  # refused: nothing reaches the daemon
    view = _go_view(path)
    if view is not None and _is_inspected(view):
        assert route.inspected, f"{target!r} reaches {view!r} uninspected"
