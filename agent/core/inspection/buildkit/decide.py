"""What a BuildKit build needs decided: the images it pulls, or the ``builds`` setting.

Two moments, because the tunnel must hold the build back until it knows:

* :func:`upfront`, from the request alone (:class:`BuildInputs`): cache imports, images
  of named build contexts, the gateway frontend image, a raw LLB solve's images, and the
  ``builds`` setting when the Dockerfile cannot settle the build (``inputs.unreadable``).
* :func:`dockerfile` (or :func:`from_sync`), once the file sync has delivered the
  Dockerfile: every image it pulls, read with BuildKit's semantics.

Beside them, :func:`resolve_inspection` decides the image of a gateway
``ResolveImageConfig`` / ``ResolveSourceMeta`` call, whose metadata the daemon fetches.

Both return the :class:`Inspection` that ``request`` returns for classic builds, so one
decision path serves both builders. Pure core.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from agent.core.inspection.buildkit.filesync import DockerfileSync, FileSyncError
from agent.core.inspection.buildkit.inputs import (
    DEFAULT_COPY_IMAGE,
    BuildInputs,
    context_overrides,
    is_dockerfile_frontend,
    named_context,
)
from agent.core.inspection.dockerfile.resolve import (
    DockerfileError,
    ImageUse,
    parse_dockerfile,
    reachable_stages,
)
from agent.core.inspection.request import (
    EventAction,
    Inspection,
    InspectionError,
    Lookup,
    SettingOutcome,
    Wanted,
    builds_setting,
    image_reference,
    with_build_lookups,
)
from agent.core.policy.document import HostAccessSetting, Policy

__all__ = [
    "READINGS",
    "RESOLVE_CONFIG_DETAIL",
    "RESOLVE_DETAIL",
    "RESOLVE_SOURCE_DETAIL",
    "dockerfile",
    "from_sync",
    "merge",
    "resolve_inspection",
    "upfront",
]

#: The audit detail of an image a gateway resolve call fetches the metadata of.
RESOLVE_DETAIL = "image metadata (resolved for a build)"
RESOLVE_CONFIG_DETAIL = "image metadata (ResolveImageConfig)"
RESOLVE_SOURCE_DETAIL = "image metadata (ResolveSourceMeta)"

#: How the frontends that may run a build parse one file: (heredocs, ``# check=``
#: directive, how). The daemon's builtin frontend is as old as the daemon (20.10's
#: knows no heredocs; before BuildKit 0.13, ``check`` is no directive and ends them),
#: and a ``docker/dockerfile`` image of any version may be named. The shim cannot tell
#: which will run, so it unites their images, as for the classic builder.
READINGS = (
    (True, True, ""),
    (False, True, "without heredoc support"),
    (True, False, "without the check directive"),
    (False, False, "without heredocs or the check directive"),
)


def upfront(inputs: BuildInputs, policy: Policy) -> Inspection:
    """What can be decided before the Dockerfile arrives.

    A named context ``docker-image://`` is decided whether or not the Dockerfile uses
    its name: the frontend pulls it only where it replaces a ``FROM`` or ``--from``, but
    deciding it up front needs no Dockerfile and misses no pull.
    """
    wants: list[Wanted] = []

    def want(image: str, what: str, detail: str) -> None:
        wants.append(Wanted(image, image_reference(image, what), EventAction.BUILD, detail=detail))

    for ref in inputs.cache_imports:
        want(ref, "cache-from image", "--cache-from")
    for name, value in inputs.named_contexts.items():
        image = named_context(value).image
        if image is not None:
            want(image, f"image of build context {name}", f"--build-context {name}")
    if inputs.frontend_image is not None:
        want(inputs.frontend_image, "frontend image", f"frontend {inputs.frontend_image}")
    for image in inputs.llb_images:
        want(image, "image of an LLB source", "LLB source")
    copy_image = inputs.attrs.get("override-copy-image", "")
    if copy_image:
        want(copy_image, "copy helper image", "override-copy-image")
    if _go_true(inputs.build_args.get("BUILDKIT_DISABLE_FILEOP", "")):
        # BuildKit 0.8 then runs every COPY and ADD in a helper image.
        image = copy_image or DEFAULT_COPY_IMAGE
        want(image, "copy helper image", "--build-arg BUILDKIT_DISABLE_FILEOP")
    setting = None
    if inputs.unreadable is not None:
        setting = builds_setting(policy, inputs.unreadable)
    setting = _entitlements_setting(inputs, policy) or setting
    return with_build_lookups(Inspection(wants=tuple(wants), setting=setting))


#: Build entitlements that run a build's steps with the host's root: privileged steps,
#: and host devices (BuildKit 0.20's ``device=``). ``network.host`` stays allowed.
_HOST_ENTITLEMENTS = ("security.insecure", "device")


def _entitlements_setting(inputs: BuildInputs, policy: Policy) -> SettingOutcome | None:
    """``containers.host_access: deny`` holds for build steps too (``docker buildx build
    --allow security.insecure``): dockerd grants it only when its own configuration
    does, and then a ``RUN --security=insecure`` step is a privileged container."""
    if policy.containers.host_access is HostAccessSetting.ALLOW:
        return None
    asked = [e for e in inputs.entitlements if e.split("=", 1)[0].lower() in _HOST_ENTITLEMENTS]
    if not asked:
        return None
    return SettingOutcome(
        EventAction.BUILD,
        "containers.host_access",
        False,
        f"the build asks for {', '.join(asked)}, which would give its steps the host's "
        f"root access; {policy.label} does not allow it (containers.host_access: deny)",
        "build without --allow security.insecure (or device=...)",
    )


def dockerfile(
    inputs: BuildInputs,
    path: str,
    data: bytes,
    policy: Policy,
    *,
    readings: Sequence[tuple[bool, bool, str]] = READINGS,
    all_stages: bool = False,
) -> Inspection:
    """Every image a build of this Dockerfile pulls, in every reading a frontend may use.

    * Read with BuildKit's semantics and the build's args. Only the stages BuildKit
      builds for ``inputs.target`` (the last stage when there is none) are decided: it
      resolves and pulls nothing for the others (:func:`reachable_stages`, which counts
      every stage an ONBUILD trigger of the file may name). Every stage is decided when
      the target names none (the build then fails), for a subrequest (``requestid``:
      ``--check`` lints every stage), and with ``all_stages`` (say, when a local base
      image has ONBUILD triggers, which may name any stage of the file).
    * ``# syntax=`` and ``BUILDKIT_SYNTAX`` name the frontend the build is handed to: it
      is decided as a pulled image, and unless it is a Dockerfile frontend (whose reading
      is this one) the build follows ``builds``, since that frontend's own pulls cannot be
      read. A named context replacing it must be a Dockerfile frontend image too.
    * A ``FROM`` whose name a named context replaces is decided as written as well as
      (in :func:`upfront`) the context's image: the 20.10 daemon's builtin frontend
      ignores named contexts, newer ones honour them, and the shim cannot tell which runs.
    * A file one reading cannot parse follows ``builds``: Pullgate cannot tell what it
      pulls (the parser also refuses what depends on values it does not know, so a
      failed reading is not proof that frontend fails before pulling). Images the other
      readings found are still decided. So a heredoc, which frontends without heredoc
      support read as instructions, sends a file to ``builds`` unless its body happens
      to parse; ``readings`` narrows the frontends considered when the caller knows
      more (the daemon's version, say).

    Images are also looked up as local images (``Lookup``): the daemon's BuildKit uses
    what is on the machine, so local names and ONBUILD triggers are judged as for the
    classic builder. Lookups are made of the decided images, so a stage that is not
    built is not looked up either.
    """
    uses: list[ImageUse] = []
    unreadable: str | None = None
    every_stage = all_stages or bool(inputs.attrs.get("requestid"))
    for heredocs, check, how in readings:
        try:
            images = parse_dockerfile(
                data,
                inputs.build_args,
                heredocs=heredocs,
                check_directive=check,
                builder="buildkit",
            )
            built = None if every_stage else reachable_stages(images, inputs.target)
            # The syntax frontend (stage None) runs whatever the target.
            uses += [u for u in images.uses if built is None or u.stage is None or u.stage in built]
        except DockerfileError as e:
            if unreadable is None:
                where = f" by frontends {how}" if how else ""
                unreadable = f"a build whose {path} cannot be read{where} ({e})"
    wants: list[Wanted] = []
    seen: set[tuple[str, int]] = set()
    for use in uses:
        if (use.image, use.line) in seen:
            continue
        seen.add((use.image, use.line))
        try:
            ref = image_reference(use.image, f"image in {path}")
        except InspectionError:
            unreadable = unreadable or f"a build whose {path} names the invalid image {use.image!r}"
            continue
        # Line 0: the frontend named by --build-arg BUILDKIT_SYNTAX=..., not by a line.
        detail = f"{path} line {use.line}: {use.instruction}" if use.line else use.instruction
        base = use.source == "from"
        platform, problem = _stage_platform(use, inputs) if base else (None, None)
        unreadable = unreadable or problem
        wants.append(
            Wanted(use.image, ref, EventAction.BUILD, detail=detail, base=base, platform=platform)
        )
        if use.source == "syntax":
            unreadable = unreadable or _frontend_problem(inputs, use.image)
    setting = builds_setting(policy, unreadable) if unreadable is not None else None
    return with_build_lookups(
        Inspection(wants=tuple(wants), setting=setting),
        platform=inputs.attrs.get("platform", ""),
        force_pull=inputs.attrs.get("image-resolve-mode", "") == "pull",
        by_platform=True,
    )


def _stage_platform(use: ImageUse, inputs: BuildInputs) -> tuple[str | None, str | None]:
    """A ``FROM --platform=...`` stage's platform, as the shim must pull its base for:
    the variant the daemon's BuildKit builds on, whatever variant is local (its
    triggers are the ones run). The value is the one after the file's global ARGs and
    the build args (``ImageUse.platform``: either may replace BuildKit's platform
    args); ``$BUILDPLATFORM`` left as BuildKit sets it is the daemon's own (the shim's
    default pull), ``$TARGETPLATFORM`` the build's. (None, None): no flag; (None, why):
    a platform Pullgate cannot tell, which follows ``builds``."""
    if use.platform_problem is not None:
        return None, use.platform_problem
    if use.platform is None:
        return None, None
    if use.platform == "$BUILDPLATFORM":
        return "", None
    if use.platform == "$TARGETPLATFORM":
        return inputs.attrs.get("platform", ""), None
    return use.platform.lower(), None


def _go_true(value: str) -> bool:
    """Go's ``strconv.ParseBool`` says true."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def _frontend_problem(inputs: BuildInputs, image: str) -> str | None:
    """Why the frontend a Dockerfile hands its build to cannot be read, or None."""
    if not is_dockerfile_frontend(image):
        return f"a build handed by its Dockerfile to the frontend {image}"
    for value in context_overrides(inputs.named_contexts, image):
        replaced = named_context(value).image
        if replaced is None or not is_dockerfile_frontend(replaced):
            return f"a build whose frontend {image} is replaced by {value}"
    return None


