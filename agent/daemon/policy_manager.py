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
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.core import strict_json
from agent.core.events import NoticeEvent, PolicyEvent
from agent.core.policy.document import Policy
from agent.core.policy.trust import (
    Freshness,
    HighWater,
    PolicyRefusedError,
    TrustSettings,
    effective_now,
    effective_policy,
    evaluate_envelope,
)
from agent.core.text import printable
from agent.daemon.bus import DecisionSink
from agent.daemon.policy_cache import MAX_ENVELOPE_BYTES, PolicyCache
from agent.daemon.policy_fetch import Fetcher, FetchError
from agent.platform.files import FileTooLargeError, atomic_write, read_capped

__all__ = ["PolicyManager", "RefreshError", "RefreshSettings", "read_status"]

MAX_STATUS_BYTES = 256 * 1024
FETCH_GRACE_SECONDS = 2.0
"""How long past the fetcher's own deadline the manager waits before giving up on it."""


class RefreshError(FetchError):
    """A refresh that failed for a reason other than the download (a bug, a full disk):
    reported like a failed fetch, so callers and the loop handle one error type."""


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
        write_status: bool = True,
    ) -> None:
        """``write_status=False`` for readers of an agent's cache (``pullgate check``):
        they must not overwrite the running agent's ``status.json`` with their own."""
        self.trust = trust
        self.cache = cache
        self.fallback = fallback
        self.sink = sink
        self.fetcher = fetcher
        self.refresh = refresh or RefreshSettings()
        self.clock = clock
        self.write_status = write_status
        self._accepted: Policy | None = None
        self._high_water: HighWater | None = None
        self._etag: str | None = None
        # The accepted envelope's hash: the ETag is only sent while the cached copy on
        # disk is exactly these bytes, so a 304 never confirms a copy that is not in force.
        self._envelope_hash: bytes | None = None
        self._cache_saved = True  # False: the last cache write failed (maybe half of it)
        self._effective: Policy = fallback
        self._state: Freshness | None = None
        self._next_check = 0.0
        self._wake = asyncio.Event()
        self.last_fetch_at: datetime | None = None
        self.last_fetch_error: str | None = None
        self.last_refusal: str | None = None
        self.source = "built-in default (no verified org policy yet)"
        self.clock_behind = False
        # The refresh loop, for status and doctor: a loop that stopped must be visible.
        self.refresh_loop = "not started"  # running | stopped | dead
        self.refresh_failures = 0  # consecutive failed refreshes
        self.last_refresh_error: str | None = None  # an unexpected error (not a fetch)
        self.next_refresh_at: datetime | None = None

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
        # The ETag only means "what I have" when there is a cached envelope to keep: sent
        # without one, a 304 would leave the agent on the built-in default while online.
        self._etag = None
        if cached.envelope is not None:
            try:
                # Judged against the high-water state like a download: a validly signed
                # envelope with a lower serial, or the same serial with other content,
                # written into the cache is refused, not enforced after a restart.
                accepted = evaluate_envelope(
                    cached.envelope,
                    self.trust,
                    self._high_water,
                    self.clock(),
                    source=f"cache {self.cache.envelope_path}",
                    allow_expired=True,
                )
            except PolicyRefusedError as e:
                self.last_refusal = _clip(f"cached policy ignored: {e.reason}")
                self._emit("policy-refused", "failure", self.last_refusal, source="cache")
            except Exception as e:  # never stop the agent's start over a cache file
                self.last_refusal = f"cached policy ignored: {_describe(e)}"
                self._emit("policy-refused", "failure", self.last_refusal, source="cache")
            else:
                self._high_water = accepted.high_water
                self._etag = cached.etag
                self._envelope_hash = hashlib.sha256(cached.envelope).digest()
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
        """Fetch and evaluate once; returns a one-line result.

        Raises only ``FetchError`` (``RefreshError`` for anything unexpected), so the
        refresh loop and the control API report a failure instead of dying with it.
        """
        try:
            return await self._refresh_once()
        except FetchError:
            raise
        except Exception as e:
            reason = f"the policy refresh failed unexpectedly: {_describe(e)}"
            self.last_refresh_error = reason
            self._notice("policy-refresh-error", reason)
            self._write_status()
            raise RefreshError(reason) from e

    @property
    def fetch_deadline(self) -> float | None:
        """Seconds one refresh may take at most (the fetcher's deadline and a grace)."""
        if self.fetcher is None:
            return None
        return self.fetcher.deadline_seconds + FETCH_GRACE_SECONDS

    def _cache_in_force(self) -> bool:
        """The cached envelope on disk is exactly the accepted one."""
        if self._accepted is None or self._envelope_hash is None:
            return False
        try:
            on_disk = read_capped(
                self.cache.envelope_path, MAX_ENVELOPE_BYTES, follow_symlinks=False
            )
        except (OSError, FileTooLargeError):
            return False
        return hashlib.sha256(on_disk).digest() == self._envelope_hash

    async def _refresh_once(self) -> str:
        if self.fetcher is None:
            return "no policy_url is configured"
        loop = asyncio.get_running_loop()
        fetcher = self.fetcher
        self.last_fetch_at = self.clock()
        # Revalidate only what is in force and on disk, byte for byte: without a verified
        # policy, or with its cached copy deleted, overwritten or never written (a full
        # disk), a 304 would confirm nothing, so ask for the whole file.
        # A failed write may have left the envelope but not the state: write both again.
        cache_ok = self._cache_saved and self._cache_in_force()
        etag = self._etag if cache_ok else None
        try:
            try:
                # A second guard over the fetcher's own deadline: a fetch that hangs
                # must not hold the refresh loop (and a green status) for days.
                result = await asyncio.wait_for(
                    loop.run_in_executor(None, fetcher.fetch, etag),
                    timeout=fetcher.deadline_seconds + FETCH_GRACE_SECONDS,
                )
            except TimeoutError:
                raise FetchError(
                    f"the policy fetch from {fetcher.url} did not end within "
                    f"{fetcher.deadline_seconds + FETCH_GRACE_SECONDS:g}s",
                    network=True,
                ) from None
            if result.body is None and etag is None:
                raise FetchError(
                    "the policy server answered 304 Not Modified to an unconditional "
                    f"request for {fetcher.url}"
                )
        except FetchError as e:
            if etag is not None and not e.network:
                # The server answered, or the request could not even be made: the ETag
                # may be what it chokes on (an edited state file). Ask unconditionally.
                self._etag = None
            self.last_fetch_error = _clip(e.reason)
            self._emit("policy-fetch-failed", "failure", self.last_fetch_error, source=fetcher.url)
            self._write_status()
            raise
        self.last_fetch_error = None
        self.last_refresh_error = None
        if result.body is None:
            self.last_refusal = None
            self._write_status()
            return "not modified"
        try:
            accepted = evaluate_envelope(
                result.body, self.trust, self._high_water, self.clock(), source=fetcher.url
            )
        except PolicyRefusedError as e:
            self.last_refusal = _clip(e.reason)
            self._emit("policy-refused", "failure", self.last_refusal, source=fetcher.url)
            self._write_status()
            return f"refused: {self.last_refusal}"
        self.last_refusal = None
        if not accepted.new and self._accepted is not None:
            if not cache_ok:
                # Announced like an update, so the cache watcher knows the write is ours.
                self._emit(
                    "policy-update",
                    "success",
                    f"rewrote the cached copy of {accepted.policy.label}",
                    org=accepted.policy.org,
                    serial=accepted.policy.serial,
                    source=fetcher.url,
                )
                saved = self._save(accepted.envelope, accepted.high_water, result.etag)
            else:
                saved = True
            self._envelope_hash = hashlib.sha256(accepted.envelope).digest()
            # An ETag only for a copy that is on disk: otherwise the next round asks
            # for the whole file again and retries the save.
            self._etag = result.etag if saved else None
            self._write_status()
            return "unchanged"
        # Cache first, so that whoever sees the new policy in status finds it on disk too;
        # a cache that cannot be written does not stop the new policy from being enforced.
        saved = self._save(accepted.envelope, accepted.high_water, result.etag)
        self._high_water = accepted.high_water
        self._etag = result.etag if saved else None
        self._envelope_hash = hashlib.sha256(accepted.envelope).digest()
        self._install(accepted.policy, fetcher.url)
        self._recompute()
        return f"accepted serial {accepted.policy.serial}"

    def _save(self, envelope: bytes, high_water: HighWater, etag: str | None) -> bool:
        """Write the cache; False (reported) when it could not be written."""
        try:
            self.cache.save(envelope, high_water, etag)
        except OSError as e:
            # Enforced now all the same; the next refresh fetches the whole file and
            # writes it again. Until then, a restart would fall back to the old copy.
            self._emit(
                "policy-state",
                "failure",
                f"cannot write the policy cache in {self.cache.directory}: {e.strerror or e}",
            )
            self._cache_saved = False
            return False
        self._cache_saved = True
        return True

    def trigger(self) -> None:
        """Ask the refresh loop to fetch now (SIGHUP, `pullgate policy refresh`)."""
        self._wake.set()

    async def run(self) -> None:
        """Refresh forever: the interval on success, backoff with jitter on failure.

        Between fetches it wakes at each freshness boundary, so status, the audit log and
        the tray learn that the policy went stale or expired even when nobody pulls.
        """
        self.refresh_loop = "running"
        try:
            while True:
                try:
                    await self._refresh_and_wait()
                except Exception as e:  # a bug here must not end every later refresh
                    self.refresh_failures += 1
                    reason = f"the policy refresh loop hit an error: {_describe(e)}"
                    self.last_refresh_error = reason
                    self._notice("policy-refresh-error", reason)
                    self._write_status()
                    await asyncio.sleep(self._backoff())
        except asyncio.CancelledError:
            self.refresh_loop = "stopped"
            raise
        except BaseException as e:
            self.refresh_loop = "dead"
            self.last_refresh_error = f"the policy refresh loop stopped: {_describe(e)}"
            self._notice("policy-refresh-stopped", self.last_refresh_error)
            self._write_status()
            raise

    def _backoff(self) -> float:
        """Exponential from ``min_backoff``, capped at the interval, with jitter."""
        base = self.refresh.min_backoff.total_seconds() * 2 ** min(self.refresh_failures - 1, 10)
        capped: float = min(base, self.refresh.interval.total_seconds())
        return capped * random.uniform(0.8, 1.2)

    async def _refresh_and_wait(self) -> None:
        self._wake.clear()  # before fetching: a request made during the fetch counts
        try:
            await self.refresh_now()
            self.refresh_failures = 0
            delay = self.refresh.interval.total_seconds()
        except FetchError:
            self.refresh_failures += 1
            delay = self._backoff()
        next_at = self.clock() + timedelta(seconds=delay)
        self.next_refresh_at = next_at
        self._write_status()
        deadline = time.monotonic() + delay
        while True:
            self.current()  # re-judge freshness at its boundaries
            remaining = deadline - time.monotonic()
            # Wall time too: after a suspend the monotonic clock is behind, and status
            # (doctor) judges an overdue refresh by ``next_refresh_at``.
            if remaining <= 0 or self.clock() >= next_at:
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

    def _notice(self, action: str, reason: str) -> None:
        """A warning for IT (audit log, event stream): the refresh itself is in trouble."""
        url = self.fetcher.url if self.fetcher else None
        self.sink.emit(
            NoticeEvent(
                action=action,
                outcome="failure",
                reason=reason,
                severity="warning",
                details={"policy_url": url, "failures": self.refresh_failures},
            )
        )

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
            "require_sign_in": policy.require_sign_in,
            "policy_url": self.fetcher.url if self.fetcher else None,
            "last_fetch_at": self.last_fetch_at.isoformat() if self.last_fetch_at else None,
            "last_fetch_error": self.last_fetch_error,
            "last_refusal": self.last_refusal,
            "clock_behind": self.clock_behind,
            "refresh_loop": self.refresh_loop if self.fetcher else None,
            "refresh_failures": self.refresh_failures,
            "last_refresh_error": self.last_refresh_error,
            "next_refresh_at": self.next_refresh_at.isoformat() if self.next_refresh_at else None,
            "fetch_deadline_seconds": self.fetch_deadline,
        }

    def _write_status(self) -> None:
        if not self.write_status:
            return
        data = json.dumps(self.status(), indent=2).encode() + b"\n"
        try:
            atomic_write(self.cache.directory / "status.json", data)
        except OSError as e:
            self._emit("policy-state", "failure", f"cannot write status: {e.strerror}")


def read_status(directory: Path) -> dict[str, Any] | None:
    """The agent's ``status.json``, or None when it is missing or not a status."""
    try:
        value = strict_json.loads(
            read_capped(directory / "status.json", MAX_STATUS_BYTES, follow_symlinks=False)
        )
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


MAX_REASON_CHARS = 1000


def _clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Reasons built from what a server sent (a list of unknown key ids, a Location) go
    into status, events and the audit log: bounded, so none of them can be flooded, and
    with control characters escaped, so none can drive an admin's terminal."""
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(error: BaseException) -> str:
    """``Type: message`` on one line, bounded: for status, events and the control API."""
    text = printable(" ".join(str(error).split()))
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
