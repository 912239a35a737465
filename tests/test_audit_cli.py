"""``pullgate audit tail|verify|export`` as a user runs it: a real process on a real log."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.cli.main import build_parser
from agent.daemon.audit_log import AuditLog
from tests.test_audit import decision_event

ROOT = Path(__file__).resolve().parent.parent

# Until `audit` is registered in agent/cli/main.py, run the same subcommand through a
# minimal parser (test_audit_is_a_pullgate_command says whether it is wired).
_HARNESS = (
    "import argparse, sys\n"
    "from agent.cli import audit_cmd\n"
    "p = argparse.ArgumentParser(prog='pullgate')\n"
    "c = p.add_subparsers(dest='command')\n"
    "audit_cmd.register(c)\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.run(a))\n"
)


@functools.cache
def _wired() -> bool:
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["audit", "verify", "--dir", "/nonexistent"])
    except SystemExit:
        return False
    return True


def command(*args: str) -> list[str]:
    if _wired():
        return [sys.executable, "-m", "agent", *args]
    return [sys.executable, "-c", _HARNESS, *args]


def pullgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def write_log(directory: Path, times: list[float], rotate_bytes: int = 1 << 26) -> None:
    log = AuditLog(directory, native_log=False, host="laptop", rotate_bytes=rotate_bytes).open()
    for i, t in enumerate(times):
        log.append(decision_event("deny" if i % 2 else "allow", t=t))
    log.close()


def test_audit_is_a_pullgate_command() -> None:
    assert _wired(), "register agent.cli.audit_cmd in agent/cli/main.py build_parser()"


def test_tail_prints_one_line_per_record_with_decision_image_user_and_process(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, [1_790_000_000.0 + i for i in range(15)])
    done = pullgate("audit", "tail", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 10
    assert lines[-1].startswith("2026-09-21T14:13:34.000Z allow ")
    assert lines[-2].startswith("2026-09-21T14:13:33.000Z deny ")
    assert "docker.io/someuser/tool:latest user=alice process=docker<-bash<-code" in lines[-1]


def test_tail_json_prints_the_last_n_records_as_stored(tmp_path: Path) -> None:
    write_log(tmp_path, [1_790_000_000.0 + i for i in range(40)], rotate_bytes=5000)
    done = pullgate("audit", "tail", "--json", "-n", "25", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["event.sequence"] for r in records] == list(range(16, 41))  # across files
    assert all(len(r["event.hash"]) == 64 for r in records)


def test_tail_follow_prints_records_appended_later_and_across_a_rotation(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, [1_790_000_000.0])
    follower = subprocess.Popen(
        command("audit", "tail", "-f", "--json", "-n", "1", "--dir", str(tmp_path)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert json.loads(follower.stdout.readline())["event.sequence"] == 1
        log = AuditLog(tmp_path, native_log=False, rotate_bytes=3000).open()
        for _ in range(6):
            log.append(decision_event())
            time.sleep(0.05)
        log.close()
        seen = [json.loads(follower.stdout.readline())["event.sequence"] for _ in range(6)]
        assert seen == [2, 3, 4, 5, 6, 7]
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_verify_exits_0_on_an_intact_log_spanning_a_rotation(tmp_path: Path) -> None:
    write_log(tmp_path, [1_790_000_000.0 + i for i in range(30)], rotate_bytes=5000)
    done = pullgate("audit", "verify", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "intact: 30 record(s) (sequence 1-30)" in done.stdout


def test_verify_exits_1_naming_file_line_and_why(tmp_path: Path) -> None:
    write_log(tmp_path, [1_790_000_000.0 + i for i in range(30)], rotate_bytes=5000)
    second = sorted(tmp_path.glob("audit-*.jsonl"))[1]
    lines = second.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"user.name":"alice"', b'"user.name":"eve00"')
    second.write_bytes(b"".join(lines))
    done = pullgate("audit", "verify", "--dir", str(tmp_path))
    assert done.returncode == 1
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"{second}:2: edited")


def test_verify_fails_when_the_state_anchor_is_gone(tmp_path: Path) -> None:
    write_log(tmp_path, [1_790_000_000.0])
    (tmp_path / "audit.state").unlink()
    done = pullgate("audit", "verify", "--dir", str(tmp_path))
    assert done.returncode == 1
    assert "cannot be proven complete" in done.stdout


def test_verify_without_a_log_is_a_usage_error(tmp_path: Path) -> None:
    done = pullgate("audit", "verify", "--dir", str(tmp_path / "none"))
    assert done.returncode == 2
    assert done.stderr.startswith("pullgate audit verify: no audit log in")


def test_export_prints_stored_lines_in_the_time_range(tmp_path: Path) -> None:
    base = datetime(2026, 5, 1, tzinfo=UTC).timestamp()
    write_log(tmp_path, [base + h * 3600 for h in range(10)], rotate_bytes=5000)
    done = pullgate(
        "audit",
        "export",
        "--since",
        "2026-05-01T02:00:00Z",
        "--until",
        "2026-05-01T05:00:00+00:00",
        "--dir",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["@timestamp"][11:16] for r in records] == ["02:00", "03:00", "04:00"]
    stored = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("audit-*.jsonl")))
    assert all(line.encode() in stored for line in done.stdout.splitlines())


def test_export_accepts_a_relative_since(tmp_path: Path) -> None:
    now = time.time()
    write_log(tmp_path, [now - 48 * 3600, now - 3600, now - 60])
    done = pullgate("audit", "export", "--since", "24h", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2


@pytest.mark.parametrize("bad", ["yesterday", "2026-05-01T00:00:00"])
def test_export_refuses_a_time_it_cannot_read(tmp_path: Path, bad: str) -> None:
    write_log(tmp_path, [1_790_000_000.0])
    done = pullgate("audit", "export", "--since", bad, "--dir", str(tmp_path))
    assert done.returncode == 2
    assert bad in done.stderr


def test_dir_defaults_to_the_managed_config(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write_log(logs, [1_790_000_000.0])
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"audit_dir": str(logs)}))
    done = pullgate("audit", "verify", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert str(logs) in done.stdout
    assert os.stat(logs).st_mode & 0o077 == 0


@pytest.mark.parametrize("lose", ["tail", "oldest"])
def test_a_recreated_state_never_blesses_a_gap(tmp_path: Path, lose: str) -> None:
    """Delete audit.state and the newest (or oldest) file, restart the writer: the
    recreated anchor covers what is left, but verify reports the writer's gap record."""
    write_log(tmp_path, [1_790_000_000.0 + i for i in range(30)], rotate_bytes=5000)
    files = sorted(tmp_path.glob("audit-*.jsonl"))
    (tmp_path / "audit.state").unlink()
    (files[-1] if lose == "tail" else files[0]).unlink()
    write_log(tmp_path, [1_790_000_100.0])  # the agent restarts and writes on
    done = pullgate("audit", "verify", "--dir", str(tmp_path))
    assert done.returncode == 1, done.stdout
    assert ": gap: audit-recovery" in done.stdout
    assert "audit.state was missing and has been recreated" in done.stdout
    assert "NOT intact" in done.stdout and "verify: intact" not in done.stdout


