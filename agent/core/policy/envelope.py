"""The signed envelope: DSSE v1 with Ed25519, for the org policy.

Bytes in, values out: no files, no clock. The signature, not the web server, is what an
agent trusts, so verification is strict (python-tuf's trusted-metadata set is the model):
exactly the DSSE fields, canonical base64 only, the payload type pinned, and a threshold
counted over *distinct* trusted keys, so one key signing twice is still one signature.

Key ids are ``sha256:`` followed by the first 32 hex digits (128 bits) of the SHA-256 of
the raw 32-byte Ed25519 public key. In DSSE a keyid is an unauthenticated hint: it only
picks which trusted key to check a signature with, so 128 bits is ample, and the id is
stable however the key is written (PEM, ``ed25519:`` config string).

Signatures without a keyid (DSSE allows them) are checked against every trusted key.
Base64 may use the standard or the URL-safe alphabet (DSSE allows either), padded and
canonical: whitespace, missing padding and non-zero trailing bits are refused, so an
envelope has one spelling. ``ed25519:`` config strings use the standard alphabet only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from agent.core.policy.document import PolicyError, decode_json

__all__ = [
    "CONFIG_PREFIX",
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNATURES",
    "PAYLOAD_TYPE",
    "EnvelopeError",
    "PublicKey",
    "VerifiedPayload",
    "pae",
    "sign_envelope",
    "verify_envelope",
]

PAYLOAD_TYPE = "application/vnd.pullgate.policy+json"
CONFIG_PREFIX = "ed25519:"
# Room for a policy with 10,000 rules (~1 MB of JSON, 4/3 of that in base64), small
# enough that a hostile server cannot make an agent parse much.
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024
MAX_SIGNATURES = 64

_ED25519_RAW_LEN = 32
_ED25519_SIG_LEN = 64
_ENVELOPE_FIELDS = frozenset({"payloadType", "payload", "signatures"})
_SIGNATURE_FIELDS = frozenset({"keyid", "sig"})


class EnvelopeError(ValueError):
    """An envelope (or key text) that must not be trusted; the message says which check."""


def _b64decode_strict(text: str, what: str, *, allow_urlsafe: bool = True) -> bytes:
    """Decode padded, canonical base64 in either DSSE alphabet, or raise EnvelopeError."""
    urlsafe = "-" in text or "_" in text
    if urlsafe and not allow_urlsafe:
        raise EnvelopeError(f"{what} is not standard base64 (found '-' or '_')")
    try:
        raw = (
            base64.urlsafe_b64decode(text.encode("ascii"))
            if urlsafe
            else base64.b64decode(text.encode("ascii"), validate=True)
        )
    except (binascii.Error, UnicodeEncodeError, ValueError) as e:
        raise EnvelopeError(f"{what} is not valid base64: {e}") from e
    again = base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)
    if again.decode("ascii") != text:
        # Catches stray characters urlsafe_b64decode skips, missing padding and non-zero
        # trailing bits: one envelope must have exactly one spelling.
        raise EnvelopeError(f"{what} is not canonical base64")
    return raw


def _keyid(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


@dataclass(frozen=True)
class PublicKey:
    """A trusted Ed25519 public key, as raw bytes; ``keyid`` is derived from them."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != _ED25519_RAW_LEN:
            raise EnvelopeError(
                f"an Ed25519 public key is {_ED25519_RAW_LEN} bytes, got {len(self.raw)}"
            )

    @property
    def keyid(self) -> str:
        """``sha256:`` + the first 32 hex digits of SHA-256(raw)."""
        return _keyid(self.raw)

    def to_config(self) -> str:
        """The ``trusted_keys`` entry for the managed config: ``ed25519:<base64 raw>``."""
        return CONFIG_PREFIX + base64.b64encode(self.raw).decode("ascii")

    @classmethod
    def from_config(cls, text: str) -> PublicKey:
        """Parse a ``trusted_keys`` entry; anything but ``ed25519:<base64 of 32 bytes>``
        is refused, since a half-read trusted key would silently trust nothing."""
        if not isinstance(text, str) or not text.startswith(CONFIG_PREFIX):
            raise EnvelopeError(
                f"trusted key {text!r}: expected 'ed25519:' followed by the base64 public key"
            )
        # Standard alphabet only: one key, one spelling, so the config's "no repeated
        # items" rule also rules out the same key trusted twice.
        raw = _b64decode_strict(
            text[len(CONFIG_PREFIX) :], f"trusted key {text!r}", allow_urlsafe=False
        )
        if len(raw) != _ED25519_RAW_LEN:
            raise EnvelopeError(
                f"trusted key {text!r}: an Ed25519 public key is {_ED25519_RAW_LEN} bytes, "
                f"got {len(raw)}"
            )
        return cls(raw)

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        """Read a SubjectPublicKeyInfo PEM (the ``.pub`` file ``admin keygen`` writes)."""
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise EnvelopeError(f"not a PEM public key: {e}") from e
        if not isinstance(key, Ed25519PublicKey):
            raise EnvelopeError(f"not an Ed25519 public key (got {type(key).__name__})")
        return cls.from_key(key)

    @classmethod
    def from_key(cls, key: Ed25519PublicKey | Ed25519PrivateKey) -> PublicKey:
        public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
        return cls(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def to_pem(self) -> bytes:
        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verifies(self, message: bytes, signature: bytes) -> bool:
        if len(signature) != _ED25519_SIG_LEN:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed.

    Binding the payload type into the signed bytes stops a signature over some other
    kind of document from being replayed as a policy.
    """
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


def sign_envelope(payload: bytes, keys: Sequence[Ed25519PrivateKey]) -> bytes:
    """Sign ``payload`` as a policy with each key; return the envelope's JSON bytes.

    The output is deterministic (Ed25519 signatures are, keys are sorted, separators
    fixed), so signing the same policy with the same keys gives identical bytes.
    """
    if not keys:
        raise ValueError("sign_envelope needs at least one key")
    message = pae(PAYLOAD_TYPE, payload)
    signatures = []
    seen: set[str] = set()
    for key in keys:
        keyid = PublicKey.from_key(key).keyid
        if keyid in seen:
            raise ValueError(f"key {keyid} was given twice; it would still count once")
        seen.add(keyid)
        sig = key.sign(message)
        signatures.append({"keyid": keyid, "sig": base64.b64encode(sig).decode("ascii")})
    envelope = {
        "payload": base64.b64encode(payload).decode("ascii"),
        "payloadType": PAYLOAD_TYPE,
        "signatures": signatures,
    }
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


@dataclass(frozen=True)
class VerifiedPayload:
    """A payload whose signatures met the threshold; ``signers`` are the trusted key ids
    with a valid signature, in the order they appear in the envelope."""

    payload: bytes
    signers: tuple[str, ...]


@dataclass(frozen=True)
class _Signature:
    keyid: str | None
    sig: bytes


def _not_dsse(problem: str) -> EnvelopeError:
    return EnvelopeError(f"not a DSSE envelope: {problem}")


def _parse(data: bytes, max_bytes: int) -> tuple[str, bytes, list[_Signature]]:
    if len(data) > max_bytes:
        raise EnvelopeError(f"envelope is {len(data)} bytes; the limit is {max_bytes}")
    try:
        document = decode_json(data, what="envelope")
    except PolicyError as e:
        raise _not_dsse(e.problem) from e
    if not isinstance(document, dict):
        raise _not_dsse("expected a JSON object")
    keys = set(document)
    if keys != _ENVELOPE_FIELDS:
        missing = sorted(_ENVELOPE_FIELDS - keys)
        extra = sorted(keys - _ENVELOPE_FIELDS)
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unexpected field {', '.join(extra)}"] if extra else []
        raise _not_dsse("; ".join(parts))
    payload_type, payload_text, raw_sigs = (
        document["payloadType"],
        document["payload"],
        document["signatures"],
    )
    if not isinstance(payload_type, str):
        raise _not_dsse("payloadType must be a string")
    if not isinstance(payload_text, str):
        raise _not_dsse("payload must be a base64 string")
    if not isinstance(raw_sigs, list) or not raw_sigs:
        raise _not_dsse("signatures must be a non-empty array")
    if len(raw_sigs) > MAX_SIGNATURES:
        # Each keyless signature costs one Ed25519 check per trusted key: bound the work a
        # hostile server can ask for.
        raise _not_dsse(f"{len(raw_sigs)} signatures; at most {MAX_SIGNATURES} are read")
    signatures = []
    for i, item in enumerate(raw_sigs):
        where = f"signatures[{i}]"
        if not isinstance(item, dict):
            raise _not_dsse(f"{where} must be an object")
        if "sig" not in item:
            raise _not_dsse(f"{where}.sig is missing")
        extra = sorted(set(item) - _SIGNATURE_FIELDS)
        if extra:
            raise _not_dsse(f"{where} has unexpected field {', '.join(extra)}")
        keyid = item.get("keyid")
        if keyid is not None and not isinstance(keyid, str):
            raise _not_dsse(f"{where}.keyid must be a string")
        if not isinstance(item["sig"], str):
            raise _not_dsse(f"{where}.sig must be a base64 string")
        try:
            sig = _b64decode_strict(item["sig"], f"{where}.sig")
        except EnvelopeError as e:
            raise _not_dsse(str(e)) from e
        signatures.append(_Signature(keyid or None, sig))
    try:
        payload = _b64decode_strict(payload_text, "payload")
    except EnvelopeError as e:
        raise _not_dsse(str(e)) from e
    return payload_type, payload, signatures


def verify_envelope(
    data: bytes,
    trusted: Sequence[PublicKey],
    threshold: int,
    *,
    max_bytes: int = MAX_ENVELOPE_BYTES,
) -> VerifiedPayload:
    """Return the payload if at least ``threshold`` distinct trusted keys signed it.

    Raises EnvelopeError for an envelope that must not be trusted, and ValueError for a
    ``threshold`` the trusted keys cannot meet: that is a configuration mistake (ours),
    not a bad envelope (theirs), and must not be reported as one.
    """
    by_id: dict[str, PublicKey] = {}
    for trusted_key in trusted:
        by_id.setdefault(trusted_key.keyid, trusted_key)
    if threshold < 1 or threshold > len(by_id):
        raise ValueError(
            f"key threshold {threshold} is impossible with {len(by_id)} distinct trusted "
            "key(s): it must be between 1 and the number of trusted keys"
        )
    payload_type, payload, signatures = _parse(data, max_bytes)
    if payload_type != PAYLOAD_TYPE:
        raise EnvelopeError(f"payloadType is {payload_type!r}, expected {PAYLOAD_TYPE!r}")
    message = pae(payload_type, payload)
    valid: list[str] = []
    bad: list[str] = []
    unknown: list[str] = []
    for signature in signatures:
        if signature.keyid is None:
            hits = [k for k in by_id.values() if k.verifies(message, signature.sig)]
            if not hits:
                bad.append("signature without keyid matches no trusted key")
            valid.extend(k.keyid for k in hits if k.keyid not in valid)
            continue
        key = by_id.get(signature.keyid)
        if key is None:
            if signature.keyid not in unknown:
                unknown.append(signature.keyid)
        elif key.verifies(message, signature.sig):
            if key.keyid not in valid:
                valid.append(key.keyid)
        else:
            bad.append(f"bad signature (key {key.keyid})")
    if len(valid) >= threshold:
        return VerifiedPayload(payload, tuple(valid))
    details = list(dict.fromkeys(bad))
    if unknown:
        only = "only " if not valid and not bad else ""
        details.append(f"signed {only}by unknown keys ({', '.join(unknown)})")
    if threshold > 1:
        plural = "signature" if threshold == 1 else "signatures"
        got = f"got {len(valid)}" + (f" (from {', '.join(valid)})" if valid else "")
        details.insert(0, f"{threshold} valid {plural} needed, {got}")
    raise EnvelopeError("; ".join(details))
