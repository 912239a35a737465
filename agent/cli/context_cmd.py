"""``pullgate context install|uninstall|status``: route the docker CLI through the shim.

On Windows the shim is the pipe the agent's service serves the caller
(``\\\\.\\pipe\\pullgate_docker_<their SID>``), and the context points at it with
``npipe://``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from agent.config.keys import Enforcement, effective_enforcement
from agent.config.parse import ConfigError
from agent.config.sources import load_managed_config
from agent.control.client import current_principal
from agent.platform.docker_context import (
    DEFAULT_NAME,
    ContextError,
    context_status,
    docker_config_dir,
    host_url,
    install_context,
    uninstall_context,
)
from agent.platform.paths import default_desktop_users_dir
from agent.platform.upstream import default_listen_path
from agent.platform.windows import shim_pipe

EXIT_OK = 0
EXIT_BYPASS = 1
EXIT_ERROR = 2


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "context",
        help="select a docker context that goes through the shim (install, uninstall, status)",
    )
    sub = parser.add_subparsers(dest="context_command", metavar="SUBCOMMAND", required=True)
    for name, help_text, run in (
        ("install", "create and select the docker context for the shim", run_install),
        ("uninstall", "select the previous context again and delete ours", run_uninstall),
        ("status", "which context is current; exit 1 if docker bypasses the shim", run_status),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--name", default=DEFAULT_NAME, help="context name (default: pullgate)")
        p.add_argument(
            "--listen",
            metavar="PATH",
            help="the shim's socket (default: the managed config's listen, else the agent's "
            "default)",
        )
        p.add_argument("--config", metavar="FILE", help="managed config file")
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(run=run)


def _listen(args: argparse.Namespace) -> Path:
    if args.listen:
        return Path(args.listen)
    if sys.platform == "win32":  # Docker Desktop mode only: the caller's own pipe
        return Path(shim_pipe(str(current_principal())))
    else:
        config = load_managed_config(json_path=Path(args.config) if args.config else None)
        system = effective_enforcement(config, platform=sys.platform, system=True)
        if system is Enforcement.DESKTOP:
            # The system agent serves each user their own endpoint (agent.daemon.desktop).
            users = config.desktop_users_dir if config is not None else None
            return (users or default_desktop_users_dir()) / str(os.geteuid()) / "docker.sock"
        if config is not None and config.listen is not None:
            return config.listen
        return default_listen_path(os.geteuid(), os.environ)


def _config_dir() -> Path:
    return docker_config_dir(os.environ, Path.home())


def run_install(args: argparse.Namespace) -> int:
    try:
        listen = _listen(args)
        change = install_context(_config_dir(), listen, args.name)
    except (ContextError, ConfigError) as e:
        print(f"pullgate context install: {e}", file=sys.stderr)
        return EXIT_ERROR
    verb = "selected" if change.changed else "already selected"
    print(
        f"docker context {change.name!r} ({host_url(listen)}) {verb}; previous context: "
        f"{change.previous or 'default'} (restored by `pullgate context uninstall`)"
    )
    if os.environ.get("DOCKER_HOST"):
        print(
            "note: DOCKER_HOST is set in this shell and overrides the context; unset it",
            file=sys.stderr,
        )
    return EXIT_OK


def run_uninstall(args: argparse.Namespace) -> int:
    try:
        change = uninstall_context(_config_dir(), args.name)
    except ContextError as e:
        print(f"pullgate context uninstall: {e}", file=sys.stderr)
        return EXIT_ERROR
    if change.changed:
        print(f"docker context {change.name!r} removed; current: {change.previous or 'default'}")
    else:
        print(f"docker context {change.name!r} was not installed; nothing to do")
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    try:
        listen = _listen(args)
        shim = host_url(listen)
        status = context_status(_config_dir(), listen, os.environ, args.name)
    except (ContextError, ConfigError) as e:
        print(f"pullgate context status: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(
            json.dumps(
                {
                    "current": status.current,
                    "source": status.source,
                    "endpoint": status.endpoint,
                    "through_shim": status.through_shim,
                    "installed": status.installed,
                    "shim": shim,
                }
            )
        )
    else:
        print(status.describe(listen))
        if not status.through_shim:
            fix = (
                "unset DOCKER_HOST"
                if status.source == "DOCKER_HOST"
                else ("run `pullgate context install`")
            )
            print(f"fix: {fix}", file=sys.stderr)
    return EXIT_OK if status.through_shim else EXIT_BYPASS
