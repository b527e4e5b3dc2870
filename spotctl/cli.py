"""The `spotctl` command: one subcommand per module, each exposing `register(subparsers)`.

Subcommand modules keep heavy imports (moto, numpy, matplotlib) inside their run functions so that
`spotctl --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from collections.abc import Sequence

DESCRIPTION = (
    "Run the Spot HPC control plane offline: demo pipeline runs, events and handlers, policy simulations and "
    "benchmarks, checkpoint drills, and cost reports of runs."
)

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


def is_id(value: object) -> bool:
    """A JSON value that names a thing (a scenario, a run): a non-empty string or an integer. Null, a list or an object
    would be named by their Python text, and a bool is an int to Python."""
    return (isinstance(value, str) and value != "") or (isinstance(value, int) and not isinstance(value, bool))


def shown(value: object) -> str:
    """A value as an error message shows it: a float in at most 7 significant digits, a long integer by its length (it
    may be thousands of digits), anything else as JSON, cut short."""
    if isinstance(value, float):
        return f"{value:.7g}"
    if isinstance(value, int) and not isinstance(value, bool):
        digits = len(str(abs(value)))
        return str(value) if digits <= 15 else f"an integer of {digits} digits"
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def finite_float(text: str) -> float:
    """argparse type of every float option: float() also accepts nan and inf, which no option can use."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1: int() also accepts 0 and negative numbers."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spotctl", description=DESCRIPTION)
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
        code = int(args.func(args) or 0)
        # Flush here, not at exit, so that a reader that has gone away is noticed below.
        sys.stdout.flush()
        return code
    except ToolError as exc:
        print(f"spotctl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader stopped reading (`spotctl ... | head -1`): stop quietly. Python would report the unwritten
        # output again when it flushes stdout at exit, so stdout goes to devnull from here on.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run as `python -m spotctl.cli`, this file is the module __main__, and the commands' ToolError (spotctl.cli's) is
    # not this copy's: the one spotctl.cli catches them.
    from spotctl.cli import main as installed_main

    sys.exit(installed_main())
