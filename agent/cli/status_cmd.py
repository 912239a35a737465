"""``pullgate status`` and ``pullgate doctor``: the running agent, as its control API sees it.

``status`` prints what the agent reports. ``doctor`` checks the whole path a pull takes —
agent, daemon, shim, the socket the ``docker`` CLI really uses, policy, audit log, clock —
because a broken setup must say what is wrong and how to fix it, not fail silently.
Every check is OK, FAIL (with the fix) or SKIP (with
why); any FAIL makes the exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.config.keys import Enforcement
from agent.config.parse import ConfigError
from agent.config.sources import load_managed_config
from agent.control.client import (
    ControlError,
    control_paths,
    control_request,
    current_principal,
)
from agent.core import strict_json
from agent.core.dockerd_hosts import dockerd_hosts, extra_listeners
from agent.core.peer import Principal
from agent.core.text import printable
from agent.platform.docker_api import request_sync
from agent.platform.docker_context import (
    ContextError,
    docker_config_dir,
    docker_endpoint,
    points_at,
)
from agent.platform.files import same_file
from agent.platform.upstream import default_listen_path
from agent.platform.windows import docker_host, shim_pipe
from agent.platform.windows_control import local_pipe_name

EXIT_OK = 0
EXIT_PROBLEM = 1
PING_TIMEOUT = 5.0
CONTROL_TIMEOUT = 10.0


def register(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="what the running agent is doing: mode, org, policy, sockets, last decisions",
    )
    status.add_argument("--json", action="store_true", help="print the control API's JSON")
    status.add_argument("--control", metavar="PATH", help="the agent's control socket")
    status.set_defaults(run=run_status)
    doctor = commands.add_parser(
        "doctor",
        help="check agent, daemon, shim, docker's socket, policy, audit log and clock",
    )
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.add_argument("--control", metavar="PATH", help="the agent's control socket")
    doctor.set_defaults(run=run_doctor)


# --- talking to the agent -------------------------------------------------------------


def fetch_status(control: str | None) -> tuple[Path, dict[str, Any]]:
    """The agent's status from ``control`` or, if not given, the usual socket paths."""
    problems: list[str] = []
    for path in control_paths(control):
        try:
            code, body = control_request(path, "GET", "/v1/status", timeout=CONTROL_TIMEOUT)
        except ControlError as e:
            problems.append(str(e))
            continue
        if code != 200 or not isinstance(body, dict):
            message = body.get("message") if isinstance(body, dict) else None
            problems.append(f"the agent at {path} answered HTTP {code}: {message or body!r}")
            continue
        return path, body
    raise ControlError("; ".join(problems))


# --- status ---------------------------------------------------------------------------


def run_status(args: argparse.Namespace) -> int:
    try:
        path, status = fetch_status(args.control)
    except ControlError as e:
        print(f"pullgate status: the agent is not reachable: {e}", file=sys.stderr)
        running = "the PullgateAgent service" if sys.platform == "win32" else "`pullgate agent`"
        print(f"Is {running} running? `pullgate doctor` checks the setup.", file=sys.stderr)
        return EXIT_PROBLEM
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(path, status))
    return EXIT_OK


def format_status(path: Path, status: Mapping[str, Any]) -> str:
    """The status document as a short, readable summary."""
    agent = _dict(status.get("agent"))
    policy = _dict(status.get("policy"))
    lines = [
        _row(
            "agent",
            f"running (pid {agent.get('pid')}, version {agent.get('version')}, "
            f"up {_duration(agent.get('uptime_seconds'))}), control {path}",
        ),
        _row("mode", status.get("mode")),
        _row("org", status.get("org") or "none"),
        _row("policy", _policy_line(policy)),
    ]
    if policy.get("last_fetch_error"):
        lines.append(_row("fetch error", policy["last_fetch_error"]))
    if policy.get("refresh_loop") not in (None, "running"):
        lines.append(_row("refresh", f"loop {policy['refresh_loop']}"))
    overdue = refresh_overdue(policy)
    if overdue is not None:
        lines.append(_row("refresh", overdue))
    if policy.get("last_refresh_error"):
        lines.append(_row("refresh error", policy["last_refresh_error"]))
    if policy.get("last_refusal"):
        lines.append(_row("last refusal", policy["last_refusal"]))
    lines += [
        _row("upstream", f"{_url(status.get('upstream'))} ({status.get('upstream_source')})"),
        _row("listen", _url(status.get("listen"))),
        *_identity_rows(status.get("identity")),
        _row("audit", _audit_line(status.get("audit"))),
    ]
    desktop = status.get("desktop")
    if isinstance(desktop, dict):
        lines += _desktop_rows(desktop)
    monitor = status.get("bypass_monitor")
    if isinstance(monitor, dict) and (not monitor.get("running") or monitor.get("errors")):
        lines.append(_row("bypass watch", _monitor_line(monitor)))
    if status.get("clock_behind"):
        lines.append(_row("warning", "the system clock is behind the newest accepted policy"))
    decisions = status.get("last_decisions") or []
    if decisions:
        lines.append("last decisions:")
        lines += [f"  {_decision_line(_dict(d))}" for d in decisions]
    else:
        lines.append(_row("last decisions", "none yet"))
    # What a policy host or a client sent (a Location, a key id, an image name) must
    # not drive the terminal, even from an agent or state file older than the escaping.
    return "\n".join(printable(line) for line in lines)


