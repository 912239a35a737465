"""The tray's state as plain values: no Qt, no sockets, no clock of its own.

Everything the agent says is untrusted input (a squatter may sit on the control socket):
each reader here takes JSON that may be of any shape and returns a value or ``None``,
never raises, and makes text printable and short before anyone shows it.

- ``tray_state(status, ...)``: ``GET /v1/status`` (plus what the stream and ``doctor``
  said) → the icon state (ok | monitor | attention | down), its reasons in words, the
  menu's status lines.
- ``DecisionView.from_json``: one decision event (or ``/v1/decisions`` entry) → the fields
  the notification and the "Why?" window show.
- ``DenialBatcher``: denials in, notifications out, a burst coalesced into one; the clock
  is injected and the caller schedules a single-shot timer for ``due_in()``.
- ``DecisionLog``: the recent decisions, bounded, with the list's filter.
"""

from __future__ import annotations

import itertools
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from agent.core import strict_json
from agent.core.reference import ReferenceError, parse_normalized_named
from agent.core.text import printable
from ui import texts

__all__ = [
    "MAX_TEXT",
    "BatchTiming",
    "DecisionLog",
    "DecisionView",
    "DenialBatcher",
    "DockerCheck",
    "IconState",
    "Notification",
    "StreamEvent",
    "TrayState",
    "decision_title",
    "decisions_from_json",
    "docker_check_from_doctor",
    "format_age",
    "format_when",
    "notification_for",
    "parse_stream_event",
    "policy_line",
    "remedy_lines",
    "short",
    "soft_wrap",
    "tray_state",
    "why_remedy",
]

MAX_TEXT: Final = 600
"""Characters of agent-provided text shown in one field (a rule message, a reason)."""
MAX_NAME: Final = 200
"""Characters of an image name in a title."""


def short(value: object, limit: int = MAX_TEXT) -> str:
    """Untrusted text, printable (control characters escaped) and at most ``limit`` long."""
    text = printable(str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _text(data: Mapping[str, Any], key: str, limit: int = MAX_TEXT) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, dict | list):
        return None
    text = short(value, limit)
    return text or None


