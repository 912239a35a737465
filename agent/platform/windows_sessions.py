"""Who is signed in to this Windows machine: one ``WindowsSession`` per Terminal Services
session, with its user's SID, for ``agent.platform.windows.users_to_serve``.

``WTSQueryUserToken`` needs the TCB privilege, which LocalSystem (the agent's service)
has; a session without a signed-in user answers ERROR_NO_TOKEN and is listed without a
SID. Windows only, never imported elsewhere; type-checked with mypy ``--platform win32``,
never run here.
"""

from __future__ import annotations

import sys

assert sys.platform == "win32"  # mypy reads the rest as Windows-only (ruff: E402 allowed)

import pywintypes
import win32security
import win32ts

from agent.platform.windows import WindowsSession

__all__ = ["signed_in_sessions"]


def signed_in_sessions() -> list[WindowsSession]:
    """Every session of this machine, its state and, where someone is signed in, their
    SID and user name."""
    sessions: list[WindowsSession] = []
    for info in win32ts.WTSEnumerateSessions(win32ts.WTS_CURRENT_SERVER_HANDLE):
        session_id, state = int(info["SessionId"]), int(info["State"])
        sid: str | None = None
        user = ""
        try:
            token = win32ts.WTSQueryUserToken(session_id)
            owner, _attributes = win32security.GetTokenInformation(token, win32security.TokenUser)
            sid = win32security.ConvertSidToStringSid(owner)
            user = win32ts.WTSQuerySessionInformation(
                win32ts.WTS_CURRENT_SERVER_HANDLE, session_id, win32ts.WTSUserName
            )
        except pywintypes.error:
            pass  # no one signed in (ERROR_NO_TOKEN), or the session just ended
        sessions.append(WindowsSession(session_id, state, sid, user))
    return sessions
