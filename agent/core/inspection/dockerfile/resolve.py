"""Images a Dockerfile build would pull, resolved the way the builder that runs it does.

Pure core: text and build args in, image references out; no files, no Docker.  Used by
``pullgate check --dockerfile`` and by the socket shim when it inspects ``POST /build``.

Two builders read the same file differently, so the caller names the one that will act:

* ``buildkit`` (the default): BuildKit's Dockerfile frontend (``dockerfile2llb``).
* ``classic``: the daemon's classic builder (moby ``builder/dockerfile``), which plain
  ``POST /build`` runs.  It ignores ``# syntax=`` and ``BUILDKIT_SYNTAX``; it has no
  automatic platform args, but lets the proxy args (``HTTP_PROXY`` ... ``all_proxy``) of
  the build args into meta-``ARG`` and ``FROM`` expansion without an ``ARG`` line
  (``buildargs.go`` ``builtinAllowedBuildArgs``); it expands all values of one ``ARG``
  line before defining any of them, and ``ARG X`` without a value unsets ``X``; a stage
  is known to ``FROM`` and ``COPY --from`` only once it has been built (a later stage's
  name is pulled as an image), matched case-insensitively; ``RUN`` takes no flags.

Rules this module keeps (checked against moby/buildkit ``frontend/dockerfile``):

* Strict: when BuildKit's outcome depends on something not known here (a platform arg,
  a build arg without a value, a BuildKit-version-specific corner), raise
  :class:`DockerfileError` rather than guess.  Refusing is always safe for the shim; a
  silently missed pull is not.
* Where BuildKit itself would fail before pulling anything, failing here too is fine;
  where it would pull, every such image must be reported.

What this module cannot see, by design: images named only in build options (named build
contexts ``--build-context name=docker-image://...``), ONBUILD triggers stored inside base
images, and whatever a non-default ``# syntax=`` frontend chooses to do (the frontend
image itself is reported so policy can decide on it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from agent.core.inspection.dockerfile.parser import (
    BOOL,
    STRING,
    STRINGS,
    WS_SPLIT,
    Node,
    decode,
    parse_flags,
    parse_nodes,
    parse_words,
    reject_constant,
    scan_directives,
    split_lines,
)
from agent.core.inspection.dockerfile.shell import Lexer, Unresolved, Value
from agent.core.inspection.dockerfile.text import (
    DockerfileError,
    FragmentError,
    go_lower,
    go_strip,
    short,
)

# DockerfileError is defined beside the parser (which raises it too) and is part of this
# module's API, so callers import everything from here.
__all__ = [
    "Builder",
    "DockerfileError",
    "DockerfileImages",
    "ImageUse",
    "parse_dockerfile",
    "reachable_stages",
]

Source = Literal["from", "copy-from", "run-mount", "syntax", "onbuild"]
#: Which builder evaluates the file (see the module docstring for how they differ).
Builder = Literal["buildkit", "classic"]

#: Longest instruction text kept in an ImageUse.
_INSTRUCTION_TEXT = 200

#: Automatic args BuildKit defines for FROM from the build/target platform and target
#: (dockerfile2llb defaultArgs); unknown here unless the caller passes them as build args.
_AUTOMATIC_ARGS = (
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDOSVERSION",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETOSVERSION",
    "TARGETARCH",
    "TARGETVARIANT",
    "TARGETSTAGE",
)
_SYNTAX_BUILD_ARG = "BUILDKIT_SYNTAX"
#: Build args the classic builder lets into expansion without an ARG line (buildargs.go).
_CLASSIC_BUILTIN_ARGS = (
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
)

_INSTRUCTIONS = frozenset(
    {
        "add",
        "arg",
        "cmd",
        "copy",
        "entrypoint",
        "env",
        "expose",
        "from",
        "healthcheck",
        "label",
        "maintainer",
        "onbuild",
        "run",
        "shell",
        "stopsignal",
        "user",
        "volume",
        "workdir",
    }
)

# Flags of the instructions that can pull (instructions/parse.go, commands_run*.go).  Flags
# from labs frontends are accepted too: refusing them would gain nothing, since none pulls.
_FROM_FLAGS = {"platform": STRING}
_COPY_FLAGS = {
    "chown": STRING,
    "chmod": STRING,
    "from": STRING,
    "link": BOOL,
    "parents": BOOL,
    "exclude": STRINGS,
}
_ADD_FLAGS = {
    "chown": STRING,
    "chmod": STRING,
    "checksum": STRING,
    "link": BOOL,
    "keep-git-dir": BOOL,
    "unpack": BOOL,
    "exclude": STRINGS,
}
_RUN_FLAGS = {"mount": STRINGS, "network": STRING, "security": STRING, "device": STRINGS}

_STAGE_NAME = re.compile(r"[a-z][a-z0-9_.\-]*")
_GO_INT = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class ImageUse:
    """One place where the build pulls an image.

    ``source``: ``from`` (a stage base), ``copy-from`` (``COPY --from=image``),
    ``run-mount`` (``RUN --mount=...,from=image``), ``syntax`` (the frontend image of
    ``# syntax=`` or of the ``BUILDKIT_SYNTAX`` build arg; ``line`` is 0 for the build arg),
    ``onbuild`` (``ONBUILD COPY --from`` / ``ONBUILD RUN --mount from``: pulled when a
    later stage or a later build uses this stage as its base).
    """

    image: str
    line: int
    source: Source
    stage: int | None
    instruction: str
    #: A BuildKit ``FROM --platform=P``'s P after the global ARGs (``None``: no flag):
    #: BuildKit's own ``$BUILDPLATFORM`` or ``$TARGETPLATFORM`` is left as that text,
    #: since a global ARG or a build arg of that name may have replaced it.
    platform: str | None = None
    #: Why P cannot be told (it depends on an arg Pullgate does not know), or None.
    platform_problem: str | None = None


@dataclass(frozen=True)
class DockerfileImages:
    """Every image use, in file order (the syntax frontend first), and the stage names.

    ``deps``: for each stage, the stages building it needs (see :func:`reachable_stages`):
    the stage its ``FROM`` names, those its ``COPY --from`` and ``RUN --mount=from=``
    name, and those named by the ``ONBUILD`` triggers of every stage in its ``FROM``
    chain. Empty when not known (then every stage counts as built).
    """

    uses: tuple[ImageUse, ...]
    stages: tuple[str | None, ...]
    deps: tuple[frozenset[int], ...] = ()

    @property
    def images(self) -> tuple[str, ...]:
        """Distinct images in first-seen order: what policy has to allow."""
        return tuple(dict.fromkeys(use.image for use in self.uses))


def parse_dockerfile(
    text: str | bytes,
    build_args: Mapping[str, str] | None = None,
    *,
    max_size: int = 4 * 1024 * 1024,
    heredocs: bool = True,
    check_directive: bool = True,
    builder: Builder = "buildkit",
) -> DockerfileImages:
    """List the images a build of ``text`` by ``builder`` would pull, or raise DockerfileError.

    ``heredocs=False`` reads the file as a parser without heredoc support does (the
    classic builder of older daemons): heredoc bodies are then instructions. The shim
    checks classic builds both ways, so a ``FROM`` hidden in a heredoc cannot slip past
    a daemon that does not know heredocs. ``check_directive=False`` reads it as parsers
    older than BuildKit 0.13 do, for which ``# check=`` is no directive and ends them.
    """
    if builder not in ("buildkit", "classic"):
        raise ValueError(f"unknown builder {builder!r}")
    args = dict(build_args or {})
    for key, value in args.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise DockerfileError(f"build arg {key!r} must map a string to a string")
    src = decode(text, max_size)
    lines = split_lines(src)
    uses: list[ImageUse] = []
    classic = builder == "classic"
    syntax = None if classic else _syntax_use(src, args)  # the classic builder ignores it
    if syntax is not None:
        uses.append(syntax)
    legacy = None if classic else _legacy_syntax_use(src)
    if legacy is not None and (syntax is None or legacy.image != syntax.image):
        uses.append(legacy)
    nodes, escape = parse_nodes(lines, heredocs=heredocs, check_directive=check_directive)
    stages, deps = _resolve(nodes, escape, args, uses, classic=classic)
    return DockerfileImages(uses=tuple(uses), stages=stages, deps=deps)


def reachable_stages(images: DockerfileImages, target: str) -> frozenset[int] | None:
    """The stages BuildKit builds for ``target`` ("" = the last stage), or None for all.

    dockerfile2llb (``resolveTarget``, ``allReachableStages``; ``isReachable`` before
    BuildKit 0.15) resolves and builds only the target stage and what it reaches through
    ``FROM <stage>``, ``COPY --from=<stage name or index>``, ``RUN --mount=from=<stage>``
    and ONBUILD triggers of a stage used as a base; images of other stages are neither
    resolved nor pulled. The target is matched lower-cased (``findStateByName``); a name
    held by several stages counts as all of them (BuildKit takes the last). None when the
    target names no stage (BuildKit then fails, but only after the ``# syntax=`` frontend
    ran: nothing is narrowed) or when ``deps`` is unknown.
    """
    count = len(images.stages)
    if count == 0 or len(images.deps) != count:
        return None
    if target:
        wanted = go_lower(target)
        roots = [index for index, name in enumerate(images.stages) if name == wanted]
        if not roots:
            return None
    else:
        roots = [count - 1]
    seen: set[int] = set()
    pending = roots
    while pending:
        index = pending.pop()
        if index not in seen:
            seen.add(index)
            pending.extend(images.deps[index] - seen)
    return frozenset(seen)


#: BuildKit before 0.9 (dockerd 20.10's built-in frontend): any ``#key=value`` line at the
#: top is a directive, whatever its key, and the last ``syntax`` wins (``\s`` is Go's).
_LEGACY_DIRECTIVE = re.compile(
    r"#[ \t\n\f\r]*([a-zA-Z][a-zA-Z0-9]*)[ \t\n\f\r]*=[ \t\n\f\r]*(.+?)[ \t\n\f\r]*"
)


def _legacy_syntax_use(src: str) -> ImageUse | None:
    """The frontend image as BuildKit 0.8's ``DetectSyntax`` finds it.

    It reads directive lines until the first line that is not one, accepting any key (so
    ``# foo=bar`` does not end them, as it does for newer parsers) and keeping the last
    ``syntax``; no ``#!`` line is skipped and no ``//`` or JSON form is read. Decided
    beside today's reading, so neither daemon's frontend is missed.
    """
    found: tuple[str, int, str] | None = None
    for number, line in enumerate(src.split("\n"), 1):
        text = line.removesuffix("\r")  # bufio.ScanLines
        match = _LEGACY_DIRECTIVE.fullmatch(text)
        if match is None:
            break
        if match.group(1).lower() == "syntax":
            found = (match.group(2), number, text)
    if found is None:
        return None
    value, number, line = found
    image = value.split(" ", 1)[0]
    if not image:
        raise DockerfileError("the syntax directive names no frontend image", number)
    return ImageUse(image, number, "syntax", None, short(line.strip(), _INSTRUCTION_TEXT))


def _syntax_use(src: str, build_args: Mapping[str, str]) -> ImageUse | None:
    """The frontend image BuildKit forwards the build to (builder/build.go, DetectSyntax).

    It is pulled before the Dockerfile is parsed, so it is found the way DetectSyntax finds
    it: after a ``#!`` line, ``#`` or ``//`` directives at column 0, or a JSON object.
    """
    if _SYNTAX_BUILD_ARG in build_args:
        value = build_args[_SYNTAX_BUILD_ARG]
        image = go_strip(value).split(" ", 1)[0]
        if not image:
            raise DockerfileError(f"build arg {_SYNTAX_BUILD_ARG} names no frontend image")
        return ImageUse(
            image, 0, "syntax", None, short(f"--build-arg {_SYNTAX_BUILD_ARG}={value}", 200)
        )
    data, first_line = src, 0
    head, _, rest = src.partition("\n")
    if head.startswith("#!"):
        data, first_line = rest, 1
    for prefix in ("#", "//"):
        found = scan_directives(data, prefix, first_line)
        if found is not None:
            value, line, text = found
            image = value.split(" ", 1)[0]
            if not image:
                raise DockerfileError("the syntax directive names no frontend image", line)
            return ImageUse(image, line, "syntax", None, short(text.strip(), _INSTRUCTION_TEXT))
    if data.lstrip().startswith("{"):
        try:
            obj = json.loads(data, parse_constant=reject_constant)
        except (ValueError, RecursionError):
            return None
        if isinstance(obj, dict) and isinstance(obj.get("syntax"), str):
            image = obj["syntax"]
            if not image:
                raise DockerfileError("the JSON syntax key names no frontend image")
            return ImageUse(image, first_line + 1, "syntax", None, f"syntax: {short(image, 180)}")
    return None


@dataclass
class _Stage:
    node: Node
    base: str
    name: str | None
    commands: list[Node]


def _fail_at(node: Node, message: str) -> DockerfileError:
    return DockerfileError(f"{node.text()}: {message}", node.line)


def _resolve(
    nodes: list[Node],
    escape: str,
    build_args: Mapping[str, str],
    uses: list[ImageUse],
    *,
    classic: bool = False,
) -> tuple[tuple[str | None, ...], tuple[frozenset[int], ...]]:
    """instructions.Parse + the parts of dockerfile2llb (or of the classic builder's
    dispatchers) that decide what gets pulled: the stage names and each stage's deps."""
    meta: list[Node] = []
    stages: list[_Stage] = []
    for node in nodes:
        if node.cmd not in _INSTRUCTIONS:
            raise _fail_at(node, f"unknown instruction {node.cmd.upper()}")
        if node.cmd == "from":
            try:
                base, name = _parse_from(node)
            except FragmentError as e:
                raise _fail_at(node, str(e)) from e
            stages.append(_Stage(node, base, name, []))
        elif stages:
            stages[-1].commands.append(node)
        elif node.cmd == "arg":
            meta.append(node)
        else:
            raise _fail_at(node, "only ARG may come before the first FROM")
    if not stages:
        raise DockerfileError("no FROM instruction: the Dockerfile defines no build stage")

    if classic:
        env, declared = _classic_global_args(meta, escape, build_args)
    else:
        env, declared = _global_args(meta, escape, build_args)
    all_names = {stage.name: index for index, stage in enumerate(stages) if stage.name}
    # Every stage a name refers to: dockerfile2llb keeps the last of duplicates, but the
    # deps count them all, which can only add stages.
    indices: dict[str, list[int]] = {}
    for index, stage in enumerate(stages):
        if stage.name:
            indices.setdefault(stage.name, []).append(index)
    bases: list[set[int]] = []
    own: list[set[int]] = []
    triggers: list[set[int]] = []
    for index, stage in enumerate(stages):
        earlier = {s.name for s in stages[:index] if s.name}
        image, base = _resolve_base(stage, env, declared, escape, earlier, classic=classic)
        if image is not None:
            platform, problem = (None, None) if classic else _stage_platform(stage, env, escape)
            uses.append(
                ImageUse(
                    image,
                    stage.node.line,
                    "from",
                    index,
                    _instruction(stage.node),
                    platform,
                    problem,
                )
            )
        # dispatchStates.addState: the base is an earlier stage whose name is the expanded
        # base exactly (the classic builder lower-cases it).
        base_key = base.lower() if classic else base
        bases.append({i for i in indices.get(base_key, ()) if i < index})
        # The classic builder knows only the stages built so far; BuildKit knows them all.
        known = {name: i for name, i in all_names.items() if i < index} if classic else all_names
        seen_by = (
            {name: [i for i in found if i < index] for name, found in indices.items()}
            if classic
            else indices
        )
        stage_count = index if classic else len(stages)
        own.append(set())
        triggers.append(set())
        for node in stage.commands:
            try:
                uses.extend(_command_uses(node, index, known, stage_count, classic))
                if node.cmd == "onbuild":
                    triggers[index] |= _trigger_deps(node, seen_by, stage_count)
                else:
                    own[index] |= _command_deps(node, seen_by, stage_count, classic)
            except FragmentError as e:
                raise _fail_at(node, str(e)) from e
    # initOnBuildTriggers: a stage built on another runs that stage's ONBUILD triggers
    # first; those of the stages further down its FROM chain are counted too.
    inherited: list[set[int]] = []
    deps: list[frozenset[int]] = []
    for index in range(len(stages)):
        chain: set[int] = set()
        for base_index in bases[index]:
            chain |= triggers[base_index] | inherited[base_index]
        inherited.append(chain)
        deps.append(frozenset(bases[index] | own[index] | chain))
    return tuple(stage.name for stage in stages), tuple(deps)


def _instruction(node: Node) -> str:
    return node.text(_INSTRUCTION_TEXT)


def _parse_from(node: Node) -> tuple[str, str | None]:
    """FROM [--platform=P] IMAGE [AS NAME] (instructions/parse.go parseFrom)."""
    # The platform is not expanded: it picks a variant of the same image, never another
    # image, and $BUILDPLATFORM there is the common case.
    parse_flags(node.flags, _FROM_FLAGS)
    args = WS_SPLIT.split(node.args) if node.args else []
    name: str | None = None
    if len(args) == 3 and args[1].casefold() == "as":  # Go strings.EqualFold
        name = go_lower(args[2])
        if not _STAGE_NAME.fullmatch(name):
            raise FragmentError(
                f"invalid stage name {args[2]!r}: it must start with a letter and hold only "
                "letters, digits, '-', '_' and '.'"
            )
    elif len(args) != 1:
        raise FragmentError(
            "FROM takes an image and an optional AS NAME: FROM [--platform=P] IMAGE [AS NAME]"
        )
    return args[0], name


#: BuildKit's platform args, kept as marks while a stage's platform is expanded.
_PLATFORM_MARKS = {
    "BUILDPLATFORM": "\x00BUILDPLATFORM\x00",
    "TARGETPLATFORM": "\x00TARGETPLATFORM\x00",
}


def _stage_platform(
    stage: _Stage, env: Mapping[str, Value], escape: str
) -> tuple[str | None, str | None]:
    """A BuildKit stage's ``--platform`` as dockerfile2llb expands it: with the global
    ARGs, which replace (as build args do) its own ``BUILDPLATFORM`` and
    ``TARGETPLATFORM``. Those two, left as BuildKit sets them, come back as
    ``$BUILDPLATFORM`` / ``$TARGETPLATFORM``; any other value Pullgate cannot know
    (another automatic arg, an unset one) is a problem, as is a platform that comes out
    empty (BuildKit fails to parse it)."""
    values = parse_flags(stage.node.flags, _FROM_FLAGS).get("platform")
    if not values:
        return None, None
    raw = values[-1]
    marked: dict[str, Value] = dict(env)
    for key, mark in _PLATFORM_MARKS.items():
        if isinstance(env.get(key), Unresolved):
            marked[key] = mark
    problem = f"a build whose stage platform {raw!r} Pullgate cannot tell"
    try:
        value = Lexer(escape, marked, strict=True).process_word(raw)
    except FragmentError:
        return None, problem
    if isinstance(value, Unresolved) or not value:
        return None, problem
    for key, mark in _PLATFORM_MARKS.items():
        if value == mark:
            return f"${key}", None
    if "\x00" in value:
        return None, problem
    return value, None


def _global_args(
    meta: list[Node], escape: str, build_args: Mapping[str, str]
) -> tuple[dict[str, Value], set[str]]:
    """ARGs before the first FROM, as dockerfile2llb buildMetaArgs applies them."""
    env: dict[str, Value] = {}
    for key in _AUTOMATIC_ARGS:
        env[key] = build_args[key] if key in build_args else Unresolved(key, "automatic")
    declared: set[str] = set()
    for node in meta:
        words = parse_words(node.args, escape)
        if not words:
            raise _fail_at(node, "ARG requires at least one argument")
        for word in words:
            key, eq, default = word.partition("=")
            if eq and not key:
                raise _fail_at(node, "ARG names can not be blank")
            declared.add(key)
            if key in build_args:
                env[key] = build_args[key]  # build args are taken literally
            elif eq:
                try:
                    env[key] = Lexer(escape, env, strict=True).process_word(default)
                except FragmentError as e:
                    raise _fail_at(node, str(e)) from e
    return env, declared


def _classic_global_args(
    meta: list[Node], escape: str, build_args: Mapping[str, str]
) -> tuple[dict[str, Value], set[str]]:
    """ARGs before the first FROM, as the classic builder's ``processMetaArg`` applies them.

    The proxy args are visible from the build args without an ``ARG`` line; every value of
    one ``ARG`` line is expanded before any of its names is defined; a name's build arg
    beats its default; ``ARG X`` with neither leaves ``X`` unset, even if set before.
    """
    env: dict[str, Value] = {k: build_args[k] for k in _CLASSIC_BUILTIN_ARGS if k in build_args}
    declared: set[str] = set()
    for node in meta:
        words = parse_words(node.args, escape)
        if not words:
            raise _fail_at(node, "ARG requires at least one argument")
        snapshot = dict(env)
        pending: list[tuple[str, Value | None]] = []
        for word in words:
            key, eq, default = word.partition("=")
            if eq and not key:
                raise _fail_at(node, "ARG names can not be blank")
            # processMetaArg expands the names too (quotes, escapes, variables, a BOM).
            try:
                expanded = Lexer(escape, snapshot, strict=True).process_word(key)
            except FragmentError as e:
                raise _fail_at(node, str(e)) from e
            if isinstance(expanded, Unresolved) or not expanded:
                raise _fail_at(node, f"the ARG name {key!r} cannot be resolved")
            key = expanded
            value: Value | None = None
            if eq:
                try:
                    value = Lexer(escape, snapshot, strict=True).process_word(default)
                except FragmentError as e:
                    raise _fail_at(node, str(e)) from e
            pending.append((key, value))
        for key, value in pending:
            declared.add(key)
            if key in build_args:
                env[key] = build_args[key]
            elif value is not None:
                env[key] = value
            else:
                env.pop(key, None)
    return env, declared


def _unresolved_message(missing: Unresolved, declared: set[str]) -> str:
    name = missing.name
    if missing.why == "automatic":
        return (
            f"{name} is set by BuildKit from the build or target platform, which is not "
            f"known here; pass --build-arg {name}=..."
        )
    if name in declared:
        return f"build arg {name} has no value; pass --build-arg {name}=..."
    return (
        f"{name} is not a global build arg; declare ARG {name} before the first FROM "
        f"and pass --build-arg {name}=..."
    )


def _resolve_base(
    stage: _Stage,
    env: Mapping[str, Value],
    declared: set[str],
    escape: str,
    earlier: set[str],
    *,
    classic: bool = False,
) -> tuple[str | None, str]:
    """The image a FROM pulls (None for scratch and earlier stages) and the expanded base."""
    node = stage.node
    try:
        value = Lexer(escape, env, strict=True).process_word(stage.base)
    except FragmentError as e:
        raise _fail_at(node, str(e)) from e
    if isinstance(value, Unresolved):
        raise _fail_at(node, _unresolved_message(value, declared))
    if not value:
        raise _fail_at(node, "the image name is empty after substituting build args")
    if "$" in value:
        raise _fail_at(node, f"the image name {value!r} still holds a '$'")
    if value in earlier:
        return None, value
    if classic and value.lower() in earlier:
        return None, value  # stagesBuildResults.getByName lower-cases the name
    if value.lower() in earlier:
        # dockerfile2llb matches FROM against stage names case-sensitively (names are
        # stored lower-cased), so BuildKit takes this for an image name and rejects it.
        raise _fail_at(
            node,
            f"{value!r} is not a stage name (stage names are lower-case; write "
            f"{value.lower()!r}) and not a valid image name",
        )
    if value == "scratch":
        return None, value
    return value, value


def _command_uses(
    node: Node,
    stage: int,
    all_names: Mapping[str, int],
    stage_count: int,
    classic: bool = False,
) -> list[ImageUse]:
    """Images one instruction of a stage pulls. ``all_names``/``stage_count``: the stages
    it can refer to (for the classic builder, only those built before it)."""
    text = _instruction(node)
    if node.cmd == "copy":
        flags = parse_flags(node.flags, _COPY_FLAGS)
        image = _copy_from_image(flags.get("from", [""])[0], all_names, stage_count)
        return [ImageUse(image, node.line, "copy-from", stage, text)] if image else []
    if node.cmd == "add":
        parse_flags(node.flags, _ADD_FLAGS)  # ADD has no --from: an unknown flag fails
        return []
    if node.cmd == "run":
        flags = parse_flags(node.flags, _RUN_FLAGS)
        if classic and node.flags:
            return []  # the classic builder fails on any RUN flag before it mounts anything
        found: list[ImageUse] = []
        for mount in flags.get("mount", []):
            source = _mount_from(mount)
            if source is not None and go_lower(source) not in all_names and source != "scratch":
                found.append(ImageUse(source, node.line, "run-mount", stage, text))
        return found
    if node.cmd == "onbuild":
        return _onbuild_uses(node, stage, text)
    return []


def _command_deps(
    node: Node, names: Mapping[str, list[int]], stage_count: int, classic: bool
) -> set[int]:
    """The stages one instruction reads from (dockerfile2llb toCommand, detectRunMount).

    Called after :func:`_command_uses` accepted the instruction, so the flags parse.
    """
    found: set[int] = set()
    if node.cmd == "copy":
        value = parse_flags(node.flags, _COPY_FLAGS).get("from", [""])[0]
        found |= _from_deps(value, names, stage_count)
    elif node.cmd == "run" and not classic:
        for mount in parse_flags(node.flags, _RUN_FLAGS).get("mount", []):
            source = _mount_from(mount)
            if source is not None:
                found.update(names.get(go_lower(source), ()))  # by name only, no index
    return found


def _trigger_deps(node: Node, names: Mapping[str, list[int]], stage_count: int) -> set[int]:
    """The stages an ONBUILD trigger of this file reads from where it runs (in a stage
    built on this one: initOnBuildTriggers), checked by :func:`_onbuild_uses` first."""
    child = node.child
    found: set[int] = set()
    if child is None:
        return found
    if child.cmd == "copy":
        for value in parse_flags(child.flags, {"from": STRING}, lenient=True).get("from", []):
            found |= _from_deps(value, names, stage_count)
    elif child.cmd == "run":
        for mount in parse_flags(child.flags, {"mount": STRINGS}, lenient=True).get("mount", []):
            source = _mount_from(mount)
            if source is not None:
                found.update(names.get(go_lower(source), ()))
    return found


def _from_deps(value: str, names: Mapping[str, list[int]], stage_count: int) -> set[int]:
    """The stages a ``--from`` value names: an index (strconv.Atoi), else a name."""
    if not value:
        return set()
    if _is_go_int64(value):
        index = int(value)
        if 0 <= index < stage_count:
            return {index}
        # Out of range: an error, or (for a trigger) an image state BuildKit appended to
        # its list of stages. Unsure which: every stage counts.
        return set(range(stage_count))
    return set(names.get(go_lower(value), ()))


def _copy_from_image(value: str, all_names: Mapping[str, int], stage_count: int) -> str | None:
    """dockerfile2llb toCommand: a stage index, a stage name (any case), or an image."""
    if not value:
        return None
    if "$" in value:
        raise FragmentError(
            f"--from={value}: BuildKit does not expand variables in COPY --from and would "
            "take it literally; use an alias stage (ARG X, FROM ${X} AS src, COPY --from=src)"
        )
    if _is_go_int64(value):
        index = int(value)
        if 0 <= index < stage_count:
            return None
        raise FragmentError(f"--from={value}: there is no stage with index {index}")
    if go_lower(value) in all_names or value == "scratch":
        return None
    return value


def _is_go_int64(value: str) -> bool:
    """What ``strconv.ParseInt(value, 10, 0)`` accepts on a 64-bit platform."""
    return bool(_GO_INT.fullmatch(value)) and -(2**63) <= int(value) < 2**63


def _mount_from(mount: str) -> str | None:
    """The ``from`` of one --mount value (instructions/commands_runmount.go parseMount)."""
    source: str | None = None
    for field in _parse_csv_record(mount):
        key, eq, value = field.partition("=")
        key = key.lower()
        if not eq:
            if key in ("readonly", "ro", "readwrite", "rw", "required"):
                continue
            raise FragmentError(f"invalid mount field {field!r}: it must be a key=value pair")
        if key == "from":
            source = value
    if not source:
        return None
    if "$" in source:
        raise FragmentError(
            f"--mount from={source}: BuildKit does not expand variables in from=; "
            "define an alias stage instead"
        )
    return source


def _parse_csv_record(text: str) -> list[str]:
    """One record as Go's encoding/csv reads it (no lazy quotes, no space trimming)."""
    if not text:
        raise FragmentError("empty --mount value")
    fields: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            i += 1
            buf: list[str] = []
            while True:
                j = text.find('"', i)
                if j < 0:
                    raise FragmentError(f"bad --mount value {text!r}: missing closing quote")
                buf.append(text[i:j])
                i = j + 1
                if i < n and text[i] == '"':
                    buf.append('"')
                    i += 1
                    continue
                fields.append("".join(buf))
                if i == n:
                    return fields
                if text[i] != ",":
                    raise FragmentError(f"bad --mount value {text!r}: text after a closing quote")
                i += 1
                break
        else:
            j = text.find(",", i)
            field = text[i:] if j < 0 else text[i:j]
            if '"' in field:
                raise FragmentError(f"bad --mount value {text!r}: bare quote in a field")
            fields.append(field)
            if j < 0:
                return fields
            i = j + 1


def _onbuild_uses(node: Node, stage: int, text: str) -> list[ImageUse]:
    """Images an ONBUILD trigger pulls when a stage or a later build is based on this one.

    A trigger runs where it is used, so names are not matched against this file's stages
    and variables cannot be resolved here (a ``$`` is refused, as BuildKit would).
    """
    if node.flags:
        raise FragmentError(f"unknown flag {node.flags[0].partition('=')[0]} on ONBUILD")
    child = node.child
    if child is None:
        raise FragmentError("ONBUILD requires at least one argument")
    if child.cmd in ("onbuild", "from", "maintainer"):
        raise FragmentError(f"{child.cmd.upper()} isn't allowed as an ONBUILD trigger")
    found: list[str] = []
    if child.cmd == "copy":
        flags = parse_flags(child.flags, {"from": STRING}, lenient=True)
        for value in flags.get("from", []):
            if "$" in value:
                raise FragmentError(
                    f"--from={value}: variables in an ONBUILD trigger cannot be resolved"
                )
            if value and not _is_go_int64(value) and value != "scratch":
                found.append(value)  # an index only if strconv.ParseInt takes it
    elif child.cmd == "run":
        flags = parse_flags(child.flags, {"mount": STRINGS}, lenient=True)
        for mount in flags.get("mount", []):
            source = _mount_from(mount)
            if source is not None and source != "scratch":
                found.append(source)
    return [ImageUse(image, node.line, "onbuild", stage, text) for image in found]