def from_sync(
    inputs: BuildInputs, sync: DockerfileSync, policy: Policy, *, all_stages: bool = False
) -> Inspection:
    """The Dockerfile decision once ``sync`` (of the Dockerfile's local) is complete.

    Every one of ``inputs.paths`` that holds a file is decided: the frontend reads the
    first, newer frontends fall back to the lower-case ``dockerfile`` when that read fails
    for any reason, and deciding both costs nothing. No file at all: the build fails
    without pulling (the images known up front are decided by :func:`upfront`).
    """
    found: list[Inspection] = []
    for path in inputs.paths:
        try:
            data = sync.content(path)
        except FileSyncError as e:
            return Inspection(
                setting=builds_setting(
                    policy, f"a build whose {path} cannot be read from its file sync ({e})"
                )
            )
        if data is not None:
            found.append(dockerfile(inputs, path, data, policy, all_stages=all_stages))
    return merge(found)


def resolve_inspection(
    image: str | None,
    policy: Policy,
    *,
    unreadable: str | None = None,
    detail: str = RESOLVE_DETAIL,
    platform: str = "",
    force_pull: bool = False,
) -> Inspection:
    """A gateway resolve call (``inputs.image_of_resolve_config`` or
    ``image_of_resolve_source_meta``, whose ``ResolveTarget`` gives ``image`` and
    ``unreadable``): the daemon fetches ``image``'s manifest and config, so it is decided
    as an image the build pulls, and looked up as a local image as the build's are (the
    daemon's BuildKit resolves a local image first unless told to pull). ``unreadable``
    follows ``builds``; no image (a git or http source) decides nothing. ``platform``
    (``ResolveTarget.platform``): the daemon takes a local image only of that platform,
    so one of another is pulled for it first; ``force_pull``: it fetches it anyway.
    """
    if unreadable is not None:
        return Inspection(setting=builds_setting(policy, unreadable))
    if image is None:
        return Inspection()
    # The config a resolve reads is where a client-side frontend (buildx) finds the
    # image's ONBUILD triggers: it is read as a base's is.
    ref = image_reference(image, "image to resolve")
    want = Wanted(image, ref, EventAction.BUILD, detail=detail, base=True)
    return with_build_lookups(
        Inspection(wants=(want,)),
        platform=platform,
        force_pull=force_pull,
        by_platform=bool(platform),
    )


def merge(inspections: Iterable[Inspection]) -> Inspection:
    """One inspection of several: every want and lookup once; a denying setting wins."""
    wants: dict[tuple[str, str | None], Wanted] = {}
    lookups: dict[Lookup, None] = {}
    setting: SettingOutcome | None = None
    for inspection in inspections:
        for want in inspection.wants:
            wants.setdefault((want.input, want.detail), want)
        lookups.update(dict.fromkeys(inspection.lookups))
        if inspection.setting is not None and (setting is None or setting.allowed):
            setting = inspection.setting
    return Inspection(
        wants=tuple(wants.values()),
        setting=setting,
        lookups=tuple(lookups),
    )
