"""Managed configuration: the settings IT delivers through MDM, read-only for the user.

One registry of typed keys (:data:`KEYS`, in the spirit of Santa's ``santaconfig.ts``)
drives everything: parsing and validation of every source, the error messages, the
generated ``docs/config.md`` and the example MDM profiles. Adding a setting means adding a
:class:`ConfigKey` and a :class:`ManagedConfig` field; a test keeps the two in step.

The core (:func:`parse_config`) takes plain values and returns a frozen
:class:`ManagedConfig` or raises :class:`ConfigError`; the readers are thin: a JSON file
(Linux, and ``--config`` anywhere), macOS managed preferences or a ``.mobileconfig`` payload
(plistlib), and the Windows policy key (winreg, behind an injectable reader). Parsing is
strict because a typo in a security setting must stop the agent with a clear message, not
quietly fall back to a default.

``python -m agent.config --markdown`` prints the docs page; ``--mobileconfig`` and ``--reg``
turn a JSON file of settings into a profile IT can upload to its MDM or import with regedit.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import difflib
import json
import ntpath
import plistlib
import re
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import urlsplit
from xml.parsers.expat import ExpatError

from agent.core import strict_json
from agent.core.durations import DURATION_UNITS, format_duration
from agent.core.policy.trust import StaleBehavior, TrustSettings
from agent.platform.files import FileTooLargeError, read_capped

__all__ = [
    "DEFAULT_JSON_PATH",
    "DEFAULT_MACOS_PATH",
    "EXAMPLE_VALUES",
    "KEYS",
    "PREFERENCE_DOMAIN",
    "WINDOWS_POLICY_KEY",
    "AuditFailure",
    "ConfigError",
    "ConfigKey",
    "ManagedConfig",
    "StaleBehavior",
    "check_local_files",
    "encode_reg",
    "format_duration",
    "load_config_file",
    "load_json_file",
    "load_macos_preferences",
    "load_managed_config",
    "load_windows_policy",
    "parse_config",
    "parse_duration",
    "render_example_json",
    "render_markdown",
    "render_mobileconfig",
    "render_windows_reg",
    "trusted_key_bytes",
]

PREFERENCE_DOMAIN = "com.pullgate.agent"
DEFAULT_JSON_PATH = Path("/etc/pullgate/config.json")
DEFAULT_MACOS_PATH = Path("/Library/Managed Preferences") / f"{PREFERENCE_DOMAIN}.plist"
WINDOWS_POLICY_KEY = r"HKLM\SOFTWARE\Policies\Pullgate"
# A config file is a few hundred bytes; the cap keeps a wrong path (a log, a disk image)
# from being read into memory.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_DURATION = timedelta(days=3650)
# agent.core.policy.envelope.MAX_ENVELOPE_BYTES (not imported: it loads cryptography); a test keeps
# the two equal.
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024

# Registry value types (winreg constants, repeated so the adapter is testable anywhere).
REG_SZ = 1
REG_EXPAND_SZ = 2
REG_BINARY = 3
REG_DWORD = 4
REG_MULTI_SZ = 7
REG_QWORD = 11
_REG_NAMES = {
    REG_SZ: "REG_SZ",
    REG_EXPAND_SZ: "REG_EXPAND_SZ",
    REG_BINARY: "REG_BINARY",
    REG_DWORD: "REG_DWORD",
    REG_MULTI_SZ: "REG_MULTI_SZ",
    REG_QWORD: "REG_QWORD",
}

TYPES = (
    "string",
    "url",
    "https-url",
    "path",
    "integer",
    "boolean",
    "duration",
    "string-list",
    "enum",
)


class ConfigError(ValueError):
    """Managed config the agent must not run with; names the source, the key and why."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class AuditFailure(StrEnum):
    """What happens to pulls while the audit log cannot be written."""

    DENY = "deny"
    ALLOW = "allow"


@dataclass(frozen=True)
class ConfigKey:
    """One managed setting: everything the parser, the docs and the profiles need to know.

    ``default`` is written the way an admin would write it (``"1h"``, not a timedelta), so
    the docs show it verbatim and it goes through the same parser as a configured value.
    """

    name: str
    type: str
    default: object
    description: str
    choices: tuple[tuple[str, str], ...] = ()
    example: str | None = None
    minimum: int | None = None
    schemes: tuple[str, ...] = ()  # for ``url``: the allowed schemes

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"{self.name}: unknown config type {self.type!r}")
        if (self.type == "enum") != bool(self.choices):
            raise ValueError(f"{self.name}: choices go with type 'enum' only")
        if (self.type == "url") != bool(self.schemes):
            raise ValueError(f"{self.name}: schemes go with type 'url' only")

    @property
    def summary(self) -> str:
        """The first sentence of the description, for tables and ``--help``."""
        first, _, _ = self.description.partition(". ")
        return first.rstrip(".") + "."


_MIB = 1024 * 1024

