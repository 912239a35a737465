"""Parsing managed config: plain values (from any source) into a :class:`ManagedConfig`.

:func:`parse_config` takes plain JSON/plist types and returns a frozen
:class:`~agent.config.keys.ManagedConfig` or raises :class:`ConfigError`. Parsing is strict
because a typo in a security setting must stop the agent with a clear message, not quietly
fall back to a default. Pure: no files, no platform APIs.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import posixpath
import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from enum import StrEnum
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import urlsplit

from agent.config.keys import (
    KEYS,
    KEYS_BY_NAME,
    AuditFailure,
    ConfigKey,
    DesktopContext,
    Enforcement,
    ManagedConfig,
)
from agent.core.durations import DURATION_UNITS
from agent.core.policy.trust import StaleBehavior

__all__ = [
    "MAX_DURATION",
    "MAX_ENVELOPE_BYTES",
    "ConfigError",
    "parse_config",
    "parse_duration",
    "show_value",
    "trusted_key_bytes",
    "type_name",
]

MAX_DURATION = timedelta(days=3650)
# agent.core.policy.envelope.MAX_ENVELOPE_BYTES (not imported: it loads cryptography); a test keeps
# the two equal.
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024


class ConfigError(ValueError):
    """Managed config the agent must not run with; names the source, the key and why."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


def show_value(value: object) -> str:
    """A configured value for an error message: repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def type_name(value: object) -> str:
    """The JSON/plist name of a value's type, for an error message."""
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
        raise ValueError(f"expected a duration such as '12h', got {show_value(text)}")
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
        raise ValueError(f"expected a duration such as '12h', got {type_name(text)}")
    if value is None or value > MAX_DURATION:
        raise ValueError(f"{show_value(text)} is longer than the limit of {MAX_DURATION.days}d")
    if value <= timedelta():
        raise ValueError(f"a duration must be longer than zero, got {show_value(text)}")
    return value


def _check_string(key: ConfigKey, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type_name(value)} {show_value(value)}")
    if not value:
        raise ValueError("must not be empty (leave the key out for the default)")
    if value != value.strip():
        # "acme " would fail every org comparison later, far from the cause.
        raise ValueError(f"has leading or trailing whitespace: {show_value(value)}")
    return value


def _check_url(key: ConfigKey, value: object) -> str:
    text = _check_string(key, value)
    schemes = ("https",) if key.type == "https-url" else key.schemes
    wanted = " or ".join(f"{s}://" for s in schemes)
    try:
        parts = urlsplit(text)
    except ValueError as e:
        raise ValueError(f"expected a {wanted} URL: {e}") from e
    if "@" in parts.netloc:
        # It would be copied into status.json, the audit log and every error message.
        raise ValueError(
            f"must not contain a user name or password (user:password@host): "
            f"{show_value(_without_userinfo(text))}"
        )
    try:
        _ = parts.port  # a bad port would fail every fetch later, not here
    except ValueError as e:
        raise ValueError(f"expected a {wanted} URL, got {show_value(text)}: {e}") from e
    if parts.scheme not in schemes:
        reason = (
            " (the policy and sign-in are fetched over TLS only)"
            if parts.scheme == "http" and schemes == ("https",)
            else ""
        )
        raise ValueError(f"expected a {wanted} URL, got {show_value(text)}{reason}")
    if parts.scheme == "unix":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError(f"expected unix:///absolute/path, got {show_value(text)}")
    elif not parts.hostname:
        raise ValueError(f"expected a {wanted} URL with a host, got {show_value(text)}")
    # urlsplit lower-cases the scheme; so does the value the agent uses ("HTTPS://" works).
    return parts.scheme + text[len(parts.scheme) :]


