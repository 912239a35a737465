"""Request inspection: which images would this Docker API request bring onto the machine?

Pure core of the shim (no sockets): a routed request head, and where needed its JSON
body or the files found in its tar body, go in; the image references the daemon would
fetch come out — read exactly as dockerd reads the same parameters — or an
``InspectionError`` when the request is ambiguous or cannot be read. What the shim then
does with them (decide, forward, refuse) is not decided here.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from agent.core.inspection.dockerfile.resolve import DockerfileError, ImageUse, parse_dockerfile
from agent.core.inspection.host_access import (
    HostAccess,
    HostAccessError,
    from_container_config,
    from_exec_config,
    from_plugin_privileges,
    from_plugin_settings,
    from_service_spec,
    from_start_body,
    from_volume_create,
)
from agent.core.inspection.http1 import RequestHead
from agent.core.inspection.routes import Endpoint, Query, Route, RouteError, parse_query
from agent.core.policy.document import (
    BuildsSetting,
    HostAccessSetting,
    LoadSetting,
    OnCreateSetting,
    Policy,
)
from agent.core.reference import (
    DigestInvalidFormatError,
    DigestReference,
    Reference,
    ReferenceError,
    parse_any_reference,
    parse_digest,
    parse_docker_ref,
    parse_normalized_named,
)

__all__ = [
    "MAX_ANCESTORS",
    "MAX_JSON_BODY",
    "After",
    "EventAction",
    "Inspection",
    "InspectionError",
    "LocalImage",
    "Lookup",
    "NeedJson",
    "NeedTar",
    "SettingOutcome",
    "TarFindings",
    "Wanted",
    "build_args_json",
    "builds_setting",
    "cache_from_json",
    "image_reference",
    "inspect_head",
    "inspect_json_body",
    "json_field",
    "local_image_wants",
    "loses_last_name",
    "nameless_outcome",
    "onbuild_wants",
    "resolved_by_name",
    "strict_json",
    "with_build_lookups",
]

MAX_JSON_BODY = 4 * 1024 * 1024


class InspectionError(Exception):
    """A request the shim refuses to pass because it cannot read it safely (400)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class EventAction(StrEnum):
    """The audit ``event.action`` of a decision."""

    PULL = "image-pull"
    BUILD = "image-build"
    LOAD = "image-load"
    IMPORT = "image-import"
    CREATE = "container-create"
    PLUGIN = "plugin-pull"
    SERVICE = "service-create"
    DISTRIBUTION = "distribution-inspect"
    TAG = "image-tag"
    COMMIT = "container-commit"
    EXEC = "container-exec"
    ARCHIVE = "container-archive"
    SWARM = "swarm-join"
    START = "container-start"
    VOLUME = "volume-create"


@dataclass(frozen=True)
class Wanted:
    """One image the request would bring onto the machine (or run)."""

    input: str
    reference: Reference
    action: EventAction
    all_tags: bool = False
    detail: str | None = None
    #: A build stage's base (``FROM``, or the image a gateway resolve reads the config
    #: of): its ``ONBUILD`` triggers run in the build, so it is read before deciding.
    base: bool = False
    #: A base's own platform (``FROM --platform=...``), which picks the variant the
    #: daemon builds on (and whose triggers run); None: the build's.
    platform: str | None = None


@dataclass(frozen=True)
class SettingOutcome:
    """A request decided by a policy setting (``builds``, ``load``), not by an image."""

    action: EventAction
    setting: str
    allowed: bool
    reason: str
    hint: str


class After(StrEnum):
    """What the daemon's success answer made, to hold until it is shown to use the
    content that was decided (a concurrent retag can move a name in between)."""

    CONTAINER = "container"  # 201 {"Id": container}: its Image must be the checked ID
    TAG = "tag"  # the new name must name the checked ID
    COMMIT = "commit"  # 201 {"Id": image}: its Parent must be the checked ID


@dataclass(frozen=True)
class Lookup:
    """A local image a request uses, resolved with the daemon before deciding.

    dockerd's ``GetImage`` finds ``name`` in its reference store, else searches image
    IDs by prefix (``abc123`` also parses as an official image's name), so only the
    daemon can say what ``name`` means. ``container``: ``name`` is a container and the
    image it was created from is meant (commit). ``new_name``: the name a tag adds.
    ``moves``: ``name`` is about to name other content (a tag's, commit's or build's new
    name); if it is the last name of what it names now, that content must be allowed,
    or renaming could strip denied content of its names.
    """

    name: str
    action: EventAction
    container: bool = False
    after: After | None = None
    new_name: str = ""
    moves: bool = False
    #: A build's base image (``Wanted.base``): if the machine does not have it (or the
    #: build forces a pull, ``force_pull``), the shim pulls it for ``platform`` first,
    #: when its name is allowed, and then judges it as a local base (``base_pull``).
    base: bool = False
    platform: str = ""
    force_pull: bool = False
    #: BuildKit uses a local base only if it is of the platform it builds the stage for
    #: (``platform``; empty: the daemon's own), and fetches that variant otherwise: a
    #: local base of another platform is then pulled for ``platform`` first, as if missing.
    by_platform: bool = False


