"""The policy refresh against a hostile policy host and a damaged state dir (issue 10,
second red-team round): a host that trickles bytes, refusals that doctor did not see,
terminal escapes in status, a 304 trusted for a copy not in force, an edited ETag.

Like tests/test_policy_manager.py, these drive the real `PolicyManager`, `Fetcher` and
`PolicyCache` against `tests.policy_server.PolicyServer` (real HTTPS on 127.0.0.1).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.cli.policy_cmd import _print_status, refresh_broken
from agent.cli.status_cmd import FAIL, OK, check_policy, format_status
from agent.core.policy.envelope import PAYLOAD_TYPE
from agent.core.policy.trust import HighWater
from agent.daemon.policy_cache import PolicyCache
from agent.daemon.policy_fetch import Fetcher, FetchError, FetchResult
from agent.daemon.policy_manager import read_status
from tests.policy_server import PolicyServer, Route, TLSMaterial
from tests.test_policy_manager import (
    Agent,
    FlakyFetcher,
    envelope,
    make_agent,
    policy_bytes,
    refresh,
    run_until,
)

ESC = "\x1b"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return TLSMaterial.create(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(tls: TLSMaterial) -> Iterator[PolicyServer]:
    with PolicyServer(tls) as s:
        yield s


# --------------------------------------------------------------------------- 1. trickle


@pytest.mark.parametrize("headers", [True, False], ids=["headers", "body"])
def test_a_trickling_server_fails_the_fetch_within_its_deadline(
    server: PolicyServer, tls: TLSMaterial, headers: bool
) -> None:
    """One byte every 0.4 s never trips a 1 s read timeout; the 3 s deadline must."""
    server.set("/policy.dsse.json", Route(body=envelope(1), trickle=0.4, trickle_headers=headers))
    fetcher = Fetcher(server.url(), ca_bundle=tls.ca_cert, connect_timeout=1, read_timeout=1)
    assert fetcher.deadline_seconds == 3
    outcome: list[BaseException | FetchResult] = []

    def fetch() -> None:
        try:
            outcome.append(fetcher.fetch())
        except BaseException as e:
            outcome.append(e)

    started = time.monotonic()
    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    thread.join(timeout=6)  # bounded even without the fix: stop() then ends the trickle
    took = time.monotonic() - started
    assert not thread.is_alive(), "the fetch was still reading after 6 s"
    assert len(outcome) == 1 and isinstance(outcome[0], FetchError), outcome
    assert "fetch deadline of 3s" in outcome[0].reason and outcome[0].network, outcome[0]
    assert took < 4.5, took


@dataclass(frozen=True)
class HangingFetcher(Fetcher):
    """A fetch that does not end (until `release` is set): the manager's own guard."""

    release: threading.Event = field(default_factory=threading.Event)

    def fetch(self, etag: str | None = None) -> FetchResult:
        self.release.wait(30)
        raise FetchError("released")


def test_a_fetch_that_never_ends_is_a_failed_refresh_and_the_loop_goes_on(
    tls: TLSMaterial, tmp_path: Path
) -> None:
    fetcher = HangingFetcher(
        "https://127.0.0.1:9/p", ca_bundle=tls.ca_cert, connect_timeout=0.2, read_timeout=0.2
    )
    agent = make_agent(tmp_path, fetcher.url, tls.ca_cert, fetcher=fetcher)
    failed_after: list[float] = []

    def failed() -> bool:
        if agent.manager.refresh_failures < 1:
            return False
        failed_after.append(time.monotonic() - started)
        fetcher.release.set()  # so that asyncio.run's executor shutdown does not wait
        return True

    try:
        started = time.monotonic()
        run_until(agent, failed, timeout=8)
        assert failed_after[0] < 4, failed_after
        status = agent.manager.status()
        assert "did not end within 2.6s" in (status["last_fetch_error"] or ""), status
        assert check_policy(status).result == FAIL
    finally:
        fetcher.release.set()


def _status(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "state": "fresh",
        "enforcing": 'org "acme" policy serial 1',
        "source": "https://policy.example/p",
        "expires_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        "refresh_loop": "running",
        "refresh_failures": 0,
        "last_fetch_error": None,
        "last_refusal": None,
        "last_refresh_error": None,
        "fetch_deadline_seconds": 72.0,
    }
    base.update(fields)
    return base


