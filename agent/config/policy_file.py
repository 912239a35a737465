"""A policy named on the command line: plain policy JSON, or a signed envelope.

``pullgate check --policy`` and ``pullgate agent --policy`` accept both: plain JSON is
what an admin authors and tries out; an envelope is what the org publishes. An envelope
is only ever used after its signatures verify against keys the caller trusts — with no
trusted keys it is refused, not unwrapped, because a policy that merely *looks* signed
must never be mistaken for one that is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from agent.core.policy.document import (
    MAX_POLICY_BYTES,
    Policy,
    PolicyError,
    decode_json,
    load_policy,
)
from agent.core.policy.envelope import (
    CONFIG_PREFIX,
    MAX_ENVELOPE_BYTES,
    EnvelopeError,
    PublicKey,
    verify_envelope,
)
from agent.platform.files import FileTooLargeError, read_capped

__all__ = [
    "PolicySourceError",
    "is_envelope",
    "load_policy_source",
    "policy_from_bytes",
    "read_public_key",
]

MAX_PUBLIC_KEY_BYTES = 64 * 1024
_DSSE_FIELDS = ("payloadType", "payload", "signatures")


class PolicySourceError(ValueError):
    """A policy file or trusted key that cannot be used; the message is one line for
    the user and names the file and the problem."""


def is_envelope(document: object) -> bool:
    """Whether a decoded JSON document is meant as a DSSE envelope, not a policy."""
    return isinstance(document, dict) and any(k in document for k in _DSSE_FIELDS)


def read_public_key(arg: str) -> PublicKey:
    """A ``--trusted-key`` value: an ``ed25519:...`` string or a ``.pub`` PEM file."""
    try:
        if arg.startswith(CONFIG_PREFIX):
            return PublicKey.from_config(arg)
        try:
            data = read_capped(arg, MAX_PUBLIC_KEY_BYTES)
        except OSError as e:
            raise PolicySourceError(
                f"cannot read trusted key {arg}: {e.strerror or e} "
                "(expected a .pub file or an 'ed25519:...' key)"
            ) from e
        except FileTooLargeError as e:
            raise PolicySourceError(f"trusted key {arg} is too large to be a public key") from e
        return PublicKey.from_pem(data)
    except EnvelopeError as e:
        raise PolicySourceError(f"trusted key {arg}: {e}") from e


def policy_from_bytes(
    data: bytes,
    *,
    trusted: Sequence[PublicKey] | None,
    threshold: int = 1,
    source: str = "policy",
    require_signed: bool = False,
) -> Policy:
    """Plain policy JSON or an envelope (verified against ``trusted``) → a Policy.

    ``require_signed`` refuses plain JSON: for callers (an agent with a managed config)
    that must never run an unsigned policy.
    """
    try:
        document = decode_json(data, what=source)
    except PolicyError as e:
        raise PolicySourceError(f"invalid policy: {e}") from e
    if not is_envelope(document):
        if require_signed:
            raise PolicySourceError(
                f"{source} is plain policy JSON, but only a signed envelope is accepted here "
                "(sign it with 'pullgate admin sign')"
            )
        try:
            return load_policy(data, source=source)
        except PolicyError as e:
            raise PolicySourceError(f"invalid policy {source}: {e}") from e
    if not trusted:
        raise PolicySourceError(
            f"{source} is a signed envelope, and no trusted key is configured to verify it: "
            "pass --trusted-key PUB (a .pub file or an 'ed25519:...' key)"
        )
    try:
        verified = verify_envelope(data, trusted, threshold)
    except EnvelopeError as e:
        raise PolicySourceError(f"{source} is not a trustworthy signed policy: {e}") from e
    except ValueError as e:  # an impossible threshold: a config problem, said as such
        raise PolicySourceError(str(e)) from e
    try:
        return load_policy(verified.payload, source=f"signed {source}")
    except PolicyError as e:
        raise PolicySourceError(f"the policy signed in {source} is invalid: {e}") from e


def load_policy_source(
    path: str | Path,
    trusted: Sequence[PublicKey] | None,
    threshold: int = 1,
    *,
    require_signed: bool = False,
) -> Policy:
    """Read ``path`` (capped) and return its policy; see :func:`policy_from_bytes`."""
    limit = max(MAX_POLICY_BYTES, MAX_ENVELOPE_BYTES)
    try:
        data = read_capped(path, limit)
    except OSError as e:
        raise PolicySourceError(f"cannot read policy {path}: {e.strerror or e}") from e
    except FileTooLargeError as e:
        raise PolicySourceError(f"policy {e}") from e
    return policy_from_bytes(
        data,
        trusted=trusted,
        threshold=threshold,
        source=f"policy file {path}",
        require_signed=require_signed,
    )
