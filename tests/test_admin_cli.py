"""`pullgate admin` (keygen, sign, verify, lint) and envelope-aware policy loading.

Most tests drive ``agent.cli.admin`` through the same argparse wiring ``pullgate`` uses;
the subprocess tests at the end run the real command as an admin would.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli import admin
from agent.cli.admin import Finding, Level, lint_document, tag_glob_can_match
from agent.config.policy_file import (
    PolicySourceError,
    load_policy_source,
    policy_from_bytes,
    read_public_key,
)
from agent.core.policy.document import parse_policy
from agent.core.policy.envelope import PublicKey, sign_envelope, verify_envelope
from tests.policy_builders import document

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


Admin = Callable[..., Result]


@pytest.fixture
def run_admin(capsys: pytest.CaptureFixture[str]) -> Admin:
    """``pullgate admin ARGS`` in-process, through the real argparse registration."""

    def run(*argv: str) -> Result:
        parser = argparse.ArgumentParser(prog="pullgate")
        commands = parser.add_subparsers(dest="command")
        admin.register(commands)
        args = parser.parse_args(["admin", *argv])
        code = args.run(args)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def fresh(**overrides: Any) -> dict[str, Any]:
    """A policy document valid right now (the CLI reads the real clock)."""
    now = datetime.now(UTC).replace(microsecond=0)
    base = {
        "issued_at": admin.format_time(now - timedelta(days=1)),
        "expires_at": admin.format_time(now + timedelta(days=30)),
    }
    return document(**{**base, **overrides})


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value, indent=2))
    return path


def make_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    Path(f"{path}.pub").write_bytes(PublicKey.from_key(key).to_pem())
    return key


def signed(tmp_path: Path, doc: object, *keys: Ed25519PrivateKey, name: str = "env.json") -> Path:
    path = tmp_path / name
    path.write_bytes(sign_envelope(json.dumps(doc).encode(), list(keys)))
    return path


def payload_of(envelope: Path, key: Ed25519PrivateKey) -> dict[str, Any]:
    verified = verify_envelope(envelope.read_bytes(), [PublicKey.from_key(key)], 1)
    value = json.loads(verified.payload)
    assert isinstance(value, dict)
    return value


# --- keygen ---------------------------------------------------------------------------


def test_keygen_writes_private_key_0600_and_public_key(run_admin: Admin, tmp_path: Path) -> None:
    prefix = tmp_path / "org-key"
    result = run_admin("keygen", "--out", str(prefix))
    assert result.code == 0, result.err
    assert stat.S_IMODE(prefix.stat().st_mode) == 0o600
    public = PublicKey.from_pem(Path(f"{prefix}.pub").read_bytes())
    private = serialization.load_pem_private_key(prefix.read_bytes(), None)
    assert isinstance(private, Ed25519PrivateKey)
    assert PublicKey.from_key(private) == public
    assert f"key id:      {public.keyid}" in result.out
    assert f'"trusted_keys": ["{public.to_config()}"]' in result.out


def test_keygen_refuses_to_overwrite_a_private_key(run_admin: Admin, tmp_path: Path) -> None:
    prefix = tmp_path / "k"
    prefix.write_text("precious")
    result = run_admin("keygen", "--out", str(prefix))
    assert result.code == 2
    assert "already exists" in result.err
    assert prefix.read_text() == "precious"
    assert not Path(f"{prefix}.pub").exists()


def test_keygen_refuses_when_only_the_public_key_exists(run_admin: Admin, tmp_path: Path) -> None:
    prefix = tmp_path / "k"
    Path(f"{prefix}.pub").write_text("old public key")
    result = run_admin("keygen", "--out", str(prefix))
    assert result.code == 2
    assert not prefix.exists()
    assert Path(f"{prefix}.pub").read_text() == "old public key"


def test_keygen_with_passphrase_file_encrypts_the_key(run_admin: Admin, tmp_path: Path) -> None:
    (tmp_path / "pass").write_text("correct horse\n")
    prefix = tmp_path / "k"
    result = run_admin("keygen", "--out", str(prefix), "--passphrase-file", str(tmp_path / "pass"))
    assert result.code == 0, result.err
    assert b"ENCRYPTED PRIVATE KEY" in prefix.read_bytes()
    assert "passphrase-protected" in result.out
    # the trailing newline of the file is not part of the passphrase
    key = serialization.load_pem_private_key(prefix.read_bytes(), b"correct horse")
    assert isinstance(key, Ed25519PrivateKey)


def test_keygen_with_unset_passphrase_env_writes_nothing(
    run_admin: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PG_TEST_PASS", raising=False)
    prefix = tmp_path / "k"
    result = run_admin("keygen", "--out", str(prefix), "--passphrase-env", "PG_TEST_PASS")
    assert result.code == 2
    assert "PG_TEST_PASS is not set" in result.err
    assert not prefix.exists()


# --- sign -----------------------------------------------------------------------------


def test_sign_writes_an_envelope_of_the_exact_policy_bytes(
    run_admin: Admin, tmp_path: Path
) -> None:
    key = make_key(tmp_path / "k")
    policy = write_json(tmp_path / "policy.json", fresh())
    out = tmp_path / "policy.dsse.json"
    result = run_admin("sign", str(policy), "--key", str(tmp_path / "k"), "--out", str(out))
    assert result.code == 0, result.err
    verified = verify_envelope(out.read_bytes(), [PublicKey.from_key(key)], 1)
    assert verified.payload == policy.read_bytes()
    assert "org:       acme" in result.out
    assert "serial:    7" in result.out
    assert PublicKey.from_key(key).keyid in result.out
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_sign_replaces_an_existing_envelope(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    out = tmp_path / "env.json"
    out.write_text("old")
    policy = write_json(tmp_path / "policy.json", fresh(serial=8))
    assert run_admin("sign", str(policy), "--key", str(tmp_path / "k"), "--out", str(out)).code == 0
    assert payload_of(out, key)["serial"] == 8


def test_sign_refuses_an_invalid_policy_naming_the_field(run_admin: Admin, tmp_path: Path) -> None:
    make_key(tmp_path / "k")
    bad = fresh(rules=[{"id": "r", "match": "nginx", "acton": "deny"}])
    policy = write_json(tmp_path / "policy.json", bad)
    out = tmp_path / "env.json"
    result = run_admin("sign", str(policy), "--key", str(tmp_path / "k"), "--out", str(out))
    assert result.code == 2
    assert "rules[0].acton: unknown field (did you mean 'action'?)" in result.err
    assert not out.exists()


def test_sign_expires_in_stamps_issued_and_expiry(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    old = document(issued_at="2020-01-01T00:00:00Z", expires_at="2020-02-01T00:00:00Z")
    policy = write_json(tmp_path / "policy.json", old)
    out = tmp_path / "env.json"
    before = datetime.now(UTC).replace(microsecond=0)
    result = run_admin(
        "sign", str(policy), "--key", str(tmp_path / "k"), "--expires-in", "7d", "--out", str(out)
    )
    after = datetime.now(UTC)
    assert result.code == 0, result.err
    payload = payload_of(out, key)
    issued = datetime.fromisoformat(payload["issued_at"])
    expires = datetime.fromisoformat(payload["expires_at"])
    assert payload["issued_at"].endswith("Z")
    assert before <= issued <= after
    assert expires - issued == timedelta(days=7)
    assert payload["hub"] == old["hub"]
    assert "warning" not in result.err


def test_sign_expires_in_fills_missing_timestamps(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    policy = write_json(tmp_path / "p.json", document(issued_at=None, expires_at=None))
    out = tmp_path / "env.json"
    args = ("sign", str(policy), "--key", str(tmp_path / "k"), "--expires-in", "12h")
    assert run_admin(*args, "--out", str(out)).code == 0
    payload = payload_of(out, key)
    issued = datetime.fromisoformat(payload["issued_at"])
    assert datetime.fromisoformat(payload["expires_at"]) - issued == timedelta(hours=12)


@pytest.mark.parametrize("duration", ["7", "0d", "7 d", "1y", "-1d", "9999999d"])
def test_sign_refuses_a_bad_duration(run_admin: Admin, tmp_path: Path, duration: str) -> None:
    make_key(tmp_path / "k")
    policy = write_json(tmp_path / "p.json", fresh())
    out = tmp_path / "env.json"
    result = run_admin(
        "sign", str(policy), "--key", str(tmp_path / "k"), f"--expires-in={duration}",
        "--out", str(out),
    )  # fmt: skip
    assert result.code == 2
    assert "--expires-in" in result.err
    assert not out.exists()


def test_sign_warns_when_signing_an_expired_policy(run_admin: Admin, tmp_path: Path) -> None:
    make_key(tmp_path / "k")
    old = document(issued_at="2020-01-01T00:00:00Z", expires_at="2020-02-01T00:00:00Z")
    policy = write_json(tmp_path / "p.json", old)
    out = tmp_path / "env.json"
    result = run_admin("sign", str(policy), "--key", str(tmp_path / "k"), "--out", str(out))
    assert result.code == 0
    assert "warning: this policy expired at 2020-02-01T00:00:00Z" in result.err


def test_sign_with_two_keys_meets_threshold_two(run_admin: Admin, tmp_path: Path) -> None:
    a, b = make_key(tmp_path / "a"), make_key(tmp_path / "b")
    policy = write_json(tmp_path / "p.json", fresh())
    out = tmp_path / "env.json"
    result = run_admin(
        "sign", str(policy), "--key", str(tmp_path / "a"), "--key", str(tmp_path / "b"),
        "--out", str(out),
    )  # fmt: skip
    assert result.code == 0, result.err
    trusted = [PublicKey.from_key(a), PublicKey.from_key(b)]
    assert len(verify_envelope(out.read_bytes(), trusted, 2).signers) == 2


def test_sign_refuses_the_same_key_twice(run_admin: Admin, tmp_path: Path) -> None:
    make_key(tmp_path / "a")
    (tmp_path / "copy").write_bytes((tmp_path / "a").read_bytes())
    policy = write_json(tmp_path / "p.json", fresh())
    result = run_admin(
        "sign", str(policy), "--key", str(tmp_path / "a"), "--key", str(tmp_path / "copy"),
        "--out", str(tmp_path / "env.json"),
    )  # fmt: skip
    assert result.code == 2
    assert "same key was given twice" in result.err


def test_sign_refuses_to_wrap_an_envelope(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    envelope = signed(tmp_path, fresh(), key, name="already.json")
    result = run_admin(
        "sign", str(envelope), "--key", str(tmp_path / "k"), "--out", str(tmp_path / "o.json")
    )
    assert result.code == 2
    assert "already a signed envelope" in result.err


def test_sign_with_passphrase_protected_key(
    run_admin: Admin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = make_key(tmp_path / "k", passphrase=b"s3cret")
    policy = write_json(tmp_path / "p.json", fresh())
    out = tmp_path / "env.json"
    base = ("sign", str(policy), "--key", str(tmp_path / "k"), "--out", str(out))

    missing = run_admin(*base)
    assert missing.code == 2
    assert "passphrase-protected" in missing.err

    monkeypatch.setenv("PG_TEST_PASS", "wrong")
    wrong = run_admin(*base, "--passphrase-env", "PG_TEST_PASS")
    assert wrong.code == 2
    assert "cannot decrypt key" in wrong.err
    assert not out.exists()

    monkeypatch.setenv("PG_TEST_PASS", "s3cret")
    right = run_admin(*base, "--passphrase-env", "PG_TEST_PASS")
    assert right.code == 0, right.err
    assert payload_of(out, key)["org"] == "acme"


def test_one_passphrase_serves_encrypted_and_plain_keys_together(
    run_admin: Admin, tmp_path: Path
) -> None:
    make_key(tmp_path / "enc", passphrase=b"pw")
    make_key(tmp_path / "plain")
    (tmp_path / "pass").write_text("pw")
    policy = write_json(tmp_path / "p.json", fresh())
    result = run_admin(
        "sign", str(policy), "--key", str(tmp_path / "enc"), "--key", str(tmp_path / "plain"),
        "--passphrase-file", str(tmp_path / "pass"), "--out", str(tmp_path / "env.json"),
    )  # fmt: skip
    assert result.code == 0, result.err


def test_each_key_can_have_its_own_passphrase_in_order(run_admin: Admin, tmp_path: Path) -> None:
    alice = make_key(tmp_path / "alice", passphrase=b"alice-pw")
    bob = make_key(tmp_path / "bob", passphrase=b"bob-pw")
    (tmp_path / "alice.pass").write_text("alice-pw\n")
    (tmp_path / "bob.pass").write_text("bob-pw\n")
    policy = write_json(tmp_path / "p.json", fresh())
    out = tmp_path / "env.json"
    keys = ("--key", str(tmp_path / "alice"), "--key", str(tmp_path / "bob"))
    result = run_admin(
        "sign", str(policy), *keys, "--passphrase-file", str(tmp_path / "alice.pass"),
        "--passphrase-file", str(tmp_path / "bob.pass"), "--out", str(out),
    )  # fmt: skip
    assert result.code == 0, result.err
    assert verify_envelope(
        out.read_bytes(), [PublicKey.from_key(alice), PublicKey.from_key(bob)], 2
    ).signers
    swapped = run_admin(
        "sign", str(policy), *keys, "--passphrase-file", str(tmp_path / "bob.pass"),
        "--passphrase-file", str(tmp_path / "alice.pass"), "--out", str(out),
    )  # fmt: skip
    assert swapped.code == 2
    assert f"cannot decrypt key {tmp_path / 'alice'}" in swapped.err
    three = run_admin(
        "sign", str(policy), *keys, *("--passphrase-file", str(tmp_path / "bob.pass")) * 3,
        "--out", str(out),
    )  # fmt: skip
    assert three.code == 2
    assert "3 --passphrase-file for 2 --key" in three.err


def test_sign_refuses_a_public_key_as_signing_key(run_admin: Admin, tmp_path: Path) -> None:
    make_key(tmp_path / "k")
    policy = write_json(tmp_path / "p.json", fresh())
    result = run_admin(
        "sign", str(policy), "--key", str(tmp_path / "k.pub"), "--out", str(tmp_path / "e.json")
    )
    assert result.code == 2
    assert "not a PEM private key" in result.err


# --- verify ---------------------------------------------------------------------------


def test_verify_valid_envelope_exits_0_and_prints_details(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    envelope = signed(tmp_path, fresh(serial=12), key)
    result = run_admin(
        "verify", str(envelope), "--trusted-key", str(tmp_path / "k.pub"), "--org", "acme"
    )
    assert result.code == 0, result.err
    assert "org:       acme" in result.out
    assert "serial:    12" in result.out
    assert f"signed by: {PublicKey.from_key(key).keyid}" in result.out
    assert "issued:" in result.out
    assert "expires:" in result.out


def test_verify_accepts_a_config_string_as_trusted_key(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    envelope = signed(tmp_path, fresh(), key)
    config = PublicKey.from_key(key).to_config()
    assert run_admin("verify", str(envelope), "--trusted-key", config).code == 0


def test_verify_with_an_untrusted_key_exits_1(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    make_key(tmp_path / "other")
    envelope = signed(tmp_path, fresh(), key)
    result = run_admin("verify", str(envelope), "--trusted-key", str(tmp_path / "other.pub"))
    assert result.code == 1
    assert "signed only by unknown keys" in result.err


def test_verify_tampered_envelope_exits_1(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    envelope = signed(tmp_path, fresh(), key)
    doc = json.loads(envelope.read_text())
    doc["payload"] = base64.b64encode(json.dumps(fresh(serial=99)).encode()).decode()
    envelope.write_text(json.dumps(doc))
    result = run_admin("verify", str(envelope), "--trusted-key", str(tmp_path / "k.pub"))
    assert result.code == 1
    assert "bad signature (key" in result.err
    assert "serial" not in result.out  # nothing from an unverified payload is shown


def test_verify_threshold_two_with_one_signature_exits_1(run_admin: Admin, tmp_path: Path) -> None:
    a = make_key(tmp_path / "a")
    make_key(tmp_path / "b")
    envelope = signed(tmp_path, fresh(), a)
    result = run_admin(
        "verify", str(envelope), "--trusted-key", str(tmp_path / "a.pub"),
        "--trusted-key", str(tmp_path / "b.pub"), "--threshold", "2",
    )  # fmt: skip
    assert result.code == 1
    assert "2 valid signatures needed, got 1" in result.err


def test_verify_expired_policy_warns_and_exits_1(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    old = document(issued_at="2020-01-01T00:00:00Z", expires_at="2020-02-01T00:00:00Z")
    envelope = signed(tmp_path, old, key)
    result = run_admin("verify", str(envelope), "--trusted-key", str(tmp_path / "k.pub"))
    assert result.code == 1
    assert "warning: agents refuse it: policy expired at 2020-02-01T00:00:00+00:00" in result.out
    assert "beyond the offline grace of 1w" in result.err
    assert "serial:    7" in result.out


def test_verify_judges_expiry_with_the_agents_grace(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    now = datetime.now(UTC).replace(microsecond=0)
    lapsed = fresh(
        issued_at=admin.format_time(now - timedelta(days=10)),
        expires_at=admin.format_time(now - timedelta(days=2)),
    )
    envelope = signed(tmp_path, lapsed, key)
    pub = str(tmp_path / "k.pub")
    # Within the default grace (7d) an agent takes it, but only as stale: not fit to publish.
    stale = run_admin("verify", str(envelope), "--trusted-key", pub)
    assert stale.code == 1
    assert "agents accept it only as stale, within the offline grace" in stale.err
    # With a 1d grace an agent refuses it outright, as evaluate_envelope says.
    refused = run_admin("verify", str(envelope), "--trusted-key", pub, "--offline-grace", "1d")
    assert refused.code == 1
    assert "beyond the offline grace of 1d" in refused.err


def test_verify_reads_org_keys_threshold_and_grace_from_a_managed_config(
    run_admin: Admin, tmp_path: Path
) -> None:
    a, b = make_key(tmp_path / "a"), make_key(tmp_path / "b")
    envelope = signed(tmp_path, fresh(), a)
    config = write_json(
        tmp_path / "config.json",
        {
            "org": "globex",
            "trusted_keys": [PublicKey.from_key(k).to_config() for k in (a, b)],
            "key_threshold": 2,
        },
    )
    result = run_admin("verify", str(envelope), "--config", str(config))
    assert result.code == 1
    assert "2 valid signatures needed, got 1" in result.err
    both = signed(tmp_path, fresh(), a, b, name="both.json")
    result = run_admin("verify", str(both), "--config", str(config))
    assert result.code == 1
    assert "policy is for org 'acme', this machine belongs to 'globex'" in result.err
    assert run_admin("verify", str(both), "--config", str(config), "--org", "acme").code == 0


def test_verify_refuses_an_issue_time_in_the_future_as_agents_do(
    run_admin: Admin, tmp_path: Path
) -> None:
    key = make_key(tmp_path / "k")
    now = datetime.now(UTC).replace(microsecond=0)
    ahead = fresh(issued_at=admin.format_time(now + timedelta(hours=1)))
    envelope = signed(tmp_path, ahead, key)
    result = run_admin("verify", str(envelope), "--trusted-key", str(tmp_path / "k.pub"))
    assert result.code == 1
    assert "is in the future" in result.err


def test_verify_of_deeply_nested_json_is_one_line(run_admin: Admin, tmp_path: Path) -> None:
    make_key(tmp_path / "k")
    for name, data in (
        ("deep.json", b"[" * 40_000),
        ("deep-payload.json", sign_envelope(b"[" * 40_000, [make_key(tmp_path / "j")])),
    ):
        (tmp_path / name).write_bytes(data)
        result = run_admin("verify", str(tmp_path / name), "--trusted-key", str(tmp_path / "j.pub"))
        assert result.code == 1, result
        assert result.err.count("\n") == 1 and "nested more than" in result.err, result.err


def test_verify_policy_of_another_org_exits_1(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    envelope = signed(tmp_path, fresh(), key)
    result = run_admin(
        "verify", str(envelope), "--trusted-key", str(tmp_path / "k.pub"), "--org", "globex"
    )
    assert result.code == 1
    assert "policy is for org 'acme', this machine belongs to 'globex'" in result.err


def test_verify_signed_payload_that_is_not_a_policy_exits_1(
    run_admin: Admin, tmp_path: Path
) -> None:
    key = make_key(tmp_path / "k")
    envelope = signed(tmp_path, {"schema": "pullgate.policy/v1", "org": "acme"}, key)
    result = run_admin("verify", str(envelope), "--trusted-key", str(tmp_path / "k.pub"))
    assert result.code == 1
    assert "not a valid policy: serial: required field is missing" in result.err


def test_verify_unreadable_envelope_exits_2(run_admin: Admin, tmp_path: Path) -> None:
    make_key(tmp_path / "k")
    result = run_admin(
        "verify", str(tmp_path / "missing.json"), "--trusted-key", str(tmp_path / "k.pub")
    )
    assert result.code == 2
    assert "cannot read envelope" in result.err


def test_verify_unreadable_trusted_key_exits_2(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    envelope = signed(tmp_path, fresh(), key)
    result = run_admin("verify", str(envelope), "--trusted-key", str(tmp_path / "nope.pub"))
    assert result.code == 2
    assert "cannot read trusted key" in result.err


def test_verify_impossible_threshold_exits_2(run_admin: Admin, tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    envelope = signed(tmp_path, fresh(), key)
    result = run_admin(
        "verify", str(envelope), "--trusted-key", str(tmp_path / "k.pub"), "--threshold", "2"
    )
    assert result.code == 2
    assert "--threshold 2 is impossible with 1" in result.err


@pytest.mark.parametrize("threshold", ["0", "-1"])
def test_verify_refuses_a_threshold_below_one_instead_of_ignoring_it(
    run_admin: Admin, tmp_path: Path, threshold: str
) -> None:
    a, b = make_key(tmp_path / "a"), make_key(tmp_path / "b")
    envelope = signed(tmp_path, fresh(), a)
    config = write_json(
        tmp_path / "config.json",
        {
            "org": "acme",
            "trusted_keys": [PublicKey.from_key(k).to_config() for k in (a, b)],
            "key_threshold": 2,
        },
    )
    result = run_admin("verify", str(envelope), "--config", str(config), "--threshold", threshold)
    assert result.code == 2
    assert f"--threshold must be at least 1, got {threshold}" in result.err


# --- lint: pure core ------------------------------------------------------------------


def lint(**overrides: Any) -> list[str]:
    """Lint findings as printed lines, at the fixed NOW."""
    return [str(f) for f in lint_document(document(**overrides), NOW)]


def rule(rule_id: str, match: str, action: str = "deny", **extra: Any) -> dict[str, Any]:
    return {"id": rule_id, "match": match, "action": action, **extra}


def test_lint_clean_policy_has_no_findings() -> None:
    assert lint(rules=[rule("a", "someuser/*", "allow"), rule("b", "someuser/tool")]) == []


def test_lint_warns_later_duplicate_rule_is_shadowed() -> None:
    findings = lint(rules=[rule("a", "someuser/*"), rule("b", "nginx"), rule("c", "someuser/*")])
    assert findings == [
        "warning: rules[2]: shadowed by rules[0] (same match 'someuser/*' and groups): "
        "the earlier rule wins a tie, so it never decides"
    ]


def test_lint_warns_allow_shadowed_by_a_later_deny_with_the_same_match() -> None:
    findings = lint(
        rules=[
            rule("allow", "someuser/*", "allow", groups=["data"]),
            rule("deny", "docker.io/someuser/*", groups=["data"]),
        ]
    )
    assert findings == [
        "warning: rules[0]: shadowed by rules[1] (same match 'someuser/*' as "
        "'docker.io/someuser/*' and groups): deny wins a tie, so it never decides"
    ]


def test_lint_warns_group_rule_shadowed_by_an_everyone_rule() -> None:
    findings = lint(rules=[rule("d", "nginx"), rule("a", "nginx", "allow", groups=["ops"])])
    assert findings == [
        "warning: rules[1]: shadowed by rules[0] (same match 'nginx' and rules[0] applies to "
        "everyone): deny wins a tie, so it never decides"
    ]


@pytest.mark.parametrize(
    "rules",
    [
        # the allow applies to a group the deny does not cover
        [rule("d", "nginx", groups=["ops"]), rule("a", "nginx", "allow", groups=["dev"])],
        # the deny only applies to a group: everyone else is decided by the allow
        [rule("d", "nginx", groups=["ops"]), rule("a", "nginx", "allow")],
        # the deny expires first, then the allow decides
        [
            rule("d", "nginx", expires_at="2027-01-01T00:00:00Z"),
            rule("a", "nginx", "allow", expires_at="2027-06-01T00:00:00Z"),
        ],
        [rule("d", "nginx", expires_at="2027-01-01T00:00:00Z"), rule("a", "nginx", "allow")],
        # a different tag, digest or port is a different pattern
        [rule("d", "nginx:1.*"), rule("a", "nginx:1.2*", "allow")],
        [rule("d", "nginx"), rule("a", "nginx:1.25", "allow")],
        [rule("d", "registry.example:5000/x"), rule("a", "registry.example/x", "allow")],
    ],
)
def test_lint_does_not_warn_when_the_other_rule_can_decide(rules: list[dict[str, Any]]) -> None:
    assert lint(rules=rules) == []


def test_lint_warns_expired_rule_but_not_one_expiring_later() -> None:
    findings = lint(
        rules=[
            rule("old", "someuser/a", expires_at="2026-11-01T00:00:00Z"),
            rule("new", "someuser/b", expires_at="2026-12-01T00:00:00Z"),
        ]
    )
    assert findings == ["warning: rules[0]: expired at 2026-11-01T00:00:00Z; it no longer applies"]


def test_lint_expired_duplicate_is_reported_as_expired_not_shadowed() -> None:
    findings = lint(
        rules=[rule("a", "nginx"), rule("b", "nginx", expires_at="2026-01-01T00:00:00Z")]
    )
    assert findings == ["warning: rules[1]: expired at 2026-01-01T00:00:00Z; it no longer applies"]


@pytest.mark.parametrize("match", ["library/nginx/extra", "docker.io/acme/*/x", "a/b/c/d"])
def test_lint_warns_hub_pattern_deeper_than_namespace_name(match: str) -> None:
    [finding] = lint(rules=[rule("deep", match)])
    assert finding.startswith("warning: rules[0]: can never match")
    assert "Docker Hub repositories are namespace/name" in finding


@pytest.mark.parametrize(
    "match",
    ["library/**", "acme/**/x", "acme/*", "nginx", "ghcr.io/a/b/c", "docker.io:5000/a/b/c", "**"],
)
def test_lint_does_not_warn_patterns_that_can_match(match: str) -> None:
    assert lint(rules=[rule("r", match)]) == []


@pytest.mark.parametrize(
    ("glob", "possible"),
    [
        ("*", True),
        ("?", True),
        ("1.*", True),
        ("*-alpine", True),  # '*' supplies a valid first character
        ("*" + "a" * 127, True),
        ("-x", False),  # a tag cannot start with '-'
        (".x", False),
        ("?" * 129, False),  # longer than 128
        ("*-" + "a" * 126, True),
        ("*-" + "a" * 127, False),  # '*' must add one character: 130 > 128
    ],
)
def test_tag_glob_can_match_is_exact(glob: str, possible: bool) -> None:
    assert tag_glob_can_match(glob) is possible


def test_unmatchable_tag_globs_are_already_refused_by_the_loader() -> None:
    """tag_glob_can_match is a second line: today's pattern syntax cannot express one."""
    findings = lint(rules=[rule("r", "nginx:-x")])
    assert findings[0].startswith("error: rules[0].match:")