def test_export_and_verify_never_read_through_a_planted_symlink(tmp_path: Path) -> None:
    write_log(tmp_path / "log", [time.time() - 60])
    secret = tmp_path / "secret"
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    secret.write_text(f'{{"@timestamp":"{stamp}","secret":1}}\n')
    (tmp_path / "log" / "audit-20991231T000000Z-999999999999.jsonl").symlink_to(secret)
    done = pullgate("audit", "export", "--dir", str(tmp_path / "log"), "--since", "1h")
    assert done.returncode == 0 and "secret" not in done.stdout
    done = pullgate("audit", "verify", "--dir", str(tmp_path / "log"))
    assert done.returncode == 0, done.stdout
    assert "ignored: not written by the agent" in done.stdout


def test_export_and_tail_skip_a_file_retention_removed_after_the_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    from agent.cli import audit_cmd

    write_log(tmp_path, [time.time() - 60 + i for i in range(3)])
    listed = audit_cmd._files(tmp_path)
    gone = tmp_path / "audit-20000101T000000Z-000000000000.jsonl"  # listed, then deleted
    monkeypatch.setattr(audit_cmd, "_files", lambda directory: [gone, *listed])
    args = build_parser().parse_args(["audit", "export", "--dir", str(tmp_path), "--since", "1h"])
    assert args.run(args) == 0
    assert capsysbinary.readouterr().out.count(b"\n") == 3
    args = build_parser().parse_args(["audit", "tail", "--dir", str(tmp_path), "-n", "5"])
    assert args.run(args) == 0


