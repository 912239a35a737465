"""The docker context that routes the docker CLI through the shim.

``DOCKER_HOST`` lives in one shell; a docker context is what the CLI (and compose, and
most SDKs that read the CLI config) use everywhere. We write the context exactly as
``docker context create`` does (``contexts/meta/<sha256(name)>/meta.json`` under
``$DOCKER_CONFIG`` or ``~/.docker``) and select it with ``currentContext`` in
``config.json``, keeping every other key. The previous context is remembered in a small
state file next to the config, so ``uninstall`` can put things back as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.platform.files import atomic_write, same_file
from agent.platform.windows import (
    DESKTOP_ENGINE_PIPE,
    WindowsNameError,
    docker_host,
    pipe_from_docker_host,
)

__all__ = [
    "DEFAULT_NAME",
    "STATE_FILE",
    "ContextChange",
    "ContextError",
    "ContextStatus",
    "DockerEndpoint",
    "context_meta_dir",
    "context_status",
    "current_context",
    "docker_config_dir",
    "docker_endpoint",
    "host_url",
    "install_context",
    "points_at",
    "uninstall_context",
]

DEFAULT_NAME = "pullgate"
DEFAULT_HOST = (
    docker_host(DESKTOP_ENGINE_PIPE) if sys.platform == "win32" else "unix:///var/run/docker.sock"
)
"""Where the CLI's default context connects when ``DOCKER_HOST`` is not set (on Windows
``npipe:////./pipe/docker_engine``)."""
STATE_FILE = "pullgate-context.json"
"""In the docker config directory: which context was current before ``install``."""


class ContextError(Exception):
    """The docker client config cannot be read or written; the message says which file."""


def docker_config_dir(env: Mapping[str, str], home: Path) -> Path:
    """Where the docker CLI keeps its config: ``$DOCKER_CONFIG``, else ``~/.docker``."""
    return Path(env.get("DOCKER_CONFIG") or home / ".docker")


def context_meta_dir(config_dir: Path, name: str) -> Path:
    return config_dir / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: deeply nested
        raise ContextError(f"{path}: cannot read: {e}") from e
    if not isinstance(data, dict):
        raise ContextError(f"{path}: not a JSON object")
    return data


def _write_json(path: Path, data: Mapping[str, Any], mode: int) -> None:
    """Atomically, like the CLI (tab-indented); through a symlinked config.json."""
    target = path.resolve() if path.is_symlink() else path
    with contextlib.suppress(OSError):
        mode = target.stat().st_mode & 0o777
    try:
        atomic_write(target, (json.dumps(data, indent="\t") + "\n").encode(), mode)
    except OSError as e:
        raise ContextError(f"{target}: cannot write: {e}") from e


def current_context(config_dir: Path, env: Mapping[str, str]) -> str | None:
    """The context the CLI uses: ``DOCKER_CONTEXT``, else ``currentContext`` (None: default)."""
    if env.get("DOCKER_CONTEXT"):
        return env["DOCKER_CONTEXT"]
    config = _read_json(config_dir / "config.json") or {}
    name = config.get("currentContext")
    return name if isinstance(name, str) and name else None


def _context_host(config_dir: Path, name: str) -> str | None:
    """The docker endpoint host of context ``name`` (None: missing or unreadable)."""
    try:
        meta = _read_json(context_meta_dir(config_dir, name) / "meta.json")
    except ContextError:
        return None
    try:
        host = (meta or {})["Endpoints"]["docker"]["Host"]
    except (KeyError, TypeError):
        return None
    return host if isinstance(host, str) else None


@dataclass(frozen=True)
class DockerEndpoint:
    """The daemon address the docker CLI connects to, and why."""

    url: str | None  # None: the selected context has no readable endpoint (the CLI fails)
    source: str  # DOCKER_HOST | DOCKER_CONTEXT | config.json | default
    context: str | None  # the selected context (None: DOCKER_HOST, or none selected)

    def describe(self, config_dir: Path) -> str:
        """``source`` in words, for messages: where the address came from."""
        if self.source == "DOCKER_HOST":
            return "DOCKER_HOST"
        if self.source == "default":
            return "the default socket"
        where = (
            "DOCKER_CONTEXT"
            if self.source == "DOCKER_CONTEXT"
            else f"currentContext in {config_dir / 'config.json'}"
        )
        return f"docker context {self.context!r} ({where})"


def docker_endpoint(config_dir: Path, env: Mapping[str, str]) -> DockerEndpoint:
    """Where the docker CLI connects, with the CLI's precedence: ``DOCKER_HOST``, then the
    context named by ``DOCKER_CONTEXT``, then ``currentContext`` in config.json, then the
    default socket. The one place this is worked out; ``ContextError``: config.json
    cannot be read."""
    if env.get("DOCKER_HOST"):
        return DockerEndpoint(env["DOCKER_HOST"], "DOCKER_HOST", None)
    source = "DOCKER_CONTEXT" if env.get("DOCKER_CONTEXT") else "config.json"
    name = current_context(config_dir, env)
    if name is None or name == "default":
        return DockerEndpoint(DEFAULT_HOST, "default", name)
    return DockerEndpoint(_context_host(config_dir, name), source, name)


