"""What a BuildKit build will read, from either shape of client.

The Docker CLI's built-in BuildKit client sends ``POST /build?version=2`` with a session;
the daemon turns the query into a solve of the ``dockerfile.v0`` frontend (moby
``builder-next/builder.go``). buildx sends ``Control/Solve`` over ``/grpc`` with the
frontend attributes itself. Both end as one :class:`BuildInputs`: where the Dockerfile
comes from (which session, which local, which paths the frontend may read), the options
that change what it pulls, the images named outside it, and ``unreadable`` when no
reading of the Dockerfile can tell what the build pulls.

buildx (any client using ``client.Build``) runs the gateway client-side: its
``Control/Solve`` names no frontend and no LLB (:attr:`BuildInputs.gateway_forwarding`),
and the build's solves arrive as ``LLBBridge/Solve`` calls of that build
(:func:`from_gateway_solve`), beside ``ResolveImageConfig`` / ``ResolveSourceMeta`` calls
that have the daemon fetch an image's manifest and config (:func:`image_of_resolve_config`,
:func:`image_of_resolve_source_meta`).

A source policy in any of these requests converts one source into another (``FROM
alpine`` may pull anything), so it makes the request unreadable, as does a field Pullgate
does not know: what it does to the pulls cannot be told.

Pure core: a query or the bytes of a ``SolveRequest`` in, a value out. What the
frontend reads is taken from BuildKit's ``frontend/dockerui`` (``config.go``
``ReadEntrypoint``, ``context.go`` ``initContext``, ``namedcontext.go``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import NamedTuple

from google.protobuf.message import DecodeError, Message

from agent.core.inspection.base_pull import form_bool
from agent.core.inspection.buildkit.protos import gateway_pb2
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
    "DEFAULT_COPY_IMAGE",
    "DOCKERFILE_FRONTENDS",
    "GATEWAY_SOLVE",
    "KNOWN_ATTRS",
    "KNOWN_ATTR_PREFIXES",
    "BuildInputs",
    "NamedContext",
    "ResolveTarget",
    "context_overrides",
    "from_build_query",
    "from_gateway_solve",
    "from_solve_request",
    "image_of_resolve_config",
    "image_of_resolve_source_meta",
    "is_dockerfile_frontend",
    "named_context",
]

BUILD_QUERY = "POST /build"
CONTROL_SOLVE = "Control/Solve"
GATEWAY_SOLVE = "LLBBridge/Solve"

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

#: Frontend attributes Pullgate knows (the Dockerfile frontend's, BuildKit's dockerui and
#: builder packages, and what buildx sends); any other makes the build unreadable: one
#: unknown attribute (``override-copy-image``, ``gateway-*``) can name an image to pull.
KNOWN_ATTRS = frozenset(
    {
        "filename", "target", "dockerfilekey", "contextkey", "contextsubdir", "cmdline",
        "source", "frontend.caps", "requestid", "cache-from", "cache-imports", "no-cache",
        "platform", "image-resolve-mode", "add-hosts", "force-network-mode", "hostname",
        "shm-size", "ulimit", "cgroup-parent", "multi-platform", "memory", "memswap",
        "cpushares", "cpuperiod", "cpuquota", "cpusetcpus", "cpusetmems", "context",
        "override-copy-image", "call", "check",
    }
)  # fmt: skip
#: Attribute families by prefix: build args, labels, named contexts, the session of a
#: local, a local's shared key, attestations, VCS facts, metadata of frontend inputs.
KNOWN_ATTR_PREFIXES = (
    "build-arg:", "label:", "context:", "local-sessionid:", "sharedkey:", "attest:",
    "vcs:", "input-metadata:",
)  # fmt: skip
#: The helper image BuildKit 0.8 runs every COPY and ADD in when file ops are disabled
#: (``BUILDKIT_DISABLE_FILEOP``), unless ``override-copy-image`` names another.
DEFAULT_COPY_IMAGE = (
    "docker/dockerfile-copy:v0.1.9"
    "@sha256:e8f159d3f00786604b93c675ee2783f8dc194bb565e61ca5788f6a6e9d304061"
)

#: The top-level fields of each request (BuildKit's published numbers) that change no
#: pull beyond what Pullgate reads of them; any other field makes the request unreadable.
#: Control ``SolveRequest``: Ref, Definition, ExporterDeprecated, ExporterAttrsDeprecated,
#: Session, Frontend, FrontendAttrs, Cache, Entitlements, FrontendInputs, Internal,
#: Exporters, EnableSessionExporter, CompatibilityVersion, ProxyNetwork.
_CONTROL_SOLVE_FIELDS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 16, 17})
#: Its source policy (12) and the session supplying one (``SourcePolicySession``, 15).
_CONTROL_SOLVE_POLICIES = frozenset({12, 15})
#: Control ``SolveRequest.Entitlements`` (repeated string), not in Pullgate's subset.
_ENTITLEMENTS = 9
#: Gateway ``SolveRequest``: Definition, Frontend, FrontendOpt, ImportCacheRefsDeprecated
#: (removed in v0.11, read as registry cache imports), allowResultReturn,
#: allowResultArrayRef, Final, ExporterAttr, CacheImports, FrontendInputs, Evaluate.
_GATEWAY_SOLVE_FIELDS = frozenset({1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14})
_GATEWAY_SOLVE_POLICIES = frozenset({15})
#: ``ResolveImageConfigRequest``: Ref, Platform, ResolveMode, LogName, ResolverType,
#: SessionID, StoreID; ``ResolveSourceMetaRequest``: Source, Platform, LogName,
#: ResolveMode, Git, Image, HTTP. Both carry SourcePolicies as 8.
_RESOLVE_FIELDS = frozenset({1, 2, 3, 4, 5, 6, 7})
_RESOLVE_POLICIES = frozenset({8})
#: ``sourceresolver.ResolverTypeRegistry``: the only resolver that names a registry image.
_RESOLVER_REGISTRY = 0


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
    #: A ``Control/Solve`` naming neither a frontend nor LLB: the client runs the build
    #: through the gateway API (``client.Build``, as buildx does), so its solves arrive
    #: as ``LLBBridge/Solve`` calls of this ``ref`` (:func:`from_gateway_solve`); this
    #: request itself runs no frontend, and reads no Dockerfile.
    gateway_forwarding: bool = False
    #: ``Control/Solve`` ``Entitlements`` (9): what the client asks the daemon to allow
    #: the build (``security.insecure`` runs ``RUN --security=insecure`` privileged).
    entitlements: tuple[str, ...] = ()


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
    gateway_forwarding: bool = False,
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
    if not dockerfile_session and frontend:  # raw LLB and gateway forwarding read none
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

    named_by_key = {context_key}  # the attribute ``contextkey`` names is read above
    unknown = sorted(
        k
        for k in attrs
        if k not in KNOWN_ATTRS and k not in named_by_key and not k.startswith(KNOWN_ATTR_PREFIXES)
    )
    if unknown:
        reasons.append(
            f"a build with the frontend attribute {unknown[0]!r}, which Pullgate does not know"
        )
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
        gateway_forwarding=gateway_forwarding,
    )


def from_build_query(query: Mapping[str, str] | Query) -> BuildInputs:
    """``POST /build?version=2``, read as moby's builder-next turns it into a solve.

    ``dockerfile`` becomes ``filename`` ("" and "." mean the default), ``buildargs``
    the ``build-arg:*`` attributes (null values dropped), ``cachefrom`` the comma-joined
    ``cache-from`` attribute (so a name holding a comma is two names to the frontend);
    ``remote=client-session`` means the context and Dockerfile come from the session,
    any other ``remote`` (or none: the body) a context Pullgate does not read here;
    ``pull`` sets ``image-resolve-mode`` and ``platform`` the ``platform`` attribute.
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
        # builder-next: `pull` forces the bases' pull, `platform` is the build's.
        attrs["image-resolve-mode"] = "pull" if form_bool(get("pull")) else "default"
        if get("platform"):
            attrs["platform"] = get("platform")
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
    _parse(request, payload, "the BuildKit solve request")
    reasons = _request_problems(
        payload, _CONTROL_SOLVE_FIELDS, _CONTROL_SOLVE_POLICIES, "a build request"
    )
    entitlements = []
    for number, value in _raw_fields(payload, "the BuildKit solve request"):
        if number == _ENTITLEMENTS and isinstance(value, bytes):
            try:
                entitlements.append(value.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise InspectionError("pullgate: a build entitlement is not UTF-8") from e
    inputs = _from_solve(CONTROL_SOLVE, request, reasons)
    return replace(inputs, entitlements=tuple(entitlements)) if entitlements else inputs


def from_gateway_solve(payload: bytes, parent: BuildInputs) -> BuildInputs:
    """A ``moby.buildkit.v1.frontend.LLBBridge/Solve`` request of the build ``parent``
    (the ``Control/Solve`` whose ``Ref`` the call's ``buildkit-controlapi-buildid``
    metadata names): a solve in that build's session, read as a ``Control/Solve`` of it.

    ``FrontendOpt`` is read as ``FrontendAttrs``, ``CacheImports`` (and the removed
    ``ImportCacheRefsDeprecated``, registry refs to older daemons) as the solve's cache
    imports. What ``parent`` itself names is decided with ``parent``, not here.
    """
    request = gateway_pb2.SolveRequest()
    _parse(request, payload, "the BuildKit gateway solve request")
    reasons = _request_problems(
        payload, _GATEWAY_SOLVE_FIELDS, _GATEWAY_SOLVE_POLICIES, "a build request"
    )
    solve = SolveRequest(
        Ref=parent.ref,
        Session=parent.session,
        Frontend=request.Frontend,
        FrontendAttrs=dict(request.FrontendOpt),
    )
    if request.HasField("Definition"):
        solve.Definition.CopyFrom(request.Definition)
    for name, definition in request.FrontendInputs.items():
        solve.FrontendInputs[name].CopyFrom(definition)
    if request.ImportCacheRefsDeprecated or request.CacheImports:
        solve.Cache.ImportRefsDeprecated.extend(request.ImportCacheRefsDeprecated)
        solve.Cache.Imports.extend(request.CacheImports)
    return _from_solve(GATEWAY_SOLVE, solve, reasons)


def _from_solve(via: str, request: SolveRequest, reasons: list[str]) -> BuildInputs:
    """A solve (``Control/Solve``, or a gateway solve in its terms), after ``reasons``."""
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
        via,
        request.Session,
        request.Frontend,
        dict(request.FrontendAttrs),
        cache_imports=cache_imports,
        llb_images=llb_images,
        unreadable=reasons,
        ref=request.Ref,
        gateway_forwarding=via == CONTROL_SOLVE and not request.Frontend and not has_definition,
    )