@dataclass(frozen=True)
class Inspection:
    """What a request needs decided. ``lookups`` are local images to resolve with the
    daemon (a container's image may be an ID, or a local tag over content from elsewhere)."""

    wants: tuple[Wanted, ...] = ()
    setting: SettingOutcome | None = None
    lookups: tuple[Lookup, ...] = ()
    #: What the request asks of the host (``host_access``), decided with resolved paths.
    host: HostAccess = field(default_factory=HostAccess)
    host_action: EventAction | None = None
    #: A container whose settings (as the daemon describes them) are judged too: a
    #: start mounts its binds again, through whatever their paths lead to now.
    host_container: str = ""


@dataclass(frozen=True)
class NeedJson:
    """Buffer the (small) body, then call ``inspect_json_body`` (tag and commit are
    decided from the query and local images, their bodies are only buffered)."""

    route: Route


@dataclass(frozen=True)
class TarFindings:
    """What a tar scan captured of the wanted members.

    ``final``: each name's content after extraction (the last entry wins); ``every``:
    all captures in archive order; ``links``: wanted names whose last entry is a link;
    ``link_on_path``: the first parent directory of a name that is a symbolic link once
    the archive is extracted (the daemon reads the name through it), or None.
    """

    final: Mapping[str, bytes]
    every: Sequence[tuple[str, bytes]]
    links: Mapping[str, str]
    link_on_path: Callable[[str], str | None] = field(default=lambda _name: None)


@dataclass(frozen=True)
class NeedTar:
    """Stream the tar body through a scanner capturing ``wanted`` members; ``finish``
    turns what it found into an inspection."""

    wanted: Callable[[str], bool]
    finish: Callable[[TarFindings], Inspection]
    what: str


Plan = Inspection | NeedJson | NeedTar


def _reference(text: str, what: str) -> Reference:
    try:
        return parse_normalized_named(text)
    except ReferenceError as e:
        raise InspectionError(f"pullgate: invalid {what} {text!r}: {e}") from e


def _refuse_form_body(head: RequestHead) -> None:
    """Go's ``ParseForm`` reads parameters from a form-encoded body *before* the query
    string, so such a body could override ``fromImage``. No Docker client sends one."""
    content_type = head.get("content-type")
    if content_type is not None:
        if not content_type.isascii():
            # Go lower-cases with Unicode rules ("İ" becomes "i"): a non-ASCII type could
            # read as a form there and as something else here.
            raise InspectionError("pullgate: the Content-Type header is not ASCII")
        media = content_type.split(";", 1)[0].strip().lower()
        if media == "application/x-www-form-urlencoded":
            raise InspectionError(
                "pullgate: form-encoded request bodies are not accepted on this endpoint"
            )


def inspect_head(route: Route, head: RequestHead, policy: Policy) -> Plan:
    """Decide what to inspect for a routed request; refuses what it cannot read."""
    try:
        return _inspect_head(route, head, policy)
    except RouteError as e:
        raise InspectionError(f"pullgate: {e.message}", e.status) from e


def _inspect_head(route: Route, head: RequestHead, policy: Policy) -> Plan:
    _refuse_form_body(head)
    query = parse_query(route.raw_query)
    endpoint = route.endpoint
    if endpoint is Endpoint.IMAGE_CREATE:
        return _image_create(query, policy)
    if endpoint is Endpoint.IMAGE_LOAD:
        return _load(policy, EventAction.LOAD, "docker load", _tar_of_images())
    if endpoint is Endpoint.BUILD:
        return _build(query, policy)
    if endpoint is Endpoint.BUILDKIT_SESSION:
        return Inspection(setting=_builds_setting(policy, f"BuildKit ({route.path})"))
    host = policy.containers.host_access is HostAccessSetting.DENY
    if endpoint in (Endpoint.CONTAINER_CREATE, Endpoint.IMAGE_TAG, Endpoint.COMMIT):
        # Tag and commit give local content a new name: checked so that `on_create:
        # check` cannot be escaped by renaming denied content.
        if policy.on_create is OnCreateSetting.ALLOW and not (
            host and endpoint is Endpoint.CONTAINER_CREATE
        ):
            return Inspection()
        return NeedJson(route)

    if endpoint in (Endpoint.SERVICE_CREATE, Endpoint.SERVICE_UPDATE):
        return NeedJson(route)
    if endpoint is Endpoint.ARCHIVE:
        # docker cp mounts a stopped container's binds as they are now, like a start;
        # its tar body streams, so the container is judged before the head goes on.
        if not host:
            return Inspection()
        return Inspection(host_container=route.name or "", host_action=EventAction.ARCHIVE)
    if endpoint is Endpoint.SWARM:
        return Inspection(
            setting=SettingOutcome(
                EventAction.SWARM,
                "swarm",
                False,
                "joining or starting a swarm hands this Docker daemon to other nodes, which "
                "then run containers of any image here with no request through Pullgate",
                "ask IT: a swarm is set up by an administrator on the daemon itself",
            )
        )
    if endpoint is Endpoint.CONTAINER_START:
        # Every (re)start mounts the container's binds again, following links as they
        # are now: judged again then, with the container's settings from the daemon.
        return NeedJson(route) if host else Inspection()
    if endpoint in (Endpoint.EXEC_CREATE, Endpoint.VOLUME_CREATE, Endpoint.PLUGIN_SET):
        body = head.chunked or bool(head.content_length)
        return NeedJson(route) if host and body else Inspection()
    if endpoint is Endpoint.PLUGIN_PULL:
        if host and (head.chunked or head.content_length):
            return NeedJson(route)  # the privileges the client accepts are in the body
        return Inspection(wants=_plugin_wants(query))
    if endpoint is Endpoint.PLUGIN_CREATE:
        if host:
            return Inspection(
                setting=SettingOutcome(
                    EventAction.PLUGIN,
                    "containers.host_access",
                    False,
                    "a plugin made from a local archive runs as root with whatever host "
                    "mounts, devices and capabilities its config.json asks for, unprompted, "
                    f"and {policy.label} does not allow that (containers.host_access: deny)",
                    "install plugins from a registry (docker plugin install), whose "
                    "privileges Pullgate checks",
                )
            )
        name = query.get("name") or ""
        wants = (Wanted(name, _reference(name, "plugin name"), EventAction.PLUGIN),) if name else ()
        return _load(policy, EventAction.PLUGIN, "plugin create", Inspection(wants=wants))
    if endpoint is Endpoint.DISTRIBUTION:
        name = route.name or ""
        return Inspection(
            wants=(Wanted(name, _reference(name, "image"), EventAction.DISTRIBUTION),)
        )
    return Inspection()