KEYS: tuple[ConfigKey, ...] = (
    ConfigKey(
        "org",
        "string",
        None,
        "The organisation's name. A signed policy is accepted only when its `org` field "
        "is exactly this value, so a validly signed policy of another organisation (or a "
        "test org signed with the same key) is refused.",
        example="acme",
    ),
    ConfigKey(
        "policy_url",
        "https-url",
        None,
        "Where the signed policy envelope is published. Any static HTTPS host will do: "
        "the agent trusts the signature, not the server. Requires `org` and "
        "`trusted_keys`. Without it the agent enforces a local `--policy` file or the "
        "built-in default policy.",
        example="https://policy.acme.example/pullgate/policy.dsse.json",
    ),
    ConfigKey(
        "ca_bundle",
        "path",
        None,
        "A PEM file of CA certificates used instead of the system CAs when fetching "
        "`policy_url`. Pin it when the policy host uses a private CA. It must exist when the "
        "agent starts; if it disappears later, each fetch fails and says so in status.",
        example="/etc/pullgate/policy-ca.pem",
    ),
    ConfigKey(
        "trusted_keys",
        "string-list",
        (),
        "Public keys allowed to sign the policy, each `ed25519:` followed by the base64 "
        "of the 32-byte raw public key (the line `pullgate admin keygen` prints). List "
        "the old and the new key while rotating. Only the canonical base64 spelling is "
        "accepted (standard alphabet, padded, unused bits zero); the error shows it.",
        example="ed25519:8/+ZRqn4A4BmO/DwtJ6Asjo9TzvEpzv978dxuzcNKg4=",
    ),
    ConfigKey(
        "key_threshold",
        "integer",
        1,
        "How many different trusted keys must have signed a policy. At most the number "
        "of `trusted_keys`.",
        example="2",
        minimum=1,
    ),
    ConfigKey(
        "refresh_interval",
        "duration",
        "1h",
        "How often the agent fetches `policy_url`. Failed fetches are retried sooner, "
        "with exponential backoff and jitter; `pullgate policy refresh` fetches at once.",
        example="15m",
    ),
    ConfigKey(
        "offline_grace",
        "duration",
        "7d",
        "How long after the policy's `expires_at` the agent keeps enforcing it as usual "
        "(a laptop may be offline for days). After that, `stale_behavior` applies.",
        example="3d",
    ),
    ConfigKey(
        "stale_behavior",
        "enum",
        StaleBehavior.ENFORCE_LAST.value,
        "What the agent does once the policy is older than `expires_at` plus "
        "`offline_grace`. It always says so in `pullgate status`, the tray and the audit "
        "log.",
        choices=(
            (
                StaleBehavior.ENFORCE_LAST.value,
                "keep enforcing the last verified policy (safe and usable offline)",
            ),
            (
                StaleBehavior.MONITOR.value,
                "allow every image and record what the last policy would have denied",
            ),
            (StaleBehavior.DENY_ALL.value, "refuse every pull until a fresh policy arrives"),
        ),
    ),
    ConfigKey(
        "policy_max_bytes",
        "integer",
        _MIB,
        "The largest policy envelope the agent downloads, in bytes (default 1 MiB, at most "
        "4 MiB: the largest envelope the agent verifies). A bigger response is refused and "
        "the current policy stays in force.",
        example="4194304",
        minimum=1024,
    ),
    ConfigKey(
        "fetch_timeout",
        "duration",
        "30s",
        "Connect timeout, and the longest wait for data, when fetching `policy_url`. A "
        "server that stalls longer counts as a failed fetch.",
        example="10s",
    ),
    ConfigKey(
        "listen",
        "path",
        None,
        "The Docker API socket the agent serves. Default: `/run/pullgate/docker.sock` for "
        "the system service, `$XDG_RUNTIME_DIR/pullgate/docker.sock` per user.",
        example="/run/pullgate/docker.sock",
    ),
    ConfigKey(
        "upstream",
        "url",
        None,
        "The real Docker daemon, as a `unix://` URL with an absolute path. Default: "
        "discovered (`DOCKER_HOST`, the docker context, `/var/run/docker.sock`, rootless and "
        "Docker Desktop sockets).",
        example="unix:///var/run/docker.sock",
        schemes=("unix",),
    ),
    ConfigKey(
        "oidc_issuer",
        "https-url",
        None,
        "The organisation's OpenID Connect issuer (Okta, Entra ID, Google, Keycloak, ...), "
        "used for `pullgate login`. Requires `oidc_client_id`.",
        example="https://acme.okta.com/oauth2/default",
    ),
    ConfigKey(
        "oidc_client_id",
        "string",
        None,
        "The public OIDC client registered for Pullgate (device authorization flow). "
        "Requires `oidc_issuer`.",
        example="0oa1pullgate",
    ),
    ConfigKey(
        "allowed_domains",
        "string-list",
        (),
        "Email domains whose users may sign in; empty allows any identity the issuer "
        "vouches for. Requires `oidc_issuer`.",
        example="acme.example",
    ),
    ConfigKey(
        "audit_dir",
        "path",
        None,
        "Directory of the audit log. Default: `/var/log/pullgate` for the system service, "
        "the user's state directory per user.",
        example="/var/log/pullgate",
    ),
    ConfigKey(
        "audit_failure",
        "enum",
        AuditFailure.DENY.value,
        "What happens to pulls while the audit log cannot be written (disk full, "
        "permissions). Either way the agent keeps serving and reports the failure loudly.",
        choices=(
            (AuditFailure.DENY.value, "refuse pulls that cannot be recorded"),
            (AuditFailure.ALLOW.value, "decide pulls as usual without a record"),
        ),
    ),
    ConfigKey(
        "audit_rotate_bytes",
        "integer",
        64 * _MIB,
        "Size in bytes at which the audit log is rotated to a new file (default 64 MiB). "
        "The hash chain continues across files.",
        example="134217728",
        minimum=_MIB,
    ),
    ConfigKey(
        "audit_keep_files",
        "integer",
        10,
        "How many rotated audit files are kept besides the current one.",
        example="30",
        minimum=1,
    ),
    ConfigKey(
        "audit_native_log",
        "boolean",
        True,
        "Also write a one-line summary of each audit record to the system log (journald "
        "or syslog, the macOS unified log, the Windows event log).",
        example="false",
    ),
    ConfigKey(
        "help_url",
        "url",
        None,
        "Where a denial message sends the user when the policy names no help page. May "
        "contain `{image}`, `{category}`, `{rule}`, `{user}` and `{host}`.",
        example="https://it.acme.example/containers?image={image}",
        schemes=("https", "http"),
    ),
)

_KEYS_BY_NAME: dict[str, ConfigKey] = {key.name: key for key in KEYS}


