"""The signed envelope, bytes in and values out: what is trusted and what is refused."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core.policy.envelope import (
    MAX_ENVELOPE_BYTES,
    MAX_SIGNATURES,
    PAYLOAD_TYPE,
    EnvelopeError,
    PublicKey,
    pae,
    sign_envelope,
    verify_envelope,
)

PAYLOAD = b'{"schema": "pullgate.policy/v1", "org": "acme"}\n'


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def pub(key: Ed25519PrivateKey) -> PublicKey:
    return PublicKey.from_key(key)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def envelope_dict(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    assert isinstance(value, dict)
    return value


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


def raw_sig(key: Ed25519PrivateKey, payload: bytes, payload_type: str = PAYLOAD_TYPE) -> str:
    return b64(key.sign(pae(payload_type, payload)))


# --- PAE and signing ------------------------------------------------------------------


def test_pae_matches_the_dsse_spec_example() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


def test_round_trip_returns_payload_and_signer() -> None:
    key = new_key()
    verified = verify_envelope(sign_envelope(PAYLOAD, [key]), [pub(key)], 1)
    assert verified.payload == PAYLOAD
    assert verified.signers == (pub(key).keyid,)


def test_signed_envelope_has_exactly_the_dsse_fields() -> None:
    key = new_key()
    doc = envelope_dict(sign_envelope(PAYLOAD, [key]))
    assert set(doc) == {"payloadType", "payload", "signatures"}
    assert doc["payloadType"] == PAYLOAD_TYPE
    assert base64.b64decode(doc["payload"]) == PAYLOAD
    assert doc["signatures"] == [{"keyid": pub(key).keyid, "sig": raw_sig(key, PAYLOAD)}]


def test_signing_is_deterministic() -> None:
    key = new_key()
    assert sign_envelope(PAYLOAD, [key]) == sign_envelope(PAYLOAD, [key])


def test_signing_with_the_same_key_twice_is_refused() -> None:
    key = new_key()
    with pytest.raises(ValueError, match="given twice"):
        sign_envelope(PAYLOAD, [key, key])


def test_signing_without_keys_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one key"):
        sign_envelope(PAYLOAD, [])


# --- signatures and thresholds --------------------------------------------------------


def test_tampered_payload_is_a_bad_signature_naming_the_key() -> None:
    key = new_key()
    doc = envelope_dict(sign_envelope(PAYLOAD, [key]))
    doc["payload"] = b64(PAYLOAD.replace(b"acme", b"evil"))
    with pytest.raises(EnvelopeError, match=re.escape(f"bad signature (key {pub(key).keyid})")):
        verify_envelope(encode(doc), [pub(key)], 1)


def test_tampered_payload_type_is_refused() -> None:
    key = new_key()
    doc = envelope_dict(sign_envelope(PAYLOAD, [key]))
    doc["payloadType"] = "application/vnd.in-toto+json"
    with pytest.raises(EnvelopeError, match=re.escape("payloadType is 'application/vnd.in-toto")):
        verify_envelope(encode(doc), [pub(key)], 1)


def test_validly_signed_other_payload_type_is_still_refused() -> None:
    """A trusted key's signature over another kind of document is not a policy."""
    key = new_key()
    other = "application/vnd.in-toto+json"
    doc = {
        "payloadType": other,
        "payload": b64(PAYLOAD),
        "signatures": [{"keyid": pub(key).keyid, "sig": raw_sig(key, PAYLOAD, other)}],
    }
    with pytest.raises(EnvelopeError, match="payloadType"):
        verify_envelope(encode(doc), [pub(key)], 1)


def test_signature_by_an_unknown_key_names_it() -> None:
    signer, trusted = new_key(), new_key()
    with pytest.raises(EnvelopeError) as info:
        verify_envelope(sign_envelope(PAYLOAD, [signer]), [pub(trusted)], 1)
    assert str(info.value) == f"signed only by unknown keys ({pub(signer).keyid})"


def test_signatures_by_several_unknown_keys_are_all_named() -> None:
    a, b, trusted = new_key(), new_key(), new_key()
    with pytest.raises(EnvelopeError) as info:
        verify_envelope(sign_envelope(PAYLOAD, [a, b]), [pub(trusted)], 1)
    assert str(info.value) == f"signed only by unknown keys ({pub(a).keyid}, {pub(b).keyid})"


