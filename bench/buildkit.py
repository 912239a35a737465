"""Benchmark: a BuildKit build of a 200 MB context through the shim against direct access.

Run as root on Linux: ``python -m bench.buildkit [--runs N] [--quick] [--json]``. It starts
a private ``dockerd`` 20.10 and registry (``bench/realdocker.py``; ``alpine`` seeded
there and pulled once), ``pullgate agent`` in front of it (built-in policy, as
``bench.shim`` starts it), and two reference proxies that only move bytes: HAProxy in TCP
mode (unix to unix, when installed) and ``bench.byte_pipe`` (uvloop, the floor of any
Python proxy). Then, with Debian's docker CLI 20.10 and its built-in BuildKit client
(``DOCKER_BUILDKIT=1 /usr/bin/docker build --network none``), it builds

    FROM alpine
    COPY . /ctx
    RUN du -s /ctx

from a context of 200 MB of random bytes (one 150 MB file and 1,000 of 50 KB) through
each target, interleaved (the order rotates every round), N times each (default 7).

Every timed build does the same work: before it the daemon's build cache is pruned
(``docker builder prune -af``, directly), the context directory gets a new name (the CLI
derives BuildKit's shared session key from it, so no earlier transfer is reused) and new
bytes at the start of every file (no content checksum can match), and the image it made
is removed after it. The figures: wall time of ``docker build`` (median, min, max), the
context transfer BuildKit reports (``transferring context: … done``), shim/direct of the
medians (budget: ≤ 1.10x, docs/performance.md), the agent's CPU seconds per build and its
peak RSS (``/proc/PID/stat``, ``VmHWM``), and the reference proxies' ratios and CPU.

``--py-spy PATH`` (py-spy on PATH or given with ``--py-spy-bin``) records the agent
during one more, untimed build through the shim, in py-spy's raw (collapsed stack)
format. Exit status: 0 budget met, 1 missed or a build failed, 2 could not run.
Everything started is stopped and the temporary directory (a private tmpfs unless
``--disk``) removed at the end. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
from bench.shim import (
    Agent,
    BenchError,
    Proxy,
    agent_tree,
    cpu_seconds,
    mount_tmpfs,
    other_dockerds,
    ratio,
    start_agent,
    start_proxies,
    unmount,
)

BUDGET_RATIO = 1.10
#: Debian's CLI 20.10: its built-in BuildKit client (POST /session + /build?version=2).
BUILD_CLI = "/usr/bin/docker"
BASE_IMAGE = "alpine"
DOCKERFILE = "FROM alpine\nCOPY . /ctx\nRUN du -s /ctx\n"
TAG = "pgbench-buildkit:run"
#: Reference proxies timed like the shim (bench.shim names).
REFERENCES = ("byte_pipe", "haproxy")


@dataclass(frozen=True)
class Sizes:
    runs: int
    big_mb: int
    small_files: int
    small_kb: int

    @property
    def context_bytes(self) -> int:
        return self.big_mb * 1_000_000 + self.small_files * self.small_kb * 1000


FULL = Sizes(runs=7, big_mb=150, small_files=1000, small_kb=50)
QUICK = Sizes(runs=2, big_mb=30, small_files=200, small_kb=50)


def log(message: str) -> None:
    print(f"[bench.buildkit {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


# --------------------------------------------------------------------------- the context


def write_context(root: Path, sizes: Sizes) -> list[Path]:
    """The build context: a Dockerfile, one big file and many small ones of random bytes."""
    root.mkdir(parents=True)
    (root / "Dockerfile").write_text(DOCKERFILE)
    files = [root / "big.bin"]
    with files[0].open("wb") as f:
        left = sizes.big_mb * 1_000_000
        while left:
            chunk = os.urandom(min(left, 4 << 20))
            f.write(chunk)
            left -= len(chunk)
    small = root / "small"
    small.mkdir()
    for i in range(sizes.small_files):
        path = small / f"{i:04d}.bin"
        path.write_bytes(os.urandom(sizes.small_kb * 1000))
        files.append(path)
    return files


def refresh_context(root: Path, files: Sequence[Path], new_root: Path) -> list[Path]:
    """Move the context to ``new_root`` (a new shared session key) and give every file new
    leading bytes (a new content checksum): nothing of an earlier build can be reused."""
    root.rename(new_root)
    moved = [new_root / f.relative_to(root) for f in files]
    for path in moved:
        with path.open("r+b") as f:
            f.write(os.urandom(16))
    return moved


# --------------------------------------------------------------------------- one build

_TRANSFER = re.compile(r"transferring context: ([0-9.]+)([kMG]?B) ([0-9.]+)s done")
_DU = re.compile(r"^#\d+ [0-9.]+ (\d+)\s+/ctx$", re.MULTILINE)
_UNIT = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


@dataclass
class Build:
    via: str
    wall_s: float
    transfer_s: float | None
    transfer_bytes: float | None
    du_kb: int | None
    cpu_s: float | None  # the proxy process's CPU during the build (None: direct)


def build_once(env: DockerEnv, socket_path: Path, ctx: Path, via: str, pid: int | None) -> Build:
    environ = {**env.env, "DOCKER_HOST": f"unix://{socket_path}", "DOCKER_BUILDKIT": "1"}
    argv = [BUILD_CLI, "build", "--network", "none", "--progress", "plain", "-t", TAG, str(ctx)]
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    result = subprocess.run(
        argv,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    cpu_after = cpu_seconds(pid)
    if result.returncode != 0:
        raise BenchError(
            f"build via {via} exited with {result.returncode}:\n{_tail(result.stderr, 30)}"
        )
    transfer_s = transfer_bytes = None
    for m in _TRANSFER.finditer(result.stderr):
        transfer_bytes = float(m.group(1)) * _UNIT[m.group(2)]
        transfer_s = float(m.group(3))
    du = _DU.search(result.stderr)
    return Build(
        via,
        wall,
        transfer_s,
        transfer_bytes,
        int(du.group(1)) if du else None,
        None if cpu is None or cpu_after is None else cpu_after - cpu,
    )


def reset_daemon(env: DockerEnv) -> None:
    """The built image and every build cache record go: each build starts equal."""
    docker(env, "image", "rm", "--force", TAG, check=False)
    docker(env, "builder", "prune", "-af")


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    sizes: Sizes
    workdir: Path
    py_spy: Path | None = None
    py_spy_bin: str | None = None
    results: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    env: DockerEnv | None = None
    agent: Agent | None = None
    proxies: list[Proxy] = field(default_factory=list)

    def execute(self) -> None:
        env = start_docker_env(self.workdir / "docker")
        self.env = env
        cli_version = subprocess.run(
            [BUILD_CLI, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        self.results["setup"] = {
            **self.results.get("setup", {}),
            "dockerd": docker(env, "version", "--format", "{{.Server.Version}}").stdout.strip(),
            "build_cli": f"{BUILD_CLI} ({cli_version})",
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {_cpu_model()}",
            "kernel": platform.release(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "other_dockerd_running": other_dockerds(env.dockerd.pid),
            "agent_tree": agent_tree(),
        }
        log(f"seeding and pulling {BASE_IMAGE}")
        seed_image(env, BASE_IMAGE)
        docker(env, "pull", BASE_IMAGE)
        agents_dir = self.workdir / "agents"
        agents_dir.mkdir()
        self.agent = start_agent(agents_dir, "shim", env.socket_path)
        proxies, skipped = start_proxies(self.workdir, env.socket_path)
        for proxy in proxies:
            if proxy.name in REFERENCES:
                self.proxies.append(proxy)
            else:
                proxy.stop()
        self.results["setup"]["references"] = [p.label for p in self.proxies]
        self.results["setup"]["references_skipped"] = [
            s for s in skipped if s.split()[0].rstrip(":") in REFERENCES
        ]
        targets: dict[str, tuple[Path, int | None]] = {
            "direct": (env.socket_path, None),
            "shim": (self.agent.socket_path, self.agent.proc.pid),
        }
        targets.update({p.name: (p.socket_path, p.proc.pid) for p in self.proxies})

        log(f"writing a {self.sizes.context_bytes / 1e6:.0f} MB context of random bytes")
        ctx = self.workdir / "ctx-0"
        files = write_context(ctx, self.sizes)
        self.results["context"] = {
            "bytes": self.sizes.context_bytes,
            "files": len(files) + 1,
            "layout": f"1 x {self.sizes.big_mb} MB + {self.sizes.small_files} x "
            f"{self.sizes.small_kb} kB + Dockerfile",
            "dockerfile": DOCKERFILE,
        }
        serial = 0

        def one(via: str) -> Build:
            nonlocal ctx, files, serial
            serial += 1
            new = self.workdir / f"ctx-{serial}"
            files = refresh_context(ctx, files, new)
            ctx = new
            reset_daemon(env)
            path, pid = targets[via]
            return build_once(env, path, ctx, via, pid)

        # Warm-up (untimed): the first build through each path loads what it loads.
        for via in targets:
            b = one(via)
            log(f"warm-up via {via}: {b.wall_s:.2f} s")
        rss_before = self.agent.rss_kb()
        names = list(targets)
        builds: dict[str, list[Build]] = {name: [] for name in names}
        for rep in range(self.sizes.runs):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for via in order:
                b = one(via)
                builds[via].append(b)
                log(
                    f"run {rep + 1}/{self.sizes.runs} via {via}: {b.wall_s:.2f} s "
                    f"(context {b.transfer_s} s, du {b.du_kb} kB"
                    + (f", CPU {b.cpu_s:.2f} s" if b.cpu_s is not None else "")
                    + ")"
                )
        rss_after = self.agent.rss_kb()
        self.results["setup"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        self.results["builds"] = summarize(builds)
        self.results["agent"] = {
            "rss_before_kb": rss_before["VmRSS"],
            "rss_after_kb": rss_after["VmRSS"],
            "peak_rss_kb": rss_after["VmHWM"],
            "peak_before_builds_kb": rss_before["VmHWM"],
        }
        expected_kb = self.sizes.context_bytes // 1024
        for via, runs in builds.items():
            for b in runs:
                if b.du_kb is None or abs(b.du_kb - expected_kb) > expected_kb // 20:
                    self.failures.append(
                        f"a build via {via} copied {b.du_kb} kB into /ctx, "
                        f"expected about {expected_kb}"
                    )
        if self.py_spy is not None:
            self._profile(one)

    def _profile(self, one: Any) -> None:
        assert self.agent is not None
        binary = self.py_spy_bin or shutil.which("py-spy")
        if binary is None:
            self.failures.append("--py-spy: py-spy not found (pip install py-spy)")
            return
        assert self.py_spy is not None
        argv = [binary, "record", "--pid", str(self.agent.proc.pid), "--rate", "200"]
        argv += ["--format", "raw", "--output", str(self.py_spy), "--nonblocking"]
        spy = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        time.sleep(1.0)
        b = one("shim")
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        log(f"profiled build via shim: {b.wall_s:.2f} s; py-spy: {_tail(err.decode(), 3)}")
        self.results["py_spy"] = {"output": str(self.py_spy), "build_s": round(b.wall_s, 2)}

    def teardown(self) -> None:
        log("cleaning up")
        if self.agent is not None:
            code = self.agent.stop()
            if code != 0:
                self.failures.append(f"the agent exited with {code} at the end")
            notes = self.agent.notes()
            if notes:
                self.results["agent_stderr_notes"] = notes[:20]
        for proxy in self.proxies:
            proxy.stop()
        if self.env is not None:
            try:
                stop_docker_env(self.env)
            except DockerEnvError as e:
                log(f"stopping dockerd: {e}")


def summarize(builds: Mapping[str, Sequence[Build]]) -> dict[str, Any]:
    direct = statistics.median(b.wall_s for b in builds["direct"])
    direct_transfer = _median([b.transfer_s for b in builds["direct"]])
    out: dict[str, Any] = {}
    for via, runs in builds.items():
        walls = [b.wall_s for b in runs]
        med = statistics.median(walls)
        transfer = _median([b.transfer_s for b in runs])
        cpus = [b.cpu_s for b in runs if b.cpu_s is not None]
        out[via] = {
            "wall_s": [round(w, 2) for w in walls],
            "median_s": round(med, 2),
            "min_s": round(min(walls), 2),
            "max_s": round(max(walls), 2),
            "ratio": ratio(med, direct),
            "transfer_s": [b.transfer_s for b in runs],
            "transfer_median_s": transfer,
            "transfer_ratio": (
                ratio(transfer, direct_transfer)
                if transfer is not None and direct_transfer
                else None
            ),
            "cpu_s_median": round(statistics.median(cpus), 2) if cpus else None,
            # Each run against the direct build of the same round: less of the machine's
            # drift between rounds.
            "paired_ratio_median": round(
                statistics.median(
                    b.wall_s / d.wall_s for b, d in zip(runs, builds["direct"], strict=True)
                ),
                3,
            ),
        }
    return out


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


# --------------------------------------------------------------------------- report


LABELS = {
    "direct": "direct (dockerd socket)",
    "shim": "pullgate agent",
    "byte_pipe": "byte pipe (uvloop)",
    "haproxy": "HAProxy (tcp)",
}


def render(results: Mapping[str, Any], budget: Mapping[str, Any]) -> str:
    lines: list[str] = []
    setup = results.get("setup", {})
    lines.append("bench.buildkit: " + json.dumps(setup, sort_keys=True))
    ctx = results.get("context")
    if ctx:
        lines.append(f"context: {ctx['bytes'] / 1e6:.0f} MB, {ctx['layout']}")
    builds = results.get("builds")
    if builds:
        lines.append(
            "| target | build median | min-max | ratio | paired ratio median "
            "| context transfer median | ratio | proxy CPU per build |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for via, row in builds.items():
            cpu = "" if row["cpu_s_median"] is None else f"{row['cpu_s_median']:.2f} s"
            tr = "" if row["transfer_median_s"] is None else f"{row['transfer_median_s']:.2f} s"
            tr_ratio = "" if row["transfer_ratio"] is None else f"{row['transfer_ratio']:.2f}x"
            lines.append(
                f"| {LABELS.get(via, via)} | {row['median_s']:.2f} s | "
                f"{row['min_s']:.2f}-{row['max_s']:.2f} s | {row['ratio']:.3f}x | "
                f"{row['paired_ratio_median']:.3f}x | "
                f"{tr} | {tr_ratio} | {cpu} |"
            )
    agent = results.get("agent")
    if agent:
        lines.append(
            f"agent RSS: {agent['rss_before_kb'] / 1024:.1f} MB before the builds, "
            f"{agent['rss_after_kb'] / 1024:.1f} MB after, "
            f"peak {agent['peak_rss_kb'] / 1024:.1f} MB"
        )
    if budget.get("ratio") is not None:
        verdict = "met" if budget["ok"] else "MISSED"
        lines.append(f"budget: shim/direct {budget['ratio']:.3f}x ≤ {BUDGET_RATIO}x — {verdict}")
    for failure in results.get("failures", []):
        lines.append(f"FAILURE: {failure}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.buildkit",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--runs", type=int, help="timed builds per target (default 7)")
    parser.add_argument("--quick", action="store_true", help="a 40 MB context, 2 runs")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--disk", action="store_true", help="no private tmpfs")
    parser.add_argument("--py-spy", type=Path, help="record the agent in one more shim build")
    parser.add_argument("--py-spy-bin", help="the py-spy executable (default: on PATH)")
    args = parser.parse_args(argv)
    problems = missing_requirements()
    if not Path(BUILD_CLI).exists():
        problems.append(f"{BUILD_CLI} missing: Debian's docker.io CLI 20.10")
    if problems:
        print(f"bench.buildkit: cannot run: {'; '.join(problems)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes = Sizes(args.runs, sizes.big_mb, sizes.small_files, sizes.small_kb)
    workdir = Path(tempfile.mkdtemp(prefix="pgbench-bk-", dir="/tmp"))
    storage = "disk" if args.disk else mount_tmpfs(workdir)
    run = Run(sizes, workdir, args.py_spy, args.py_spy_bin)
    run.results["setup"] = {"storage": storage, "runs": sizes.runs}
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
    results["failures"] = [*run.failures, *([f"aborted: {fatal}"] if fatal else [])]
    shim = results.get("builds", {}).get("shim")
    budget: dict[str, Any] = {"limit": BUDGET_RATIO, "ratio": None, "ok": None}
    if shim is not None:
        budget.update(ratio=shim["ratio"], ok=shim["ratio"] <= BUDGET_RATIO)
    results["budget"] = budget
    table = render(results, budget) + f"\n(total {results['wall_s']} s)"
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(results, sort_keys=True))
    else:
        print(table)
    if fatal:
        return 2
    return 0 if budget["ok"] and not results["failures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