@dataclass(frozen=True)
class ManagedConfig:
    """The effective managed config: one typed field per key, defaults applied."""

    org: str | None = None
    policy_url: str | None = None
    ca_bundle: Path | None = None
    trusted_keys: tuple[str, ...] = ()
    key_threshold: int = 1
    refresh_interval: timedelta = timedelta(hours=1)
    offline_grace: timedelta = timedelta(days=7)
    stale_behavior: StaleBehavior = StaleBehavior.ENFORCE_LAST
    policy_max_bytes: int = _MIB
    fetch_timeout: timedelta = timedelta(seconds=30)
    listen: Path | None = None
    upstream: str | None = None
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    allowed_domains: tuple[str, ...] = ()
    audit_dir: Path | None = None
    audit_failure: AuditFailure = AuditFailure.DENY
    audit_rotate_bytes: int = 64 * _MIB
    audit_keep_files: int = 10
    audit_native_log: bool = True
    help_url: str | None = None
    source: str = "defaults"
    # Which keys the source set explicitly, so status and doctor can tell IT's choices
    # from defaults.
    set_keys: frozenset[str] = field(default=frozenset())

    @property
    def upstream_path(self) -> Path | None:
        """The daemon socket path of ``upstream`` (validated as ``unix:///abs/path``)."""
        return Path(self.upstream[len("unix://") :]) if self.upstream else None


# --------------------------------------------------------------------------- values


def _show(value: object) -> str:
    """A configured value for an error message: repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


_DURATION_RE = re.compile(r"(?:\d+(?:ms|s|m|h|d|w))+")
_DURATION_PART_RE = re.compile(r"(\d+)(ms|s|m|h|d|w)")


def parse_duration(text: str | int) -> timedelta:
    """``"90s"``, ``"15m"``, ``"12h"``, ``"7d"``, ``"2w"``, ``"1h30m"`` or integer seconds.

    A bare number in a string is refused: ``"90"`` could mean seconds or minutes, and a
    wrong guess on ``offline_grace`` is a security setting off by a factor of 60.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration such as '12h', got {_show(text)}")
    if isinstance(text, int):
        value = timedelta(seconds=text) if text <= MAX_DURATION.total_seconds() else None
    elif isinstance(text, str):
        if text.isdigit():
            raise ValueError(
                f"add a unit to {text!r}: '{text}s', '{text}m', '{text}h' or '{text}d'"
            )
        if not _DURATION_RE.fullmatch(text):
            raise ValueError(
                f"expected a duration such as '90s', '15m', '12h', '7d' or '2w', got {text!r}"
            )
        try:
            value = sum(
                (int(n) * DURATION_UNITS[unit] for n, unit in _DURATION_PART_RE.findall(text)),
                timedelta(),
            )
        except OverflowError:
            value = None
    else:
        raise ValueError(f"expected a duration such as '12h', got {_type_name(text)}")
    if value is None or value > MAX_DURATION:
        raise ValueError(f"{_show(text)} is longer than the limit of {MAX_DURATION.days}d")
    if value <= timedelta():
        raise ValueError(f"a duration must be longer than zero, got {_show(text)}")
    return value


def _check_string(key: ConfigKey, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_type_name(value)} {_show(value)}")
    if not value:
        raise ValueError("must not be empty (leave the key out for the default)")
    if value != value.strip():
        # "acme " would fail every org comparison later, far from the cause.
        raise ValueError(f"has leading or trailing whitespace: {_show(value)}")
    return value


def _check_url(key: ConfigKey, value: object) -> str:
    text = _check_string(key, value)
    schemes = ("https",) if key.type == "https-url" else key.schemes
    wanted = " or ".join(f"{s}://" for s in schemes)
    try:
        parts = urlsplit(text)
        _ = parts.port  # a bad port would fail every fetch later, not here
    except ValueError as e:
        raise ValueError(f"expected a {wanted} URL, got {_show(text)}: {e}") from e
    if parts.scheme not in schemes:
        reason = (
            " (the policy and sign-in are fetched over TLS only)"
            if parts.scheme == "http" and schemes == ("https",)
            else ""
        )
        raise ValueError(f"expected a {wanted} URL, got {_show(text)}{reason}")
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"expected unix:///absolute/path, got {_show(text)}")
    elif not parts.hostname:
        raise ValueError(f"expected a {wanted} URL with a host, got {_show(text)}")
    return text


def _check_path(key: ConfigKey, value: object) -> Path:
    text = _check_string(key, value)
    # The agent runs as a service whose working directory nobody chose: refuse relative
    # paths instead of resolving them somewhere surprising. Either OS's absolute form is
    # accepted, so a profile can be checked on another platform.
    if not (PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()):
        raise ValueError(f"expected an absolute path, got {_show(text)}")
    return Path(text)


def _check_integer(key: ConfigKey, value: object) -> int:
    floor = f" >= {key.minimum}" if key.minimum is not None else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer{floor}, got {_show(value)}")
    if key.minimum is not None and value < key.minimum:
        raise ValueError(f"expected an integer{floor}, got {value}")
    return value


def _check_boolean(key: ConfigKey, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_show(value)}")
    return value


def _check_duration(key: ConfigKey, value: object) -> timedelta:
    if not isinstance(value, str | int):
        raise ValueError(f"expected a duration such as '12h', got {_type_name(value)}")
    return parse_duration(value)


