"""The tray's pure model (`ui.model`): status → icon state and words, decision events →
notifications, bursts coalesced on a fake clock, malformed input never raising."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from ui import texts
from ui.model import (
    BatchTiming,
    DecisionLog,
    DecisionView,
    DenialBatcher,
    DockerCheck,
    IconState,
    decisions_from_json,
    docker_check_from_doctor,
    notification_for,
    parse_stream_event,
    policy_line,
    soft_wrap,
    tray_state,
    why_remedy,
)

NOW = 1_800_000_000.0

STATUS: dict[str, Any] = {
    "agent": {"pid": 42, "uid": 0, "version": "0.1.0", "uptime_seconds": 3600},
    "mode": "enforce",
    "org": "acme",
    "policy": {
        "org": "acme",
        "serial": 7,
        "issued_at": "2027-01-14T00:00:00+00:00",
        "expires_at": "2027-02-14T00:00:00+00:00",
        "state": "fresh",
        "enforcing": 'org "acme" policy serial 7',
        "mode": "enforce",
        "require_sign_in": False,
        "refresh_loop": "running",
    },
    "audit": {"dir": "/var/log/pullgate", "healthy": True, "writable": True, "lost_records": 0},
    "identity": {"configured": False},
    "clock_behind": False,
}

DENIAL: dict[str, Any] = {
    "type": "decision",
    "action": "image-pull",
    "decision": "deny",
    "image": "docker.io/someuser/nginx:latest",
    "input": "someuser/nginx",
    "category": "community",
    "rule": "category:community",
    "reason": 'Docker Hub community images are not allowed by org "acme" policy serial 7',
    "policy": 'org "acme" policy serial 7',
    "policy_serial": 7,
    "endpoint": "POST /images/create",
    "message": "pullgate: pulling docker.io/someuser/nginx:latest is not allowed: ...",
    "peer": {"pid": 99, "uid": 1000, "name": "docker", "command_line": ["docker", "pull", "x"]},
    "remediation": {
        "alternative": "nginx",
        "help_url": "https://it.acme.test/request?image=docker.io%2Fsomeuser%2Fnginx",
        "contact": "it@acme.test",
    },
    "time": NOW,
}


def status(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(STATUS)
    for path, value in changes.items():
        where = doc
        *parents, last = path.split("__")
        for p in parents:
            where = where.setdefault(p, {})
        where[last] = value
    return doc


def denial(**changes: Any) -> DecisionView:
    data = copy.deepcopy(DENIAL)
    data.update(changes)
    view = DecisionView.from_json(data)
    assert view is not None
    return view


# --------------------------------------------------------------------------- states


def test_fresh_enforce_policy_is_ok_and_says_so() -> None:
    state = tray_state(status(), now=NOW)
    assert state.icon is IconState.OK
    assert state.problems == ()
    assert "acme policy #7" in state.tooltip
    assert state.tooltip.startswith("Pullgate — Protecting")
    assert state.menu_lines[1] == "Policy: acme policy #7 — fresh"


def test_monitor_mode_is_its_own_state() -> None:
    state = tray_state(status(mode="monitor", policy__mode="monitor"), now=NOW)
    assert state.icon is IconState.MONITOR
    assert "Monitor mode" in state.tooltip


@pytest.mark.parametrize(
    ("policy_state", "words"),
    [("stale", "stale"), ("expired", "expired"), ("fallback", "no organisation policy")],
)
def test_stale_expired_or_fallback_policy_needs_attention(policy_state: str, words: str) -> None:
    state = tray_state(status(policy__state=policy_state), now=NOW)
    assert state.icon is IconState.ATTENTION
    assert words in state.problems[0]
    assert words in state.tooltip


def test_local_and_default_policies_are_not_problems() -> None:
    for policy_state in ("local", "default"):
        assert tray_state(status(policy__state=policy_state), now=NOW).icon is IconState.OK


def test_signed_out_while_sign_in_required_needs_attention() -> None:
    doc = status(policy__require_sign_in=True, identity={"configured": True, "you": None})
    state = tray_state(doc, now=NOW)
    assert state.icon is IconState.ATTENTION
    assert state.problems == (texts.PROBLEM_SIGNED_OUT,)
    assert state.identity_line == texts.MENU_SIGNED_OUT


def test_an_expired_sign_in_counts_as_signed_out() -> None:
    you = {"email": "bob@acme.test", "expires_at": NOW - 1}
    doc = status(policy__require_sign_in=True, identity={"configured": True, "you": you})
    state = tray_state(doc, now=NOW)
    assert state.problems == (texts.PROBLEM_SIGN_IN_EXPIRED,)
    assert state.signed_in is None


def test_signed_in_is_shown_and_ok() -> None:
    you = {"email": "bob@acme.test", "expires_at": NOW + 3600}
    doc = status(policy__require_sign_in=True, identity={"configured": True, "you": you})
    state = tray_state(doc, now=NOW)
    assert state.icon is IconState.OK
    assert state.identity_line == "Signed in as bob@acme.test"
    assert any(v.startswith("bob@acme.test until") for _, v in state.rows)


def test_signed_out_without_requirement_is_fine() -> None:
    state = tray_state(status(identity={"configured": True, "you": None}), now=NOW)
    assert state.icon is IconState.OK


def test_audit_failure_needs_attention() -> None:
    doc = status(audit={"dir": "/x", "healthy": False, "writable": False, "failing": "disk full"})
    state = tray_state(doc, now=NOW)
    assert state.icon is IconState.ATTENTION
    assert "disk full" in state.problems[0]


def test_docker_not_pointed_at_the_shim_needs_attention() -> None:
    state = tray_state(status(), now=NOW, docker=DockerCheck(False, "docker uses the default"))
    assert state.icon is IconState.ATTENTION
    assert "docker is not pointed at Pullgate" in state.tooltip


def test_several_problems_are_all_listed_and_counted_in_the_tooltip() -> None:
    doc = status(policy__state="stale", clock_behind=True)
    state = tray_state(doc, now=NOW)
    assert len(state.problems) == 2
    assert "(and 1 more)" in state.tooltip


def test_no_status_is_down_with_the_reason() -> None:
    state = tray_state(None, now=NOW, error="cannot reach the agent at /x: No such file")
    assert state.icon is IconState.DOWN
    assert state.tooltip == "Pullgate — " + texts.STATE_DOWN
    assert "No such file" in state.problems[0]


@pytest.mark.parametrize(
    "garbage",
    [
        [],
        "x",
        42,
        {"policy": []},
        {"policy": {"state": ["x"]}, "identity": "no", "audit": 3, "agent": None},
        {"policy": {"org": {"a": 1}, "serial": True, "issued_at": 5}, "mode": 1},
    ],
)
def test_any_shape_of_status_never_raises(garbage: object) -> None:
    state = tray_state(garbage, now=NOW)
    assert state.icon in IconState


def test_doctor_output_gives_the_docker_check() -> None:
    out = json.dumps(
        [
            {"name": "agent reachable", "result": "OK", "detail": "x", "fix": None},
            {"name": "docker uses the shim", "result": "FAIL", "detail": "uses default"},
        ]
    )
    assert docker_check_from_doctor(out) == DockerCheck(False, "uses default")
    assert docker_check_from_doctor(b"not json").ok is None
    assert docker_check_from_doctor("{}").ok is None


# --------------------------------------------------------------------------- notifications


def test_denial_title_and_body() -> None:
    n = notification_for([denial()], "b1")
    assert n.title == "Pull blocked: someuser/nginx"
    assert n.body.splitlines() == [
        'Docker Hub community images are not allowed by org "acme" policy serial 7.',
        "Use the official image 'nginx' instead.",
    ]
    assert n.quiet is False
    assert n.key == "b1"


def test_title_keeps_a_tag_other_than_latest() -> None:
    n = notification_for([denial(image="docker.io/someuser/tool:1.2")], "k")
    assert n.title == "Pull blocked: someuser/tool:1.2"


def test_run_and_build_have_their_own_verb() -> None:
    assert notification_for([denial(action="container-create")], "k").title.startswith(
        "Run blocked"
    )
    build = notification_for([denial(action="image-build", image=None, input=None)], "k")
    assert build.title == "Build blocked"


def test_monitor_would_deny_is_quiet_and_says_would() -> None:
    n = notification_for([denial(decision="would_deny")], "k")
    assert n.quiet is True
    assert n.title == "Pull would be blocked: someuser/nginx"
    assert texts.BODY_MONITOR_NOTE in n.body


def test_hint_comes_before_the_alternative() -> None:
    d = denial(remediation={"hint": "sign in with `pullgate login`, then pull again"})
    assert notification_for([d], "k").body.splitlines()[1] == (
        "Sign in with `pullgate login`, then pull again."
    )


def test_no_remediation_still_says_what_to_do() -> None:
    d = denial(remediation=None)
    assert notification_for([d], "k").body.splitlines()[-1] == texts.REMEDY_DEFAULT


def test_the_case_of_the_admins_words_and_of_image_names_is_kept() -> None:
    d = denial(reason="someuser/tool is unmaintained; use acme/tool", remediation=None)
    assert notification_for([d], "k").body.splitlines()[0] == (
        "someuser/tool is unmaintained; use acme/tool."
    )
    pinned = denial(remediation={"hint": "acme/tool:<version>, not :latest"})
    assert notification_for([pinned], "k").body.splitlines()[1] == (
        "acme/tool:<version>, not :latest."
    )


def test_why_remedy_is_the_remediation_not_the_notifications_hint() -> None:
    assert why_remedy(denial()) == ["Use the official image 'nginx' instead."]
    assert denial().alternative_command == "docker pull nginx"
    hinted = denial(remediation={"hint": "sign in with `pullgate login`, then pull again"})
    assert why_remedy(hinted) == ["Sign in with `pullgate login`, then pull again."]
    both = denial(remediation={"alternative": "nginx", "hint": "pin a version"})
    assert why_remedy(both) == ["Use the official image 'nginx' instead.", "Pin a version."]
    asked = denial(remediation={"help_url": "https://it/x"})
    assert why_remedy(asked) == [texts.WHY_REMEDY_REQUEST]
    assert why_remedy(denial(remediation=None)) == [texts.WHY_REMEDY_ASK]
    assert "pullgate check IMAGE" in texts.WHY_REMEDY_ASK
    assert texts.REMEDY_DEFAULT not in why_remedy(denial(remediation=None))
    assert why_remedy(denial(decision="allow", remediation=None)) == []


def test_the_policy_row_is_one_line() -> None:
    d = denial()
    now = "acme policy #7 — fresh, 5 min ago"
    assert policy_line(d, now, 'org "acme" policy serial 7') == now
    changed = policy_line(d, "acme policy #8 — fresh", 'org "acme" policy serial 8')
    assert changed == 'org "acme" policy serial 7 (now enforcing acme policy #8 — fresh)'
    assert policy_line(d, "", None) == 'org "acme" policy serial 7'
    assert "\n" not in changed


def test_soft_wrap_breaks_only_long_unbroken_runs() -> None:
    assert soft_wrap("docker.io/someuser/tool:latest") == "docker.io/someuser/tool:latest"
    assert soft_wrap("/tmp/pgshot-x/agent/control.sock") == "/tmp/pgshot-x/agent/control.sock"
    long = "docker.io/someuser/" + "a" * 100
    wrapped = soft_wrap(long)
    assert wrapped.replace("\u200b", "") == long
    assert all(len(part) <= 40 for part in wrapped.replace("/", "\u200b").split("\u200b"))


def test_control_characters_from_the_agent_are_escaped() -> None:
    d = denial(reason="bad\x1b[31m red", input="x")
    assert "\x1b" not in notification_for([d], "k").body


def test_help_url_must_be_a_web_page() -> None:
    assert denial(remediation={"help_url": "file:///etc/passwd"}).help_url is None
    assert denial(remediation={"help_url": "https://it/x"}).help_url == "https://it/x"


# --------------------------------------------------------------------------- batching


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_single_denial_is_shown_after_the_settle_delay() -> None:
    clock = FakeClock()
    batcher = DenialBatcher(clock)
    key = batcher.add(denial())
    assert batcher.due_in() == pytest.approx(BatchTiming().settle)
    assert batcher.flush() == []
    clock.now += BatchTiming().settle
    (n,) = batcher.flush()
    assert n.key == key and n.title == "Pull blocked: someuser/nginx"
    assert batcher.due_in() is None


def test_a_compose_burst_is_one_notification_listing_the_images() -> None:
    clock = FakeClock()
    batcher = DenialBatcher(clock)
    names = [f"someuser/img{i}" for i in range(10)]
    keys = set()
    for name in names:
        keys.add(batcher.add(denial(image=f"docker.io/{name}:latest", input=name)))
        clock.now += 0.01
    clock.now += batcher.due_in() or 0
    (n,) = batcher.flush()
    assert len(keys) == 1
    assert n.title == "10 pulls blocked"
    assert n.total == 10
    assert "• someuser/img0" in n.body and "… and 4 more" in n.body


def test_a_burst_is_shown_within_max_hold_even_while_denials_keep_coming() -> None:
    clock = FakeClock()
    timing = BatchTiming()
    batcher = DenialBatcher(clock, timing)
    shown: list[tuple[float, int]] = []
    start = clock.now
    for _ in range(15):  # one denial every 0.1 s for 1.5 s: never settles
        batcher.add(denial())
        clock.now += 0.1
        shown += [(clock.now - start, n.total) for n in batcher.flush()]
    clock.now += 1
    shown += [(clock.now - start, n.total) for n in batcher.flush()]
    assert shown[0][0] <= timing.max_hold + 0.1  # the first within the budget
    assert shown[-1][1] == 15  # the last update lists the whole burst
    assert len(shown) <= 3


def test_updates_of_one_burst_share_its_key_and_a_later_burst_gets_a_new_one() -> None:
    clock = FakeClock()
    batcher = DenialBatcher(clock)
    first = batcher.add(denial())
    clock.now += 1.0
    batcher.flush()
    again = batcher.add(denial())  # within burst_gap of the last: same burst
    clock.now += 1.0
    (update,) = batcher.flush()
    assert again == first and update.key == first and update.total == 2
    clock.now += 5
    assert batcher.add(denial()) != first


def test_would_deny_and_deny_are_separate_bursts() -> None:
    clock = FakeClock()
    batcher = DenialBatcher(clock)
    batcher.add(denial())
    batcher.add(denial(decision="would_deny"))
    clock.now += 1
    out = batcher.flush()
    assert sorted(n.quiet for n in out) == [False, True]


def test_a_flood_keeps_a_bounded_list_and_counts_the_rest() -> None:
    clock = FakeClock()
    batcher = DenialBatcher(clock)
    for _ in range(1000):
        batcher.add(denial())
    (n,) = batcher.flush(force=True)
    assert n.total == 1000 and len(n.decisions) == BatchTiming().keep
    assert n.title == "1000 pulls blocked"


# --------------------------------------------------------------------------- events, list


def test_malformed_events_are_marked_not_raised() -> None:
    for name, data in [
        ("decision", "{"),
        ("decision", "[1]"),
        ("decision", '{"decision": "maybe"}'),
        ("decision", "[" * 50_000),
        ("policy", "null"),
        ("decision", '{"decision": "deny", "image": {"x": 1}, "peer": 5, "time": "x"}'),
    ]:
        event = parse_stream_event(name, data)
        assert event.malformed or event.decision is not None


def test_policy_and_identity_events_ask_for_the_status() -> None:
    assert parse_stream_event("policy", "{}").refetch_status
    assert parse_stream_event("identity", "{}").refetch_status
    assert not parse_stream_event("notice", "{}").refetch_status


def test_decision_log_filters_by_verdict_and_text() -> None:
    log = DecisionLog(limit=3)
    log.extend_older(decisions_from_json({"decisions": [DENIAL, {"bad": 1}]}))
    log.add(denial(decision="allow", image="docker.io/library/alpine:latest", input="alpine"))
    log.add(denial(decision="would_deny"))
    assert [d.verdict for d in log.filtered()] == ["would_deny", "allow", "deny"]
    assert [d.verdict for d in log.filtered("deny")] == ["deny"]
    assert [d.input for d in log.filtered(None, "ALP")] == ["alpine"]
    assert log.latest_denial() is not None and log.latest_denial().verdict == "would_deny"  # type: ignore[union-attr]
    log.add(denial())
    assert len(log) == 3


@pytest.mark.parametrize(
    ("expires", "max_age", "renew"),
    [
        (None, 28800.0, None),
        (10_000.0, 28800.0, 10_000.0 - 600),  # 8 h: ten minutes before
        (10_000.0, 300.0, 10_000.0 - 75),  # 5 min: a quarter of it
        (10_000.0, 120.0, 10_000.0 - 60),  # never less than a minute
        (10_000.0, None, 10_000.0 - 600),
    ],
)
def test_the_sign_in_is_renewed_before_the_agent_forgets_it(
    expires: float | None, max_age: float | None, renew: float | None
) -> None:
    from ui.model import renewal_time

    assert renewal_time(expires, max_age) == renew