def _row(name: str, value: object) -> str:
    return f"{name + ':':<16}{value}"


def _url(endpoint: object) -> str:
    """A socket path or, from an agent on Windows, a pipe name (``\\\\.\\pipe\\NAME``) as the
    docker CLI spells it: ``unix://PATH``, ``npipe:////./pipe/NAME``."""
    pipe = local_pipe_name(str(endpoint))
    return docker_host(pipe) if pipe is not None else f"unix://{endpoint}"


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def _policy_line(policy: Mapping[str, Any]) -> str:
    parts = [str(policy.get("enforcing") or "?")]
    if policy.get("serial") is not None and f"serial {policy['serial']}" not in parts[0]:
        parts.append(f"serial {policy['serial']}")
    if policy.get("age_seconds") is not None:
        parts.append(f"issued {_duration(policy['age_seconds'])} ago")
    parts.append(f"state {policy.get('state')}")
    if policy.get("source"):
        parts.append(f"from {policy['source']}")
    return ", ".join(parts)


def _identity_rows(identity: object) -> list[str]:
    """The caller's sign-in, the provider's keys when they are a problem, and (for root)
    every signed-in user."""
    info = _dict(identity)
    if not info.get("configured"):
        return [_row("identity", "sign-in is not configured (no oidc_issuer)")]
    issuer = _dict(info.get("sign_in")).get("issuer")
    you = info.get("you")
    rows = [
        _row(
            "identity",
            _binding_line(_dict(you)) if you else f"not signed in (`pullgate login`, {issuer})",
        )
    ]
    keys = _dict(info.get("keys"))
    if keys.get("state") not in ("ok", "not-fetched"):
        rows.append(_row("provider keys", f"{keys.get('state')}: {keys.get('error')}"))
    users = info.get("users")
    if isinstance(users, list):
        rows.append(_row("signed in", f"{len(users)} user(s)"))
        rows += [f"  uid {_dict(u).get('uid')}: {_binding_line(_dict(u))}" for u in users]
    return rows


def _binding_line(binding: Mapping[str, Any]) -> str:
    groups = ", ".join(str(g) for g in binding.get("groups") or []) or "no groups"
    expires = binding.get("expires_at")
    left = _duration(expires - time.time()) if isinstance(expires, int | float) else "?"
    return f"{binding.get('email')} ({groups}), for another {left}"


def _monitor_line(monitor: Mapping[str, Any]) -> str:
    state = "running" if monitor.get("running") else "STOPPED"
    errors = monitor.get("errors") or 0
    if errors:
        state += f", {errors} unexpected error(s), last: {monitor.get('last_error')}"
    return state


def _audit_line(audit: object) -> str:
    if not isinstance(audit, dict):
        return "not reported by this agent"
    if audit.get("healthy"):
        return f"writing to {audit.get('file') or audit.get('dir')}"
    if audit.get("integrity") and audit.get("writable", True):
        return f"RECORDS LOST: {audit.get('integrity')}"
    return (
        f"FAILING since {audit.get('failing_since')}: {audit.get('failing')} "
        f"({audit.get('lost_records')} record(s) lost; audit_failure={audit.get('audit_failure')})"
    )


def _decision_line(d: Mapping[str, Any]) -> str:
    when = d.get("time")
    stamp = (
        datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(when, int | float)
        else "?"
    )
    peer = _dict(d.get("peer"))
    who = peer.get("user") or peer.get("uid")
    target = d.get("image") or d.get("endpoint")
    return (
        f"{stamp}  {d.get('decision', '?'):<10} {target}  ({d.get('action')}; "
        f"{d.get('reason')}{f'; user {who}' if who is not None else ''})"
    )


# --- doctor ---------------------------------------------------------------------------

OK, FAIL, SKIP = "OK", "FAIL", "SKIP"


@dataclass(frozen=True)
class Check:
    """One doctor finding; ``fix`` is what to do about a FAIL."""

    name: str
    result: str  # OK | FAIL | SKIP
    detail: str
    fix: str | None = None


def run_doctor(args: argparse.Namespace) -> int:
    checks = diagnose(args.control, os.environ, Path.home())
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for check in checks:
            print(printable(f"{check.result:<5} {check.name}: {check.detail}"))
            if check.fix:
                print(printable(f"      fix: {check.fix}"))
    return EXIT_PROBLEM if any(c.result == FAIL for c in checks) else EXIT_OK


