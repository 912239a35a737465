"""The audit record and chain (pure, agent.core.audit): ECS fields per event kind, no
secrets, and a verify (agent.daemon.audit_verify reading the files for the core's chain
check) that names the exact first bad line after each kind of tampering."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from agent.core.audit import (
    GENESIS,
    STATE_NAME,
    AuditState,
    canonical_json,
    decode_state,
    encode_line,
    encode_state_slot,
    file_name,
    order_files,
    record_for,
    summary_line,
    verify_chain,
)
from agent.core.events import DecisionEvent, Event, NoticeEvent, PolicyEvent
from agent.core.peer import PeerInfo, ProcessSummary
from agent.daemon.audit_verify import verify

DENIAL = "pullgate: pulling docker.io/someuser/tool:latest is not allowed"
T0 = 1_790_000_000.25  # 2026-09-21T14:13:20.250Z, a fixed clock

PEER = PeerInfo(
    pid=4242,
    uid=1000,
    gid=1000,
    user="alice",
    name="docker",
    executable="/usr/bin/docker",
    command_line=("docker", "pull", "someuser/tool"),
    parents=(
        ProcessSummary(4000, "bash", "/usr/bin/bash"),
        ProcessSummary(3000, "code", "/usr/share/code/code"),
        ProcessSummary(1),
    ),
)


def decision_event(
    decision: str = "deny", *, image: str = "docker.io/someuser/tool:latest", t: float = T0
) -> DecisionEvent:
    return DecisionEvent(
        action="image-pull",
        decision=decision,
        image=image,
        input="someuser/tool",
        category="community",
        rule="category:community",
        reason="community images are not allowed by acme's policy",
        policy="acme policy serial 7",
        policy_serial=7,
        endpoint="POST /images/create",
        message=DENIAL if decision == "deny" else None,
        peer=PEER,
        time=t,
    )


def build_log(
    directory: Path, n: int, *, per_file: int = 0, start: int = 1, prev: str = GENESIS
) -> tuple[list[Path], AuditState]:
    """``n`` decision records written with the pure functions, ``per_file`` to a file."""
    directory.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    out = None
    digest = prev
    first_prev = prev
    for i, seq in enumerate(range(start, start + n)):
        if out is None or (per_file and i % per_file == 0):
            if out is not None:
                out.close()
            files.append(directory / file_name(seq, T0 + i))
            out = files[-1].open("wb")
        record = record_for(decision_event(t=T0 + i), sequence=seq, host="laptop", prev_hash=digest)
        line, digest = encode_line(record)
        out.write(line)
    assert out is not None
    out.close()
    state = AuditState(
        sequence=start + n - 1,
        hash=digest,
        file=files[-1].name,
        base_file=files[0].name,
        base_sequence=start,
        base_prev=first_prev,
    )
    return files, state


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# --------------------------------------------------------------------------- mapping


def record(event: Event) -> dict[str, Any]:
    return record_for(event, sequence=5, host="laptop", prev_hash=GENESIS)


def test_decision_record_names_image_rule_policy_user_process_and_parent_chain() -> None:
    r = record(decision_event("deny"))
    assert r["@timestamp"] == "2026-09-21T14:13:20.250Z"
    assert r["event.sequence"] == 5
    assert r["event.action"] == "image-pull"
    assert r["event.outcome"] == "failure"
    assert r["event.type"] == ["denied"]
    assert r["pullgate.decision"] == "deny"
    assert r["container.image.name"] == "docker.io/someuser/tool:latest"
    assert r["pullgate.reference.original"] == "someuser/tool"
    assert r["pullgate.category"] == "community"
    assert (r["rule.id"], r["rule.version"], r["rule.ruleset"]) == (
        "category:community",
        "7",
        "acme policy serial 7",
    )
    assert (r["user.name"], r["user.id"], r["group.id"]) == ("alice", "1000", "1000")
    assert r["process.pid"] == 4242
    assert r["process.name"] == "docker"
    assert r["process.executable"] == "/usr/bin/docker"
    assert r["process.command_line"] == "docker pull someuser/tool"
    assert r["process.args"] == ["docker", "pull", "someuser/tool"]
    assert (r["process.parent.pid"], r["process.parent.name"]) == (4000, "bash")
    assert [a.get("name") for a in r["pullgate.process.ancestors"]] == ["bash", "code", None]
    assert r["pullgate.process.ancestors"][2] == {"pid": 1}
    assert r["host.name"] == "laptop"
    assert r["message"].startswith("pullgate: pulling docker.io/someuser/tool")
    assert r["event.reason"].startswith("community images")
    assert r["pullgate.chain.prev"] == GENESIS
    assert "event.hash" not in r
    assert "pullgate.identity" not in r  # no sign-in yet: absent, not a made-up value


def test_allow_and_would_deny_let_the_pull_through_so_their_outcome_is_success() -> None:
    assert record(decision_event("allow"))["event.outcome"] == "success"
    monitor = record(decision_event("would_deny"))
    assert (monitor["event.outcome"], monitor["pullgate.decision"]) == ("success", "would_deny")
    assert monitor["event.type"] == ["allowed"]


def test_setting_only_decision_without_image_or_peer_leaves_those_fields_out() -> None:
    event = DecisionEvent(
        action="image-build",
        decision="deny",
        image=None,
        input=None,
        category=None,
        rule="builds",
        reason="builds whose base images cannot be seen are not allowed",
        policy="acme policy serial 7",
        policy_serial=7,
        endpoint="POST /grpc",
    )
    r = record(event)
    assert "container.image.name" not in r and "process.pid" not in r and "user.name" not in r
    assert r["rule.id"] == "builds"
    assert r["message"] == event.reason


def test_policy_record_keeps_serial_and_state_but_not_url_credentials() -> None:
    r = record(
        PolicyEvent(
            action="policy-update",
            outcome="success",
            reason="accepted serial 8",
            org="acme",
            serial=8,
            source="https://bot:s3cret@policies.acme.example/pullgate.json",
            state="fresh",
            time=T0,
        )
    )
    assert r["event.action"] == "policy-update"
    assert r["event.outcome"] == "success"
    assert r["rule.version"] == "8"
    assert r["organization.name"] == "acme"
    assert r["pullgate.policy.state"] == "fresh"
    assert r["pullgate.policy.source"] == "https://<redacted>@policies.acme.example/pullgate.json"
    assert "pullgate.decision" not in r


def test_bypass_notice_is_an_alert_and_credential_shaped_details_are_redacted() -> None:
    r = record(
        NoticeEvent(
            action="bypass-suspected",
            outcome="unknown",
            reason="an image pull reached the daemon without the shim",
            severity="warning",
            details={
                "image": "docker.io/library/alpine:latest",
                "X-Registry-Auth": "eyJ1c2VybmFtZSI6ImEiLCJwYXNzd29yZCI6Imh1bnRlcjIifQ==",
                "nested": {"access_token": "hunter2", "url": "https://u:hunter2@r.example/v2"},
            },
            peer=PEER,
            time=T0,
        )
    )
    assert r["event.kind"] == "alert"
    assert r["log.level"] == "warning"
    assert r["user.name"] == "alice"
    assert r["pullgate.details"]["image"] == "docker.io/library/alpine:latest"
    text = canonical_json(r).decode()
    assert "hunter2" not in text and "eyJ1c2Vy" not in text


def test_agent_notice_is_a_plain_event() -> None:
    r = record(NoticeEvent(action="agent-start", outcome="success", reason="agent started"))
    assert (r["event.kind"], r["event.action"], r["log.level"]) == ("event", "agent-start", "info")


def test_no_record_has_a_credential_field() -> None:
    events: list[Event] = [
        decision_event(),
        PolicyEvent(action="policy-refused", outcome="failure", reason="bad signature"),
        NoticeEvent(action="agent-stop", outcome="success", reason="stopped"),
    ]
    for event in events:
        keys = " ".join(record(event)).lower()
        for word in ("auth", "token", "password", "secret", "header"):
            assert word not in keys


def test_summary_line_shows_time_decision_image_user_process_chain_and_reason() -> None:
    line = summary_line(record(decision_event("deny")))
    assert line.startswith("2026-09-21T14:13:20.250Z deny")
    assert "docker.io/someuser/tool:latest" in line
    assert "user=alice" in line
    assert "process=docker<-bash<-code" in line
    assert line.endswith(": community images are not allowed by acme's policy")


# --------------------------------------------------------------------------- chain


def test_line_is_canonical_json_with_the_hash_of_prev_and_record_appended_last() -> None:
    r = record(decision_event())
    line, digest = encode_line(r)
    body = json.dumps(r, sort_keys=True, separators=(",", ":")).encode()
    assert digest == hashlib.sha256(bytes(32) + body).hexdigest()
    assert line == body[:-1] + f',"event.hash":"{digest}"}}\n'.encode()
    assert json.loads(line)["event.hash"] == digest


def test_each_record_links_to_the_hash_of_the_one_before(tmp_path: Path) -> None:
    files, _ = build_log(tmp_path, 3)
    records = [json.loads(line) for line in lines_of(files[0])]
    assert records[0]["pullgate.chain.prev"] == GENESIS
    assert records[1]["pullgate.chain.prev"] == records[0]["event.hash"]
    assert records[2]["pullgate.chain.prev"] == records[1]["event.hash"]


def test_intact_log_verifies_with_its_tail_anchored(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 10, per_file=4)
    result = verify(files, state)
    assert result.ok and result.first_bad is None
    assert (result.records, result.files, result.first_sequence, result.last_sequence) == (
        10,
        3,
        1,
        10,
    )
    assert result.tail_anchored


def test_an_edited_field_is_named_at_its_line(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 10)
    lines = lines_of(files[0])
    lines[6] = lines[6].replace(b'"pullgate.decision":"deny"', b'"pullgate.decision":"allow"')
    files[0].write_bytes(b"".join(lines))
    bad = verify(files, state).first_bad
    assert bad is not None
    assert (bad.file, bad.line) == (files[0].name, 7)
    assert bad.reason.startswith("edited")


def test_a_rehashed_edit_is_caught_at_the_next_line(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 5)
    lines = lines_of(files[0])
    r = json.loads(lines[1])
    del r["event.hash"]
    r["user.name"] = "mallory"
    lines[1], _ = encode_line(r)
    files[0].write_bytes(b"".join(lines))
    bad = verify(files, state).first_bad
    assert bad is not None and bad.line == 3
    assert "pullgate.chain.prev does not match" in bad.reason


def test_a_deleted_line_is_named_at_the_line_after_the_gap(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 10)
    lines = lines_of(files[0])
    del lines[4]
    files[0].write_bytes(b"".join(lines))
    bad = verify(files, state).first_bad
    assert bad is not None
    assert bad.line == 5
    assert (
        bad.reason == "deleted: expected sequence 5, found 6: 1 record(s) missing before this line"
    )


def test_two_swapped_lines_are_reported_as_reordered(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 10)
    lines = lines_of(files[0])
    lines[3], lines[4] = lines[4], lines[3]
    files[0].write_bytes(b"".join(lines))
    bad = verify(files, state).first_bad
    assert bad is not None
    assert bad.line == 4
    assert bad.reason == "reordered: expected sequence 4, found 5; sequence 4 is at line 5"


def test_a_sequence_going_backwards_is_reordered(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 6)
    lines = lines_of(files[0])
    lines.insert(4, lines[1])
    files[0].write_bytes(b"".join(lines))
    bad = verify(files, state).first_bad
    assert bad is not None and bad.line == 5
    assert bad.reason.startswith("reordered: sequence goes backwards (expected 5, found 2)")


def test_a_last_line_cut_midway_is_truncated(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 8)
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) - 100])
    bad = verify(files, state).first_bad
    assert bad is not None
    assert bad.line == 8
    assert bad.reason.startswith("truncated: the last line is incomplete")


def test_last_whole_lines_removed_are_caught_by_the_state_anchor(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 8)
    files[0].write_bytes(b"".join(lines_of(files[0])[:5]))
    bad = verify(files, state).first_bad
    assert bad is not None
    assert (bad.file, bad.line) == (files[0].name, 6)
    assert bad.reason.startswith(
        "truncated: the log ends at sequence 5 but audit.state records sequence 8: 3 record(s)"
    )


def test_without_the_state_a_cut_tail_cannot_be_seen(tmp_path: Path) -> None:
    files, _ = build_log(tmp_path, 8)
    files[0].write_bytes(b"".join(lines_of(files[0])[:5]))
    result = verify(files)
    assert result.ok and not result.tail_anchored  # why the writer keeps audit.state


def test_a_log_one_record_ahead_of_its_state_is_intact(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 8)
    behind = AuditState(7, json.loads(lines_of(files[0])[6])["event.hash"], *_anchor(state))
    assert verify(files, behind).ok  # crash between the record's fsync and the state's


def _anchor(state: AuditState) -> tuple[str, str, int, str]:
    return (state.file, state.base_file, state.base_sequence, state.base_prev)


def test_a_whole_rotated_file_deleted_is_named_at_the_next_files_first_line(
    tmp_path: Path,
) -> None:
    files, state = build_log(tmp_path, 12, per_file=4)
    files[1].unlink()
    bad = verify([files[0], files[2]], state).first_bad
    assert bad is not None
    assert (bad.file, bad.line) == (files[2].name, 1)
    assert bad.reason.startswith("deleted: expected sequence 5, found 9: 4 record(s)")


def test_an_edit_in_a_rotated_file_is_named_in_that_file(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 12, per_file=4)
    lines = lines_of(files[1])
    lines[2] = lines[2].replace(b'"user.name":"alice"', b'"user.name":"bobby"')
    files[1].write_bytes(b"".join(lines))
    bad = verify(files, state).first_bad
    assert bad is not None and (bad.file, bad.line) == (files[1].name, 3)
    assert bad.reason.startswith("edited")


def test_deleting_the_active_file_is_a_truncated_tail(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 12, per_file=4)
    bad = verify(files[:2], state).first_bad
    assert bad is not None
    assert (bad.file, bad.line) == (files[1].name, 5)
    assert bad.reason.endswith(f"({files[2].name} is gone)")


def test_retention_verifies_from_the_anchored_oldest_kept_file(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 12, per_file=4)
    second_prev = json.loads(lines_of(files[1])[0])["pullgate.chain.prev"]
    files[0].unlink()
    moved = AuditState(state.sequence, state.hash, state.file, files[1].name, 5, second_prev)
    result = verify(files[1:], moved)
    assert result.ok and (result.first_sequence, result.records) == (5, 8)


def test_deleting_the_oldest_kept_file_is_named(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 12, per_file=4)
    bad = verify(files[1:], state).first_bad
    assert bad is not None and (bad.file, bad.line) == (files[1].name, 1)
    assert bad.reason.startswith(f"deleted: the oldest retained file {files[0].name} is missing")


def test_a_forged_anchor_prev_breaks_the_first_line(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 4, start=9, prev="ab" * 32)
    forged = AuditState(state.sequence, state.hash, state.file, state.base_file, 9, "cd" * 32)
    bad = verify(files, forged).first_bad
    assert bad is not None and bad.line == 1
    assert bad.reason.startswith("deleted: the chain link into this file is broken")


def test_files_are_ordered_by_first_sequence_and_other_names_ignored(tmp_path: Path) -> None:
    names = [file_name(1000, T0), file_name(2, T0 + 99), file_name(30, T0 + 5)]
    paths = [tmp_path / n for n in [*names, "audit.state", names[0] + ".x.torn"]]
    assert [p.name for p in order_files(paths)] == [names[1], names[2], names[0]]


def test_state_survives_a_torn_slot_by_falling_back_to_the_other(tmp_path: Path) -> None:
    a = AuditState(7, "a" * 64, "f", "b", 1, GENESIS, generation=1)
    b = AuditState(8, "b" * 64, "f", "b", 1, GENESIS, generation=2)
    data = encode_state_slot(b) + encode_state_slot(a)
    assert decode_state(data) == b
    torn = data[:100] + b"\0" * 412 + data[512:]
    assert decode_state(torn) == a
    assert decode_state(b"") is None
    assert STATE_NAME == "audit.state"


def _rechain(lines: list[bytes], start: int, extra: int = 0) -> list[bytes]:
    """Rewrite ``lines[start:]`` (another user name) and append ``extra`` records, each
    chained to the one before: what someone who edits the tail would write."""
    out = lines[:start]
    prev = json.loads(out[-1])["event.hash"] if out else GENESIS
    originals = [json.loads(x) for x in lines[start:]]
    seq = originals[0]["event.sequence"] if originals else json.loads(out[-1])["event.sequence"] + 1
    template = (originals or [json.loads(out[-1])])[-1]
    for original in originals + [template] * extra:
        r = dict(original)
        del r["event.hash"]
        r["user.name"], r["event.sequence"], r["pullgate.chain.prev"] = "mallory", seq, prev
        line, prev = encode_line(r)
        out.append(line)
        seq += 1
    return out


def test_a_rechained_tail_running_past_the_state_is_caught_at_the_anchor(
    tmp_path: Path,
) -> None:
    files, state = build_log(tmp_path, 8)
    files[0].write_bytes(b"".join(_rechain(lines_of(files[0]), 5, extra=2)))
    result = verify(files, state)
    assert not result.ok and result.first_bad is not None
    assert (result.first_bad.file, result.first_bad.line) == (files[0].name, 8)
    assert result.first_bad.reason.startswith(
        "edited: the record at sequence 8 is not the one audit.state recorded"
    )


def test_records_after_a_clean_close_were_appended_by_someone_else(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 6)
    clean = AuditState(*_tail_of(state), clean=True)
    files[0].write_bytes(b"".join(_rechain(lines_of(files[0]), 6, extra=2)))
    result = verify(files, clean)
    assert result.first_bad is not None
    assert (result.first_bad.line, result.first_bad.reason[:12]) == (7, "appended: 2 ")
    assert verify(files, state).ok  # a live (not clean) writer may be ahead of its state


def _tail_of(state: AuditState) -> tuple[int, str, str, str, int, str]:
    return (
        state.sequence,
        state.hash,
        state.file,
        state.base_file,
        state.base_sequence,
        state.base_prev,
    )


def _notice(action: str, details: dict[str, Any]) -> NoticeEvent:
    return NoticeEvent(
        action=action, outcome="success", reason=f"{action} happened", details=details, time=T0
    )


def test_the_writers_gap_notes_make_the_log_not_intact_and_crash_notes_do_not(
    tmp_path: Path,
) -> None:
    files, state = build_log(tmp_path, 4)
    lines = lines_of(files[0])
    prev = json.loads(lines[-1])["event.hash"]
    notes: list[tuple[str, dict[str, Any]]] = [
        ("audit-recovery", {"unclean_shutdown": True, "torn_file": "x.torn"}),
        ("audit-failure", {"lost_records": 2}),
        ("audit-recovery", {"state_recreated": True}),
    ]
    for i, (action, details) in enumerate(notes):
        r = record_for(_notice(action, details), sequence=5 + i, host="laptop", prev_hash=prev)
        line, prev = encode_line(r)
        lines.append(line)
    files[0].write_bytes(b"".join(lines))
    state = AuditState(7, prev, *_tail_of(state)[2:])
    result = verify(files, state)
    assert result.first_bad is None and not result.ok
    assert [(n.line, n.action, n.gap) for n in result.notes] == [
        (5, "audit-recovery", False),
        (6, "audit-failure", False),
        (7, "audit-recovery", True),
    ]
    assert [n.sequence for n in result.gaps] == [7]
    files[0].write_bytes(b"".join(lines[:6]))
    assert verify(files, AuditState(6, json.loads(lines[5])["event.hash"], *_tail_of(state)[2:])).ok


# ECS 8.x: every event.category value, with the event.type values ECS expects for it.
ECS_EXPECTED_TYPES = {
    "configuration": {"access", "change", "creation", "deletion", "info"},
    "file": {"access", "change", "creation", "deletion", "info"},
    "host": {"access", "change", "end", "info", "start"},
    "intrusion_detection": {"allowed", "denied", "info", "start", "end"},
    "process": {"access", "change", "end", "info", "start"},
}
ECS_KINDS = {"alert", "asset", "enrichment", "event", "metric", "state", "pipeline_error", "signal"}


def _assert_ecs(r: dict[str, Any]) -> None:
    assert r["event.kind"] in ECS_KINDS
    (category,) = r["event.category"]
    assert category in ECS_EXPECTED_TYPES, category
    assert set(r["event.type"]) <= ECS_EXPECTED_TYPES[category], (category, r["event.type"])


def test_every_record_uses_ecs_defined_category_and_type_values() -> None:
    setting = DecisionEvent(
        action="container-create",
        decision="deny",
        image=None,
        input=None,
        category=None,
        rule="builds",
        reason="builds are not allowed",
        policy="p",
        policy_serial=1,
        endpoint="POST /build",
        time=T0,
    )
    events: list[Event] = [
        decision_event("deny"),
        decision_event("allow"),
        decision_event("would_deny"),
        setting,
        PolicyEvent(action="policy-update", outcome="success", reason="serial 8", time=T0),
        PolicyEvent(action="policy-refused", outcome="failure", reason="bad", time=T0),
    ]
    events += [
        _notice(action, {})
        for action in (
            "agent-start",
            "agent-stop",
            "bypass-suspected",
            "audit-recovery",
            "audit-failure",
            "config-changed",
            "docker-context-changed",
            "policy-cache-modified",
            "policy-refresh-error",
            "something-new",
        )
    ]
    for event in events:
        _assert_ecs(record(event))
    deny, allow = record(decision_event("deny")), record(decision_event("allow"))
    assert (deny["event.category"], deny["event.type"]) == (["intrusion_detection"], ["denied"])
    assert (allow["event.category"], allow["event.type"]) == (["intrusion_detection"], ["allowed"])
    assert record(_notice("agent-start", {}))["event.type"] == ["start"]
    assert record(_notice("bypass-suspected", {}))["event.kind"] == "alert"


# --------------------------------------------------------------------------- forged states


def test_a_state_at_sequence_0_over_records_is_not_the_writers_anchor(tmp_path: Path) -> None:
    """Red team: audit.state forged to sequence 0 hid a cut tail (the anchor hash was never
    passed) and, with the oldest file deleted, the missing start too."""
    files, _ = build_log(tmp_path, 12, per_file=4)
    files[2].unlink()  # the tail
    zero = AuditState(0, GENESIS, files[0].name, files[0].name, 1, GENESIS)
    result = verify(files[:2], zero)
    assert not result.ok and result.first_bad is not None
    assert (result.first_bad.file, result.first_bad.line) == (STATE_NAME, 0)
    assert result.first_bad.reason.startswith(
        "audit.state records sequence 0, before the oldest kept record 1: it is not the "
        "writer's anchor"
    )
    files[0].unlink()  # and the oldest file
    bad = verify(files[1:2], zero).first_bad
    assert bad is not None and "sequence 0, before the oldest kept record 5" in bad.reason


def test_a_state_below_the_base_sequence_is_not_the_writers_anchor(tmp_path: Path) -> None:
    files, _ = build_log(tmp_path, 12, per_file=4)
    second_prev = json.loads(lines_of(files[1])[0])["pullgate.chain.prev"]
    files[0].unlink()
    files[2].unlink()
    # The base is the second file (as retention writes it), the last sequence far below.
    forged = AuditState(3, "ab" * 32, files[1].name, files[1].name, 5, second_prev)
    bad = verify([files[1]], forged).first_bad
    assert bad is not None and bad.file == STATE_NAME
    assert "records sequence 3, before the oldest kept record 5" in bad.reason
    # One behind the base is the writer's own state right after a rotation that retention
    # followed at once (nothing in the new file yet): still fine.
    just = AuditState(4, "ab" * 32, files[1].name, files[1].name, 5, second_prev)
    assert verify([files[1]], just).ok


def test_an_empty_log_with_a_state_at_sequence_0_is_intact(tmp_path: Path) -> None:
    empty = tmp_path / file_name(1, T0)
    empty.write_bytes(b"")
    state = AuditState(0, GENESIS, empty.name, empty.name, 1, GENESIS)
    assert verify([empty], state).ok


def test_files_before_the_base_are_listed_as_not_verified(tmp_path: Path) -> None:
    files, state = build_log(tmp_path, 12, per_file=4)
    second_prev = json.loads(lines_of(files[1])[0])["pullgate.chain.prev"]
    moved = AuditState(state.sequence, state.hash, state.file, files[1].name, 5, second_prev)
    result = verify(files, moved)
    assert result.ok and result.before_base == (files[0].name,)
    assert verify(files, state).before_base == ()


class _GoneAfterFirstRead:
    """A file retention deletes right after verify's first pass over it."""

    def __init__(self, path: Path) -> None:
        self.path, self.reads = path, 0

    @property
    def name(self) -> str:
        return self.path.name

    @contextlib.contextmanager
    def lines(self) -> Iterator[Iterable[bytes]]:
        self.reads += 1
        if self.reads > 1:
            raise FileNotFoundError(2, "No such file or directory", str(self.path))
        with self.path.open("rb") as f:
            yield f


def test_a_file_deleted_while_its_break_is_explained_is_a_bad_line_not_an_error(
    tmp_path: Path,
) -> None:
    """Under a rotating writer the old verify could end in FileNotFoundError ("no audit
    log", exit 2) when retention deleted the file it re-read to explain a torn line."""
    files, state = build_log(tmp_path, 4)
    files[0].write_bytes(files[0].read_bytes()[:-20])
    result = verify_chain([_GoneAfterFirstRead(files[0])], state)
    assert result.first_bad is not None and result.first_bad.line == 4
    assert result.first_bad.reason.startswith("torn: the file could not be read again")
