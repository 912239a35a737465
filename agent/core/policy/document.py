"""The policy document (``pullgate.policy/v1``): its model and its strict loader.

A policy is parsed once into frozen values and compiled (rule index, host lists), so the
decision engine never re-reads JSON. Loading is strict because a typo in a policy must
not silently weaken it: unknown fields, wrong types and bad values are refused with the
path of the bad field (``rules[3].acton``), and nothing is guessed.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NoReturn, TypeVar

from agent.core import strict_json
from agent.core.inspection.windows_binds import allowed_entry_problem, is_drive_path
from agent.core.policy.rules import RuleIndex, RulePattern, RulePatternError, parse_pattern

__all__ = [
    "SCHEMA",
    "Action",
    "BuildsSetting",
    "ContainerSettings",
    "HostAccessSetting",
    "HostPattern",
    "HubSettings",
    "LoadSetting",
    "Messages",
    "Mode",
    "OnCreateSetting",
    "Policy",
    "PolicyError",
    "RegistrySettings",
    "Rule",
    "load_policy",
    "parse_policy",
    "parse_timestamp",
]

SCHEMA = "pullgate.policy/v1"
MAX_POLICY_BYTES = 16 * 1024 * 1024
MIN_YEAR = 1970
MAX_YEAR = 9000


class PolicyError(ValueError):
    """A policy document that cannot be used; ``path`` names the bad field."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class Mode(StrEnum):
    ENFORCE = "enforce"
    MONITOR = "monitor"