class ResolveTarget(NamedTuple):
    """What a ``ResolveImageConfig`` / ``ResolveSourceMeta`` call has the daemon resolve.

    ``image``: the image whose manifest and config the daemon fetches (a pull of its
    metadata, decided as a pull by the build), or None. ``unreadable``: why what it
    fetches cannot be told (the caller follows ``builds``), or None. At most one is
    set; neither when the source is no image (git, http, a local directory).
    """

    image: str | None
    unreadable: str | None
    #: The platform asked for (``os/arch[/variant]``), "" if none: the daemon then takes
    #: a local image of any platform, and otherwise only one of that platform.
    platform: str = ""
    #: ``ResolveMode`` ``pull``: the daemon fetches it whatever the machine holds.
    force_pull: bool = False


def _platform(
    request: gateway_pb2.ResolveImageConfigRequest | gateway_pb2.ResolveSourceMetaRequest,
) -> str:
    """A resolve's platform as ``os/arch[/variant]`` ("" when it names none)."""
    if not request.HasField("Platform"):
        return ""
    p = request.Platform
    if not p.OS or not p.Architecture:
        return ""  # BuildKit fills in the daemon's own
    return "/".join(part for part in (p.OS, p.Architecture, p.Variant) if part)


def image_of_resolve_config(payload: bytes) -> ResolveTarget:
    """A ``moby.buildkit.v1.frontend.LLBBridge/ResolveImageConfig`` request: ``Ref`` is
    the image, resolved in a registry unless ``ResolverType`` names a session's OCI
    layout store (which Pullgate cannot read, as for an ``oci-layout://`` context)."""
    request = gateway_pb2.ResolveImageConfigRequest()
    _parse(request, payload, "the BuildKit image resolve request")
    reasons = _request_problems(payload, _RESOLVE_FIELDS, _RESOLVE_POLICIES, "an image resolve")
    if reasons:
        return ResolveTarget(None, reasons[0])
    if request.ResolverType != _RESOLVER_REGISTRY:
        kind = "an OCI layout store" if request.ResolverType == 1 else "an unknown resolver"
        return ResolveTarget(
            None,
            f"an image resolve of {request.Ref!r} from {kind} ({request.ResolverType})",
        )
    image_reference(request.Ref, "image to resolve")
    return ResolveTarget(request.Ref, None, _platform(request), request.ResolveMode == "pull")


