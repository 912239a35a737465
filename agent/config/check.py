"""What the managed config names must load on *this* machine: the CA bundle, the keys.

The agent (at start) and ``python -m agent.config --check`` call these; the heavy modules
(ssl, cryptography) are imported only when a key or bundle is configured.
"""

from __future__ import annotations

from agent.config.keys import ManagedConfig
from agent.config.parse import ConfigError
from agent.core.policy.trust import TrustSettings

__all__ = ["check_local_files", "trust_settings"]


def check_local_files(config: ManagedConfig) -> None:
    """What the agent will read on *this* machine must exist and load, or ConfigError.

    :func:`parse_config` judges values only, so a profile can be checked anywhere; the
    agent (at start) and ``--check`` also call this, so a ``ca_bundle`` that is missing or
    holds no certificate stops them with the key's name instead of failing every fetch.
    """
    source = config.source
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
