"""BuildKit's Dockerfile parser (``frontend/dockerfile/parser``): text to instructions.

Decoding, physical and logical lines, parser directives (``# syntax``, ``# escape``,
``# check``), heredocs (skipped, their names found with the shell lexer), and each
instruction's command, ``--flags`` and arguments.  What an instruction means is
:mod:`.resolve`'s business.

Pure core, like the rest of the package; see :mod:`.resolve` for the rules it keeps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from agent.core.inspection.dockerfile.shell import Lexer
from agent.core.inspection.dockerfile.text import (
    DockerfileError,
    FragmentError,
    go_isspace,
    go_lower,
    go_lstrip,
    go_strip,
    short,
)

__all__ = [
    "BOOL",
    "STRING",
    "STRINGS",
    "WS_SPLIT",
    "Node",
    "decode",
    "parse_flags",
    "parse_nodes",
    "parse_words",
    "reject_constant",
    "scan_directives",
    "split_lines",
]

#: BuildKit's longest physical line (bufio.Scanner default buffer, parser.go).
_MAX_LINE_BYTES = 65535
#: Longest instruction text quoted in an error message.
_ERROR_TEXT = 80

_HEREDOC_INSTRUCTIONS = frozenset({"add", "copy", "run"})
_DIRECTIVES = frozenset({"syntax", "escape", "check"})

#: The kinds of flag value in a ``parse_flags`` spec (bflag.go).
STRING, STRINGS, BOOL = "string", "strings", "bool"

#: The blanks between an instruction's words (parser tokenWhitespace / reWhitespace).
WS_SPLIT = re.compile(r"[\t\v\f\r ]+")
_RE_WS = "\t\n\f\r "  # what Go regexp's \s matches
_DIRECTIVE_KEY = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=")
_HEREDOC = re.compile(r"([0-9]*)<<(-?)([^<]*)")


def decode(text: str | bytes, max_size: int) -> str:
    """The file as text: at most ``max_size`` bytes of UTF-8, not empty, BOM removed."""
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


def split_lines(src: str) -> list[str]:
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


def scan_directives(data: str, prefix: str, first_line: int) -> tuple[str, int, str] | None:
    """The ``syntax`` directive among ``prefix`` directives at the top of ``data``
    (DetectSyntax's reading): (value, 1-based line, the line), or None."""
    seen: set[str] = set()
    number = first_line
    for raw in data.split("\n"):
        number += 1
        line = raw.removesuffix("\r")
        if not line.startswith(prefix):
            return None
        found = _match_directive(go_lstrip(line[len(prefix) :]))
        if found is None:
            return None
        key = found[0].lower()
        if key not in _DIRECTIVES or key in seen:
            return None
        seen.add(key)
        if key == "syntax":
            return found[1], number, line
    return None


def reject_constant(name: str) -> object:
    """``parse_constant`` for ``json.loads``: NaN and Infinity are not JSON to Go."""
    raise ValueError(f"not JSON: {name}")


@dataclass
class Node:
    """One instruction as parser.go builds it (command, flags, rest of the line)."""

    cmd: str
    flags: list[str]
    args: str
    original: str
    line: int
    json: bool = False
    child: Node | None = None

    def text(self, limit: int = _ERROR_TEXT) -> str:
        return short(go_strip(self.original), limit)


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
        found = _match_directive(go_lstrip(token[1:]))
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
    return go_lstrip(line).startswith("#")


def _trim_continuation(line: str, escape: str) -> tuple[str, bool]:
    """Strip a trailing escape (line continuation); True when the logical line ends.

    Same as parser.go's regexp: the escape, then only blanks, and not itself escaped.
    """
    body = line.rstrip(" \t")
    if body.endswith(escape) and (len(body) == 1 or body[-2] != escape):
        return body[:-1], False
    return line, True


def parse_nodes(
    lines: list[str], *, heredocs: bool = True, check_directive: bool = True
) -> tuple[list[Node], str]:
    """Logical instructions with heredoc bodies skipped (parser.go Parse)."""
    directives = _Directives(_DIRECTIVES if check_directive else _DIRECTIVES - {"check"})
    nodes: list[Node] = []
    i, n = 0, len(lines)
    while i < n:
        token = go_lstrip(lines[i])
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
            if _is_comment(raw) or not go_lstrip(raw):
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
        except FragmentError as e:
            raise DockerfileError(f"{short(go_strip(line), _ERROR_TEXT)}: {e}", start) from e
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


def _new_node(line: str, number: int, *, nested: bool = False) -> Node:
    """split_command.go plus the per-instruction line parsers that matter here."""
    parts = WS_SPLIT.split(go_strip(line), maxsplit=1)
    cmd = go_lower(parts[0])
    flags: list[str] = []
    rest = ""
    if len(parts) == 2:
        rest, flags = _extract_builder_flags(parts[1])
    args = go_strip(rest)
    node = Node(cmd=cmd, flags=flags, args=args, original=line, line=number)
    if cmd in _HEREDOC_INSTRUCTIONS:
        node.json = _is_json_form(args)
    elif cmd == "onbuild" and args and not nested:
        # One level is all BuildKit looks at (ONBUILD ONBUILD is refused later), and
        # stopping here keeps a line of repeated ONBUILDs from recursing deeply.
        node.child = _new_node(args, number, nested=True)
    return node


def _can_hold_heredoc(node: Node) -> bool:
    target = node.child if node.cmd == "onbuild" and node.child is not None else node
    return target.cmd in _HEREDOC_INSTRUCTIONS and not target.json


def _is_json_form(rest: str) -> bool:
    """parseMaybeJSON: a JSON array of strings is exec form (and never holds a heredoc)."""
    text = go_lstrip(rest)
    if not text.startswith("["):
        return False
    try:
        value = json.loads(text, parse_constant=reject_constant)
    except (ValueError, RecursionError):
        return False
    if not isinstance(value, list):
        return False
    if not all(isinstance(item, str) for item in value):
        raise FragmentError(
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
            if go_isspace(ch):
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
            if go_isspace(ch):
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
        raise FragmentError(
            "a non-ASCII blank splits a character inside the instruction flags"
        ) from e


def parse_flags(
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
            raise FragmentError(f"unknown flag --{name}")
        if name in out and kind != STRINGS and not lenient:
            raise FragmentError(f"duplicate flag --{name}")
        if kind == BOOL:
            if eq and not value:
                raise FragmentError(f"missing a value on flag --{name}")
            if value.lower() not in ("", "true", "false"):
                raise FragmentError(f"expecting a boolean value for flag --{name}, not {value!r}")
        elif not eq:
            raise FragmentError(f"flag --{name} needs a value: write --{name}=VALUE")
        out.setdefault(name, []).append(value)
    return out


def parse_words(rest: str, escape: str) -> list[str]:
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
            if go_isspace(ch):
                i += 1
                continue
            phase = in_word
        if i == n:
            if blank_ok or buf:
                words.append("".join(buf))
            break
        if phase == in_word:
            if go_isspace(ch):
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
    lexer = Lexer("\\", None, raw_quotes=True, raw_escapes=True, skip_unset=True)
    try:
        words = lexer.process_words(line)
    except FragmentError:
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
    words = Lexer("\\", None, skip_unset=True).process_words(rest)
    if len(words) != 1:
        return None
    raw = Lexer("\\", None, raw_quotes=True, skip_unset=True).process_words(rest)
    if len(raw) != len(words):
        raise FragmentError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    return words[0], m.group(2) == "-"
