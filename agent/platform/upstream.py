"""Where the real Docker daemon listens, and where the shim should listen.

Found in the order a developer's tools would find the daemon: ``DOCKER_HOST``, the
current docker context, ``/var/run/docker.sock``, rootless and Docker Desktop sockets.
The shim's own socket is never chosen, so a ``DOCKER_HOST`` already pointed at the
shim cannot make the agent talk to itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["UpstreamChoice", "UpstreamError", "default_listen_path", "find_upstream"]


class UpstreamError(Exception):
    """No usable daemon socket; the message lists where we looked."""


@dataclass(frozen=True)
class UpstreamChoice:
    path: Path
    source: str  # how it was found, for `pullgate status` and errors


def default_listen_path(uid: int, env: Mapping[str, str]) -> Path:
    """``/run/pullgate/docker.sock`` for root, else under the user's runtime directory."""
    if uid == 0:
        return Path("/run/pullgate/docker.sock")
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


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _context_host(home: Path, env: Mapping[str, str]) -> tuple[str, str] | None:
    config_dir = Path(env.get("DOCKER_CONFIG") or home / ".docker")
    name = env.get("DOCKER_CONTEXT")
    if not name:
        try:
            config = json.loads((config_dir / "config.json").read_text())
        except (OSError, ValueError, RecursionError):
            return None
        name = config.get("currentContext") if isinstance(config, dict) else None
    if not name or name == "default":
        return None
    digest = hashlib.sha256(name.encode()).hexdigest()
    try:
        meta = json.loads((config_dir / "contexts" / "meta" / digest / "meta.json").read_text())
        host = meta["Endpoints"]["docker"]["Host"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return (host, f"docker context {name!r}") if isinstance(host, str) else None


def find_upstream(listen: Path, env: Mapping[str, str], home: Path, uid: int) -> UpstreamChoice:
    """The daemon socket to forward to; never ``listen`` itself."""
    candidates: list[tuple[str, str]] = []
    if env.get("DOCKER_HOST"):
        candidates.append((env["DOCKER_HOST"], "DOCKER_HOST"))
    context = _context_host(home, env)
    if context:
        candidates.append(context)
    candidates.append(("unix:///var/run/docker.sock", "the default socket"))
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
        if _same(path, listen):
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
