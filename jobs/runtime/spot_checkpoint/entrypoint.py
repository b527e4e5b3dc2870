"""The entry point every example job shares: run it on S3, turn bad input into a clear message and exit code 1."""

from __future__ import annotations

import os
import string
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .csvfields import ascii_whole_number, csv_number
from .errors import InputError
from .store import CheckpointStoreUnavailable
from .watch import sigterm_recorded

T = TypeVar("T", int, float)
D = TypeVar("D")  # a default: a number, or None for "not given"

EXIT_INPUT_ERROR = 1  # an application error: the control plane spends the stage's retry budget on it


def whole_number(environ: Mapping[str, str], name: str, default: D, minimum: int = 1) -> int | D:
    """A whole-number setting of the job from its environment, `default` when unset (None: "not given"); an
    :class:`InputError` naming it when it is not ASCII digits (int() also takes ``1_0`` and the digits of any script)
    of at least `minimum` (a batch size of 0 would loop for ever, a word would crash)."""
    return _setting(
        environ,
        name,
        default,
        ascii_whole_number,
        lambda value: value >= minimum,
        f"a whole number of at least {minimum}",
    )


def fraction(environ: Mapping[str, str], name: str, default: D) -> float | D:
    """A setting between 0 (excluded) and 1 from the job's environment, `default` when unset (None: "not given"); an
    :class:`InputError` naming it otherwise: a number is plain ASCII decimal, as in a CSV field (:func:`csv_number`;
    float() also takes ``0_5``, the digits of any script and NaN)."""
    return _setting(environ, name, default, csv_number, lambda value: 0.0 < value <= 1.0, "a number in (0, 1]")


def positive_number(environ: Mapping[str, str], name: str, default: D, *, zero_allowed: bool = False) -> float | D:
    """A setting above 0 (or of 0 too, `zero_allowed`) from the job's environment, a time in seconds say, `default`
    when unset (None: "not given"); an :class:`InputError` naming it otherwise: a number is plain ASCII decimal, as
    in a CSV field (:func:`csv_number`; float() also takes ``1_0``, the digits of any script, NaN and infinity)."""
    if zero_allowed:
        return _setting(environ, name, default, csv_number, lambda value: value >= 0.0, "a number of at least 0")
    return _setting(environ, name, default, csv_number, lambda value: value > 0.0, "a number above 0")


def number_between(environ: Mapping[str, str], name: str, default: D, low: float, high: float) -> float | D:
    """A setting from `low` to `high` from the job's environment, `default` when unset; an :class:`InputError` naming
    it otherwise, a number read as :func:`positive_number` reads it."""
    return _setting(
        environ, name, default, csv_number, lambda value: low <= value <= high, f"a number from {low:g} to {high:g}"
    )


def _setting(
    environ: Mapping[str, str],
    name: str,
    default: D,
    parse: Callable[[str], T],
    valid: Callable[[T], bool],
    expected: str,
) -> T | D:
    # ASCII whitespace only around it (a trailing line feed, say): a no-break space is no part of a plain number.
    raw = environ.get(name, "").strip(string.whitespace)
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise InputError(f"environment variable {name} must be {expected}, not {raw!r}") from None
    if not valid(value):
        raise InputError(f"environment variable {name} must be {expected}, not {raw!r}")
    return value


def run_job(name: str, run: Callable[[Any, Mapping[str, str]], None]) -> int:
    """Runs `run(s3_client, environ)`; a job's `main()` is `return run_job("<name>", run)`."""
    # First of all: a SIGTERM sent before the job starts its CheckpointedJob (while boto3 loads, or the job reads its
    # settings) must reach the job's watcher (it stops the job as it starts), not be lost.
    with sigterm_recorded():
        import boto3  # the job image has it; imported here so the workload modules import without it
        from botocore.config import Config

        # botocore's defaults (60 s to connect, 60 s per read, each retried) let one hung call outlast the two-minute
        # Spot warning the checkpoint must be written in.
        s3 = boto3.client("s3", config=Config(connect_timeout=5, read_timeout=20))
        try:
            run(s3, os.environ)
        except (InputError, CheckpointStoreUnavailable) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return EXIT_INPUT_ERROR
        return 0
