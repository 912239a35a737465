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

__all__ = ["Builder", "DockerfileError", "DockerfileImages", "ImageUse", "parse_dockerfile"]

Source = Literal["from", "copy-from", "run-mount", "syntax", "onbuild"]
#: Which builder evaluates the file (see the module docstring for how they differ).
Builder = Literal["buildkit", "classic"]

#: BuildKit's longest physical line (bufio.Scanner default buffer, parser.go).
_MAX_LINE_BYTES = 65535
#: Bounds that keep hostile input cheap; no real Dockerfile comes near them.
_MAX_NESTING = 64
_MAX_PATTERN_VALUE = 4096
_INSTRUCTION_TEXT = 200
_ERROR_TEXT = 80

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
_HEREDOC_INSTRUCTIONS = frozenset({"add", "copy", "run"})
_DIRECTIVES = frozenset({"syntax", "escape", "check"})

_STRING, _STRINGS, _BOOL = "string", "strings", "bool"
# Flags of the instructions that can pull (instructions/parse.go, commands_run*.go).  Flags
# from labs frontends are accepted too: refusing them would gain nothing, since none pulls.
_FROM_FLAGS = {"platform": _STRING}
_COPY_FLAGS = {
    "chown": _STRING,
    "chmod": _STRING,
    "from": _STRING,
    "link": _BOOL,
    "parents": _BOOL,
    "exclude": _STRINGS,
}
_ADD_FLAGS = {
    "chown": _STRING,
    "chmod": _STRING,
    "checksum": _STRING,
    "link": _BOOL,
    "keep-git-dir": _BOOL,
    "unpack": _BOOL,
    "exclude": _STRINGS,
}
_RUN_FLAGS = {"mount": _STRINGS, "network": _STRING, "security": _STRING, "device": _STRINGS}

_WS_SPLIT = re.compile(r"[\t\v\f\r ]+")  # parser tokenWhitespace / reWhitespace
_RE_WS = "\t\n\f\r "  # what Go regexp's \s matches
_DIRECTIVE_KEY = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=")
_HEREDOC = re.compile(r"([0-9]*)<<(-?)([^<]*)")
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_.\-]*")
_GO_INT = re.compile(r"[+-]?[0-9]+")
# unicode.IsSpace: Latin-1 spaces plus the White_Space code points above U+00FF.
_GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class DockerfileError(ValueError):
    """A Dockerfile that cannot be resolved safely. .line is the 1-based line or None."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


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


@dataclass(frozen=True)
class DockerfileImages:
    """Every image use, in file order (the syntax frontend first), and the stage names."""

    uses: tuple[ImageUse, ...]
    stages: tuple[str | None, ...]

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
    src = _decode(text, max_size)
    lines = _split_lines(src)
    uses: list[ImageUse] = []
    classic = builder == "classic"
    syntax = None if classic else _syntax_use(src, args)  # the classic builder ignores it
    if syntax is not None:
        uses.append(syntax)
    nodes, escape = _parse_nodes(lines, heredocs=heredocs, check_directive=check_directive)
    stages = _resolve(nodes, escape, args, uses, classic=classic)
    return DockerfileImages(uses=tuple(uses), stages=stages)


# --------------------------------------------------------------------------- text


class _FragmentError(Exception):
    """A problem found below instruction level; the caller adds line and instruction."""


def _go_isspace(ch: str) -> bool:
    return ch in _GO_SPACE


def _go_lstrip(s: str) -> str:
    i = 0
    while i < len(s) and s[i] in _GO_SPACE:
        i += 1
    return s[i:]


def _go_strip(s: str) -> str:
    s = _go_lstrip(s)
    j = len(s)
    while j > 0 and s[j - 1] in _GO_SPACE:
        j -= 1
    return s[:j]


def _go_lower(s: str) -> str:
    # strings.ToLower maps rune by rune; Python's lower() turns U+0130 into two runes.
    return "".join("i" if c == "\u0130" else c.lower() for c in s)


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split("\n"))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode(text: str | bytes, max_size: int) -> str:
    if isinstance(text, bytes):
        data = text
        if len(data) > max_size:
            raise DockerfileError(
                f"Dockerfile is {len(data)} bytes, over the {max_size}-byte limit",
                data.count(b"\n", 0, max_size) + 1,
            )
        try:
            src = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise DockerfileError(f"not valid UTF-8 (byte {e.start})", line) from e
    else:
        if len(text) > max_size:
            raise DockerfileError(
                f"Dockerfile is over the {max_size}-byte limit", text.count("\n", 0, max_size) + 1
            )
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            line = text.count("\n", 0, e.start) + 1
            raise DockerfileError("text holds a lone surrogate; not valid UTF-8", line) from e
        if len(data) > max_size:
            raise DockerfileError(
                f"Dockerfile is {len(data)} bytes, over the {max_size}-byte limit",
                data.count(b"\n", 0, max_size) + 1,
            )
        src = text
    if not src:
        raise DockerfileError("the Dockerfile is empty")
    return src[1:] if src.startswith("\ufeff") else src


def _split_lines(src: str) -> list[str]:
    """Physical lines as BuildKit's scanner sees them, trailing CRs removed."""
    raw = src.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    lines: list[str] = []
    for number, line in enumerate(raw, 1):
        if len(line) * 4 > _MAX_LINE_BYTES and len(line.encode("utf-8")) > _MAX_LINE_BYTES:
            raise DockerfileError(f"line is longer than BuildKit's {_MAX_LINE_BYTES} bytes", number)
        lines.append(line.rstrip("\r"))
    return lines


