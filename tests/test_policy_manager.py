"""The policy manager against a real HTTPS policy server, without Docker (issue 10, 1-7).

`PolicyManager` with the real `Fetcher` and `PolicyCache` fetches from
`tests.policy_server.PolicyServer` on 127.0.0.1 with the test CA as `ca_bundle`. These are
the attacks of a hostile policy host or a local user who can write the state directory:
bytes that blow Python's stack, redirects off HTTPS, a missing CA file, a cache swapped for
another validly signed envelope, a cache deleted under its ETag, and the refresh loop
itself failing. Each must end in a refusal or a reported error, never a dead loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli.status_cmd import FAIL, check_policy, format_status
from agent.core.events import Event, NoticeEvent, PolicyEvent
from agent.core.policy.default import default_policy
from agent.core.policy.envelope import MAX_ENVELOPE_BYTES, PAYLOAD_TYPE, PublicKey, sign_envelope
from agent.core.policy.trust import TrustSettings
from agent.daemon.bus import DecisionSink
from agent.daemon.control_server import ControlServer
from agent.daemon.policy_cache import PolicyCache
from agent.daemon.policy_fetch import Fetcher, FetchError, FetchResult
from agent.daemon.policy_manager import PolicyManager, RefreshSettings, read_status
from tests.agent_process import AgentProcess, start_agent
from tests.policy_server import PolicyServer, Route, TLSMaterial

KEY = Ed25519PrivateKey.generate()
DEEP = b"[" * 40_000
"""40 KB of '[': json.loads raises RecursionError on it."""


def policy_bytes(serial: int, **overrides: Any) -> bytes:
    now = datetime.now(UTC).replace(microsecond=0)
    doc: dict[str, Any] = {
        "schema": "pullgate.policy/v1",
        "org": "acme",
        "serial": serial,
        "issued_at": (now - timedelta(hours=1)).isoformat(),
        "expires_at": (now + timedelta(days=1)).isoformat(),
    }
    doc.update(overrides)
    return json.dumps(doc).encode()


def envelope(serial: int, **overrides: Any) -> bytes:
    return sign_envelope(policy_bytes(serial, **overrides), [KEY])


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return TLSMaterial.create(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(tls: TLSMaterial) -> Iterator[PolicyServer]:
    with PolicyServer(tls) as s:
        yield s


@dataclass
class Agent:
    """A manager as the agent builds it, and every event it emitted."""

    manager: PolicyManager
    events: list[Event] = field(default_factory=list)

    def refusals(self) -> list[str]:
        return [
            e.reason
            for e in self.events
            if isinstance(e, PolicyEvent) and e.action == "policy-refused"
        ]

    def notices(self, action: str) -> list[NoticeEvent]:
        return [e for e in self.events if isinstance(e, NoticeEvent) and e.action == action]


def make_agent(state: Path, url: str, ca: Path | None, *, fetcher: Fetcher | None = None) -> Agent:
    events: list[Event] = []
    sink = DecisionSink()
    sink.subscribe(events.append)
    manager = PolicyManager(
        TrustSettings("acme", (PublicKey.from_key(KEY),)),
        PolicyCache(state),
        default_policy(),
        sink,
        fetcher=fetcher or Fetcher(url, ca_bundle=ca, connect_timeout=5, read_timeout=5),
        refresh=RefreshSettings(interval=timedelta(hours=1), min_backoff=timedelta(seconds=0.05)),
    )
    manager.load_cache()
    return Agent(manager, events)


def refresh(agent: Agent) -> str:
    return asyncio.run(agent.manager.refresh_now())


# --------------------------------------------------------------------------- 1. parsing


def test_deeply_nested_json_from_the_server_is_refused_and_the_policy_stays(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    server.publish(envelope(1))
    assert refresh(agent) == "accepted serial 1"
    server.publish(DEEP)
    result = refresh(agent)
    assert result.startswith("refused: signature check failed: not a DSSE envelope"), result
    assert "nested more than" in result
    assert agent.manager.current().serial == 1
    status = read_status(tmp_path)
    assert status is not None and "nested more than" in status["last_refusal"]


def test_a_signed_payload_nested_too_deeply_is_refused_as_invalid(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    server.publish(sign_envelope(DEEP, [KEY]))
    result = refresh(agent)
    assert result.startswith("refused: signed payload is not a valid policy"), result


@pytest.mark.parametrize("name", ["policy.envelope", "policy-state.json"])
def test_deeply_nested_bytes_in_the_cache_do_not_stop_the_start(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(DEEP)
    agent = make_agent(tmp_path, "https://127.0.0.1:9/p", None)
    assert agent.manager.source.startswith("built-in default")
    problems = agent.refusals()
    assert problems and "nested more than" in problems[0], problems


def test_a_status_file_that_is_not_json_reads_as_no_status(tmp_path: Path) -> None:
    for data in (DEEP, b"\xff\xfe", b'{"a": 1, "a": 2}', b"[]"):
        (tmp_path / "status.json").write_bytes(data)
        assert read_status(tmp_path) is None


def test_a_timestamp_that_overflows_is_refused_not_raised(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    server.publish(envelope(1, expires_at="9999-12-31T23:59:59Z"))
    result = refresh(agent)
    assert result.startswith("refused: signed payload is not a valid policy: expires_at"), result


@dataclass(frozen=True)
class FlakyFetcher(Fetcher):
    """Raises `errors` (one per fetch, in order) before fetching for real."""

    errors: list[BaseException] = field(default_factory=list)

    def fetch(self, etag: str | None = None) -> FetchResult:
        if self.errors:
            raise self.errors.pop(0)
        return super().fetch(etag)


def run_until(agent: Agent, done: Any, timeout: float = 10.0) -> None:
    """Run the refresh loop until `done()` holds, then cancel it."""

    async def main() -> None:
        task = asyncio.create_task(agent.manager.run())
        deadline = asyncio.get_running_loop().time() + timeout
        while not done():
            assert not task.done() or not task.cancelled(), "the loop was cancelled"
            if asyncio.get_running_loop().time() > deadline:
                task.cancel()
                raise AssertionError(f"timed out; status: {agent.manager.status()}")
            await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def test_the_refresh_loop_survives_an_unexpected_exception_and_retries(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    server.publish(envelope(3))
    fetcher = FlakyFetcher(
        server.url(), ca_bundle=tls.ca_cert, errors=[RecursionError("boom"), TypeError("bad")]
    )
    agent = make_agent(tmp_path, server.url(), tls.ca_cert, fetcher=fetcher)
    run_until(agent, lambda: agent.manager.source == server.url())
    assert agent.manager.current().serial == 3
    notices = agent.notices("policy-refresh-error")
    assert [n.severity for n in notices] == ["warning", "warning"]
    assert "RecursionError: boom" in notices[0].reason
    status = agent.manager.status()
    assert status["refresh_loop"] == "stopped"  # cancelled by the test, not dead
    assert status["refresh_failures"] == 0 and status["last_refresh_error"] is None


def test_a_refresh_loop_that_dies_says_so_in_status_doctor_and_a_notice(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    class Fatal(BaseException):
        pass

    fetcher = FlakyFetcher(server.url(), ca_bundle=tls.ca_cert, errors=[Fatal("gone")])
    agent = make_agent(tmp_path, server.url(), tls.ca_cert, fetcher=fetcher)

    async def main() -> None:
        with pytest.raises(Fatal):
            await agent.manager.run()

    asyncio.run(main())
    status = read_status(tmp_path)
    assert status is not None and status["refresh_loop"] == "dead", status
    assert "Fatal: gone" in status["last_refresh_error"]
    assert agent.notices("policy-refresh-stopped")
    check = check_policy(status)
    assert check.result == FAIL and "refresh loop" in check.detail, check
    summary = format_status(tmp_path / "control.sock", {"policy": status, "agent": {}})
    assert "loop dead" in summary and "Fatal: gone" in summary, summary
    # `pullgate policy status`, with the agent alive (this process stands in for it).
    (tmp_path / "agent.pid").write_text(f"{os.getpid()}\n")
    result = subprocess.run(
        [sys.executable, "-m", "agent", "policy", "status", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 1, result
    assert "loop dead" in result.stdout and "Fatal: gone" in result.stdout, result.stdout


def test_a_failing_refresh_makes_doctor_fail_even_with_a_fresh_policy(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    server.publish(envelope(1))
    refresh(agent)
    server.set("/policy.dsse.json", Route(status=500))
    with pytest.raises(FetchError):
        refresh(agent)
    status = agent.manager.status()
    assert status["state"] == "fresh"
    check = check_policy(status)
    assert check.result == FAIL and "HTTP 500" in check.detail, check


def test_a_control_api_refresh_answers_a_clean_error_for_an_unexpected_exception(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    fetcher = FlakyFetcher(server.url(), ca_bundle=tls.ca_cert, errors=[RecursionError("deep")])
    agent = make_agent(tmp_path, server.url(), tls.ca_cert, fetcher=fetcher)
    control = ControlServer(
        tmp_path / "control.sock", status=agent.manager.status, refresh=agent.manager.refresh_now
    )

    async def main() -> Exception:
        try:
            await control.run_refresh()
        except Exception as e:
            return e
        raise AssertionError("the refresh did not fail")

    error = asyncio.run(main())
    assert getattr(error, "status", None) == 502, repr(error)
    assert "RecursionError: deep" in str(error) and "Traceback" not in str(error)


# --------------------------------------------------------------------------- 2. redirects


def test_a_redirect_to_plain_http_is_refused(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    with PolicyServer(None) as plain:
        plain.publish(envelope(1))
        server.set("/policy.dsse.json", Route(status=302, location=plain.url()))
        agent = make_agent(tmp_path, server.url(), tls.ca_cert)
        with pytest.raises(FetchError, match=r"refusing a redirect .* HTTPS only"):
            refresh(agent)
        assert plain.requests() == 0
    assert agent.manager.source.startswith("built-in default")


def test_a_redirect_to_another_https_location_is_followed(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    server.publish(envelope(1), path="/moved.json")
    server.set("/policy.dsse.json", Route(status=301, location="/moved.json"))
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    assert refresh(agent) == "accepted serial 1"


def test_a_redirect_loop_ends_in_a_fetch_error(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    server.set("/policy.dsse.json", Route(status=307, location=server.url()))
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    with pytest.raises(FetchError, match="redirects"):
        refresh(agent)


# --------------------------------------------------------------------------- 3. ca_bundle


def test_a_missing_ca_bundle_is_a_fetch_error_and_the_loop_goes_on(
    server: PolicyServer, tmp_path: Path
) -> None:
    server.publish(envelope(1))
    agent = make_agent(tmp_path, server.url(), tmp_path / "missing-ca.pem")
    with pytest.raises(FetchError, match=r"ca_bundle .* does not exist"):
        refresh(agent)
    run_until(agent, lambda: agent.manager.refresh_failures >= 2)
    status = read_status(tmp_path)
    assert status is not None and "does not exist" in status["last_fetch_error"]


def test_a_ca_bundle_that_is_not_pem_is_a_fetch_error(server: PolicyServer, tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    server.publish(envelope(1))
    agent = make_agent(tmp_path, server.url(), bad)
    with pytest.raises(FetchError):
        refresh(agent)


# --------------------------------------------------------------------------- 5. cache + state


def test_a_cache_swapped_for_the_same_serial_with_other_content_is_refused(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    server.publish(envelope(2))
    assert refresh(agent) == "accepted serial 2"
    other = envelope(2, mode="monitor")  # validly signed, same serial, other content
    (tmp_path / "policy.envelope").write_bytes(other)
    restarted = make_agent(tmp_path, "https://127.0.0.1:9/offline", tls.ca_cert)
    assert restarted.manager.source.startswith("built-in default")
    assert "already accepted with different content" in (restarted.manager.last_refusal or "")


def test_a_cache_with_the_recorded_bytes_is_enforced_after_a_restart(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    server.publish(envelope(2))
    refresh(agent)
    restarted = make_agent(tmp_path, "https://127.0.0.1:9/offline", tls.ca_cert)
    assert restarted.manager.source == "cache"
    assert restarted.manager.current().serial == 2


# --------------------------------------------------------------------------- 6. ETag


def test_a_deleted_cache_is_fetched_whole_although_the_state_keeps_its_etag(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    data = envelope(4)
    server.publish(data)
    refresh(make_agent(tmp_path, server.url(), tls.ca_cert))
    state = json.loads((tmp_path / "policy-state.json").read_text())
    assert state["etag"], state
    (tmp_path / "policy.envelope").unlink()
    restarted = make_agent(tmp_path, server.url(), tls.ca_cert)
    assert refresh(restarted) == "accepted serial 4"
    assert restarted.manager.current().serial == 4
    assert server.not_modified() == 0
    assert (tmp_path / "policy.envelope").read_bytes() == data


def test_a_running_agent_refetches_a_cache_deleted_under_it(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    data = envelope(4)
    server.publish(data)
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    refresh(agent)
    assert refresh(agent) == "not modified"
    assert server.conditional_requests() == 1
    (tmp_path / "policy.envelope").unlink()
    assert refresh(agent) == "unchanged"
    assert server.conditional_requests() == 1
    assert hashlib.sha256((tmp_path / "policy.envelope").read_bytes()).digest() == (
        hashlib.sha256(data).digest()
    )


def test_a_304_to_an_unconditional_request_is_a_fetch_error(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    server.set("/policy.dsse.json", Route(status=304))
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    with pytest.raises(FetchError, match="304"):
        refresh(agent)


# --------------------------------------------------------------------------- the agent


def test_the_agent_starts_over_a_hostile_cache_and_recovers_it_from_the_server(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    """A real `pullgate agent` (no daemon behind it: only its policy is looked at)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "policy.envelope").write_bytes(DEEP)
    (state / "policy-state.json").write_text(json.dumps({"etag": '"stale"'}))
    data = envelope(6)
    server.publish(data)
    config = _org_config(tmp_path, server, tls)
    agent = start_agent(
        tmp_path,
        tmp_path / "no-daemon.sock",
        None,
        ["--config", str(config), "--state-dir", str(state), "--no-watch"],
        expect_ping_ok=False,
    )
    try:
        deadline = time.monotonic() + 15
        status = read_status(state) or {}
        while status.get("serial") != 6 and time.monotonic() < deadline:
            time.sleep(0.05)
            status = read_status(state) or {}
        assert status.get("serial") == 6, (status, agent.stderr_tail())
        assert status["refresh_loop"] == "running"
        assert server.conditional_requests() == 0
        assert (state / "policy.envelope").read_bytes() == data
        assert "Traceback" not in agent.stderr_tail(200)
    finally:
        agent.stop()


