"""The audit writer on real files: fsync per record, rotation, retention, crash recovery
(a real ``kill -9``), a real full disk (tmpfs), and one writer per directory."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.keys import AuditFailure
from agent.core.audit import STATE_NAME, file_name, order_files
from agent.core.events import NoticeEvent, PolicyEvent
from agent.daemon.audit_log import AuditLog, AuditLogError, default_audit_dir
from agent.daemon.audit_verify import read_state, verify, verify_directory
from agent.daemon.bus import DecisionSink
from tests.agent_process import skip_or_fail
from tests.test_audit import decision_event

ROOT = Path(__file__).resolve().parent.parent


def records(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in order_files(directory.iterdir()):
        out += [json.loads(line) for line in path.read_bytes().splitlines()]
    return out


def verified(directory: Path) -> Any:
    return verify(order_files(directory.iterdir()), read_state(directory))


def open_log(directory: Path, **kwargs: Any) -> AuditLog:
    kwargs.setdefault("native_log", False)
    kwargs.setdefault("host", "laptop")
    return AuditLog(directory, **kwargs).open()


def closed_log(directory: Path, records: int) -> Path:
    """A log of ``records`` decisions in ``directory``, cleanly closed: its active file."""
    log = open_log(directory)
    for _ in range(records):
        log.append(decision_event())
    active = log.active_file
    log.close()
    assert active is not None
    return active


def test_each_append_is_one_line_in_private_files_and_verifies(tmp_path: Path) -> None:
    d = tmp_path / "logs"
    log = open_log(d)
    assert log.append(decision_event("deny"))
    assert log.append(PolicyEvent(action="policy-update", outcome="success", reason="serial 8"))
    assert log.healthy and log.failing is None and log.sequence == 2
    log.close()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for path in d.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    got = records(d)
    assert [r["event.sequence"] for r in got] == [1, 2]
    assert [r["event.action"] for r in got] == ["image-pull", "policy-update"]
    assert got[0]["user.name"] == "alice" and got[0]["host.name"] == "laptop"
    assert verified(d).ok


def test_it_subscribes_to_the_decision_sink(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    sink = DecisionSink()
    sink.subscribe(log)
    sink.emit(decision_event("allow"))
    log.close()
    assert records(tmp_path)[0]["pullgate.decision"] == "allow"


def test_reopening_continues_the_chain_and_a_clean_close_notes_nothing(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(decision_event())
    log.close()
    log = open_log(tmp_path)
    assert log.recovered is None
    log.append(decision_event())
    log.close()
    assert [r["event.sequence"] for r in records(tmp_path)] == [1, 2]
    assert verified(tmp_path).ok


def test_rotation_continues_the_chain_and_retention_moves_the_anchor(tmp_path: Path) -> None:
    log = open_log(tmp_path, rotate_bytes=3000, keep_files=2)
    for _ in range(40):
        assert log.append(decision_event())
    log.close()
    files = order_files(tmp_path.iterdir())
    assert len(files) == 3  # two rotated + the active one
    state = read_state(tmp_path)
    assert state is not None and state.base_file == files[0].name
    first = json.loads(files[0].read_bytes().splitlines()[0])
    assert state.base_sequence == first["event.sequence"] > 1
    assert state.base_prev == first["pullgate.chain.prev"]
    result = verified(tmp_path)
    assert result.ok and result.last_sequence == 40
    # Each file's first record links to the previous file's last one.
    for older, newer in itertools.pairwise(files):
        last = json.loads(older.read_bytes().splitlines()[-1])
        assert (
            json.loads(newer.read_bytes().splitlines()[0])["pullgate.chain.prev"]
            == last["event.hash"]
        )


def test_a_torn_last_line_is_set_aside_and_noted_in_the_log(tmp_path: Path) -> None:
    active = closed_log(tmp_path, 3)
    half = b'{"@timestamp":"2026-09-21T14:13:21.000Z","container.image.na'
    with active.open("ab") as f:
        f.write(half)
    log = open_log(tmp_path)
    assert log.recovered is not None and f"torn last line ({len(half)} bytes)" in log.recovered
    log.append(decision_event())
    log.close()
    torn = [p for p in tmp_path.iterdir() if p.name.endswith(".torn")]
    assert len(torn) == 1 and torn[0].read_bytes().endswith(b"container.image.na")
    assert stat.S_IMODE(torn[0].stat().st_mode) == 0o600
    got = records(tmp_path)
    assert got[3]["event.action"] == "audit-recovery"
    assert got[3]["pullgate.details"]["torn_bytes"] == len(half)
    assert [r["event.sequence"] for r in got] == [1, 2, 3, 4, 5]
    assert verified(tmp_path).ok


_BURST = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.daemon.audit_log import AuditLog
    from tests.test_audit import decision_event
    log = AuditLog(Path(sys.argv[1]), rotate_bytes=20_000, keep_files=50, native_log=False)
    log.open()
    print("ready", flush=True)
    while True:
        log.append(decision_event())
    """
)