def test_lint_reports_every_duplicate_id_with_both_paths() -> None:
    findings = lint(rules=[rule("a", "x/a"), rule("b", "x/b"), rule("a", "x/c"), rule("b", "x/d")])
    assert findings == [
        "error: rules[2].id: duplicate rule id 'a' (also rules[0].id)",
        "error: rules[3].id: duplicate rule id 'b' (also rules[1].id)",
    ]


def test_lint_reports_schema_error_with_path() -> None:
    assert lint(rules=[{"id": "r", "match": "x/y", "acton": "deny"}]) == [
        "error: rules[0].acton: unknown field (did you mean 'action'?)"
    ]


def test_lint_warns_policy_already_expired() -> None:
    findings = lint(issued_at="2026-10-01T00:00:00Z", expires_at="2026-11-01T00:00:00Z")
    assert findings == [
        "warning: expires_at: the policy expired at 2026-11-01T00:00:00Z; agents treat it as "
        "stale (sign with --expires-in)"
    ]


def test_lint_policy_expiring_later_is_fine() -> None:
    assert lint(issued_at="2026-11-01T00:00:00Z", expires_at="2026-11-28T12:00:01Z") == []


def test_lint_warns_validity_over_a_year_but_not_exactly_a_year() -> None:
    assert lint(issued_at="2026-11-01T00:00:00Z", expires_at="2027-11-01T00:00:00Z") == []
    [finding] = lint(issued_at="2026-11-01T00:00:00Z", expires_at="2027-11-02T00:00:00Z")
    assert finding.startswith("warning: expires_at: valid for 366 days after issued_at")