# --------------------------------------------------------------------------- red team


def _verify_in_process(directory: Path) -> tuple[int, str]:
    out = io.StringIO()
    args = build_parser().parse_args(["audit", "verify", "--dir", str(directory)])
    with contextlib.redirect_stdout(out):
        code = args.run(args)
    return code, out.getvalue()


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket", "symlink"])
def test_a_state_that_is_not_a_regular_file_is_not_intact_never_a_hang(
    tmp_path: Path, kind: str
) -> None:
    import socket

    write_log(tmp_path, [1_790_000_000.0 + i for i in range(5)])
    state = tmp_path / "audit.state"
    keep = tmp_path.parent / f"{tmp_path.name}.state"
    state.rename(keep)
    if kind == "fifo":
        os.mkfifo(state)
    elif kind == "directory":
        state.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(state))
        sock.close()
    else:
        state.symlink_to(keep)
    done = subprocess.run(
        command("audit", "verify", "--dir", str(tmp_path)),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    word = {"fifo": "FIFO"}.get(kind, kind)
    assert f"audit.state:0: audit.state is a {word}, not the writer's file" in done.stdout
    assert "NOT intact" in done.stdout


def test_a_state_another_user_owns_is_not_the_writers_anchor(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give audit.state to another user")
    write_log(tmp_path, [1_790_000_000.0 + i for i in range(5)])
    os.chown(tmp_path / "audit.state", 65534, 65534)
    code, out = _verify_in_process(tmp_path)
    assert code == 1, out
    assert "audit.state belongs to uid 65534, not to the directory's owner" in out


def test_a_file_before_the_base_is_listed_unverified_and_tail_and_export_skip_it(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    write_log(tmp_path, [time.time() - 60 + i for i in range(3)])
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    planted = tmp_path / "audit-20000101T000000Z-000000000000.jsonl"
    planted.write_text(f'{{"@timestamp":"{stamp}","event.action":"planted"}}\n')
    code, out = _verify_in_process(tmp_path)
    assert code == 0, out
    assert f"{planted}:0: not verified (before the chain's base" in out
    for argv in (["export", "--since", "1h"], ["tail", "-n", "10", "--json"]):
        args = build_parser().parse_args(["audit", *argv, "--dir", str(tmp_path)])
        assert args.run(args) == 0
        printed = capsysbinary.readouterr().out
        assert b"planted" not in printed and printed.count(b"\n") == 3, argv


def _newest(directory: Path) -> Path:
    return sorted(directory.glob("audit-*.jsonl"))[-1]


def _unclean(directory: Path) -> None:
    """Leave the state as a running writer keeps it (not closed cleanly)."""
    from agent.core.audit import encode_state_slot
    from agent.daemon.audit_verify import read_state

    state = read_state(directory)
    assert state is not None
    open_state = dataclasses.replace(state, clean=False, generation=state.generation + 1)
    (directory / "audit.state").write_bytes(encode_state_slot(open_state) * 2)


def test_a_record_half_written_by_a_live_writer_is_re_read_not_reported(tmp_path: Path) -> None:
    """A torn last line that the writer completes a moment later: before the fix the
    snapshot held still (sizes and state unchanged while verify ran) and it was reported
    as NOT intact, about once in 6,000 verifies against a busy agent."""
    import threading

    from agent.daemon.audit_verify import verify_directory

    write_log(tmp_path, [1_790_000_000.0 + i for i in range(5)])
    _unclean(tmp_path)
    newest = _newest(tmp_path)
    lines = newest.read_bytes().splitlines(keepends=True)
    newest.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])  # the writer is mid-record

    def finish() -> None:
        time.sleep(0.03)
        with newest.open("ab") as f:
            f.write(lines[-1][40:])

    writer = threading.Thread(target=finish)
    writer.start()
    checked = verify_directory(tmp_path)
    writer.join()
    assert checked.stable and checked.result.ok, checked.result.first_bad


def test_a_torn_line_that_holds_still_is_still_reported(tmp_path: Path) -> None:
    from agent.daemon.audit_verify import verify_directory

    write_log(tmp_path, [1_790_000_000.0 + i for i in range(5)])
    _unclean(tmp_path)
    newest = _newest(tmp_path)
    newest.write_bytes(newest.read_bytes()[:-30])
    started = time.monotonic()
    checked = verify_directory(tmp_path)
    assert time.monotonic() - started < 2
    assert checked.stable and checked.result.first_bad is not None
    assert checked.result.first_bad.reason.startswith("truncated: the last line is incomplete")


def test_a_log_that_never_holds_still_is_try_again_not_not_intact(tmp_path: Path) -> None:
    import threading

    write_log(tmp_path, [1_790_000_000.0 + i for i in range(5)])
    _unclean(tmp_path)
    newest = _newest(tmp_path)
    stop = threading.Event()
    with newest.open("ab") as f:
        f.write(b'{"@timestamp":')  # a record begun

    def scribble() -> None:  # a writer that never finishes a line (bytes keep arriving)
        with newest.open("ab", buffering=0) as f:
            while not stop.wait(0.002):
                f.write(b"x")

    writer = threading.Thread(target=scribble)
    writer.start()
    try:
        code, out = _verify_in_process(tmp_path)
    finally:
        stop.set()
        writer.join()
    assert code == 3, out
    assert "could not get a stable snapshot of a log that is being written (try again)" in out
    assert "NOT intact" not in out


def test_verify_against_a_busy_rotating_writer_never_says_not_intact(tmp_path: Path) -> None:
    """Bounded stress (about 3 s): every answer is intact or "try again", never a false
    NOT intact."""
    import signal

    from agent.daemon.audit_verify import verify_directory
    from tests.test_audit_log import _ROTATING

    child = subprocess.Popen(
        [sys.executable, "-c", _ROTATING, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        runs = unstable = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            runs += 1
            checked = verify_directory(tmp_path)
            if not checked.stable:
                unstable += 1
                continue
            assert checked.result.first_bad is None, checked.result.first_bad
            assert checked.result.ok and checked.state is not None
        assert runs > 20 and unstable < runs / 10, (runs, unstable)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def test_a_writers_first_commit_before_its_state_update_is_re_read_not_reported(
    tmp_path: Path,
) -> None:
    """Sequence 0 over records is a forged anchor, unless it is the writer between its
    first records and its first state update (seen under load): re-read, then judged."""
    import threading

    from agent.core.audit import GENESIS, encode_state_slot
    from agent.daemon.audit_verify import read_state, verify_directory

    write_log(tmp_path, [1_790_000_000.0 + i for i in range(3)])
    state = read_state(tmp_path)
    assert state is not None
    first = dataclasses.replace(
        state, sequence=0, hash=GENESIS, clean=False, generation=state.generation + 1
    )
    then = dataclasses.replace(state, clean=False, generation=state.generation + 2)
    (tmp_path / "audit.state").write_bytes(encode_state_slot(first) * 2)

    def commit() -> None:
        time.sleep(0.03)
        (tmp_path / "audit.state").write_bytes(encode_state_slot(then) * 2)

    writer = threading.Thread(target=commit)
    writer.start()
    checked = verify_directory(tmp_path)
    writer.join()
    assert checked.stable and checked.result.ok, checked.result.first_bad

    (tmp_path / "audit.state").write_bytes(encode_state_slot(first) * 2)  # and it stays
    code, out = _verify_in_process(tmp_path)
    assert code == 1 and "audit.state records sequence 0, before the oldest kept" in out
