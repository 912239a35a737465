"""Variable substitution in Dockerfile words, as BuildKit's shell lexer does it
(``frontend/dockerfile/shell/lex.go``), and the shell patterns of ``${VAR#...}``,
``${VAR%...}`` and ``${VAR/.../...}`` it uses.

Pure core, like the rest of the package; see :mod:`.resolve` for the rules it keeps (an
unset variable is :class:`Unresolved` in strict mode rather than an empty string).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from agent.core.inspection.dockerfile.text import FragmentError, go_isspace

__all__ = ["Lexer", "Unresolved", "Value"]

#: Bounds that keep hostile input cheap; no real Dockerfile comes near them.
_MAX_NESTING = 64
_MAX_PATTERN_VALUE = 4096


@dataclass(frozen=True)
class Unresolved:
    """A value that depends on a variable this module cannot know (kept lazy)."""

    name: str
    why: Literal["automatic", "unset"]


Value = str | Unresolved
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
        if go_isspace(ch):
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


def _join(parts: list[str], bad: Unresolved | None) -> Value:
    return bad if bad is not None else "".join(parts)


class Lexer:
    """Variable substitution with shell/lex.go semantics.

    ``strict``: an unset variable used without a default yields :class:`Unresolved`
    instead of "" (Pullgate's rule; BuildKit would substitute an empty string).
    """

    def __init__(
        self,
        escape: str,
        env: Mapping[str, Value] | None,
        *,
        strict: bool = False,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_unset: bool = False,
    ) -> None:
        self.escape = escape
        self.env: Mapping[str, Value] = env or {}
        self.strict = strict
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_unset = skip_unset
        self._s = ""
        self._pos = 0
        self._depth = 0
        self._buf = _WordBuffer()

    def process_word(self, word: str) -> Value:
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

    def _stop_on(self, stop: str, raw_escapes: bool) -> tuple[Value, list[str]]:
        self._depth += 1
        if self._depth > _MAX_NESTING:
            raise FragmentError("variable substitution is nested too deeply")
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            parts: list[str] = []
            bad: Unresolved | None = None
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
                    if isinstance(value, Unresolved):
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
                raise FragmentError(
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
                raise FragmentError(
                    "unexpected end of statement while looking for matching single-quote"
                )
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def _double(self) -> Value:
        self._next()
        out = ['"'] if self.raw_quotes else []
        bad: Unresolved | None = None
        while True:
            ch = self._peek()
            if not ch:
                raise FragmentError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if ch == '"':
                self._next()
                if self.raw_quotes:
                    out.append(ch)
                return _join(out, bad)
            if ch == "$":
                value = self._dollar()
                if isinstance(value, Unresolved):
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

    def _get(self, name: str) -> tuple[int, Value]:
        value = self.env.get(name)
        if value is None:
            return _UNSET, ""
        return (_UNKNOWN if isinstance(value, Unresolved) else _SET), value

    def _plain(self, name: str, braced: bool) -> Value:
        state, value = self._get(name)
        if state != _UNSET:
            return value
        if self.skip_unset:
            return "${" + name + "}" if braced else "$" + name
        return Unresolved(name, "unset") if self.strict else ""

    def _dollar(self) -> Value:
        self._next()
        if self._peek() != "{":
            name = self._name()
            return self._plain(name, False) if name else "$"
        self._next()
        ch = self._peek()
        if not ch:
            raise FragmentError("syntax error: missing '}'")
        if ch in ("{", "}", ":"):
            raise FragmentError("syntax error: bad substitution")
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
            raise FragmentError(
                f"unsupported modifier ({modifier or 'end of text'}) in substitution"
            )
        pattern_mode = ch in ("#", "%")
        if null_is_unset and pattern_mode:
            raise FragmentError(f"unsupported modifier ({modifier}) in substitution")
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
                raise FragmentError(f"{name}: {message}")
            return value
        if ch in ("#", "%"):
            if state == _UNSET and self.strict:
                return Unresolved(name, "unset")
            if isinstance(word, Unresolved):
                return word
            text = _text(value)
            greedy = word[:1] == ch
            if greedy:
                word = word[1:]
            return (
                _trim_suffix(word, text, greedy) if ch == "%" else _trim_prefix(word, text, greedy)
            )
        raise FragmentError(f"unsupported modifier ({modifier}) in substitution")

    def _until_brace(self, stop: str, raw_escapes: bool) -> Value:
        try:
            return self._stop_on(stop, raw_escapes)[0]
        except FragmentError:
            if not self._peek():
                raise FragmentError(f"syntax error: missing '{stop}'") from None
            raise

    def _replace(self, name: str) -> Value:
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
            return Unresolved(name, "unset")
        if isinstance(pattern, Unresolved):
            return pattern
        if isinstance(replacement, Unresolved):
            return replacement
        text = _text(value)
        _check_pattern_value(text)
        tokens = _glob_tokens(pattern)
        if replace_all:
            if "$" in replacement:
                raise FragmentError("'$' in the replacement of ${VAR//...} is not supported")
            return _replace_all(tokens, text, replacement)
        found = _leftmost(tokens, text, 0)
        if found is None:
            return text
        return text[: found[0]] + replacement + text[found[1] :]


def _text(value: Value) -> str:
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
                raise FragmentError(f"invalid pattern ({pattern}) in substitution: bad escape")
            tokens.append((_LIT, following))
            i += 1
        else:
            tokens.append((_LIT, c))
    return tokens


def _check_pattern_value(value: str) -> None:
    if len(value) > _MAX_PATTERN_VALUE:
        raise FragmentError(
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
