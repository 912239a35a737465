"""Text from untrusted sources made safe to print on a terminal."""

from __future__ import annotations

import re

__all__ = ["printable"]

# C0 controls, DEL and C1 controls: a terminal acts on these (colours, cursor moves, OSC
# sequences that set the title or write the clipboard), so a server must not send them
# to an admin's screen through a status line.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (ESC shows as ``\\x1b``)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