def _plugin_wants(query: Query) -> tuple[Wanted, ...]:
    remote = query.get("remote")
    if not remote:
        return ()  # the daemon refuses a pull without a remote
    return (Wanted(remote, _reference(remote, "plugin"), EventAction.PLUGIN),)


def _image_create(query: Query, policy: Policy) -> Plan:
    """``POST /images/create``: a pull (``fromImage``) or an import (``fromSrc``).

    Mirrors dockerd's ``PullImage``: a trailing ``:`` is dropped ("pull -a" clients send
    it); ``tag`` may be a digest (then any tag in ``fromImage`` is dropped) or replaces
    the tag of ``fromImage``; with neither, every tag of the repository is pulled.
    """
    image = query.get("fromImage") or ""
    tag = query.get("tag") or ""
    query.get("platform")  # refuse duplicates of every parameter the daemon reads
    if image:
        ref = _reference(image.removesuffix(":"), "image")
        written = image
        if tag:
            try:
                digest = parse_digest(tag)
            except DigestInvalidFormatError:
                try:
                    ref = ref.with_tag(tag)
                except ReferenceError as e:
                    raise InspectionError(f"pullgate: invalid tag {tag!r}: {e}") from e
                written = f"{image}:{tag}"
            else:
                ref = Reference(ref.domain, ref.path, None, digest)
                written = f"{image}@{tag}"
        all_tags = ref.tag is None and ref.digest is None
        return Inspection(wants=(Wanted(written, ref, EventAction.PULL, all_tags=all_tags),))
    source = query.get("fromSrc") or ""
    repo = query.get("repo") or ""
    if not source:
        return Inspection()  # neither pull nor import: the daemon refuses it
    wants: list[Wanted] = []
    if repo:
        ref = _reference(repo, "repository")
        if tag:
            try:
                ref = ref.with_tag(tag)
            except ReferenceError as e:
                raise InspectionError(f"pullgate: invalid tag {tag!r}: {e}") from e
        wants.append(Wanted(f"{repo}:{tag}" if tag else repo, ref, EventAction.IMPORT))
    if policy.load is LoadSetting.CHECK:
        if not repo:
            raise InspectionError(
                "pullgate: docker import without a name cannot be checked (load: check); "
                "name the image: docker import FILE NAME[:TAG]",
                403,
            )
        wants += _changes_wants(query.get_all("changes"), EventAction.IMPORT)
    return _load(policy, EventAction.IMPORT, "docker import", Inspection(wants=tuple(wants)))


def _load(policy: Policy, action: EventAction, what: str, check: Plan) -> Plan:
    if policy.load is LoadSetting.ALLOW:
        return Inspection(
            setting=SettingOutcome(
                action, "load", True, f"{what} is allowed without inspection (load: allow)", ""
            )
        )
    if policy.load is LoadSetting.DENY:
        return Inspection(
            setting=SettingOutcome(
                action,
                "load",
                False,
                f"{what} is not allowed by {policy.label} (load: deny)",
                "pull the image from an allowed registry instead",
            )
        )
    return check


def _builds_setting(policy: Policy, what: str) -> SettingOutcome:
    if policy.builds is BuildsSetting.ALLOW:
        return SettingOutcome(
            EventAction.BUILD,
            "builds",
            True,
            f"{what} cannot be inspected and is allowed by {policy.label} (builds: allow)",
            "",
        )
    return SettingOutcome(
        EventAction.BUILD,
        "builds",
        False,
        f"{what} cannot be inspected, and {policy.label} does not allow uninspected "
        "builds (builds: deny)",
        "build with the classic builder, which Pullgate inspects: DOCKER_BUILDKIT=0 "
        "docker build ...",
    )


#: The helpers the BuildKit inspection (``inspection.buildkit``) shares with this module,
#: under public names: one reading of the same parameters for both builders.
builds_setting = _builds_setting
image_reference = _reference


def strict_json(text: str, what: str) -> Any:
    """JSON as the shim reads request parameters: duplicate keys and NaN refused."""
    return _strict_json(text, what)


def json_field(obj: object, name: str, where: str) -> object:
    """A JSON field matched as Go's ``encoding/json`` matches struct fields."""
    return _field(obj, name, where)


# --- build ----------------------------------------------------------------------------


