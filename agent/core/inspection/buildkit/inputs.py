"""What a BuildKit build will read, from either shape of client.

The Docker CLI's built-in BuildKit client sends ``POST /build?version=2`` with a session;
the daemon turns the query into a solve of the ``dockerfile.v0`` frontend (moby
``builder-next/builder.go``). buildx sends ``Control/Solve`` over ``/grpc`` with the
frontend attributes itself. Both end as one :class:`BuildInputs`: where the Dockerfile
comes from (which session, which local, which paths the frontend may read), the options
that change what it pulls, the images named outside it, and ``unreadable`` when no
reading of the Dockerfile can tell what the build pulls.

Pure core: a query or the bytes of a ``SolveRequest`` in, a value out. What the
frontend reads is taken from BuildKit's ``frontend/dockerui`` (``config.go``
``ReadEntrypoint``, ``context.go`` ``initContext``, ``namedcontext.go``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.message import DecodeError

from agent.core.inspection.buildkit.protos.control_pb2 import CacheOptions, SolveRequest
from agent.core.inspection.buildkit.protos.llb_pb2 import Definition, Op
from agent.core.inspection.request import (
    InspectionError,
    build_args_json,
    cache_from_json,
    image_reference,
    json_field,
    strict_json,
)
from agent.core.inspection.routes import Query, RouteError
from agent.core.reference import ReferenceError, parse_normalized_named

__all__ = [
    "BUILD_QUERY",
    "CONTROL_SOLVE",
    "DOCKERFILE_FRONTENDS",
    "BuildInputs",
    "NamedContext",
    "context_overrides",
    "from_build_query",
    "from_solve_request",
    "is_dockerfile_frontend",
    "named_context",
]

BUILD_QUERY = "POST /build"
CONTROL_SOLVE = "Control/Solve"

#: Repositories of the Dockerfile frontend images, whose LLB is the Dockerfile's (any tag
#: or digest): the shim reads the Dockerfile as they do. Any other frontend image runs
#: its own program, whose pulls cannot be known here.
DOCKERFILE_FRONTENDS = frozenset(
    {"docker.io/docker/dockerfile", "docker.io/docker/dockerfile-upstream"}
)

_DOCKERFILE_FRONTEND = "dockerfile.v0"
_GATEWAY_FRONTEND = "gateway.v0"
_DEFAULT_FILENAME = "Dockerfile"
_DEFAULT_DOCKERFILE_LOCAL = "dockerfile"
_DEFAULT_CONTEXT_LOCAL = "context"
_CLIENT_SESSION = "client-session"
_BUILD_ARG = "build-arg:"
_CONTEXT = "context:"
_LOCAL_SESSION = "local-sessionid:"
_IMAGE_SCHEME = "docker-image"
#: Named-context and LLB source schemes that bring files, never an image.
_FILE_SCHEMES = frozenset({"local", "git", "http", "https"})
#: Top-level field of pb.Op holding a nested build (``BuildOp``): LLB inside LLB.
_BUILD_OP_FIELD = 5


@dataclass(frozen=True)
class BuildInputs:
    """Everything a build decision needs from the request, before the Dockerfile.

    ``paths``: the Dockerfile paths the frontend may read in ``dockerfile_local``
    (``filename``, then the lower-case ``dockerfile`` beside a ``Dockerfile``, which
    newer frontends fall back to). ``named_contexts``: ``context:NAME`` attributes by
    NAME (a ``::platform`` suffix kept). ``unreadable``: why no reading of the
    Dockerfile can tell what the build pulls, or None.
    """

    via: str
    session: str
    dockerfile_session: str
    dockerfile_local: str
    filename: str
    paths: tuple[str, ...]
    build_args: Mapping[str, str]
    target: str
    frontend: str
    frontend_image: str | None
    named_contexts: Mapping[str, str]
    cache_imports: tuple[str, ...]
    llb_images: tuple[str, ...]
    unreadable: str | None
    #: The solve's ``Ref`` (its build ID), "" when the daemon makes it.
    ref: str = ""
    #: The frontend's raw attributes, for whatever the tunnel needs to correlate.
    attrs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class NamedContext:
    """One ``context:NAME`` value read as dockerui reads it: ``scheme`` and the image
    (``docker-image``) or other source it names."""

    scheme: str
    value: str

    @property
    def image(self) -> str | None:
        """The image pulled, or None (scratch, or a source of files)."""
        if self.scheme != _IMAGE_SCHEME or self.value == "scratch":
            return None
        return self.value


def named_context(value: str) -> NamedContext:
    """Split a named context as ``NamedContext.load`` does: ``scheme:rest``, ``//`` trimmed
    from an image, ``git@...`` meaning git."""
    scheme, sep, rest = value.partition(":")
    if not sep:
        return NamedContext("", value)
    if scheme.startswith("git@"):
        return NamedContext("git", value)
    if scheme == _IMAGE_SCHEME:
        rest = rest.removeprefix("//")
    return NamedContext(scheme, rest)


def is_dockerfile_frontend(image: str) -> bool:
    """Whether ``image`` is a Dockerfile frontend image (any tag or digest)."""
    try:
        return parse_normalized_named(image).name in DOCKERFILE_FRONTENDS
    except ReferenceError:
        return False


def _same_image(a: str, b: str) -> bool:
    """Whether two names mean one image as dockerui looks a context up (``:latest`` implied)."""
    try:
        return parse_normalized_named(a).with_default_tag() == (
            parse_normalized_named(b).with_default_tag()
        )
    except ReferenceError:
        return False


def context_overrides(named_contexts: Mapping[str, str], image: str) -> list[str]:
    """The named contexts that replace ``image`` where the frontend looks it up
    (``context:NAME`` or ``context:NAME::PLATFORM``)."""
    return [
        value for key, value in named_contexts.items() if _same_image(key.split("::", 1)[0], image)
    ]


def _clean_filename(name: str) -> str:
    """The Dockerfile path as the frontend reads it (continuity ``RootPath`` cleans it
    from the local's root); a climb above the root or a backslash is refused."""
    if "\\" in name or "\x00" in name:
        raise InspectionError(
            f"pullgate: the Dockerfile path {name!r} holds a character Pullgate cannot "
            "read the same way as the daemon"
        )
    stripped = name.lstrip("/")  # the reader resolves from the local's root
    cleaned = posixpath.normpath(stripped) if stripped else ""
    if cleaned == ".." or cleaned.startswith("../"):
        raise InspectionError(f"pullgate: the Dockerfile path {name!r} leaves its directory")
    if cleaned in ("", "."):
        raise InspectionError(f"pullgate: the Dockerfile path {name!r} names no file")
    return cleaned


def _dockerfile_paths(filename: str) -> tuple[str, ...]:
    if posixpath.basename(filename) == _DEFAULT_FILENAME:
        return (filename, posixpath.join(posixpath.dirname(filename), "dockerfile"))
    return (filename,)


def _split_cache_from(value: str) -> list[str]:
    """``cache-from``: comma-separated registry refs (dockerui splits on every comma)."""
    return [ref for ref in value.split(",") if ref]


def _cache_imports_json(raw: str) -> tuple[list[str], str | None]:
    """The ``cache-imports`` attribute: a JSON array of ``{Type, Attrs}``."""
    entries = strict_json(raw, "cache-imports")
    if not isinstance(entries, list):
        raise InspectionError("pullgate: cache-imports must be a JSON array")
    refs: list[str] = []
    unreadable: str | None = None
    for entry in entries:
        if not isinstance(entry, dict):
            raise InspectionError("pullgate: each cache-imports entry must be an object")
        kind = json_field(entry, "Type", "a cache-imports entry")
        attrs = json_field(entry, "Attrs", "a cache-imports entry")
        if kind is None:
            kind = ""
        if attrs is None:
            attrs = {}
        if not isinstance(kind, str) or not isinstance(attrs, dict):
            raise InspectionError("pullgate: a cache-imports entry has a malformed Type or Attrs")
        if not all(isinstance(v, str) for v in attrs.values()):
            raise InspectionError("pullgate: cache-imports attributes must be strings")
        ref, why = _cache_entry(kind, attrs)
        refs += ref
        unreadable = unreadable or why
    return refs, unreadable


def _cache_entry(kind: str, attrs: Mapping[str, str]) -> tuple[list[str], str | None]:
    """A cache import: a registry ref is decided like an image; any other type (a local
    directory, a cloud store) brings content Pullgate cannot name."""
    if kind == "registry":
        ref = attrs.get("ref", "")
        return ([ref] if ref else []), None
    return [], f"a build importing cache of type {kind or '(none)'!r}"


def _frontend_attrs(
    via: str,
    session: str,
    frontend: str,
    attrs: Mapping[str, str],
    *,
    cache_imports: list[str],
    llb_images: tuple[str, ...] = (),
    unreadable: list[str] | None = None,
    ref: str = "",
) -> BuildInputs:
    reasons = list(unreadable or [])
    filename = _clean_filename(attrs.get("filename", _DEFAULT_FILENAME))
    dockerfile_local = attrs.get("dockerfilekey", _DEFAULT_DOCKERFILE_LOCAL)
    if not dockerfile_local:
        raise InspectionError("pullgate: the dockerfilekey attribute names no local")
    context_key = attrs.get("contextkey", _DEFAULT_CONTEXT_LOCAL)
    remote = attrs.get(context_key, "")
    if remote:
        reasons.append(f"a build from the remote context {remote}")
    dockerfile_session = attrs.get(_LOCAL_SESSION + dockerfile_local, session)
    if not dockerfile_session:
        reasons.append("a build without a session to read its Dockerfile from")

    build_args = {k[len(_BUILD_ARG) :]: v for k, v in attrs.items() if k.startswith(_BUILD_ARG)}
    named = {k[len(_CONTEXT) :]: v for k, v in attrs.items() if k.startswith(_CONTEXT)}
    for name, value in named.items():
        context = named_context(value)
        if context.scheme == _IMAGE_SCHEME:
            if context.image is not None:
                image_reference(context.image, f"image of build context {name}")
        elif context.scheme not in _FILE_SCHEMES:
            reasons.append(f"a build with the named context {name}={value}")

    raw_imports = attrs.get("cache-imports", "")
    if raw_imports:
        refs, why = _cache_imports_json(raw_imports)
        cache_imports += refs
        if why:
            reasons.append(why)
    cache_imports += _split_cache_from(attrs.get("cache-from", ""))

    frontend_image: str | None = None
    if frontend == _GATEWAY_FRONTEND:
        frontend_image = attrs.get("source", "")
        if not frontend_image:
            raise InspectionError("pullgate: the gateway frontend names no source image")
        if not is_dockerfile_frontend(frontend_image):
            reasons.append(f"a build with the frontend image {frontend_image}")
        for value in context_overrides(named, frontend_image):
            image = named_context(value).image
            if image is None or not is_dockerfile_frontend(image):
                reasons.append(f"a build whose frontend {frontend_image} is replaced by {value}")
    elif frontend not in ("", _DOCKERFILE_FRONTEND):
        reasons.append(f"a build with the frontend {frontend}")

    return BuildInputs(
        via=via,
        session=session,
        dockerfile_session=dockerfile_session,
        dockerfile_local=dockerfile_local,
        filename=filename,
        paths=_dockerfile_paths(filename),
        build_args=MappingProxyType(build_args),
        target=attrs.get("target", ""),
        frontend=frontend,
        frontend_image=frontend_image,
        named_contexts=MappingProxyType(named),
        cache_imports=tuple(dict.fromkeys(cache_imports)),
        llb_images=llb_images,
        unreadable=reasons[0] if reasons else None,
        ref=ref,
        attrs=MappingProxyType(dict(attrs)),
    )


def from_build_query(query: Mapping[str, str] | Query) -> BuildInputs:
    """``POST /build?version=2``, read as moby's builder-next turns it into a solve.

    ``dockerfile`` becomes ``filename`` ("" and "." mean the default), ``buildargs``
    the ``build-arg:*`` attributes (null values dropped), ``cachefrom`` the comma-joined
    ``cache-from`` attribute (so a name holding a comma is two names to the frontend);
    ``remote=client-session`` means the context and Dockerfile come from the session,
    any other ``remote`` (or none: the body) a context Pullgate does not read here.
    """
    try:

        def get(key: str) -> str:
            return query.get(key) or ""

        attrs: dict[str, str] = {}
        dockerfile = get("dockerfile")
        if dockerfile not in ("", "."):
            attrs["filename"] = dockerfile
        if get("target"):
            attrs["target"] = get("target")
        raw_args = get("buildargs")
        for key, value in (build_args_json(raw_args) if raw_args else {}).items():
            attrs[_BUILD_ARG + key] = value
        raw_cache = get("cachefrom")
        attrs["cache-from"] = ",".join(cache_from_json(raw_cache) if raw_cache else [])
        remote = get("remote")
        session = get("session")
    except RouteError as e:
        raise InspectionError(f"pullgate: {e.message}", e.status) from e
    reasons: list[str] = []
    if remote != _CLIENT_SESSION:
        reasons.append(
            f"a build from the remote context {remote}"
            if remote
            else "a build of an uploaded context"
        )
    return _frontend_attrs(
        BUILD_QUERY, session, _DOCKERFILE_FRONTEND, attrs, cache_imports=[], unreadable=reasons
    )


def from_solve_request(payload: bytes) -> BuildInputs:
    """A ``moby.buildkit.v1.Control/Solve`` request (buildx, or any BuildKit client)."""
    request = SolveRequest()
    try:
        request.ParseFromString(payload)
    except DecodeError as e:
        raise InspectionError("pullgate: the BuildKit solve request does not decode") from e
    reasons: list[str] = []
    if request.FrontendInputs:
        reasons.append(
            "a build with frontend inputs ("
            + ", ".join(sorted(request.FrontendInputs))
            + "), which Pullgate cannot read"
        )
    has_definition = request.HasField("Definition") and len(_ops(request.Definition)) > 0
    if has_definition and request.Frontend:
        raise InspectionError("pullgate: a solve request with both LLB and a frontend")
    llb_images: tuple[str, ...] = ()
    if has_definition:
        images, why = _llb_images(request.Definition)
        llb_images = tuple(images)
        if why:
            reasons.append(why)
    cache_imports, why = _cache_options(request.Cache) if request.HasField("Cache") else ([], None)
    if why:
        reasons.append(why)
    return _frontend_attrs(
        CONTROL_SOLVE,
        request.Session,
        request.Frontend,
        dict(request.FrontendAttrs),
        cache_imports=cache_imports,
        llb_images=llb_images,
        unreadable=reasons,
        ref=request.Ref,
    )


def _cache_options(cache: CacheOptions) -> tuple[list[str], str | None]:
    refs = [ref for ref in cache.ImportRefsDeprecated if ref]
    unreadable: str | None = None
    for entry in cache.Imports:
        found, why = _cache_entry(entry.Type, dict(entry.Attrs))
        refs += found
        unreadable = unreadable or why
    return refs, unreadable


def _llb_images(definition: Definition) -> tuple[list[str], str | None]:
    """The images a raw LLB definition pulls: its ``docker-image://`` source ops.

    Other ops run or copy what sources brought, so only sources matter; a nested build
    op runs LLB this message does not hold, and a source of another kind than files or
    images (an OCI layout from the client's store, a future scheme) cannot be named.
    """
    images: list[str] = []
    for raw in _ops(definition):
        op = Op()
        try:
            op.ParseFromString(raw)
        except DecodeError as e:
            raise InspectionError("pullgate: an LLB op of the solve request does not decode") from e
        if _BUILD_OP_FIELD in _field_numbers(raw):
            return images, "a raw LLB build with a nested build op"
        if not op.HasField("source"):
            continue
        identifier = op.source.identifier
        scheme, sep, rest = identifier.partition("://")
        if sep and scheme == _IMAGE_SCHEME:
            image_reference(rest, "image of an LLB source")
            images.append(rest)
        elif not (sep and scheme in _FILE_SCHEMES):
            return images, f"a raw LLB build with the source {identifier}"
    return images, None


def _ops(definition: Definition) -> list[bytes]:
    """The encoded ops of a definition (the field is named ``def``, a Python keyword)."""
    ops = getattr(definition, "def")
    return [bytes(op) for op in ops]


def _field_numbers(data: bytes) -> set[int]:
    """The top-level field numbers of an encoded message (already known to decode)."""
    numbers: set[int] = set()
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        numbers.add(number)
        if wire == 0:
            _, at = _varint(data, at)
        elif wire == 1:
            at += 8
        elif wire == 2:
            length, at = _varint(data, at)
            at += length
        elif wire == 5:
            at += 4
        else:
            raise InspectionError("pullgate: an LLB op uses a wire type Pullgate cannot read")
    return numbers


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise InspectionError("pullgate: an LLB op holds a malformed number")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at
