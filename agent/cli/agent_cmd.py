"""``pullgate agent``: run the socket shim in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import grp
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from agent.cli.check import CheckInputError, load_policy_file
from agent.default_policy import default_policy
from agent.policy import Policy
from agent.shim import Shim, ShimConfig
from agent.sink import DecisionSink, StderrSubscriber
from agent.upstream import UpstreamError, default_listen_path, find_upstream, parse_unix_url

EXIT_CONFIG = 2


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "agent",
        help="run the Docker socket shim in the foreground",
        description=(
            "Listen on a Docker API socket, inspect every request that can bring an image "
            "onto this machine, and forward the rest to the real daemon untouched."
        ),
    )
    parser.add_argument("--policy", metavar="FILE", help="policy file (default: built-in)")
    parser.add_argument(
        "--listen",
        metavar="PATH",
        help="socket to listen on (default: /run/pullgate/docker.sock for root, "
        "$XDG_RUNTIME_DIR/pullgate/docker.sock otherwise)",
    )
    parser.add_argument(
        "--upstream",
        metavar="URL",
        help="the daemon, unix:///path (default: DOCKER_HOST, the docker context, "
        "/var/run/docker.sock, rootless and Docker Desktop sockets)",
    )
    parser.set_defaults(run=run)


def _socket_group() -> int | None:
    """Like dockerd: root's socket is group ``docker`` when that group exists."""
    if os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam("docker").gr_gid
    except KeyError:
        return None


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    prog = "pullgate agent"
    try:
        policy: Policy = load_policy_file(args.policy) if args.policy else default_policy()
        uid = os.geteuid()
        listen = Path(args.listen) if args.listen else default_listen_path(uid, os.environ)
        if args.upstream:
            upstream = parse_unix_url(args.upstream)
            source = "--upstream"
        else:
            choice = find_upstream(listen, os.environ, Path.home(), uid)
            upstream, source = choice.path, choice.source
    except (CheckInputError, UpstreamError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_CONFIG
    sink = DecisionSink()
    sink.subscribe(StderrSubscriber())
    group = _socket_group()
    config = ShimConfig(
        listen=listen,
        upstream=upstream,
        socket_mode=0o660 if group is not None else 0o600,
        socket_group=group,
    )
    shim = Shim(config, lambda: policy, sink)
    try:
        return _run_loop(_serve(shim, policy, started, source))
    except RuntimeError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1


def _run_loop(main: Any) -> int:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, plain asyncio otherwise
    except ImportError:
        result: int = asyncio.run(main)
        return result
    result = uvloop.run(main)
    return int(result)


async def _serve(shim: Shim, policy: Policy, started: float, source: str) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await shim.start()
    ready = time.monotonic() - started
    print(
        f"pullgate agent: ready in {ready * 1000:.0f} ms, listening on {shim.config.listen}, "
        f"upstream unix://{shim.config.upstream} ({source}), policy: {policy.label}. "
        f"Point docker at it: export DOCKER_HOST=unix://{shim.config.listen}",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    await shim.close()
    print("pullgate agent: stopped", file=sys.stderr, flush=True)
    return 0
