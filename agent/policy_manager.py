"""Keeps the agent's policy current: cache at start, refresh on an interval, swap atomically.

The I/O around the pure policy store: it loads and re-verifies the cache, fetches with
backoff and jitter, persists what the store accepted, and swaps the policy the shim reads
in one reference assignment — requests in flight keep the policy they started with, and
no connection or stream is touched. Every accept, refusal, fetch failure and freshness
change goes to the decision sink with its reason, and to ``status.json`` for
``pullgate policy status``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.files import atomic_write
from agent.policy import Policy
from agent.policy_cache import PolicyCache
from agent.policy_fetch import Fetcher, FetchError
from agent.policy_store import (
    Freshness,
    HighWater,
    PolicyRefusedError,
    TrustSettings,
    effective_now,
    effective_policy,
    evaluate_envelope,
)
from agent.sink import DecisionSink, PolicyEvent

__all__ = ["PolicyManager", "RefreshSettings"]


@dataclass(frozen=True)
class RefreshSettings:
    interval: timedelta = timedelta(hours=1)
    min_backoff: timedelta = timedelta(seconds=5)


class PolicyManager:
    """The org policy for one agent; ``current()`` is what the shim enforces."""

    def __init__(
        self,
        trust: TrustSettings,
        cache: PolicyCache,
        fallback: Policy,
        sink: DecisionSink,
        *,
        fetcher: Fetcher | None = None,
        refresh: RefreshSettings | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.trust = trust
        self.cache = cache
        self.fallback = fallback
        self.sink = sink
        self.fetcher = fetcher
        self.refresh = refresh or RefreshSettings()
        self.clock = clock
        self._accepted: Policy | None = None
        self._high_water: HighWater | None = None
        self._etag: str | None = None
        self._effective: Policy = fallback
        self._state: Freshness | None = None
        self._next_check = 0.0
        self._wake = asyncio.Event()
        self.last_fetch_at: datetime | None = None
        self.last_fetch_error: str | None = None
        self.last_refusal: str | None = None
        self.source = "built-in default (no verified org policy yet)"
        self.clock_behind = False

    # -- what the shim reads ------------------------------------------------------------

    def current(self) -> Policy:
        """The policy to enforce now; re-judged only when a freshness boundary may pass."""
        if time.time() >= self._next_check:
            self._recompute()
        return self._effective

    def _recompute(self) -> None:
        now_wall = self.clock()
        if self._accepted is None:
            self._effective = self.fallback
            self._next_check = float("inf")
            return
        now, behind = effective_now(now_wall, self._high_water)
        if behind and not self.clock_behind:
            self._emit(
                "policy-state",
                "unknown",
                "the system clock is behind the newest "
                "accepted policy; judging freshness by the policy's issue time",
            )
        self.clock_behind = behind
        policy, state = effective_policy(
            self._accepted, now, self.trust.offline_grace, self.trust.stale_behavior
        )
        if state is not self._state and self._state is not None:
            self._emit(
                "policy-state", "unknown", f"policy is now {state}: {policy.label}", state=state
            )
        self._state = state
        self._effective = policy
        # Check again at the next boundary, and at least every minute (clock changes).
        boundaries = [
            self._accepted.expires_at,
            self._accepted.expires_at + self.trust.offline_grace,
        ]
        upcoming = [b.timestamp() for b in boundaries if b > now]
        self._next_check = min([*upcoming, time.time() + 60])
        self._write_status()

    # -- start and refresh --------------------------------------------------------------

    def load_cache(self) -> None:
        """Verify the cached envelope again; a tampered or foreign cache is ignored."""
        cached = self.cache.load()
        for problem in cached.problems:
            self._emit("policy-refused", "failure", problem, source="cache")
        self._high_water = cached.high_water
        self._etag = cached.etag
        if cached.envelope is not None:
            try:
                accepted = evaluate_envelope(
                    cached.envelope,
                    self.trust,
                    None,  # the envelope itself is checked; rollback is checked below
                    self.clock(),
                    source=f"cache {self.cache.envelope_path}",
                    allow_expired=True,
                )
            except PolicyRefusedError as e:
                self.last_refusal = f"cached policy ignored: {e.reason}"
                self._etag = None
                self._emit("policy-refused", "failure", self.last_refusal, source="cache")
            else:
                hw = self._high_water
                if hw is not None and accepted.policy.serial < hw.serial:
                    self.last_refusal = (
                        f"cached policy ignored: serial {accepted.policy.serial} is below the "
                        f"high-water mark {hw.serial}"
                    )
                    self._etag = None
                    self._emit("policy-refused", "failure", self.last_refusal, source="cache")
                else:
                    if hw is None or hw.serial < accepted.policy.serial:
                        self._high_water = accepted.high_water
                    self._install(accepted.policy, "cache")
        self._next_check = 0.0
        self._recompute()

    def _install(self, policy: Policy, source: str) -> None:
        self._accepted = policy
        self.source = source
        self._state = None
        self._next_check = 0.0
        self._emit(
            "policy-update",
            "success",
            f"enforcing {policy.label} from {source}",
            org=policy.org,
            serial=policy.serial,
            source=source,
        )

    async def refresh_now(self) -> str:
        """Fetch and evaluate once; returns a one-line result."""
        if self.fetcher is None:
            return "no policy_url is configured"
        loop = asyncio.get_running_loop()
        fetcher = self.fetcher
        self.last_fetch_at = self.clock()
        try:
            result = await loop.run_in_executor(None, fetcher.fetch, self._etag)
        except FetchError as e:
            self.last_fetch_error = e.reason
            self._emit("policy-fetch-failed", "failure", e.reason, source=fetcher.url)
            self._write_status()
            raise
        self.last_fetch_error = None
        if result.body is None:
            self._write_status()
            return "not modified"
        try:
            accepted = evaluate_envelope(
                result.body, self.trust, self._high_water, self.clock(), source=fetcher.url
            )
        except PolicyRefusedError as e:
            self.last_refusal = e.reason
            self._emit("policy-refused", "failure", e.reason, source=fetcher.url)
            self._write_status()
            return f"refused: {e.reason}"
        if not accepted.new and self._accepted is not None:
            self._etag = result.etag
            self._write_status()
            return "unchanged"
        self.cache.save(accepted.envelope, accepted.high_water, result.etag)
        self._high_water = accepted.high_water
        self._etag = result.etag
        self.last_refusal = None
        self._install(accepted.policy, fetcher.url)
        self._recompute()
        return f"accepted serial {accepted.policy.serial}"

    def trigger(self) -> None:
        """Ask the refresh loop to fetch now (SIGHUP, `pullgate policy refresh`)."""
        self._wake.set()

    async def run(self) -> None:
        """Refresh forever: the interval on success, backoff with jitter on failure.

        Between fetches it wakes at each freshness boundary, so status, the audit log and
        the tray learn that the policy went stale or expired even when nobody pulls.
        """
        failures = 0
        while True:
            self._wake.clear()  # before fetching: a request made during the fetch counts
            try:
                await self.refresh_now()
                failures = 0
                delay = self.refresh.interval.total_seconds()
            except FetchError:
                failures += 1
                base = self.refresh.min_backoff.total_seconds() * 2 ** min(failures - 1, 10)
                delay = min(base, self.refresh.interval.total_seconds())
                delay *= random.uniform(0.8, 1.2)
            deadline = time.monotonic() + delay
            while True:
                self.current()  # re-judge freshness at its boundaries
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                wait = min(remaining, max(0.5, self._next_check - time.time()))
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                except TimeoutError:
                    continue
                break

    # -- reporting ----------------------------------------------------------------------

    def _emit(self, action: str, outcome: str, reason: str, **extra: Any) -> None:
        self.sink.emit(PolicyEvent(action=action, outcome=outcome, reason=reason, **extra))

    def status(self) -> dict[str, Any]:
        policy = self._effective
        accepted = self._accepted
        now = self.clock()
        return {
            "pid": os.getpid(),
            "updated_at": now.isoformat(),
            "org": accepted.org if accepted else None,
            "serial": accepted.serial if accepted else None,
            "issued_at": accepted.issued_at.isoformat() if accepted else None,
            "expires_at": accepted.expires_at.isoformat() if accepted else None,
            "age_seconds": (now - accepted.issued_at).total_seconds() if accepted else None,
            "source": self.source,
            "state": str(self._state) if self._state else ("fresh" if accepted else "fallback"),
            "stale_behavior": str(self.trust.stale_behavior),
            "enforcing": policy.label,
            "mode": str(policy.mode),
            "policy_url": self.fetcher.url if self.fetcher else None,
            "last_fetch_at": self.last_fetch_at.isoformat() if self.last_fetch_at else None,
            "last_fetch_error": self.last_fetch_error,
            "last_refusal": self.last_refusal,
            "clock_behind": self.clock_behind,
        }

    def _write_status(self) -> None:
        data = json.dumps(self.status(), indent=2).encode() + b"\n"
        try:
            atomic_write(self.cache.directory / "status.json", data)
        except OSError as e:
            self._emit("policy-state", "failure", f"cannot write status: {e.strerror}")


def read_status(directory: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((directory / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