def _check_string_list(key: ConfigKey, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of strings, got {_type_name(value)} {_show(value)}")
    items: list[str] = []
    for i, item in enumerate(value):
        try:
            text = _check_string(key, item)
        except ValueError as e:
            raise ValueError(f"item {i}: {e}") from None
        if text in items:
            raise ValueError(f"item {i}: {text!r} is listed twice")
        items.append(text)
    return tuple(items)


def _check_enum(key: ConfigKey, value: object) -> str:
    allowed = [choice for choice, _ in key.choices]
    if value not in allowed:
        raise ValueError(f"expected one of {' | '.join(allowed)}, got {_show(value)}")
    assert isinstance(value, str)
    return value


_CHECKS: dict[str, Callable[[ConfigKey, object], object]] = {
    "string": _check_string,
    "url": _check_url,
    "https-url": _check_url,
    "path": _check_path,
    "integer": _check_integer,
    "boolean": _check_boolean,
    "duration": _check_duration,
    "string-list": _check_string_list,
    "enum": _check_enum,
}


def trusted_key_bytes(text: str) -> bytes:
    """The raw key of a ``trusted_keys`` entry, or ValueError.

    Only the canonical spelling is accepted (standard alphabet, padded, zero spare bits),
    exactly what the agent's verifier accepts: a key that passes here loads there, and one
    key cannot be listed twice in two spellings.
    """
    algorithm, sep, encoded = text.partition(":")
    if not sep or algorithm != "ed25519":
        raise ValueError(f"expected 'ed25519:<base64 public key>', got {_show(text)}")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{_show(text)}: the key is not valid base64") from e
    if len(raw) != 32:
        raise ValueError(f"{_show(text)}: an Ed25519 public key is 32 bytes, this is {len(raw)}")
    canonical = base64.b64encode(raw).decode("ascii")
    if canonical != encoded:
        raise ValueError(
            f"{_show(text)}: not the canonical base64 of the key (its spare bits are not "
            f"zero); write 'ed25519:{canonical}'"
        )
    return raw


def _check_trusted_key(text: str) -> None:
    trusted_key_bytes(text)


_DOMAIN_RE = re.compile(r"(?=.{1,253}\Z)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def _check_domain(text: str) -> None:
    if "@" in text:
        raise ValueError(f"expected a domain such as 'acme.example', not an address: {text!r}")
    if not _DOMAIN_RE.fullmatch(text):
        raise ValueError(f"expected a lower-case domain such as 'acme.example', got {text!r}")


# Checks beyond the type, per list item (the registry keeps types generic).
_ITEM_CHECKS: dict[str, Callable[[str], None]] = {
    "trusted_keys": _check_trusted_key,
    "allowed_domains": _check_domain,
}


def _closest(name: str) -> str | None:
    lowered = {key.name.lower(): key.name for key in KEYS}
    if name.lower() in lowered:
        return lowered[name.lower()]
    matches = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[matches[0]] if matches else None


def _parse_key(key: ConfigKey, value: object) -> object:
    parsed = _CHECKS[key.type](key, value)
    item_check = _ITEM_CHECKS.get(key.name)
    if item_check is not None:
        assert isinstance(parsed, tuple)
        for i, item in enumerate(parsed):
            try:
                item_check(item)
            except ValueError as e:
                raise ValueError(f"item {i}: {e}") from None
    if key.name == "trusted_keys":
        # "No repeats" compares keys, not spellings: one key must not count twice.
        assert isinstance(parsed, tuple)
        seen: dict[bytes, int] = {}
        for i, item in enumerate(parsed):
            first = seen.setdefault(trusted_key_bytes(item), i)
            if first != i:
                raise ValueError(f"item {i}: the same key as item {first}")
    if key.type == "enum":
        return _ENUMS[key.name](str(parsed)) if key.name in _ENUMS else parsed
    return parsed


_ENUMS: dict[str, type[StrEnum]] = {
    "stale_behavior": StaleBehavior,
    "audit_failure": AuditFailure,
}


def parse_config(values: Mapping[str, object], source: str) -> ManagedConfig:
    """Validate ``values`` (plain JSON/plist types) into a :class:`ManagedConfig`.

    ``None`` for a key means "not set" (the default applies), so a reader can pass
    through a cleared value. Each error names ``source`` and the key.
    """
    parsed: dict[str, Any] = {}
    set_keys: set[str] = set()
    for name in sorted(values, key=str):
        if not isinstance(name, str):
            raise ConfigError(source, None, f"setting names must be strings, got {_show(name)}")
        key = _KEYS_BY_NAME.get(name)
        if key is None:
            guess = _closest(name)
            hint = f" (did you mean {guess!r}?)" if guess else ""
            raise ConfigError(source, name, f"unknown key{hint}; see docs/config.md")
        value = values[name]
        if value is None:
            continue
        try:
            parsed[name] = _parse_key(key, value)
        except ValueError as e:
            raise ConfigError(source, name, str(e)) from None
        set_keys.add(name)
    for key in KEYS:
        if key.name not in parsed and key.default is not None:
            parsed[key.name] = _parse_key(key, key.default)
    config = ManagedConfig(**parsed, source=source, set_keys=frozenset(set_keys))
    _check_together(config)
    return config


def _check_together(config: ManagedConfig) -> None:
    """Rules across keys: settings that are each valid but cannot work as a whole."""
    source = config.source
    if config.policy_url is not None:
        if not config.trusted_keys:
            raise ConfigError(
                source,
                "policy_url",
                "needs trusted_keys: a policy that no trusted key signed can never be accepted",
            )
        if config.org is None:
            raise ConfigError(
                source,
                "policy_url",
                "needs org: a signed policy is accepted only for the configured organisation",
            )
    if config.policy_max_bytes > MAX_ENVELOPE_BYTES:
        raise ConfigError(
            source,
            "policy_max_bytes",
            f"is {config.policy_max_bytes} but the agent verifies envelopes of at most "
            f"{MAX_ENVELOPE_BYTES} bytes: a larger download would always be refused",
        )
    if config.trusted_keys and config.key_threshold > len(config.trusted_keys):
        raise ConfigError(
            source,
            "key_threshold",
            f"is {config.key_threshold} but only {len(config.trusted_keys)} trusted key(s) "
            "are listed: no policy could ever be accepted",
        )
    if config.oidc_issuer is not None and config.oidc_client_id is None:
        raise ConfigError(source, "oidc_issuer", "needs oidc_client_id to sign users in")
    if config.oidc_client_id is not None and config.oidc_issuer is None:
        raise ConfigError(source, "oidc_client_id", "needs oidc_issuer to sign users in")
    if config.allowed_domains and config.oidc_issuer is None:
        raise ConfigError(
            source, "allowed_domains", "has no effect without oidc_issuer: nobody can sign in"
        )


# --------------------------------------------------------------------------- readers


def parse_json_config(data: bytes, source: str) -> ManagedConfig:
    """Strict JSON (UTF-8, one object, no duplicate keys, no NaN) into a config."""
    try:
        document = strict_json.loads(data)
    except strict_json.StrictJSONError as e:
        text = str(e)
        raise ConfigError(
            source, None, text if text.startswith("not UTF-8") else f"not valid JSON: {text}"
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(
            source, None, f"expected a JSON object of settings, got {_type_name(document)}"
        )
    return parse_config(document, source)


def _read_capped(path: Path, source: str) -> bytes:
    try:
        return read_capped(path, MAX_CONFIG_BYTES)
    except OSError as e:
        raise ConfigError(source, None, f"cannot read: {e.strerror or e}") from None
    except FileTooLargeError:
        raise ConfigError(
            source, None, f"larger than {MAX_CONFIG_BYTES} bytes; wrong file?"
        ) from None


def load_json_file(path: Path) -> ManagedConfig:
    """The JSON config file (Linux, or ``--config`` anywhere). A missing file is an error."""
    return parse_json_config(_read_capped(path, str(path)), str(path))


def _is_bookkeeping(name: object) -> bool:
    """``PayloadUUID`` and friends describe the profile, they are not settings."""
    return isinstance(name, str) and name.startswith("Payload")


def _mcx_settings(payload: Mapping[str, Any], source: str) -> list[Mapping[str, Any]]:
    """Settings from the older ``com.apple.ManagedClient.preferences`` (MCX) payload form."""
    content = payload.get("PayloadContent")
    if not isinstance(content, dict) or PREFERENCE_DOMAIN not in content:
        return []
    domain = content[PREFERENCE_DOMAIN]
    forced = domain.get("Forced") if isinstance(domain, dict) else None
    if not isinstance(forced, list):
        raise ConfigError(source, None, f"MCX payload for {PREFERENCE_DOMAIN} has no Forced list")
    found: list[Mapping[str, Any]] = []
    for entry in forced:
        settings = entry.get("mcx_preference_settings") if isinstance(entry, dict) else None
        if not isinstance(settings, dict):
            raise ConfigError(source, None, "MCX Forced entry without mcx_preference_settings")
        found.append(settings)
    return found


def parse_plist_config(data: bytes, source: str) -> ManagedConfig:
    """A managed-preferences plist, or a ``.mobileconfig`` holding a Pullgate payload."""
    if data[:1] == b"\x30":
        # DER: a signed profile (CMS). Once installed, macOS writes the plain managed
        # preferences plist, which is what the agent reads.
        raise ConfigError(
            source,
            None,
            "a signed profile cannot be read directly; install it, or check the unsigned "
            "profile before signing",
        )
    try:
        document = plistlib.loads(data)
    except (
        plistlib.InvalidFileException,
        ExpatError,
        ValueError,
        TypeError,
        LookupError,
        RecursionError,  # a binary plist nested past the stack
        OverflowError,
    ) as e:
        raise ConfigError(source, None, f"not a valid property list: {e}") from None
    if not isinstance(document, dict):
        raise ConfigError(source, None, "expected a dictionary of settings")
    content = document.get("PayloadContent")
    if document.get("PayloadType") == "Configuration" or isinstance(content, list):
        if not isinstance(content, list):
            raise ConfigError(source, None, "profile without a PayloadContent list")
        matches: list[Mapping[str, Any]] = []
        for payload in content:
            if not isinstance(payload, dict):
                continue
            if payload.get("PayloadType") == PREFERENCE_DOMAIN:
                matches.append(payload)
            elif payload.get("PayloadType") == "com.apple.ManagedClient.preferences":
                matches.extend(_mcx_settings(payload, source))
        if not matches:
            raise ConfigError(
                source, None, f"the profile has no payload of type {PREFERENCE_DOMAIN!r}"
            )
        if len(matches) > 1:
            # Two payloads could disagree; macOS would merge them unpredictably.
            raise ConfigError(
                source, None, f"the profile has {len(matches)} {PREFERENCE_DOMAIN} payloads"
            )
        document = dict(matches[0])
    settings = {k: v for k, v in document.items() if not _is_bookkeeping(k)}
    return parse_config(settings, source)


def load_macos_preferences(path: Path = DEFAULT_MACOS_PATH) -> ManagedConfig:
    """macOS managed preferences for ``com.pullgate.agent``, or a ``.mobileconfig`` file."""
    return parse_plist_config(_read_capped(path, str(path)), str(path))


RegistryReader = Callable[[], Mapping[str, tuple[object, int]] | None]


if sys.platform == "win32":
    import winreg

    def _winreg_reader() -> Mapping[str, tuple[object, int]] | None:
        """All values under the policy key, or ``None`` when the key does not exist."""
        path = WINDOWS_POLICY_KEY.split("\\", 1)[1]
        try:
            # The 64-bit view: Group Policy writes there whatever Python's bitness.
            handle = winreg.OpenKey(
                winreg.HKEY_LOCAL_MACHINE, path, 0, winreg.KEY_READ | winreg.KEY_WOW64_64KEY
            )
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(WINDOWS_POLICY_KEY, None, f"cannot read: {e}") from None
        values: dict[str, tuple[object, int]] = {}
        with handle:
            index = 0
            while True:
                try:
                    name, value, kind = winreg.EnumValue(handle, index)
                except OSError:  # no more values
                    break
                values[name] = (value, kind)
                index += 1
        return values

else:

    def _winreg_reader() -> Mapping[str, tuple[object, int]] | None:
        """Elsewhere there is no registry to read: pass a reader (tests) or use --config."""
        raise ConfigError(WINDOWS_POLICY_KEY, None, "the Windows registry exists only on Windows")


def _registry_value(key: ConfigKey, value: object, kind: int) -> object:
    """One registry value as the plain value :func:`parse_config` expects."""
    kind_name = _REG_NAMES.get(kind, f"registry type {kind}")
    if key.type == "string-list":
        if kind != REG_MULTI_SZ:
            raise ValueError(f"expected REG_MULTI_SZ, got {kind_name} {_show(value)}")
        return list(value) if isinstance(value, list | tuple) else value
    if key.type == "boolean":
        if kind != REG_DWORD or value not in (0, 1):
            raise ValueError(f"expected REG_DWORD 0 or 1, got {kind_name} {_show(value)}")
        return bool(value)
    if key.type == "integer":
        if kind not in (REG_DWORD, REG_QWORD):
            raise ValueError(f"expected REG_DWORD, got {kind_name} {_show(value)}")
        return value
    if key.type == "duration":
        if kind not in (REG_SZ, REG_DWORD, REG_QWORD):
            raise ValueError(
                f"expected REG_SZ (such as '12h') or REG_DWORD seconds, got {kind_name}"
            )
        return value
    if key.type == "path" and kind == REG_EXPAND_SZ and isinstance(value, str):
        # %ProgramData%\Pullgate: what REG_EXPAND_SZ is for.
        return ntpath.expandvars(value)
    if kind != REG_SZ:
        raise ValueError(f"expected REG_SZ, got {kind_name} {_show(value)}")
    return value


def parse_registry_values(values: Mapping[str, tuple[object, int]], source: str) -> ManagedConfig:
    """Typed registry values into a config; names match case-insensitively, as in Windows."""
    plain: dict[str, object] = {}
    for name, (value, kind) in values.items():
        key = _KEYS_BY_NAME.get(name) or _KEYS_BY_NAME.get(name.lower())
        if key is None:
            plain[name] = value  # parse_config names it, with a did-you-mean
            continue
        if key.name in plain:
            raise ConfigError(source, key.name, f"set twice ({name!r})")
        try:
            plain[key.name] = _registry_value(key, value, kind)
        except ValueError as e:
            raise ConfigError(source, key.name, str(e)) from None
    return parse_config(plain, source)


def load_windows_policy(reader: RegistryReader | None = None) -> ManagedConfig | None:
    """``HKLM\\SOFTWARE\\Policies\\Pullgate`` (Group Policy / Intune), or ``None`` if absent.

    ``reader`` returns ``{value name: (value, registry type)}`` as ``winreg.EnumValue``
    does; tests inject one, the agent on Windows uses the real registry.
    """
    values = (reader or _winreg_reader)()
    if values is None:
        return None
    return parse_registry_values(values, WINDOWS_POLICY_KEY)


def load_managed_config(
    *,
    json_path: Path | None = None,
    platform: str = sys.platform,
    default_json_path: Path = DEFAULT_JSON_PATH,
    macos_path: Path = DEFAULT_MACOS_PATH,
    windows_reader: RegistryReader | None = None,
) -> ManagedConfig | None:
    """The managed config for this platform, or ``None`` when IT configured nothing.

    ``json_path`` (``--config``) overrides the platform source and must exist. A source
    that exists but cannot be read is an error, never "unconfigured": falling back to
    defaults would quietly drop IT's policy.
    """
    if json_path is not None:
        return load_json_file(json_path)
    if platform == "win32":
        return load_windows_policy(windows_reader)
    path = macos_path if platform == "darwin" else default_json_path
    try:
        path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(str(path), None, f"cannot read: {e.strerror or e}") from None
    if platform == "darwin":
        return load_macos_preferences(path)
    return load_json_file(path)


def check_local_files(config: ManagedConfig) -> None:
    """What the agent will read on *this* machine must exist and load, or ConfigError.

    :func:`parse_config` judges values only, so a profile can be checked anywhere; the
    agent (at start) and ``--check`` also call this, so a ``ca_bundle`` that is missing or
    holds no certificate stops them with the key's name instead of failing every fetch.
    """
    source = config.source
    if config.ca_bundle is not None:
        import ssl  # noqa: PLC0415 - only when a CA bundle is configured

        try:
            ssl.create_default_context(cafile=str(config.ca_bundle))
        except OSError as e:  # ssl.SSLError is an OSError too
            why = e.reason if isinstance(e, ssl.SSLError) else (e.strerror or str(e))
            raise ConfigError(
                source,
                "ca_bundle",
                f"cannot load {config.ca_bundle} as PEM CA certificates: {why or e}",
            ) from None
    if config.trusted_keys:
        from agent.core.policy.envelope import EnvelopeError, PublicKey  # noqa: PLC0415 - cryptography

        for i, text in enumerate(config.trusted_keys):
            try:
                PublicKey.from_config(text)
            except EnvelopeError as e:
                raise ConfigError(source, "trusted_keys", f"item {i}: {e}") from None


def load_config_file(path: Path) -> ManagedConfig:
    """Any file IT may hand over: JSON, a managed-preferences plist or a ``.mobileconfig``."""
    data = _read_capped(path, str(path))
    if path.suffix == ".json":
        return parse_json_config(data, str(path))
    return parse_plist_config(data, str(path))


# --------------------------------------------------------------------------- rendering

EXAMPLE_VALUES: dict[str, object] = {
    "org": "acme",
    "policy_url": "https://policy.acme.example/pullgate/policy.dsse.json",
    "trusted_keys": [
        "ed25519:8/+ZRqn4A4BmO/DwtJ6Asjo9TzvEpzv978dxuzcNKg4=",
        "ed25519:2Kxvsh9UiDvPOXc1R+rgw6aUXFMFMm/PaMSSNy3//NU=",
    ],
    "key_threshold": 1,
    "refresh_interval": "15m",
    "offline_grace": "3d",
    "stale_behavior": "enforce-last",
    "oidc_issuer": "https://acme.okta.com/oauth2/default",
    "oidc_client_id": "0oa1pullgate",
    "allowed_domains": ["acme.example"],
    "audit_failure": "deny",
    "help_url": "https://it.acme.example/containers?image={image}",
}
"""The settings behind ``packaging/mdm/`` (the keys are illustrations, not real keys)."""

_TYPE_DOCS: dict[str, tuple[str, str, str, str]] = {
    # type: (meaning, JSON, plist, registry)
    "string": ("text", "string", "`<string>`", "REG_SZ"),
    "url": ("URL", "string", "`<string>`", "REG_SZ"),
    "https-url": ("`https://` URL", "string", "`<string>`", "REG_SZ"),
    "path": ("absolute path", "string", "`<string>`", "REG_SZ or REG_EXPAND_SZ"),
    "integer": ("integer", "number", "`<integer>`", "REG_DWORD (or REG_QWORD)"),
    "boolean": ("boolean", "`true` / `false`", "`<true/>` / `<false/>`", "REG_DWORD 1 / 0"),
    "duration": (
        "duration",
        'string (`"12h"`) or integer seconds',
        "`<string>` or `<integer>` seconds",
        "REG_SZ (`12h`) or REG_DWORD seconds",
    ),
    "string-list": (
        "list of strings",
        "array of strings",
        "`<array>` of `<string>`",
        "REG_MULTI_SZ",
    ),
    "enum": ("one of a fixed set", "string", "`<string>`", "REG_SZ"),
}


def _type_label(key: ConfigKey) -> str:
    if key.type == "url":
        return " or ".join(f"`{s}://`" for s in key.schemes) + " URL"
    if key.type == "integer" and key.minimum is not None:
        return f"integer ≥ {key.minimum}"
    if key.type == "enum":
        return " \\| ".join(f"`{value}`" for value, _ in key.choices)
    return _TYPE_DOCS[key.type][0]


def _default_label(key: ConfigKey) -> str:
    if key.default is None:
        return "not set"
    if key.default == ():
        return "empty"
    if isinstance(key.default, bool):
        return f"`{str(key.default).lower()}`"
    return f"`{key.default}`"


def _example_json(key: ConfigKey) -> str:
    value: object
    if key.example is None:
        value = key.choices[-1][0] if key.choices else key.default
    elif key.type == "integer":
        value = int(key.example)
    elif key.type == "boolean":
        value = key.example == "true"
    elif key.type == "string-list":
        value = [key.example]
    else:
        value = key.example
    return json.dumps({key.name: value})


def render_markdown() -> str:
    """The ``docs/config.md`` page, generated from :data:`KEYS` so it cannot drift."""
    out: list[str] = [
        "# Managed configuration",
        "",
        "<!-- Generated by `python -m agent.config --markdown > docs/config.md` from the key "
        "registry in agent/config/managed.py. Do not edit by hand: tests/test_config.py fails when "
        "this page and the registry differ. -->",
        "",
        "IT sets these keys through its device management; the user cannot change them. "
        "Every key is optional and has a default. The agent checks the whole configuration "
        "when it starts: an unknown key, a value of the wrong type or settings that cannot "
        "work together stop it with one message naming the source, the key and the reason:",
        "",
        "```",
        "pullgate agent: /etc/pullgate/config.json: key_threshold: "
        "expected an integer >= 1, got '2'",
        "```",
        "",
        "`python -m agent.config --check FILE` checks a JSON file, plist or `.mobileconfig` "
        "before it is deployed. It also checks, on the machine where it runs, what the agent "
        "will read there: that `ca_bundle` exists and holds PEM certificates, and that every "
        "`trusted_keys` entry loads as an Ed25519 key. The agent makes the same checks when "
        "it starts and refuses to start, naming the key, when one fails.",
        "",
        "## Keys",
        "",
        "| key | type | default | what it does |",
        "|---|---|---|---|",
    ]
    for key in KEYS:
        out.append(
            f"| [`{key.name}`](#{key.name}) | {_type_label(key)} | {_default_label(key)} "
            f"| {key.summary} |"
        )
    out += ["", "## How each platform delivers it", ""]
    out += [
        f"- **Linux**: a JSON object in `{DEFAULT_JSON_PATH}`, owned by root and not "
        "writable by users (`pullgate agent --config FILE` reads another file). Example: "
        "[`packaging/mdm/config.example.json`](../packaging/mdm/config.example.json).",
        f"- **macOS**: managed preferences for the domain `{PREFERENCE_DOMAIN}`, delivered "
        f"by a configuration profile with a payload of type `{PREFERENCE_DOMAIN}` (or a "
        "Custom Settings / MCX payload for that domain); macOS writes them to "
        f"`{DEFAULT_MACOS_PATH}`. Generate a profile with `python -m agent.config "
        "--mobileconfig settings.json > pullgate.mobileconfig`. Example: "
        "[`packaging/mdm/com.pullgate.agent.example.mobileconfig`]"
        "(../packaging/mdm/com.pullgate.agent.example.mobileconfig).",
        f"- **Windows**: values under `{WINDOWS_POLICY_KEY}`, set by Group Policy or Intune. "
        "Value names are the key names. Generate a `.reg` file with `python -m agent.config "
        "--reg settings.json > pullgate.reg`. Example: "
        "[`packaging/mdm/pullgate-example.reg`](../packaging/mdm/pullgate-example.reg).",
        "",
        "| type | JSON | plist | registry |",
        "|---|---|---|---|",
    ]
    for type_name in TYPES:
        meaning, as_json, as_plist, as_reg = _TYPE_DOCS[type_name]
        out.append(f"| {meaning} | {as_json} | {as_plist} | {as_reg} |")
    out += [
        "",
        "A duration is a number with a unit — `ms`, `s`, `m`, `h`, `d` or `w` — or several "
        "(`1h30m`); a bare number in a string is refused because its unit would be a guess. "
        "Paths must be absolute. Lists must not repeat an item (`trusted_keys` must not "
        "repeat a key, compared as decoded bytes). Strings must not be empty or have "
        "surrounding spaces.",
        "",
        "## Settings that go together",
        "",
        "- `policy_url` needs `org` and at least one of `trusted_keys`.",
        "- `key_threshold` cannot exceed the number of `trusted_keys`.",
        "- `oidc_issuer` and `oidc_client_id` are set together; `allowed_domains` needs them.",
        "",
        "## Key reference",
    ]
    for key in KEYS:
        out += ["", f"### `{key.name}`", "", key.description, ""]
        out.append(f"- Type: {_type_label(key)}")
        out.append(f"- Default: {_default_label(key)}")
        out.append(f"- Example: `{_example_json(key)}`")
        if key.choices:
            out += ["", "| value | meaning |", "|---|---|"]
            out += [f"| `{value}` | {meaning} |" for value, meaning in key.choices]
    return "\n".join(out) + "\n"


def _validated(values: Mapping[str, object], source: str) -> dict[str, object]:
    """Refuse to render a profile the agent would refuse to run with."""
    parse_config(values, source)
    return {name: value for name, value in values.items() if value is not None}


def _profile_uuid(seed: str, part: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pullgate:{seed}:{part}")).upper()


def render_mobileconfig(
    values: Mapping[str, object],
    *,
    identifier: str = PREFERENCE_DOMAIN,
    uuid_seed: str | None = None,
) -> bytes:
    """An unsigned ``.mobileconfig`` for an MDM, with the settings in one payload.

    ``identifier`` names the profile (MDMs replace a profile by identifier); the payload
    type is always ``com.pullgate.agent``, the domain the agent reads. UUIDs derive from
    ``uuid_seed`` (default: identifier and org) so the same input gives the same bytes.
    """
    settings = _validated(values, "mobileconfig settings")
    seed = uuid_seed if uuid_seed is not None else f"{identifier}:{values.get('org') or ''}"
    org = values.get("org")
    payload: dict[str, object] = {
        "PayloadType": PREFERENCE_DOMAIN,
        "PayloadIdentifier": f"{identifier}.settings",
        "PayloadUUID": _profile_uuid(seed, "settings"),
        "PayloadVersion": 1,
        "PayloadDisplayName": "Pullgate agent settings",
        **{name: list(v) if isinstance(v, tuple) else v for name, v in settings.items()},
    }
    profile: dict[str, object] = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": _profile_uuid(seed, "profile"),
        "PayloadDisplayName": "Pullgate",
        "PayloadDescription": "Container image policy settings for the Pullgate agent.",
        "PayloadScope": "System",
        # Read-only for the user is the point of managed config.
        "PayloadRemovalDisallowed": True,
        "PayloadContent": [payload],
    }
    if isinstance(org, str):
        profile["PayloadOrganization"] = org
    return plistlib.dumps(profile, sort_keys=True)


def _reg_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_windows_reg(values: Mapping[str, object]) -> str:
    """A ``.reg`` file setting the policy key; write it with :func:`encode_reg`."""
    settings = _validated(values, "reg settings")
    lines = [
        "Windows Registry Editor Version 5.00",
        "",
        f"[{WINDOWS_POLICY_KEY.replace('HKLM', 'HKEY_LOCAL_MACHINE', 1)}]",
    ]
    for name, value in settings.items():
        if isinstance(value, bool):
            data = f"dword:{int(value):08x}"
        elif isinstance(value, int):
            if not 0 <= value <= 0xFFFFFFFF:
                raise ConfigError("reg settings", name, "does not fit a REG_DWORD")
            data = f"dword:{value:08x}"
        elif isinstance(value, list | tuple):
            raw = "".join(f"{item}\0" for item in value) + "\0"
            data = "hex(7):" + ",".join(f"{b:02x}" for b in raw.encode("utf-16-le"))
        else:
            data = _reg_string(str(value))
        lines.append(f"{_reg_string(name)}={data}")
    return "\r\n".join(lines) + "\r\n"


def encode_reg(text: str) -> bytes:
    """``.reg`` files of version 5.00 are UTF-16LE with a BOM, as regedit writes them."""
    return "\ufeff".encode("utf-16-le") + text.encode("utf-16-le")


def render_example_json(values: Mapping[str, object] = EXAMPLE_VALUES) -> str:
    """The Linux config file for ``values``."""
    _validated(values, "example settings")
    return json.dumps(dict(values), indent=2) + "\n"


# --------------------------------------------------------------------------- CLI


def trust_settings(config: ManagedConfig) -> TrustSettings:
    """The store's trust settings; a key that does not load is a ConfigError, not a crash."""
    from agent.core.policy.envelope import EnvelopeError, PublicKey  # noqa: PLC0415 - cryptography

    keys = []
    for i, text in enumerate(config.trusted_keys):
        try:
            keys.append(PublicKey.from_config(text))
        except EnvelopeError as e:
            raise ConfigError(config.source, "trusted_keys", f"item {i}: {e}") from None
    return TrustSettings(
        org=config.org or "",
        trusted_keys=tuple(keys),
        threshold=config.key_threshold,
        offline_grace=config.offline_grace,
        stale_behavior=config.stale_behavior,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.config``: docs, MDM profiles and a config check for IT."""
    parser = argparse.ArgumentParser(
        prog="python -m agent.config",
        description="Generate the managed-config docs and MDM profiles, or check a config.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print docs/config.md")
    action.add_argument(
        "--mobileconfig", metavar="FILE.json", help="print a .mobileconfig for these settings"
    )
    action.add_argument("--reg", metavar="FILE.json", help="print a .reg file (UTF-16)")
    action.add_argument(
        "--check", metavar="FILE", help="validate a JSON file, plist or .mobileconfig"
    )
    parser.add_argument("--identifier", default=PREFERENCE_DOMAIN, help="profile identifier")
    parser.add_argument("--uuid-seed", help="seed for the profile's UUIDs")
    args = parser.parse_args(argv)
    try:
        if args.markdown:
            sys.stdout.write(render_markdown())
        elif args.check:
            config = load_config_file(Path(args.check))
            check_local_files(config)
            print(f"{args.check}: ok ({len(config.set_keys)} keys set; files checked here)")
        else:
            path = Path(args.mobileconfig or args.reg)
            load_json_file(path)  # the same strict checks the agent applies
            values = json.loads(path.read_bytes())
            if args.mobileconfig:
                out = render_mobileconfig(
                    values, identifier=args.identifier, uuid_seed=args.uuid_seed
                )
            else:
                out = encode_reg(render_windows_reg(values))
            sys.stdout.buffer.write(out)
    except ConfigError as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
