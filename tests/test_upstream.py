"""Finding the daemon's socket the way developers' tools find it — never the shim's own."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.platform.upstream import (
    UpstreamError,
    default_listen_path,
    find_upstream,
    parse_unix_url,
)


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[dict[str, Path]]:
    made: dict[str, Path] = {}
    open_socks = []
    for name in ("daemon", "context", "shim"):
        path = tmp_path / f"{name}.sock"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        open_socks.append(s)
        made[name] = path
    yield made
    for s in open_socks:
        s.close()


def test_docker_host_wins(sockets: dict[str, Path], tmp_path: Path) -> None:
    env = {"DOCKER_HOST": f"unix://{sockets['daemon']}"}
    choice = find_upstream(sockets["shim"], env, tmp_path, 1000)
    assert (choice.path, choice.source) == (sockets["daemon"], "DOCKER_HOST")


def test_docker_host_pointing_at_the_shim_is_skipped(
    sockets: dict[str, Path], tmp_path: Path
) -> None:
    env = {"DOCKER_HOST": f"unix://{sockets['shim']}", "XDG_RUNTIME_DIR": str(tmp_path / "none")}
    with pytest.raises(UpstreamError, match="that is this shim"):
        find_upstream(sockets["shim"], env, tmp_path / "home", 1000)


def test_current_docker_context_is_followed(sockets: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    meta = config / "contexts" / "meta" / hashlib.sha256(b"work").hexdigest()
    meta.mkdir(parents=True)
    (config / "config.json").write_text(json.dumps({"currentContext": "work"}))
    (meta / "meta.json").write_text(
        json.dumps(
            {"Name": "work", "Endpoints": {"docker": {"Host": f"unix://{sockets['context']}"}}}
        )
    )
    choice = find_upstream(sockets["shim"], {"DOCKER_CONFIG": str(config)}, tmp_path, 1000)
    assert (choice.path, choice.source) == (sockets["context"], "docker context 'work'")


def test_nothing_found_lists_where_it_looked(tmp_path: Path) -> None:
    env = {"DOCKER_HOST": "tcp://10.0.0.1:2375", "XDG_RUNTIME_DIR": str(tmp_path)}
    with pytest.raises(UpstreamError) as info:
        find_upstream(tmp_path / "shim.sock", env, tmp_path, 1000)
    text = str(info.value)
    assert "not a unix socket" in text and "--upstream" in text


def test_default_listen_paths() -> None:
    assert default_listen_path(0, {}) == Path("/run/pullgate/docker.sock")
    assert default_listen_path(1000, {"XDG_RUNTIME_DIR": "/run/user/1000"}) == Path(
        "/run/user/1000/pullgate/docker.sock"
    )


def test_only_unix_urls() -> None:
    assert parse_unix_url("unix:///var/run/docker.sock") == Path("/var/run/docker.sock")
    for bad in ("tcp://1.2.3.4:2375", "unix://relative", "npipe:////./pipe/docker"):
        with pytest.raises(UpstreamError):
            parse_unix_url(bad)


@pytest.mark.parametrize("where", ["config", "meta"])
def test_a_deeply_nested_docker_config_is_skipped_not_a_crash(
    sockets: dict[str, Path], tmp_path: Path, where: str
) -> None:
    config = tmp_path / "cfg"
    meta = config / "contexts" / "meta" / hashlib.sha256(b"work").hexdigest()
    meta.mkdir(parents=True)
    deep = "[" * 40_000
    (config / "config.json").write_text(deep if where == "config" else '{"currentContext":"work"}')
    (meta / "meta.json").write_text(deep)
    env = {"DOCKER_CONFIG": str(config), "XDG_RUNTIME_DIR": str(tmp_path)}
    try:
        choice = find_upstream(sockets["shim"], env, tmp_path, 1000)
    except UpstreamError:
        return  # nothing else on this machine: refused with the usual error, no traceback
    assert not choice.source.startswith("docker context")
