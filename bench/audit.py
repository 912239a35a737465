"""Benchmark: the audit log. Budgets: >= 1,000 audited decisions/s with fsync; ``verify``
of 1,000,000 records in < 10 s.

Run: ``python -m bench.audit [--quick] [--json] [--dir DIR]``.

- audited decisions: ``decide`` against a 1,000-rule policy, the ``DecisionEvent`` the shim
  emits (with a full client process chain), and ``AuditLog.append`` (write + fdatasync),
  one after another: the figure is what one serial client sees, not a batched best case.
  The log lives under ``--dir`` (default: a temporary directory in /var/tmp, which is disk,
  not tmpfs: on tmpfs an fsync is free and the figure would flatter).
- verify: a log of realistic decision records (about 1.3 KB each, 64 MiB files, as the
  writer rotates by default) is generated directly from a record template and chained
  with the real hash, then ``verify`` reads it back with its ``audit.state``. The files
  are read once before timing so the figure is hashing, not the first disk read.
``--quick`` shrinks both (1,000 decisions; 100,000 records, budget scaled to 1 s).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.core.audit import (
    GENESIS,
    HASH_HEAD,
    STATE_NAME,
    AuditState,
    canonical_json,
    encode_state_slot,
    file_name,
    format_timestamp,
    order_files,
    record_for,
)
from agent.core.decision import decide
from agent.core.events import DecisionEvent
from agent.core.peer import PeerInfo, ProcessSummary
from agent.core.policy.document import parse_policy
from agent.daemon.audit_log import AuditLog
from agent.daemon.audit_verify import read_state, verify
from bench.decision import make_policy_document, make_queries

BUDGET_DECISIONS_PER_S = 1000.0
BUDGET_VERIFY_S_PER_MILLION = 10.0
ROTATE_BYTES = 64 * 1024 * 1024

PEER = PeerInfo(
    pid=48213,
    uid=1000,
    gid=1000,
    user="alice",
    name="docker",
    executable="/usr/bin/docker",
    command_line=("docker", "compose", "-f", "/home/alice/src/shop/compose.yaml", "up", "-d"),
    parents=(
        ProcessSummary(48190, "bash", "/usr/bin/bash"),
        ProcessSummary(47001, "code", "/usr/share/code/code"),
        ProcessSummary(2100, "systemd", "/usr/lib/systemd/systemd"),
        ProcessSummary(1, "systemd", "/usr/lib/systemd/systemd"),
    ),
)


def _event(d: Any, text: str) -> DecisionEvent:
    return DecisionEvent(
        action="image-pull",
        decision=str(d.verdict),
        image=d.canonical,
        input=text,
        category=str(d.category),
        rule=d.rule,
        reason=d.reason,
        policy=d.policy,
        policy_serial=d.policy_serial,
        endpoint="POST /images/create",
        message=None if d.allowed else f"pullgate: pulling {d.canonical} is not allowed",
        peer=PEER,
    )


def bench_decisions(directory: Path, n: int) -> dict[str, Any]:
    """Serial audited decisions: decide + event + append with fsync."""
    rng = random.Random(7)
    policy = parse_policy(make_policy_document(1000, rng))
    queries = make_queries(n, rng)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    log = AuditLog(directory, native_log=False).open()
    timings = []
    clock = time.perf_counter
    try:
        for ref in queries[:50]:  # warm up
            log.append(_event(decide(policy, ref, now=now), str(ref)))
        start = clock()
        for ref in queries:
            t = clock()
            ok = log.append(_event(decide(policy, ref, now=now), str(ref)))
            timings.append(clock() - t)
            if not ok:
                raise RuntimeError(f"audit append failed: {log.failing}")
        elapsed = clock() - start
    finally:
        log.close()
    timings.sort()
    size = sum(p.stat().st_size for p in order_files(directory.iterdir()))
    return {
        "decisions": n,
        "per_s": round(n / elapsed),
        "p50_ms": round(timings[len(timings) // 2] * 1000, 3),
        "p99_ms": round(timings[int(len(timings) * 0.99)] * 1000, 3),
        "mean_ms": round(statistics.fmean(timings) * 1000, 3),
        "record_bytes": round(size / (n + 51)),
        "filesystem": _filesystem(directory),
    }


def _filesystem(path: Path) -> str:
    done = subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def generate_log(directory: Path, n: int) -> None:
    """``n`` chained records from a template, without fsync: volume for ``verify``."""
    rng = random.Random(3)
    policy = parse_policy(make_policy_document(1000, rng))
    ref = make_queries(1, rng)[0]
    event = _event(decide(policy, ref, now=datetime(2026, 6, 1, tzinfo=UTC)), str(ref))
    record = record_for(event, sequence=123456789, host="laptop-0042", prev_hash="f" * 64)
    record["@timestamp"] = "@TS@"
    body = canonical_json(record).replace(b"%", b"%%")
    template = (
        body.replace(b'"@TS@"', b'"%s"')
        .replace(b":123456789,", b":%d,")
        .replace(b'"' + b"f" * 64 + b'"', b'"%s"')
    )
    sha256 = hashlib.sha256
    prev_raw = bytes(32)
    prev_hex = GENESIS.encode()
    t0 = 1_780_000_000.0
    stamp = format_timestamp(t0).encode()
    files: list[Path] = []
    out = None
    size = ROTATE_BYTES
    for seq in range(1, n + 1):
        if size >= ROTATE_BYTES:
            if out is not None:
                out.close()
            files.append(directory / file_name(seq, t0 + seq / 1000))
            out = files[-1].open("wb", buffering=1 << 20)
            size = 0
        if seq % 1000 == 0:
            stamp = format_timestamp(t0 + seq / 1000).encode()
        rec = template % (stamp, seq, prev_hex)
        digest = sha256(prev_raw + rec)
        prev_hex = digest.hexdigest().encode()
        line = rec[:-1] + HASH_HEAD + prev_hex + b'"}\n'
        assert out is not None
        out.write(line)
        size += len(line)
        prev_raw = digest.digest()
    assert out is not None
    out.close()
    state = AuditState(n, prev_hex.decode(), files[-1].name, files[0].name, 1, GENESIS, True, 1)
    (directory / STATE_NAME).write_bytes(encode_state_slot(state) * 2)


def bench_verify(directory: Path, n: int) -> dict[str, Any]:
    directory.mkdir(mode=0o700)
    t = time.perf_counter()
    generate_log(directory, n)
    generate_s = time.perf_counter() - t
    files = order_files(directory.iterdir())
    for path in files:  # page cache: time the hashing, not the first read
        with path.open("rb") as f:
            while f.read(1 << 24):
                pass
    t = time.perf_counter()
    result = verify(files, read_state(directory))
    verify_s = time.perf_counter() - t
    if not result.ok or result.records != n:
        raise RuntimeError(f"generated log did not verify: {result}")
    size = sum(p.stat().st_size for p in files)
    return {
        "records": n,
        "files": len(files),
        "bytes": size,
        "generate_s": round(generate_s, 2),
        "verify_s": round(verify_s, 3),
        "records_per_s": round(n / verify_s),
        "mb_per_s": round(size / verify_s / 1e6),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--dir", help="parent directory for the logs (default: /var/tmp)")
    args = parser.parse_args()
    decisions = 1000 if args.quick else 5000
    records = 100_000 if args.quick else 1_000_000
    verify_budget = BUDGET_VERIFY_S_PER_MILLION * records / 1_000_000
    root = Path(tempfile.mkdtemp(prefix="pullgate-bench-audit-", dir=args.dir or "/var/tmp"))
    try:
        appended = bench_decisions(root / "decisions", decisions)
        verified = bench_verify(root / "verify", records)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ok_rate = appended["per_s"] >= BUDGET_DECISIONS_PER_S
    ok_verify = verified["verify_s"] < verify_budget
    result = {
        "audited_decisions": {**appended, "budget_per_s": BUDGET_DECISIONS_PER_S, "ok": ok_rate},
        "verify": {**verified, "budget_s": verify_budget, "ok": ok_verify},
    }
    if args.json:
        print(json.dumps(result))
    else:
        a, v = appended, verified
        print(
            f"audited decisions (decide + record + write + fdatasync, {a['filesystem']}): "
            f"{a['per_s']}/s, p50 {a['p50_ms']} ms, p99 {a['p99_ms']} ms, "
            f"~{a['record_bytes']} B/record (budget >= {BUDGET_DECISIONS_PER_S:.0f}/s) "
            f"{'ok' if ok_rate else 'MISSED'}"
        )
        print(
            f"verify: {v['records']:,} records, {v['files']} files, {v['bytes'] / 1e6:.0f} MB "
            f"in {v['verify_s']} s ({v['records_per_s']:,} records/s, {v['mb_per_s']} MB/s; "
            f"budget < {verify_budget:g} s) {'ok' if ok_verify else 'MISSED'}; "
            f"generated in {v['generate_s']} s"
        )
    return 0 if ok_rate and ok_verify else 1


if __name__ == "__main__":
    raise SystemExit(main())