def test_a_huge_etag_is_not_kept_so_the_state_stays_readable(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    data = envelope(2)
    server.set("/policy.dsse.json", Route(body=data, etag='"' + "e" * 60_000 + '"'))
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    assert refresh(agent) == "accepted serial 2"
    state = json.loads((tmp_path / "policy-state.json").read_text())
    assert state["etag"] is None and state["high_water"]["serial"] == 2
    restarted = make_agent(tmp_path, "https://127.0.0.1:9/offline", tls.ca_cert)
    assert restarted.manager.source == "cache" and not restarted.refusals()


def test_a_cache_that_cannot_be_written_is_reported_and_the_new_policy_enforced(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    server.publish(envelope(1))
    refresh(agent)
    (tmp_path / "policy.envelope").unlink()
    (tmp_path / "policy.envelope").mkdir()  # os.replace onto it fails, even for root
    server.publish(envelope(2))
    assert refresh(agent) == "accepted serial 2"
    assert agent.manager.current().serial == 2
    assert any(
        isinstance(e, PolicyEvent) and "cannot write the policy cache" in e.reason
        for e in agent.events
    ), agent.events


def test_a_refusal_listing_long_unknown_key_ids_stays_short(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    payload = base64.b64encode(policy_bytes(1)).decode()
    sig = base64.b64encode(bytes(64)).decode()
    signatures = [{"keyid": f"sha256:{i:032x}" + "f" * 50_000, "sig": sig} for i in range(60)]
    body = {"payload": payload, "payloadType": PAYLOAD_TYPE, "signatures": signatures}
    server.publish(json.dumps(body).encode())
    fetcher = Fetcher(server.url(), ca_bundle=tls.ca_cert, max_bytes=MAX_ENVELOPE_BYTES)
    agent = make_agent(tmp_path, server.url(), tls.ca_cert, fetcher=fetcher)
    result = refresh(agent)
    assert result.startswith("refused: signature check failed: signed only by unknown keys")
    assert len(result) < 1100
    status = read_status(tmp_path)
    assert status is not None and len(status["last_refusal"]) <= 1000
    assert all(len(reason) <= 1000 for reason in agent.refusals())


def test_a_failing_refresh_shows_in_status_and_doctor_of_a_running_agent(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    server.publish(envelope(1))
    config = _org_config(tmp_path, server, tls, refresh_interval="1m")
    state = tmp_path / "state"
    agent = _org_agent_holding_serial_1(tmp_path, config, state)
    try:
        server.set("/policy.dsse.json", Route(status=503))
        control = str(agent.socket_path.parent / "control.sock")
        subprocess.run(
            [sys.executable, "-m", "agent", "policy", "refresh", "--control", control],
            capture_output=True,
            timeout=60,
            check=False,
        )
        deadline = time.monotonic() + 15
        status = read_status(state) or {}
        while "HTTP 503" not in str(status.get("last_fetch_error")):
            assert time.monotonic() < deadline, (status, agent.stderr_tail())
            time.sleep(0.05)
            status = read_status(state) or {}
        cli = [sys.executable, "-m", "agent"]
        shown = subprocess.run(
            [*cli, "status", "--control", control],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "fetch error:" in shown.stdout and "HTTP 503" in shown.stdout, shown
        doctor = subprocess.run(
            [*cli, "doctor", "--control", control, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        checks = {c["name"]: c for c in json.loads(doctor.stdout)}
        policy = checks["policy fresh and verified"]
        assert policy["result"] == FAIL, policy
        assert "the last policy refresh failed" in policy["detail"], policy
        assert "HTTP 503" in policy["detail"], policy
    finally:
        agent.stop()


def test_policy_refresh_of_a_hostile_body_is_a_clean_refusal_with_exit_1(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    server.publish(envelope(1))
    config = _org_config(tmp_path, server, tls)
    state = tmp_path / "state"
    agent = _org_agent_holding_serial_1(tmp_path, config, state)
    try:
        server.publish(DEEP)
        control = str(agent.socket_path.parent / "control.sock")
        result = subprocess.run(
            [sys.executable, "-m", "agent", "policy", "refresh", "--control", control],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1, result
        assert "refused: signature check failed" in result.stdout, result
        assert "nested more than 32 levels" in result.stdout, result
        server.publish(envelope(2))
        again = subprocess.run(
            [sys.executable, "-m", "agent", "policy", "refresh", "--control", control],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 0 and "accepted serial 2" in again.stdout, again
    finally:
        agent.stop()


@pytest.mark.parametrize("length", ["9" * 5000, "\u00b2"])
def test_a_content_length_int_cannot_read_is_a_fetch_error_or_ignored(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path, length: str
) -> None:
    data = envelope(1)
    route = Route(body=data, content_length=False, headers=(("Content-Length", length),))
    server.set("/policy.dsse.json", route)
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    try:
        result = refresh(agent)
    except FetchError as e:
        assert "Traceback" not in e.reason and "unexpectedly" not in e.reason, e.reason
    else:
        assert result == "accepted serial 1"


def test_a_redirect_to_an_unreadable_location_is_a_fetch_error(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    server.set("/policy.dsse.json", Route(status=302, location="https://[::1/p"))
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    with pytest.raises(FetchError, match="Invalid IPv6 URL"):
        refresh(agent)


def _org_config(tmp_path: Path, server: PolicyServer, tls: TLSMaterial, **extra: Any) -> Path:
    """A managed config file for org `acme` fetching from `server`, trusting KEY."""
    config = tmp_path / "config.json"
    settings = {
        "org": "acme",
        "policy_url": server.url(),
        "ca_bundle": str(tls.ca_cert),
        "trusted_keys": [PublicKey.from_key(KEY).to_config()],
        **extra,
    }
    config.write_text(json.dumps(settings))
    return config


def _org_agent_holding_serial_1(tmp_path: Path, config: Path, state: Path) -> AgentProcess:
    """A real agent with the org config `config` and no daemon behind it, once it has
    accepted serial 1 from the policy server."""
    agent = start_agent(
        tmp_path,
        tmp_path / "no-daemon.sock",
        None,
        ["--config", str(config), "--state-dir", str(state), "--no-watch"],
        expect_ping_ok=False,
    )
    deadline = time.monotonic() + 15
    while (read_status(state) or {}).get("serial") != 1:
        if time.monotonic() >= deadline:
            agent.stop()
            raise AssertionError(f"serial 1 never accepted:\n{agent.stderr_tail()}")
        time.sleep(0.05)
    return agent
