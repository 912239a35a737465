"""Benchmark: the Docker socket shim against direct access to the daemon, in one run.

Run as root on Linux: ``python -m bench.shim [--quick] [--json]``. It starts a private
``dockerd`` and registry (``bench/realdocker.py``) and ``pullgate agent`` in front of it
(the built-in default policy: ``load: check``), plus reference rows: HAProxy and socat
as plain unix-to-unix TCP proxies when installed, and ``bench.byte_pipe`` (uvloop moving
bytes without parsing them: the floor of a Python proxy); then it measures, against
that one daemon (budgets: docs/performance.md, "Budgets"):

1. keep-alive ``GET /_ping``: one persistent connection per target, N sequential
   requests (pre-built request bytes, a raw socket, responses read by Content-Length),
   interleaved in rounds so drift hits every target alike; p50/p90/p99 and shim/direct,
   and the CPU time per request of the process serving each proxy (the agent, HAProxy,
   the byte pipe), which the machine's other load disturbs far less than latency.
2. a new connection per ``GET /_ping`` (connect, send, read, close); the same figures.
3. ``docker save -o`` / ``docker load -i`` of a ~400 MB image of random bytes (so nothing
   compresses) with the real docker CLI, directly and through the shim, 5 times each (3
   with --quick) in rotating order; medians and their ratio (the budget), the ratio of
   the fastest runs, the agent's CPU time per operation, and HAProxy timed the same way
   as a reference for the noise level.
4. 500 concurrent connections, each a few ``GET /_ping`` + ``GET /containers/json``,
   while 50 live streams (``logs -f`` and ``attach`` on containers printing a line every
   100 ms) are open through the shim: errors, time, and that every stream kept flowing.
5. the agent: time from process start to answering ``/_ping`` (median of 5 starts), and
   its idle RSS after warm-up.

It prints a table (with ``--json``: the table on stderr, one JSON object on stdout) and
exits 1 when a budget is missed or something went wrong on the way (a section failed, an
agent did not stop on SIGTERM), 2 when the benchmark itself could not run. Everything it
starts and writes (daemon data on a private tmpfs unless ``--disk``) is removed at the
end, also on failure, Ctrl-C or SIGTERM. ``--quick`` shrinks every size and count for a
smoke run; ``--only`` runs some sections. HAProxy and socat rows need ``apt-get install
-y haproxy socat`` (or ``--install-proxies``). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench.realdocker import (
    DockerEnv,
    DockerEnvError,
    docker,
    missing_requirements,
    seed_image,
    start_docker_env,
    stop_docker_env,
)

BUDGET_KEEPALIVE_RATIO = 1.5
BUDGET_NEWCONN_RATIO = 1.5
BUDGET_SAVE_LOAD_RATIO = 1.05
BUDGET_READY_S = 0.5
BUDGET_RSS_MB = 40.0

DOCKER_CLI = "/usr/local/bin/docker"
"""The real docker CLI for save/load (falls back to the one on PATH)."""
BIG_IMAGE = "bigtest:1"
"""docker.io/library/bigtest: an official-image name, allowed by the default policy."""
STREAM_IMAGE = "alpine"
STREAM_SCRIPT = 'i=0; while true; do echo "line $i"; i=$((i+1)); sleep 0.1; done'
CONTAINER_PREFIX = "pgbench-stream-"

PING = b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
CONTAINERS = b"GET /containers/json HTTP/1.1\r\nHost: docker\r\n\r\n"

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Sizes:
    keepalive_requests: int
    keepalive_warmup: int
    newconn_requests: int
    newconn_warmup: int
    rounds: int
    image_mb: int
    save_load_repeats: int
    connections: int
    requests_per_connection: int
    stream_containers: int
    ready_starts: int


FULL = Sizes(
    keepalive_requests=20_000,
    keepalive_warmup=2_000,
    newconn_requests=5_000,
    newconn_warmup=500,
    rounds=10,
    image_mb=400,
    save_load_repeats=5,
    connections=500,
    requests_per_connection=3,
    stream_containers=25,
    ready_starts=5,
)
QUICK = Sizes(
    keepalive_requests=2_000,
    keepalive_warmup=200,
    newconn_requests=500,
    newconn_warmup=50,
    rounds=4,
    image_mb=40,
    save_load_repeats=3,
    connections=100,
    requests_per_connection=3,
    stream_containers=5,
    ready_starts=5,
)


class BenchError(RuntimeError):
    """The benchmark could not measure something (not a missed budget)."""


def log(message: str) -> None:
    print(f"[bench.shim {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _set_pdeathsig() -> None:
    """In a child: SIGTERM when the benchmark dies, so nothing it started outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


# --------------------------------------------------------------------------- raw HTTP


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one response framed by Content-Length (what /_ping answers): (status, body)."""
    data = sock.recv(65536)
    while True:
        if not data:
            raise BenchError("connection closed before a complete response")
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            break
        more = sock.recv(65536)
        if not more:
            raise BenchError("connection closed inside a response head")
        data += more
    head = data[:end].lower()
    at = head.find(b"\ncontent-length:")
    if at < 0:
        raise BenchError(f"response without Content-Length: {bytes(data[:end])[:300]!r}")
    line_end = head.find(b"\r", at + 16)
    length = int(head[at + 16 : line_end if line_end >= 0 else len(head)])
    total = end + 4 + length
    while len(data) < total:
        more = sock.recv(65536)
        if not more:
            raise BenchError("connection closed inside a response body")
        data += more
    if len(data) > total:
        raise BenchError("more bytes than one response")
    return int(data[9:12]), data[end + 4 :]


def unix_connect(path: Path, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


def ping_ok(path: Path, timeout: float = 1.0) -> bool:
    try:
        sock = unix_connect(path, timeout)
    except OSError:
        return False
    try:
        sock.sendall(PING)
        status, body = read_response(sock)
        return status == 200 and body == b"OK"
    except (OSError, BenchError, ValueError):
        return False
    finally:
        sock.close()


def wait_for_ping(path: Path, proc: subprocess.Popen[bytes], what: str, timeout: float) -> float:
    """Seconds until `path` answers /_ping; BenchError if `proc` exits or time runs out."""
    started = time.perf_counter()
    deadline = started + timeout
    while True:
        if path.exists() and ping_ok(path):
            return time.perf_counter() - started
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode} before answering /_ping")
        if time.perf_counter() > deadline:
            raise BenchError(f"{what} did not answer /_ping within {timeout:.0f} s")
        time.sleep(0.002)


# --------------------------------------------------------------------------- statistics


def summarize_ns(samples: Sequence[int]) -> dict[str, float]:
    values = sorted(samples)
    n = len(values)

    def pct(q: float) -> float:
        return round(values[min(n - 1, int(q * n))] / 1000, 1)

    return {
        "n": n,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "mean_us": round(statistics.fmean(values) / 1000, 1),
        "min_us": round(values[0] / 1000, 1),
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("inf")


# --------------------------------------------------------------------------- processes


@dataclass
class Target:
    """A socket that speaks the Docker API: the daemon, the shim, or a plain proxy."""

    name: str
    label: str
    path: Path
    #: The process that serves the socket, when all its work is done there (its CPU time
    #: per request is reported); None for the daemon and for socat (a child per connection).
    pid: int | None = None


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds process ``pid`` (all its threads) has used so far."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


AGENT_COMMAND = (sys.executable, "-m", "agent", "agent")
SYSTEM_PATHS = (Path("/run/pullgate"), Path("/var/lib/pullgate"), Path("/var/log/pullgate"))
"""Where a root agent writes by default; the benchmark's agents must not (see start_agent)."""


