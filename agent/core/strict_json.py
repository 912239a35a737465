"""Strict JSON for bytes the agent did not write itself: one decoder, one error type.

Policy envelopes come from a web server, the cache and state files from a directory
another process could edit, the managed config from IT. Whatever those bytes are, parsing
them must end in :class:`StrictJSONError` (a ``ValueError``), never in a ``RecursionError``
from 40 KB of ``[`` or a ``UnicodeDecodeError``: an uncaught exception there stops the
refresh loop or the agent's start. Nesting is bounded well below the interpreter's
recursion limit, so code that walks or prints a decoded value cannot overflow either.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

__all__ = ["MAX_DEPTH", "StrictJSONError", "loads"]

MAX_DEPTH = 32
"""Deeper than any document Pullgate reads (a policy is 4 levels), far below Python's
recursion limit."""


class StrictJSONError(ValueError):
    """Bytes that are not acceptable JSON; the message says why, without a traceback."""


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse duplicate keys: which of two ``"action"`` values wins is ambiguous."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            shown = key if len(key) <= 80 else key[:77] + "..."
            raise ValueError(f"duplicate key {shown!r}")
        out[key] = value
    return out


def _depth(value: object, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` arrays/objects deep (iteratively)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > limit:
            return False
        stack.extend((child, level + 1) for child in children)
    return True


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> object:
    """UTF-8 JSON with no duplicate keys, no NaN/Infinity and bounded nesting."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise StrictJSONError(f"not UTF-8: {e}") from None
    else:
        text = data
    try:
        value = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise StrictJSONError(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise StrictJSONError(f"nested more than {max_depth} levels deep") from None
    except (ValueError, TypeError) as e:  # a hook's refusal, a number too long to convert
        raise StrictJSONError(str(e)) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise StrictJSONError("a number out of range")
    if not _depth(value, max_depth):
        raise StrictJSONError(f"nested more than {max_depth} levels deep")
    return value
