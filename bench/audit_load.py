"""Benchmark: the audit writer under load in a real agent. Budgets: keep-alive ``/_ping``
p50 while 500 audited decisions/s flow at most 2x idle; audited decisions/s with 50
event-stream subscribers at least 90% of none.

Run: ``python -m bench.audit_load [--quick] [--json] [--dir DIR]``.

No dockerd is needed: a small fake daemon (a separate process) answers every request at
once (``/_ping`` with ``OK``, anything else with ``{}``), so what is measured is the
agent. ``pullgate agent`` runs as a real process with a plain policy file, its audit log
under ``--dir`` (default /var/tmp: disk, so every commit pays a real fdatasync), and
``--no-watch``.

- ``/_ping`` p50: one keep-alive connection from this process, a pre-built request,
  responses read by Content-Length; idle first, then while a load process sends
  ``POST /images/create?fromImage=alpine&tag=3.19`` (a decision, an audit record each)
  paced at 500/s over 8 keep-alive connections.
- decisions/s: the load process sends pulls as fast as 16 connections allow, for a few
  seconds, first with no event-stream subscriber, then with 50 ``GET /v1/events``
  readers on the control socket (another process), which receive every decision.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BUDGET_PING_RATIO = 2.0
BUDGET_SUBSCRIBER_RATIO = 0.9
ROOT = Path(__file__).resolve().parent.parent

PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
PULL = (
    b"POST /images/create?fromImage=alpine&tag=3.19 HTTP/1.1\r\nHost: docker\r\n"
    b"Content-Length: 0\r\n\r\n"
)


# --------------------------------------------------------------------------- fake daemon


async def _serve_daemon(path: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b"OK" if head.startswith(b"GET /_ping") else b"{}"
                kind = b"text/plain" if body == b"OK" else b"application/json"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: "
                    + kind
                    + b"\r\nContent-Length: 2\r\n\r\n"
                    + body
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(handle, path)
    async with server:
        await server.serve_forever()


def fake_daemon(path: str) -> None:
    _run(_serve_daemon(path))


def _run(main: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(main)
    except ImportError:
        return asyncio.run(main)


# --------------------------------------------------------------------------- load


async def _one_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def _load(sock: str, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    """Pulls over ``connections`` keep-alive connections: paced at ``rate``/s, or as fast
    as they go when ``rate`` is 0."""
    conns = [await asyncio.open_unix_connection(sock) for _ in range(connections)]
    done = 0
    errors = 0
    latencies: list[float] = []
    start = time.perf_counter()
    end = start + seconds

    async def worker(i: int) -> None:
        nonlocal done, errors
        reader, writer = conns[i]
        n = 0
        while True:
            if rate:
                due = start + (n * connections + i) / rate
                n += 1
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            if time.perf_counter() >= end:
                return
            t = time.perf_counter()
            writer.write(PULL)
            status = await _one_response(reader)
            latencies.append(time.perf_counter() - t)
            if status == 200:
                done += 1
            else:
                errors += 1

    await asyncio.gather(*(worker(i) for i in range(connections)))
    elapsed = time.perf_counter() - start
    for _, writer in conns:
        writer.close()
    latencies.sort()
    return {
        "decisions": done,
        "errors": errors,
        "per_s": round(done / elapsed),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3) if latencies else None,
    }


def load(sock: str, rate: float, seconds: float, connections: int, out: Any) -> None:
    out.put(_run(_load(sock, rate, seconds, connections)))


def subscribers(control: str, n: int, ready: Any) -> None:
    """``n`` event streams read with plain non-blocking sockets and large reads: the
    readers' own CPU competes with the agent on a 2-core machine, so keep it small."""
    sel = selectors.DefaultSelector()
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(control)
        s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: pullgate\r\n\r\n")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    ready.set()
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if not sock.recv(1 << 20):
                sel.unregister(sock)


# --------------------------------------------------------------------------- measuring


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ping_p50(sock: str, seconds: float) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    timings = []
    clock = time.perf_counter
    end = clock() + seconds
    try:
        while clock() < end:
            t = clock()
            s.sendall(PING)
            data = b""
            while not data.endswith(b"\r\n\r\nOK"):
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("the agent closed the connection")
                data += chunk
            timings.append(clock() - t)
    finally:
        s.close()
    timings.sort()
    return {
        "requests": len(timings),
        "p50_ms": round(statistics.median(timings) * 1000, 4),
        "p90_ms": round(timings[int(len(timings) * 0.9)] * 1000, 4),
    }


def _policy() -> dict[str, Any]:
    now = time.time()
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "schema": "pullgate.policy/v1",
        "org": "acme",
        "serial": 1,
        "issued_at": time.strftime(stamp, time.gmtime(now - 86400)),
        "expires_at": time.strftime(stamp, time.gmtime(now + 30 * 86400)),
        "mode": "enforce",
        "hub": {"official": "allow", "community": "deny"},
    }


def _wait_for(path: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 15
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.02)