def _strict_json(text: str, what: str) -> Any:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise InspectionError(f"pullgate: duplicate key {key!r} in {what}")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=unique, parse_constant=_no_constant)
    except ValueError as e:
        if isinstance(e, InspectionError):
            raise
        raise InspectionError(f"pullgate: {what} is not valid JSON: {e}") from e


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _build_args(query: Query) -> dict[str, str]:
    raw = query.get("buildargs")
    if not raw:
        return {}
    return build_args_json(raw)


def build_args_json(raw: str) -> dict[str, str]:
    """The ``buildargs`` query parameter as the daemon reads it (``map[string]*string``):
    a null value is an arg given without one, which the builder does not set."""
    value = _strict_json(raw, "buildargs")
    if not isinstance(value, dict):
        raise InspectionError("pullgate: buildargs must be a JSON object")
    out: dict[str, str] = {}
    for key, arg in value.items():
        if arg is None:
            continue  # "--build-arg NAME" with NAME unset: no value, as in the builder
        if not isinstance(arg, str):
            raise InspectionError(f"pullgate: build arg {key!r} must be a string")
        out[key] = arg
    return out


def cache_from_json(raw: str) -> list[str]:
    """The ``cachefrom`` query parameter: a JSON array of image names."""
    images = _strict_json(raw, "cachefrom")
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise InspectionError("pullgate: cachefrom must be a JSON array of strings")
    return images


def _clean_member(name: str) -> str:
    """A context path as the daemon resolves it inside the context root.

    ``filepath.Join(root, name)`` cleans lexically, so a name whose ``..`` climbs above
    the root leaves it (the daemon then fails); a backslash is part of a name on a Linux
    daemon and a separator on a Windows one. Both are refused rather than guessed.
    """
    if "\\" in name:
        raise InspectionError(
            f"pullgate: the Dockerfile path {name!r} holds a backslash, which daemons on "
            "Linux and Windows read differently"
        )
    cleaned = posixpath.normpath(name.lstrip("/") or ".")
    if cleaned == ".." or cleaned.startswith("../"):
        raise InspectionError(f"pullgate: the Dockerfile path {name!r} leaves the build context")
    return "" if cleaned == "." else cleaned


def _build(query: Query, policy: Policy) -> Plan:
    remote = query.get("remote") or ""
    version = query.get("version") or ""
    if version == "2":
        return Inspection(setting=_builds_setting(policy, "a BuildKit build"))
    if remote:
        return Inspection(setting=_builds_setting(policy, f"a build from remote context {remote}"))
    dockerfile = query.get("dockerfile") or "Dockerfile"
    build_args = _build_args(query)
    cache_from: list[Wanted] = []
    raw_cache = query.get("cachefrom")
    if raw_cache:
        for image in cache_from_json(raw_cache):
            ref = _reference(image, "cache-from image")
            cache_from.append(Wanted(image, ref, EventAction.BUILD, detail="--cache-from"))
    path = _clean_member(dockerfile)
    fallback = "dockerfile" if dockerfile == "Dockerfile" else None
    names = {path} | ({fallback} if fallback else set())

    def finish(found: TarFindings) -> Inspection:
        # The daemon opens `path` (following links inside the context) and falls back to
        # the lower-case name only when nothing at all is there (remotecontext/detect.go
        # withDockerfileFromContext); so a link at `path` is what it reads, whatever the
        # fallback holds.
        members, links = found.final, found.links
        chosen: str | None = None
        for name in (path, fallback):
            if name is None:
                continue
            via = found.link_on_path(name)
            if via is not None:
                raise InspectionError(
                    f"pullgate: the Dockerfile {name!r} is reached through the link {via!r} "
                    "in the build context; Pullgate cannot inspect linked Dockerfiles"
                )
            if name in members or name in links:
                chosen = name
                break
        if chosen is None:
            raise InspectionError(
                f"pullgate: cannot locate the Dockerfile {dockerfile!r} in the build context"
            )
        if chosen in links:
            raise InspectionError(
                f"pullgate: the Dockerfile {chosen!r} is a link to {links[chosen]!r}; "
                "Pullgate cannot inspect linked Dockerfiles"
            )
        wants = _dockerfile_wants(chosen, members[chosen], build_args)
        return Inspection(wants=(*wants, *cache_from))

    return NeedTar(lambda name: name in names, finish, "build context")


#: How classic builders of different daemons parse the same file: (heredocs, ``# check=``
#: directive). Daemons before 23 know no heredocs (their bodies are instructions there);
#: parsers before BuildKit 0.13 (moby 26 and older) stop reading directives at
#: ``check``, so an ``escape`` after it does not apply. The first is today's reading.
_CLASSIC_READINGS = (
    (True, True, ""),
    (False, True, "without heredoc support"),
    (True, False, "without the check directive"),
    (False, False, "without heredocs or the check directive"),
)


def _dockerfile_wants(name: str, data: bytes, build_args: Mapping[str, str]) -> list[Wanted]:
    """What the daemon's classic builder pulls for this Dockerfile (plain ``POST /build``).

    The shim cannot tell which daemon version is behind it, so every reading in use is
    checked and their images united; a file one of them cannot read is refused.
    """
    uses: list[ImageUse] = []
    for heredocs, check, how in _CLASSIC_READINGS:
        try:
            uses += parse_dockerfile(
                data, build_args, heredocs=heredocs, check_directive=check, builder="classic"
            ).uses
        except DockerfileError as e:
            if not how:
                raise InspectionError(f"pullgate: cannot inspect {name}: {e}") from e
            raise InspectionError(
                f"pullgate: {name} reads differently in classic builders {how} ({e}); "
                "Pullgate cannot tell what it would pull"
            ) from e
    wants: list[Wanted] = []
    seen: set[tuple[str, int]] = set()
    for use in uses:
        if (use.image, use.line) in seen:
            continue
        seen.add((use.image, use.line))
        ref = _reference(use.image, "image in the Dockerfile")
        detail = f"{name} line {use.line}: {use.instruction}" if use.line else f"{name} syntax"
        base = use.source == "from"
        wants.append(Wanted(use.image, ref, EventAction.BUILD, detail=detail, base=base))
    return wants


