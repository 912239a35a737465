"""The signed org policy end to end (issue 4, "Done when"): a running `pullgate agent` in front
of the real dockerd fetches envelopes from a real HTTPS server on 127.0.0.1.

Each test writes a managed config (`--config`) whose `policy_url` points at a
`tests.policy_server.PolicyServer`, with the test CA as `ca_bundle` and Ed25519 keys made in
the test as `trusted_keys`. `refresh_interval` is an hour, so nothing is fetched behind a
test's back: the agent fetches once at start and then when asked (`pullgate policy refresh`,
which sends SIGHUP). What the agent enforces is read back three ways: `pullgate policy status
--json`, its stderr JSON lines (`"type": "policy"` and `"type": "decision"`), and real pulls
through the shim.

Policies: serial 1 and 2 deny the community image someuser/tool (org `acme`, verifiedco a
verified publisher); the envelopes that must be refused would allow it, so a refusal that
did not happen would show in the pull.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core.policy.envelope import PublicKey, sign_envelope
from agent.daemon.policy_manager import read_status
from bench.realdocker import DockerEnv, docker
from tests.agent_process import (
    AgentProcess,
    LineStream,
    describe,
    docker_popen_with,
    docker_via,
    reap,
    shim_environ,
    shim_policy,
    start_agent,
)
from tests.policy_server import PolicyServer, Route, TLSMaterial

pytestmark = pytest.mark.usefixtures("seeded")

TOOL = "someuser/tool"
TOOL_CANONICAL = "docker.io/someuser/tool:latest"
DENIED_MESSAGE = "Error response from daemon: pullgate:"
WAIT = 15.0
"""The longest any single wait for the agent takes (status, records, fetches)."""
MAX_BYTES = 4096
"""policy_max_bytes in every config: well above the signed test policies (~1 KB)."""

ALLOW_TOOL = [{"id": "tool-ok", "match": TOOL, "action": "allow"}]


# --------------------------------------------------------------------------- policies


def rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def policy_doc(serial: int, *, allow_tool: bool = False, **overrides: Any) -> dict[str, Any]:
    """The shim tests' policy (community denied, verifiedco verified) at `serial`."""
    extra: dict[str, Any] = {"serial": serial, "description": f"test policy serial {serial}"}
    if allow_tool:
        extra["rules"] = ALLOW_TOOL
    extra.update(overrides)
    return shim_policy(**extra)


def sign(document: dict[str, Any] | bytes, *keys: Ed25519PrivateKey) -> bytes:
    payload = document if isinstance(document, bytes) else json.dumps(document).encode()
    return sign_envelope(payload, list(keys))


def show(value: object) -> str:
    """A status or record for a failure message, whole (pytest would shorten a dict)."""
    return json.dumps(value, indent=1)


def trusted(*keys: Ed25519PrivateKey) -> list[str]:
    return [PublicKey.from_key(k).to_config() for k in keys]


# --------------------------------------------------------------------------- the agent