def _number(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------- time in words


def format_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return texts.AGE_SECONDS.format(n=int(seconds))
    if seconds < 7200:
        return texts.AGE_MINUTES.format(n=int(seconds // 60))
    if seconds < 2 * 86400:
        return texts.AGE_HOURS.format(n=int(seconds // 3600))
    return texts.AGE_DAYS.format(n=int(seconds // 86400))


def format_when(epoch: float | None) -> str:
    if epoch is None:
        return texts.UNKNOWN
    try:
        moment = datetime.fromtimestamp(epoch).astimezone()
    except (OverflowError, OSError, ValueError):
        return texts.UNKNOWN
    return f"{moment:%Y-%m-%d %H:%M:%S %Z}"


def _iso_epoch(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


# --------------------------------------------------------------------------- the icon state


class IconState(StrEnum):
    OK = "ok"
    MONITOR = "monitor"
    ATTENTION = "attention"
    DOWN = "down"


@dataclass(frozen=True)
class DockerCheck:
    """Whether ``docker`` is pointed at the shim, from ``pullgate doctor --json``:
    ``ok`` None when doctor has not said (not run, or the check is missing)."""

    ok: bool | None = None
    detail: str = ""


DOCKER_CHECK_NAME: Final = "docker uses the shim"


def docker_check_from_doctor(output: str | bytes) -> DockerCheck:
    """The ``docker uses the shim`` check of ``pullgate doctor --json`` output."""
    try:
        checks = strict_json.loads(output)
    except ValueError:
        return DockerCheck()
    if not isinstance(checks, list):
        return DockerCheck()
    for check in checks:
        if isinstance(check, dict) and check.get("name") == DOCKER_CHECK_NAME:
            result = check.get("result")
            detail = _text(check, "detail") or ""
            if result == "OK":
                return DockerCheck(True, detail)
            if result in {"FAIL", "WARN"}:
                return DockerCheck(False, detail)
    return DockerCheck()


@dataclass(frozen=True)
class TrayState:
    """What the tray shows: the icon, the tooltip, the menu's status lines and the status
    page's rows. ``problems`` are the reasons for ``attention``, in words."""

    icon: IconState
    headline: str
    problems: tuple[str, ...] = ()
    policy_line: str = texts.MENU_POLICY_NONE
    identity_line: str = ""
    mode: str | None = None
    signed_in: str | None = None
    renew_at: float | None = None  # when to renew the sign-in silently (epoch seconds)
    sign_in_configured: bool = False
    sign_in_required: bool = False
    audit_dir: str | None = None
    agent_version: str | None = None
    rows: tuple[tuple[str, str], ...] = ()

    @property
    def tooltip(self) -> str:
        line = self.headline
        if len(self.problems) > 1:
            line = texts.TOOLTIP_MORE.format(line=line, count=len(self.problems) - 1)
        return texts.TOOLTIP.format(line=line)

    @property
    def menu_lines(self) -> tuple[str, ...]:
        lines = [self.headline, self.policy_line]
        if self.identity_line:
            lines.append(self.identity_line)
        return tuple(lines)


def _policy_label(policy: Mapping[str, Any]) -> str:
    org = _text(policy, "org", MAX_NAME)
    serial = policy.get("serial")
    if org and isinstance(serial, int) and not isinstance(serial, bool):
        return texts.POLICY_LABEL.format(org=org, serial=serial)
    return texts.POLICY_LABEL_NO_ORG.format(
        enforcing=_text(policy, "enforcing", MAX_NAME) or texts.UNKNOWN
    )


RENEW_MARGIN = 600.0
"""Renew a sign-in this long before the agent would forget it (less for short max ages)."""


def renewal_time(expires_at: float | None, max_age: float | None) -> float | None:
    """When the tray renews a sign-in silently: ``RENEW_MARGIN`` before it ends, or a
    quarter of ``identity_max_age`` before it when that is shorter (at least a minute)."""
    if expires_at is None:
        return None
    margin = RENEW_MARGIN
    if max_age is not None and max_age > 0:
        margin = max(60.0, min(RENEW_MARGIN, max_age / 4))
    return expires_at - margin


def tray_state(
    status: object,
    *,
    now: float,
    error: str | None = None,
    docker: DockerCheck = DockerCheck(),
) -> TrayState:
    """The tray's state from the agent's ``GET /v1/status`` document (None or anything
    that is not a status document: the agent is down or unreadable, ``error`` says why)."""
    if not isinstance(status, dict) or not isinstance(status.get("policy"), dict):
        if isinstance(status, dict) and error is None:
            error = texts.PROBLEM_UNKNOWN.format(error="no policy in the status")
        reason = short(error, 300) if error else texts.UNKNOWN
        return TrayState(
            IconState.DOWN,
            texts.STATE_DOWN,
            problems=(reason,),
            rows=((texts.STATUS_AGENT, texts.STATUS_AGENT_DOWN.format(error=reason)),),
        )
    policy: Mapping[str, Any] = status["policy"]
    label = _policy_label(policy)
    state = _text(policy, "state", 40) or texts.UNKNOWN
    state_words = texts.POLICY_STATE.get(state, state)
    problems: list[str] = []
    if state == "stale":
        problems.append(texts.PROBLEM_POLICY_STALE)
    elif state == "expired":
        behavior = _text(policy, "stale_behavior", 40) or texts.UNKNOWN
        problems.append(texts.PROBLEM_POLICY_EXPIRED.format(behavior=behavior))
    elif state == "fallback":
        enforcing = _text(policy, "enforcing", MAX_NAME) or texts.UNKNOWN
        problems.append(texts.PROBLEM_POLICY_FALLBACK.format(enforcing=enforcing))
    if policy.get("refresh_loop") == "dead":
        why = _text(policy, "last_refresh_error", 300) or texts.UNKNOWN
        problems.append(texts.PROBLEM_REFRESH_DEAD.format(error=why))
    if status.get("clock_behind") is True or policy.get("clock_behind") is True:
        problems.append(texts.PROBLEM_CLOCK)

    identity = _dict(status, "identity")
    configured = identity.get("configured") is True
    required = policy.get("require_sign_in") is True
    you = _dict(identity, "you")
    who = _text(you, "email", MAX_NAME) or _text(you, "subject", MAX_NAME)
    expires = _number(you, "expires_at")
    expired = expires is not None and expires <= now
    signed_in = who if who and not expired else None
    renew_at = renewal_time(expires, _number(_dict(identity, "sign_in"), "identity_max_age"))
    if required and signed_in is None:
        problems.append(texts.PROBLEM_SIGN_IN_EXPIRED if expired else texts.PROBLEM_SIGNED_OUT)

    audit = _dict(status, "audit")
    audit_dir = _text(audit, "dir", 4096)
    audit_failing = bool(audit) and (
        audit.get("healthy") is False or audit.get("writable") is False
    )
    audit_problem = texts.PROBLEM_AUDIT.format(
        error=_text(audit, "failing", 300) or _text(audit, "state_problem", 300) or texts.UNKNOWN
    )
    if audit_failing:
        problems.append(audit_problem)
    lost = audit.get("lost_records")
    if isinstance(lost, int) and not isinstance(lost, bool) and lost > 0:
        problems.append(texts.PROBLEM_AUDIT_LOST.format(count=lost))

    if docker.ok is False:
        problems.append(texts.PROBLEM_DOCKER_NOT_SHIM.format(detail=short(docker.detail, 300)))

    mode = _text(status, "mode", 20) or _text(policy, "mode", 20)
    if problems:
        icon, headline = IconState.ATTENTION, texts.STATE_ATTENTION.format(problem=problems[0])
    elif mode == "monitor":
        icon, headline = IconState.MONITOR, texts.STATE_MONITOR.format(policy=label)
    else:
        icon, headline = IconState.OK, texts.STATE_OK.format(policy=label)

    if signed_in:
        identity_line = texts.MENU_SIGNED_IN.format(who=signed_in)
    elif configured:
        identity_line = texts.MENU_SIGNED_OUT
    else:
        identity_line = ""

    agent = _dict(status, "agent")
    version = _text(agent, "version", 40)
    rows = _status_rows(
        agent=agent,
        mode=mode,
        label=label,
        state_words=state_words,
        policy=policy,
        now=now,
        signed_in=signed_in,
        expires=expires,
        configured=configured,
        required=required,
    )
    rows.append(
        (
            texts.STATUS_DOCKER,
            texts.STATUS_DOCKER_UNKNOWN
            if docker.ok is None
            else (texts.STATUS_DOCKER_OK if docker.ok else short(docker.detail, 300)),
        )
    )
    if audit:
        rows.append(
            (
                texts.STATUS_AUDIT,
                audit_problem
                if audit_failing
                else texts.STATUS_AUDIT_OK.format(dir=audit_dir or texts.UNKNOWN),
            )
        )
    rows.append((texts.STATUS_PROBLEMS, "\n".join(problems) or texts.STATUS_NONE))
    return TrayState(
        icon,
        headline,
        problems=tuple(problems),
        policy_line=texts.MENU_POLICY.format(
            policy=texts.POLICY_WITH_STATE.format(label=label, state=state_words)
        ),
        identity_line=identity_line,
        mode=mode,
        signed_in=signed_in,
        renew_at=renew_at if configured else None,
        sign_in_configured=configured,
        sign_in_required=required,
        audit_dir=audit_dir,
        agent_version=version,
        rows=tuple(rows),
    )


def _status_rows(
    *,
    agent: Mapping[str, Any],
    mode: str | None,
    label: str,
    state_words: str,
    policy: Mapping[str, Any],
    now: float,
    signed_in: str | None,
    expires: float | None,
    configured: bool,
    required: bool,
) -> list[tuple[str, str]]:
    uptime = _number(agent, "uptime_seconds")
    pid = agent.get("pid")
    rows = [
        (
            texts.STATUS_AGENT,
            texts.STATUS_AGENT_RUNNING.format(
                version=_text(agent, "version", 40) or texts.UNKNOWN,
                pid=pid if isinstance(pid, int) else texts.UNKNOWN,
                uptime=format_age(uptime) if uptime is not None else texts.UNKNOWN,
            ),
        ),
        (texts.STATUS_MODE, texts.STATUS_MODE_VALUE.get(mode or "", mode or texts.UNKNOWN)),
        (texts.STATUS_POLICY, label),
    ]
    issued = _iso_epoch(policy.get("issued_at"))
    until = _iso_epoch(policy.get("expires_at"))
    rows.append(
        (
            texts.STATUS_FRESHNESS,
            texts.STATUS_FRESHNESS_VALUE.format(
                state=state_words,
                age=format_age(now - issued) if issued is not None else texts.UNKNOWN,
                expires=format_when(until),
            ),
        )
    )
    if signed_in:
        who = texts.STATUS_IDENTITY_VALUE.format(who=signed_in, until=format_when(expires))
    elif not configured:
        who = texts.STATUS_IDENTITY_UNCONFIGURED
    else:
        who = texts.STATUS_IDENTITY_REQUIRED if required else texts.STATUS_IDENTITY_NONE
    rows.append((texts.STATUS_IDENTITY, who))
    return rows


# --------------------------------------------------------------------------- decisions

VERDICTS: Final = ("allow", "deny", "would_deny")


@dataclass(frozen=True)
class DecisionView:
    """One decision as the tray shows it; every text field already made printable."""

    verdict: str  # allow | deny | would_deny
    action: str
    image: str | None  # canonical
    input: str | None  # as the client wrote it
    familiar: str | None  # someuser/tool
    category: str | None
    rule: str
    reason: str
    message: str | None
    detail: str | None
    policy: str
    policy_serial: int | None
    alternative: str | None
    hint: str | None
    help_url: str | None
    contact: str | None
    time: float | None
    command_line: str | None
    process: str | None
    identity: str | None

    @property
    def denied(self) -> bool:
        return self.verdict in {"deny", "would_deny"}

    @property
    def quiet(self) -> bool:
        return self.verdict == "would_deny"

    @property
    def shown_name(self) -> str:
        return self.familiar or self.input or self.image or self.action

    @property
    def alternative_command(self) -> str | None:
        if not self.alternative:
            return None
        return texts.WHY_ALTERNATIVE_COMMAND.format(alternative=self.alternative)

    @classmethod
    def from_json(cls, data: object) -> DecisionView | None:
        """A decision event's JSON (``dict``), or None when it is not one."""
        if not isinstance(data, dict):
            return None
        verdict = data.get("decision")
        if verdict not in VERDICTS:
            return None
        image = _text(data, "image", 1000)
        remediation = _dict(data, "remediation")
        peer = _dict(data, "peer")
        command = peer.get("command_line")
        command_line = None
        if isinstance(command, list) and command:
            command_line = short(" ".join(str(part) for part in command[:200]), 1000)
        process = _text(peer, "name", 100)
        pid = peer.get("pid")
        if process and isinstance(pid, int) and not isinstance(pid, bool):
            process = f"{process} (pid {pid})"
        serial = data.get("policy_serial")
        help_url = _text(remediation, "help_url", 2000)
        if help_url and not help_url.lower().startswith(("https://", "http://", "mailto:")):
            help_url = None  # only web pages and mail: never file: or a custom scheme
        return cls(
            verdict=str(verdict),
            action=_text(data, "action", 40) or texts.UNKNOWN,
            image=image,
            input=_text(data, "input", 1000),
            familiar=_familiar(image),
            category=_text(data, "category", 40),
            rule=_text(data, "rule", 200) or texts.UNKNOWN,
            reason=_text(data, "reason") or texts.UNKNOWN,
            message=_text(data, "message"),
            detail=_text(data, "detail"),
            policy=_text(data, "policy", 300) or texts.UNKNOWN,
            policy_serial=_int(serial),
            alternative=_text(remediation, "alternative", MAX_NAME),
            hint=_text(remediation, "hint"),
            help_url=help_url,
            contact=_text(remediation, "contact", 300),
            time=_number(data, "time"),
            command_line=command_line,
            process=process,
            identity=_text(data, "identity", MAX_NAME),
        )


def _familiar(canonical: str | None) -> str | None:
    """``docker.io/someuser/tool:latest`` → ``someuser/tool``; other tags and digests kept."""
    if not canonical:
        return None
    try:
        ref = parse_normalized_named(canonical)
    except (ReferenceError, ValueError):
        return short(canonical, MAX_NAME)
    if ref.digest is None and ref.tag in {None, "latest"}:
        return short(ref.familiar_name(), MAX_NAME)
    return short(ref.familiar_string(), MAX_NAME)


def _sentence(text: str) -> str:
    """A full stop at the end when it has none. The case is never changed: a reason may be
    the admin's own words, and may start with an image name (``someuser/tool is ...``)."""
    text = text.strip()
    if not text:
        return text
    return text if text.endswith((".", "!", "?", "…")) else text + "."


_PLAIN_WORD = re.compile(r"[a-z]+(?=[ ,;:])")


def _hint_sentence(hint: str) -> str:
    """The agent's hint as a sentence: its first letter capitalised, as the CLI prints it,
    only when it starts with a plain lowercase word ("sign in with ..."), never a name."""
    text = hint.strip()
    if _PLAIN_WORD.match(text):
        text = text[0].upper() + text[1:]
    return _sentence(text)


def remedy_lines(d: DecisionView) -> list[str]:
    """What to do instead, most useful first (the notification body's second part)."""
    lines = []
    if d.hint:
        lines.append(_hint_sentence(d.hint))
    if d.alternative:
        lines.append(texts.REMEDY_ALTERNATIVE.format(alternative=d.alternative))
    if not lines:
        lines.append(texts.REMEDY_DEFAULT)
    return lines


def why_remedy(d: DecisionView) -> list[str]:
    """What to do, for the why window: the decision's ``remediation`` (the alternative, the
    hint), else how to get the image allowed or find one that is; nothing for an allow."""
    if not d.denied:
        return []
    lines = []
    if d.alternative:
        lines.append(texts.REMEDY_ALTERNATIVE.format(alternative=d.alternative))
    if d.hint:
        lines.append(_hint_sentence(d.hint))
    if not lines:
        lines.append(texts.WHY_REMEDY_REQUEST if d.help_url else texts.WHY_REMEDY_ASK)
    return lines


def decision_title(d: DecisionView) -> str:
    """``Pull blocked: someuser/tool`` (a notification's title, the why window's heading)."""
    if d.denied:
        verbs = texts.VERB_WOULD_BLOCK if d.quiet else texts.VERB_BLOCKED
        verb = verbs.get(d.action, texts.WOULD_BLOCK_OTHER if d.quiet else texts.BLOCKED_OTHER)
    else:
        verb = texts.VERB_ALLOWED
    name = d.familiar or d.input
    return (
        texts.TITLE_ONE.format(verb=verb, image=name)
        if name
        else texts.TITLE_NO_IMAGE.format(verb=verb)
    )


SOFT_WRAP: Final = 32
_UNBROKEN = re.compile(r"[^\s/?&=\-]{" + str(SOFT_WRAP + 8) + ",}")


def soft_wrap(text: str) -> str:
    """``text`` with a zero-width space every ``SOFT_WRAP`` characters of a run that offers
    no line break (a 200-letter image name): a window wraps it instead of growing. For
    display only: what is copied is the text itself."""
    return _UNBROKEN.sub(
        lambda m: "\u200b".join(m[0][i : i + SOFT_WRAP] for i in range(0, len(m[0]), SOFT_WRAP)),
        text,
    )


def policy_line(d: DecisionView, current: str, enforcing: str | None) -> str:
    """The why window's policy row, one line: the policy now enforced when it is the one
    that decided (``enforcing`` is the status's name for it), else both."""
    if not current:
        return d.policy
    if enforcing is not None and d.policy == enforcing:
        return current
    return texts.WHY_POLICY_CHANGED.format(policy=d.policy, current=current)


# --------------------------------------------------------------------------- notifications


@dataclass(frozen=True)
class Notification:
    """A notification request: ``key`` names the burst (``show_why(key)``); a later
    notification with the same key is an update of the same burst (replace it)."""

    title: str
    body: str
    key: str
    quiet: bool
    decisions: tuple[DecisionView, ...]
    total: int


MAX_LISTED: Final = 6


def notification_for(
    decisions: Sequence[DecisionView], key: str, *, total: int | None = None
) -> Notification:
    """The notification for one denial, or for a burst of them (``total`` counts those
    not kept in ``decisions``)."""
    if not decisions:
        raise ValueError("notification_for needs at least one decision")
    count = total if total is not None else len(decisions)
    quiet = decisions[0].quiet
    if count == 1:
        d = decisions[0]
        title = decision_title(d)
        lines = [_sentence(d.reason), *remedy_lines(d)]
        if quiet:
            lines.append(texts.BODY_MONITOR_NOTE)
        return Notification(title, "\n".join(lines), key, quiet, tuple(decisions), 1)
    title = (texts.TITLE_MANY_WOULD if quiet else texts.TITLE_MANY).format(count=count)
    names = list(dict.fromkeys(d.shown_name for d in decisions))
    lines = [f"• {name}" for name in names[:MAX_LISTED]]
    hidden = count - min(len(names), MAX_LISTED)
    if hidden > 0:
        lines.append(texts.BODY_MANY_MORE.format(count=hidden))
    alternatives = [d.alternative for d in decisions if d.alternative]
    if alternatives:
        lines.append(texts.REMEDY_ALTERNATIVE.format(alternative=alternatives[0]))
    lines.append(texts.BODY_MANY_HINT)
    return Notification(title, "\n".join(lines), key, quiet, tuple(decisions), count)


@dataclass(frozen=True)
class BatchTiming:
    """How denials are coalesced.

    A burst's notification waits until no denial came for ``settle`` seconds, but never
    longer than ``max_hold`` after the first denial it has not shown yet, so the first
    notification comes within a second of the refusal. Denials less than ``burst_gap``
    apart belong to the same burst: their later notifications carry the same key and the
    whole list so far, and replace the earlier one (compose pulling ten images in 1.5 s is
    one notification, updated once or twice, not ten).
    """

    settle: float = 0.25
    max_hold: float = 0.7
    burst_gap: float = 1.5
    keep: int = 50  # decisions remembered per burst (the rest are counted)


@dataclass
class _Burst:
    key: str
    decisions: list[DecisionView]
    total: int
    last_at: float
    pending_since: float | None


class DenialBatcher:
    """Denials in (``add``), notifications out (``flush``); separate bursts for denials
    and monitor mode's would-be denials. Pure: ``clock`` is injected, and the caller runs
    a single-shot timer for ``due_in()`` after each ``add`` and ``flush``."""

    def __init__(
        self,
        clock: Callable[[], float],
        timing: BatchTiming = BatchTiming(),
        *,
        key_prefix: str = "b",
    ) -> None:
        self.clock = clock
        self.timing = timing
        self._bursts: dict[bool, _Burst] = {}
        self._ids = itertools.count(1)
        self._prefix = key_prefix

    def add(self, decision: DecisionView) -> str:
        """Take one denial; returns the key of the burst it joined."""
        now = self.clock()
        kind = decision.quiet
        burst = self._bursts.get(kind)
        if burst is None or now - burst.last_at > self.timing.burst_gap:
            burst = _Burst(f"{self._prefix}{next(self._ids)}", [], 0, now, None)
            self._bursts[kind] = burst
        if len(burst.decisions) < self.timing.keep:
            burst.decisions.append(decision)
        burst.total += 1
        burst.last_at = now
        if burst.pending_since is None:
            burst.pending_since = now
        return burst.key

    def due_in(self) -> float | None:
        """Seconds until the next ``flush`` has something to show; None when nothing waits."""
        deadlines = [self._deadline(b) for b in self._bursts.values() if b.pending_since]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - self.clock())

    def _deadline(self, burst: _Burst) -> float:
        assert burst.pending_since is not None
        return min(burst.pending_since + self.timing.max_hold, burst.last_at + self.timing.settle)

    def flush(self, *, force: bool = False) -> list[Notification]:
        """The notifications due now (all waiting ones with ``force``)."""
        now = self.clock()
        out = []
        for kind, burst in list(self._bursts.items()):
            if burst.pending_since is not None and (force or self._deadline(burst) <= now):
                burst.pending_since = None
                out.append(notification_for(burst.decisions, burst.key, total=burst.total))
            if burst.pending_since is None and now - burst.last_at > self.timing.burst_gap:
                del self._bursts[kind]
        return out


# --------------------------------------------------------------------------- the stream


@dataclass(frozen=True)
class StreamEvent:
    """An SSE event, its JSON parsed: ``data`` None when it was not a JSON object."""

    name: str
    data: Mapping[str, Any] | None
    decision: DecisionView | None = None

    @property
    def malformed(self) -> bool:
        return self.data is None or (self.name == "decision" and self.decision is None)

    @property
    def refetch_status(self) -> bool:
        """Policy and identity events change what the status says: fetch it once."""
        return self.name in {"policy", "identity"} or (
            self.name == "warning"
            and self.data is not None
            and str(self.data.get("action", "")).startswith("audit")
        )


def parse_stream_event(name: str, data: str) -> StreamEvent:
    try:
        value = strict_json.loads(data)
    except (ValueError, RecursionError):
        return StreamEvent(short(name, 40), None)
    if not isinstance(value, dict):
        return StreamEvent(short(name, 40), None)
    decision = DecisionView.from_json(value) if name == "decision" else None
    return StreamEvent(short(name, 40), value, decision)


# --------------------------------------------------------------------------- the list


@dataclass
class DecisionLog:
    """Recent decisions, newest first, at most ``limit``."""

    limit: int = 500
    _items: deque[DecisionView] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._items = deque(maxlen=self.limit)

    def add(self, decision: DecisionView) -> None:
        self._items.appendleft(decision)

    def extend_older(self, decisions: Iterable[DecisionView]) -> None:
        """Decisions from before the stream (``/v1/decisions``, newest first)."""
        for d in decisions:
            if len(self._items) >= self.limit:
                break
            self._items.append(d)

    def __len__(self) -> int:
        return len(self._items)

    def latest_denial(self) -> DecisionView | None:
        return next((d for d in self._items if d.denied), None)

    def filtered(self, verdict: str | None = None, text: str = "") -> list[DecisionView]:
        """Newest first; ``verdict`` one of allow | deny | would_deny (None: all), ``text``
        a case-insensitive substring of the image as typed or canonical."""
        needle = text.strip().lower()
        return [
            d
            for d in self._items
            if (verdict is None or d.verdict == verdict)
            and (
                not needle
                or needle in (d.image or "").lower()
                or needle in (d.input or "").lower()
                or needle in (d.familiar or "").lower()
            )
        ]


def decisions_from_json(body: object) -> list[DecisionView]:
    """``GET /v1/decisions`` (``{"decisions": [...]}`` or a bare list), malformed skipped."""
    items = body.get("decisions") if isinstance(body, dict) else body
    if not isinstance(items, list):
        return []
    return [d for d in (DecisionView.from_json(item) for item in items) if d is not None]