# --- load -----------------------------------------------------------------------------

_LOAD_MEMBERS = frozenset({"manifest.json", "repositories", "index.json"})


def _tar_of_images() -> NeedTar:
    return NeedTar(lambda name: name in _LOAD_MEMBERS, _load_finish, "image archive")


def _load_finish(found: TarFindings) -> Inspection:
    """Image names in a ``docker save`` / OCI archive: every one is decided.

    Every occurrence of a metadata file counts, not only the last: the daemon's reader
    may pick another one than extraction order suggests, so the union is checked.
    """
    if found.links:
        raise InspectionError(
            "pullgate: image metadata in the archive is a link "
            f"({', '.join(sorted(found.links))}); Pullgate cannot inspect it"
        )
    names: list[tuple[str, str]] = []
    for member, data in found.every:
        names += _names_in(member, data)
    wants = []
    for name, where in names:
        ref = _reference(name, f"image name in {where}")
        wants.append(Wanted(name, ref, EventAction.LOAD, detail=where))
    return Inspection(wants=tuple(wants))


def _names_in(member: str, data: bytes) -> list[tuple[str, str]]:
    names: list[tuple[str, str]] = []
    if member == "manifest.json":
        manifest = _strict_json(_text(data, "manifest.json"), "manifest.json")
        if not isinstance(manifest, list):
            raise InspectionError("pullgate: manifest.json must be a JSON array")
        for number, entry in enumerate(manifest, 1):
            # Go's encoding/json matches struct fields in any case ("repotags" too).
            tags = _field(entry, "RepoTags", "a manifest.json entry")
            if tags is None or tags == []:
                raise _nameless_load(f"manifest.json entry {number}")
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise InspectionError("pullgate: manifest.json RepoTags must be strings")
            names += [(t, "manifest.json") for t in tags]
    elif member == "repositories":
        repos = _strict_json(_text(data, "repositories"), "repositories")
        if not isinstance(repos, dict):
            raise InspectionError("pullgate: repositories must be a JSON object")
        for repo, tags in repos.items():
            if not isinstance(tags, dict):
                raise InspectionError("pullgate: repositories entries must be objects")
            names += [(f"{repo}:{tag}", "repositories") for tag in tags]
    elif member == "index.json":
        names += _oci_names(data)
    return names


def _oci_names(data: bytes) -> list[tuple[str, str]]:
    index = _strict_json(_text(data, "index.json"), "index.json")
    manifests = _field(index, "manifests", "index.json")  # struct fields: any case
    if manifests is None:
        return []
    if not isinstance(manifests, list):
        raise InspectionError("pullgate: index.json manifests must be an array")
    out = []
    for manifest in manifests:
        annotations = _field(manifest, "annotations", "an index.json manifest")
        if not isinstance(annotations, dict):
            annotations = {}
        name = annotations.get("io.containerd.image.name")
        ref_name = annotations.get("org.opencontainers.image.ref.name")
        if isinstance(name, str) and name:
            out.append((name, "index.json"))
        elif isinstance(ref_name, str) and ("/" in ref_name or ":" in ref_name):
            # A bare tag ("latest") names nothing by itself; a full name does.
            out.append((ref_name, "index.json"))
        else:
            raise _nameless_load("an index.json manifest")
    return out


def _nameless_load(where: str) -> InspectionError:
    """An image in a load archive with no name: ``load: check`` decides by name, and the
    daemon would keep it untagged, to be run by ID."""
    return InspectionError(
        f"pullgate: the archive holds an image with no name ({where}), which load: check "
        "cannot decide; save the image under a name (docker save NAME:TAG)",
        403,
    )


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InspectionError(f"pullgate: {what} is not UTF-8") from e


# --- JSON bodies ----------------------------------------------------------------------


def _field(obj: object, name: str, where: str) -> object:
    """A JSON field as Go's ``encoding/json`` finds it: keys match case-insensitively
    (with Unicode folding), and several keys that fold alike are ambiguous, refused."""
    if not isinstance(obj, dict):
        return None
    matches = [key for key in obj if key.casefold() == name.casefold()]
    if len(matches) > 1:
        raise InspectionError(f"pullgate: {where} has several keys that mean {name!r}")
    return obj[matches[0]] if matches else None


def _json_body(body: bytes, what: str) -> object:
    if len(body) > MAX_JSON_BODY:
        raise InspectionError(f"pullgate: {what} body is larger than {MAX_JSON_BODY} bytes")
    return _strict_json(_text(body, what), what)


