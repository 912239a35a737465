"""Where the real Docker daemon listens, and where the shim should listen.

Found in the order a developer's tools would find the daemon: ``DOCKER_HOST``, the
current docker context, ``/var/run/docker.sock``, rootless and Docker Desktop sockets.
The shim's own socket is never chosen, so a ``DOCKER_HOST`` already pointed at the
shim cannot make the agent talk to itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.platform.docker_context import (
    DEFAULT_HOST,
    ContextError,
    docker_config_dir,
    docker_endpoint,
)
from agent.platform.files import same_file
from agent.platform.paths import system_run_dir

__all__ = ["UpstreamChoice", "UpstreamError", "default_listen_path", "find_upstream"]


class UpstreamError(Exception):
    """No usable daemon socket; the message lists where we looked."""


@dataclass(frozen=True)
class UpstreamChoice:
    path: Path
    source: str  # how it was found, for `pullgate status` and errors


def default_listen_path(uid: int, env: Mapping[str, str]) -> Path:
    """``/run/pullgate/docker.sock`` for root (``/var/run/...`` on macOS), else under the
    user's runtime directory."""
    if uid == 0:
        return system_run_dir() / "docker.sock"
    runtime = env.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}"
    return Path(runtime) / "pullgate" / "docker.sock"


def parse_unix_url(url: str) -> Path:
    """``unix:///path`` (or a bare absolute path) to a path; other schemes are refused."""
    if url.startswith("unix://"):
        path = url[len("unix://") :]
    elif url.startswith("/"):
        path = url
    else:
        raise UpstreamError(f"{url!r}: only unix:// sockets are supported")
    if not path.startswith("/"):
        raise UpstreamError(f"{url!r}: the socket path must be absolute")
    return Path(path)


def find_upstream(listen: Path, env: Mapping[str, str], home: Path, uid: int) -> UpstreamChoice:
    """The daemon socket to forward to; never ``listen`` itself."""
    candidates: list[tuple[str, str]] = []
    if env.get("DOCKER_HOST"):
        candidates.append((env["DOCKER_HOST"], "DOCKER_HOST"))
    try:
        # The context as the CLI would pick it when DOCKER_HOST is not set.
        env_context = {k: v for k, v in env.items() if k != "DOCKER_HOST"}
        cli = docker_endpoint(docker_config_dir(env, home), env_context)
    except ContextError:
        cli = None
    if cli is not None and cli.source != "default" and cli.url:
        candidates.append((cli.url, f"docker context {cli.context!r}"))
    candidates.append((DEFAULT_HOST, "the default socket"))
    runtime = env.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}"
    candidates += [
        (f"unix://{runtime}/docker.sock", "rootless Docker"),
        (f"unix://{home}/.docker/run/docker.sock", "Docker Desktop"),
        (f"unix://{home}/.docker/desktop/docker.sock", "Docker Desktop"),
    ]
    looked: list[str] = []
    for url, source in candidates:
        try:
            path = parse_unix_url(url)
        except UpstreamError:
            looked.append(f"{url} ({source}: not a unix socket)")
            continue
        if same_file(path, listen):
            looked.append(f"{path} ({source}: that is this shim)")
            continue
        if path.is_socket():
            return UpstreamChoice(path, source)
        looked.append(f"{path} ({source})")
    raise UpstreamError(
        "no Docker daemon socket found; looked at "
        + ", ".join(looked)
        + ". Pass --upstream unix:///path/to/docker.sock"
    )