class Action(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class BuildsSetting(StrEnum):
    """Builds whose base images the shim cannot see (BuildKit)."""

    DENY = "deny"
    ALLOW = "allow"


class LoadSetting(StrEnum):
    """``docker load`` / ``docker import``."""

    DENY = "deny"
    CHECK = "check"
    ALLOW = "allow"


class OnCreateSetting(StrEnum):
    """Whether creating a container re-checks its (possibly already present) image."""

    CHECK = "check"
    ALLOW = "allow"


class HostAccessSetting(StrEnum):
    """Container settings that give a container the host (``-v /:/host``, privileged)."""

    DENY = "deny"
    ALLOW = "allow"


@dataclass(frozen=True)
class ContainerSettings:
    """``containers``: what a container may take from the host (docs/policy.md)."""

    host_access: HostAccessSetting = HostAccessSetting.DENY
    #: Host paths (and everything below them) allowed for binds and devices anyway:
    #: POSIX paths, and Windows drive paths (``D:\\data``) for Windows endpoints.
    allowed_host_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    id: str
    pattern: RulePattern
    action: Action
    groups: frozenset[str] | None = None
    expires_at: datetime | None = None
    message: str | None = None
    url: str | None = None
    description: str | None = None
    position: int = 0

    @property
    def match(self) -> str:
        return self.pattern.text


@dataclass(frozen=True)
class HostPattern:
    """A registry host from ``registries.allow``/``deny``: ``host[:port]`` or ``*.suffix``.

    A pattern without a port matches every port of that host: a deny list must not be
    sidestepped by adding ``:443`` or ``:5000``.
    """

    text: str
    host: str
    port: str | None

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*.")

    def matches(self, host: str, port: str | None) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host

    def specificity(self) -> tuple[int, int]:
        return (0 if self.wildcard else 1, len(self.host) + (1 if self.port else 0))


@dataclass(frozen=True)
class HubSettings:
    org_namespaces: frozenset[str] = frozenset()
    official: Action = Action.ALLOW
    verified_publisher: Action = Action.ALLOW
    sponsored_oss: Action = Action.DENY
    community: Action = Action.DENY
    verified_publisher_namespaces: frozenset[str] = frozenset()
    sponsored_oss_namespaces: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RegistrySettings:
    default: Action = Action.ALLOW
    allow: tuple[HostPattern, ...] = ()
    deny: tuple[HostPattern, ...] = ()


@dataclass(frozen=True)
class Messages:
    help_url: str | None = None
    contact: str | None = None


@dataclass(frozen=True)
class Policy:
    """A validated policy. ``source`` says where it came from, for every explanation."""

    org: str
    serial: int
    issued_at: datetime
    expires_at: datetime
    mode: Mode = Mode.ENFORCE
    require_sign_in: bool = False
    hub: HubSettings = HubSettings()
    registries: RegistrySettings = RegistrySettings()
    rules: tuple[Rule, ...] = ()
    builds: BuildsSetting = BuildsSetting.DENY
    load: LoadSetting = LoadSetting.CHECK
    on_create: OnCreateSetting = OnCreateSetting.CHECK
    containers: ContainerSettings = ContainerSettings()
    messages: Messages = Messages()
    description: str | None = None
    source: str = "policy"
    note: str = ""  # e.g. "expired 2.0 days ago; stale_behavior monitor", shown in reasons
    index: RuleIndex = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        # Compile once; a frozen dataclass needs object.__setattr__ for derived fields.
        object.__setattr__(self, "index", RuleIndex(r.pattern for r in self.rules))

    @property
    def label(self) -> str:
        """How messages name this policy: ``org "acme" serial 42`` or the source."""
        label = f'org "{self.org}" policy serial {self.serial}' if self.org else self.source
        return f"{label} ({self.note})" if self.note else label


# --- loading --------------------------------------------------------------------------

_T = TypeVar("_T")


def _fail(path: str, problem: str) -> NoReturn:
    raise PolicyError(path, problem)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _object(
    value: object, path: str, allowed: Sequence[str], required: Sequence[str] = ()
) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        _fail(path or "policy", f"expected an object, got {_type_name(value)}")
    for key in value:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            hint = _closest(key, allowed)
            _fail(where, "unknown field" + (f" (did you mean {hint!r}?)" if hint else ""))
    for key in required:
        if key not in value:
            _fail(f"{path}.{key}" if path else key, "required field is missing")
    return value


def _closest(key: str, allowed: Sequence[str]) -> str | None:
    matches = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _string(value: object, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        _fail(path, f"expected a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        _fail(path, "must not be empty")
    return value


def _enum(value: object, path: str, enum: type[_T]) -> _T:
    text = _string(value, path)
    try:
        return enum(text)  # type: ignore[call-arg]
    except ValueError:
        choices = " | ".join(str(m) for m in enum)  # type: ignore[attr-defined]
        _fail(path, f"expected one of {choices}, got {text!r}")


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        _fail(path, f"expected true or false, got {_type_name(value)}")
    return value


def _string_list(value: object, path: str) -> list[str]:
    if not isinstance(value, list):
        _fail(path, f"expected an array of strings, got {_type_name(value)}")
    return [_string(item, f"{path}[{i}]") for i, item in enumerate(value)]


def parse_timestamp(value: object, path: str) -> datetime:
    """RFC 3339 with an explicit offset; naive times are ambiguous, so refused."""
    text = _string(value, path)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        _fail(path, f"expected an RFC 3339 timestamp like 2026-01-31T12:00:00Z, got {text!r}")
    if parsed.tzinfo is None:
        _fail(path, f"timestamp {text!r} needs a time zone (e.g. a trailing 'Z')")
    # Years near 1 or 9999 overflow in UTC conversion or in "expires_at + grace" later,
    # where an OverflowError would stop the agent instead of refusing the policy.
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        _fail(path, f"timestamp {text!r} is outside the years {MIN_YEAR} to {MAX_YEAR}")
    return parsed.astimezone(UTC)


def _namespaces(value: object, path: str) -> frozenset[str]:
    out = set()
    for i, item in enumerate(_string_list(value, path)):
        try:
            pattern = parse_pattern(item + "/x")
        except RulePatternError:
            pattern = None
        if (
            pattern is None
            or pattern.domain != "docker.io"
            or len(pattern.components) != 2
            or "*" in item
        ):
            _fail(f"{path}[{i}]", f"{item!r} is not a Docker Hub namespace (lowercase, no '/')")
        out.add(item)
    return frozenset(out)


_HOST_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def _host_pattern(value: object, path: str) -> HostPattern:
    text = _string(value, path).lower()
    if "/" in text or "@" in text:
        _fail(path, f"{value!r}: expected host[:port] or *.domain, without a scheme or path")
    host, _, port = text.partition(":")
    if text.startswith("["):
        end = text.find("]")
        host, rest = (text[: end + 1], text[end + 1 :]) if end > 0 else (text, "")
        if end < 0 or not re.fullmatch(r"\[[a-f0-9:]+\]", host) or (rest and rest[0] != ":"):
            _fail(path, f"{value!r}: bad IPv6 host; expected [addr] or [addr]:port")
        port = rest[1:]
    elif "*" in host and (not host.startswith("*.") or "*" in host[2:]):
        _fail(path, f"{value!r}: a wildcard is only allowed as the first label: *.example.com")
    else:
        labels = host[2:].split(".") if host.startswith("*.") else host.split(".")
        bad = next((label for label in labels if not _HOST_LABEL_RE.fullmatch(label)), None)
        if bad is not None:
            _fail(path, f"{value!r}: bad host label {bad!r}; expected host[:port] or *.domain")
    if (port and not port.isdigit()) or text.endswith(":"):
        _fail(path, f"{value!r}: port {port!r} must be digits")
    return HostPattern(text, host, port or None)


def _parse_hub(value: object, path: str) -> HubSettings:
    fields = (
        "org_namespaces",
        "official",
        "verified_publisher",
        "sponsored_oss",
        "community",
        "verified_publisher_namespaces",
        "sponsored_oss_namespaces",
    )
    obj = _object(value, path, fields)
    defaults = HubSettings()
    return HubSettings(
        org_namespaces=_namespaces(obj["org_namespaces"], f"{path}.org_namespaces")
        if "org_namespaces" in obj
        else defaults.org_namespaces,
        official=_enum(obj["official"], f"{path}.official", Action)
        if "official" in obj
        else defaults.official,
        verified_publisher=_enum(obj["verified_publisher"], f"{path}.verified_publisher", Action)
        if "verified_publisher" in obj
        else defaults.verified_publisher,
        sponsored_oss=_enum(obj["sponsored_oss"], f"{path}.sponsored_oss", Action)
        if "sponsored_oss" in obj
        else defaults.sponsored_oss,
        community=_enum(obj["community"], f"{path}.community", Action)
        if "community" in obj
        else defaults.community,
        verified_publisher_namespaces=_namespaces(
            obj["verified_publisher_namespaces"], f"{path}.verified_publisher_namespaces"
        )
        if "verified_publisher_namespaces" in obj
        else defaults.verified_publisher_namespaces,
        sponsored_oss_namespaces=_namespaces(
            obj["sponsored_oss_namespaces"], f"{path}.sponsored_oss_namespaces"
        )
        if "sponsored_oss_namespaces" in obj
        else defaults.sponsored_oss_namespaces,
    )


def _parse_registries(value: object, path: str) -> RegistrySettings:
    obj = _object(value, path, ("default", "allow", "deny"))
    default = _enum(obj.get("default", "allow"), f"{path}.default", Action)
    lists: dict[str, tuple[HostPattern, ...]] = {}
    for key in ("allow", "deny"):
        items = obj.get(key, [])
        if not isinstance(items, list):
            _fail(f"{path}.{key}", f"expected an array of hosts, got {_type_name(items)}")
        lists[key] = tuple(
            _host_pattern(item, f"{path}.{key}[{i}]") for i, item in enumerate(items)
        )
    return RegistrySettings(default, lists["allow"], lists["deny"])


_RULE_FIELDS = ("id", "match", "action", "groups", "expires_at", "message", "url", "description")


def _parse_rules(value: object, path: str) -> tuple[Rule, ...]:
    if not isinstance(value, list):
        _fail(path, f"expected an array of rules, got {_type_name(value)}")
    rules = []
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        obj = _object(item, where, _RULE_FIELDS, required=("id", "match", "action"))
        rule_id = _string(obj["id"], f"{where}.id")
        if rule_id in seen:
            _fail(f"{where}.id", f"duplicate rule id {rule_id!r} (also {path}[{seen[rule_id]}])")
        seen[rule_id] = i
        try:
            pattern = parse_pattern(_string(obj["match"], f"{where}.match"))
        except RulePatternError as e:
            _fail(f"{where}.match", str(e))
        groups = None
        if "groups" in obj:
            group_list = _string_list(obj["groups"], f"{where}.groups")
            if not group_list:
                _fail(f"{where}.groups", "an empty list would match nobody; omit the field")
            groups = frozenset(group_list)
        rules.append(
            Rule(
                id=rule_id,
                pattern=pattern,
                action=_enum(obj["action"], f"{where}.action", Action),
                groups=groups,
                expires_at=parse_timestamp(obj["expires_at"], f"{where}.expires_at")
                if "expires_at" in obj
                else None,
                message=_string(obj["message"], f"{where}.message") if "message" in obj else None,
                url=_string(obj["url"], f"{where}.url") if "url" in obj else None,
                description=_string(obj["description"], f"{where}.description", allow_empty=True)
                if "description" in obj
                else None,
                position=i,
            )
        )
    return tuple(rules)


_TOP_FIELDS = (
    "schema",
    "org",
    "serial",
    "issued_at",
    "expires_at",
    "description",
    "mode",
    "require_sign_in",
    "hub",
    "registries",
    "rules",
    "builds",
    "load",
    "on_create",
    "containers",
    "messages",
)


def _parse_containers(value: object, path: str) -> ContainerSettings:
    obj = _object(value, path, ("host_access", "allowed_host_paths"))
    paths = []
    for i, item in enumerate(
        _string_list(obj.get("allowed_host_paths", []), f"{path}.allowed_host_paths")
    ):
        where = f"{path}.allowed_host_paths[{i}]"
        if is_drive_path(item):  # a Windows endpoint's (agent.core.inspection.windows_binds)
            problem = allowed_entry_problem(item)
            if problem is not None:
                _fail(where, problem)
            paths.append(item)
            continue
        if not item.startswith("/") or posixpath.normpath(item) != item or item.startswith("//"):
            _fail(where, f"{item!r} must be an absolute path without '.', '..' or '//'")
        if item == "/":
            _fail(where, "'/' would allow every host path; use host_access: allow instead")
        paths.append(item)
    return ContainerSettings(
        host_access=_enum(obj.get("host_access", "deny"), f"{path}.host_access", HostAccessSetting),
        allowed_host_paths=tuple(paths),
    )


def parse_policy(document: object, *, source: str = "policy") -> Policy:
    """Validate an already-decoded JSON document and build the :class:`Policy`."""
    obj = _object(
        document, "", _TOP_FIELDS, required=("schema", "org", "serial", "issued_at", "expires_at")
    )
    if obj["schema"] != SCHEMA:
        _fail("schema", f"expected {SCHEMA!r}, got {obj['schema']!r}")
    serial = obj["serial"]
    if isinstance(serial, bool) or not isinstance(serial, int):
        _fail("serial", f"expected an integer, got {_type_name(serial)}")
    if serial < 0:
        _fail("serial", f"must not be negative, got {serial}")
    issued_at = parse_timestamp(obj["issued_at"], "issued_at")
    expires_at = parse_timestamp(obj["expires_at"], "expires_at")
    if expires_at <= issued_at:
        _fail("expires_at", "must be later than issued_at")
    messages = Messages()
    if "messages" in obj:
        m = _object(obj["messages"], "messages", ("help_url", "contact"))
        messages = Messages(
            help_url=_string(m["help_url"], "messages.help_url") if "help_url" in m else None,
            contact=_string(m["contact"], "messages.contact") if "contact" in m else None,
        )
    return Policy(
        org=_string(obj["org"], "org"),
        serial=serial,
        issued_at=issued_at,
        expires_at=expires_at,
        description=_string(obj["description"], "description", allow_empty=True)
        if "description" in obj
        else None,
        mode=_enum(obj.get("mode", "enforce"), "mode", Mode),
        require_sign_in=_bool(obj.get("require_sign_in", False), "require_sign_in"),
        hub=_parse_hub(obj["hub"], "hub") if "hub" in obj else HubSettings(),
        registries=_parse_registries(obj["registries"], "registries")
        if "registries" in obj
        else RegistrySettings(),
        rules=_parse_rules(obj.get("rules", []), "rules"),
        builds=_enum(obj.get("builds", "deny"), "builds", BuildsSetting),
        load=_enum(obj.get("load", "check"), "load", LoadSetting),
        on_create=_enum(obj.get("on_create", "check"), "on_create", OnCreateSetting),
        containers=_parse_containers(obj["containers"], "containers")
        if "containers" in obj
        else ContainerSettings(),
        messages=messages,
        source=source,
    )


def decode_json(data: bytes | str, *, what: str = "policy") -> object:
    """Strict JSON (``agent.core.strict_json``): UTF-8, no duplicate keys, no NaN/Infinity,
    bounded nesting; every problem is a PolicyError, never another exception."""
    if isinstance(data, bytes) and len(data) > MAX_POLICY_BYTES:
        _fail("", f"{what} is {len(data)} bytes; the limit is {MAX_POLICY_BYTES}")
    try:
        return strict_json.loads(data)
    except strict_json.StrictJSONError as e:
        kind = "UTF-8" if str(e).startswith("not UTF-8") else "valid JSON"
        detail = str(e).removeprefix("not UTF-8: ")
        _fail("", f"{what} is not {kind}: {detail}")


def load_policy(data: bytes | str, *, source: str = "policy") -> Policy:
    """Decode and validate policy JSON bytes."""
    return parse_policy(decode_json(data), source=source)