def inspect_json_body(
    route: Route,
    body: bytes,
    on_create: OnCreateSetting = OnCreateSetting.CHECK,
    *,
    host_access: HostAccessSetting = HostAccessSetting.DENY,
    windows: bool = False,
) -> Inspection:
    """Images named in a ``containers/create`` or ``services`` request body, and the
    local images a tag or commit (decided from its query, the body ignored) renames;
    with ``host_access: deny``, also what the body asks of the host (``host``), read for
    a Windows endpoint with ``windows`` (``host_access.judge_windows``)."""
    if route.endpoint in (Endpoint.IMAGE_TAG, Endpoint.COMMIT):
        try:
            return _tag(route) if route.endpoint is Endpoint.IMAGE_TAG else _commit(route)
        except RouteError as e:
            raise InspectionError(f"pullgate: {e.message}", e.status) from e
    host = host_access is HostAccessSetting.DENY
    try:
        return _json_inspection(route, body, on_create, host, windows)
    except HostAccessError as e:
        raise InspectionError(f"pullgate: {e}") from e
    except RouteError as e:
        raise InspectionError(f"pullgate: {e.message}", e.status) from e


def _windows_volume_create(body: object) -> HostAccess:
    return from_volume_create(body, windows=True)


_HOST_READERS: dict[Endpoint, tuple[Callable[[object], HostAccess], str, EventAction]] = {
    Endpoint.EXEC_CREATE: (from_exec_config, "exec config", EventAction.EXEC),
    Endpoint.VOLUME_CREATE: (from_volume_create, "volume config", EventAction.VOLUME),
    Endpoint.CONTAINER_START: (from_start_body, "start body", EventAction.START),
    Endpoint.PLUGIN_SET: (from_plugin_settings, "plugin settings", EventAction.PLUGIN),
}


def _json_inspection(
    route: Route, body: bytes, on_create: OnCreateSetting, host: bool, windows: bool = False
) -> Inspection:
    endpoint = route.endpoint
    if endpoint in _HOST_READERS:
        read, what, action = _HOST_READERS[endpoint]
        if windows and endpoint is Endpoint.VOLUME_CREATE:
            read = _windows_volume_create
        access = read(_json_body(body, what)) if host and body.strip() else HostAccess()
        started = route.name or "" if endpoint is Endpoint.CONTAINER_START and host else ""
        return Inspection(host=access, host_action=action, host_container=started)
    if endpoint is Endpoint.PLUGIN_PULL:
        named = _plugin_wants(parse_query(route.raw_query))
        privileges = _json_body(body, "plugin privileges") if host else None
        return Inspection(
            wants=named, host=from_plugin_privileges(privileges), host_action=EventAction.PLUGIN
        )
    if endpoint is Endpoint.CONTAINER_CREATE:
        config = _json_body(body, "container config")
        access = from_container_config(config, windows=windows) if host else HostAccess()
        checked = _container_create(config) if on_create is OnCreateSetting.CHECK else Inspection()
        return Inspection(
            wants=checked.wants,
            lookups=checked.lookups,
            host=access,
            host_action=EventAction.CREATE,
        )
    spec = _json_body(body, "service spec")
    access = from_service_spec(spec, windows=windows) if host else HostAccess()
    task = _field(spec, "TaskTemplate", "the service spec")
    wants: list[Wanted] = []
    lookups: list[Lookup] = []
    container = _field(task, "ContainerSpec", "TaskTemplate")
    image = _field(container, "Image", "ContainerSpec")
    plugin_spec = _field(task, "PluginSpec", "TaskTemplate")
    remote = _field(plugin_spec, "Remote", "PluginSpec")
    for value, what, local in ((image, "service image", True), (remote, "service plugin", False)):
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise InspectionError(f"pullgate: the {what} must be a string")
        if local and on_create is OnCreateSetting.CHECK:
            # The swarm executor creates the task's container with dockerd's GetImage,
            # which also finds local images by ID or ID prefix.
            lookups.append(Lookup(value, EventAction.SERVICE))
            if _is_id(value):
                continue
        wants.append(Wanted(value, _reference(value, what), EventAction.SERVICE))
    return Inspection(
        wants=tuple(wants), lookups=tuple(lookups), host=access, host_action=EventAction.SERVICE
    )


def _container_create(config: object) -> Inspection:
    """The images a container runs: its ``Image``, and each ``--mount type=image``
    (Docker 28 mounts a local image's content into the container)."""
    wants: list[Wanted] = []
    lookups: list[Lookup] = []
    image = _field(config, "Image", "the container config")
    named: list[tuple[object, After | None]] = [(image, After.CONTAINER)]
    host = _field(config, "HostConfig", "the container config")
    mounts = _field(host, "Mounts", "HostConfig")
    for mount in mounts if isinstance(mounts, list) else []:
        kind = _field(mount, "Type", "HostConfig.Mounts")
        if isinstance(kind, str) and kind.lower() == "image":
            named.append((_field(mount, "Source", "HostConfig.Mounts"), None))
    for value, after in named:
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise InspectionError("pullgate: the container config Image must be a string")
        lookups.append(Lookup(value, EventAction.CREATE, after=after))
        try:
            parsed = parse_any_reference(value)
        except ReferenceError as e:
            raise InspectionError(f"pullgate: invalid image {value!r}: {e}") from e
        if not isinstance(parsed, DigestReference):
            wants.append(Wanted(value, parsed, EventAction.CREATE))
    return Inspection(wants=tuple(wants), lookups=tuple(lookups))


def _is_id(value: str) -> bool:
    try:
        return isinstance(parse_any_reference(value), DigestReference)
    except ReferenceError:
        return False


