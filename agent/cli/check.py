"""``pullgate check``: may this machine pull these images, and why not?

The contract: exit 0 when every image is allowed (``would_deny`` counts as
allowed), 1 when at least one is denied, 2 on bad input (an invalid reference, an
unreadable or invalid policy or Dockerfile) with a one-line error on stderr. ``--json``
prints one array with an object per input. Docker is never contacted.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.config.check import trust_settings
from agent.config.keys import ManagedConfig
from agent.config.parse import ConfigError
from agent.config.sources import load_managed_config
from agent.core.decision import Decision, Identity, Verdict, decide
from agent.core.inspection.dockerfile.resolve import DockerfileError, ImageUse, parse_dockerfile
from agent.core.messages import denial_message, remediation_lines
from agent.core.policy.default import default_policy
from agent.core.policy.document import Policy
from agent.core.reference import Reference, ReferenceError, parse_normalized_named
from agent.daemon.policy_cache import PolicyCache
from agent.platform.paths import default_state_dir

EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_BAD_INPUT = 2

MAX_DOCKERFILE_BYTES = 4 * 1024 * 1024


class CheckInputError(Exception):
    """Input that makes the whole check impossible (policy, Dockerfile, flags)."""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "check",
        help="check images against the policy without touching Docker",
        description=(
            "Evaluate images against the active policy (or --policy FILE) without "
            "touching Docker. Exit 0: all allowed; 1: at least one denied; 2: bad input."
        ),
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image references")
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help="policy to use instead of the active one (plain policy JSON for authoring)",
    )
    parser.add_argument(
        "--trusted-key",
        metavar="KEY",
        action="append",
        default=[],
        help="verify a signed --policy with this key (.pub file or ed25519:...; repeatable)",
    )
    parser.add_argument("--threshold", type=int, help="signatures needed (default 1)")
    parser.add_argument("--config", metavar="FILE", help="managed config to read")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="the agent's policy cache and status directory, as given to `pullgate agent "
        "--state-dir` (default: the agent's default)",
    )
    parser.add_argument("--identity", metavar="EMAIL", help="decide as this signed-in user")
    parser.add_argument("--groups", metavar="G1,G2", help="groups of --identity (comma-separated)")
    parser.add_argument(
        "--dockerfile",
        metavar="PATH",
        action="append",
        default=[],
        help="also check every image this Dockerfile would pull (repeatable)",
    )
    parser.add_argument(
        "--build-arg",
        metavar="NAME[=VALUE]",
        action="append",
        default=[],
        help="build argument for --dockerfile, as with docker build (NAME alone reads "
        "the environment)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON array")
    parser.set_defaults(run=run)


@dataclass(frozen=True)
class CheckInput:
    """One image to check, and where it came from (the command line or a Dockerfile)."""

    text: str
    dockerfile: str | None = None
    use: ImageUse | None = None


@dataclass(frozen=True)
class CheckResult:
    input: CheckInput
    reference: Reference | None = None
    decision: Decision | None = None
    error: str | None = None


def load_policy_file(
    path: str,
    config: ManagedConfig | None = None,
    trusted_keys: Sequence[str] = (),
    threshold: int | None = None,
) -> Policy:
    """Read ``--policy``: plain policy JSON (for authoring), or a signed envelope.

    An envelope is verified with ``trusted_keys`` (``.pub`` files or ``ed25519:`` strings)
    or else the managed config's keys and threshold; its org must match the config's.
    """
    # cryptography is loaded only here, not by everything that imports this module.
    from agent.config.policy_file import (  # noqa: PLC0415
        PolicySourceError,
        load_policy_source,
        read_public_key,
    )

    if threshold is not None and threshold < 1:
        raise CheckInputError(f"--threshold must be at least 1, got {threshold}")
    try:
        if trusted_keys:
            keys = [read_public_key(k) for k in trusted_keys]
            needed = 1 if threshold is None else threshold
        elif config is not None and config.trusted_keys:
            keys = [read_public_key(k) for k in config.trusted_keys]
            needed = config.key_threshold if threshold is None else threshold
        else:
            keys, needed = [], 1 if threshold is None else threshold
        policy = load_policy_source(path, keys, needed)
    except PolicySourceError as e:
        raise CheckInputError(str(e)) from e
    if config is not None and config.org and policy.org != config.org and policy.org:
        raise CheckInputError(
            f"policy {path} is for org {policy.org!r}, this machine belongs to {config.org!r}"
        )
    return policy


def active_policy(
    config: ManagedConfig | None, state_dir: Path | None = None
) -> tuple[Policy, str]:
    """The policy the agent would enforce now, and a note on why it is that one.

    With an org policy configured, that is the cached last-known-good envelope in
    ``state_dir`` (default: the agent's), verified again here exactly as the agent
    verifies it — with its high-water state — and judged for freshness.
    """
    if config is None or not config.policy_url:
        return default_policy(), "no organisation policy is configured"
    # The agent's own loading code, imported only for an org policy (it loads requests).
    from agent.daemon.bus import DecisionSink  # noqa: PLC0415
    from agent.daemon.policy_manager import PolicyManager  # noqa: PLC0415

    manager = PolicyManager(
        trust_settings(config),
        PolicyCache(state_dir or default_state_dir()),
        default_policy(),
        DecisionSink(),
        write_status=False,
    )
    manager.load_cache()
    policy = manager.current()
    if manager.source == "cache":
        return policy, f"cached org policy from {config.policy_url}"
    return policy, f"no verified org policy cached yet ({manager.last_refusal or 'not fetched'})"


def _build_args(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not name:
            raise CheckInputError(f"--build-arg {item!r}: expected NAME=VALUE or NAME")
        if not eq:
            env = os.environ.get(name)
            if env is None:
                continue  # as docker build: an unset NAME passes nothing
            value = env
        out[name] = value
    return out


def _dockerfile_inputs(path: str, build_args: dict[str, str]) -> list[CheckInput]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DOCKERFILE_BYTES + 1)
    except OSError as e:
        raise CheckInputError(f"cannot read Dockerfile {path}: {e.strerror or e}") from e
    try:
        images = parse_dockerfile(data, build_args, max_size=MAX_DOCKERFILE_BYTES)
    except DockerfileError as e:
        raise CheckInputError(f"Dockerfile {path}: {e}") from e
    return [CheckInput(use.image, dockerfile=path, use=use) for use in images.uses]


def evaluate(
    inputs: list[CheckInput],
    policy: Policy,
    identity: Identity | None,
    now: datetime,
) -> list[CheckResult]:
    """Pure core of the command: references in, decisions out."""
    user = _os_user()
    host = socket.gethostname()
    results = []
    for item in inputs:
        try:
            ref = parse_normalized_named(item.text)
        except ReferenceError as e:
            results.append(CheckResult(item, error=str(e)))
            continue
        decision = decide(policy, ref, now=now, identity=identity, user=user, host=host)
        results.append(CheckResult(item, ref, decision))
    return results


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def exit_code(results: list[CheckResult]) -> int:
    if any(r.error for r in results):
        return EXIT_BAD_INPUT
    if any(r.decision and r.decision.verdict is Verdict.DENY for r in results):
        return EXIT_DENIED
    return EXIT_ALLOWED


def result_json(result: CheckResult) -> dict[str, Any]:
    out: dict[str, Any] = {"input": result.input.text}
    if result.input.use is not None:
        use = result.input.use
        out["source"] = {
            "dockerfile": result.input.dockerfile,
            "line": use.line,
            "kind": use.source,
            "instruction": use.instruction,
        }
    if result.error is not None or result.reference is None or result.decision is None:
        out.update(reference=None, category=None, decision=None, rule=None, reason=None)
        out["error"] = result.error
        return out
    ref, d = result.reference, result.decision
    tagged = ref.with_default_tag()
    out["reference"] = {
        "domain": ref.domain,
        "path": ref.path,
        "tag": tagged.tag,
        "digest": ref.digest,
        "canonical": tagged.canonical,
        "familiar": tagged.familiar_string(),
    }
    out["category"] = str(d.category)
    out["decision"] = str(d.verdict)
    out["rule"] = d.rule
    out["reason"] = d.reason
    out["policy"] = {"name": d.policy, "serial": d.policy_serial}
    r = d.remediation
    out["remediation"] = {
        "alternative": r.alternative,
        "hint": r.hint,
        "help_url": r.help_url,
        "contact": r.contact,
    }
    if d.verdict is not Verdict.ALLOW:
        out["message"] = denial_message(d)
    return out


def _print_human(results: list[CheckResult], policy: Policy, why: str) -> None:
    origin = f" ({why})" if why else ""
    print(f"policy: {policy.label}{origin}")
    for result in results:
        where = ""
        if result.input.use is not None:
            where = f"  [{result.input.dockerfile}:{result.input.use.line}]"
        if result.decision is None:
            print(f"invalid     {result.input.text}{where}")
            print(f"            {result.error}")
            continue
        d = result.decision
        print(f"{d.verdict!s:<11} {d.canonical}  ({d.category}){where}")
        print(f"            {d.reason}")
        if d.verdict is not Verdict.ALLOW:
            for line in remediation_lines(d):
                print(f"            {line}")


def run(args: argparse.Namespace) -> int:
    prog = "pullgate check"
    try:
        if args.groups is not None and args.identity is None:
            raise CheckInputError("--groups needs --identity")
        if not args.images and not args.dockerfile:
            raise CheckInputError("give at least one IMAGE or --dockerfile PATH")
        try:
            config = load_managed_config(json_path=Path(args.config) if args.config else None)
        except ConfigError as e:
            raise CheckInputError(str(e)) from e
        if args.policy:
            policy = load_policy_file(args.policy, config, args.trusted_key, args.threshold)
            why = ""
        else:
            state_dir = Path(args.state_dir) if args.state_dir else None
            try:
                policy, why = active_policy(config, state_dir)
            except ConfigError as e:
                raise CheckInputError(str(e)) from e
        identity = None
        if args.identity is not None:
            groups = [g.strip() for g in (args.groups or "").split(",") if g.strip()]
            identity = Identity(args.identity, frozenset(groups))
        inputs = [CheckInput(text) for text in args.images]
        build_args = _build_args(args.build_arg)
        for path in args.dockerfile:
            inputs.extend(_dockerfile_inputs(path, build_args))
    except CheckInputError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    results = evaluate(inputs, policy, identity, datetime.now(UTC))
    if args.json:
        json.dump([result_json(r) for r in results], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_human(results, policy, why)
    for result in results:
        if result.error:
            print(f"{prog}: invalid image {result.input.text!r}: {result.error}", file=sys.stderr)
    return exit_code(results)