def test_a_refresh_overdue_by_more_than_a_fetch_fails_doctor_and_policy_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = datetime.now(UTC)
    stuck = _status(next_refresh_at=(now - timedelta(days=2)).isoformat())
    check = check_policy(stuck)
    assert check.result == FAIL and "overdue" in check.detail, check
    assert refresh_broken(stuck)
    shown = format_status(Path("control.sock"), {"policy": stuck, "agent": {}})
    assert "refresh is overdue" in shown, shown
    _print_status(stuck)
    assert "warning:      the policy refresh is overdue" in capsys.readouterr().out
    # A fetch under way (due 10 s ago, it may take 72 s) and a future refresh are fine.
    for due in (now - timedelta(seconds=10), now + timedelta(minutes=30)):
        ok = _status(next_refresh_at=due.isoformat())
        assert check_policy(ok).result == OK, check_policy(ok)
        assert not refresh_broken(ok)
    # An expired policy says why, too.
    expired = _status(state="expired", next_refresh_at=(now - timedelta(days=2)).isoformat())
    assert "overdue" in check_policy(expired).detail


# --------------------------------------------------------------------------- 2. refusals


def test_a_refused_download_fails_doctor_until_a_later_refresh_succeeds(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    server.publish(envelope(2))
    assert refresh(agent) == "accepted serial 2"
    for bad in (envelope(1), envelope(3, org="other"), b'{"payload": "x"}'):
        server.publish(bad)
        assert refresh(agent).startswith("refused:")
        status = agent.manager.status()
        assert status["state"] == "fresh" and status["last_refusal"], status
        check = check_policy(status)
        assert check.result == FAIL and "refused" in check.detail, check
        assert refresh_broken(status)
    server.publish((tmp_path / "policy.envelope").read_bytes())  # the accepted bytes again
    assert refresh(agent) == "not modified"
    status = agent.manager.status()
    assert status["last_refusal"] is None, status
    assert check_policy(status).result == OK and not refresh_broken(status)
    server.publish(envelope(1))
    assert refresh(agent).startswith("refused:")
    assert refresh(agent).startswith("refused:")
    server.publish(envelope(3))
    assert refresh(agent) == "accepted serial 3"
    assert agent.manager.status()["last_refusal"] is None
    server.publish(envelope(1))
    assert refresh(agent).startswith("refused:")
    server.publish(envelope(3, mode="monitor"))  # serial 3 again, other bytes: "unchanged"?
    assert refresh(agent).startswith("refused:")  # no: same serial, other content
    server.publish((tmp_path / "policy.envelope").read_bytes(), path="/other")
    server.set("/policy.dsse.json", Route(body=(tmp_path / "policy.envelope").read_bytes()))
    assert refresh(agent) == "unchanged"  # the accepted bytes, without an ETag
    assert agent.manager.status()["last_refusal"] is None


# --------------------------------------------------------------------------- 3. escapes


def test_a_redirect_location_with_escapes_reaches_status_escaped(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    server.set("/policy.dsse.json", Route(status=302, location=f"http://x/{ESC}]0;owned\x07"))
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    with pytest.raises(FetchError):
        refresh(agent)
    error = agent.manager.status()["last_fetch_error"]
    assert ESC not in error and "\x07" not in error, error
    assert "\\x1b]0;owned\\x07" in error, error
    stored = read_status(tmp_path)
    assert stored is not None and ESC not in json.dumps(stored, ensure_ascii=False)


def test_an_envelope_keyid_with_escapes_reaches_status_escaped(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    payload = base64.b64encode(policy_bytes(1)).decode()
    sig = base64.b64encode(bytes(64)).decode()
    body = {
        "payload": payload,
        "payloadType": PAYLOAD_TYPE,
        "signatures": [{"keyid": f"sha256:{ESC}[2J{ESC}[31m\u009b", "sig": sig}],
    }
    server.publish(json.dumps(body).encode())
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    assert refresh(agent).startswith("refused:")
    refusal = agent.manager.status()["last_refusal"]
    assert ESC not in refusal and "\u009b" not in refusal, refusal
    assert "\\x1b[2J" in refusal and "\\x9b" in refusal, refusal
    assert all(ESC not in reason for reason in agent.refusals())


def test_status_output_escapes_what_an_old_state_file_holds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    hostile = f"redirect to http://x/{ESC}]52;c;cm0gLXJm\x07{ESC}[2J\x7f\u0085"
    status = _status(last_fetch_error=hostile, last_refusal=hostile, source=hostile)
    texts = [
        format_status(Path("control.sock"), {"policy": status, "agent": {}}),
        check_policy(status).detail,
    ]
    _print_status(status)
    printed = capsys.readouterr().out
    texts.append(printed)
    for text in texts[::2]:  # what reaches the terminal as is
        for char in (ESC, "\x07", "\x7f", "\u0085"):
            assert char not in text, (char, text)
        assert "\\x1b]52;c;cm0gLXJm\\x07\\x1b[2J\\x7f\\x85" in text, text


def test_doctor_prints_a_hostile_detail_escaped(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from agent.cli import status_cmd

    hostile = f"{ESC}[2Jgone"

    def diagnose(*_: object) -> list[status_cmd.Check]:
        return [status_cmd.Check("policy", FAIL, hostile, hostile)]

    monkeypatch.setattr(status_cmd, "diagnose", diagnose)
    status_cmd.run_doctor(argparse.Namespace(control=None, json=False))
    out = capsys.readouterr().out
    assert ESC not in out and "\\x1b[2Jgone" in out, out


# --------------------------------------------------------------------------- 4. 304


class FailingOnce(PolicyCache):
    """A disk that is full for one write."""

    failures = 1

    def save(self, envelope: bytes, high_water: HighWater, etag: str | None) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        super().save(envelope, high_water, etag)


def test_after_a_failed_cache_save_the_next_refresh_rewrites_the_cache(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    server.publish(envelope(1))
    assert refresh(agent) == "accepted serial 1"
    cache = FailingOnce(tmp_path)
    agent.manager.cache = cache
    second = envelope(2)
    server.publish(second)
    assert refresh(agent) == "accepted serial 2"
    assert cache.failures == 0
    assert json.loads((tmp_path / "policy-state.json").read_text())["high_water"]["serial"] == 1
    # Not "not modified": the copy on disk is serial 1, so the whole file is asked for.
    assert refresh(agent) == "unchanged"
    assert (tmp_path / "policy.envelope").read_bytes() == second
    assert refresh(agent) == "not modified"
    offline = make_agent(tmp_path, "https://127.0.0.1:9/offline", tls.ca_cert)
    assert offline.manager.source == "cache" and offline.manager.current().serial == 2


class StateFailingOnce(PolicyCache):
    """The envelope is written, then the disk is full for the state."""

    failures = 1

    def save_state(self, high_water: HighWater, etag: str | None) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        super().save_state(high_water, etag)


def test_a_half_written_cache_has_its_state_written_on_the_next_refresh(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    server.publish(envelope(1))
    assert refresh(agent) == "accepted serial 1"
    agent.manager.cache = StateFailingOnce(tmp_path)
    server.publish(envelope(2))
    assert refresh(agent) == "accepted serial 2"
    state_path = tmp_path / "policy-state.json"
    assert json.loads(state_path.read_text())["high_water"]["serial"] == 1
    assert refresh(agent) == "unchanged"
    state = json.loads(state_path.read_text())
    assert state["high_water"]["serial"] == 2 and state["etag"], state
    assert refresh(agent) == "not modified"


def test_a_cache_overwritten_with_garbage_is_rewritten_not_revalidated(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    data = envelope(4)
    server.publish(data)
    agent = make_agent(tmp_path, server.url(), tls.ca_cert)
    assert refresh(agent) == "accepted serial 4"
    (tmp_path / "policy.envelope").write_bytes(b"garbage")
    conditional = server.conditional_requests()
    assert refresh(agent) == "unchanged"
    assert server.conditional_requests() == conditional
    assert (tmp_path / "policy.envelope").read_bytes() == data
    offline = make_agent(tmp_path, "https://127.0.0.1:9/offline", tls.ca_cert)
    assert offline.manager.source == "cache" and offline.manager.current().serial == 4


# --------------------------------------------------------------------------- 7. ETag


@pytest.mark.parametrize(
    "etag", [' "abc"', '"abc"\r\nX-Injected: 1', '"abc"\n', "", '"\x1b"'], ids=repr
)
def test_an_edited_etag_in_the_state_is_dropped_not_sent(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path, etag: str
) -> None:
    data = envelope(2)
    server.publish(data)
    assert refresh(make_agent(tmp_path, server.url(), tls.ca_cert)) == "accepted serial 2"
    state_path = tmp_path / "policy-state.json"
    state = json.loads(state_path.read_text())
    state["etag"] = etag
    state_path.write_text(json.dumps(state))
    restarted = make_agent(tmp_path, server.url(), tls.ca_cert)
    assert restarted.manager.source == "cache"
    assert refresh(restarted) == "unchanged"
    assert refresh(restarted) == "not modified"  # the server's own ETag from then on


def test_a_fetch_that_fails_without_the_network_drops_the_etag(
    server: PolicyServer, tls: TLSMaterial, tmp_path: Path
) -> None:
    server.publish(envelope(2))
    fetcher = FlakyFetcher(server.url(), ca_bundle=tls.ca_cert)
    agent: Agent = make_agent(tmp_path, server.url(), tls.ca_cert, fetcher=fetcher)
    assert refresh(agent) == "accepted serial 2"
    fetcher.errors.append(FetchError("fetching failed: InvalidHeader"))
    with pytest.raises(FetchError):
        refresh(agent)
    before = server.conditional_requests()
    assert refresh(agent) == "unchanged"  # asked unconditionally
    assert server.conditional_requests() == before
    fetcher.errors.append(FetchError("cannot connect", network=True))
    with pytest.raises(FetchError):
        refresh(agent)
    assert refresh(agent) == "not modified"  # an offline blip keeps the ETag
