"""What the managed config names must load on *this* machine: the CA bundle, the keys.

The agent (at start) and ``python -m agent.config --check`` call these; the heavy modules
(ssl, cryptography) are imported only when a key or bundle is configured.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from agent.config.keys import ManagedConfig
from agent.config.parse import ConfigError
from agent.core.policy.trust import TrustSettings

__all__ = ["check_local_files", "directory_problem", "socket_path_problem", "trust_settings"]

# Kernel file systems: nothing the agent writes (a log, a socket) can live there.
_VIRTUAL_ROOTS = (PurePosixPath("/proc"), PurePosixPath("/sys"), PurePosixPath("/dev"))


def directory_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (or become) a directory the agent writes in, or None.

    Walks up to the nearest existing ancestor: a file there means the directory can never
    be created. A path on /proc, /sys or /dev is refused (kernel file systems).
    """
    try:
        resolved = PurePosixPath(os.path.realpath(path))
    except (OSError, ValueError) as e:
        return f"cannot resolve {path}: {e}"
    for root in _VIRTUAL_ROOTS:
        if resolved == root or resolved.is_relative_to(root):
            return f"{path} is on {root}, a kernel file system the agent cannot write to"
    for candidate in (path, *path.parents):
        try:
            mode = os.stat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            return f"cannot inspect {candidate}: {e.strerror or e}"
        if stat.S_ISDIR(mode):
            return None
        if candidate == path:
            return f"{path} exists and is not a directory"
        return f"{candidate} is not a directory, so {path} cannot be created"
    return None


def socket_path_problem(path: Path) -> str | None:
    """Why the agent cannot serve a Unix socket at ``path``, or None."""
    problem = directory_problem(path.parent)
    if problem is not None:
        return problem
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot inspect {path}: {e.strerror or e}"
    if not (stat.S_ISSOCK(mode) or stat.S_ISLNK(mode)):
        return f"{path} exists and is not a socket (the agent replaces only a stale socket)"
    return None


def check_local_files(config: ManagedConfig) -> None:
    """What the agent will read on *this* machine must exist and load, or ConfigError.

    :func:`parse_config` judges values only, so a profile can be checked anywhere; the
    agent (at start) and ``--check`` also call this, so a ``ca_bundle`` that is missing or
    holds no certificate stops them with the key's name instead of failing every fetch, and
    an ``audit_dir`` or ``listen`` that cannot be created (a file on the way, /proc) is
    named here instead of failing the agent's start.
    """
    source = config.source
    if config.audit_dir is not None:
        problem = directory_problem(config.audit_dir)
        if problem is not None:
            raise ConfigError(source, "audit_dir", problem)
    if config.listen is not None:
        problem = socket_path_problem(config.listen)
        if problem is not None:
            raise ConfigError(source, "listen", problem)
    if config.ca_bundle is not None:
        import ssl  # noqa: PLC0415 - only when a CA bundle is configured

        try:
            ssl.create_default_context(cafile=str(config.ca_bundle))
        except OSError as e:  # ssl.SSLError is an OSError too
            why = e.reason if isinstance(e, ssl.SSLError) else (e.strerror or str(e))
            raise ConfigError(
                source,
                "ca_bundle",
                f"cannot load {config.ca_bundle} as PEM CA certificates: {why or e}",
            ) from None
    if config.trusted_keys:
        from agent.core.policy.envelope import EnvelopeError, PublicKey  # noqa: PLC0415 - cryptography

        for i, text in enumerate(config.trusted_keys):
            try:
                PublicKey.from_config(text)
            except EnvelopeError as e:
                raise ConfigError(source, "trusted_keys", f"item {i}: {e}") from None


def trust_settings(config: ManagedConfig) -> TrustSettings:
    """The store's trust settings; a key that does not load is a ConfigError, not a crash."""
    from agent.core.policy.envelope import EnvelopeError, PublicKey  # noqa: PLC0415 - cryptography

    keys = []
    for i, text in enumerate(config.trusted_keys):
        try:
            keys.append(PublicKey.from_config(text))
        except EnvelopeError as e:
            raise ConfigError(config.source, "trusted_keys", f"item {i}: {e}") from None
    return TrustSettings(
        org=config.org or "",
        trusted_keys=tuple(keys),
        threshold=config.key_threshold,
        offline_grace=config.offline_grace,
        stale_behavior=config.stale_behavior,
    )
