"""``python -m agent.config``: the docs page, MDM profiles, and a check of a config file."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.config.admx import render_adml, render_admx
from agent.config.check import check_local_files
from agent.config.parse import ConfigError
from agent.config.render import (
    encode_reg,
    render_markdown,
    render_mobileconfig,
    render_windows_reg,
)
from agent.config.sources import PREFERENCE_DOMAIN, load_config_file, load_json_file


def write_admx(directory: Path) -> None:
    """The administrative templates as a PolicyDefinitions directory holds them."""
    (directory / "en-US").mkdir(parents=True, exist_ok=True)
    (directory / "Pullgate.admx").write_text(render_admx(), encoding="utf-8", newline="\n")
    (directory / "en-US" / "Pullgate.adml").write_text(
        render_adml("en-US"), encoding="utf-8", newline="\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.config``: docs, MDM profiles and a config check for IT."""
    parser = argparse.ArgumentParser(
        prog="python -m agent.config",
        description="Generate the managed-config docs and MDM profiles, or check a config.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print docs/config.md")
    action.add_argument(
        "--mobileconfig", metavar="FILE.json", help="print a .mobileconfig for these settings"
    )
    action.add_argument("--reg", metavar="FILE.json", help="print a .reg file (UTF-16)")
    action.add_argument(
        "--check", metavar="FILE", help="validate a JSON file, plist or .mobileconfig"
    )
    action.add_argument(
        "--admx",
        metavar="DIR",
        help="write DIR/Pullgate.admx and DIR/en-US/Pullgate.adml (Group Policy, Intune)",
    )
    parser.add_argument("--identifier", default=PREFERENCE_DOMAIN, help="profile identifier")
    parser.add_argument("--uuid-seed", help="seed for the profile's UUIDs")
    parser.add_argument(
        "--team-id",
        metavar="ID",
        help="with --mobileconfig: the Developer ID team that signed the pkg; adds managed "
        "login items so users cannot switch off the agent and the tray (macOS 13+)",
    )
    args = parser.parse_args(argv)
    if args.team_id is not None and not args.mobileconfig:
        parser.error("--team-id goes with --mobileconfig")
    try:
        if args.markdown:
            sys.stdout.write(render_markdown())
        elif args.admx:
            write_admx(Path(args.admx))
        elif args.check:
            config = load_config_file(Path(args.check))
            check_local_files(config)
            print(f"{args.check}: ok ({len(config.set_keys)} keys set; files checked here)")
        else:
            path = Path(args.mobileconfig or args.reg)
            load_json_file(path)  # the same strict checks the agent applies
            values = json.loads(path.read_bytes())
            if args.mobileconfig:
                out = render_mobileconfig(
                    values,
                    identifier=args.identifier,
                    uuid_seed=args.uuid_seed,
                    team_id=args.team_id,
                )
            else:
                out = encode_reg(render_windows_reg(values))
            sys.stdout.buffer.write(out)
    except ConfigError as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
