"""What judging container settings (``containers.host_access``) costs a ``docker create``.

``python -m bench.containers [--creates N]``: a private dockerd and registry
(bench.realdocker), one agent on the built-in policy (``host_access: deny``), and N
sequential ``POST /containers/create`` of a local ``alpine`` per case, each container
removed after (directly, not timed); shim and direct requests alternate. Cases: no host
settings; three binds of project directories (each resolved off the event loop, plus the
daemon's data root from ``/info``, cached 60 s); a refused ``-v /:/host``; and a start of a
container with three binds (judged again through the shim: its settings asked of the
daemon). p50/p90 in milliseconds, direct to dockerd and through the shim in the same run.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.realdocker import DockerEnv, docker, seed_image, start_docker_env, stop_docker_env
from bench.shim import read_response, start_agent, unix_connect


def create(path: Path, body: bytes) -> tuple[int, float, str]:
    """One create on a new connection: (status, seconds, container id or '')."""
    started = time.perf_counter()
    with unix_connect(path) as sock:
        head = (
            "POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        status, answer = read_response(sock)
    elapsed = time.perf_counter() - started
    if status not in (201, 403):
        print(f"answer {status}: {answer[:300]!r}", file=sys.stderr)
    ident = ""
    if status == 201:
        ident = json.loads(answer)["Id"]
    return status, elapsed, ident


def start(path: Path, ident: str) -> float:
    """``POST /containers/{id}/start`` on a new connection: seconds to the 204. Through
    the shim this is judged again (the daemon asked for the container's settings)."""
    started = time.perf_counter()
    with unix_connect(path) as sock:
        sock.sendall(
            f"POST /v1.41/containers/{ident}/start HTTP/1.1\r\nHost: docker\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:  # a 204 has a head only (no Content-Length)
            chunk = sock.recv(65536)
            if not chunk:
                break
            head += chunk
    if not head.startswith(b"HTTP/1.1 204"):
        raise RuntimeError(f"start answered {head[:300]!r}")
    return time.perf_counter() - started


def measure_starts(env: DockerEnv, shim: Path, body: bytes, count: int) -> list[dict[str, float]]:
    """Containers made directly, started through the shim and directly in turn."""
    times: dict[Path, list[float]] = {shim: [], env.socket_path: []}
    for _ in range(count):
        for path in (shim, env.socket_path):
            _status, _elapsed, ident = create(env.socket_path, body)
            times[path].append(start(path, ident) * 1000)
            remove(env, ident)
    return [_summary(times[shim]), _summary(times[env.socket_path])]


def remove(env: DockerEnv, ident: str) -> None:
    docker(env, "rm", "--force", ident)


def _summary(times: list[float]) -> dict[str, float]:
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 2),
        "p90_ms": round(times[int(len(times) * 0.9) - 1], 2),
    }


def measure(
    env: DockerEnv, shim: Path, body: bytes, count: int, expect: int, *, direct: bool
) -> tuple[dict[str, float], dict[str, float] | None]:
    """Shim and direct creates interleaved, so that drift in the machine hits both."""
    times: dict[Path, list[float]] = {shim: [], env.socket_path: []}
    targets = [(shim, expect)] + ([(env.socket_path, 201)] if direct else [])
    for _ in range(count):
        for path, wanted in targets:
            status, elapsed, ident = create(path, body)
            if status != wanted:
                raise RuntimeError(f"create answered {status}, expected {wanted}")
            times[path].append(elapsed * 1000)
            if ident:
                remove(env, ident)
    return _summary(times[shim]), _summary(times[env.socket_path]) if direct else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=60)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pgbench-containers-") as tmp:
        work = Path(tmp)
        env = start_docker_env(work / "docker")
        agent = None
        try:
            seed_image(env, "alpine")
            docker(env, "pull", "-q", "alpine")
            agent = start_agent(work, "agent", env.socket_path)
            projects = []
            for i in range(3):
                project = work / f"project{i}"
                project.mkdir()
                projects.append(f"{project}:/src{i}")
            cases: list[tuple[str, dict[str, Any], int, bool]] = [
                ("no host settings", {"NetworkMode": "none"}, 201, True),
                ("3 project binds", {"NetworkMode": "none", "Binds": projects}, 201, True),
                ("-v /:/host (refused)", {"NetworkMode": "none", "Binds": ["/:/host"]}, 403, False),
            ]
            rows: list[dict[str, Any]] = []
            for name, host, status, direct_too in cases:
                body = json.dumps({"Image": "alpine", "Cmd": ["true"], "HostConfig": host})
                shim, direct = measure(
                    env, agent.socket_path, body.encode(), args.creates, status, direct=direct_too
                )
                rows.append({"case": name, "shim": shim, "direct": direct})
            body = json.dumps(
                {
                    "Image": "alpine",
                    "Cmd": ["true"],
                    "HostConfig": {"NetworkMode": "none", "Binds": projects},
                }
            )
            shim_start, direct_start = measure_starts(
                env, agent.socket_path, body.encode(), args.creates
            )
            rows.append(
                {"case": "start, 3 project binds", "shim": shim_start, "direct": direct_start}
            )
            result = {
                "creates_per_case": args.creates,
                "agent_cpu_s": round(agent.cpu_s(), 2),
                "rows": rows,
            }
            json.dump(result, sys.stdout, indent=1)
            print()
            print(f"\n| case | direct p50 / p90 | shim p50 / p90 | ({args.creates} creates each)")
            print("|---|---|---|")
            for row in rows:
                d = row["direct"]
                s = row["shim"]
                direct_text = f"{d['p50_ms']} / {d['p90_ms']} ms" if d else "—"
                print(f"| {row['case']} | {direct_text} | {s['p50_ms']} / {s['p90_ms']} ms |")
        finally:
            if agent is not None:
                agent.stop()
            stop_docker_env(env)
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    raise SystemExit(main())