def _tag(route: Route) -> Inspection:
    """``POST /images/{name}/tag?repo=&tag=``: the new name as dockerd's ``TagImage``
    builds it (``repo`` normalized, ``tag`` replacing its tag, ``latest`` implied)."""
    query = parse_query(route.raw_query)
    new = _new_name(query.get("repo") or "", query.get("tag") or "")
    name = route.name or ""
    lookup = Lookup(name, EventAction.TAG, after=After.TAG, new_name=new)
    return Inspection(lookups=(lookup, Lookup(new, EventAction.TAG, moves=True)))


def _new_name(repo: str, tag: str) -> str:
    """A name as dockerd's ``TagImage`` and commit build it: ``repo`` normalized, ``tag``
    replacing its tag, ``latest`` implied; a digest is refused (so does the daemon)."""
    new = _reference(repo, "repository")
    if tag:
        try:
            new = new.trimmed().with_tag(tag)
        except ReferenceError as e:
            raise InspectionError(f"pullgate: invalid tag {tag!r}: {e}") from e
    if new.digest is not None:
        raise InspectionError(f"pullgate: cannot tag an image with a digest ({repo!r})")
    return new.canonical


def _commit(route: Route) -> Inspection:
    """``POST /commit?container=``: the new image holds the container's image content."""
    query = parse_query(route.raw_query)
    for key in ("repo", "tag", "comment", "author", "pause"):
        query.get(key)  # refuse duplicates of every single parameter the daemon reads
    container = query.get("container") or ""
    if not container:
        return Inspection()  # the daemon refuses a commit without a container
    # `changes` is a list (r.Form["changes"]): `docker commit --change A --change B`.
    wants = _changes_wants(query.get_all("changes"), EventAction.COMMIT)
    lookups = [Lookup(container, EventAction.COMMIT, container=True, after=After.COMMIT)]
    repo = query.get("repo") or ""
    if repo:
        lookups.append(
            Lookup(_new_name(repo, query.get("tag") or ""), EventAction.COMMIT, moves=True)
        )
    return Inspection(wants=tuple(wants), lookups=tuple(lookups))


@dataclass(frozen=True)
class LocalImage:
    """What the daemon knows of an image already on the machine (``GET /images/{name}/json``)."""

    id: str
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    parent: str = ""
    #: ``Config.OnBuild``: instructions a classic build based on this image runs first.
    onbuild: tuple[str, ...] = ()
    #: The platform the image is for: ``Os``, ``Architecture``, ``Variant``.
    os: str = ""
    architecture: str = ""
    variant: str = ""

    @property
    def named(self) -> bool:
        """Whether the image has any name to be judged by (``<none>`` is none)."""
        return bool(_local_names(self))

    @classmethod
    def from_daemon(cls, info: object) -> LocalImage:
        """Read the daemon's answer; anything unexpected is refused, not guessed."""
        if not isinstance(info, dict) or not isinstance(info.get("Id"), str):
            raise InspectionError("pullgate: the daemon described an image without an Id", 502)
        names: list[tuple[str, ...]] = []
        for key in ("RepoTags", "RepoDigests"):
            value = info.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise InspectionError(f"pullgate: the daemon's image {key} are not names", 502)
            names.append(tuple(value))
        parent = info.get("Parent") or ""
        config = info.get("Config")
        onbuild = (config.get("OnBuild") if isinstance(config, dict) else None) or []
        if not isinstance(onbuild, list) or not all(isinstance(t, str) for t in onbuild):
            raise InspectionError("pullgate: the daemon's image OnBuild are not instructions", 502)
        platform = [info.get(k) for k in ("Os", "Architecture", "Variant")]
        os_name, architecture, variant = (v if isinstance(v, str) else "" for v in platform)
        return cls(
            info["Id"],
            names[0],
            names[1],
            parent if isinstance(parent, str) else "",
            tuple(onbuild),
            os_name,
            architecture,
            variant,
        )


def _local_names(image: LocalImage) -> dict[str, Reference]:
    """The image's names as the reference store holds them; ``<none>`` is skipped."""
    out = {}
    for name in (*image.repo_tags, *image.repo_digests):
        try:
            out[name] = parse_docker_ref(name)
        except ReferenceError:
            continue
    return out


def resolved_by_name(name: str, image: LocalImage) -> bool:
    """Whether the daemon found ``image`` under the name ``name`` rather than by ID.

    ``GetImage`` looks the name up in its reference store first (``ParseDockerRef``:
    ``latest`` implied, a digest wins over a tag); only if it is not there does it
    search image IDs by prefix. So the name is the name it was found by exactly when
    the image holds it among its tags and digests.
    """
    try:
        parsed = parse_any_reference(name)
    except ReferenceError:
        return False
    if isinstance(parsed, DigestReference):
        return False
    wanted = parse_docker_ref(name)
    return wanted in _local_names(image).values()


def local_image_wants(
    name: str, image: LocalImage, action: EventAction, detail: str | None = None
) -> list[Wanted]:
    """Every name a local image's content must be allowed under.

    ``RepoDigests`` say where its content was pulled from and ``RepoTags`` what it was
    loaded, built or tagged as: renaming content must not launder it, so all count,
    whatever name it is used by now.
    """
    return [
        Wanted(candidate, ref, action, detail=detail or f"local image {name}")
        for candidate, ref in _local_names(image).items()
    ]


