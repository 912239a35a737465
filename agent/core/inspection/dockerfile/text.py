"""What the parser, the shell lexer and the resolver share: the two errors, and Go's
idea of blanks and letter case (BuildKit is Go; Python's ``str`` methods differ at the edges).

Pure core, like the rest of the package; see :mod:`.resolve` for the rules it keeps.
"""

from __future__ import annotations

__all__ = [
    "DockerfileError",
    "FragmentError",
    "go_isspace",
    "go_lower",
    "go_lstrip",
    "go_strip",
    "short",
]

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


class FragmentError(Exception):
    """A problem found below instruction level; the caller adds line and instruction."""


def go_isspace(ch: str) -> bool:
    """Go's ``unicode.IsSpace``."""
    return ch in _GO_SPACE


def go_lstrip(s: str) -> str:
    """``strings.TrimLeftFunc(s, unicode.IsSpace)``."""
    i = 0
    while i < len(s) and s[i] in _GO_SPACE:
        i += 1
    return s[i:]


def go_strip(s: str) -> str:
    """``strings.TrimSpace``."""
    s = go_lstrip(s)
    j = len(s)
    while j > 0 and s[j - 1] in _GO_SPACE:
        j -= 1
    return s[:j]


def go_lower(s: str) -> str:
    """``strings.ToLower``."""
    # strings.ToLower maps rune by rune; Python's lower() turns U+0130 into two runes.
    return "".join("i" if c == "\u0130" else c.lower() for c in s)


def short(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters (for messages)."""
    text = " ".join(text.split("\n"))
    return text if len(text) <= limit else text[: limit - 3] + "..."