def image_of_resolve_source_meta(payload: bytes) -> ResolveTarget:
    """A ``moby.buildkit.v1.frontend.LLBBridge/ResolveSourceMeta`` request: its
    ``Source`` op names the source as LLB does (``docker-image://`` an image; git, http
    and local sources bring files; any other source, an OCI layout say, is unreadable)."""
    request = gateway_pb2.ResolveSourceMetaRequest()
    _parse(request, payload, "the BuildKit source resolve request")
    reasons = _request_problems(payload, _RESOLVE_FIELDS, _RESOLVE_POLICIES, "a source resolve")
    if reasons:
        return ResolveTarget(None, reasons[0])
    identifier = request.Source.identifier
    scheme, sep, rest = identifier.partition("://")
    if sep and scheme == _IMAGE_SCHEME:
        image_reference(rest, "image to resolve")
        mode = request.Source.attrs.get("image.resolvemode", "")
        pull = "pull" in (request.ResolveMode, mode)
        return ResolveTarget(rest, None, _platform(request), pull)
    if sep and scheme in _FILE_SCHEMES:
        return ResolveTarget(None, None)
    return ResolveTarget(None, f"a resolve of the source {identifier!r}")


def _parse(message: Message, payload: bytes, what: str) -> None:
    try:
        message.ParseFromString(payload)
    except DecodeError as e:
        raise InspectionError(f"pullgate: {what} does not decode") from e