def diagnose(control: str | None, env: Mapping[str, str], home: Path) -> list[Check]:
    """Every doctor check, in the order a pull depends on them."""
    checks: list[Check] = []
    try:
        path, status = fetch_status(control)
    except ControlError as e:
        checks.append(
            Check(
                "agent reachable",
                FAIL,
                str(e),
                _start_agent(),
            )
        )
        listen = _own_listen(env)
        checks.append(check_docker_target(listen, env, home))
        needs = "needs the agent's status"
        for name in ("upstream reachable", "shim reachable", "policy", "audit", "clock"):
            checks.append(Check(name, SKIP, needs))
        return checks
    agent = _dict(status.get("agent"))
    checks.append(
        Check("agent reachable", OK, f"control socket {path}, agent pid {agent.get('pid')}")
    )
    desktop = status.get("desktop")
    if isinstance(desktop, dict):  # enforcement: desktop: one endpoint per user
        me = current_principal()
        checks.extend(check_desktop(desktop, me))
        mine = _desktop_endpoint(desktop, me)
        if mine is not None:
            checks.append(check_docker_target(Path(str(mine.get("listen"))), env, home))
        checks.append(check_policy(_dict(status.get("policy"))))
        checks.extend(check_audit(status.get("audit"), lambda: _audit_status_again(control)))
        checks.append(check_clock(status))
        checks.append(
            check_sign_in(
                status.get("identity"), _dict(status.get("policy")).get("require_sign_in")
            )
        )
        return checks
    upstream = Path(str(status.get("upstream")))
    listen = Path(str(status.get("listen")))
    checks.append(check_ping("upstream reachable", upstream, _upstream_fix(upstream)))
    checks.append(
        check_ping(
            "shim reachable",
            listen,
            "restart the agent; if the upstream check failed too, fix that first",
        )
    )
    checks.append(check_docker_target(listen, env, home))
    checks.append(check_policy(_dict(status.get("policy"))))
    unstarted = check_refresh_started(_dict(status.get("policy")), agent)
    if unstarted is not None:
        checks.append(unstarted)
    checks.extend(check_audit(status.get("audit"), lambda: _audit_status_again(control)))
    checks.append(check_enforcement(listen, upstream))
    checks.append(check_direct_clients(upstream, agent.get("pid")))
    checks.append(check_bypass_monitor(status.get("bypass_monitor")))
    checks.append(check_clock(status))
    checks.append(
        check_sign_in(status.get("identity"), _dict(status.get("policy")).get("require_sign_in"))
    )
    return checks


def _start_agent() -> str:
    """The fix for an agent that does not answer."""
    if sys.platform == "win32":
        return (
            "start the PullgateAgent service (`Start-Service PullgateAgent`, as an "
            "administrator); it serves a control pipe to each user signed in to this machine"
        )
    else:
        return (
            "start the agent (`pullgate agent`, or its system service) or pass the socket it "
            "uses with --control"
        )


def _own_listen(env: Mapping[str, str]) -> Path:
    """Where this user's shim would be when the agent cannot say: on Windows the pipe the
    service serves them (``\\\\.\\pipe\\pullgate_docker_<SID>``)."""
    if sys.platform == "win32":
        return Path(shim_pipe(str(current_principal())))
    else:
        return default_listen_path(os.geteuid(), env)


def check_sign_in(identity: object, required: object = None) -> Check:
    """Whether the caller is signed in (a failure only when the policy requires it), and
    whether the agent can verify sign-ins at all (the identity provider's keys)."""
    name = "signed in"
    info = _dict(identity)
    if not info.get("configured"):
        return Check(name, SKIP, "sign-in is not configured (no oidc_issuer)")
    keys = _dict(info.get("keys"))
    if keys.get("state") == "unavailable":
        return Check(
            name,
            FAIL,
            f"the agent cannot get the identity provider's keys: {keys.get('error')}",
            "check the network, oidc_issuer and ca_bundle of the managed config",
        )
    you = info.get("you")
    if you:
        return Check(name, OK, _binding_line(_dict(you)))
    if required:
        return Check(
            name, FAIL, "this user is not signed in and the policy requires it", "pullgate login"
        )
    return Check(name, OK, "not signed in (the policy does not require it; `pullgate login`)")


REFRESH_START_GRACE = 10.0
"""Seconds after the agent's start in which a refresh loop may not have started yet."""


def check_refresh_started(policy: Mapping[str, Any], agent: Mapping[str, Any]) -> Check | None:
    """A failing check when the agent has an org policy to refresh but its refresh loop
    never started (``refresh_loop: "not started"`` after the first seconds): the policy
    in force would never be updated. None otherwise (the loop's other states are judged
    by :func:`check_policy`)."""
    if policy.get("refresh_loop") != "not started":
        return None
    uptime = agent.get("uptime_seconds")
    if isinstance(uptime, bool) or not isinstance(uptime, int | float):
        uptime = None  # unknown: judged as not just started
    elif uptime < REFRESH_START_GRACE:
        return None
    return Check(
        "policy refresh started",
        FAIL,
        f"the policy refresh loop has not started (agent up {_duration(uptime)}): the org "
        "policy will not be updated",
        "restart the agent",
    )


