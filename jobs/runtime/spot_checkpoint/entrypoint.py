"""The entry point every example job shares: run it on S3, turn bad input into a clear message and exit code 1."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from .store import CheckpointStoreUnavailable

EXIT_INPUT_ERROR = 1  # an application error: the control plane spends the stage's retry budget on it


class InputError(Exception):
    """The input or configuration cannot be used: an application error, not a reason to resubmit."""


def run_job(name: str, run: Callable[[Any, Mapping[str, str]], None]) -> int:
    """Runs `run(s3_client, environ)`; a job's `main()` is `return run_job("<name>", run)`."""
    import boto3  # the job image has it; imported here so the workload modules import without it
    from botocore.config import Config

    # botocore's defaults (60 s to connect, 60 s per read, each retried) let one hung call outlast the two-minute Spot
    # warning the checkpoint must be written in.
    s3 = boto3.client("s3", config=Config(connect_timeout=5, read_timeout=20))
    try:
        run(s3, os.environ)
    except (InputError, CheckpointStoreUnavailable) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    return 0