def test_wrong_key_claiming_a_trusted_keyid_is_a_bad_signature() -> None:
    trusted, forger = new_key(), new_key()
    doc = {
        "payloadType": PAYLOAD_TYPE,
        "payload": b64(PAYLOAD),
        "signatures": [{"keyid": pub(trusted).keyid, "sig": raw_sig(forger, PAYLOAD)}],
    }
    with pytest.raises(EnvelopeError) as info:
        verify_envelope(encode(doc), [pub(trusted)], 1)
    assert str(info.value) == f"bad signature (key {pub(trusted).keyid})"


def test_threshold_two_with_one_signature_names_the_signer() -> None:
    a, b = new_key(), new_key()
    with pytest.raises(EnvelopeError) as info:
        verify_envelope(sign_envelope(PAYLOAD, [a]), [pub(a), pub(b)], 2)
    assert str(info.value) == f"2 valid signatures needed, got 1 (from {pub(a).keyid})"


def test_threshold_two_met_by_two_trusted_keys() -> None:
    a, b = new_key(), new_key()
    verified = verify_envelope(sign_envelope(PAYLOAD, [a, b]), [pub(b), pub(a)], 2)
    assert set(verified.signers) == {pub(a).keyid, pub(b).keyid}


def test_duplicate_signatures_by_the_same_key_count_once() -> None:
    a, b = new_key(), new_key()
    sig = {"keyid": pub(a).keyid, "sig": raw_sig(a, PAYLOAD)}
    doc = {"payloadType": PAYLOAD_TYPE, "payload": b64(PAYLOAD), "signatures": [sig, sig]}
    with pytest.raises(EnvelopeError, match="2 valid signatures needed, got 1"):
        verify_envelope(encode(doc), [pub(a), pub(b)], 2)


def test_keyless_and_keyed_signatures_by_the_same_key_count_once() -> None:
    a, b = new_key(), new_key()
    doc = {
        "payloadType": PAYLOAD_TYPE,
        "payload": b64(PAYLOAD),
        "signatures": [
            {"keyid": pub(a).keyid, "sig": raw_sig(a, PAYLOAD)},
            {"sig": raw_sig(a, PAYLOAD)},
        ],
    }
    with pytest.raises(EnvelopeError, match="got 1"):
        verify_envelope(encode(doc), [pub(a), pub(b)], 2)


@pytest.mark.parametrize("keyid", [None, ""])
def test_signature_without_keyid_is_checked_against_every_trusted_key(keyid: str | None) -> None:
    other, signer = new_key(), new_key()
    sig: dict[str, str] = {"sig": raw_sig(signer, PAYLOAD)}
    if keyid is not None:
        sig["keyid"] = keyid
    doc = {"payloadType": PAYLOAD_TYPE, "payload": b64(PAYLOAD), "signatures": [sig]}
    verified = verify_envelope(encode(doc), [pub(other), pub(signer)], 1)
    assert verified.signers == (pub(signer).keyid,)


def test_signature_without_keyid_from_an_untrusted_key_is_bad() -> None:
    doc = {
        "payloadType": PAYLOAD_TYPE,
        "payload": b64(PAYLOAD),
        "signatures": [{"sig": raw_sig(new_key(), PAYLOAD)}],
    }
    with pytest.raises(EnvelopeError, match="without keyid matches no trusted key"):
        verify_envelope(encode(doc), [pub(new_key())], 1)


def test_extra_bad_signature_does_not_spoil_a_met_threshold() -> None:
    """As in DSSE and TUF: the threshold counts valid signatures; others are ignored."""
    a, b = new_key(), new_key()
    doc = envelope_dict(sign_envelope(PAYLOAD, [a]))
    doc["signatures"].append({"keyid": pub(b).keyid, "sig": b64(b"\0" * 64)})
    assert verify_envelope(encode(doc), [pub(a), pub(b)], 1).signers == (pub(a).keyid,)


def test_short_signature_is_a_bad_signature_not_a_crash() -> None:
    key = new_key()
    doc = envelope_dict(sign_envelope(PAYLOAD, [key]))
    doc["signatures"][0]["sig"] = b64(b"short")
    with pytest.raises(EnvelopeError, match="bad signature"):
        verify_envelope(encode(doc), [pub(key)], 1)