def _upstream_fix(upstream: Path) -> str:
    return (
        f"start the Docker daemon (systemctl start docker) or point the agent at the right "
        f"socket with --upstream or the managed `upstream` setting (now unix://{upstream})"
    )


def ping(
    path: Path,
    timeout: float = PING_TIMEOUT,
    *,
    listener_uid: int | None = None,
    listener_executables: Collection[str] | None = None,
) -> tuple[int, str]:
    """``GET /_ping`` on a Docker API socket: (status, body); ``listener_uid``: only if
    that user serves it (a user's Docker Desktop socket, Desktop mode), and with
    ``listener_executables`` from one of those programs, as the agent asks."""
    answer = request_sync(
        path,
        "GET",
        "/_ping",
        timeout=timeout,
        max_body=4096,
        listener_uid=listener_uid,
        listener_executables=listener_executables,
    )
    return answer.status, answer.body.decode("utf-8", errors="replace").strip()


def check_ping(
    name: str,
    path: Path,
    fix: str,
    *,
    listener_uid: int | None = None,
    listener_executables: Collection[str] | None = None,
) -> Check:
    try:
        code, body = ping(
            path, listener_uid=listener_uid, listener_executables=listener_executables
        )
    except OSError as e:  # DockerAPIError too: an answer that is not HTTP
        why = e.strerror or str(e) or repr(e)
        return Check(name, FAIL, f"GET /_ping on unix://{path} failed: {why}", fix)
    if code != 200:
        return Check(name, FAIL, f"GET /_ping on unix://{path} answered {code}: {body[:300]}", fix)
    return Check(name, OK, f"unix://{path} answers GET /_ping")


def check_docker_target(listen: Path, env: Mapping[str, str], home: Path) -> Check:
    name = "docker uses the shim"
    shim = _url(listen)
    export = (
        f'$env:DOCKER_HOST="{shim}"' if sys.platform == "win32" else f"export DOCKER_HOST={shim}"
    )
    config_dir = docker_config_dir(env, home)
    try:
        endpoint = docker_endpoint(config_dir, env)
    except ContextError as e:
        return Check(name, FAIL, str(e), f"pullgate context install (or {export})")
    source = endpoint.describe(config_dir)
    url = endpoint.url
    if url is None:
        detail = f"{source} has no readable endpoint"
        return Check(name, FAIL, detail, f"pullgate context install (or {export})")
    if points_at(url, listen):
        return Check(name, OK, f"docker uses {url} ({source}), the shim")
    detail = f"docker uses {url} ({source}), not the shim {shim}: pulls bypass policy"
    if endpoint.source == "DOCKER_HOST":
        fix = f"{export} (or unset DOCKER_HOST and run `pullgate context install`)"
    else:
        fix = f"pullgate context install (or {export})"
    return Check(name, FAIL, detail, fix)


def check_policy(policy: Mapping[str, Any], now: datetime | None = None) -> Check:
    name = "policy fresh and verified"
    state = policy.get("state")
    what = f"{policy.get('enforcing')} from {policy.get('source')}"
    error = policy.get("last_fetch_error") or policy.get("last_refusal")
    refresh_fix = "check that policy_url is reachable, then run `pullgate policy refresh`"
    refreshing = _refresh_problem(policy, now)
    if refreshing is not None and state == "fresh":
        # Fresh today, but a refresh that fails or no longer runs stops updates silently.
        return Check(
            name, FAIL, f"{what}, fresh until {policy.get('expires_at')}; {refreshing}", refresh_fix
        )
    if state == "fresh":
        return Check(name, OK, f"{what}, fresh until {policy.get('expires_at')}")
    if state == "local":
        return Check(name, OK, f"{what} (a local policy file, not refreshed from the org)")
    if state == "default":
        return Check(
            name,
            FAIL,
            f"no org policy is configured; enforcing {policy.get('enforcing')}",
            "set org, policy_url and trusted_keys in the managed config",
        )
    detail = {
        "stale": f"{what} expired at {policy.get('expires_at')}; within the offline grace period",
        "expired": f"{what} expired at {policy.get('expires_at')} and its grace period is over",
        "fallback": f"no verified org policy yet; enforcing {policy.get('enforcing')}",
    }.get(str(state), f"{what}: unexpected state {state!r}")
    if error:
        detail += f" (last problem: {error})"
    if policy.get("refresh_loop") in ("dead", "stopped") or refresh_overdue(policy, now):
        detail += f"; {refreshing}"
    return Check(name, FAIL, detail, refresh_fix)


DEFAULT_FETCH_DEADLINE = 92.0
"""The agent's fetch deadline with the default fetch_timeout of 30 s (3 x 30 s + 2 s), for
a status that does not say (an older agent)."""


