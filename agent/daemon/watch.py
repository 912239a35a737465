"""Watch the files that decide whether the shim is in the path, and report changes.

A user (or a script) can route docker around the shim by switching the docker context,
and can try to tamper with the managed config or the cached policy. None of that is
prevented here; each change becomes a ``NoticeEvent`` so it reaches the audit log:

- ``docker-context-changed``: the docker client config (``config.json``, ``contexts/``)
  now selects another context or endpoint; says whether ``docker`` still goes through the
  shim;
- ``config-changed``: the managed config file was modified, replaced or deleted;
- ``policy-cache-modified``: the cached policy files changed, and not by the agent.

watchdog calls back on its own thread; events on the watched files (nothing else in
their folders) are handed to the asyncio loop with ``call_soon_threadsafe`` and debounced
there (an atomic write is several events).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from agent.core.events import Event, NoticeEvent, PolicyEvent
from agent.daemon.bus import DecisionSink
from agent.platform.docker_context import DEFAULT_NAME, ContextError, ContextStatus, context_status

__all__ = ["DEFAULT_POLICY_FILES", "ConfigWatcher"]

DEFAULT_POLICY_FILES = ("policy.envelope", "policy-state.json")
"""What PolicyCache writes; ``status.json`` and ``agent.pid`` change all the time."""
OWN_WRITE_WINDOW = 10.0
"""After a policy update the agent rewrites its cache; changes that soon are its own."""


class _Handler(FileSystemEventHandler):
    """Runs on the watchdog thread: only hands paths over to the loop."""

    def __init__(self, callback: Callable[[str, str], None]) -> None:
        self._callback = callback

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in {"opened", "closed_no_write"}:
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            if raw:
                path = raw.decode() if isinstance(raw, bytes) else str(raw)
                self._callback(path, str(event.event_type))


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """watchdog observers on the docker client config, managed config and policy cache.

    ``expect_write(path)`` (or a ``policy-update`` PolicyEvent through ``__call__`` as a
    sink subscriber) marks the agent's own writes, which are not reported.
    """

    def __init__(
        self,
        sink: DecisionSink,
        *,
        shim_listen: Path,
        docker_config: Path | None = None,
        managed_config: Path | None = None,
        policy_cache: Path | None = None,
        policy_files: Iterable[str] = DEFAULT_POLICY_FILES,
        context_name: str = DEFAULT_NAME,
        debounce: float = 0.3,
    ) -> None:
        self.sink = sink
        self.shim_listen = shim_listen
        self.docker_config = docker_config
        self.managed_config = managed_config
        self.policy_cache = policy_cache
        self.policy_files = frozenset(policy_files)
        self.context_name = context_name
        self.debounce = debounce
        self._observer: BaseObserver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, asyncio.TimerHandle] = {}
        self._changes: dict[str, dict[str, str]] = {}
        self._expected: dict[str, float] = {}
        self._own_until = 0.0
        self._context: ContextStatus | None = None
        self._managed_digest: str | None = None
        self._cache_digests: dict[str, str | None] = {}

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Take a baseline and start watching; paths that do not exist are skipped."""
        self._loop = asyncio.get_running_loop()
        self._context = self._context_now()
        if self.managed_config is not None:
            self._managed_digest = _digest(self.managed_config)
        if self.policy_cache is not None:
            self._cache_digests = {
                name: _digest(self.policy_cache / name) for name in self.policy_files
            }
        observer = Observer()
        handler = _Handler(self._from_thread)
        scheduled = set()
        for folder, recursive in (
            (self.docker_config, True),
            (self.managed_config.parent if self.managed_config else None, False),
            (self.policy_cache, False),
        ):
            if folder is None or not folder.is_dir() or (folder, recursive) in scheduled:
                continue
            observer.schedule(handler, str(folder), recursive=recursive)
            scheduled.add((folder, recursive))
        observer.daemon = True
        observer.start()
        self._observer = observer

    async def close(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            await asyncio.to_thread(observer.join, 5.0)
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()

    # -- the agent's own writes -------------------------------------------------------

    def expect_write(self, path: Path, seconds: float = OWN_WRITE_WINDOW) -> None:
        """The agent is about to write ``path``: do not report it."""
        self._expected[os.path.abspath(path)] = time.monotonic() + seconds

    def __call__(self, event: Event) -> None:
        """Sink subscriber: a policy update means the agent rewrites its cache now."""
        if isinstance(event, PolicyEvent) and event.action == "policy-update":
            self._own_until = time.monotonic() + OWN_WRITE_WINDOW

    # -- thread handoff and debounce --------------------------------------------------

    def _from_thread(self, path: str, change: str) -> None:
        # Filter here, on watchdog's thread: the managed config's folder may be busy (a
        # big file written next to it is thousands of events), and every wake-up of the
        # loop competes with the shim for the GIL.
        kind = self._kind(Path(path))
        if kind is None:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing
                loop.call_soon_threadsafe(self._on_change, kind, path, change)

    def _kind(self, path: Path) -> str | None:
        """Which watched file ``path`` is; pure, so safe on watchdog's thread."""
        if self.docker_config is not None and (
            path == self.docker_config / "config.json"
            or self.docker_config / "contexts" in path.parents
        ):
            return "docker"
        if self.managed_config is not None and path == self.managed_config:
            return "managed"
        if (
            self.policy_cache is not None
            and path.parent == self.policy_cache
            and path.name in self.policy_files
        ):
            return "cache"
        return None

    def _on_change(self, kind: str, path: str, change: str) -> None:
        self._changes.setdefault(kind, {})[path] = change
        handle = self._pending.pop(kind, None)
        if handle is not None:
            handle.cancel()
        assert self._loop is not None
        self._pending[kind] = self._loop.call_later(self.debounce, self._settle, kind)

    def _settle(self, kind: str) -> None:
        self._pending.pop(kind, None)
        changes = self._changes.pop(kind, {})
        if kind == "docker":
            self._docker_changed(changes)
        elif kind == "managed":
            self._managed_changed(changes)
        else:
            self._cache_changed(changes)

    # -- evaluation -------------------------------------------------------------------

    def _context_now(self) -> ContextStatus | None:
        if self.docker_config is None:
            return None
        try:
            # The files only: DOCKER_HOST of the agent's own environment says nothing
            # about the user's shells.
            return context_status(self.docker_config, self.shim_listen, {}, self.context_name)
        except ContextError:
            return None

    def _docker_changed(self, changes: Mapping[str, str]) -> None:
        before, after = self._context, self._context_now()
        self._context = after
        if after is None or (
            before is not None
            and (before.current, before.endpoint, before.through_shim)
            == (after.current, after.endpoint, after.through_shim)
        ):
            return  # e.g. a `docker login` rewrote config.json: not our business
        previous = before.current if before else None
        what = (
            f"the docker context changed from {previous or 'default'} to "
            f"{after.current or 'default'} ({after.endpoint or 'the default socket'})"
        )
        if after.through_shim:
            reason = f"{what}: docker goes through the shim"
        else:
            reason = (
                f"{what}: docker no longer goes through the shim "
                f"(unix://{self.shim_listen}); fix: `pullgate context install`"
            )
        self._emit(
            "docker-context-changed",
            reason,
            "info" if after.through_shim else "warning",
            {
                "path": str(self.docker_config),
                "changes": dict(changes),
                "previous_context": previous,
                "current_context": after.current,
                "endpoint": after.endpoint,
                "through_shim": after.through_shim,
            },
        )

    def _own(self, changes: Mapping[str, str]) -> bool:
        now = time.monotonic()
        if now < self._own_until:
            return True
        return bool(changes) and all(
            self._expected.get(os.path.abspath(p), 0.0) > now for p in changes
        )

    def _managed_changed(self, changes: Mapping[str, str]) -> None:
        assert self.managed_config is not None
        digest = _digest(self.managed_config)
        if digest == self._managed_digest:
            return
        self._managed_digest = digest
        change = "deleted" if digest is None else "modified"
        self._emit(
            "config-changed",
            f"the managed config {self.managed_config} was {change}; the agent applies it "
            "on restart",
            "warning",
            {"path": str(self.managed_config), "change": change, "sha256": digest},
        )

    def _cache_changed(self, changes: Mapping[str, str]) -> None:
        assert self.policy_cache is not None
        modified: dict[str, str | None] = {}
        for name in self.policy_files:
            digest = _digest(self.policy_cache / name)
            if digest != self._cache_digests.get(name):
                modified[name] = digest
                self._cache_digests[name] = digest
        if not modified or self._own(changes):
            return
        names = ", ".join(sorted(modified))
        self._emit(
            "policy-cache-modified",
            f"the cached policy ({names} in {self.policy_cache}) was changed by something "
            "other than the agent; the agent re-verifies signatures before trusting it",
            "warning",
            {
                "path": str(self.policy_cache),
                "files": {
                    name: ("deleted" if d is None else f"sha256:{d}")
                    for name, d in modified.items()
                },
            },
        )

    def _emit(self, action: str, reason: str, severity: str, details: dict[str, Any]) -> None:
        self.sink.emit(
            NoticeEvent(
                action=action, outcome="unknown", reason=reason, severity=severity, details=details
            )
        )