@functools.cache
def agent_options() -> frozenset[str]:
    """The options `pullgate agent --help` lists (they grow as the agent does)."""
    result = subprocess.run(
        [*AGENT_COMMAND, "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return frozenset(w.strip("[],") for w in result.stdout.split() if w.startswith(("--", "[--")))


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    socket_path: Path
    stderr_path: Path
    ready_s: float

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def records(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for line in self.stderr_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    value = json.loads(line)
                    if isinstance(value, dict):
                        found.append(value)
        return found

    def notes(self) -> list[str]:
        """Lines on stderr that are neither decision records nor the ready/stop lines."""
        return [
            line
            for line in self.stderr_text().splitlines()
            if line
            and not line.startswith("{")
            and not line.startswith("pullgate agent: ready in ")
            and line != "pullgate agent: stopped"
        ]

    def rss_kb(self) -> dict[str, int]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        out: dict[str, int] = {}
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def cpu_s(self) -> float:
        """User + system CPU seconds the agent has used so far."""
        return cpu_seconds(self.proc.pid) or 0.0

    def soft_nofile(self) -> int | None:
        """The soft RLIMIT_NOFILE the running agent has (it may raise its own)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    return int(line.split()[3])
        return None

    def stop(self) -> int | None:
        """SIGTERM, wait 5 s, SIGKILL. The exit code (None: it needed SIGKILL)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None


def start_agent(
    workdir: Path,
    name: str,
    upstream: Path,
    *,
    nofile: int | None = None,
    timeout: float = 10.0,
) -> Agent:
    """`python -m agent agent` (built-in policy) in front of `upstream`; waits for /_ping.

    Every agent gets its own sockets and state under `workdir`, so that several run side
    by side and none touches the machine's /run/pullgate or /var/lib/pullgate.
    """
    socket_path = workdir / f"{name}.sock"
    stderr_path = workdir / f"{name}.stderr"
    argv = [
        *AGENT_COMMAND,
        "--listen",
        str(socket_path),
        "--upstream",
        f"unix://{upstream}",
    ]
    options = agent_options()
    if "--control" in options:
        argv += ["--control", str(workdir / f"{name}.control.sock")]
    if "--state-dir" in options:
        argv += ["--state-dir", str(workdir / f"{name}.state")]
    if "--audit-dir" in options:
        argv += ["--audit-dir", str(workdir / f"{name}.audit")]
    if "--config" in options:
        # No managed config: the built-in default policy, no policy fetching.
        empty = workdir / "empty-config.json"
        if not empty.exists():
            empty.write_text("{}\n")
        argv += ["--config", str(empty)]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}

    def preexec() -> None:
        _set_pdeathsig()
        if nofile is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    repo = Path(__file__).resolve().parent.parent
    with stderr_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=environ,
            cwd=repo,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509 - the benchmark starts no threads
        )
    agent = Agent(proc, socket_path, stderr_path, 0.0)
    try:
        wait_for_ping(socket_path, proc, "pullgate agent", timeout)
    except BenchError as e:
        agent.stop()
        raise BenchError(f"{e}; agent stderr:\n{_tail(agent.stderr_text())}") from None
    agent.ready_s = time.perf_counter() - started
    return agent


@dataclass
class Proxy:
    name: str
    label: str
    proc: subprocess.Popen[bytes]
    socket_path: Path
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _version_of(argv: Sequence[str], marker: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "?"
    for line in (out.stdout + out.stderr).splitlines():
        if marker in line:
            for word in line.split():
                if word[:1].isdigit():
                    return word
    return "?"


def start_proxies(workdir: Path, upstream: Path) -> tuple[list[Proxy], list[str]]:
    """Reference proxies, and what was skipped.

    HAProxy and socat as unix-to-unix TCP proxies where installed, and ``bench.byte_pipe``:
    uvloop forwarding bytes without parsing them, the floor of a Python proxy here.
    """
    proxies: list[Proxy] = []
    skipped: list[str] = []
    haproxy = shutil.which("haproxy")
    if haproxy:
        sock = workdir / "haproxy.sock"
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(
            "global\n"
            "    maxconn 8192\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 5s\n"
            "    timeout client 1h\n"
            "    timeout server 1h\n"
            "frontend docker\n"
            f"    bind unix@{sock}\n"
            "    default_backend dockerd\n"
            "backend dockerd\n"
            f"    server dockerd unix@{upstream}\n"
        )
        version = _version_of([haproxy, "-v"], "version")
        proxies.append(
            _spawn_proxy(
                "haproxy",
                f"haproxy {version} (tcp)",
                [haproxy, "-db", "-f", str(cfg)],
                sock,
                workdir,
            )
        )
    else:
        skipped.append("haproxy (not installed: apt-get install -y haproxy)")
    socat = shutil.which("socat")
    if socat:
        sock = workdir / "socat.sock"
        version = _version_of([socat, "-V"], "socat version")
        proxies.append(
            _spawn_proxy(
                "socat",
                f"socat {version}",
                [
                    socat,
                    f"UNIX-LISTEN:{sock},fork,backlog=1024,unlink-early",
                    f"UNIX-CONNECT:{upstream}",
                ],
                sock,
                workdir,
            )
        )
    else:
        skipped.append("socat (not installed: apt-get install -y socat)")
    sock = workdir / "byte-pipe.sock"
    proxies.append(
        _spawn_proxy(
            "byte_pipe",
            "python byte pipe (floor)",
            [sys.executable, "-m", "bench.byte_pipe", str(sock), str(upstream)],
            sock,
            workdir,
        )
    )
    for proxy in proxies:
        try:
            wait_for_ping(proxy.socket_path, proxy.proc, proxy.name, 10.0)
        except BenchError as e:
            skipped.append(f"{proxy.name}: {e}")
            proxy.stop()
    return [p for p in proxies if p.proc.poll() is None], skipped


def _spawn_proxy(name: str, label: str, argv: Sequence[str], sock: Path, workdir: Path) -> Proxy:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,  # for `python -m bench.byte_pipe`
            start_new_session=True,
            preexec_fn=_set_pdeathsig,  # noqa: PLW1509 - the benchmark starts no threads
        )
    return Proxy(name, label, proc, sock, log_path)


def install_proxies() -> None:
    """apt-get install haproxy and socat when missing (root, Debian)."""
    missing = [p for p in ("haproxy", "socat") if shutil.which(p) is None]
    if not missing or shutil.which("apt-get") is None:
        return
    log(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        subprocess.run(cmd, env=env, capture_output=True, check=False)


# --------------------------------------------------------------------------- 1 + 2: /_ping


def bench_keepalive(targets: Sequence[Target], sizes: Sizes) -> dict[str, Any]:
    """One persistent connection per target; rounds rotate which target goes first."""
    socks = {t.name: unix_connect(t.path) for t in targets}
    samples: dict[str, list[int]] = {t.name: [] for t in targets}
    errors: dict[str, int] = {t.name: 0 for t in targets}
    clock = time.perf_counter_ns
    per_round = max(1, sizes.keepalive_requests // sizes.rounds)
    try:
        for t in targets:
            sock = socks[t.name]
            for _ in range(sizes.keepalive_warmup):
                sock.sendall(PING)
                read_response(sock)
        gc.collect()
        gc.disable()
        cpu_before = {t.name: cpu_seconds(t.pid) for t in targets}
        try:
            for r in range(sizes.rounds):
                order = list(targets[r % len(targets) :]) + list(targets[: r % len(targets)])
                for t in order:
                    sock = socks[t.name]
                    out = samples[t.name]
                    send = sock.sendall
                    for _ in range(per_round):
                        start = clock()
                        send(PING)
                        status, _ = read_response(sock)
                        out.append(clock() - start)
                        if status != 200:
                            errors[t.name] += 1
        finally:
            gc.enable()
        cpu = _cpu_used(targets, cpu_before)
    finally:
        for sock in socks.values():
            sock.close()
    return _ping_rows(targets, samples, errors, cpu)


def bench_newconn(targets: Sequence[Target], sizes: Sizes) -> dict[str, Any]:
    """connect, send, read the whole response, close: per request."""
    samples: dict[str, list[int]] = {t.name: [] for t in targets}
    errors: dict[str, int] = {t.name: 0 for t in targets}
    clock = time.perf_counter_ns
    per_round = max(1, sizes.newconn_requests // sizes.rounds)
    family, kind = socket.AF_UNIX, socket.SOCK_STREAM

    def one(path: str) -> int:
        sock = socket.socket(family, kind)
        try:
            sock.connect(path)
            sock.sendall(PING)
            status, _ = read_response(sock)
        finally:
            sock.close()
        return status

    for t in targets:
        for _ in range(sizes.newconn_warmup):
            one(str(t.path))
    gc.collect()
    gc.disable()
    cpu_before = {t.name: cpu_seconds(t.pid) for t in targets}
    try:
        for r in range(sizes.rounds):
            order = list(targets[r % len(targets) :]) + list(targets[: r % len(targets)])
            for t in order:
                path = str(t.path)
                out = samples[t.name]
                for _ in range(per_round):
                    start = clock()
                    try:
                        status = one(path)
                    except (OSError, BenchError):
                        status = 0
                    out.append(clock() - start)
                    if status != 200:
                        errors[t.name] += 1
    finally:
        gc.enable()
    return _ping_rows(targets, samples, errors, _cpu_used(targets, cpu_before))


def _cpu_used(
    targets: Sequence[Target], before: Mapping[str, float | None]
) -> dict[str, float | None]:
    """CPU seconds each target's process used since ``before`` (None: not measured).

    The targets take turns, and a proxy does nothing while another one is measured, so
    this is its CPU for its own requests (in clock ticks: 10 ms, about 1% of a section).
    """
    used: dict[str, float | None] = {}
    for t in targets:
        start, end = before[t.name], cpu_seconds(t.pid)
        used[t.name] = None if start is None or end is None else end - start
    return used


def _ping_rows(
    targets: Sequence[Target],
    samples: Mapping[str, list[int]],
    errors: Mapping[str, int],
    cpu: Mapping[str, float | None],
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for t in targets:
        n = len(samples[t.name])
        used = cpu[t.name]
        rows[t.name] = {
            "label": t.label,
            **summarize_ns(samples[t.name]),
            "errors": errors[t.name],
            # the serving process's CPU per request, microseconds (None: not measured)
            "cpu_us": round(used * 1e6 / n, 1) if used is not None and n else None,
        }
    direct = rows["direct"]
    for t in targets:
        row = rows[t.name]
        for p in ("p50", "p90", "p99"):
            row[f"{p}_ratio"] = ratio(row[f"{p}_us"], direct[f"{p}_us"])
    return rows


# --------------------------------------------------------------------------- 3: save / load


def write_random_image_tar(path: Path, size: int) -> None:
    """A rootfs tar holding one file of `size` random bytes (incompressible)."""
    info = tarfile.TarInfo("blob.bin")
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    with path.open("wb") as f:
        f.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        left = size
        while left:
            chunk = os.urandom(min(left, 4 << 20))
            f.write(chunk)
            left -= len(chunk)
        f.write(b"\0" * ((-size) % 512) + b"\0" * 1024)


def run_cli(environ: Mapping[str, str], *args: str, timeout: float = 600.0) -> float:
    """Run the docker CLI; wall seconds; BenchError with its output when it fails."""
    argv = [_docker_cli(), *args]
    started = time.perf_counter()
    result = subprocess.run(
        argv,
        env=dict(environ),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise BenchError(
            f"`docker {' '.join(args)}` (DOCKER_HOST={environ.get('DOCKER_HOST')}) exited "
            f"with {result.returncode}:\n{_tail(result.stderr, 20)}"
        )
    return elapsed


def _docker_cli() -> str:
    return DOCKER_CLI if Path(DOCKER_CLI).exists() else (shutil.which("docker") or "docker")


def bench_save_load(
    env: DockerEnv,
    agent: Agent,
    workdir: Path,
    sizes: Sizes,
    references: Mapping[str, Path],
) -> dict[str, Any]:
    """`references`: other proxies to time the same way (rows that show the noise level)."""
    direct_env = {**env.env, "DOCKER_HOST": env.docker_host}
    vias = {
        "direct": direct_env,
        "shim": {**env.env, "DOCKER_HOST": f"unix://{agent.socket_path}"},
    }
    vias.update({k: {**env.env, "DOCKER_HOST": f"unix://{v}"} for k, v in references.items()})
    names = list(vias)
    size = sizes.image_mb * 1_000_000
    rootfs = workdir / "big-rootfs.tar"
    log(f"building a {sizes.image_mb} MB image of random bytes as {BIG_IMAGE}")
    write_random_image_tar(rootfs, size)
    build_s = run_cli(direct_env, "import", str(rootfs), BIG_IMAGE)
    rootfs.unlink()
    archive = workdir / "big-image.tar"
    run_cli(direct_env, "save", "-o", str(archive), BIG_IMAGE)  # also warms up the path
    archive_bytes = archive.stat().st_size
    out = workdir / "saved.tar"
    times: dict[str, dict[str, list[float]]] = {
        "save": {name: [] for name in names},
        "load": {name: [] for name in names},
    }
    agent_cpu: dict[str, list[float]] = {"save": [], "load": []}
    loads_before = _load_decisions(agent)
    for rep in range(sizes.save_load_repeats):
        # Rotate which goes first; with two, this alternates direct-shim / shim-direct.
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for via in order:
            os.sync()
            cpu = agent.cpu_s()
            elapsed = run_cli(vias[via], "save", "-o", str(out), BIG_IMAGE)
            if via == "shim":
                agent_cpu["save"].append(agent.cpu_s() - cpu)
            saved = out.stat().st_size
            out.unlink()
            if abs(saved - archive_bytes) > 1 << 20:
                raise BenchError(f"save via {via} wrote {saved} bytes, expected ~{archive_bytes}")
            times["save"][via].append(elapsed)
            log(f"save via {via}: {elapsed:.2f} s")
        for via in order:
            run_cli(direct_env, "image", "rm", BIG_IMAGE)
            os.sync()
            cpu = agent.cpu_s()
            elapsed = run_cli(vias[via], "load", "-i", str(archive))
            if via == "shim":
                agent_cpu["load"].append(agent.cpu_s() - cpu)
            times["load"][via].append(elapsed)
            log(f"load via {via}: {elapsed:.2f} s")
    load_decisions = _load_decisions(agent)[len(loads_before) :]
    result: dict[str, Any] = {
        "image": BIG_IMAGE,
        "image_mb": sizes.image_mb,
        "archive_bytes": archive_bytes,
        "import_s": round(build_s, 2),
        "repeats": sizes.save_load_repeats,
        "shim_load_decisions": [f"{d.get('decision')} {d.get('image')}" for d in load_decisions],
    }
    for op, by_via in times.items():
        direct_med = statistics.median(by_via["direct"])
        shim_med = statistics.median(by_via["shim"])
        result[op] = {
            "direct_s": [round(t, 3) for t in by_via["direct"]],
            "shim_s": [round(t, 3) for t in by_via["shim"]],
            "direct_median_s": round(direct_med, 3),
            "shim_median_s": round(shim_med, 3),
            "ratio": ratio(shim_med, direct_med),
            "min_ratio": ratio(min(by_via["shim"]), min(by_via["direct"])),
            "paired_ratio_median": round(
                statistics.median(
                    s / d for s, d in zip(by_via["shim"], by_via["direct"], strict=True)
                ),
                3,
            ),
            "direct_mb_s": round(archive_bytes / 1e6 / direct_med, 1),
            "shim_mb_s": round(archive_bytes / 1e6 / shim_med, 1),
            "agent_cpu_s_median": round(statistics.median(agent_cpu[op]), 2),
            "references": {
                name: {
                    "median_s": round(statistics.median(by_via[name]), 3),
                    "ratio": ratio(statistics.median(by_via[name]), direct_med),
                    "runs_s": [round(t, 3) for t in by_via[name]],
                }
                for name in references
            },
        }
    expected = sizes.save_load_repeats
    allowed = [d for d in load_decisions if d.get("decision") == "allow"]
    if len(allowed) < expected:
        raise BenchError(
            f"expected {expected} 'allow' decisions for the loads through the shim, got "
            f"{result['shim_load_decisions']}"
        )
    return result


def _load_decisions(agent: Agent) -> list[dict[str, Any]]:
    return [
        r
        for r in agent.records()
        if r.get("type") == "decision" and r.get("action") == "image-load"
    ]


# --------------------------------------------------------------------------- 4: concurrency


class HTTPCheckError(Exception):
    pass


async def _read_async_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return status, bytes(body)
            body += await reader.readexactly(size + 2)
            del body[-2:]
    raise HTTPCheckError(f"response without length: {head[:200]!r}")


@dataclass
class Stream:
    kind: str
    container: str
    received: int = 0
    ended: bool = False
    error: str | None = None
    snapshots: list[int] = field(default_factory=list)


async def _open_stream(path: Path, stream: Stream, ready: asyncio.Future[None]) -> None:
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        cid = stream.container
        if stream.kind == "logs":
            request = (
                f"GET /containers/{cid}/logs?follow=1&stdout=1&stderr=1&tail=0 HTTP/1.1\r\n"
                "Host: docker\r\n\r\n"
            )
            expected = 200
        else:
            request = (
                f"POST /containers/{cid}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\n"
                "Host: docker\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n"
                "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
            )
            expected = 101
        writer.write(request.encode("latin-1"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
        status = int(head.split(b" ", 2)[1])
        if status != expected:
            raise HTTPCheckError(f"{stream.kind} answered {head[:200]!r}")
        if not ready.done():
            ready.set_result(None)
        while True:
            data = await reader.read(65536)
            if not data:
                stream.ended = True
                return
            stream.received += len(data)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        stream.error = f"{type(e).__name__}: {e}"
        if not ready.done():
            ready.set_result(None)
    finally:
        if writer is not None:
            writer.close()


async def _burst(path: Path, connections: int, per_connection: int) -> dict[str, Any]:
    errors: list[str] = []
    per_conn_s: list[float] = []
    gate = asyncio.Event()
    open_now = [0, 0]  # open connections now, most at once

    async def worker() -> None:
        await gate.wait()
        started = time.perf_counter()
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
            open_now[0] += 1
            open_now[1] = max(open_now)
            for _ in range(per_connection):
                writer.write(PING)
                status, body = await _read_async_response(reader)
                if status != 200 or body != b"OK":
                    raise HTTPCheckError(f"GET /_ping: {status} {body[:100]!r}")
                writer.write(CONTAINERS)
                status, body = await _read_async_response(reader)
                if status != 200 or not isinstance(json.loads(body), list):
                    raise HTTPCheckError(f"GET /containers/json: {status} {body[:100]!r}")
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            if writer is not None:
                open_now[0] -= 1
                writer.close()
        per_conn_s.append(time.perf_counter() - started)

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.sleep(0)
    started = time.perf_counter()
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 300)
    elapsed = time.perf_counter() - started
    distinct = sorted(set(errors))
    return {
        "connections": connections,
        "requests": connections * per_connection * 2,
        "most_open_at_once": open_now[1],
        "errors": len(errors),
        "error_samples": distinct[:5],
        "wall_s": round(elapsed, 3),
        "per_connection_p50_ms": round(statistics.median(per_conn_s) * 1000, 1),
        "per_connection_max_ms": round(max(per_conn_s) * 1000, 1),
    }


async def _concurrency(
    direct: Path,
    shim: Path,
    extra: Mapping[str, tuple[Path, int]],
    containers: Sequence[str],
    sizes: Sizes,
) -> dict[str, Any]:
    streams = [Stream(kind, cid) for cid in containers for kind in ("logs", "attach")]
    loop = asyncio.get_running_loop()
    readies = [loop.create_future() for _ in streams]
    tasks = [
        asyncio.create_task(_open_stream(shim, s, r)) for s, r in zip(streams, readies, strict=True)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*readies), 30)
        await asyncio.sleep(1.0)
        for s in streams:
            s.snapshots.append(s.received)  # 0: before any burst
        bursts: dict[str, Any] = {}
        bursts["direct"] = await _burst(direct, sizes.connections, sizes.requests_per_connection)
        for s in streams:
            s.snapshots.append(s.received)  # 1
        bursts["shim"] = await _burst(shim, sizes.connections, sizes.requests_per_connection)
        for s in streams:
            s.snapshots.append(s.received)  # 2: right after the shim burst
        await asyncio.sleep(1.5)
        for s in streams:
            s.snapshots.append(s.received)  # 3: 1.5 s later
        for name, (path, connections) in extra.items():
            bursts[name] = await _burst(path, connections, sizes.requests_per_connection)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    during = [s.snapshots[2] - s.snapshots[1] for s in streams]
    after = [s.snapshots[3] - s.snapshots[2] for s in streams]
    broken = [
        f"{s.kind} {s.container[:12]}: {s.error or 'ended'}" for s in streams if s.error or s.ended
    ]
    return {
        "streams": len(streams),
        "stream_kinds": {k: sum(1 for s in streams if s.kind == k) for k in ("logs", "attach")},
        "streams_broken": broken,
        "streams_flowing_during_shim_burst": sum(1 for d in during if d > 0),
        "streams_flowing_after_shim_burst": sum(1 for d in after if d > 0),
        "min_stream_bytes_during_shim_burst": min(during) if during else 0,
        "min_stream_bytes_after_shim_burst": min(after) if after else 0,
        "bursts": bursts,
    }


def start_stream_containers(env: DockerEnv, count: int) -> list[str]:
    seed_image(env, STREAM_IMAGE)
    docker(env, "pull", STREAM_IMAGE)
    ids: list[str] = []
    for i in range(count):
        result = docker(
            env,
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            f"{CONTAINER_PREFIX}{i}",
            STREAM_IMAGE,
            "sh",
            "-c",
            STREAM_SCRIPT,
        )
        ids.append(result.stdout.strip())
    return ids


def remove_stream_containers(env: DockerEnv, ids: Sequence[str]) -> None:
    if ids:
        docker(env, "rm", "--force", *ids, check=False)


# --------------------------------------------------------------------------- 5: readiness


def bench_readiness(workdir: Path, upstream: Path, starts: int) -> dict[str, Any]:
    ready: list[float] = []
    internal: list[float] = []
    exit_codes: list[int | None] = []
    for i in range(starts):
        agent = start_agent(workdir, f"ready-{i}", upstream)
        ready.append(agent.ready_s)
        exit_codes.append(agent.stop())
        for line in agent.stderr_text().splitlines():
            if line.startswith("pullgate agent: ready in "):
                with contextlib.suppress(ValueError):
                    internal.append(float(line.split()[4]) / 1000)
    return {
        "starts": starts,
        "ready_s": [round(r, 3) for r in ready],
        "median_s": round(statistics.median(ready), 3),
        "agent_reported_median_s": round(statistics.median(internal), 3) if internal else None,
        "exit_codes_after_sigterm": exit_codes,
    }


# --------------------------------------------------------------------------- the run


def agent_tree() -> str:
    """Which agent code ran: the commit, and whether agent/ had uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "agent"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}{' + uncommitted changes in agent/' if dirty else ''}"


def other_dockerds(own: int) -> int:
    """dockerd processes other than ours: other runs competing for the same CPUs."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        with contextlib.suppress(OSError):
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
            if argv0.rsplit(b"/", 1)[-1] == b"dockerd":
                count += 1
    return count


SECTIONS = frozenset({"ready", "keepalive", "newconn", "rss", "concurrency", "save_load"})


@dataclass
class Run:
    sizes: Sizes
    quick: bool
    workdir: Path
    results: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    env: DockerEnv | None = None
    agent: Agent | None = None
    extra_agents: list[Agent] = field(default_factory=list)
    proxies: list[Proxy] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)
    only: frozenset[str] = SECTIONS

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        log(f"{name} ...")
        started = time.perf_counter()
        try:
            yield
        except Exception as e:
            detail = f"{type(e).__name__}: {e}"
            self.results.setdefault(name, {})["error"] = detail
            self.failures.append(f"{name}: {detail}")
            log(f"{name} FAILED: {detail}\n{traceback.format_exc()}")
            if self.agent is not None:
                log(f"agent stderr tail:\n{_tail(self.agent.stderr_text(), 20)}")
        finally:
            log(f"{name} took {time.perf_counter() - started:.1f} s")

    def targets(self) -> list[Target]:
        assert self.env is not None and self.agent is not None
        found = [
            Target("direct", "direct (dockerd socket)", self.env.socket_path),
            Target("shim", "pullgate agent", self.agent.socket_path, self.agent.proc.pid),
        ]
        found += [
            Target(p.name, p.label, p.socket_path, None if p.name == "socat" else p.proc.pid)
            for p in self.proxies
        ]
        return found

    def execute(self) -> None:
        env = start_docker_env(self.workdir / "docker")
        self.env = env
        self.results["setup"] = {
            **self.results.get("setup", {}),
            "dockerd_start_s": round(env.startup_seconds, 2),
            "dockerd": docker(env, "version", "--format", "{{.Server.Version}}").stdout.strip(),
            "docker_cli": _docker_cli(),
            "docker_cli_version": subprocess.run(
                [_docker_cli(), "--version"], capture_output=True, text=True, check=False
            ).stdout.strip(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "quick": self.quick,
            "agent_tree": agent_tree(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "other_dockerd_running": other_dockerds(env.dockerd.pid),
        }
        agents_dir = self.workdir / "agents"
        agents_dir.mkdir()
        self.agent = start_agent(agents_dir, "shim", env.socket_path)
        self.proxies, skipped = start_proxies(self.workdir, env.socket_path)
        self.results["setup"]["proxies"] = [p.label for p in self.proxies]
        self.results["setup"]["proxies_skipped"] = skipped

        if "ready" in self.only:
            with self.section("ready"):
                ready = bench_readiness(agents_dir, env.socket_path, self.sizes.ready_starts)
                self.results["ready"] = ready
                # Not a budget, but issue 3 asks for a clean shutdown on SIGTERM.
                for i, code in enumerate(ready["exit_codes_after_sigterm"]):
                    if code != 0:
                        self.failures.append(
                            f"ready: start {i + 1} of the agent "
                            + (
                                "did not exit within 5 s of SIGTERM (killed)"
                                if code is None
                                else f"exited with {code} after SIGTERM"
                            )
                        )
        if "keepalive" in self.only:
            with self.section("keepalive"):
                self.results["keepalive"] = bench_keepalive(self.targets(), self.sizes)
        if "newconn" in self.only:
            with self.section("newconn"):
                self.results["newconn"] = bench_newconn(self.targets(), self.sizes)
        if "rss" in self.only:
            with self.section("rss"):
                if "keepalive" not in self.only:
                    warm = unix_connect(self.agent.socket_path)
                    for _ in range(self.sizes.keepalive_warmup):
                        warm.sendall(PING)
                        read_response(warm)
                    warm.close()
                time.sleep(1.0)
                self.results["rss"] = {"after_warmup_kb": self.agent.rss_kb()["VmRSS"]}
        if "concurrency" in self.only:
            self._concurrency(env, agents_dir)
        if "save_load" in self.only:
            with self.section("save_load"):
                # HAProxy as a reference row: how much of a ratio the machine's noise and
                # any extra hop cost here.
                refs = {p.name: p.socket_path for p in self.proxies if p.name == "haproxy"}
                self.results["save_load"] = bench_save_load(
                    env, self.agent, self.workdir, self.sizes, refs
                )
        if "rss" in self.only:
            with self.section("rss_end"):
                time.sleep(1.0)
                rss = self.agent.rss_kb()
                self.results.setdefault("rss", {}).update(
                    {"at_end_kb": rss["VmRSS"], "peak_kb": rss["VmHWM"]}
                )

    def _concurrency(self, env: DockerEnv, agents_dir: Path) -> None:
        assert self.agent is not None
        with self.section("concurrency"):
            self.containers = start_stream_containers(env, self.sizes.stream_containers)
            # Informational, not a budget: an agent started with the soft fd limit a
            # systemd service gets by default (1024), given as many connections at once as
            # the budget scenario holds open (each connection + each stream = 2 fds).
            low_fd = start_agent(agents_dir, "shim-nofile1024", env.socket_path, nofile=1024)
            self.extra_agents.append(low_fd)
            probe = self.sizes.connections + 2 * self.sizes.stream_containers
            conc = asyncio.run(
                _concurrency(
                    env.socket_path,
                    self.agent.socket_path,
                    {"shim_nofile_1024": (low_fd.socket_path, probe)},
                    self.containers,
                    self.sizes,
                )
            )
            conc["agent_alive"] = self.agent.proc.poll() is None
            conc["nofile_1024_agent_soft_limit"] = low_fd.soft_nofile()
            conc["agent_soft_limit"] = self.agent.soft_nofile()
            self.results["concurrency"] = conc
            low_fd.stop()
            remove_stream_containers(env, self.containers)
            self.containers = []

    def teardown(self) -> None:
        log("cleaning up")
        if self.agent is not None:
            code = self.agent.stop()
            self.results["agent_exit_code"] = code
            if code != 0:
                self.failures.append(
                    "the agent "
                    + ("did not exit within 5 s of SIGTERM" if code is None else f"exited {code}")
                    + " at the end"
                )
            self.results["agent_stderr_notes"] = self.agent.notes()[:20]
        for agent in self.extra_agents:
            agent.stop()
            notes = agent.notes()
            if notes:
                self.results.setdefault("extra_agent_stderr_notes", []).extend(notes[:10])
        for proxy in self.proxies:
            proxy.stop()
        if self.env is not None:
            with contextlib.suppress(Exception):
                remove_stream_containers(self.env, self.containers)
            try:
                stop_docker_env(self.env)
            except DockerEnvError as e:
                log(f"stopping dockerd: {e}")


# --------------------------------------------------------------------------- verdicts


def budgets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each budget: name, figure, limit, ok (None: not measured)."""
    out: list[dict[str, Any]] = []

    def add(name: str, figure: float | None, limit: float, unit: str) -> None:
        ok = None if figure is None else figure <= limit
        out.append({"budget": name, "figure": figure, "limit": limit, "unit": unit, "ok": ok})

    def get(*keys: str) -> Any:
        node: Any = results
        for k in keys:
            if not isinstance(node, Mapping) or k not in node:
                return None
            node = node[k]
        return node

    add(
        "keep-alive /_ping p50, shim/direct",
        get("keepalive", "shim", "p50_ratio"),
        BUDGET_KEEPALIVE_RATIO,
        "x",
    )
    add(
        "new-connection /_ping p50, shim/direct",
        get("newconn", "shim", "p50_ratio"),
        BUDGET_NEWCONN_RATIO,
        "x",
    )
    add(
        "docker save, shim/direct (median)",
        get("save_load", "save", "ratio"),
        BUDGET_SAVE_LOAD_RATIO,
        "x",
    )
    add(
        "docker load, shim/direct (median)",
        get("save_load", "load", "ratio"),
        BUDGET_SAVE_LOAD_RATIO,
        "x",
    )
    conc = get("concurrency")
    if isinstance(conc, Mapping) and "bursts" in conc:
        problems = (
            conc["bursts"]["shim"]["errors"]
            + len(conc["streams_broken"])
            + (conc["streams"] - conc["streams_flowing_after_shim_burst"])
            + (0 if conc.get("agent_alive") else 1)
        )
        add("concurrency through the shim: errors + broken/stalled streams", problems, 0, "")
    else:
        add("concurrency through the shim: errors + broken/stalled streams", None, 0, "")
    add("agent ready, median", get("ready", "median_s"), BUDGET_READY_S, "s")
    rss = get("rss", "after_warmup_kb")
    add(
        "agent idle RSS after warm-up",
        None if rss is None else round(rss / 1024, 1),
        BUDGET_RSS_MB,
        "MB",
    )
    return out


# --------------------------------------------------------------------------- report


def render(results: Mapping[str, Any], verdicts: Sequence[Mapping[str, Any]]) -> str:
    lines: list[str] = []
    w = lines.append
    setup = results.get("setup", {})
    w(
        f"Pullgate shim benchmark{' (--quick)' if setup.get('quick') else ''}: "
        f"dockerd {setup.get('dockerd', '?')}, {setup.get('docker_cli_version', '?')}, "
        f"Python {setup.get('python', '?')}, {setup.get('cpus', '?')} CPUs, "
        f"daemon data and archives on {setup.get('storage', '?')}"
    )
    w(
        f"  agent code: {setup.get('agent_tree', '?')}; load average at start "
        f"{setup.get('loadavg_at_start', '?')}, other dockerd processes running: "
        f"{setup.get('other_dockerd_running', '?')} (figures are noisier when others share "
        "the CPUs)"
    )
    if setup.get("proxies_skipped"):
        w(f"  reference proxies skipped: {'; '.join(setup['proxies_skipped'])}")
    for key, title in (
        ("keepalive", "keep-alive GET /_ping, one connection"),
        ("newconn", "new connection per GET /_ping"),
    ):
        section = results.get(key, {})
        if not section:
            continue
        w("")
        if "error" in section:
            w(f"{title}: ERROR {section['error']}")
            continue
        n = next((r["n"] for r in section.values() if isinstance(r, dict) and "n" in r), 0)
        w(f"{title} ({n} requests per target)")
        w(
            f"  {'':32}{'p50 us':>9}{'p90 us':>9}{'p99 us':>9}{'mean us':>9}"
            f"{'p50 x':>8}{'p90 x':>8}{'p99 x':>8}{'errors':>8}{'CPU us':>8}"
        )
        for row in section.values():
            cpu = row.get("cpu_us")
            w(
                f"  {row['label']:32}{row['p50_us']:>9.1f}{row['p90_us']:>9.1f}"
                f"{row['p99_us']:>9.1f}{row['mean_us']:>9.1f}{row['p50_ratio']:>8.2f}"
                f"{row['p90_ratio']:>8.2f}{row['p99_ratio']:>8.2f}{row['errors']:>8}"
                f"{'-' if cpu is None else f'{cpu:.1f}':>8}"
            )
    sl = results.get("save_load", {})
    if sl:
        w("")
    if "error" in sl:
        w(f"docker save / load: ERROR {sl['error']}")
    elif sl:
        w(
            f"docker save -o / load -i, {sl['image_mb']} MB image {sl['image']} "
            f"({sl['archive_bytes'] / 1e6:.0f} MB archive), {sl['repeats']}x each, "
            "order rotated each time; docker CLI; seconds and ratio: medians; min ratio: fastest "
            "runs; pair ratio: median of shim/direct run back to back"
        )
        w(
            f"  {'':32}{'direct s':>10}{'shim s':>10}{'ratio':>8}{'min ratio':>11}"
            f"{'pair ratio':>12}"
            f"{'agent CPU s':>13}   "
            f"{'direct runs':<31}{'shim runs'}"
        )
        for op in ("save", "load"):
            r = sl[op]
            label = op if op == "save" else "load (policy load: check)"
            w(
                f"  {label:32}{r['direct_median_s']:>10.2f}{r['shim_median_s']:>10.2f}"
                f"{r['ratio']:>8.3f}{r['min_ratio']:>11.3f}{r['paired_ratio_median']:>12.3f}"
                f"{r['agent_cpu_s_median']:>13.2f}   "
                f"{' '.join(f'{t:.2f}' for t in r['direct_s']):<30} "
                f"{' '.join(f'{t:.2f}' for t in r['shim_s'])}"
            )
        for op in ("save", "load"):
            for name, ref in sl[op].get("references", {}).items():
                w(
                    f"  {op + ' via ' + name + ' (reference)':32}{'':>10}{ref['median_s']:>10.2f}"
                    f"{ref['ratio']:>8.3f}{'':>36}   {'':<30} "
                    f"{' '.join(f'{t:.2f}' for t in ref['runs_s'])}"
                )
        counts = Counter(sl["shim_load_decisions"])
        listed = ", ".join(f"{n}x {d}" for d, n in counts.items()) or "none"
        w(f"  shim decisions during {sl['repeats']} loads through the shim: {listed}")
    conc = results.get("concurrency", {})
    if conc:
        w("")
    if "error" in conc:
        w(f"concurrency: ERROR {conc['error']}")
    elif conc:
        w(
            f"concurrency: {conc['bursts']['shim']['connections']} connections at once, each "
            f"{conc['bursts']['shim']['requests'] // conc['bursts']['shim']['connections'] // 2}"
            f"x (GET /_ping + GET /containers/json), with {conc['streams']} live streams "
            f"through the shim ({conc['stream_kinds']['logs']} logs -f, "
            f"{conc['stream_kinds']['attach']} attach)"
        )
        w(
            f"  {'':32}{'wall s':>9}{'errors':>8}{'conn p50 ms':>13}{'conn max ms':>13}"
            f"{'open at once':>14}"
        )
        for name, b in conc["bursts"].items():
            w(
                f"  {name:32}{b['wall_s']:>9.2f}{b['errors']:>8}"
                f"{b['per_connection_p50_ms']:>13.1f}{b['per_connection_max_ms']:>13.1f}"
                f"{b['most_open_at_once']:>14}"
            )
            for sample in b["error_samples"]:
                w(f"      error: {sample}")
        w(
            f"  streams: {conc['streams_flowing_during_shim_burst']}/{conc['streams']} received "
            f"bytes during the shim burst (min {conc['min_stream_bytes_during_shim_burst']} B), "
            f"{conc['streams_flowing_after_shim_burst']}/{conc['streams']} in the 1.5 s after "
            f"(min {conc['min_stream_bytes_after_shim_burst']} B); broken: "
            f"{', '.join(conc['streams_broken']) or 'none'}; "
            f"agent alive: {conc.get('agent_alive')}"
        )
        w(
            f"  fd limits: the agent runs with soft RLIMIT_NOFILE {conc['agent_soft_limit']}; "
            f"started with 1024 (systemd's default) it has {conc['nofile_1024_agent_soft_limit']}"
            " (shim_nofile_1024 row: informational, not a budget)"
        )
    ready = results.get("ready", {})
    w("")
    if "error" in ready:
        w(f"agent readiness: ERROR {ready['error']}")
    elif ready:
        w(
            f"agent ready (process start to /_ping answered): median {ready['median_s']:.3f} s "
            f"of {ready['ready_s']}; agent's own 'ready in' median "
            f"{ready['agent_reported_median_s']} s; exit codes after SIGTERM "
            f"{ready['exit_codes_after_sigterm']} (None: still running 5 s later, killed)"
        )
    rss = results.get("rss", {})
    if "after_warmup_kb" in rss:
        extra = ""
        if "at_end_kb" in rss:
            extra = (
                f"; idle at the end {rss['at_end_kb'] / 1024:.1f} MB, "
                f"peak (VmHWM) {rss['peak_kb'] / 1024:.1f} MB"
            )
        w(f"agent RSS: idle after warm-up {rss['after_warmup_kb'] / 1024:.1f} MB{extra}")
    if "agent_exit_code" in results:
        code = results["agent_exit_code"]
        w(
            "agent exit code after SIGTERM at the end: "
            + ("none: still running 5 s later, killed" if code is None else str(code))
        )
    notes = results.get("agent_stderr_notes") or []
    if notes:
        w("agent stderr (other than decisions):")
        lines.extend(f"  {n}" for n in notes)
    extra_notes = results.get("extra_agent_stderr_notes") or []
    if extra_notes:
        w(
            f"stderr of the other agents (readiness, fd-limit probe): {len(extra_notes)}+ "
            "lines, the first 3:"
        )
        lines.extend(f"  {n}" for n in extra_notes[:3])
    w("")
    w("budgets")
    for v in verdicts:
        mark = {True: "ok", False: "MISSED", None: "NOT MEASURED"}[v["ok"]]
        fig = "-" if v["figure"] is None else f"{v['figure']}{v['unit']}"
        w(f"  {v['budget']:62}{fig:>10}  <= {v['limit']}{v['unit']:<3} {mark}")
    for failure in results.get("failures", []):
        w(f"  failure: {failure}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def mount_tmpfs(path: Path) -> str:
    """Mount a private tmpfs on `path`: "tmpfs", or "disk" when that is not possible."""
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8g,mode=0700", "pgbench", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        log(f"no tmpfs ({result.stderr.strip()}); the daemon's data stays on disk")
        return "disk"
    return "tmpfs"


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.shim", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument(
        "--only",
        metavar="SECTIONS",
        help=f"run only these sections (comma-separated: {', '.join(sorted(SECTIONS))})",
    )
    parser.add_argument(
        "--disk",
        action="store_true",
        help="keep the daemon's data and the archives on disk (default: a private tmpfs, so "
        "that disk noise does not swamp the save/load ratio)",
    )
    parser.add_argument(
        "--install-proxies",
        action="store_true",
        help="apt-get install haproxy and socat first when missing (reference rows)",
    )
    args = parser.parse_args(argv)
    only = SECTIONS
    if args.only:
        only = frozenset(x.strip() for x in args.only.split(",") if x.strip())
        if not only or not only <= SECTIONS:
            parser.error(f"--only takes a comma-separated subset of {', '.join(sorted(SECTIONS))}")
    problems = missing_requirements()
    if problems:
        print(f"bench.shim: cannot run: {'; '.join(problems)}", file=sys.stderr)
        return 2
    if args.install_proxies:
        install_proxies()
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    sizes = QUICK if args.quick else FULL
    absent = [p for p in SYSTEM_PATHS if not p.exists()]
    workdir = Path(tempfile.mkdtemp(prefix="pgbench-", dir="/tmp"))
    storage = "disk" if args.disk else mount_tmpfs(workdir)
    run = Run(sizes=sizes, quick=args.quick, workdir=workdir, only=only)
    run.results["setup"] = {"storage": storage}
    started = time.perf_counter()
    fatal: str | None = None
    try:
        run.execute()
    except (Exception, KeyboardInterrupt) as e:
        fatal = f"{type(e).__name__}: {e}"
        log(f"benchmark aborted: {fatal}\n{traceback.format_exc()}")
    finally:
        try:
            run.teardown()
        finally:
            if storage == "tmpfs":
                unmount(workdir)
            shutil.rmtree(workdir, ignore_errors=True)
    results = dict(run.results)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    failures = list(run.failures)
    if fatal:
        failures.append(f"aborted: {fatal}")
    appeared = [str(p) for p in absent if p.exists()]
    if appeared:
        # A new agent option for a system path that start_agent does not know yet (or
        # another process created it meanwhile): say so rather than delete it.
        failures.append(
            f"these appeared during the run (an agent wrote outside its workdir?): "
            f"{', '.join(appeared)}"
        )
    results["failures"] = failures
    verdicts = budgets(results)
    results["budgets"] = verdicts
    table = render(results, verdicts) + f"\n(total {results['wall_s']} s)"
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(results, sort_keys=True))
    else:
        print(table)
    if fatal:
        return 2
    # With --only, budgets of the sections left out are "not measured", not missed.
    missed = (
        any(v["ok"] is False for v in verdicts)
        or (not args.only and any(v["ok"] is None for v in verdicts))
        or bool(failures)
    )
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
