"""``pullgate agent``: parse the command line, load what it names, and run the agent
(assembled in ``agent.daemon.main``) in the foreground."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.cli.check import CheckInputError, load_policy_file
from agent.config.check import check_local_files
from agent.config.parse import ConfigError
from agent.config.sources import load_managed_config
from agent.daemon.handle import AgentHandle
from agent.daemon.main import EXIT_CONFIG, AgentOptions, process_age, run_agent
from agent.platform.paths import agent_log_file, own_output


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "agent",
        help="run the Docker socket shim in the foreground",
        description=(
            "Listen on a Docker API socket, inspect every request that can bring an image "
            "onto this machine, and forward the rest to the real daemon untouched."
        ),
    )
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help="enforce this policy file instead of the org policy (plain JSON, or a signed "
        "envelope verified with the managed config's trusted keys)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="managed config (default: /etc/pullgate/config.json, macOS managed "
        "preferences, or the Windows policy key)",
    )
    parser.add_argument("--state-dir", metavar="DIR", help="policy cache and status directory")
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
    parser.add_argument(
        "--control",
        metavar="PATH",
        help="control API socket (default: control.sock beside --listen; "
        "/run/pullgate/control.sock for root, $XDG_RUNTIME_DIR/pullgate/control.sock otherwise)",
    )
    parser.add_argument(
        "--audit-dir",
        metavar="DIR",
        help="audit log directory (default: the managed config's audit_dir, else "
        "/var/log/pullgate for root, the user's log directory otherwise)",
    )
    parser.add_argument(
        "--no-watch",
        action="store_true",
        help="do not watch for bypasses (the daemon's events, socket clients, config files)",
    )
    parser.add_argument(
        "--desktop-sessions",
        metavar="DIR",
        help="enforcement: desktop on Linux: where logind keeps users' runtime directories, "
        "one per logged-in user (default: /run/user)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, handle: AgentHandle | None = None) -> int:
    """``pullgate agent``; ``handle``: the Windows service's (``pullgate service``)."""
    started = time.monotonic() - process_age()
    if sys.platform == "darwin" and os.geteuid() == 0:  # launchd keeps no job's output
        own_output(agent_log_file(sys.platform) or Path(os.devnull))
    config_path = Path(args.config) if args.config else None
    try:
        config = load_managed_config(json_path=config_path)
        if config is not None:
            check_local_files(config)  # ca_bundle, trusted keys: fail now, naming the key
        local = load_policy_file(args.policy, config) if args.policy else None
    except (CheckInputError, ConfigError) as e:
        print(f"pullgate agent: {e}", file=sys.stderr)
        return EXIT_CONFIG
    options = AgentOptions(
        config=config,
        config_path=config_path,
        local_policy=local,
        local_policy_arg=args.policy,
        listen=Path(args.listen) if args.listen else None,
        upstream=args.upstream,
        control=Path(args.control) if args.control else None,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        audit_dir=Path(args.audit_dir) if args.audit_dir else None,
        watch=not args.no_watch,
        desktop_sessions=Path(args.desktop_sessions) if args.desktop_sessions else None,
    )
    if handle is not None:
        options = replace(options, handle=handle)
    return run_agent(options, started=started)