def host_url(listen: Path) -> str:
    """The docker host URL of the shim at ``listen``: ``unix://PATH``; on Windows, where
    the shim is a named pipe, ``npipe:////./pipe/NAME`` (``ContextError`` for a path that
    is no pipe there)."""
    if sys.platform == "win32":
        try:
            return docker_host(str(listen))
        except WindowsNameError as e:
            raise ContextError(f"on Windows the shim is a named pipe: {e}") from e
    else:
        return f"unix://{listen}"


def points_at(url: str | None, path: Path) -> bool:
    """``url`` (a docker host) is the unix socket at ``path``, or the named pipe ``path``
    names (``npipe://``: Windows, where pipe names are case-insensitive)."""
    if url and url.startswith("npipe:"):
        try:
            pipe = pipe_from_docker_host(url)
        except WindowsNameError:
            return False
        return pipe.lower() == str(path).lower()
    if not url or not url.startswith("unix://"):
        return False
    return same_file(Path(url[len("unix://") :]), path)


@dataclass(frozen=True)
class ContextStatus:
    """Where ``docker`` goes now, and why."""

    current: str | None  # the context name, None for the default context
    source: str  # DOCKER_HOST | DOCKER_CONTEXT | config.json | default
    endpoint: str | None  # what the CLI will connect to
    through_shim: bool
    installed: bool  # our context exists

    def describe(self, listen: Path) -> str:
        where = self.endpoint or f"the default socket ({DEFAULT_HOST})"
        verdict = "goes through the shim" if self.through_shim else "BYPASSES the shim"
        return (
            f"current context: {self.current or 'default'} (from {self.source}); "
            f"docker connects to {where}: it {verdict} ({host_url(listen)})"
        )


def context_status(
    config_dir: Path, listen: Path, env: Mapping[str, str], name: str = DEFAULT_NAME
) -> ContextStatus:
    installed = (context_meta_dir(config_dir, name) / "meta.json").is_file()
    endpoint = docker_endpoint(config_dir, env)
    current = endpoint.context
    if endpoint.source == "DOCKER_HOST":
        current = current_context(config_dir, env)
    url = None if endpoint.source == "default" else endpoint.url
    return ContextStatus(current, endpoint.source, url, points_at(endpoint.url, listen), installed)


@dataclass(frozen=True)
class ContextChange:
    name: str
    previous: str | None  # the context current before install (None: default)
    changed: bool  # False when there was nothing to do


def install_context(config_dir: Path, listen: Path, name: str = DEFAULT_NAME) -> ContextChange:
    """Create (or update) context ``name`` at the shim and select it; idempotent."""
    if not name or name == "default" or "/" in name:
        raise ContextError(f"{name!r} cannot be a context name")
    meta = {
        "Name": name,
        "Metadata": {"Description": "Docker through the Pullgate image policy shim"},
        "Endpoints": {"docker": {"Host": host_url(listen), "SkipTLSVerify": False}},
    }
    meta_path = context_meta_dir(config_dir, name) / "meta.json"
    changed = False
    if _read_json(meta_path) != meta:
        meta_path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        _write_json(meta_path, meta, 0o644)
        changed = True
    config_path = config_dir / "config.json"
    config = _read_json(config_path) or {}
    current = config.get("currentContext")
    current = current if isinstance(current, str) and current else None
    state_path = config_dir / STATE_FILE
    state = _read_json(state_path)
    if state is not None and state.get("name") == name:
        previous = state.get("previous")
        previous = previous if isinstance(previous, str) else None
    else:
        previous = current if current != name else None
        _write_json(state_path, {"name": name, "previous": previous}, 0o600)
        changed = True
    if current != name:
        config["currentContext"] = name
        config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_json(config_path, config, 0o600)
        changed = True
    return ContextChange(name, previous, changed)


def uninstall_context(config_dir: Path, name: str = DEFAULT_NAME) -> ContextChange:
    """Select the context current before ``install`` again (only if ours is still
    selected: a context the user chose since is left alone) and delete ours; idempotent."""
    state_path = config_dir / STATE_FILE
    state = _read_json(state_path) or {}
    previous = state.get("previous") if state.get("name") == name else None
    previous = previous if isinstance(previous, str) and previous else None
    if (
        previous is not None
        and previous != "default"
        and not (context_meta_dir(config_dir, previous) / "meta.json").is_file()
    ):
        previous = None  # deleted since: fall back to the default context
    changed = False
    config_path = config_dir / "config.json"
    config = _read_json(config_path)
    if config is not None and config.get("currentContext") == name:
        if previous is None:
            del config["currentContext"]
        else:
            config["currentContext"] = previous
        _write_json(config_path, config, 0o600)
        changed = True
    meta_dir = context_meta_dir(config_dir, name)
    if meta_dir.exists():
        shutil.rmtree(meta_dir)
        changed = True
    tls_dir = config_dir / "contexts" / "tls" / meta_dir.name
    if tls_dir.exists():
        shutil.rmtree(tls_dir)
    if state_path.exists():
        state_path.unlink()
        changed = True
    return ContextChange(name, previous, changed)