def _request_problems(
    payload: bytes, known: frozenset[int], policies: frozenset[int], what: str
) -> list[str]:
    """Why a request (known to decode) is unreadable by its top-level fields: a source
    policy, or a session supplying one, that is present and not empty (it may convert
    any source into any other), or a field outside ``known``."""
    reasons: list[str] = []
    for number, value in _raw_fields(payload, "a BuildKit request"):
        if number in policies:
            if value not in (0, b""):
                reasons.append(
                    f"{what} with a source policy (field {number}), which may replace "
                    "the images it names"
                )
        elif number not in known:
            reasons.append(f"{what} field Pullgate does not know ({number})")
    return list(dict.fromkeys(reasons))


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
    """The top-level field numbers of an encoded LLB op (already known to decode)."""
    return {number for number, _ in _raw_fields(data, "an LLB op")}


def _raw_fields(data: bytes, what: str) -> list[tuple[int, int | bytes]]:
    """The top-level fields of an encoded message (already known to decode), in order:
    ``(number, value)``, a varint's value as an int, any other field's bytes."""
    fields: list[tuple[int, int | bytes]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, at = _varint(data, at)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, at = data[at : at + size], at + size
        elif wire == 2:
            length, at = _varint(data, at)
            value, at = data[at : at + length], at + length
        else:
            raise InspectionError(f"pullgate: {what} uses a wire type Pullgate cannot read")
        if at > len(data):
            raise InspectionError(f"pullgate: {what} is truncated")
        fields.append((number, value))
    return fields


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise InspectionError("pullgate: a BuildKit message holds a malformed number")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at