def refresh_overdue(policy: Mapping[str, Any], now: datetime | None = None) -> str | None:
    """A running refresh loop whose next refresh is later than it can possibly be: past
    ``next_refresh_at`` by more than a whole fetch may take. Such a loop is stuck (a
    fetch that never ends), however green the rest of its status looks."""
    if policy.get("refresh_loop") != "running":
        return None
    due = _timestamp(policy.get("next_refresh_at"))
    if due is None:
        return None
    deadline = policy.get("fetch_deadline_seconds")
    if not isinstance(deadline, int | float) or isinstance(deadline, bool) or deadline < 0:
        deadline = DEFAULT_FETCH_DEADLINE
    late = ((now or datetime.now(UTC)) - due).total_seconds()
    if late <= deadline:
        return None
    return (
        f"the policy refresh is overdue: due at {policy.get('next_refresh_at')}, "
        f"{_duration(late)} ago (a fetch may take at most {deadline:g}s); the refresh "
        "loop is stuck, restart the agent"
    )


def _timestamp(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _refresh_problem(policy: Mapping[str, Any], now: datetime | None = None) -> str | None:
    """What is wrong with the agent's policy refresh, if anything. The latest outcome
    counts: a failed download, an unexpected error, or a refused download (unsigned,
    rolled back, another org's) — the agent keeps its old policy, and stops updating."""
    loop = policy.get("refresh_loop")
    if loop in ("dead", "stopped"):
        why = policy.get("last_refresh_error") or "no reason recorded"
        return f"the policy refresh loop is {loop} ({why}); restart the agent"
    overdue = refresh_overdue(policy, now)
    if overdue is not None:
        return overdue
    error = policy.get("last_refresh_error") or policy.get("last_fetch_error")
    failures = policy.get("refresh_failures")
    if error:
        count = f" ({failures} failures in a row)" if isinstance(failures, int) and failures else ""
        return f"the last policy refresh failed{count}: {error}"
    if policy.get("last_refusal"):
        return f"the last policy download was refused: {policy['last_refusal']}"
    return None


class AuditUnstableError(Exception):
    """The log kept changing under the agent through every attempt: no verdict."""


def verify_audit_dir(
    directory: Path,
    agent: Mapping[str, Any] | None = None,
    reread: Callable[[], Mapping[str, Any] | None] | None = None,
) -> tuple[bool, str]:
    """Verify the audit chain in ``directory`` as ``pullgate audit verify`` does, and
    compare its end with what the agent says it wrote (``agent``: its audit status).
    ``reread`` asks the agent again (its audit status) when the disk is ahead of it.
    Raises :class:`AuditUnstableError` when no stable snapshot could be had."""
    from agent.daemon.audit_verify import verify_directory  # noqa: PLC0415 - only for doctor

    checked = verify_directory(directory)
    if not checked.stable:
        raise AuditUnstableError(
            "could not get a stable snapshot of a log that is being written (try again)"
        )
    result, state = checked.result, checked.state
    bad = result.first_bad
    if bad is not None:
        return False, f"{directory / bad.file}:{bad.line}: {bad.reason}"
    if state is None and result.records:
        return False, "the chain is intact but audit.state is missing (the end is unproven)"
    if result.gaps:
        gap = result.gaps[0]
        return False, f"{directory / gap.file}:{gap.line}: the agent recorded a gap: {gap.reason}"
    behind = _agent_ahead_of_disk(agent or {}, result)
    if behind is None and _disk_ahead(agent or {}, result):
        # Read after the status, the disk may be ahead of what the agent last told us:
        # ask again. An agent that still has not reached the disk's end did not write it.
        # Without an answer the first status stands (the disk is still ahead of it).
        again = (reread() if reread is not None else None) or agent
        behind = _agent_ahead_of_disk(again or {}, result, after_reread=True)
    if behind:
        return False, behind
    unverified = (
        f"; {len(result.before_base)} file(s) before the chain's base not verified"
        if result.before_base
        else ""
    )
    return True, f"{result.records} record(s) in {result.files} file(s) verified{unverified}"


def _disk_ahead(agent: Mapping[str, Any], result: Any) -> bool:
    seq = agent.get("sequence")
    return isinstance(seq, int) and (result.last_sequence or 0) > seq


def _agent_ahead_of_disk(
    agent: Mapping[str, Any], result: Any, *, after_reread: bool = False
) -> str | None:
    """The agent's own sequence and last hash against the chain on disk (read after the
    status, so the disk may only be ahead): records the agent wrote that are not on disk
    went to a deleted file; another hash at its sequence means the tail was rewritten.
    ``after_reread``: this status was read *after* the disk, so a disk still ahead of it
    holds records the agent did not write."""
    seq, last = agent.get("sequence"), agent.get("last_hash")
    if not isinstance(seq, int) or not isinstance(last, str):
        return None
    on_disk = result.last_sequence or 0
    if on_disk < seq:
        if after_reread:
            return None  # the agent wrote on since the disk was read: nothing to say
        return (
            f"the agent has written {seq - on_disk} record(s) (up to sequence {seq}) that "
            f"are not in the log on disk (it ends at {on_disk}): its file was deleted or "
            "replaced under it"
        )
    if on_disk == seq and result.last_hash and result.last_hash != last:
        return (
            f"the record at sequence {seq} on disk is not the one the agent wrote (its hash "
            "differs): the log was rewritten"
        )
    if after_reread and on_disk > seq:
        return (
            f"the log on disk runs {on_disk - seq} record(s) past the agent's last record "
            f"(sequence {seq}, asked again after reading the disk): the agent did not "
            "write them"
        )
    return None


def check_audit(
    audit: object, reread: Callable[[], Mapping[str, Any] | None] | None = None
) -> list[Check]:
    name = "audit log"
    if not isinstance(audit, dict):
        return [Check(name, SKIP, "the agent does not report an audit log")]
    directory = audit.get("dir")
    where = f" in {directory}" if directory else ""
    if audit.get("healthy"):
        checks = [Check(name, OK, f"writing{where}")]
    elif audit.get("integrity") and audit.get("writable", True):
        checks = [
            Check(
                name,
                FAIL,
                f"records were lost{where}: {audit.get('integrity')}",
                "find out who deleted or changed the audit files (only the agent may write "
                "them; rotation is the agent's own); `pullgate audit verify` shows the gap",
            )
        ]
    else:
        lost = audit.get("lost_records")
        checks = [
            Check(
                name,
                FAIL,
                f"cannot write{where}: {audit.get('failing') or 'not open'} "
                f"(since {audit.get('failing_since')}, {lost} record(s) lost; pulls follow "
                f"audit_failure={audit.get('audit_failure')})",
                f"free disk space and make{where or ' the audit directory'} writable by the "
                "agent; it resumes by itself",
            )
        ]
    checks.append(check_audit_chain(Path(directory) if directory else None, audit, reread))
    return checks


def _audit_status_again(control: str | None) -> Mapping[str, Any] | None:
    """The agent's audit status, asked again (after the disk was read)."""
    try:
        audit = fetch_status(control)[1].get("audit")
    except ControlError:
        return None
    return audit if isinstance(audit, dict) else None


def check_audit_chain(
    directory: Path | None,
    agent: Mapping[str, Any] | None = None,
    reread: Callable[[], Mapping[str, Any] | None] | None = None,
) -> Check:
    name = "audit chain intact"
    fix = "run `pullgate audit verify` and report the named line to IT"
    if directory is None:
        return Check(name, SKIP, "the agent reports no audit directory")
    try:
        outcome = verify_audit_dir(directory, agent, reread)
    except AuditUnstableError as e:
        return Check(name, SKIP, f"{directory}: {e}")
    except PermissionError:
        return Check(name, SKIP, f"cannot read {directory} as this user; run doctor as root")
    except (OSError, ValueError) as e:
        return Check(name, FAIL, f"cannot verify {directory}: {e}", fix)
    ok, detail = outcome
    return Check(name, OK, detail) if ok else Check(name, FAIL, detail, fix)


DOCKER_DEFAULT_SOCKET = Path("/var/run/docker.sock")


DOCKER_DAEMON_JSON = Path("/etc/docker/daemon.json")


def dockerd_command_lines() -> list[list[str]]:
    """The command lines of the running dockerd processes (psutil; none it cannot read)."""
    import psutil  # noqa: PLC0415 - only doctor pays for it

    found: list[list[str]] = []
    for process in psutil.process_iter(["name", "cmdline"]):
        info = process.info
        if info.get("name") == "dockerd" and info.get("cmdline"):
            found.append(list(info["cmdline"]))
    return found


def _daemon_json(path: Path) -> dict[str, Any] | None:
    try:
        data = strict_json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_enforcement(
    listen: Path,
    upstream: Path,
    *,
    load: Callable[[], Any] = load_managed_config,
    default_socket: Path = DOCKER_DEFAULT_SOCKET,
    dockerd_argvs: Callable[[], list[list[str]]] = dockerd_command_lines,
    daemon_json: Path = DOCKER_DAEMON_JSON,
) -> Check:
    """The managed config's ``enforcement`` and, for ``takeover``, that it is in place:
    the Docker socket everyone uses leads to the shim and dockerd's own is root's only."""
    name = "enforcement"
    try:
        config = load()
    except ConfigError as e:
        return Check(name, FAIL, str(e), "fix the managed config, then restart the agent")
    mode = config.enforcement if config is not None else Enforcement.CONTEXT
    if mode is Enforcement.CONTEXT:
        return Check(
            name,
            OK,
            "context: docker reaches the agent through a docker context or DOCKER_HOST "
            "(see 'docker uses the shim'); the daemon's own socket stays open to its users",
        )
    fix = (
        "reinstall the pullgate package (its drop-in for docker.socket moves dockerd's "
        "socket), then `systemctl restart docker.socket docker.service pullgate-agent`"
    )
    if not same_file(default_socket, listen):
        return Check(
            name,
            FAIL,
            f"takeover, but {default_socket} is not the agent's socket {listen}: "
            "clients that use the default socket bypass the policy",
            fix,
        )
    try:
        st = upstream.stat()
    except OSError as e:
        return Check(name, FAIL, f"takeover, but dockerd's socket {upstream}: {e.strerror}", fix)
    group_can = st.st_mode & 0o060 and st.st_gid != 0
    if st.st_uid != 0 or st.st_mode & 0o006 or group_can:
        return Check(
            name,
            FAIL,
            f"takeover, but dockerd's socket {upstream} is open to others "
            f"(owner {st.st_uid}, group {st.st_gid}, mode {st.st_mode & 0o777:o})",
            fix,
        )
    config_hosts = _daemon_json(daemon_json)
    extra: list[str] = []
    for argv in dockerd_argvs() or [["dockerd"]]:
        for host in extra_listeners(dockerd_hosts(argv, config_hosts), str(upstream)):
            if host not in extra:
                extra.append(host)
    if extra:
        return Check(
            name,
            FAIL,
            f"takeover, but dockerd also listens on {', '.join(extra)}: whoever reaches "
            "that bypasses the policy",
            "remove the other listeners: -H in DOCKER_OPTS (/etc/default/docker) or in a "
            f"docker.service drop-in, `hosts` in {daemon_json}; then restart docker",
        )
    return Check(
        name,
        OK,
        f"takeover: {default_socket} is the agent's socket; dockerd listens on {upstream}, "
        "for root only, and nowhere else",
    )


def check_direct_clients(upstream: Path, agent_pid: object) -> Check:
    """Processes other than dockerd, containerd and the agent connected to dockerd's own
    socket (the bypass monitor's scan, run here): each could pull around the policy."""
    name = "nothing else reaches dockerd"
    from agent.daemon.bypass import socket_clients  # noqa: PLC0415 - psutil, only here

    own = {agent_pid} if isinstance(agent_pid, int) else set()
    try:
        clients = socket_clients(upstream, exclude_pids={os.getpid(), *own})
    except OSError as e:
        return Check(name, SKIP, f"cannot list the clients of {upstream}: {e}")
    if clients:
        listed = ", ".join(f"{c.name or '?'} (pid {c.pid})" for c in clients[:10])
        return Check(
            name,
            FAIL,
            f"connected to unix://{upstream} directly: {listed}",
            "find out why these processes use the daemon's socket; point them at the agent",
        )
    if sys.platform != "win32" and os.geteuid() == 0:
        return Check(name, OK, f"no process but dockerd, containerd and the agent on {upstream}")
    return Check(name, SKIP, "only root can see other users' connections; run as root")


def _desktop_rows(desktop: Mapping[str, Any]) -> list[str]:
    """Docker Desktop mode in ``pullgate status``: the rescan, then a row per user."""
    rows = []
    if not desktop.get("running") or desktop.get("failing"):
        rows.append(
            _row(
                "desktop",
                f"rescan {'running' if desktop.get('running') else 'STOPPED'}, "
                f"{desktop.get('errors')} error(s), last: {desktop.get('last_error')}",
            )
        )
    endpoints = [e for e in desktop.get("endpoints") or [] if isinstance(e, dict)]
    if not endpoints:
        rows.append(_row("desktop", f"no user logged in to serve ({desktop.get('users_dir')})"))
    for e in endpoints:
        line = f"{_url(e.get('listen'))} -> {_url(e.get('upstream'))}; context {e.get('context')}"
        for problem in ("upstream_problem", "context_error"):
            if e.get(problem):
                line += f"; {e[problem]}"
        rows.append(_row(f"user {e.get('user')}", line))
    return rows


def _desktop_endpoint(desktop: Mapping[str, Any], who: Principal) -> dict[str, Any] | None:
    for endpoint in desktop.get("endpoints") or []:
        if isinstance(endpoint, dict) and _serves(endpoint, who):
            return endpoint
    return None


def _serves(endpoint: Mapping[str, Any], who: Principal) -> bool:
    """Whether a Desktop endpoint is ``who``'s: by uid, or by SID from a Windows agent."""
    return who in (endpoint.get("uid"), endpoint.get("sid"))


def _owner(endpoint: Mapping[str, Any]) -> object:
    """An endpoint's user as a key: its uid, or (an agent on Windows) its SID."""
    return endpoint.get("uid") if "uid" in endpoint else endpoint.get("sid")


def check_desktop(desktop: Mapping[str, Any], who: Principal) -> list[Check]:
    """Docker Desktop mode: the rescan runs; each endpoint (the caller's own, or all for
    root) reaches its user's own Docker Desktop, has its context, and is watched. ``who``:
    the caller's uid, or on Windows their SID."""
    fix = "see the agent's log (`pullgate status`) and the audit log's desktop notices"
    checks: list[Check] = []
    name = "desktop endpoints"
    endpoints = [e for e in desktop.get("endpoints") or [] if isinstance(e, dict)]
    if not desktop.get("running"):
        checks.append(
            Check(
                name, FAIL, f"the agent stopped following logins: {desktop.get('last_error')}", fix
            )
        )
    elif desktop.get("failing"):
        checks.append(
            Check(
                name,
                FAIL,
                f"the last rescan failed ({desktop.get('errors')} so far): "
                f"{desktop.get('last_error')}",
                fix,
            )
        )
    else:
        served = ", ".join(f"{e.get('user')} ({_owner(e)})" for e in endpoints) or "nobody"
        users_dir = desktop.get("users_dir")
        where = f" in {users_dir}" if users_dir is not None else ""  # None: Windows's pipes
        checks.append(Check(name, OK, f"enforcement: desktop; serving {served}{where}"))
    privileges = [str(p) for p in desktop.get("privilege_problems") or []]
    if privileges:
        checks.append(
            Check(
                "agent's privileges for Desktop mode",
                FAIL,
                "; ".join(privileges),
                "add the systemd drop-in of docs/deploy/linux.md (Docker Desktop for Linux), "
                "then `systemctl daemon-reload` and `systemctl restart pullgate-agent`",
            )
        )
    if who != 0:
        endpoints = [e for e in endpoints if _serves(e, who)]
        if not endpoints:
            whom = who if isinstance(who, str) else f"uid {who}"
            checks.append(
                Check(
                    "your endpoint",
                    FAIL,
                    f"the agent serves no endpoint for {whom} (not seen logged in yet?)",
                    "log out and in again; if it persists, tell your IT administrator",
                )
            )
    # The programs the agent accepts as Docker Desktop (desktop_executables): doctor asks
    # the same of each listener as the agent does.
    listed = desktop.get("executables")
    executables = [str(x) for x in listed] if isinstance(listed, list) and listed else None
    for e in endpoints:
        user = f"{e.get('user')} ({_owner(e)})"
        if e.get("upstream_problem"):
            checks.append(
                Check(
                    f"Docker Desktop of {user}",
                    FAIL,
                    str(e["upstream_problem"]),
                    _upstream_fix_desktop(e.get("upstream")),
                )
            )
        elif sys.platform == "win32":
            checks.append(
                Check(
                    f"Docker Desktop of {user}",
                    SKIP,
                    f"not pinged from here on Windows; the agent checks who serves "
                    f"{e.get('upstream')} on each connection and reports no problem",
                )
            )
        else:
            owner = e.get("uid")
            checks.append(
                check_ping(
                    f"Docker Desktop of {user}",
                    Path(str(e.get("upstream"))),
                    fix,
                    listener_uid=owner if isinstance(owner, int) else -1,
                    listener_executables=executables,
                )
            )
        if e.get("context_error"):
            checks.append(Check(f"docker context of {user}", FAIL, str(e["context_error"]), fix))
        else:
            checks.append(Check(f"docker context of {user}", OK, str(e.get("context"))))
        checks.append(check_bypass_monitor(e.get("bypass_monitor")))
    return checks


def _upstream_fix_desktop(upstream: object) -> str:
    if sys.platform == "win32":
        return f"quit whatever else serves {upstream}, then restart Docker Desktop"
    else:
        return (
            f"make {upstream} Docker Desktop's own socket again (remove the link), then "
            "restart Docker Desktop"
        )


def check_bypass_monitor(monitor: object) -> Check:
    """The bypass watch runs, and its loops have not hit unexpected errors."""
    name = "bypass watch"
    if not isinstance(monitor, dict):
        return Check(name, SKIP, "not running in this agent (--no-watch) or not reported")
    fix = "see the agent's log and the audit log's bypass-suspected notices; restart the agent"
    if not monitor.get("running"):
        return Check(name, FAIL, "the bypass monitor has stopped", fix)
    if monitor.get("errors"):
        return Check(
            name,
            FAIL,
            f"{monitor['errors']} unexpected error(s), last: {monitor.get('last_error')}",
            fix,
        )
    if monitor.get("listener_problem"):
        return Check(
            name,
            FAIL,
            f"not following the daemon's events: {monitor['listener_problem']}",
            "make the Docker Desktop socket Desktop's own again: quit what listens there and "
            "restart Docker Desktop",
        )
    following = "following" if monitor.get("following_events") else "reconnecting to"
    return Check(name, OK, f"running, {following} the daemon's events")


def check_clock(status: Mapping[str, Any]) -> Check:
    name = "clock sane"
    fix = "turn on time synchronisation (e.g. `timedatectl set-ntp true`)"
    if status.get("clock_behind"):
        return Check(name, FAIL, "the system clock is behind the newest accepted policy", fix)
    issued = _dict(status.get("policy")).get("issued_at")
    if isinstance(issued, str):
        try:
            issued_at = datetime.fromisoformat(issued.replace("Z", "+00:00")).timestamp()
        except ValueError:
            issued_at = None
        if issued_at is not None and issued_at > time.time() + 300:
            return Check(
                name, FAIL, f"the policy was issued at {issued}, which is in the future", fix
            )
    return Check(name, OK, "not behind the policy's issue time")