def onbuild_wants(name: str, image: LocalImage, action: EventAction) -> list[Wanted]:
    """Images the ONBUILD triggers of a local base image pull when a classic build uses it
    (``COPY --from=image``): the triggers run before the Dockerfile's own instructions."""
    # One by one, as the daemon parses them (classic ``dispatchTriggeredOnBuild``,
    # BuildKit ``initOnBuildTriggers``): joined, a trigger ending in a line continuation
    # would swallow the next one, which the daemon still runs.
    what = f"ONBUILD trigger of local image {name}"
    return [
        w for trigger in image.onbuild for w in _trigger_wants([f"ONBUILD {trigger}"], action, what)
    ]


def _changes_wants(changes: Sequence[str], action: EventAction) -> list[Wanted]:
    """Images the ``changes`` of a commit or import pull later: they are Dockerfile lines
    (``BuildFromConfig``), and an ``ONBUILD COPY --from=image`` there runs in every
    classic build based on the new image."""
    if not any("onbuild" in change.lower() for change in changes):
        return []
    return _trigger_wants(list(changes), action, "--change")


def _trigger_wants(lines: list[str], action: EventAction, what: str) -> list[Wanted]:
    text = "\n".join(lines)
    if any(_is_hash_line(line) for line in text.split("\n")):
        # Parser directives or comments would change how the daemon reads the rest.
        raise InspectionError(f"pullgate: {what} holds a '#' line; Pullgate cannot read it")
    try:
        found = parse_dockerfile("FROM scratch\n" + text, builder="classic")
    except DockerfileError as e:
        raise InspectionError(f"pullgate: cannot inspect {what}: {e}") from e
    return [
        Wanted(use.image, _reference(use.image, f"image in {what}"), action, detail=what)
        for use in found.uses
    ]


def _is_hash_line(line: str) -> bool:
    return line.lstrip(" \t").startswith("#")


#: How far up a nameless image's ``Parent`` chain the shim looks for a name.
MAX_ANCESTORS = 256


def nameless_outcome(name: str, action: EventAction, builds: BuildsSetting) -> SettingOutcome:
    """Content with no name and no named ancestor: nothing says where it came from.

    Classic build steps and commits have a named ancestor; BuildKit's untagged outputs
    have neither, so with ``builds: allow`` such content passes (as its build did).
    """
    if builds is BuildsSetting.ALLOW:
        return SettingOutcome(
            action,
            "builds",
            True,
            f"{name} is an image with no name and no named ancestor, allowed as the output "
            "of an uninspected build (builds: allow)",
            "",
        )
    return SettingOutcome(
        action,
        "on_create",
        False,
        f"{name} is an image with no name and no named ancestor, so Pullgate cannot tell "
        "where its content came from",
        "pull, load or build it under a name, and use that name",
    )


def loses_last_name(name: str, image: LocalImage) -> bool:
    """Whether ``image`` holds ``name`` and no other name, so moving ``name`` to other
    content would leave it nameless (and then unjudgeable, run by ID)."""
    if not resolved_by_name(name, image):
        return False
    return set(_local_names(image).values()) <= {parse_docker_ref(name)}


def with_build_lookups(
    inspection: Inspection,
    targets: Sequence[str] = (),
    *,
    platform: str = "",
    force_pull: bool = False,
    by_platform: bool = False,
) -> Inspection:
    """A classic build's images, each also looked up as a local image.

    The classic builder takes ``FROM``, ``COPY --from`` and cache-from images from the
    machine when it has them (``GetImage``: by name, else by ID prefix) and pulls only
    what is missing, so what it builds on is judged like a container's image. Its
    ``t`` names (``targets``) move to the new image: see ``Lookup.moves``. Bases are
    marked (``Lookup.base``) with the build's ``platform`` and whether it forces pulls:
    one that is missing is pulled by the shim before deciding, to read its triggers.
    ``by_platform``: BuildKit's bases, each of the platform its stage is built for
    (``Lookup.by_platform``).
    """
    builds = [w for w in inspection.wants if w.action is EventAction.BUILD]
    # A base named only by stages of other platforms is looked up for those (below).
    names = dict.fromkeys(
        w.input for w in builds if not (w.base and w.platform not in (None, platform))
    )
    bases = {w.input for w in builds if w.base}
    lookups = [
        Lookup(
            name,
            EventAction.BUILD,
            base=True,
            platform=platform,
            force_pull=force_pull,
            by_platform=by_platform,
        )
        if name in bases
        else Lookup(name, EventAction.BUILD)
        for name in names
    ]
    # A stage of another platform than the build's builds on that variant, which the
    # daemon fetches unless the machine holds that variant under the name: it is pulled
    # (and read) for it unless it is there. The build's own platform is the lookup above.
    others = {
        (w.input, w.platform)
        for w in builds
        if w.base and w.platform is not None and w.platform != platform
    }
    lookups += [
        Lookup(
            name,
            EventAction.BUILD,
            base=True,
            platform=p,
            force_pull=force_pull,
            by_platform=by_platform,
        )
        for name, p in sorted(others)
    ]
    for target in dict.fromkeys(targets):
        try:
            moved = parse_normalized_named(target).with_default_tag()
        except ReferenceError:
            continue  # the daemon refuses the build before it starts
        if moved.digest is None:
            lookups.append(Lookup(moved.canonical, EventAction.BUILD, moves=True))
    return Inspection(inspection.wants, inspection.setting, inspection.lookups + tuple(lookups))
