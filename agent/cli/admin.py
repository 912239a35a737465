"""``pullgate admin``: make and check the org's signed policy (keygen, sign, verify, lint).

These commands run on an admin's machine, never in the agent. They share the agent's
strict loaders (``agent.core.policy.document``, ``agent.core.policy.envelope``), so a
policy that passes here is exactly one an agent will accept. Exit codes: 0 ok; 1 invalid
(a bad signature, an expired policy, lint warnings with ``--strict``); 2 bad input
(unreadable files, a policy that does not load, flags that make no sense).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config.keys import ManagedConfig
from agent.config.parse import ConfigError, parse_duration
from agent.config.policy_file import PolicySourceError, is_envelope, read_public_key
from agent.config.sources import load_config_file
from agent.core.policy.document import (
    MAX_POLICY_BYTES,
    Action,
    Mode,
    Policy,
    PolicyError,
    Rule,
    decode_json,
    parse_policy,
)
from agent.core.policy.envelope import (
    MAX_ENVELOPE_BYTES,
    EnvelopeError,
    PublicKey,
    sign_envelope,
    verify_envelope,
)
from agent.core.policy.rules import RulePattern
from agent.core.policy.trust import (
    MAX_FUTURE_SKEW,
    Freshness,
    PolicyRefusedError,
    TrustSettings,
    evaluate_envelope,
    freshness,
)
from agent.platform.files import FileTooLargeError, atomic_write, read_capped

__all__ = [
    "Finding",
    "Level",
    "format_time",
    "lint_document",
    "lint_policy",
    "register",
    "stamp_validity",
    "tag_glob_can_match",
]

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_BAD_INPUT = 2

MAX_KEY_FILE_BYTES = 64 * 1024
# A policy valid for longer than this outlives the point of expiry: a stolen or
# superseded copy stays acceptable to every agent that cannot fetch a newer one.
LONG_VALIDITY = timedelta(days=365)
# Agents allow a little clock skew on issued_at; lint only warns beyond it.
FUTURE_SKEW = MAX_FUTURE_SKEW
DEFAULT_GRACE = ManagedConfig().offline_grace  # the agents' default offline_grace
_DOCKER_HUB = "docker.io"
_HUB_REPOSITORY_DEPTH = 2  # Docker Hub repositories are namespace/name, never deeper


class AdminInputError(Exception):
    """Input that makes the command impossible; printed as one line, exit 2."""


# --- argument parsing -----------------------------------------------------------------


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "admin",
        help="make and check the org's signed policy (keygen, sign, verify, lint)",
        description="Tools for the admins who publish the organisation's signed policy.",
    )
    sub = parser.add_subparsers(dest="admin_command", metavar="SUBCOMMAND", required=True)

    keygen = sub.add_parser(
        "keygen",
        help="create an Ed25519 signing key pair",
        description="Write an Ed25519 private key to PREFIX (mode 0600) and its public key "
        "to PREFIX.pub; print the key id and the managed-config line that trusts it.",
    )
    keygen.add_argument("--out", metavar="PREFIX", required=True, help="private key path")
    _passphrase_options(keygen, "encrypt the private key with the passphrase in", repeat=False)
    keygen.set_defaults(run=run_keygen)

    sign = sub.add_parser(
        "sign",
        help="sign a policy into a DSSE envelope",
        description="Validate POLICY.json and write it, signed by every --key, as a DSSE "
        "envelope (written atomically).",
    )
    sign.add_argument("policy", metavar="POLICY.json")
    sign.add_argument(
        "--key", metavar="KEY", action="append", required=True, help="private key (repeatable)"
    )
    _passphrase_options(
        sign,
        "decrypt the keys with the passphrase in",
        repeat=True,
        extra="; give it once for every key, or once per --key in the same order",
    )
    sign.add_argument(
        "--expires-in",
        metavar="DURATION",
        help="set issued_at to now and expires_at to now + DURATION (90m, 12h, 7d, 2w)",
    )
    sign.add_argument("--out", metavar="ENVELOPE", required=True, help="envelope to write")
    sign.set_defaults(run=run_sign)

    verify = sub.add_parser(
        "verify",
        help="check a signed policy as an agent would",
        description="Judge the envelope with the agent's own code: signatures of --threshold "
        "trusted keys, a valid policy of --org, issued_at not in the future, expiry with the "
        "offline grace, size within policy_max_bytes. Exit 0 only when an agent would "
        "accept it as fresh; 1 when it would refuse it or hold it only as stale; 2 on bad "
        "input. --config reads org, trusted_keys, key_threshold, offline_grace and "
        "policy_max_bytes from a managed config.",
    )
    verify.add_argument("envelope", metavar="ENVELOPE")
    verify.add_argument(
        "--trusted-key",
        metavar="PUB",
        action="append",
        help="a .pub file or an 'ed25519:...' key (repeatable; needed without --config)",
    )
    verify.add_argument(
        "--threshold", metavar="N", type=int, help="distinct valid signatures needed (default 1)"
    )
    verify.add_argument("--org", help="the org the policy must be for")
    verify.add_argument(
        "--offline-grace",
        metavar="DURATION",
        help="the agents' offline_grace (default: the config's, else 7d)",
    )
    verify.add_argument(
        "--config", metavar="FILE", help="judge as an agent with this managed config would"
    )
    verify.set_defaults(run=run_verify)

    lint = sub.add_parser(
        "lint",
        help="find mistakes in a policy before signing it",
        description="Report schema errors (exit 2) and warnings: shadowed rules, rules "
        "that can never match, expired rules or policy, very long validity.",
    )
    lint.add_argument("policy", metavar="POLICY.json")
    lint.add_argument("--strict", action="store_true", help="exit 1 when there are warnings")
    lint.set_defaults(run=run_lint)


def _passphrase_options(
    parser: argparse.ArgumentParser, verb: str, *, repeat: bool, extra: str = ""
) -> None:
    group = parser.add_mutually_exclusive_group()
    action = "append" if repeat else "store"
    group.add_argument(
        "--passphrase-file", metavar="FILE", action=action, help=f"{verb} FILE{extra}"
    )
    group.add_argument(
        "--passphrase-env",
        metavar="VAR",
        action=action,
        help=f"{verb} environment variable VAR{extra}",
    )


def _passphrase_from_file(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise AdminInputError(f"cannot read passphrase file {path}: {e.strerror or e}") from e
    data = data.removesuffix(b"\n").removesuffix(b"\r")
    if not data:
        raise AdminInputError(f"passphrase file {path} is empty")
    return data


def _passphrase_from_env(name: str) -> bytes:
    value = os.environ.get(name)
    if value is None:
        raise AdminInputError(f"environment variable {name} is not set")
    if not value:
        raise AdminInputError(f"environment variable {name} is empty")
    return value.encode("utf-8")


def _read_passphrase(args: argparse.Namespace) -> bytes | None:
    """The passphrase from a file (one trailing newline dropped) or the environment.

    Never from the command line itself: argv is visible to every user in ``ps``.
    """
    if args.passphrase_file:
        return _passphrase_from_file(args.passphrase_file)
    if args.passphrase_env:
        return _passphrase_from_env(args.passphrase_env)
    return None


def _read_passphrases(args: argparse.Namespace, count: int) -> list[bytes | None]:
    """One passphrase per key: a single one serves every key, or one per ``--key`` in
    order (two people's keys rarely share a passphrase)."""
    if args.passphrase_file:
        values = [_passphrase_from_file(path) for path in args.passphrase_file]
        flag = "--passphrase-file"
    elif args.passphrase_env:
        values = [_passphrase_from_env(name) for name in args.passphrase_env]
        flag = "--passphrase-env"
    else:
        return [None] * count
    if len(values) == 1:
        return [values[0]] * count
    if len(values) != count:
        raise AdminInputError(
            f"{len(values)} {flag} for {count} --key: give one for every key, or one per "
            "--key in the same order"
        )
    return list(values)


# --- small pure helpers ---------------------------------------------------------------


def format_time(when: datetime) -> str:
    """UTC to the second, with 'Z': how policies spell timestamps."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _relative(when: datetime, now: datetime) -> str:
    delta = when - now
    seconds = abs(delta.total_seconds())
    if seconds < 120:
        amount = f"{int(seconds)} seconds"
    elif seconds < 2 * 3600:
        amount = f"{int(seconds // 60)} minutes"
    elif seconds < 2 * 86400:
        amount = f"{int(seconds // 3600)} hours"
    else:
        amount = f"{int(seconds // 86400)} days"
    return f"in {amount}" if delta.total_seconds() >= 0 else f"{amount} ago"


def stamp_validity(document: object, now: datetime, valid_for: timedelta) -> object:
    """The document with ``issued_at`` = now and ``expires_at`` = now + ``valid_for``.

    Other fields (and their order) are kept; a non-object is returned unchanged so the
    loader reports it with its usual path.
    """
    if not isinstance(document, dict):
        return document
    issued = now.astimezone(UTC).replace(microsecond=0)
    stamped = dict(document)
    stamped["issued_at"] = format_time(issued)
    stamped["expires_at"] = format_time(issued + valid_for)
    return stamped


# --- files ----------------------------------------------------------------------------


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the first byte on, never replacing a file.

    O_EXCL closes the window in which a private key would exist with default permissions
    and refuses to clobber an existing key (a lost key cannot be recovered).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # the umask may have removed bits we asked for
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        os.close(fd)


def _read_capped(path: str, limit: int, what: str) -> bytes:
    try:
        return read_capped(path, limit)
    except OSError as e:
        raise AdminInputError(f"cannot read {what} {path}: {e.strerror or e}") from e
    except FileTooLargeError as e:
        raise AdminInputError(f"{what} {e}") from e


def _load_private_key(path: str, passphrase: bytes | None) -> Ed25519PrivateKey:
    data = _read_capped(path, MAX_KEY_FILE_BYTES, "key")
    try:
        try:
            key = serialization.load_pem_private_key(data, passphrase)
        except TypeError:
            # cryptography raises TypeError both for "encrypted but no password" and
            # "password given but not encrypted"; one passphrase serves several keys,
            # so an unencrypted key among them is fine.
            if passphrase is None:
                raise AdminInputError(
                    f"key {path} is passphrase-protected: pass --passphrase-file or "
                    "--passphrase-env"
                ) from None
            key = serialization.load_pem_private_key(data, None)
    except ValueError as e:
        if passphrase is not None and b"ENCRYPTED" in data:
            raise AdminInputError(f"cannot decrypt key {path}: wrong passphrase?") from e
        raise AdminInputError(f"key {path} is not a PEM private key: {e}") from e
    except UnsupportedAlgorithm as e:
        raise AdminInputError(f"key {path}: unsupported key type: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise AdminInputError(f"key {path} is not an Ed25519 key (got {type(key).__name__})")
    return key


# --- keygen ---------------------------------------------------------------------------


def run_keygen(args: argparse.Namespace) -> int:
    prog = "pullgate admin keygen"
    private_path = Path(args.out)
    public_path = Path(args.out + ".pub")
    try:
        passphrase = _read_passphrase(args)
        for path in (private_path, public_path):
            if path.exists() or path.is_symlink():
                raise AdminInputError(f"{path} already exists; refusing to overwrite a key")
    except AdminInputError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public = PublicKey.from_key(key)
    try:
        _create_exclusive(private_path, private_pem, 0o600)
    except OSError as e:
        print(f"{prog}: cannot create {private_path}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        _create_exclusive(public_path, public.to_pem(), 0o644)
    except OSError as e:
        private_path.unlink()  # ours, just made: do not leave half a key pair behind
        print(f"{prog}: cannot create {public_path}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    protection = "passphrase-protected" if passphrase else "not encrypted"
    print(f"private key: {private_path} (mode 0600, {protection}; keep it secret)")
    print(f"public key:  {public_path}")
    print(f"key id:      {public.keyid}")
    print("managed config (agents that trust this key):")
    print(f'  "trusted_keys": [{json.dumps(public.to_config())}]')
    return EXIT_OK


# --- sign -----------------------------------------------------------------------------


def run_sign(args: argparse.Namespace) -> int:
    prog = "pullgate admin sign"
    now = datetime.now(UTC)
    try:
        valid_for = None
        if args.expires_in is not None:
            try:
                valid_for = parse_duration(args.expires_in)
            except ValueError as e:
                raise AdminInputError(f"--expires-in: {e}") from e
        data = _read_capped(args.policy, MAX_POLICY_BYTES, "policy")
        policy, payload = _policy_payload(args.policy, data, now, valid_for)
        passphrases = _read_passphrases(args, len(args.key))
        keys = [
            _load_private_key(path, passphrase)
            for path, passphrase in zip(args.key, passphrases, strict=True)
        ]
        ids = [PublicKey.from_key(k).keyid for k in keys]
        if len(set(ids)) != len(ids):
            raise AdminInputError("the same key was given twice; it would count only once")
    except AdminInputError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    envelope = sign_envelope(payload, keys)
    # Check our own output with the agent's verifier before anyone can download it.
    verified = verify_envelope(envelope, [PublicKey.from_key(k) for k in keys], len(keys))
    try:
        atomic_write(Path(args.out), envelope)
    except OSError as e:
        print(f"{prog}: cannot write {args.out}: {e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if now > policy.expires_at:  # as agents judge it (freshness)
        print(
            f"{prog}: warning: this policy expired at {format_time(policy.expires_at)}; "
            "agents will treat it as stale (use --expires-in)",
            file=sys.stderr,
        )
    print(f"signed:    {args.out}")
    print(f"org:       {policy.org}")
    print(f"serial:    {policy.serial}")
    print(f"issued:    {format_time(policy.issued_at)}")
    print(f"expires:   {format_time(policy.expires_at)} ({_relative(policy.expires_at, now)})")
    print(f"signed by: {', '.join(verified.signers)}")
    return EXIT_OK


def _policy_payload(
    name: str, data: bytes, now: datetime, valid_for: timedelta | None
) -> tuple[Policy, bytes]:
    """Validate the policy (after stamping, if asked); return it and the bytes to sign.

    Without ``--expires-in`` the admin's file is signed byte for byte, so the signed
    payload is exactly what was reviewed.
    """
    try:
        document = decode_json(data)
        if is_envelope(document):
            raise AdminInputError(f"{name} is already a signed envelope; sign the policy JSON")
        if valid_for is not None:
            document = stamp_validity(document, now, valid_for)
            data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        return parse_policy(document, source=name), data
    except PolicyError as e:
        raise AdminInputError(f"invalid policy {name}: {e}") from e
    except OverflowError as e:
        raise AdminInputError(f"--expires-in is too far in the future: {e}") from e


# --- verify ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _VerifySettings:
    trusted: list[PublicKey]
    threshold: int
    org: str | None
    grace: timedelta
    max_bytes: int


def _verify_settings(args: argparse.Namespace) -> _VerifySettings:
    """Flags, else the managed config's values, else the agent's defaults."""
    config = None
    if args.config:
        try:
            config = load_config_file(Path(args.config))
        except ConfigError as e:
            raise AdminInputError(str(e)) from e
    key_args: list[str] = args.trusted_key or (list(config.trusted_keys) if config else [])
    if not key_args:
        raise AdminInputError("give --trusted-key (repeatable) or --config with trusted_keys")
    try:
        trusted = [read_public_key(arg) for arg in key_args]
    except PolicySourceError as e:
        raise AdminInputError(str(e)) from e
    if args.threshold is not None and args.threshold < 1:
        raise AdminInputError(f"--threshold must be at least 1, got {args.threshold}")
    threshold = (
        args.threshold if args.threshold is not None else (config.key_threshold if config else 1)
    )
    distinct = len({k.keyid for k in trusted})
    if not 1 <= threshold <= distinct:
        raise AdminInputError(
            f"--threshold {threshold} is impossible with {distinct} distinct trusted key(s)"
        )
    grace = config.offline_grace if config else DEFAULT_GRACE
    if args.offline_grace is not None:
        try:
            grace = parse_duration(args.offline_grace)
        except ValueError as e:
            raise AdminInputError(f"--offline-grace: {e}") from e
    org = args.org or (config.org if config else None)
    max_bytes = (config or ManagedConfig()).policy_max_bytes
    return _VerifySettings(trusted, threshold, org, grace, max_bytes)


def run_verify(args: argparse.Namespace) -> int:
    prog = "pullgate admin verify"
    now = datetime.now(UTC)
    try:
        settings = _verify_settings(args)
        data = _read_capped(args.envelope, MAX_ENVELOPE_BYTES, "envelope")
    except AdminInputError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        verified = verify_envelope(data, settings.trusted, settings.threshold)
    except EnvelopeError as e:
        print(f"{prog}: invalid: {e}", file=sys.stderr)
        return EXIT_INVALID
    try:
        policy = parse_policy(decode_json(verified.payload), source=args.envelope)
    except PolicyError as e:
        print(f"{prog}: invalid: the signed payload is not a valid policy: {e}", file=sys.stderr)
        return EXIT_INVALID
    print(f"org:       {policy.org}")
    print(f"serial:    {policy.serial}")
    print(f"issued:    {format_time(policy.issued_at)} ({_relative(policy.issued_at, now)})")
    print(f"expires:   {format_time(policy.expires_at)} ({_relative(policy.expires_at, now)})")
    print(f"signed by: {', '.join(verified.signers)}")
    if settings.org is None:
        print("note:      org not checked (pass --org or --config)")
    # The agent's own judgement: the same function, settings and grace it applies to a
    # downloaded envelope (with no earlier policy to compare the serial with).
    trust = TrustSettings(
        org=settings.org if settings.org is not None else policy.org,
        trusted_keys=tuple(settings.trusted),
        threshold=settings.threshold,
        offline_grace=settings.grace,
    )
    try:
        evaluate_envelope(data, trust, None, now, source=args.envelope)
    except PolicyRefusedError as e:
        print(f"warning: agents refuse it: {e.reason}")
        print(f"{prog}: invalid: {e.reason}", file=sys.stderr)
        return EXIT_INVALID
    if freshness(policy, now, settings.grace) is not Freshness.FRESH:
        until = format_time(policy.expires_at + settings.grace)
        problem = (
            f"the policy expired at {format_time(policy.expires_at)}; agents accept it only "
            f"as stale, within the offline grace (until {until})"
        )
        print(f"warning: {problem}")
        print(f"{prog}: invalid: {problem}", file=sys.stderr)
        return EXIT_INVALID
    if len(data) > settings.max_bytes:
        problem = (
            f"the envelope is {len(data)} bytes; agents with policy_max_bytes "
            f"{settings.max_bytes} refuse to download it"
        )
        print(f"warning: {problem}")
        print(f"{prog}: invalid: {problem}", file=sys.stderr)
        return EXIT_INVALID
    print("valid")
    return EXIT_OK


# --- lint -----------------------------------------------------------------------------


class Level(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Finding:
    """One lint result; ``path`` names the field as the loader would (``rules[3]``)."""

    level: Level
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.level}: {where}{self.message}"


def lint_document(document: object, now: datetime) -> list[Finding]:
    """Errors if the document does not load (all duplicate ids, not just the first);
    otherwise the warnings of :func:`lint_policy`."""
    errors = _duplicate_ids(document)
    try:
        policy = parse_policy(document, source="policy")
    except PolicyError as e:
        if e.path not in {f.path for f in errors}:
            errors.append(Finding(Level.ERROR, e.path, e.problem))
        return errors
    return errors or lint_policy(policy, now)


def _duplicate_ids(document: object) -> list[Finding]:
    rules = document.get("rules") if isinstance(document, dict) else None
    if not isinstance(rules, list):
        return []
    first: dict[str, int] = {}
    out = []
    for i, rule in enumerate(rules):
        rule_id = rule.get("id") if isinstance(rule, dict) else None
        if not isinstance(rule_id, str):
            continue
        if rule_id in first:
            out.append(
                Finding(
                    Level.ERROR,
                    f"rules[{i}].id",
                    f"duplicate rule id {rule_id!r} (also rules[{first[rule_id]}].id)",
                )
            )
        else:
            first[rule_id] = i
    return out


def lint_policy(policy: Policy, now: datetime) -> list[Finding]:
    """Warnings that are certain: each one names something that cannot do what its
    author meant. A guess would teach admins to ignore lint, so there are none."""
    out: list[Finding] = []
    if policy.mode is Mode.MONITOR:
        out.append(
            Finding(
                Level.INFO,
                "mode",
                "monitor: nothing is blocked; denials are only recorded as would_deny",
            )
        )
    if now > policy.expires_at:  # as agents judge it (freshness)
        out.append(
            Finding(
                Level.WARNING,
                "expires_at",
                f"the policy expired at {format_time(policy.expires_at)}; agents treat it "
                "as stale (sign with --expires-in)",
            )
        )
    if policy.issued_at > now + FUTURE_SKEW:
        out.append(
            Finding(
                Level.WARNING,
                "issued_at",
                f"{format_time(policy.issued_at)} is in the future; agents refuse the policy "
                "until then",
            )
        )
    validity = policy.expires_at - policy.issued_at
    if validity > LONG_VALIDITY:
        out.append(
            Finding(
                Level.WARNING,
                "expires_at",
                f"valid for {validity.days} days after issued_at (more than a year): an old "
                "copy stays acceptable that long; prefer weeks and re-signing",
            )
        )
    for rule in policy.rules:
        out.extend(_lint_rule(rule, now))
    out.extend(_shadowed_rules(policy.rules, now))
    out.sort(key=_finding_order)
    return out


def _finding_order(finding: Finding) -> tuple[int, int, str]:
    found = re.match(r"rules\[(\d+)\]", finding.path)
    return (1, int(found.group(1)), finding.path) if found else (0, 0, finding.path)


def _lint_rule(rule: Rule, now: datetime) -> list[Finding]:
    where = f"rules[{rule.position}]"
    out = []
    if rule.expires_at is not None and rule.expires_at <= now:
        out.append(
            Finding(
                Level.WARNING,
                where,
                f"expired at {format_time(rule.expires_at)}; it no longer applies",
            )
        )
    pattern = rule.pattern
    depth = len(pattern.components)
    if (
        pattern.domain == _DOCKER_HUB
        and pattern.port is None
        and "**" not in pattern.components
        and depth > _HUB_REPOSITORY_DEPTH
    ):
        out.append(
            Finding(
                Level.WARNING,
                where,
                f"can never match: {rule.match!r} is docker.io/{'/'.join(pattern.components)}, "
                f"{depth} path components deep, but Docker Hub repositories are "
                "namespace/name (official images: library/name)",
            )
        )
    if pattern.tag is not None and not tag_glob_can_match(pattern.tag):
        out.append(
            Finding(
                Level.WARNING,
                where,
                f"can never match: no valid tag matches the tag glob {pattern.tag!r}",
            )
        )
    return out


_TAG_MAX = 128
_TAG_FIRST = re.compile(r"[A-Za-z0-9_]")


def tag_glob_can_match(glob: str) -> bool:
    """Whether some valid Docker tag (``[\\w][\\w.-]{0,127}``) matches the glob.

    Exact, not heuristic: the shortest candidate (``?`` → one letter, ``*`` → nothing,
    except a leading ``*`` that must supply the first character) is valid exactly when
    any match is, because every other choice only makes the tag longer.
    """
    stripped = glob.lstrip("*")
    leading_stars = len(glob) - len(stripped)
    rest = stripped.replace("*", "")
    candidate = rest.replace("?", "a")
    if (not candidate or not _TAG_FIRST.fullmatch(candidate[0])) and leading_stars:
        candidate = "a" + candidate
    if not 1 <= len(candidate) <= _TAG_MAX:
        return False
    valid = _TAG_FIRST.fullmatch(candidate[0]) is not None and all(
        c.isascii() and (c.isalnum() or c in "_.-") for c in candidate[1:]
    )
    return valid and fnmatch.fnmatchcase(candidate, glob)


def _pattern_key(pattern: RulePattern) -> tuple[object, ...]:
    """Normalised identity of a pattern: ``nginx`` and ``docker.io/library/nginx`` agree."""
    return (pattern.domain, pattern.port, pattern.components, pattern.tag, pattern.digest)


def _covers(winner: Rule, rule: Rule) -> bool:
    """Whether ``winner`` applies (groups, expiry) whenever ``rule`` does."""
    if winner.groups is not None and (rule.groups is None or not rule.groups <= winner.groups):
        return False
    return winner.expires_at is None or (
        rule.expires_at is not None and rule.expires_at <= winner.expires_at
    )


def _beats_on_tie(winner: Rule, rule: Rule) -> bool:
    """The engine's tie-break at equal specificity: deny beats allow, then the earlier."""
    if winner.action is not rule.action:
        return winner.action is Action.DENY
    return winner.position < rule.position


def _shadowed_rules(rules: Sequence[Rule], now: datetime) -> list[Finding]:
    """Rules that never decide because a rule with the same pattern always wins.

    Only identical (normalised) patterns are compared: then every reference one matches
    the other matches at the same specificity, so the engine's tie-break alone decides,
    and the warning is certain.
    """
    groups: dict[tuple[object, ...], list[Rule]] = {}
    for rule in rules:
        groups.setdefault(_pattern_key(rule.pattern), []).append(rule)
    out = []
    for same in groups.values():
        for rule in same:
            if rule.expires_at is not None and rule.expires_at <= now:
                continue  # already reported as expired
            winner = next(
                (w for w in same if w is not rule and _covers(w, rule) and _beats_on_tie(w, rule)),
                None,
            )
            if winner is None:
                continue
            match = repr(rule.match)
            if winner.match != rule.match:
                match += f" as {winner.match!r}"
            if winner.groups == rule.groups:
                scope = "and groups"
            elif winner.groups is None:
                scope = f"and rules[{winner.position}] applies to everyone"
            else:
                scope = f"and rules[{winner.position}] applies to all of its groups"
            why = (
                "deny wins a tie"
                if winner.action is not rule.action
                else "the earlier rule wins a tie"
            )
            out.append(
                Finding(
                    Level.WARNING,
                    f"rules[{rule.position}]",
                    f"shadowed by rules[{winner.position}] (same match {match} {scope}): "
                    f"{why}, so it never decides",
                )
            )
    return out


def run_lint(args: argparse.Namespace) -> int:
    prog = "pullgate admin lint"
    now = datetime.now(UTC)
    try:
        data = _read_capped(args.policy, MAX_POLICY_BYTES, "policy")
        try:
            document = decode_json(data)
        except PolicyError as e:
            raise AdminInputError(f"invalid policy {args.policy}: {e}") from e
        if is_envelope(document):
            raise AdminInputError(
                f"{args.policy} is a signed envelope; lint the policy JSON it was signed "
                "from, or check it with 'pullgate admin verify'"
            )
    except AdminInputError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    findings = lint_document(document, now)
    for finding in findings:
        print(finding)
    counts = {level: sum(f.level is level for f in findings) for level in Level}
    print(
        f"{args.policy}: {counts[Level.ERROR]} error(s), {counts[Level.WARNING]} warning(s), "
        f"{counts[Level.INFO]} note(s)",
        file=sys.stderr,
    )
    if counts[Level.ERROR]:
        return EXIT_BAD_INPUT
    if counts[Level.WARNING] and args.strict:
        return EXIT_INVALID
    return EXIT_OK