def _match_directive(s: str) -> tuple[str, str] | None:
    """``key = value`` as directives.go's regexp reads it (without the backtracking)."""
    m = _DIRECTIVE_KEY.match(s)
    if m is None:
        return None
    rest = s[m.end() :]
    value = rest.lstrip(_RE_WS)
    if not value:
        # `(.+?)` needs one character, so an all-blank value is its last blank.
        return (m.group(1), rest[-1]) if rest else None
    return m.group(1), value.rstrip(_RE_WS)


def _scan_directives(data: str, prefix: str, first_line: int) -> tuple[str, int, str] | None:
    seen: set[str] = set()
    number = first_line
    for raw in data.split("\n"):
        number += 1
        line = raw.removesuffix("\r")
        if not line.startswith(prefix):
            return None
        found = _match_directive(_go_lstrip(line[len(prefix) :]))
        if found is None:
            return None
        key = found[0].lower()
        if key not in _DIRECTIVES or key in seen:
            return None
        seen.add(key)
        if key == "syntax":
            return found[1], number, line
    return None


def _syntax_use(src: str, build_args: Mapping[str, str]) -> ImageUse | None:
    """The frontend image BuildKit forwards the build to (builder/build.go, DetectSyntax).

    It is pulled before the Dockerfile is parsed, so it is found the way DetectSyntax finds
    it: after a ``#!`` line, ``#`` or ``//`` directives at column 0, or a JSON object.
    """
    if _SYNTAX_BUILD_ARG in build_args:
        value = build_args[_SYNTAX_BUILD_ARG]
        image = _go_strip(value).split(" ", 1)[0]
        if not image:
            raise DockerfileError(f"build arg {_SYNTAX_BUILD_ARG} names no frontend image")
        return ImageUse(
            image, 0, "syntax", None, _short(f"--build-arg {_SYNTAX_BUILD_ARG}={value}", 200)
        )
    data, first_line = src, 0
    head, _, rest = src.partition("\n")
    if head.startswith("#!"):
        data, first_line = rest, 1
    for prefix in ("#", "//"):
        found = _scan_directives(data, prefix, first_line)
        if found is not None:
            value, line, text = found
            image = value.split(" ", 1)[0]
            if not image:
                raise DockerfileError("the syntax directive names no frontend image", line)
            return ImageUse(image, line, "syntax", None, _short(text.strip(), _INSTRUCTION_TEXT))
    if data.lstrip().startswith("{"):
        try:
            obj = json.loads(data, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return None
        if isinstance(obj, dict) and isinstance(obj.get("syntax"), str):
            image = obj["syntax"]
            if not image:
                raise DockerfileError("the JSON syntax key names no frontend image")
            return ImageUse(image, first_line + 1, "syntax", None, f"syntax: {_short(image, 180)}")
    return None


def _reject_constant(name: str) -> object:
    raise ValueError(f"not JSON: {name}")


# --------------------------------------------------------------------------- parser


@dataclass
class _Node:
    """One instruction as parser.go builds it (command, flags, rest of the line)."""

    cmd: str
    flags: list[str]
    args: str
    original: str
    line: int
    json: bool = False
    child: _Node | None = None

    def text(self, limit: int = _ERROR_TEXT) -> str:
        return _short(_go_strip(self.original), limit)


class _Directives:
    """Parser directives at the top of the file (directives.go DirectiveParser).

    ``known``: the directive names of the parser being modelled (``check`` arrived in
    BuildKit 0.13; older parsers stop reading directives at it).
    """

    def __init__(self, known: frozenset[str] = _DIRECTIVES) -> None:
        self.escape = "\\"
        self._known = known
        self._done = False
        self._seen: set[str] = set()

    def feed(self, token: str, line: int) -> None:
        if self._done:
            return
        if not token.startswith("#"):
            self._done = True
            return
        found = _match_directive(_go_lstrip(token[1:]))
        if found is None or found[0].lower() not in self._known:
            self._done = True
            return
        key, value = found[0].lower(), found[1]
        if key in self._seen:
            raise DockerfileError(f"only one {key} parser directive can be used", line)
        self._seen.add(key)
        if key == "escape":
            if value not in ("`", "\\"):
                raise DockerfileError(f"invalid escape token {value!r}: use ` or \\", line)
            self.escape = value


def _is_comment(line: str) -> bool:
    return _go_lstrip(line).startswith("#")


def _trim_continuation(line: str, escape: str) -> tuple[str, bool]:
    """Strip a trailing escape (line continuation); True when the logical line ends.

    Same as parser.go's regexp: the escape, then only blanks, and not itself escaped.
    """
    body = line.rstrip(" \t")
    if body.endswith(escape) and (len(body) == 1 or body[-2] != escape):
        return body[:-1], False
    return line, True


def _parse_nodes(
    lines: list[str], *, heredocs: bool = True, check_directive: bool = True
) -> tuple[list[_Node], str]:
    """Logical instructions with heredoc bodies skipped (parser.go Parse)."""
    directives = _Directives(_DIRECTIVES if check_directive else _DIRECTIVES - {"check"})
    nodes: list[_Node] = []
    i, n = 0, len(lines)
    while i < n:
        token = _go_lstrip(lines[i])
        directives.feed(token, i + 1)
        i += 1
        start = i
        content, ended = _trim_continuation("" if _is_comment(token) else token, directives.escape)
        if ended and not content:
            continue
        parts = [content]
        while not ended and i < n:
            raw = lines[i]
            directives.feed(raw, i + 1)
            i += 1
            if _is_comment(raw) or not _go_lstrip(raw):
                continue
            more, ended = _trim_continuation(raw, directives.escape)
            parts.append(more)
        line = "".join(parts)
        try:
            node = _new_node(line, start)
            docs = (
                _heredocs_from_line(line)
                if heredocs and _can_hold_heredoc(node) and "<<" in line
                else []
            )
        except _FragmentError as e:
            raise DockerfileError(f"{_short(_go_strip(line), _ERROR_TEXT)}: {e}", start) from e
        for name, chomp in docs:
            while i < n:
                body = lines[i]
                i += 1
                if (body.lstrip("\t") if chomp else body) == name:
                    break
            else:
                raise DockerfileError(f"unterminated heredoc <<{name}", start)
        nodes.append(node)
    if not nodes:
        raise DockerfileError("the Dockerfile has no instructions")
    return nodes, directives.escape


def _new_node(line: str, number: int, *, nested: bool = False) -> _Node:
    """split_command.go plus the per-instruction line parsers that matter here."""
    parts = _WS_SPLIT.split(_go_strip(line), maxsplit=1)
    cmd = _go_lower(parts[0])
    flags: list[str] = []
    rest = ""
    if len(parts) == 2:
        rest, flags = _extract_builder_flags(parts[1])
    args = _go_strip(rest)
    node = _Node(cmd=cmd, flags=flags, args=args, original=line, line=number)
    if cmd in _HEREDOC_INSTRUCTIONS:
        node.json = _is_json_form(args)
    elif cmd == "onbuild" and args and not nested:
        # One level is all BuildKit looks at (ONBUILD ONBUILD is refused later), and
        # stopping here keeps a line of repeated ONBUILDs from recursing deeply.
        node.child = _new_node(args, number, nested=True)
    return node


def _can_hold_heredoc(node: _Node) -> bool:
    target = node.child if node.cmd == "onbuild" and node.child is not None else node
    return target.cmd in _HEREDOC_INSTRUCTIONS and not target.json


def _is_json_form(rest: str) -> bool:
    """parseMaybeJSON: a JSON array of strings is exec form (and never holds a heredoc)."""
    text = _go_lstrip(rest)
    if not text.startswith("["):
        return False
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False
    if not isinstance(value, list):
        return False
    if not all(isinstance(item, str) for item in value):
        raise _FragmentError(
            "when using JSON array syntax, arrays must be comprised of strings only"
        )
    return True


def _extract_builder_flags(line: str) -> tuple[str, list[str]]:
    """Leading ``--flag`` words (split_command.go extractBuilderFlags).

    BuildKit walks bytes, not runes, so the scan runs over the UTF-8 bytes seen as
    Latin-1: values and whitespace (U+0085/U+00A0 bytes) come out exactly as Go's do.
    """
    b = line.encode("utf-8").decode("latin-1")
    words: list[str] = []
    word: list[str] = []
    in_spaces, in_word, in_quote = 0, 1, 2
    phase, quote, blank_ok = in_spaces, "", False
    pos, n = 0, len(b)
    while pos <= n:
        ch = b[pos] if pos < n else ""
        if phase == in_spaces:
            if pos == n:
                break
            if _go_isspace(ch):
                pos += 1
                continue
            if ch != "-" or pos + 1 == n or b[pos + 1] != "-":
                return _from_latin1(b[pos:]), words
            phase = in_word
        if pos == n:
            flag = "".join(word)
            if flag != "--" and (blank_ok or flag):
                words.append(flag)
            break
        if phase == in_word:
            if _go_isspace(ch):
                phase = in_spaces
                flag = "".join(word)
                if flag == "--":
                    return _from_latin1(b[pos:]), words
                if blank_ok or flag:
                    words.append(flag)
                word, blank_ok = [], False
                pos += 1
                continue
            if ch in ("'", '"'):
                quote, blank_ok, phase = ch, True, in_quote
                pos += 1
                continue
            if ch == "\\":
                if pos + 1 == n:
                    pos += 1
                    continue
                pos += 1
                ch = b[pos]
            word.append(ch)
            pos += 1
            continue
        if ch == quote:
            phase = in_word
            pos += 1
            continue
        if ch == "\\":
            if pos + 1 == n:
                phase = in_word
                pos += 1
                continue
            pos += 1
            ch = b[pos]
        word.append(ch)
        pos += 1
    return "", words


def _from_latin1(s: str) -> str:
    try:
        return s.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError as e:
        raise _FragmentError(
            "a non-ASCII blank splits a character inside the instruction flags"
        ) from e


def _parse_flags(
    words: list[str], spec: Mapping[str, str], *, lenient: bool = False
) -> dict[str, list[str]]:
    """bflag.go BFlags.Parse; ``lenient`` skips unknown flags (ONBUILD triggers)."""
    out: dict[str, list[str]] = {}
    for word in words:
        if word == "--":
            break
        name, eq, value = word[2:].partition("=")
        kind = spec.get(name)
        if kind is None:
            if lenient:
                continue
            raise _FragmentError(f"unknown flag --{name}")
        if name in out and kind != _STRINGS and not lenient:
            raise _FragmentError(f"duplicate flag --{name}")
        if kind == _BOOL:
            if eq and not value:
                raise _FragmentError(f"missing a value on flag --{name}")
            if value.lower() not in ("", "true", "false"):
                raise _FragmentError(f"expecting a boolean value for flag --{name}, not {value!r}")
        elif not eq:
            raise _FragmentError(f"flag --{name} needs a value: write --{name}=VALUE")
        out.setdefault(name, []).append(value)
    return out


def _parse_words(rest: str, escape: str) -> list[str]:
    """Quote-aware split that keeps quotes and escapes (line_parsers.go parseWords)."""
    words: list[str] = []
    buf: list[str] = []
    in_spaces, in_word, in_quote = 0, 1, 2
    phase, quote, blank_ok = in_spaces, "", False
    i, n = 0, len(rest)
    while i <= n:
        ch = rest[i] if i < n else ""
        if phase == in_spaces:
            if i == n:
                break
            if _go_isspace(ch):
                i += 1
                continue
            phase = in_word
        if i == n:
            if blank_ok or buf:
                words.append("".join(buf))
            break
        if phase == in_word:
            if _go_isspace(ch):
                phase = in_spaces
                if blank_ok or buf:
                    words.append("".join(buf))
                buf, blank_ok = [], False
                i += 1
                continue
            if ch in ("'", '"'):
                quote, blank_ok, phase = ch, True, in_quote
            if ch == escape:
                if i + 1 == n:
                    i += 1
                    continue
                buf.append(ch)
                i += 1
                ch = rest[i]
            buf.append(ch)
            i += 1
            continue
        if ch == quote:
            phase = in_word
        if ch == escape and quote != "'":
            if i + 1 == n:
                phase = in_word
                i += 1
                continue
            buf.append(ch)
            i += 1
            ch = rest[i]
        buf.append(ch)
        i += 1
    return words


def _heredocs_from_line(line: str) -> list[tuple[str, bool]]:
    """Heredoc names on an instruction line (parser.go heredocsFromLine)."""
    lexer = _Lexer("\\", None, raw_quotes=True, raw_escapes=True, skip_unset=True)
    try:
        words = lexer.process_words(line)
    except _FragmentError:
        return []  # BuildKit ignores the error: such a line has no heredoc
    docs: list[tuple[str, bool]] = []
    for word in words:
        doc = _parse_heredoc(word)
        if doc is not None:
            docs.append(doc)
    return docs


def _parse_heredoc(word: str) -> tuple[str, bool] | None:
    m = _HEREDOC.fullmatch(word)
    if m is None or not m.group(3):
        return None
    rest = m.group(3)
    words = _Lexer("\\", None, skip_unset=True).process_words(rest)
    if len(words) != 1:
        return None
    raw = _Lexer("\\", None, raw_quotes=True, skip_unset=True).process_words(rest)
    if len(raw) != len(words):
        raise _FragmentError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    return words[0], m.group(2) == "-"


# --------------------------------------------------------------------------- substitution


@dataclass(frozen=True)
class _Unresolved:
    """A value that depends on a variable this module cannot know (kept lazy)."""

    name: str
    why: Literal["automatic", "unset"]


_Value = str | _Unresolved
_SET, _UNSET, _UNKNOWN = 0, 1, 2


class _WordBuffer:
    """The word buffer shellWord shares across nested calls (lex.go resets it on entry)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def reset(self) -> None:
        self.parts.clear()
        self.size = 0

    def write(self, s: str) -> None:
        self.parts.append(s)
        self.size += len(s)


class _Words:
    def __init__(self, buf: _WordBuffer) -> None:
        self.buf = buf
        self.words: list[str] = []
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if _go_isspace(ch):
            if self.in_word and self.buf.size:
                self.words.append("".join(self.buf.parts))
                self.buf.reset()
                self.in_word = False
        else:
            self.add_raw(ch)

    def add_raw(self, s: str) -> None:
        self.buf.write(s)
        self.in_word = True

    def add_string(self, s: str) -> None:
        for ch in s:
            self.add_char(ch)

    def get(self) -> list[str]:
        if self.buf.size:
            self.words.append("".join(self.buf.parts))
            self.buf.reset()
            self.in_word = False
        return self.words


def _join(parts: list[str], bad: _Unresolved | None) -> _Value:
    return bad if bad is not None else "".join(parts)


class _Lexer:
    """Variable substitution with shell/lex.go semantics.

    ``strict``: an unset variable used without a default yields :class:`_Unresolved`
    instead of "" (Pullgate's rule; BuildKit would substitute an empty string).
    """

    def __init__(
        self,
        escape: str,
        env: Mapping[str, _Value] | None,
        *,
        strict: bool = False,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_unset: bool = False,
    ) -> None:
        self.escape = escape
        self.env: Mapping[str, _Value] = env or {}
        self.strict = strict
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_unset = skip_unset
        self._s = ""
        self._pos = 0
        self._depth = 0
        self._buf = _WordBuffer()

    def process_word(self, word: str) -> _Value:
        self._start(word)
        return self._stop_on("", self.raw_escapes)[0]

    def process_words(self, word: str) -> list[str]:
        self._start(word)
        return self._stop_on("", self.raw_escapes)[1]

    def _start(self, word: str) -> None:
        # Go's text/scanner, which lex.go reads each word with, skips a leading BOM.
        word = word.removeprefix("\ufeff")
        self._s, self._pos, self._depth = word, 0, 0
        self._buf = _WordBuffer()

    def _peek(self) -> str:
        return self._s[self._pos] if self._pos < len(self._s) else ""

    def _next(self) -> str:
        ch = self._peek()
        if ch:
            self._pos += 1
        return ch

    def _stop_on(self, stop: str, raw_escapes: bool) -> tuple[_Value, list[str]]:
        self._depth += 1
        if self._depth > _MAX_NESTING:
            raise _FragmentError("variable substitution is nested too deeply")
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            parts: list[str] = []
            bad: _Unresolved | None = None
            self._buf.reset()
            words = _Words(self._buf)
            while (ch := self._peek()) != "":
                if stop and ch == stop:
                    self._next()
                    return _join(parts, bad), words.get()
                if ch in ("$", "'", '"'):
                    if ch == "$":
                        value = self._dollar()
                    else:
                        value = self._single() if ch == "'" else self._double()
                    if isinstance(value, _Unresolved):
                        bad = bad or value
                    else:
                        parts.append(value)
                        if ch == "$":
                            words.add_string(value)
                        else:
                            words.add_raw(value)
                    continue
                ch = self._next()
                if ch == self.escape:
                    if self.raw_escapes:
                        words.add_raw(ch)
                        parts.append(ch)
                    ch = self._next()
                    if not ch:
                        break
                    words.add_raw(ch)
                else:
                    words.add_char(ch)
                parts.append(ch)
            if stop:
                raise _FragmentError(
                    f"unexpected end of statement while looking for matching {stop}"
                )
            return _join(parts, bad), words.get()
        finally:
            self.raw_escapes = saved
            self._depth -= 1

    def _single(self) -> str:
        self._next()
        out = ["'"] if self.raw_quotes else []
        while True:
            ch = self._next()
            if not ch:
                raise _FragmentError(
                    "unexpected end of statement while looking for matching single-quote"
                )
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def _double(self) -> _Value:
        self._next()
        out = ['"'] if self.raw_quotes else []
        bad: _Unresolved | None = None
        while True:
            ch = self._peek()
            if not ch:
                raise _FragmentError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if ch == '"':
                self._next()
                if self.raw_quotes:
                    out.append(ch)
                return _join(out, bad)
            if ch == "$":
                value = self._dollar()
                if isinstance(value, _Unresolved):
                    bad = bad or value
                else:
                    out.append(value)
                continue
            ch = self._next()
            if ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self._peek()
                if not following:
                    continue
                if following in ('"', "$", self.escape):
                    ch = self._next()
            out.append(ch)

    def _name(self) -> str:
        out: list[str] = []
        while (ch := self._peek()) != "":
            if not out and ch.isdecimal():
                while (ch := self._peek()) != "" and ch.isdecimal():
                    out.append(self._next())
                return "".join(out)
            if not out and ch in "@*#?-$!0":
                return self._next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            out.append(self._next())
        return "".join(out)

    def _get(self, name: str) -> tuple[int, _Value]:
        value = self.env.get(name)
        if value is None:
            return _UNSET, ""
        return (_UNKNOWN if isinstance(value, _Unresolved) else _SET), value

    def _plain(self, name: str, braced: bool) -> _Value:
        state, value = self._get(name)
        if state != _UNSET:
            return value
        if self.skip_unset:
            return "${" + name + "}" if braced else "$" + name
        return _Unresolved(name, "unset") if self.strict else ""

    def _dollar(self) -> _Value:
        self._next()
        if self._peek() != "{":
            name = self._name()
            return self._plain(name, False) if name else "$"
        self._next()
        ch = self._peek()
        if not ch:
            raise _FragmentError("syntax error: missing '}'")
        if ch in ("{", "}", ":"):
            raise _FragmentError("syntax error: bad substitution")
        name = self._name()
        ch = self._next()
        if ch == "}":
            return self._plain(name, True)
        if ch == "/":
            return self._replace(name)
        modifier, null_is_unset = ch, False
        if ch == ":":
            null_is_unset = True
            ch = self._next()
            modifier += ch
        elif ch not in ("+", "-", "?", "#", "%"):
            raise _FragmentError(
                f"unsupported modifier ({modifier or 'end of text'}) in substitution"
            )
        pattern_mode = ch in ("#", "%")
        if null_is_unset and pattern_mode:
            raise _FragmentError(f"unsupported modifier ({modifier}) in substitution")
        word = self._until_brace("}", pattern_mode)
        state, value = self._get(name)
        if self.skip_unset and state == _UNSET:
            return "${" + name + modifier + _text(word) + "}"
        if state == _UNKNOWN and ch in ("+", "-", "?", "#", "%"):
            return value
        empty = state == _UNSET or (null_is_unset and value == "")
        if ch == "-":
            return word if empty else value
        if ch == "+":
            return "" if empty else word
        if ch == "?":
            if empty:
                what = "unset" if state == _UNSET else "empty"
                default = f"is not allowed to be {what}"
                message = word if isinstance(word, str) and word else default
                raise _FragmentError(f"{name}: {message}")
            return value
        if ch in ("#", "%"):
            if state == _UNSET and self.strict:
                return _Unresolved(name, "unset")
            if isinstance(word, _Unresolved):
                return word
            text = _text(value)
            greedy = word[:1] == ch
            if greedy:
                word = word[1:]
            return (
                _trim_suffix(word, text, greedy) if ch == "%" else _trim_prefix(word, text, greedy)
            )
        raise _FragmentError(f"unsupported modifier ({modifier}) in substitution")

    def _until_brace(self, stop: str, raw_escapes: bool) -> _Value:
        try:
            return self._stop_on(stop, raw_escapes)[0]
        except _FragmentError:
            if not self._peek():
                raise _FragmentError(f"syntax error: missing '{stop}'") from None
            raise

    def _replace(self, name: str) -> _Value:
        replace_all = self._peek() == "/"
        if replace_all:
            self._next()
        pattern = self._until_brace("/", True)
        replacement = self._until_brace("}", True)
        state, value = self._get(name)
        if self.skip_unset and state == _UNSET:
            return "${" + name + "/" + _text(pattern) + "/" + _text(replacement) + "}"
        if state == _UNKNOWN:
            return value
        if state == _UNSET and self.strict:
            return _Unresolved(name, "unset")
        if isinstance(pattern, _Unresolved):
            return pattern
        if isinstance(replacement, _Unresolved):
            return replacement
        text = _text(value)
        _check_pattern_value(text)
        tokens = _glob_tokens(pattern)
        if replace_all:
            if "$" in replacement:
                raise _FragmentError("'$' in the replacement of ${VAR//...} is not supported")
            return _replace_all(tokens, text, replacement)
        found = _leftmost(tokens, text, 0)
        if found is None:
            return text
        return text[: found[0]] + replacement + text[found[1] :]


def _text(value: _Value) -> str:
    return value if isinstance(value, str) else ""


# Shell patterns (lex.go convertShellPatternToRegex) matched by a small NFA: same results
# as Go's RE2 for these patterns (leftmost start; greedy = longest, lazy = shortest end),
# in linear time whatever the input.
_LIT, _ANY, _STAR = 0, 1, 2
_Token = tuple[int, str]
_NONE = 1 << 62


def _glob_tokens(pattern: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            tokens.append((_STAR, ""))
        elif c == "?":
            tokens.append((_ANY, ""))
        elif c == "\\":
            following = pattern[i] if i < n else ""
            if following in ("}", "/"):
                continue
            if following not in ("*", "?", "\\"):
                raise _FragmentError(f"invalid pattern ({pattern}) in substitution: bad escape")
            tokens.append((_LIT, following))
            i += 1
        else:
            tokens.append((_LIT, c))
    return tokens


def _check_pattern_value(value: str) -> None:
    if len(value) > _MAX_PATTERN_VALUE:
        raise _FragmentError(
            f"value is too long for a pattern substitution ({len(value)} characters)"
        )


def _close(tokens: list[_Token], states: list[int]) -> None:
    for j, (kind, _) in enumerate(tokens):
        if kind == _STAR and states[j] < states[j + 1]:
            states[j + 1] = states[j]


def _step(tokens: list[_Token], states: list[int], ch: str) -> list[int]:
    out = [_NONE] * len(states)
    for j, (kind, lit) in enumerate(tokens):
        start = states[j]
        if start == _NONE:
            continue
        if kind == _STAR:
            if ch != "\n":
                out[j] = min(out[j], start)
        elif (kind == _ANY and ch != "\n") or (kind == _LIT and ch == lit):
            out[j + 1] = min(out[j + 1], start)
    _close(tokens, out)
    return out


def _match_ends(tokens: list[_Token], value: str, start: int) -> list[int]:
    states = [_NONE] * (len(tokens) + 1)
    states[0] = start
    _close(tokens, states)
    ends = [start] if states[-1] != _NONE else []
    for i in range(start, len(value)):
        states = _step(tokens, states, value[i])
        if states[-1] != _NONE:
            ends.append(i + 1)
        if all(s == _NONE for s in states):
            break
    return ends


def _leftmost(tokens: list[_Token], value: str, pos: int) -> tuple[int, int] | None:
    """Leftmost match at or after ``pos``, greedy (longest) end."""
    states = [_NONE] * (len(tokens) + 1)
    best: int | None = None
    for i in range(pos, len(value) + 1):
        states[0] = min(states[0], i)
        _close(tokens, states)
        if states[-1] != _NONE:
            best = states[-1] if best is None else min(best, states[-1])
        alive = [s for s in states if s != _NONE]
        if best is not None and (not alive or min(alive) >= best):
            break
        if i == len(value):
            break
        states = _step(tokens, states, value[i])
    if best is None:
        return None
    return best, _match_ends(tokens, value, best)[-1]


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    _check_pattern_value(value)
    ends = _match_ends(_glob_tokens(pattern), value, 0)
    if not ends:
        return value
    return value[ends[-1] if greedy else ends[0] :]


def _reverse_pattern(pattern: str) -> str:
    """Reverse, keeping each ``\\x`` escape in front of its character (lex.go)."""
    out = [""] * len(pattern)
    last = len(pattern) - 1
    i = 0
    while i <= last:
        if pattern[i] == "\\" and i != last:
            out[last - i - 1] = "\\"
            out[last - i] = pattern[i + 1]
            i += 2
        else:
            out[last - i] = pattern[i]
            i += 1
    return "".join(out)


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _replace_all(tokens: list[_Token], src: str, replacement: str) -> str:
    """regexp.ReplaceAllString's loop (empty matches next to a match are skipped)."""
    out: list[str] = []
    last_end = search = 0
    while search <= len(src):
        found = _leftmost(tokens, src, search)
        if found is None:
            break
        a0, a1 = found
        out.append(src[last_end:a0])
        if a1 > last_end or a0 == 0:
            out.append(replacement)
        last_end = a1
        search = search + 1 if search + 1 > a1 else a1
    out.append(src[last_end:])
    return "".join(out)


# --------------------------------------------------------------------------- resolution


@dataclass
class _Stage:
    node: _Node
    base: str
    name: str | None
    commands: list[_Node]


def _fail_at(node: _Node, message: str) -> DockerfileError:
    return DockerfileError(f"{node.text()}: {message}", node.line)


def _resolve(
    nodes: list[_Node],
    escape: str,
    build_args: Mapping[str, str],
    uses: list[ImageUse],
    *,
    classic: bool = False,
) -> tuple[str | None, ...]:
    """instructions.Parse + the parts of dockerfile2llb (or of the classic builder's
    dispatchers) that decide what gets pulled."""
    meta: list[_Node] = []
    stages: list[_Stage] = []
    for node in nodes:
        if node.cmd not in _INSTRUCTIONS:
            raise _fail_at(node, f"unknown instruction {node.cmd.upper()}")
        if node.cmd == "from":
            try:
                base, name = _parse_from(node)
            except _FragmentError as e:
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
    for index, stage in enumerate(stages):
        earlier = {s.name for s in stages[:index] if s.name}
        image = _resolve_base(stage, env, declared, escape, earlier, classic=classic)
        if image is not None:
            uses.append(ImageUse(image, stage.node.line, "from", index, _instruction(stage.node)))
        # The classic builder knows only the stages built so far; BuildKit knows them all.
        known = {name: i for name, i in all_names.items() if i < index} if classic else all_names
        for node in stage.commands:
            try:
                uses.extend(
                    _command_uses(node, index, known, index if classic else len(stages), classic)
                )
            except _FragmentError as e:
                raise _fail_at(node, str(e)) from e
    return tuple(stage.name for stage in stages)


def _instruction(node: _Node) -> str:
    return node.text(_INSTRUCTION_TEXT)


def _parse_from(node: _Node) -> tuple[str, str | None]:
    """FROM [--platform=P] IMAGE [AS NAME] (instructions/parse.go parseFrom)."""
    # The platform is not expanded: it picks a variant of the same image, never another
    # image, and $BUILDPLATFORM there is the common case.
    _parse_flags(node.flags, _FROM_FLAGS)
    args = _WS_SPLIT.split(node.args) if node.args else []
    name: str | None = None
    if len(args) == 3 and args[1].casefold() == "as":  # Go strings.EqualFold
        name = _go_lower(args[2])
        if not _STAGE_NAME.fullmatch(name):
            raise _FragmentError(
                f"invalid stage name {args[2]!r}: it must start with a letter and hold only "
                "letters, digits, '-', '_' and '.'"
            )
    elif len(args) != 1:
        raise _FragmentError(
            "FROM takes an image and an optional AS NAME: FROM [--platform=P] IMAGE [AS NAME]"
        )
    return args[0], name


def _global_args(
    meta: list[_Node], escape: str, build_args: Mapping[str, str]
) -> tuple[dict[str, _Value], set[str]]:
    """ARGs before the first FROM, as dockerfile2llb buildMetaArgs applies them."""
    env: dict[str, _Value] = {}
    for key in _AUTOMATIC_ARGS:
        env[key] = build_args[key] if key in build_args else _Unresolved(key, "automatic")
    declared: set[str] = set()
    for node in meta:
        words = _parse_words(node.args, escape)
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
                    env[key] = _Lexer(escape, env, strict=True).process_word(default)
                except _FragmentError as e:
                    raise _fail_at(node, str(e)) from e
    return env, declared


def _classic_global_args(
    meta: list[_Node], escape: str, build_args: Mapping[str, str]
) -> tuple[dict[str, _Value], set[str]]:
    """ARGs before the first FROM, as the classic builder's ``processMetaArg`` applies them.

    The proxy args are visible from the build args without an ``ARG`` line; every value of
    one ``ARG`` line is expanded before any of its names is defined; a name's build arg
    beats its default; ``ARG X`` with neither leaves ``X`` unset, even if set before.
    """
    env: dict[str, _Value] = {k: build_args[k] for k in _CLASSIC_BUILTIN_ARGS if k in build_args}
    declared: set[str] = set()
    for node in meta:
        words = _parse_words(node.args, escape)
        if not words:
            raise _fail_at(node, "ARG requires at least one argument")
        snapshot = dict(env)
        pending: list[tuple[str, _Value | None]] = []
        for word in words:
            key, eq, default = word.partition("=")
            if eq and not key:
                raise _fail_at(node, "ARG names can not be blank")
            # processMetaArg expands the names too (quotes, escapes, variables, a BOM).
            try:
                expanded = _Lexer(escape, snapshot, strict=True).process_word(key)
            except _FragmentError as e:
                raise _fail_at(node, str(e)) from e
            if isinstance(expanded, _Unresolved) or not expanded:
                raise _fail_at(node, f"the ARG name {key!r} cannot be resolved")
            key = expanded
            value: _Value | None = None
            if eq:
                try:
                    value = _Lexer(escape, snapshot, strict=True).process_word(default)
                except _FragmentError as e:
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


def _unresolved_message(missing: _Unresolved, declared: set[str]) -> str:
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
    env: Mapping[str, _Value],
    declared: set[str],
    escape: str,
    earlier: set[str],
    *,
    classic: bool = False,
) -> str | None:
    """The image a FROM pulls, or None for scratch and earlier stages."""
    node = stage.node
    try:
        value = _Lexer(escape, env, strict=True).process_word(stage.base)
    except _FragmentError as e:
        raise _fail_at(node, str(e)) from e
    if isinstance(value, _Unresolved):
        raise _fail_at(node, _unresolved_message(value, declared))
    if not value:
        raise _fail_at(node, "the image name is empty after substituting build args")
    if "$" in value:
        raise _fail_at(node, f"the image name {value!r} still holds a '$'")
    if value in earlier:
        return None
    if classic and value.lower() in earlier:
        return None  # stagesBuildResults.getByName lower-cases the name
    if value.lower() in earlier:
        # dockerfile2llb matches FROM against stage names case-sensitively (names are
        # stored lower-cased), so BuildKit takes this for an image name and rejects it.
        raise _fail_at(
            node,
            f"{value!r} is not a stage name (stage names are lower-case; write "
            f"{value.lower()!r}) and not a valid image name",
        )
    if value == "scratch":
        return None
    return value


def _command_uses(
    node: _Node,
    stage: int,
    all_names: Mapping[str, int],
    stage_count: int,
    classic: bool = False,
) -> list[ImageUse]:
    """Images one instruction of a stage pulls. ``all_names``/``stage_count``: the stages
    it can refer to (for the classic builder, only those built before it)."""
    text = _instruction(node)
    if node.cmd == "copy":
        flags = _parse_flags(node.flags, _COPY_FLAGS)
        image = _copy_from_image(flags.get("from", [""])[0], all_names, stage_count)
        return [ImageUse(image, node.line, "copy-from", stage, text)] if image else []
    if node.cmd == "add":
        _parse_flags(node.flags, _ADD_FLAGS)  # ADD has no --from: an unknown flag fails
        return []
    if node.cmd == "run":
        flags = _parse_flags(node.flags, _RUN_FLAGS)
        if classic and node.flags:
            return []  # the classic builder fails on any RUN flag before it mounts anything
        found: list[ImageUse] = []
        for mount in flags.get("mount", []):
            source = _mount_from(mount)
            if source is not None and _go_lower(source) not in all_names and source != "scratch":
                found.append(ImageUse(source, node.line, "run-mount", stage, text))
        return found
    if node.cmd == "onbuild":
        return _onbuild_uses(node, stage, text)
    return []


def _copy_from_image(value: str, all_names: Mapping[str, int], stage_count: int) -> str | None:
    """dockerfile2llb toCommand: a stage index, a stage name (any case), or an image."""
    if not value:
        return None
    if "$" in value:
        raise _FragmentError(
            f"--from={value}: BuildKit does not expand variables in COPY --from and would "
            "take it literally; use an alias stage (ARG X, FROM ${X} AS src, COPY --from=src)"
        )
    if _is_go_int64(value):
        index = int(value)
        if 0 <= index < stage_count:
            return None
        raise _FragmentError(f"--from={value}: there is no stage with index {index}")
    if _go_lower(value) in all_names or value == "scratch":
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
            raise _FragmentError(f"invalid mount field {field!r}: it must be a key=value pair")
        if key == "from":
            source = value
    if not source:
        return None
    if "$" in source:
        raise _FragmentError(
            f"--mount from={source}: BuildKit does not expand variables in from=; "
            "define an alias stage instead"
        )
    return source


def _parse_csv_record(text: str) -> list[str]:
    """One record as Go's encoding/csv reads it (no lazy quotes, no space trimming)."""
    if not text:
        raise _FragmentError("empty --mount value")
    fields: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            i += 1
            buf: list[str] = []
            while True:
                j = text.find('"', i)
                if j < 0:
                    raise _FragmentError(f"bad --mount value {text!r}: missing closing quote")
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
                    raise _FragmentError(f"bad --mount value {text!r}: text after a closing quote")
                i += 1
                break
        else:
            j = text.find(",", i)
            field = text[i:] if j < 0 else text[i:j]
            if '"' in field:
                raise _FragmentError(f"bad --mount value {text!r}: bare quote in a field")
            fields.append(field)
            if j < 0:
                return fields
            i = j + 1


def _onbuild_uses(node: _Node, stage: int, text: str) -> list[ImageUse]:
    """Images an ONBUILD trigger pulls when a stage or a later build is based on this one.

    A trigger runs where it is used, so names are not matched against this file's stages
    and variables cannot be resolved here (a ``$`` is refused, as BuildKit would).
    """
    if node.flags:
        raise _FragmentError(f"unknown flag {node.flags[0].partition('=')[0]} on ONBUILD")
    child = node.child
    if child is None:
        raise _FragmentError("ONBUILD requires at least one argument")
    if child.cmd in ("onbuild", "from", "maintainer"):
        raise _FragmentError(f"{child.cmd.upper()} isn't allowed as an ONBUILD trigger")
    found: list[str] = []
    if child.cmd == "copy":
        flags = _parse_flags(child.flags, {"from": _STRING}, lenient=True)
        for value in flags.get("from", []):
            if "$" in value:
                raise _FragmentError(
                    f"--from={value}: variables in an ONBUILD trigger cannot be resolved"
                )
            if value and not _is_go_int64(value) and value != "scratch":
                found.append(value)  # an index only if strconv.ParseInt takes it
    elif child.cmd == "run":
        flags = _parse_flags(child.flags, {"mount": _STRINGS}, lenient=True)
        for mount in flags.get("mount", []):
            source = _mount_from(mount)
            if source is not None and source != "scratch":
                found.append(source)
    return [ImageUse(image, node.line, "onbuild", stage, text) for image in found]