def _without_userinfo(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if not sep:
        return "<a URL with credentials>"
    authority, slash, path = rest.partition("/")
    return f"{scheme}{sep}***@{authority.rpartition('@')[2]}{slash}{path}"


def _check_path(key: ConfigKey, value: object) -> Path:
    text = _check_string(key, value)
    # The agent runs as a service whose working directory nobody chose: refuse relative
    # paths instead of resolving them somewhere surprising. Either OS's absolute form is
    # accepted, so a profile can be checked on another platform.
    if not (PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute()):
        raise ValueError(f"expected an absolute path, got {show_value(text)}")
    return Path(text)


def _check_integer(key: ConfigKey, value: object) -> int:
    floor = f" >= {key.minimum}" if key.minimum is not None else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer{floor}, got {show_value(value)}")
    if key.minimum is not None and value < key.minimum:
        raise ValueError(f"expected an integer{floor}, got {value}")
    return value


def _check_boolean(key: ConfigKey, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {show_value(value)}")
    return value


def _check_duration(key: ConfigKey, value: object) -> timedelta:
    if not isinstance(value, str | int):
        raise ValueError(f"expected a duration such as '12h', got {type_name(value)}")
    parsed = parse_duration(value)
    if key.shortest is not None and parsed < parse_duration(key.shortest):
        raise ValueError(f"must be at least {key.shortest}, got {show_value(value)}")
    return parsed


def _check_string_list(key: ConfigKey, value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of strings, got {type_name(value)} {show_value(value)}")
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
        raise ValueError(f"expected one of {' | '.join(allowed)}, got {show_value(value)}")
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
        raise ValueError(f"expected 'ed25519:<base64 public key>', got {show_value(text)}")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{show_value(text)}: the key is not valid base64") from e
    if len(raw) != 32:
        raise ValueError(
            f"{show_value(text)}: an Ed25519 public key is 32 bytes, this is {len(raw)}"
        )
    canonical = base64.b64encode(raw).decode("ascii")
    if canonical != encoded:
        raise ValueError(
            f"{show_value(text)}: not the canonical base64 of the key (its spare bits are not "
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


_SCOPE_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 3.3 scope-token


def _check_scope(text: str) -> None:
    if not _SCOPE_RE.fullmatch(text):
        raise ValueError(f"not an OAuth scope (printable ASCII, no spaces or quotes): {text!r}")


SIGN_IN_METHODS = ("device", "browser")


def _check_sign_in_method(text: str) -> None:
    if text not in SIGN_IN_METHODS:
        raise ValueError(f"expected one of {', '.join(SIGN_IN_METHODS)}, got {text!r}")


def _check_executable(text: str) -> None:
    """A program's path as the kernel names it: compared as written, so only one
    spelling can ever match."""
    if not text.startswith("/") or posixpath.normpath(text) != text or text.startswith("//"):
        raise ValueError(
            f"expected an absolute path without '.', '..', '//' or a trailing '/', got {text!r}"
        )


# Checks beyond the type, per list item (the registry keeps types generic).
_ITEM_CHECKS: dict[str, Callable[[str], None]] = {
    "trusted_keys": _check_trusted_key,
    "desktop_executables": _check_executable,
    "allowed_domains": _check_domain,
    "oidc_scopes": _check_scope,
    "sign_in_methods": _check_sign_in_method,
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
    "enforcement": Enforcement,
    "desktop_context": DesktopContext,
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
            raise ConfigError(
                source, None, f"setting names must be strings, got {show_value(name)}"
            )
        key = KEYS_BY_NAME.get(name)
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
    if "openid" not in config.oidc_scopes:
        raise ConfigError(
            source, "oidc_scopes", "must include 'openid': without it there is no ID token"
        )
    if not config.sign_in_methods:
        raise ConfigError(source, "sign_in_methods", "is empty: nobody could sign in")
    if not config.oidc_groups_claim.strip():
        raise ConfigError(source, "oidc_groups_claim", "is empty: name the groups claim")
    if (
        config.listen is not None
        and config.upstream_path is not None
        and config.listen == config.upstream_path
    ):
        raise ConfigError(
            source, "upstream", "is the socket in `listen`: the agent would forward to itself"
        )
    if config.desktop_executables == ():
        raise ConfigError(
            source,
            "desktop_executables",
            "is empty: no Docker Desktop could ever be served (leave it unset for the "
            "platform's default)",
        )
    if config.allowed_domains and config.oidc_issuer is None:
        raise ConfigError(
            source, "allowed_domains", "has no effect without oidc_issuer: nobody can sign in"
        )