def test_kill_9_during_a_burst_leaves_a_log_that_verifies_with_the_recovery_noted(
    tmp_path: Path,
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _BURST, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 20
        while (state := read_state(tmp_path)) is None or state.sequence < 300:
            assert time.monotonic() < deadline, "the writer did not get going"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    killed_at = read_state(tmp_path)
    assert killed_at is not None and not killed_at.clean
    assert len(order_files(tmp_path.iterdir())) > 1  # the burst spans a rotation
    log = open_log(tmp_path)
    assert log.recovered is not None and "without closing the log" in log.recovered
    log.close()
    result = verified(tmp_path)
    assert result.ok, result.first_bad
    last = records(tmp_path)[-1]
    assert last["event.action"] == "audit-recovery"
    assert last["pullgate.details"]["unclean_shutdown"] is True
    assert last["event.sequence"] >= killed_at.sequence + 1


def test_lines_removed_while_the_agent_was_down_stay_visible_after_reopen(
    tmp_path: Path,
) -> None:
    active = closed_log(tmp_path, 6)
    active.write_bytes(b"".join(active.read_bytes().splitlines(keepends=True)[:4]))
    log = open_log(tmp_path)
    assert log.recovered is not None and "2 record(s) are missing" in log.recovered
    log.close()
    bad = verified(tmp_path).first_bad
    # The writer does not paper over the loss: the chain resumes after the lost records.
    assert bad is not None and bad.line == 5
    assert bad.reason.startswith("deleted: expected sequence 5, found 7")


def test_a_second_writer_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    try:
        with pytest.raises(AuditLogError, match="another writer"):
            open_log(tmp_path)
    finally:
        log.close()


def test_append_before_open_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        AuditLog(tmp_path, native_log=False).append(decision_event())


def test_native_log_mirroring_never_breaks_appends(tmp_path: Path) -> None:
    log = open_log(tmp_path, native_log=True)
    assert log.append(decision_event("deny"))
    log.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a disk that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / f"filler-{uuid.uuid4().hex}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_fails_appends_then_recovers_with_the_gap_recorded(small_disk: Path) -> None:
    d = small_disk / "audit"
    log = open_log(d, failure_mode=AuditFailure.DENY)
    assert log.append(decision_event())
    filler = _fill(small_disk)
    results = [log.append(decision_event()) for _ in range(8)]
    assert results[-1] is False
    assert not log.healthy
    assert log.failing is not None and "No space left on device" in log.failing
    assert log.status()["lost_records"] >= 1 and log.status()["audit_failure"] == "deny"
    filler.unlink()
    assert log.append(decision_event("allow"))
    status = log.status()  # (not the properties: mypy keeps them narrowed from above)
    assert status["healthy"] is True and status["failing"] is None
    log.close()
    got = records(d)
    notices = [r for r in got if r["event.action"] == "audit-failure"]
    assert got[-2] == notices[-1]
    assert "No space left on device" in notices[-1]["message"]
    # A notice may slip into a page a failed write freed again; together they count
    # every record that was not written.
    assert sum(n["pullgate.details"]["lost_records"] for n in notices) == results.count(False)
    assert got[-1]["pullgate.decision"] == "allow"
    assert verified(d).ok  # no partial line was left behind by the failed writes


def test_default_audit_dir_per_os_and_mode() -> None:
    assert default_audit_dir(platform="linux", system=True) == Path("/var/log/pullgate")
    assert default_audit_dir(platform="darwin", system=True) == Path("/Library/Logs/Pullgate")
    windows = default_audit_dir(platform="win32", environ={"ProgramData": "D:\\PD"})
    assert windows == Path("D:\\PD") / "Pullgate" / "Logs"
    user = default_audit_dir(platform="linux", system=False)
    assert "pullgate" in str(user) and not str(user).startswith("/var/log")


def test_a_notice_event_is_written_like_any_other(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(NoticeEvent(action="agent-start", outcome="success", reason="agent started"))
    log.close()
    assert records(tmp_path)[0]["event.action"] == "agent-start"
    assert (tmp_path / STATE_NAME).stat().st_size == 1024
    assert os.access(tmp_path / STATE_NAME, os.R_OK)


# --------------------------------------------------------------------------- hardening


def test_deleting_audit_state_does_not_let_a_second_writer_in(tmp_path: Path) -> None:
    """The lock is on the directory: a deleted (or replaced) audit.state frees nothing."""
    log = open_log(tmp_path)
    try:
        log.append(decision_event())
        (tmp_path / STATE_NAME).unlink()
        with pytest.raises(AuditLogError, match="another writer"):
            open_log(tmp_path)
        (tmp_path / STATE_NAME).write_bytes(b"")
        with pytest.raises(AuditLogError, match="another writer"):
            open_log(tmp_path)
    finally:
        log.close()


def test_a_deleted_active_file_is_noticed_on_the_next_append_and_stays_visible(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path)
    for _ in range(3):
        log.append(decision_event())
    active = log.active_file
    assert active is not None
    active.unlink()
    assert not log.status()["healthy"] and "deleted or replaced" in log.status()["integrity"]
    assert log.append(decision_event("allow"))
    assert log.active_file != active and log.active_file is not None
    status = log.status()
    assert status["writable"] and not status["healthy"]
    assert "sequence 1-3" in status["integrity"]
    log.close()
    got = records(tmp_path)
    assert [r["event.action"] for r in got] == ["audit-recovery", "image-pull"]
    assert got[0]["event.sequence"] == 4 and got[0]["pullgate.details"]["replaced_file"]
    result = verified(tmp_path)
    assert not result.ok  # the lost records stay visible


def test_a_replaced_active_file_is_set_aside_and_never_written_to(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for _ in range(3):
        log.append(decision_event())
    active = log.active_file
    assert active is not None
    forged = active.with_name("forged")
    forged.write_bytes(b"")
    os.replace(forged, active)
    log.append(decision_event())
    log.close()
    aside = [p for p in tmp_path.iterdir() if p.name.endswith(".replaced")]
    assert len(aside) == 1 and aside[0].name.startswith(active.name)
    assert aside[0].read_bytes() == b""  # nothing was appended to someone else's file
    note = records(tmp_path)[0]
    assert note["event.action"] == "audit-recovery"
    assert "was replaced (set aside into" in note["message"]


def test_a_truncated_active_file_under_the_writer_is_noticed(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    for _ in range(3):
        log.append(decision_event())
    active = log.active_file
    assert active is not None
    with active.open("r+b") as f:
        f.truncate(10)
    log.append(decision_event())
    assert not log.healthy and "changed by someone else" in (log.integrity_problem() or "")
    log.close()
    assert not verified(tmp_path).ok


def test_a_deleted_state_is_rewritten_from_the_writers_anchor(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.append(decision_event())
    (tmp_path / STATE_NAME).unlink()
    assert log.append(decision_event())
    log.close()
    got = records(tmp_path)
    assert got[1]["event.action"] == "audit-recovery"
    assert got[1]["pullgate.details"] == {"state_rewritten": True}
    assert verified(tmp_path).ok  # nothing was lost: the writer knew the anchor


def test_a_world_writable_directory_of_the_agent_is_repaired_and_noted(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    d.mkdir()
    os.chmod(d, 0o1777)
    log = open_log(d)
    log.close()
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    note = records(d)[0]
    assert note["event.action"] == "audit-recovery"
    assert note["pullgate.details"]["directory_mode"] == "1777"
    assert verified(d).ok  # a repaired mode is a note, not a gap


def test_another_users_directory_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    d = tmp_path / "audit"
    d.mkdir()
    os.chown(d, 65534, 65534)
    with pytest.raises(AuditLogError, match="belongs to uid 65534, not to the agent"):
        open_log(d)


def test_planted_look_alike_files_are_ignored_not_followed(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    log = open_log(d)
    log.append(decision_event())
    log.close()
    target = tmp_path / "victim"
    target.write_bytes(b"keep\n")
    planted = d / "audit-20991231T000000Z-999999999999.jsonl"
    planted.symlink_to(target)
    fifo = d / "audit-20991231T000000Z-999999999998.jsonl"
    os.mkfifo(fifo)
    log = open_log(d)  # a FIFO would block, a symlink would be written through
    assert log.append(decision_event())
    assert sorted(log.status()["ignored_files"]) == sorted([planted.name, fifo.name])
    log.close()
    assert target.read_bytes() == b"keep\n"
    assert any("not the agent's own" in r["message"] for r in records_of_ours(d))


def records_of_ours(directory: Path) -> list[dict[str, Any]]:
    out = []
    for path in order_files(directory.iterdir()):
        if path.is_file() and not path.is_symlink():
            out += [json.loads(line) for line in path.read_bytes().splitlines()]
    return out


def test_a_planted_state_symlink_is_moved_aside_and_the_gap_noted(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    log = open_log(d)
    log.append(decision_event())
    log.close()
    (d / STATE_NAME).unlink()
    (d / STATE_NAME).symlink_to(tmp_path / "elsewhere")
    log = open_log(d)
    log.close()
    assert not (tmp_path / "elsewhere").exists()
    result = verified(d)
    assert result.first_bad is None and [n.action for n in result.gaps] == ["audit-recovery"]


def test_the_writer_thread_groups_commits_and_keeps_order(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.start_writer()
    for i in range(200):
        log(decision_event("deny" if i % 2 else "allow"))
    log.close()  # drains the queue first
    got = records(tmp_path)
    assert [r["event.sequence"] for r in got] == list(range(1, 201))
    assert [r["pullgate.decision"] for r in got[:2]] == ["allow", "deny"]
    assert verified(tmp_path).ok


def test_flushed_completes_on_the_loop_once_the_record_is_durable(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    log.start_writer()

    async def main() -> list[bool]:
        out = []
        for _ in range(20):
            log(decision_event())
            done = log.flushed()
            out.append(done if isinstance(done, bool) else await done)
            assert read_state(tmp_path) is not None
            assert len(records(tmp_path)) == len(out)  # on disk before the answer
        return out

    try:
        assert asyncio.run(main()) == [True] * 20
    finally:
        log.close()


_ROTATING = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.daemon.audit_log import AuditLog
    from tests.test_audit import decision_event
    log = AuditLog(Path(sys.argv[1]), rotate_bytes=8_000, keep_files=3, native_log=False,
                   fsync=False)
    log.open()
    print("ready", flush=True)
    while True:
        log.append(decision_event())
    """
)


def test_verify_is_consistent_against_a_writer_that_rotates_under_load(tmp_path: Path) -> None:
    """Reading the state and then listing once gave a false alarm in about 5% of these
    runs (a rotation with retention in between); the snapshot-and-retry gives none."""
    child = subprocess.Popen(
        [sys.executable, "-c", _ROTATING, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        rotations_seen: set[str] = set()
        runs = 0
        deadline = time.monotonic() + 60
        while (runs < 300 or len(rotations_seen) <= 20) and time.monotonic() < deadline:
            runs += 1
            checked = verify_directory(tmp_path)
            if not checked.stable:
                continue  # "try again" (exit 3): no verdict, never a false alarm
            assert checked.result.first_bad is None, checked.result.first_bad
            assert checked.result.ok and checked.state is not None
            rotations_seen.add(checked.files[0].name)
        assert len(rotations_seen) > 20, "the writer did not rotate during the test"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_a_slow_fdatasync_never_stalls_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sink hands the event over and returns; the loop keeps running while the
    writer thread syncs; the request's future completes once the record is durable."""
    log = open_log(tmp_path)
    real = os.fdatasync

    def slow(fd: int) -> None:
        time.sleep(0.3)
        real(fd)

    monkeypatch.setattr("agent.daemon.audit_log.os.fdatasync", slow)
    log.start_writer()

    async def main() -> tuple[float, float, bool]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        log(decision_event())  # what DecisionSink.emit does on the loop
        handed_over = loop.time() - started
        done = log.flushed()
        assert not isinstance(done, bool)
        await asyncio.sleep(0.01)
        ticked = loop.time() - started  # the loop ran while the disk was busy
        assert not done.done()
        return handed_over, ticked, await done

    try:
        handed_over, ticked, written = asyncio.run(main())
    finally:
        log.close()
    assert written and handed_over < 0.05 and ticked < 0.2
    assert records(tmp_path)[-1]["event.action"] == "image-pull"


def test_a_directory_moved_under_the_writer_is_taken_over_and_locked(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    log = open_log(d)
    try:
        log.append(decision_event())
        d.rename(tmp_path / "moved")
        d.mkdir(mode=0o700)
        assert log.append(decision_event())
        with pytest.raises(AuditLogError, match="another writer"):
            open_log(d)  # the lock followed the path: no second agent in the new one
        assert not log.healthy
    finally:
        log.close()
    got = records(d)
    assert got[0]["event.action"] == "audit-recovery"
    assert got[0]["pullgate.details"]["directory_replaced"] is True
    assert not verified(d).ok  # the new directory's chain starts with a gap


def test_a_rechained_tail_added_while_the_agent_was_down_is_not_blessed_on_restart(
    tmp_path: Path,
) -> None:
    """Rewrite the last records (re-chained) and add one past the clean state, then start
    the agent: it must not take the forged end as its new anchor without a gap record."""
    from tests.test_audit import _rechain, lines_of

    active = closed_log(tmp_path, 5)
    active.write_bytes(b"".join(_rechain(lines_of(active), 3, extra=1)))
    log = open_log(tmp_path)
    assert log.recovered is not None and "is not the one audit.state recorded" in log.recovered
    assert "added after the agent closed the log cleanly" in log.recovered
    log.append(decision_event())
    log.close()
    result = verified(tmp_path)
    assert result.first_bad is None and not result.ok
    assert result.gaps and result.gaps[0].sequence == 7


# -- files another user planted, a symlinked directory, recovery notes that must not be lost


NOBODY = 65534


def plant(path: Path, data: bytes = b"") -> Path:
    """A file another user made: owned by ``nobody``, mode 0666 (tests run as root)."""
    path.write_bytes(data)
    os.chmod(path, 0o666)
    try:
        os.chown(path, NOBODY, NOBODY)
    except PermissionError:
        pytest.skip("needs root to chown a file to another user")
    return path


def test_files_planted_under_the_next_names_in_a_shared_directory_are_never_written(
    tmp_path: Path,
) -> None:
    """A 1777 directory (a tmpfs mount point) with no log yet: another user creates empty
    files under the names the agent is about to use; none of them may become the log."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    now = 1_800_000_000.0
    planted = [plant(d / file_name(1, now + k)) for k in range(3)]
    log = open_log(d, clock=lambda: now)
    assert log.append(decision_event())
    active = log.active_file
    assert active is not None and active not in planted
    assert os.lstat(active).st_uid == os.geteuid()
    assert stat.S_IMODE(os.lstat(active).st_mode) == 0o600
    assert {p.name for p in planted} <= set(log.status()["ignored_files"])
    log.close()
    for p in planted:
        assert p.read_bytes() == b"" and p.stat().st_uid == NOBODY
    got = records_of_ours(d)
    assert [r["event.action"] for r in got] == ["audit-recovery", "image-pull"]
    assert verify_directory(d).result.ok  # ignored files are listed, not a gap


def test_a_planted_torn_file_name_is_not_truncated_or_written(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    d = tmp_path / "audit"
    log = open_log(d, clock=lambda: now)
    log.append(decision_event())
    active = log.active_file
    log.close()
    assert active is not None
    with active.open("ab") as f:
        f.write(b'{"half a line')
    taken = plant(
        active.with_name(f"{active.name}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}.torn"),
        b"theirs",
    )
    log = open_log(d, clock=lambda: now)
    log.close()
    assert taken.read_bytes() == b"theirs"
    torn = [p for p in d.iterdir() if p.name.endswith(".torn") and p != taken]
    assert len(torn) == 1 and torn[0].read_bytes() == b'{"half a line'
    assert torn[0].stat().st_uid == os.geteuid()


def test_a_planted_state_file_of_another_user_is_moved_aside_not_used(tmp_path: Path) -> None:
    d = tmp_path / "audit"
    d.mkdir(mode=0o700)
    plant(d / STATE_NAME, b"\0" * 1024)
    log = open_log(d)
    log.append(decision_event())
    log.close()
    state = d / STATE_NAME
    assert state.stat().st_uid == os.geteuid() and stat.S_IMODE(state.stat().st_mode) == 0o600
    assert [p for p in d.iterdir() if p.name.endswith(".foreign")]


def test_a_rotation_name_that_is_taken_is_skipped_and_noted(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    d = tmp_path / "audit"
    log = open_log(d, clock=lambda: now, rotate_bytes=1, fsync=False)
    try:
        taken = plant(d / file_name(2, now))  # (the directory is 0700 by now: root can)
        assert log.append(decision_event())  # rotates after it: to a name not taken
        assert log.active_file is not None and log.active_file.name != taken.name
        assert log.active_file.name.endswith("-000000000002.jsonl")
        assert log.append(decision_event())
    finally:
        log.close()
    assert taken.read_bytes() == b""
    notes = [r for r in records_of_ours(d) if r["event.action"] == "audit-recovery"]
    assert notes and taken.name in notes[-1]["pullgate.details"]["ignored_files"]
    assert verify_directory(d).result.ok


def test_a_symlinked_audit_dir_is_the_same_directory_not_a_replaced_one(tmp_path: Path) -> None:
    """/var/log/pullgate linked to another disk: every record is written, no takeover."""
    real = tmp_path / "disk2" / "pullgate"
    real.mkdir(parents=True, mode=0o700)
    link = tmp_path / "pullgate"
    link.symlink_to(real)
    log = open_log(link)
    try:
        for _ in range(3):
            assert log.append(decision_event()), log.failing
        assert log.healthy and log.sequence == 3
    finally:
        log.close()
    got = records(real)
    assert [r["event.action"] for r in got] == ["image-pull"] * 3
    assert verify_directory(link).result.ok
    log = open_log(link)  # and it is the same log after a restart
    log.close()
    assert log.recovered is None


def test_a_symlinked_audit_dir_another_user_owns_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "pullgate"
    link.symlink_to(real)
    try:
        os.lchown(link, NOBODY, NOBODY)
    except PermissionError:
        pytest.skip("needs root to chown a link to another user")
    with pytest.raises(AuditLogError, match="symlink owned by uid"):
        open_log(link)


def test_a_symlinked_audit_dir_re_pointed_is_taken_over_like_a_replaced_one(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(mode=0o700)
    second.mkdir(mode=0o700)
    link = tmp_path / "pullgate"
    link.symlink_to(first)
    log = open_log(link)
    try:
        assert log.append(decision_event())
        link.unlink()
        link.symlink_to(second)
        assert log.append(decision_event())
    finally:
        log.close()
    got = records(second)
    assert got[0]["pullgate.details"]["directory_replaced"] is True


@contextlib.contextmanager
def disk_full_once(monkeypatch: pytest.MonkeyPatch, times: int = 1) -> Iterator[list[int]]:
    """The next ``times`` ``os.write`` calls fail with ENOSPC; the list counts them."""
    real = os.write
    failed: list[int] = []

    def write(fd: int, data: Any) -> int:
        if len(failed) < times:
            failed.append(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    with monkeypatch.context() as m:
        m.setattr(os, "write", write)
        yield failed


def log_with_lost_state(directory: Path) -> None:
    log = open_log(directory)
    for _ in range(3):
        log.append(decision_event())
    log.close()
    (directory / STATE_NAME).unlink()


def test_a_recovery_note_that_cannot_be_written_is_written_before_the_next_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_with_lost_state(tmp_path)
    with disk_full_once(monkeypatch) as failed:
        log = open_log(tmp_path)
    assert failed and log.failing is not None
    assert log.append(decision_event())
    log.close()
    got = records(tmp_path)
    actions = [r["event.action"] for r in got[3:]]
    assert actions == ["audit-failure", "audit-recovery", "image-pull"]
    assert got[4]["pullgate.details"]["state_recreated"] is True
    result = verified(tmp_path)
    assert result.first_bad is None and not result.ok
    assert [n.action for n in result.gaps] == ["audit-recovery"]


def test_a_gap_whose_note_was_never_written_is_not_blessed_by_a_fresh_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_with_lost_state(tmp_path)
    with disk_full_once(monkeypatch, times=1000):
        log = open_log(tmp_path)
        log.close()  # stopped before any record got through (the disk stayed full)
    log = open_log(tmp_path)
    log.close()
    assert log.recovered is not None and "audit.state was missing" in log.recovered
    assert not verified(tmp_path).ok


def test_a_note_about_a_deleted_active_file_survives_a_failed_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(tmp_path)
    for _ in range(2):
        log.append(decision_event())
    active = log.active_file
    assert active is not None
    active.unlink()
    with disk_full_once(monkeypatch):
        assert not log.append(decision_event())
    assert log.append(decision_event())
    log.close()
    got = records(tmp_path)
    assert [r["event.action"] for r in got] == [
        "audit-failure",
        "audit-recovery",
        "image-pull",
    ]
    assert got[1]["pullgate.details"]["replaced_file"] == active.name


def test_a_hard_link_planted_under_an_audit_name_is_never_written_or_cut(
    tmp_path: Path,
) -> None:
    """Planted before the directory was repaired, a hard link to a file of the agent's
    user (owner and mode look right) must not become the active file."""
    d = tmp_path / "audit"
    log = open_log(d)
    log.append(decision_event())
    log.close()
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep\nno newline at the end")
    link = d / "audit-20991231T000000Z-999999999999.jsonl"
    os.link(victim, link)
    log = open_log(d)
    assert log.append(decision_event())
    assert log.active_file is not None and log.active_file != link
    log.close()
    assert victim.read_bytes() == b"keep\nno newline at the end"
    assert not verify_directory(d).result.ok  # the planted file is in the chain's way


def test_an_audit_dir_hard_linked_by_a_backup_is_continued_without_a_gap(
    tmp_path: Path,
) -> None:
    """cp -al of the log (a backup) leaves every file with two links: the agent does not
    write into the shared newest file but goes on in a new one, with nothing lost."""
    d = tmp_path / "audit"
    log = open_log(d)
    for _ in range(2):
        log.append(decision_event())
    log.close()
    backup = tmp_path / "backup"
    backup.mkdir()
    for p in d.iterdir():
        os.link(p, backup / p.name)
    log = open_log(d)
    assert log.append(decision_event())
    log.close()
    assert log.recovered is not None and "other hard links" in log.recovered
    assert len(records(backup)) == 2  # the backup's copy was not appended to
    result = verified(d)
    assert result.ok, result


def test_a_notice_still_owed_at_close_is_written_before_the_clean_state(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    d = tmp_path / "audit"
    log = open_log(d, clock=lambda: now, rotate_bytes=1, fsync=False)
    taken = plant(d / file_name(2, now))
    assert log.append(decision_event())  # the rotation skips the taken name: a note owed
    log.close()
    got = records_of_ours(d)
    assert [r["event.action"] for r in got] == ["image-pull", "audit-recovery"]
    assert taken.name in got[-1]["pullgate.details"]["ignored_files"]
    assert verify_directory(d).result.ok


def test_a_flood_of_planted_names_does_not_stop_the_agent(tmp_path: Path) -> None:
    from agent.daemon import audit_log

    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    now = 1_800_000_000.0
    planted = [plant(d / file_name(1, now + k)) for k in range(audit_log._NAME_TRIES)]
    log = open_log(d, clock=lambda: now)
    assert log.append(decision_event())
    active = log.active_file
    log.close()
    assert active == planted[-1] and active.stat().st_uid == os.geteuid()
    aside = [p for p in d.iterdir() if p.name.startswith(planted[-1].name + ".")]
    assert len(aside) == 1 and aside[0].name.endswith(".foreign")
    assert aside[0].read_bytes() == b"" and aside[0].stat().st_uid == NOBODY
    for p in planted[:-1]:
        assert p.read_bytes() == b"" and p.stat().st_uid == NOBODY
    assert verify_directory(d).result.ok


def test_a_rewritten_tail_whose_note_was_never_written_is_still_found_on_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """state_hash_mismatch and appended_after_close: the same rule as state_recreated."""
    from tests.test_audit import _rechain, lines_of

    active = closed_log(tmp_path, 5)
    active.write_bytes(b"".join(_rechain(lines_of(active), 3, extra=1)))
    with disk_full_once(monkeypatch, times=1000):
        log = open_log(tmp_path)
        log.close()
    log = open_log(tmp_path)
    log.close()
    assert log.recovered is not None
    assert "is not the one audit.state recorded" in log.recovered
    assert "added after the agent closed the log cleanly" in log.recovered
    assert not verified(tmp_path).ok
