"""Which Docker Engine API endpoint a request reaches, decided as dockerd decides it.

dockerd routes with gorilla/mux on the *decoded* path, with and without a ``/v1.xx``
prefix; query parameters are read with Go's ``url.ParseQuery``. So routing here decodes
the path first: ``/v1.41/images/%63reate`` is a pull. What two parsers could read
differently on an inspected endpoint — percent-encoded paths, non-clean paths, duplicate
parameters, bad escapes, ``;`` separators — is refused rather than guessed.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import Enum, auto
from urllib.parse import unquote_to_bytes

__all__ = [
    "Endpoint",
    "Query",
    "Route",
    "RouteError",
    "parse_query",
    "route_request",
]


class RouteError(Exception):
    """A request the shim refuses to route (reply 400 with ``message``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class Endpoint(Enum):
    """What a request can do, as far as bringing images onto the machine goes."""

    PASS = auto()  # nothing to inspect
    HIJACK = auto()  # attach / exec start: may turn into a raw stream
    IMAGE_CREATE = auto()  # pull (fromImage) or import (fromSrc)
    IMAGE_LOAD = auto()  # docker load
    BUILD = auto()  # classic builder, or BuildKit with version=2
    BUILDKIT_SESSION = auto()  # /session, /grpc: BuildKit's opaque channels
    CONTAINER_CREATE = auto()
    SERVICE_CREATE = auto()
    SERVICE_UPDATE = auto()
    PLUGIN_PULL = auto()  # /plugins/pull, /plugins/{name}/upgrade, /plugins/privileges
    PLUGIN_CREATE = auto()  # plugin from a tar
    DISTRIBUTION = auto()  # /distribution/{name}/json (asks a registry)
    IMAGE_TAG = auto()  # /images/{name}/tag: a new name for local content
    COMMIT = auto()  # /commit?container=: a new image from a container's content
    EXEC_CREATE = auto()  # /containers/{id}/exec: its Privileged flag
    CONTAINER_START = auto()  # /containers/{id}/start|restart: its mounts are made again
    VOLUME_CREATE = auto()  # /volumes/create: a local volume of a host path or disk
    PLUGIN_SET = auto()  # /plugins/{name}/set: a plugin's mount sources and devices
    ARCHIVE = auto()  # /containers/{id}/archive: docker cp, through the container's mounts
    SWARM = auto()  # /swarm/init, /swarm/join: other nodes schedule containers here


@dataclass(frozen=True, slots=True)
class Route:
    endpoint: Endpoint
    path: str  # decoded, without the version prefix
    raw_query: str
    name: str | None = None  # the {name} path parameter where there is one

    @property
    def inspected(self) -> bool:
        return self.endpoint not in (Endpoint.PASS, Endpoint.HIJACK)


_VERSION_RE = re.compile(r"/v[0-9.]+(?=/)")
_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")

_EXACT = {
    "/images/create": Endpoint.IMAGE_CREATE,
    "/images/load": Endpoint.IMAGE_LOAD,
    "/build": Endpoint.BUILD,
    "/session": Endpoint.BUILDKIT_SESSION,
    "/grpc": Endpoint.BUILDKIT_SESSION,
    "/containers/create": Endpoint.CONTAINER_CREATE,
    "/services/create": Endpoint.SERVICE_CREATE,
    "/plugins/pull": Endpoint.PLUGIN_PULL,
    "/plugins/privileges": Endpoint.PLUGIN_PULL,
    "/plugins/create": Endpoint.PLUGIN_CREATE,
    "/commit": Endpoint.COMMIT,
    "/volumes/create": Endpoint.VOLUME_CREATE,
    "/swarm/init": Endpoint.SWARM,
    "/swarm/join": Endpoint.SWARM,
}
# mux patterns with a {name:.*} or {id} parameter, matched in this order.
_PATTERNS = (
    (re.compile(r"/plugins/(.+)/upgrade"), Endpoint.PLUGIN_PULL),
    (re.compile(r"/services/([^/]+)/update"), Endpoint.SERVICE_UPDATE),
    (re.compile(r"/distribution/(.+)/json"), Endpoint.DISTRIBUTION),
    (re.compile(r"/images/(.+)/tag"), Endpoint.IMAGE_TAG),
    # dockerd routes /containers/{name:.*}/...: a legacy link's name holds a '/'.
    (re.compile(r"/containers/(.+)/exec"), Endpoint.EXEC_CREATE),
    (re.compile(r"/containers/(.+)/start"), Endpoint.CONTAINER_START),
    (re.compile(r"/containers/(.+)/restart"), Endpoint.CONTAINER_START),
    (re.compile(r"/containers/(.+)/archive"), Endpoint.ARCHIVE),
    (re.compile(r"/containers/(.+)/attach"), Endpoint.HIJACK),
    (re.compile(r"/containers/(.+)/attach/ws"), Endpoint.HIJACK),
    (re.compile(r"/plugins/(.+)/set"), Endpoint.PLUGIN_SET),
    (re.compile(r"/exec/([^/]+)/start"), Endpoint.HIJACK),
)


def _decode_path(raw: str) -> str:
    """Percent-decode a path as Go's ``url.Parse`` does; bad escapes are refused."""
    if "%" not in raw:
        return raw
    if _PERCENT_RE.search(raw):
        raise RouteError("malformed percent-encoding in the request path")
    return unquote_to_bytes(raw).decode("latin-1")


def _clean(path: str) -> str:
    """gorilla/mux ``cleanPath``: resolve ``.``/``..`` and repeated slashes."""
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    cleaned = "/" + "/".join(parts)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned


def _classify(path: str) -> tuple[Endpoint, str | None]:
    endpoint = _EXACT.get(path)
    if endpoint is not None:
        return endpoint, None
    for pattern, endpoint in _PATTERNS:
        m = pattern.fullmatch(path)
        if m is not None:
            return endpoint, m.group(1)
    return Endpoint.PASS, None


def _strip_version(path: str) -> str:
    m = _VERSION_RE.match(path)
    return path[m.end() :] if m else path


@functools.lru_cache(maxsize=4096)
def route_request(target: str) -> Route:
    """Classify a request target (origin-form ``/path?query``).

    Pure, and the same few targets repeat (``/_ping``, ``/containers/json``), so results
    are cached; refusals raise and are never cached.
    """
    raw_path, _, raw_query = target.partition("?")
    if "#" in raw_path:
        raise RouteError("a fragment in the request target")
    decoded = _decode_path(raw_path)
    endpoint, name = _classify(_strip_version(decoded))
    cleaned = _clean(decoded)
    if cleaned != decoded:
        # mux answers a non-clean path with a redirect, never a pull; but refuse any
        # that would reach an inspected endpoint once cleaned, rather than rely on that.
        target_endpoint, _ = _classify(_strip_version(cleaned))
        if target_endpoint is not Endpoint.PASS or endpoint is not Endpoint.PASS:
            raise RouteError(f"non-canonical request path {raw_path!r}")
    if endpoint is not Endpoint.PASS and endpoint is not Endpoint.HIJACK and decoded != raw_path:
        raise RouteError(f"percent-encoded request path {raw_path!r}")
    return Route(endpoint, _strip_version(decoded), raw_query, name)


# --- query strings --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """Decoded query parameters, in order, as Go's ``url.ParseQuery`` reads them."""

    items: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str | None:
        """The single value of ``key``; a repeated key is ambiguous and refused."""
        found = None
        for k, v in self.items:
            if k == key:
                if found is not None:
                    raise RouteError(f"query parameter {key!r} given more than once")
                found = v
        return found

    def get_all(self, key: str) -> list[str]:
        return [v for k, v in self.items if k == key]


def _go_unescape(text: str, what: str) -> str:
    """``url.QueryUnescape``: ``+`` is a space; a bad ``%`` escape is an error."""
    if _PERCENT_RE.search(text):
        raise RouteError(f"malformed percent-encoding in query {what}")
    raw = unquote_to_bytes(text.replace("+", " "))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RouteError(f"query {what} is not UTF-8") from e


def parse_query(raw_query: str) -> Query:
    """Parse a query string strictly: Go refuses ``;`` and bad escapes, and so do we."""
    items: list[tuple[str, str]] = []
    if not raw_query:
        return Query(())
    for part in raw_query.split("&"):
        if ";" in part:
            raise RouteError("';' in the query string")
        if not part:
            continue
        key, _, value = part.partition("=")
        items.append((_go_unescape(key, "key"), _go_unescape(value, f"value of {key!r}")))
    return Query(tuple(items))
