"""The `spotctl` command: one subcommand per module, each exposing `register(subparsers)`.

Subcommand modules keep heavy imports (moto, numpy, matplotlib) inside their run functions so that
`spotctl --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that register subcommands; a module that is not there yet is skipped, never fatal.
SUBCOMMAND_MODULES = (
    "spotctl.commands.demo",
    "spotctl.commands.events",
    "spotctl.commands.bench",
    "spotctl.commands.simulate",
    "spotctl.commands.checkpoint_drill",
    "spotctl.commands.report",
)


class ToolError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spotctl", description=__doc__.splitlines()[0] if __doc__ else None)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ToolError as exc:
        print(f"spotctl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