def test_lint_warns_issued_in_the_future_beyond_clock_skew() -> None:
    assert lint(issued_at="2026-11-28T12:04:00Z", expires_at="2026-12-28T00:00:00Z") == []
    [finding] = lint(issued_at="2026-11-29T00:00:00Z", expires_at="2026-12-28T00:00:00Z")
    assert finding.startswith("warning: issued_at: 2026-11-29T00:00:00Z is in the future")


def test_lint_notes_monitor_mode_as_info() -> None:
    assert lint(mode="monitor") == [
        "info: mode: monitor: nothing is blocked; denials are only recorded as would_deny"
    ]
    assert lint(mode="enforce") == []


def test_finding_prints_level_path_and_message() -> None:
    assert str(Finding(Level.WARNING, "rules[3]", "x")) == "warning: rules[3]: x"
    assert str(Finding(Level.INFO, "", "x")) == "info: x"


# --- lint: the command ----------------------------------------------------------------


def test_lint_command_exit_codes(run_admin: Admin, tmp_path: Path) -> None:
    clean = write_json(tmp_path / "clean.json", fresh())
    warn = write_json(tmp_path / "warn.json", fresh(rules=[rule("a", "x/y"), rule("b", "x/y")]))
    monitor = write_json(tmp_path / "monitor.json", fresh(mode="monitor"))
    broken = write_json(tmp_path / "broken.json", fresh(serial="7"))

    assert run_admin("lint", str(clean)).code == 0
    assert run_admin("lint", "--strict", str(clean)).code == 0
    warned = run_admin("lint", str(warn))
    assert warned.code == 0
    assert warned.out.startswith("warning: rules[1]: shadowed by rules[0]")
    assert run_admin("lint", "--strict", str(warn)).code == 1
    assert run_admin("lint", "--strict", str(monitor)).code == 0  # info is not a warning
    failed = run_admin("lint", str(broken))
    assert failed.code == 2
    assert failed.out == "error: serial: expected an integer, got a string\n"