def test_missing_valid_and_bad_signatures_are_all_reported_under_a_threshold() -> None:
    a, b, c = new_key(), new_key(), new_key()
    doc = envelope_dict(sign_envelope(PAYLOAD, [a, c]))
    doc["signatures"].append({"keyid": pub(b).keyid, "sig": raw_sig(c, PAYLOAD)})
    with pytest.raises(EnvelopeError) as info:
        verify_envelope(encode(doc), [pub(a), pub(b)], 2)
    message = str(info.value)
    assert message.startswith(f"2 valid signatures needed, got 1 (from {pub(a).keyid})")
    assert f"bad signature (key {pub(b).keyid})" in message
    assert f"signed by unknown keys ({pub(c).keyid})" in message


@pytest.mark.parametrize("threshold", [0, -1, 3])
def test_impossible_threshold_is_a_config_error_not_an_envelope_error(threshold: int) -> None:
    a, b = new_key(), new_key()
    with pytest.raises(ValueError, match="threshold") as info:
        verify_envelope(sign_envelope(PAYLOAD, [a, b]), [pub(a), pub(b)], threshold)
    assert not isinstance(info.value, EnvelopeError)


def test_the_same_trusted_key_twice_does_not_raise_the_possible_threshold() -> None:
    a = new_key()
    with pytest.raises(ValueError, match="1 distinct trusted"):
        verify_envelope(sign_envelope(PAYLOAD, [a]), [pub(a), pub(a)], 2)


def test_no_trusted_keys_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="0 distinct"):
        verify_envelope(sign_envelope(PAYLOAD, [new_key()]), [], 1)


# --- structure and encoding -----------------------------------------------------------


def valid_doc() -> tuple[dict[str, Any], PublicKey]:
    key = new_key()
    return envelope_dict(sign_envelope(PAYLOAD, [key])), pub(key)


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d.pop("payload"), "missing payload"),
        (lambda d: d.update(extra=1), "unexpected field extra"),
        (lambda d: d.update(signatures=[]), "signatures must be a non-empty array"),
        (lambda d: d.update(signatures={}), "signatures must be a non-empty array"),
        (lambda d: d.update(payload=5), "payload must be a base64 string"),
        (lambda d: d.update(payloadType=None), "payloadType must be a string"),
        (lambda d: d["signatures"].append("sig"), r"signatures\[1\] must be an object"),
        (lambda d: d["signatures"][0].pop("sig"), r"signatures\[0\].sig is missing"),
        (lambda d: d["signatures"][0].update(cert="x"), "unexpected field cert"),
        (lambda d: d["signatures"][0].update(keyid=7), r"keyid must be a string"),
    ],
)
def test_malformed_envelope_says_what_is_wrong(mutate: Any, problem: str) -> None:
    doc, key = valid_doc()
    mutate(doc)
    with pytest.raises(EnvelopeError, match=f"not a DSSE envelope: .*{problem}"):
        verify_envelope(encode(doc), [key], 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'"payload"',
        b"\xff\xfe{}",
        b'{"payload": NaN}',
        b"[" * 40_000,  # RecursionError in json.loads
        b'{"payload": ' + b"[" * 40 + b"]" * 40 + b"}",  # deeper than any envelope
        b'{"payload": 1' + b"0" * 5000 + b"}",  # too many digits for int()
    ],
)
def test_non_envelope_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(EnvelopeError, match="not a DSSE envelope"):
        verify_envelope(data, [pub(new_key())], 1)


def test_duplicate_json_keys_are_refused() -> None:
    doc, key = valid_doc()
    text = encode(doc).decode()
    duplicated = text.replace('"payload":', f'"payload": "{b64(b"{}")}", "payload":', 1)
    with pytest.raises(EnvelopeError, match="duplicate key 'payload'"):
        verify_envelope(duplicated.encode(), [key], 1)


@pytest.mark.parametrize(
    "bad",
    [
        "not base64!",
        "e30",  # missing padding
        "e31=",  # non-zero trailing bits: decodes to '{}' but is not canonical
        "e3\n0=",  # whitespace
        "e3+_",  # mixed alphabets
        "ZXhhbXBsZQ==ZXhh",  # data after padding
    ],
)
def test_garbage_or_non_canonical_base64_payload_is_refused(bad: str) -> None:
    doc, key = valid_doc()
    doc["payload"] = bad
    with pytest.raises(EnvelopeError, match="not a DSSE envelope: payload is not"):
        verify_envelope(encode(doc), [key], 1)