@dataclass
class OrgAgent:
    """An agent run from a managed config and state dir; restartable with another config."""

    env: DockerEnv
    base: Path
    state_dir: Path
    config: dict[str, Any]
    process: AgentProcess | None = None
    started: list[AgentProcess] = field(default_factory=list)

    @property
    def agent(self) -> AgentProcess:
        assert self.process is not None, "the agent is not running"
        return self.process

    def write_config(self, **changes: Any) -> Path:
        self.config.update(changes)
        path = self.base / f"config-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(self.config, indent=2) + "\n")
        return path

    def start(self, *, wait: bool = True, **config_changes: Any) -> AgentProcess:
        """Start with the config (plus changes); return once the first fetch is reported
        (unless not `wait`)."""
        assert self.process is None, "stop the running agent first"
        config_path = self.write_config(**config_changes)
        process = start_agent(
            self.base,
            self.env.socket_path,
            None,
            ["--config", str(config_path), "--state-dir", str(self.state_dir)],
        )
        self.process = process
        self.started.append(process)
        if not wait:
            return process
        self.wait_status(
            lambda s: s.get("last_fetch_at") is not None and s.get("pid") == self._pid(),
            "the first fetch of the started agent",
        )
        return process

    def _pid(self) -> int | None:
        try:
            return int((self.state_dir / "agent.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.stop()

    def kill_all(self) -> None:
        for process in self.started:
            process.kill()

    # -- status ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return read_status(self.state_dir) or {}

    def wait_status(
        self, condition: Callable[[dict[str, Any]], bool], what: str, timeout: float = WAIT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if condition(status):
                return status
            if time.monotonic() > deadline:
                tail = self.process.stderr_tail() if self.process else "<not running>"
                raise AssertionError(
                    f"waited {timeout:.0f} s for {what}; status: {json.dumps(status, indent=1)}"
                    f"\nagent stderr tail:\n{tail}"
                )
            time.sleep(0.05)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`pullgate policy ARGS --state-dir DIR`."""
        return subprocess.run(
            [sys.executable, "-m", "agent", "policy", *args, "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            timeout=WAIT * 2,
            check=False,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def cli_status(self) -> tuple[int, dict[str, Any]]:
        """`pullgate policy status --json`: exit code and the status object."""
        result = self.cli("status", "--json")
        assert result.stdout.startswith("{"), describe(result, self.process)
        status = json.loads(result.stdout)
        assert isinstance(status, dict)
        return result.returncode, status

    def refresh(self) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        """`pullgate policy refresh`; the status of a fetch that started after the request."""
        asked = datetime.now(UTC)
        result = self.cli("refresh")
        status = self.wait_status(
            lambda s: (
                bool(s.get("last_fetch_at")) and datetime.fromisoformat(s["last_fetch_at"]) >= asked
            ),
            "a fetch after `pullgate policy refresh`",
        )
        return result, status

    # -- records --------------------------------------------------------------------

    def wait_policy_record(
        self, action: str, contains: str, since: int = 0, timeout: float = WAIT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for record in self.agent.records(since):
                if (
                    record.get("type") == "policy"
                    and record.get("action") == action
                    and contains in str(record.get("reason"))
                ):
                    return record
            if time.monotonic() > deadline:
                policy_records = [r for r in self.agent.records(since) if r.get("type") == "policy"]
                raise AssertionError(
                    f"no {action} policy record containing {contains!r} within {timeout:.0f} s;"
                    f" policy records: {json.dumps(policy_records, indent=1)}"
                )
            time.sleep(0.05)

    # -- pulls ----------------------------------------------------------------------

    def pull(self, image: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        """`docker pull IMAGE` through the shim, and the agent's decision record for it."""
        mark = self.agent.mark()
        result = docker_via(self.agent, self.env, "pull", image)
        canonical = image if "/" in image else f"library/{image}"
        canonical = f"docker.io/{canonical}:latest"
        record = self.agent.wait_for_decision(
            lambda r: r.get("image") == canonical and r.get("action") == "image-pull", since=mark
        )
        return result, record

    def assert_denied(self, image: str, serial: int) -> dict[str, Any]:
        result, record = self.pull(image)
        assert result.returncode != 0, describe(result, self.agent)
        assert DENIED_MESSAGE in result.stderr, describe(result, self.agent)
        assert record["decision"] == "deny", show(record)
        assert record["policy_serial"] == serial, show(record)
        return record

    def assert_allowed(self, image: str, serial: int, decision: str = "allow") -> dict[str, Any]:
        result, record = self.pull(image)
        assert result.returncode == 0, describe(result, self.agent)
        assert record["decision"] == decision, show(record)
        assert record["policy_serial"] == serial, show(record)
        return record


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return TLSMaterial.create(tmp_path_factory.mktemp("policy-tls"))


@pytest.fixture
def server(tls: TLSMaterial) -> Iterator[PolicyServer]:
    with PolicyServer(tls) as policy_server:
        yield policy_server


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    return {name: Ed25519PrivateKey.generate() for name in ("k1", "k2", "stranger")}


@pytest.fixture
def org(
    docker_env: DockerEnv,
    tmp_path: Path,
    server: PolicyServer,
    tls: TLSMaterial,
    keys: dict[str, Ed25519PrivateKey],
) -> Iterator[OrgAgent]:
    """An agent (not started) trusting k1 and k2 (threshold 1) for org acme."""
    config: dict[str, Any] = {
        "org": "acme",
        "policy_url": server.url(),
        "ca_bundle": str(tls.ca_cert),
        "trusted_keys": trusted(keys["k1"], keys["k2"]),
        "key_threshold": 1,
        "refresh_interval": "1h",
        "fetch_timeout": "2s",
        "policy_max_bytes": MAX_BYTES,
    }
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    subject = OrgAgent(docker_env, tmp_path / "agents", state_dir, config)
    (tmp_path / "agents").mkdir()
    yield subject
    try:
        subject.stop()
    finally:
        subject.kill_all()


# --------------------------------------------------------------------------- refresh


@pytest.mark.usefixtures("alpine_local", "denied_image_absent")
def test_a_new_policy_decides_the_next_pull_while_logs_follow_keeps_streaming(
    org: OrgAgent,
    server: PolicyServer,
    keys: dict[str, Ed25519PrivateKey],
    docker_env: DockerEnv,
    container_name: str,
) -> None:
    server.publish(sign(policy_doc(1), keys["k1"]))
    org.start()
    assert org.status()["serial"] == 1
    org.assert_denied(TOOL, serial=1)
    script = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"
    docker(
        docker_env,
        *("run", "--detach", "--network", "none", "--name", container_name),
        *("alpine", "sh", "-c", script),
    )
    follower = docker_popen_with(
        shim_environ(org.agent, docker_env),
        *("logs", "-f", container_name),
        cli=docker_env.docker_cli,
    )
    try:
        assert follower.stdout is not None
        stream = LineStream(follower.stdout)
        for _ in range(3):
            assert stream.next(timeout=10) is not None

        server.publish(sign(policy_doc(2, allow_tool=True), keys["k1"]))
        mark = org.agent.mark()
        result, status = org.refresh()
        swapped_at = len(stream.lines)

        assert result.returncode == 0, describe(result, org.agent)
        assert (status["serial"], status["source"], status["state"]) == (2, server.url(), "fresh")
        assert status["last_refusal"] is None
        assert status["last_fetch_error"] is None
        update = org.wait_policy_record("policy-update", "serial 2", since=mark)
        assert (update["serial"], update["outcome"]) == (2, "success")
        org.assert_allowed(TOOL, serial=2)
        for _ in range(5):
            line = stream.next(timeout=5)
            assert line is not None and line.startswith("tick "), stream.lines[-5:]
        assert len(stream.lines) >= swapped_at + 5
        assert follower.poll() is None, "docker logs -f ended at the policy swap"
        numbers = [int(line.split()[1]) for line in stream.lines]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "lines were lost"
    finally:
        reap(follower)


def test_an_unchanged_policy_is_revalidated_with_its_etag(
    org: OrgAgent, server: PolicyServer, keys: dict[str, Ed25519PrivateKey]
) -> None:
    server.publish(sign(policy_doc(1), keys["k1"]))
    org.start()

    result, status = org.refresh()

    assert result.returncode == 0, describe(result, org.agent)
    assert server.not_modified() == 1
    assert (status["serial"], status["state"], status["last_fetch_error"]) == (1, "fresh", None)


def test_a_refresh_asked_during_a_fetch_is_not_lost(
    org: OrgAgent, server: PolicyServer, keys: dict[str, Ed25519PrivateKey]
) -> None:
    # The first fetch stalls (less than fetch_timeout) and then gets serial 1.
    server.set(
        "/policy.dsse.json",
        Route(body=sign(policy_doc(1), keys["k1"]), stall=1.0),
    )
    org.start(wait=False)
    deadline = time.monotonic() + WAIT
    while server.requests() == 0:
        assert time.monotonic() < deadline, "the agent never fetched"
        time.sleep(0.02)
    server.publish(sign(policy_doc(2), keys["k1"]))

    org.cli("refresh")  # while the first fetch is still waiting for its answer

    status = org.wait_status(lambda s: s.get("serial") == 2, "serial 2", timeout=5)
    assert status["state"] == "fresh", show(status)
    assert server.requests() == 2


def test_status_reports_expiry_past_the_grace_without_any_pull(
    org: OrgAgent, server: PolicyServer, keys: dict[str, Ed25519PrivateKey]
) -> None:
    org.config["stale_behavior"] = "deny-all"
    _past_grace_offline(org, server, keys["k1"])

    code, status = org.cli_status()

    assert (status["serial"], status["state"]) == (1, "expired"), show(status)
    assert code == 1
    org.wait_policy_record("policy-state", "expired", timeout=2)


# --------------------------------------------------------------------------- refusals


@dataclass(frozen=True)
class BadPublication:
    """What the server publishes after serial 2, and how the agent must report it."""

    route: Callable[[dict[str, Ed25519PrivateKey], bytes], Route]
    """From the keys and the envelope of serial 1 (accepted earlier)."""
    reported_in: str  # last_refusal | last_fetch_error
    reason: str  # a part of the reported reason
    config: dict[str, Any] = field(default_factory=dict)
    certificate: str = "good"


def _bad_signature(keys: dict[str, Ed25519PrivateKey], _: bytes) -> Route:
    envelope = json.loads(sign(policy_doc(3, allow_tool=True), keys["k1"]))
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[10] ^= 0x40
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return Route.envelope(json.dumps(envelope).encode())


def _signed_by(
    *names: str, serial: int = 3, **overrides: Any
) -> Callable[[dict[str, Ed25519PrivateKey], bytes], Route]:
    """A policy at `serial` allowing someuser/tool, signed with the keys `names`."""

    def route(keys: dict[str, Ed25519PrivateKey], _: bytes) -> Route:
        document = policy_doc(serial, allow_tool=True, **overrides)
        return Route.envelope(sign(document, *(keys[name] for name in names)))

    return route


def _oversized(content_length: bool) -> Callable[[dict[str, Ed25519PrivateKey], bytes], Route]:
    def route(keys: dict[str, Ed25519PrivateKey], _: bytes) -> Route:
        document = policy_doc(3, allow_tool=True, description="x" * MAX_BYTES)
        data = sign(document, keys["k1"])
        assert len(data) > MAX_BYTES
        return Route(body=data, etag='"big"', content_length=content_length)

    return route


NOW = time.time()
BAD_PUBLICATIONS = {
    "bad signature": BadPublication(_bad_signature, "last_refusal", "bad signature"),
    "unknown key": BadPublication(_signed_by("stranger"), "last_refusal", "unknown keys"),
    "too few signatures": BadPublication(
        _signed_by("k1"),
        "last_refusal",
        "2 valid signatures needed, got 1",
        config={"key_threshold": 2},
    ),
    "another org": BadPublication(_signed_by("k1", org="globex"), "last_refusal", "'globex'"),
    "lower serial": BadPublication(
        _signed_by("k1", serial=1), "last_refusal", "rollback: serial 1 is lower"
    ),
    "replayed old envelope": BadPublication(
        lambda _, first: Route.envelope(first), "last_refusal", "rollback: serial 1 is lower"
    ),
    "future issued_at": BadPublication(
        _signed_by("k1", issued_at=rfc3339(NOW + 3600)), "last_refusal", "in the future"
    ),
    "expired": BadPublication(
        _signed_by("k1", issued_at=rfc3339(NOW - 40 * 86400), expires_at=rfc3339(NOW - 30 * 86400)),
        "last_refusal",
        "beyond the offline grace",
    ),
    "invalid JSON": BadPublication(
        lambda keys, _: Route.envelope(sign(policy_doc(3, allow_tool=True), keys["k1"])[:-40]),
        "last_refusal",
        "not a DSSE envelope",
    ),
    "signed payload not JSON": BadPublication(
        lambda keys, _: Route.envelope(sign(b'{"serial": 3, "org": "acme"', keys["k1"])),
        "last_refusal",
        "not a valid policy",
    ),
    "oversized body": BadPublication(_oversized(True), "last_fetch_error", "limit of 4096"),
    "oversized body without length": BadPublication(
        _oversized(False), "last_fetch_error", "larger than the limit of 4096"
    ),
    "404": BadPublication(lambda *_: Route(status=404), "last_fetch_error", "HTTP 404"),
    "500": BadPublication(lambda *_: Route(status=500), "last_fetch_error", "HTTP 500"),
    "stalled server": BadPublication(
        lambda *_: Route(stall=10), "last_fetch_error", "stalled past the read timeout"
    ),
    "certificate for another host": BadPublication(
        lambda keys, _: Route.envelope(sign(policy_doc(3, allow_tool=True), keys["k1"])),
        "last_fetch_error",
        "TLS verification",
        certificate="wrong",
    ),
}


@pytest.mark.usefixtures("denied_image_absent")
@pytest.mark.parametrize("case", list(BAD_PUBLICATIONS))
def test_a_bad_publication_is_refused_and_the_last_good_policy_stays(
    org: OrgAgent, server: PolicyServer, keys: dict[str, Ed25519PrivateKey], case: str
) -> None:
    bad = BAD_PUBLICATIONS[case]
    both = (keys["k1"], keys["k2"])
    first = sign(policy_doc(1), *both)
    server.publish(first)
    org.start(**bad.config)
    server.publish(sign(policy_doc(2), *both))
    org.refresh()
    assert org.status()["serial"] == 2
    server.set("/policy.dsse.json", bad.route(keys, first))
    if bad.certificate == "wrong":
        server.use_certificate("wrong")
    mark = org.agent.mark()
    started = time.monotonic()

    result, _ = org.refresh()

    took = time.monotonic() - started
    assert result.returncode == 1, describe(result, org.agent)  # refused or failed alike
    code, status = org.cli_status()
    assert bad.reason in str(status[bad.reported_in]), show(status)
    # The policy stays fresh, but a refused download is a refresh that failed: IT must
    # learn that agents stopped taking updates (exit 1). An offline laptop is not (exit 0).
    refused = bad.reported_in == "last_refusal"
    assert (code, status["serial"], status["source"], status["state"]) == (
        1 if refused else 0,
        2,
        server.url(),
        "fresh",
    ), show(status)
    action = "policy-refused" if refused else "policy-fetch-failed"
    record = org.wait_policy_record(action, bad.reason, since=mark)
    assert record["outcome"] == "failure"
    assert not [r for r in org.agent.records(mark) if r.get("action") == "policy-update"], (
        "a refused policy was installed"
    )
    org.assert_denied(TOOL, serial=2)
    assert took < WAIT, f"the refused fetch took {took:.1f} s"
    if bad.certificate == "wrong":
        assert server.tls_failures >= 1


# --------------------------------------------------------------------------- offline


@pytest.mark.usefixtures("denied_image_absent")
def test_offline_the_restarted_agent_enforces_the_cached_policy(
    org: OrgAgent, server: PolicyServer, keys: dict[str, Ed25519PrivateKey]
) -> None:
    served = sign(policy_doc(1), keys["k1"])
    server.publish(served)
    org.start()
    org.stop()
    server.stop()

    org.start()

    code, status = org.cli_status()
    assert (status["serial"], status["source"], status["state"]) == (1, "cache", "fresh"), show(
        status
    )
    assert "cannot connect" in str(status["last_fetch_error"]), show(status)
    assert status["last_refusal"] is None
    assert code == 0
    assert (org.state_dir / "policy.envelope").read_bytes() == served
    # verifiedco/db is a verified publisher only in the org policy (the built-in default
    # does not know the namespace): allowed by the cached policy, denied by the default.
    org.assert_allowed("verifiedco/db", serial=1)
    org.assert_denied(TOOL, serial=1)


def _past_grace_offline(org: OrgAgent, server: PolicyServer, key: Ed25519PrivateKey) -> None:
    """Accept a policy that expires in ~3 s with a 1 s grace, go offline, wait past both."""
    expires = int(time.time()) + 4
    server.publish(
        sign(policy_doc(1, issued_at=rfc3339(expires - 60), expires_at=rfc3339(expires)), key)
    )
    org.start(offline_grace="1s")
    status = org.status()
    assert (status["serial"], status["state"]) == (1, "fresh"), show(status)
    server.stop()
    # The agent re-judges at the boundary on a timer; on a loaded 2-core machine that
    # timer can run late, so wait well past it before asking.
    time.sleep(max(0.0, expires + 2.5 - time.time()))


def _enforce_last(org: OrgAgent) -> None:
    org.assert_denied(TOOL, serial=1)
    org.assert_allowed("alpine", serial=1)


def _monitor(org: OrgAgent) -> None:
    org.assert_allowed(TOOL, serial=1, decision="would_deny")
    org.assert_allowed("alpine", serial=1)


def _deny_all(org: OrgAgent) -> None:
    org.assert_denied("alpine", serial=1)


STALE_CHECKS: dict[str, Callable[[OrgAgent], None]] = {
    "enforce-last": _enforce_last,
    "monitor": _monitor,
    "deny-all": _deny_all,
}
"""What each stale_behavior does to real pulls once the policy is past expiry plus grace."""


@pytest.mark.usefixtures("denied_image_absent")
@pytest.mark.parametrize("behavior", list(STALE_CHECKS))
def test_past_the_grace_the_running_agent_applies_stale_behavior(
    org: OrgAgent, server: PolicyServer, keys: dict[str, Ed25519PrivateKey], behavior: str
) -> None:
    org.config["stale_behavior"] = behavior
    _past_grace_offline(org, server, keys["k1"])

    STALE_CHECKS[behavior](org)

    record = org.agent.decisions()[-1]
    assert f"stale_behavior {behavior}" in record["policy"], show(record)
    code, status = org.cli_status()
    assert (status["serial"], status["state"], status["stale_behavior"]) == (
        1,
        "expired",
        behavior,
    ), show(status)
    assert code == 1


@pytest.mark.usefixtures("denied_image_absent")
@pytest.mark.parametrize("behavior", list(STALE_CHECKS))
def test_past_the_grace_a_restarted_offline_agent_applies_stale_behavior(
    org: OrgAgent, server: PolicyServer, keys: dict[str, Ed25519PrivateKey], behavior: str
) -> None:
    org.config["stale_behavior"] = behavior
    _past_grace_offline(org, server, keys["k1"])
    org.stop()

    org.start()

    code, status = org.cli_status()
    assert (status["serial"], status["source"], status["state"]) == (1, "cache", "expired"), show(
        status
    )
    assert code == 1
    STALE_CHECKS[behavior](org)
    record = org.agent.decisions()[-1]
    assert f"stale_behavior {behavior}" in record["policy"], show(record)


# --------------------------------------------------------------------------- cache on disk


def _flip_a_byte(envelope: bytes) -> bytes:
    data = bytearray(envelope)
    start = envelope.index(b'"payload":"') + len(b'"payload":"')
    position = start + 40
    data[position] = ord("A") if data[position] != ord("A") else ord("B")
    return bytes(data)


def _allow_community(envelope: bytes) -> bytes:
    """The payload rewritten to allow community images; the signatures left as they were."""
    document = json.loads(envelope)
    policy = json.loads(base64.b64decode(document["payload"]))
    policy["hub"]["community"] = "allow"
    document["payload"] = base64.b64encode(json.dumps(policy).encode()).decode()
    return json.dumps(document).encode()


@pytest.mark.usefixtures("denied_image_absent")
@pytest.mark.parametrize("edit", [_flip_a_byte, _allow_community], ids=["byte", "payload"])
def test_an_edited_cache_is_ignored_at_start(
    org: OrgAgent,
    server: PolicyServer,
    keys: dict[str, Ed25519PrivateKey],
    edit: Callable[[bytes], bytes],
) -> None:
    server.publish(sign(policy_doc(1), keys["k1"]))
    org.start()
    org.stop()
    server.stop()
    cache = org.state_dir / "policy.envelope"
    cache.write_bytes(edit(cache.read_bytes()))

    org.start()

    code, status = org.cli_status()
    assert status["state"] == "fallback", show(status)
    assert status["serial"] is None, show(status)
    assert "cached policy ignored" in str(status["last_refusal"]), show(status)
    assert code == 1
    record = org.wait_policy_record("policy-refused", "cached policy ignored")
    assert record["source"] == "cache"
    org.assert_denied(TOOL, serial=0)
    org.assert_denied("verifiedco/db", serial=0)


@pytest.mark.usefixtures("denied_image_absent")
def test_an_edited_cache_is_replaced_by_the_published_policy_at_start(
    org: OrgAgent, server: PolicyServer, keys: dict[str, Ed25519PrivateKey]
) -> None:
    served = sign(policy_doc(1), keys["k1"])
    server.publish(served)
    org.start()
    org.stop()
    cache = org.state_dir / "policy.envelope"
    cache.write_bytes(_allow_community(cache.read_bytes()))

    org.start()

    status = org.wait_status(lambda s: s.get("serial") == 1, "the refetched policy")
    assert (status["source"], status["state"]) == (server.url(), "fresh"), show(status)
    org.wait_policy_record("policy-refused", "cached policy ignored")
    assert cache.read_bytes() == served
    org.assert_denied(TOOL, serial=1)


# --------------------------------------------------------------------------- rotation


@pytest.mark.usefixtures("denied_image_absent")
def test_key_rotation_keeps_a_verified_org_policy_in_force_throughout(
    org: OrgAgent, server: PolicyServer, keys: dict[str, Ed25519PrivateKey]
) -> None:
    old, new = keys["k1"], keys["k2"]
    seen: list[dict[str, Any]] = []

    def check(serial: int) -> None:
        _, status = org.cli_status()
        seen.append(status)
        assert (status["serial"], status["state"]) == (serial, "fresh"), show(status)
        org.assert_denied(TOOL, serial=serial)
        org.assert_allowed("verifiedco/db", serial=serial)

    # 1. The config trusts the old and the new key; the org still signs with the old one.
    server.publish(sign(policy_doc(1), old))
    org.start(trusted_keys=trusted(old, new))
    check(1)
    # 2. The org signs with the new key only.
    server.publish(sign(policy_doc(2), new))
    result, _ = org.refresh()
    assert result.returncode == 0, describe(result, org.agent)
    check(2)
    # 3. The old key leaves the config: the restarted agent verifies its cache with the new key.
    org.stop()
    agent = org.start(trusted_keys=trusted(new))
    # The cache (serial 2, signed with the new key) verified; the server had nothing newer.
    assert org.status()["source"] == "cache", show(org.status())
    assert server.not_modified() == 1
    check(2)
    refusals = [r for r in agent.records() if r.get("action") == "policy-refused"]
    assert not refusals, refusals
    # The old key is really gone: a policy signed with it alone is refused now.
    server.publish(sign(policy_doc(3, allow_tool=True), old))
    org.refresh()
    assert "unknown keys" in str(org.status()["last_refusal"])
    check(2)
    assert all(s["state"] != "fallback" and s["org"] == "acme" for s in seen), show(seen)
