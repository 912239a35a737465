"""The policy store's trust rules (agent/core/policy/trust.py), pure: bytes, settings, a clock in.

Every refusal kind of the signed-envelope contract (agent/core/policy/trust.py), the
clock floor, and what ``effective_policy`` enforces when fresh, stale and expired under
each ``stale_behavior`` (checked with the decision engine itself).
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.core.decision import Verdict, decide
from agent.core.policy.document import Mode, Policy
from agent.core.policy.envelope import PublicKey, sign_envelope
from agent.core.policy.trust import (
    MAX_FUTURE_SKEW,
    Accepted,
    Freshness,
    HighWater,
    PolicyRefusedError,
    StaleBehavior,
    TrustSettings,
    effective_now,
    effective_policy,
    evaluate_envelope,
    freshness,
)
from agent.core.reference import parse_normalized_named

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
GRACE = timedelta(days=7)

KEY_A = Ed25519PrivateKey.generate()
KEY_B = Ed25519PrivateKey.generate()
KEY_STRANGER = Ed25519PrivateKey.generate()


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def document(**overrides: Any) -> dict[str, Any]:
    """Org acme, serial 5, issued a day before NOW, expires in 30 days; community denied,
    verifiedco a verified publisher."""
    doc: dict[str, Any] = {
        "schema": "pullgate.policy/v1",
        "org": "acme",
        "serial": 5,
        "issued_at": stamp(NOW - timedelta(days=1)),
        "expires_at": stamp(NOW + timedelta(days=30)),
        "hub": {
            "org_namespaces": ["acme"],
            "official": "allow",
            "verified_publisher": "allow",
            "verified_publisher_namespaces": ["verifiedco"],
            "community": "deny",
        },
    }
    doc.update(overrides)
    return doc


def payload(**overrides: Any) -> bytes:
    return json.dumps(document(**overrides), sort_keys=True).encode()


def signed(
    data: bytes | None = None, keys: tuple[Ed25519PrivateKey, ...] = (KEY_A,), **overrides: Any
) -> bytes:
    return sign_envelope(data if data is not None else payload(**overrides), list(keys))


def settings(
    *keys: Ed25519PrivateKey,
    threshold: int = 1,
    org: str = "acme",
    grace: timedelta = GRACE,
    behavior: StaleBehavior = StaleBehavior.ENFORCE_LAST,
) -> TrustSettings:
    return TrustSettings(
        org=org,
        trusted_keys=tuple(PublicKey.from_key(k) for k in (keys or (KEY_A,))),
        threshold=threshold,
        offline_grace=grace,
        stale_behavior=behavior,
    )


def evaluate(
    data: bytes,
    trust: TrustSettings | None = None,
    high_water: HighWater | None = None,
    now: datetime = NOW,
) -> Accepted:
    return evaluate_envelope(data, trust or settings(), high_water, now, source="test")


def refusal(
    data: bytes,
    trust: TrustSettings | None = None,
    high_water: HighWater | None = None,
    now: datetime = NOW,
) -> PolicyRefusedError:
    with pytest.raises(PolicyRefusedError) as caught:
        evaluate(data, trust, high_water, now)
    assert caught.value.reason == str(caught.value)
    return caught.value


def accepted_high_water(data: bytes) -> HighWater:
    return evaluate(data).high_water


def verdict(policy: Policy, image: str, now: datetime = NOW) -> Verdict:
    return decide(policy, parse_normalized_named(image), now=now).verdict


# --------------------------------------------------------------------------- accept


def test_a_policy_signed_by_a_trusted_key_is_accepted_with_its_high_water_mark() -> None:
    data = signed(description="first")

    result = evaluate(data)

    assert result.new is True
    assert result.envelope == data
    assert result.policy.org == "acme"
    assert result.policy.serial == 5
    assert result.signers == (PublicKey.from_key(KEY_A).keyid,)
    body = json.loads(data)["payload"]
    assert result.high_water == HighWater(
        serial=5,
        payload_sha256=hashlib.sha256(base64.b64decode(body)).hexdigest(),
        issued_at_floor=NOW - timedelta(days=1),
        org="acme",
    )


def test_a_higher_serial_is_accepted_and_raises_the_high_water_mark() -> None:
    before = accepted_high_water(signed(serial=5))

    result = evaluate(signed(serial=6, issued_at=stamp(NOW)), high_water=before)

    assert result.new is True
    assert (result.high_water.serial, result.high_water.issued_at_floor) == (6, NOW)


def test_two_signatures_meet_a_threshold_of_two() -> None:
    result = evaluate(signed(keys=(KEY_A, KEY_B)), settings(KEY_A, KEY_B, threshold=2))

    assert set(result.signers) == {PublicKey.from_key(KEY_A).keyid, PublicKey.from_key(KEY_B).keyid}


def test_a_policy_signed_by_either_trusted_key_is_accepted_during_rotation() -> None:
    rotating = settings(KEY_A, KEY_B)

    assert evaluate(signed(keys=(KEY_A,)), rotating).policy.serial == 5
    assert evaluate(signed(keys=(KEY_B,)), rotating).policy.serial == 5


# --------------------------------------------------------------------------- refusals


def test_a_tampered_signature_is_refused_as_a_signature_failure() -> None:
    envelope = json.loads(signed())
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()

    error = refusal(json.dumps(envelope).encode())

    assert error.kind == "signature"
    assert "bad signature" in error.reason


def test_a_payload_changed_after_signing_is_refused() -> None:
    envelope = json.loads(signed(serial=5))
    envelope["payload"] = base64.b64encode(payload(serial=500)).decode()

    error = refusal(json.dumps(envelope).encode())

    assert error.kind == "signature"
    assert "bad signature" in error.reason


def test_a_policy_signed_only_by_an_unknown_key_is_refused() -> None:
    error = refusal(signed(keys=(KEY_STRANGER,)))

    assert error.kind == "signature"
    assert "unknown key" in error.reason
    assert PublicKey.from_key(KEY_STRANGER).keyid in error.reason


def test_too_few_signatures_for_the_threshold_are_refused() -> None:
    error = refusal(signed(keys=(KEY_A, KEY_STRANGER)), settings(KEY_A, KEY_B, threshold=2))

    assert error.kind == "signature"
    assert "2 valid signatures needed, got 1" in error.reason


def test_one_key_signing_twice_counts_once_toward_the_threshold() -> None:
    envelope = json.loads(signed())
    envelope["signatures"] = envelope["signatures"] * 2

    error = refusal(json.dumps(envelope).encode(), settings(KEY_A, KEY_B, threshold=2))

    assert error.kind == "signature"
    assert "got 1" in error.reason


def test_a_body_that_is_not_an_envelope_is_refused() -> None:
    error = refusal(signed()[:40])

    assert error.kind == "signature"
    assert "not a DSSE envelope" in error.reason


def test_a_signed_payload_that_is_not_json_is_refused_as_invalid() -> None:
    error = refusal(signed(b'{"schema": "pullgate.policy/v1", "org": '))

    assert error.kind == "invalid"
    assert "not a valid policy" in error.reason


def test_a_signed_payload_with_an_unknown_field_is_refused_as_invalid() -> None:
    error = refusal(signed(acton="allow"))

    assert error.kind == "invalid"
    assert "acton" in error.reason


def test_a_validly_signed_policy_of_another_org_is_refused() -> None:
    error = refusal(signed(org="globex"))

    assert error.kind == "org"
    assert "'globex'" in error.reason
    assert "'acme'" in error.reason


def test_a_lower_serial_is_refused_as_a_rollback() -> None:
    high_water = accepted_high_water(signed(serial=5))

    error = refusal(signed(serial=4), high_water=high_water)

    assert error.kind == "rollback"
    assert "serial 4" in error.reason
    assert "5" in error.reason


def test_a_replayed_envelope_older_than_the_accepted_one_is_refused_as_a_rollback() -> None:
    old = signed(serial=5)
    high_water = evaluate(signed(serial=6), high_water=accepted_high_water(old)).high_water

    error = refusal(old, high_water=high_water)

    assert error.kind == "rollback"


def test_the_same_serial_with_different_content_is_refused_as_a_conflict() -> None:
    high_water = accepted_high_water(signed(serial=5, description="one"))

    error = refusal(signed(serial=5, description="two"), high_water=high_water)

    assert error.kind == "conflict"
    assert "higher serial" in error.reason


def test_the_same_serial_with_the_same_bytes_is_accepted_as_nothing_new() -> None:
    data = signed(serial=5)
    high_water = accepted_high_water(data)

    result = evaluate(data, high_water=high_water)

    assert result.new is False
    assert result.high_water == high_water


def test_the_same_payload_signed_again_by_another_trusted_key_is_nothing_new() -> None:
    body = payload(serial=5)
    high_water = accepted_high_water(signed(body, keys=(KEY_A,)))

    result = evaluate(signed(body, keys=(KEY_B,)), settings(KEY_A, KEY_B), high_water)

    assert result.new is False


def test_an_issued_at_beyond_the_clock_skew_is_refused_as_future() -> None:
    error = refusal(signed(issued_at=stamp(NOW + MAX_FUTURE_SKEW + timedelta(seconds=1))))

    assert error.kind == "future"
    assert "in the future" in error.reason


def test_an_issued_at_within_the_clock_skew_is_accepted() -> None:
    result = evaluate(signed(issued_at=stamp(NOW + MAX_FUTURE_SKEW - timedelta(seconds=1))))

    assert result.new is True


def test_a_policy_expired_beyond_the_grace_is_refused() -> None:
    expires = NOW - GRACE - timedelta(seconds=1)

    error = refusal(
        signed(issued_at=stamp(expires - timedelta(days=30)), expires_at=stamp(expires))
    )

    assert error.kind == "expired"
    assert "offline grace" in error.reason


def test_a_policy_expired_within_the_grace_is_accepted() -> None:
    expires = NOW - GRACE + timedelta(seconds=1)

    result = evaluate(
        signed(issued_at=stamp(expires - timedelta(days=30)), expires_at=stamp(expires))
    )

    assert result.new is True


def test_an_unchanged_policy_past_its_grace_is_not_refused_as_expired() -> None:
    data = signed(serial=5)
    high_water = accepted_high_water(data)

    result = evaluate(data, high_water=high_water, now=NOW + timedelta(days=60))

    assert result.new is False


def test_a_threshold_the_trusted_keys_cannot_meet_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="impossible") as caught:
        evaluate(signed(), settings(KEY_A, threshold=2))

    assert not isinstance(caught.value, PolicyRefusedError)


def test_the_high_water_state_records_its_org() -> None:
    assert accepted_high_water(signed()).org == "acme"


def test_after_an_org_change_the_old_orgs_serials_do_not_block_the_new_orgs() -> None:
    old_org = accepted_high_water(signed(serial=50))
    globex = settings(org="globex")

    result = evaluate(signed(serial=1, org="globex"), globex, old_org)

    assert result.new is True
    assert (result.high_water.serial, result.high_water.org) == (1, "globex")
    # The same org's serials still bind: no rollback within an org.
    assert refusal(signed(serial=49), high_water=old_org).kind == "rollback"


def test_a_high_water_state_without_an_org_still_binds() -> None:
    legacy = HighWater.from_json(
        {k: v for k, v in accepted_high_water(signed(serial=50)).to_json().items() if k != "org"}
    )

    assert legacy.org is None
    assert refusal(signed(serial=49), high_water=legacy).kind == "rollback"


def test_high_water_state_round_trips_through_json() -> None:
    high_water = accepted_high_water(signed())

    assert HighWater.from_json(json.loads(json.dumps(high_water.to_json()))) == high_water


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        {"serial": "5", "payload_sha256": "x", "issued_at_floor": "2026-11-01T00:00:00+00:00"},
        {"serial": 5, "payload_sha256": "x"},
        {"serial": 5, "payload_sha256": "x", "issued_at_floor": "2026-11-01T00:00:00"},
        {
            "serial": 5,
            "payload_sha256": "x",
            "issued_at_floor": "2026-11-01T00:00:00+00:00",
            "org": 7,
        },
    ],
)
def test_malformed_high_water_state_is_rejected(value: object) -> None:
    with pytest.raises(ValueError):
        HighWater.from_json(value)


# --------------------------------------------------------------------------- clock floor


def test_a_clock_set_back_before_the_floor_is_reported_and_the_floor_is_used() -> None:
    high_water = accepted_high_water(signed(issued_at=stamp(NOW)))
    set_back = NOW - timedelta(days=3)

    assert effective_now(set_back, high_water) == (NOW, True)


def test_a_clock_within_the_skew_of_the_floor_is_not_reported() -> None:
    high_water = accepted_high_water(signed(issued_at=stamp(NOW)))
    slightly_behind = NOW - MAX_FUTURE_SKEW + timedelta(seconds=1)

    assert effective_now(slightly_behind, high_water) == (slightly_behind, False)
    assert effective_now(NOW + timedelta(days=1), high_water) == (NOW + timedelta(days=1), False)
    assert effective_now(slightly_behind, None) == (slightly_behind, False)


def test_setting_the_clock_back_does_not_revive_an_expired_policy() -> None:
    old = document(
        issued_at=stamp(NOW - timedelta(days=40)), expires_at=stamp(NOW - timedelta(days=30))
    )
    old_policy = evaluate(signed(**old), now=NOW - timedelta(days=35)).policy
    # A later policy moved the floor to NOW; the clock is then set back to when `old` was fresh.
    floor = accepted_high_water(signed(serial=9, issued_at=stamp(NOW)))
    set_back = NOW - timedelta(days=35)
    assert freshness(old_policy, set_back, GRACE) is Freshness.FRESH

    judged, behind = effective_now(set_back, floor)

    assert behind is True
    assert freshness(old_policy, judged, GRACE) is Freshness.EXPIRED


def test_setting_the_clock_back_cannot_make_an_expired_envelope_acceptable() -> None:
    floor = accepted_high_water(signed(serial=5, issued_at=stamp(NOW)))
    expired = signed(
        serial=6,
        issued_at=stamp(NOW - timedelta(days=40)),
        expires_at=stamp(NOW - timedelta(days=30)),
    )
    set_back = NOW - timedelta(days=35)  # when the envelope would have looked fresh

    error = refusal(expired, high_water=floor, now=set_back)

    assert error.kind == "expired"


def test_a_clock_set_back_keeps_the_cached_policy_and_is_reported() -> None:
    # Red team: cache serial 5 issued an hour ago, the agent starts with the clock a day
    # behind; the cache was discarded as "in the future" and clock_behind stayed False.
    cached = signed(serial=5, issued_at=stamp(NOW - timedelta(hours=1)))
    high_water = accepted_high_water(cached)
    set_back = NOW - timedelta(days=1)

    result = evaluate_envelope(
        cached, settings(), high_water, set_back, source="cache", allow_expired=True
    )

    assert result.new is False
    assert result.policy.serial == 5
    assert effective_now(set_back, result.high_water) == (NOW - timedelta(hours=1), True)


def test_a_new_envelope_is_judged_future_by_the_floor_when_the_clock_is_behind() -> None:
    high_water = accepted_high_water(signed(serial=5, issued_at=stamp(NOW)))
    set_back = NOW - timedelta(days=1)

    within = evaluate(
        signed(serial=6, issued_at=stamp(NOW + MAX_FUTURE_SKEW - timedelta(seconds=1))),
        high_water=high_water,
        now=set_back,
    )
    error = refusal(
        signed(serial=7, issued_at=stamp(NOW + MAX_FUTURE_SKEW + timedelta(seconds=1))),
        high_water=high_water,
        now=set_back,
    )

    assert within.new is True
    assert error.kind == "future"


def test_the_clock_floor_never_goes_down() -> None:
    high_water = accepted_high_water(signed(serial=5, issued_at=stamp(NOW)))

    result = evaluate(
        signed(serial=6, issued_at=stamp(NOW - timedelta(days=2))), high_water=high_water
    )

    assert result.high_water.serial == 6
    assert result.high_water.issued_at_floor == NOW


# --------------------------------------------------------------------------- freshness


def org_policy(**overrides: Any) -> Policy:
    expires = NOW + timedelta(days=30)
    base: dict[str, Any] = {
        "issued_at": stamp(NOW - timedelta(days=1)),
        "expires_at": stamp(expires),
        "rules": [{"id": "tool-ok", "match": "someuser/tool", "action": "allow"}],
    }
    base.update(overrides)
    return evaluate(signed(**base)).policy


EXPIRES = NOW + timedelta(days=30)
FRESH_AT = EXPIRES - timedelta(seconds=1)
STALE_AT = EXPIRES + GRACE - timedelta(seconds=1)
EXPIRED_AT = EXPIRES + GRACE + timedelta(seconds=1)
IMAGES = ("alpine", "acme/app", "verifiedco/db", "someuser/tool", "someuser/other", "ghcr.io/x/y")
ENFORCED = {
    "alpine": Verdict.ALLOW,
    "acme/app": Verdict.ALLOW,
    "verifiedco/db": Verdict.ALLOW,
    "someuser/tool": Verdict.ALLOW,  # the rule
    "someuser/other": Verdict.DENY,  # community
    "ghcr.io/x/y": Verdict.ALLOW,
}


def verdicts(policy: Policy, now: datetime) -> dict[str, Verdict]:
    return {image: verdict(policy, image, now) for image in IMAGES}


@pytest.mark.parametrize("behavior", list(StaleBehavior))
def test_a_fresh_policy_is_enforced_unchanged(behavior: StaleBehavior) -> None:
    policy = org_policy()

    effective, state = effective_policy(policy, FRESH_AT, GRACE, behavior)

    assert state is Freshness.FRESH
    assert effective is policy
    assert verdicts(effective, FRESH_AT) == ENFORCED


@pytest.mark.parametrize("behavior", list(StaleBehavior))
def test_a_stale_policy_within_the_grace_keeps_every_decision(behavior: StaleBehavior) -> None:
    policy = org_policy()

    effective, state = effective_policy(policy, STALE_AT, GRACE, behavior)

    assert state is Freshness.STALE
    assert verdicts(effective, STALE_AT) == ENFORCED
    assert "within the offline grace" in effective.label


def test_past_the_grace_enforce_last_keeps_every_decision() -> None:
    effective, state = effective_policy(org_policy(), EXPIRED_AT, GRACE, StaleBehavior.ENFORCE_LAST)

    assert state is Freshness.EXPIRED
    assert verdicts(effective, EXPIRED_AT) == ENFORCED
    assert "stale_behavior enforce-last" in effective.label


def test_past_the_grace_monitor_allows_and_records_would_deny() -> None:
    effective, state = effective_policy(org_policy(), EXPIRED_AT, GRACE, StaleBehavior.MONITOR)

    assert state is Freshness.EXPIRED
    assert effective.mode is Mode.MONITOR
    expected = {**ENFORCED, "someuser/other": Verdict.WOULD_DENY}
    assert verdicts(effective, EXPIRED_AT) == expected
    assert "stale_behavior monitor" in effective.label


def test_past_the_grace_deny_all_denies_even_official_and_org_images() -> None:
    effective, state = effective_policy(org_policy(), EXPIRED_AT, GRACE, StaleBehavior.DENY_ALL)

    assert state is Freshness.EXPIRED
    assert verdicts(effective, EXPIRED_AT) == dict.fromkeys(IMAGES, Verdict.DENY)
    assert "stale_behavior deny-all" in effective.label


def test_deny_all_denies_even_when_the_stale_policy_was_in_monitor_mode() -> None:
    policy = org_policy(mode="monitor")

    effective, _ = effective_policy(policy, EXPIRED_AT, GRACE, StaleBehavior.DENY_ALL)

    assert verdict(effective, "alpine", EXPIRED_AT) is Verdict.DENY


def test_freshness_boundaries_are_expiry_and_expiry_plus_grace() -> None:
    policy = org_policy()

    assert freshness(policy, EXPIRES, GRACE) is Freshness.FRESH
    assert freshness(policy, EXPIRES + timedelta(microseconds=1), GRACE) is Freshness.STALE
    assert freshness(policy, EXPIRES + GRACE, GRACE) is Freshness.STALE
    assert freshness(policy, EXPIRES + GRACE + timedelta(microseconds=1), GRACE) is (
        Freshness.EXPIRED
    )
