"""File watches: docker context switches, managed config edits and policy cache tampering
become notices within a bounded wait; the agent's own writes and unrelated edits do not."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from agent.core.events import Event, NoticeEvent, PolicyEvent
from agent.daemon.bus import DecisionSink
from agent.daemon.watch import ConfigWatcher
from agent.platform.docker_context import install_context
from agent.platform.files import atomic_write

T = TypeVar("T")
WAIT = 5.0
QUIET = 1.0
"""How long to watch for a notice that must not come (debounce is 0.1 s here)."""
LISTEN = Path("/run/pullgate-test/docker.sock")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 60.0))


class Notices:
    def __init__(self) -> None:
        self.items: list[NoticeEvent] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, NoticeEvent):
            self.items.append(event)

    async def wait(self, action: str, match: Callable[[NoticeEvent], bool] = bool) -> NoticeEvent:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            for notice in self.items:
                if notice.action == action and match(notice):
                    return notice
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {action} notice within {WAIT} s; got {self.items}")

    async def none_of(self, action: str) -> None:
        await asyncio.sleep(QUIET)
        assert [n for n in self.items if n.action == action] == []


async def watcher_for(tmp_path: Path, **kwargs: Any) -> tuple[ConfigWatcher, Notices]:
    sink = DecisionSink()
    notices = Notices()
    sink.subscribe(notices)
    watcher = ConfigWatcher(sink, shim_listen=LISTEN, debounce=0.1, **kwargs)
    sink.subscribe(watcher)
    await watcher.start()
    return watcher, notices


def write_meta(config_dir: Path, name: str, host: str) -> None:
    folder = config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"Name": name, "Metadata": {}, "Endpoints": {"docker": {"Host": host}}}
    (folder / "meta.json").write_text(json.dumps(meta))


def test_switching_away_from_the_shim_context_is_a_warning(tmp_path: Path) -> None:
    config_dir = tmp_path / "docker"
    install_context(config_dir, LISTEN)
    write_meta(config_dir, "direct", "unix:///var/run/docker.sock")

    async def scenario() -> None:
        watcher, notices = await watcher_for(tmp_path, docker_config=config_dir)
        try:
            config = json.loads((config_dir / "config.json").read_text())
            config["currentContext"] = "direct"
            atomic_write(config_dir / "config.json", json.dumps(config).encode(), 0o600)
            notice = await notices.wait("docker-context-changed")
            assert notice.severity == "warning"
            assert notice.details["previous_context"] == "pullgate"
            assert notice.details["current_context"] == "direct"
            assert notice.details["through_shim"] is False
            assert "pullgate context install" in notice.reason
            notices.items.clear()
            install_context(config_dir, LISTEN)
            back = await notices.wait("docker-context-changed")
            assert back.severity == "info" and back.details["through_shim"] is True
        finally:
            await watcher.close()

    run(scenario())


def test_repointing_the_current_context_endpoint_is_reported(tmp_path: Path) -> None:
    config_dir = tmp_path / "docker"
    install_context(config_dir, LISTEN)

    async def scenario() -> None:
        watcher, notices = await watcher_for(tmp_path, docker_config=config_dir)
        try:
            write_meta(config_dir, "pullgate", "unix:///var/run/docker.sock")
            notice = await notices.wait("docker-context-changed")
            assert notice.details["endpoint"] == "unix:///var/run/docker.sock"
            assert notice.details["through_shim"] is False
        finally:
            await watcher.close()

    run(scenario())


def test_config_json_edit_that_keeps_the_context_is_not_reported(tmp_path: Path) -> None:
    config_dir = tmp_path / "docker"
    install_context(config_dir, LISTEN)

    async def scenario() -> None:
        watcher, notices = await watcher_for(tmp_path, docker_config=config_dir)
        try:
            config = json.loads((config_dir / "config.json").read_text())
            config["auths"] = {"registry.example": {}}  # what `docker login` does
            (config_dir / "config.json").write_text(json.dumps(config))
            await notices.none_of("docker-context-changed")
        finally:
            await watcher.close()

    run(scenario())


def test_managed_config_edit_and_deletion_are_reported(tmp_path: Path) -> None:
    managed = tmp_path / "etc" / "config.json"
    managed.parent.mkdir()
    managed.write_text('{"org": "acme"}')

    async def scenario() -> None:
        watcher, notices = await watcher_for(tmp_path, managed_config=managed)
        try:
            (managed.parent / "unrelated.txt").write_text("x")
            managed.write_text('{"org": "evil"}')
            notice = await notices.wait("config-changed")
            assert notice.details["path"] == str(managed)
            assert notice.details["change"] == "modified"
            assert notice.severity == "warning"
            notices.items.clear()
            managed.unlink()
            gone = await notices.wait("config-changed")
            assert gone.details["change"] == "deleted"
        finally:
            await watcher.close()

    run(scenario())


def test_a_busy_neighbour_of_the_managed_config_never_wakes_the_loop(tmp_path: Path) -> None:
    """Thousands of writes to another file in the folder stay on watchdog's thread."""
    managed = tmp_path / "etc" / "config.json"
    managed.parent.mkdir()
    managed.write_text('{"org": "acme"}')

    async def scenario() -> list[str]:
        watcher, _ = await watcher_for(tmp_path, managed_config=managed)
        handed: list[str] = []
        loop = asyncio.get_running_loop()
        original = loop.call_soon_threadsafe

        def spy(callback: Callable[..., object], *args: Any, **kwargs: Any) -> asyncio.Handle:
            if callback == watcher._on_change:
                handed.append(str(args[1]))  # (kind, path, change)
            return original(callback, *args, **kwargs)

        loop.call_soon_threadsafe = spy  # type: ignore[method-assign,assignment]
        try:
            with (managed.parent / "big.tar").open("wb") as out:
                for _ in range(2000):
                    out.write(b"x" * 4096)
                    out.flush()
            managed.write_text('{"org": "evil"}')
            deadline = time.monotonic() + WAIT
            while str(managed) not in handed and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        finally:
            loop.call_soon_threadsafe = original  # type: ignore[method-assign]
            await watcher.close()
        return handed

    handed = run(scenario())
    assert str(managed) in handed
    assert set(handed) == {str(managed)}