def test_non_canonical_signature_base64_is_refused() -> None:
    doc, key = valid_doc()
    doc["signatures"][0]["sig"] = doc["signatures"][0]["sig"].rstrip("=")
    with pytest.raises(EnvelopeError, match=r"signatures\[0\].sig is not"):
        verify_envelope(encode(doc), [key], 1)


def test_url_safe_base64_is_accepted_as_dsse_allows() -> None:
    key = new_key()
    payload = b"\xfb\xff" * 30  # encodes with '+' and '/' in the standard alphabet
    doc = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.urlsafe_b64encode(payload).decode(),
        "signatures": [
            {
                "keyid": pub(key).keyid,
                "sig": base64.urlsafe_b64encode(key.sign(pae(PAYLOAD_TYPE, payload))).decode(),
            }
        ],
    }
    assert "-" in doc["payload"] or "_" in doc["payload"]
    assert verify_envelope(encode(doc), [pub(key)], 1).payload == payload


def test_oversized_envelope_is_refused_before_parsing() -> None:
    key = new_key()
    with pytest.raises(EnvelopeError, match=f"the limit is {MAX_ENVELOPE_BYTES}"):
        verify_envelope(b" " * (MAX_ENVELOPE_BYTES + 1), [pub(key)], 1)


def test_size_cap_is_adjustable() -> None:
    key = new_key()
    data = sign_envelope(PAYLOAD, [key])
    with pytest.raises(EnvelopeError, match="the limit is 10"):
        verify_envelope(data, [pub(key)], 1, max_bytes=10)


# --- public keys ----------------------------------------------------------------------


def test_keyid_is_sha256_prefix_of_raw_public_key() -> None:
    key = pub(new_key())
    assert key.keyid == "sha256:" + hashlib.sha256(key.raw).hexdigest()[:32]
    assert re.fullmatch(r"sha256:[0-9a-f]{32}", key.keyid)


def test_config_string_round_trips_and_keeps_the_keyid() -> None:
    key = pub(new_key())
    text = key.to_config()
    assert text.startswith("ed25519:")
    assert PublicKey.from_config(text) == key
    assert PublicKey.from_config(text).keyid == key.keyid


def test_pem_round_trips_and_keeps_the_keyid() -> None:
    key = pub(new_key())
    pem = key.to_pem()
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert PublicKey.from_pem(pem).keyid == key.keyid


@pytest.mark.parametrize(
    "text",
    [
        "",
        "AAAA",
        "ssh-ed25519 AAAA",
        "ED25519:" + b64(b"\1" * 32),
        "ed25519: " + b64(b"\1" * 32),
        "ed25519:" + b64(b"\1" * 31),
        "ed25519:" + b64(b"\1" * 32).rstrip("="),
        "ed25519:!!!!",
        "ed25519:" + base64.urlsafe_b64encode(b"\xfb" * 32).decode(),  # one spelling per key
    ],
)
def test_config_string_other_than_ed25519_base64_is_refused(text: str) -> None:
    with pytest.raises(EnvelopeError):
        PublicKey.from_config(text)


def test_pem_of_another_key_type_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(EnvelopeError, match="not an Ed25519 public key"):
        PublicKey.from_pem(pem)


def test_garbage_pem_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="not a PEM public key"):
        PublicKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


def test_raw_key_of_wrong_length_is_refused() -> None:
    with pytest.raises(EnvelopeError, match="32 bytes"):
        PublicKey(b"\0" * 31)


def test_more_signatures_than_are_read_are_refused_before_any_check() -> None:
    key = new_key()
    sig = {"keyid": pub(key).keyid, "sig": raw_sig(key, PAYLOAD)}
    doc: dict[str, Any] = {"payload": b64(PAYLOAD), "payloadType": PAYLOAD_TYPE}
    doc["signatures"] = [sig] * (MAX_SIGNATURES + 1)
    with pytest.raises(EnvelopeError, match=f"at most {MAX_SIGNATURES} are read"):
        verify_envelope(encode(doc), [pub(key)], 1)
    doc["signatures"] = [sig] * MAX_SIGNATURES
    assert verify_envelope(encode(doc), [pub(key)], 1).signers == (pub(key).keyid,)