def run(root: Path, quick: bool) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    sock_dir = Path(tempfile.mkdtemp(prefix="pgal-", dir="/tmp"))  # short socket paths
    daemon_sock = sock_dir / "d.sock"
    listen = sock_dir / "a.sock"
    control = sock_dir / "c.sock"
    policy = root / "policy.json"
    policy.write_text(json.dumps(_policy()))
    daemon = ctx.Process(target=fake_daemon, args=(str(daemon_sock),), daemon=True)
    daemon.start()
    _wait_for(daemon_sock)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    argv = [
        sys.executable, "-m", "agent", "agent", "--policy", str(policy),
        "--listen", str(listen), "--upstream", f"unix://{daemon_sock}",
        "--control", str(control), "--audit-dir", str(root / "audit"),
        "--state-dir", str(root / "state"), "--no-watch",
    ]  # fmt: skip
    agent = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=(root / "agent.log").open("wb"),
    )  # fmt: skip
    seconds = 2.0 if quick else 5.0
    try:
        _wait_for(listen, agent)
        _wait_for(control, agent)
        time.sleep(0.5)  # the socket file exists a moment before it accepts
        ping_p50(str(listen), 1.0)  # warm up
        idle = ping_p50(str(listen), seconds)
        out = ctx.Queue()
        loader = ctx.Process(
            target=load, args=(str(listen), 500.0, seconds + 2.0, 8, out), daemon=True
        )
        loader.start()
        time.sleep(1.0)
        loaded = ping_p50(str(listen), seconds)
        paced = out.get(timeout=60)
        loader.join()
        # Informational: a burst (16 connections pulling as fast as they can).
        loader = ctx.Process(
            target=load, args=(str(listen), 0.0, seconds + 2.0, 16, out), daemon=True
        )
        loader.start()
        time.sleep(1.0)
        burst_ping = ping_p50(str(listen), seconds)
        burst = out.get(timeout=60)
        loader.join()
        rates = {}
        subs: Any = None
        for n in (0, 50):
            if n:
                ready = ctx.Event()
                subs = ctx.Process(target=subscribers, args=(str(control), n, ready), daemon=True)
                subs.start()
                if not ready.wait(30):
                    raise RuntimeError("the subscribers did not connect")
            loader = ctx.Process(
                target=load, args=(str(listen), 0.0, seconds, 16, out), daemon=True
            )
            cpu = cpu_seconds(agent.pid)
            loader.start()
            rates[n] = out.get(timeout=60)
            loader.join()
            used = cpu_seconds(agent.pid) - cpu
            rates[n]["agent_cpu_us_per_decision"] = round(
                used / max(1, rates[n]["decisions"]) * 1e6
            )
        if subs is not None:
            subs.kill()
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
        daemon.kill()
        shutil.rmtree(sock_dir, ignore_errors=True)
    verified = subprocess.run(
        [sys.executable, "-m", "agent", "audit", "verify", "--dir", str(root / "audit")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return {
        "ping_idle": idle,
        "ping_loaded": loaded,
        "ping_ratio": round(loaded["p50_ms"] / idle["p50_ms"], 2),
        "paced_load": paced,
        "ping_burst": burst_ping,
        "burst_load": burst,
        "throughput_0": rates[0],
        "throughput_50": rates[50],
        "subscriber_ratio": round(rates[50]["per_s"] / max(1, rates[0]["per_s"]), 3),
        "log_verifies": verified.returncode == 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--dir", help="parent directory for the log (default: /var/tmp)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pullgate-bench-auditload-", dir=args.dir or "/var/tmp"))
    try:
        r = run(root, args.quick)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ok_ping = r["ping_ratio"] <= BUDGET_PING_RATIO and r["paced_load"]["per_s"] >= 450
    ok_subs = r["subscriber_ratio"] >= BUDGET_SUBSCRIBER_RATIO
    r["ok"] = ok_ping and ok_subs and r["log_verifies"]
    if args.json:
        print(json.dumps(r))
    else:
        p = r["paced_load"]
        print(
            f"/_ping p50 idle {r['ping_idle']['p50_ms']} ms, with {p['per_s']} audited "
            f"decisions/s {r['ping_loaded']['p50_ms']} ms: {r['ping_ratio']}x (budget <= "
            f"{BUDGET_PING_RATIO}x) {'ok' if ok_ping else 'MISSED'}; pull p50 {p['p50_ms']} ms"
        )
        b = r["burst_load"]
        print(
            f"/_ping during a burst of {b['per_s']} audited decisions/s (informational): "
            f"p50 {r['ping_burst']['p50_ms']} ms, p90 {r['ping_burst']['p90_ms']} ms"
        )
        t0, t50 = r["throughput_0"], r["throughput_50"]
        print(
            f"audited decisions/s: {t0['per_s']} with no subscriber, {t50['per_s']} with 50: "
            f"{r['subscriber_ratio']} (budget >= {BUDGET_SUBSCRIBER_RATIO}) "
            f"{'ok' if ok_subs else 'MISSED'}; agent CPU per decision "
            f"{t0['agent_cpu_us_per_decision']}/{t50['agent_cpu_us_per_decision']} us; "
            f"errors {t0['errors']}/{t50['errors']}; "
            f"log verifies: {r['log_verifies']}"
        )
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