def test_policy_cache_modified_by_someone_else_is_reported(tmp_path: Path) -> None:
    cache = tmp_path / "state"
    cache.mkdir()
    (cache / "policy.envelope").write_text("{}")

    async def scenario() -> None:
        watcher, notices = await watcher_for(tmp_path, policy_cache=cache)
        try:
            (cache / "status.json").write_text("{}")  # the agent's status: not the policy
            await notices.none_of("policy-cache-modified")
            atomic_write(cache / "policy.envelope", b'{"forged": true}')
            notice = await notices.wait("policy-cache-modified")
            assert set(notice.details["files"]) == {"policy.envelope"}
            assert notice.details["files"]["policy.envelope"].startswith("sha256:")
        finally:
            await watcher.close()

    run(scenario())


def test_the_agents_own_cache_writes_are_not_reported(tmp_path: Path) -> None:
    cache = tmp_path / "state"
    cache.mkdir()

    async def scenario() -> None:
        watcher, notices = await watcher_for(tmp_path, policy_cache=cache)
        try:
            watcher.expect_write(cache / "policy-state.json")
            atomic_write(cache / "policy-state.json", b"{}")
            await notices.none_of("policy-cache-modified")
            # A policy update through the sink marks the following rewrite as the agent's.
            watcher(PolicyEvent(action="policy-update", outcome="success", reason="new"))
            atomic_write(cache / "policy.envelope", b"{}")
            await notices.none_of("policy-cache-modified")
        finally:
            await watcher.close()

    run(scenario())


def test_start_and_close_are_clean_with_missing_paths(tmp_path: Path) -> None:
    async def scenario() -> None:
        watcher, _ = await watcher_for(
            tmp_path,
            docker_config=tmp_path / "absent",
            managed_config=tmp_path / "nope" / "config.json",
            policy_cache=tmp_path / "gone",
        )
        started = time.monotonic()
        await watcher.close()
        await watcher.close()
        assert time.monotonic() - started < 5.0

    run(scenario())