def test_lint_command_refuses_unreadable_and_envelope_input(
    run_admin: Admin, tmp_path: Path
) -> None:
    assert run_admin("lint", str(tmp_path / "missing.json")).code == 2
    envelope = signed(tmp_path, fresh(), Ed25519PrivateKey.generate())
    result = run_admin("lint", str(envelope))
    assert result.code == 2
    assert "is a signed envelope" in result.err


# --- envelope-aware policy loading ----------------------------------------------------


def test_plain_policy_loads_without_trusted_keys(tmp_path: Path) -> None:
    path = write_json(tmp_path / "p.json", fresh(serial=3))
    assert load_policy_source(path, None).serial == 3


def test_envelope_loads_when_signed_by_a_trusted_key(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    envelope = signed(tmp_path, fresh(serial=5), key)
    assert load_policy_source(envelope, [PublicKey.from_key(key)]).serial == 5


@pytest.mark.parametrize("trusted", [None, []])
def test_envelope_without_trusted_keys_is_refused_saying_what_to_pass(
    tmp_path: Path, trusted: list[PublicKey] | None
) -> None:
    envelope = signed(tmp_path, fresh(), Ed25519PrivateKey.generate())
    with pytest.raises(PolicySourceError, match="pass --trusted-key"):
        load_policy_source(envelope, trusted)


def test_envelope_from_an_untrusted_key_is_refused(tmp_path: Path) -> None:
    envelope = signed(tmp_path, fresh(), Ed25519PrivateKey.generate())
    other = PublicKey.from_key(Ed25519PrivateKey.generate())
    with pytest.raises(PolicySourceError, match="not a trustworthy signed policy: signed only"):
        load_policy_source(envelope, [other])


def test_half_an_envelope_is_not_read_as_a_policy(tmp_path: Path) -> None:
    """A document with DSSE fields is an envelope; it is never parsed as plain policy."""
    path = write_json(tmp_path / "p.json", {"payload": "e30=", "signatures": []})
    with pytest.raises(PolicySourceError, match="signed envelope"):
        load_policy_source(path, None)


def test_require_signed_refuses_plain_policy() -> None:
    with pytest.raises(PolicySourceError, match="only a signed envelope is accepted"):
        policy_from_bytes(json.dumps(fresh()).encode(), trusted=None, require_signed=True)


def test_signed_invalid_policy_names_the_field(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    envelope = signed(tmp_path, fresh(mode="block"), key)
    with pytest.raises(PolicySourceError, match="invalid: mode: expected one of"):
        load_policy_source(envelope, [PublicKey.from_key(key)])


def test_unreadable_policy_source_is_a_policy_source_error(tmp_path: Path) -> None:
    with pytest.raises(PolicySourceError, match="cannot read policy"):
        load_policy_source(tmp_path / "missing.json", None)


def test_read_public_key_from_file_and_config_string(tmp_path: Path) -> None:
    key = PublicKey.from_key(Ed25519PrivateKey.generate())
    (tmp_path / "k.pub").write_bytes(key.to_pem())
    assert read_public_key(str(tmp_path / "k.pub")) == key
    assert read_public_key(key.to_config()) == key
    with pytest.raises(PolicySourceError, match="cannot read trusted key"):
        read_public_key(str(tmp_path / "missing.pub"))
    with pytest.raises(PolicySourceError, match="trusted key ed25519:xx"):
        read_public_key("ed25519:xx")


def test_signed_policy_parses_like_the_plain_one(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    doc = fresh(rules=[rule("r", "someuser/*", "allow")])
    envelope = signed(tmp_path, doc, key)
    loaded = load_policy_source(envelope, [PublicKey.from_key(key)])
    assert loaded.rules == parse_policy(doc).rules


# --- the real command -----------------------------------------------------------------


def pullgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_admin_keygen_sign_verify_as_a_real_process(tmp_path: Path) -> None:
    prefix = tmp_path / "org"
    keygen = pullgate(
        "admin", "keygen", "--out", str(prefix), "--passphrase-env", "PG_PASS",
        env={"PG_PASS": "hunter2"},
    )  # fmt: skip
    assert keygen.returncode == 0, keygen.stderr
    assert stat.S_IMODE(prefix.stat().st_mode) == 0o600
    config_line = next(line for line in keygen.stdout.splitlines() if "trusted_keys" in line)
    trusted = json.loads("{" + config_line.strip() + "}")["trusted_keys"][0]

    policy = write_json(tmp_path / "policy.json", fresh())
    lint = pullgate("admin", "lint", "--strict", str(policy))
    assert lint.returncode == 0, lint.stdout + lint.stderr

    envelope = tmp_path / "policy.dsse.json"
    sign = pullgate(
        "admin", "sign", str(policy), "--key", str(prefix), "--passphrase-env", "PG_PASS",
        "--expires-in", "7d", "--out", str(envelope), env={"PG_PASS": "hunter2"},
    )  # fmt: skip
    assert sign.returncode == 0, sign.stderr
    assert "serial:    7" in sign.stdout

    ok = pullgate("admin", "verify", str(envelope), "--trusted-key", trusted, "--org", "acme")
    assert ok.returncode == 0, ok.stderr
    other = pullgate("admin", "keygen", "--out", str(tmp_path / "other"))
    assert other.returncode == 0
    bad = pullgate("admin", "verify", str(envelope), "--trusted-key", f"{tmp_path}/other.pub")
    assert bad.returncode == 1
    assert "unknown keys" in bad.stderr
    again = pullgate("admin", "keygen", "--out", str(prefix))
    assert again.returncode == 2


def test_admin_lint_as_a_real_process_prints_one_line_per_finding(tmp_path: Path) -> None:
    policy = write_json(
        tmp_path / "p.json", fresh(rules=[rule("a", "someuser/*"), rule("b", "someuser/*")])
    )
    proc = pullgate("admin", "lint", "--strict", str(policy))
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        "warning: rules[1]: shadowed by rules[0] (same match 'someuser/*' and groups): "
        "the earlier rule wins a tie, so it never decides"
    ]


def test_check_accepts_a_signed_policy_with_trusted_key(tmp_path: Path) -> None:
    key = make_key(tmp_path / "k")
    deny_alpine = fresh(rules=[rule("no-alpine", "alpine")])
    envelope = signed(tmp_path, deny_alpine, key)
    proc = pullgate(
        "check", "--policy", str(envelope), "--trusted-key", str(tmp_path / "k.pub"), "alpine"
    )
    assert proc.returncode == 1, proc.stderr  # denied by the signed policy's rule
    assert "no-alpine" in proc.stdout


def test_check_refuses_a_signed_policy_without_trusted_key(tmp_path: Path) -> None:
    envelope = signed(tmp_path, fresh(), make_key(tmp_path / "k"))
    proc = pullgate("check", "--policy", str(envelope), "alpine")
    assert proc.returncode == 2
    assert "--trusted-key" in proc.stderr


def test_lint_and_sign_of_deeply_nested_json_are_one_line(run_admin: Admin, tmp_path: Path) -> None:
    make_key(tmp_path / "k")
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" * 40_000)
    for argv in (
        ("lint", str(deep)),
        ("sign", str(deep), "--key", str(tmp_path / "k"), "--out", str(tmp_path / "e.json")),
    ):
        result = run_admin(*argv)
        assert result.code == 2, result
        assert result.err.count("\n") == 1 and "nested more than" in result.err, result.err


def test_verify_refuses_an_envelope_larger_than_agents_download(
    run_admin: Admin, tmp_path: Path
) -> None:
    key = make_key(tmp_path / "k")
    big = fresh(description="x" * (1024 * 1024))  # > the default policy_max_bytes of 1 MiB
    envelope = signed(tmp_path, big, key)
    pub = str(tmp_path / "k.pub")
    result = run_admin("verify", str(envelope), "--trusted-key", pub)
    assert result.code == 1
    assert "agents with policy_max_bytes 1048576 refuse to download it" in result.err
    config = write_json(
        tmp_path / "config.json",
        {"trusted_keys": [PublicKey.from_key(key).to_config()], "policy_max_bytes": 4194304},
    )
    assert run_admin("verify", str(envelope), "--config", str(config)).code == 0
