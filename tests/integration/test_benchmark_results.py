"""The checked-in benchmark results the README quotes are what the code measures now."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.integration

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _benchmark(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _calls_per_warning(figures: dict[str, Any]) -> dict[str, float]:
    """AWS calls by API per warning; the webhook secret is read once a cold start (and its cache's age), however many
    warnings, so it is left out."""
    return {
        api: calls / figures["warnings"]
        for api, calls in figures["aws_calls_by_api"].items()
        if not api.startswith("secretsmanager:")
    }


def test_the_interruption_burst_results_hold_the_aws_calls_the_handler_makes_now(tmp_path, capsys):
    # GIVEN the burst benchmark's checked-in run (the README quotes its AWS calls per job)
    recorded = json.loads((BENCHMARKS / "interruption_burst.json").read_text())
    # WHEN the benchmark runs now on a few warnings, half of them requeued to On-Demand as in that run
    out = tmp_path / "burst.json"
    assert _benchmark("interruption_burst").main(["--jobs", "4", "--json", str(out)]) == 0
    now = json.loads(out.read_text())
    # THEN each requeue's SubmitJob is counted (it has a client of its own), and every API is called as often per
    # warning as the checked-in run says: a handler that makes other calls needs `make bench-burst` run again
    assert now["actions"] == {"requeued": 2, "checkpoint": 2}
    assert now["aws_calls_by_api"]["batch:SubmitJob"] == now["actions"]["requeued"]
    assert _calls_per_warning(now) == _calls_per_warning(recorded)
    assert now["scans"] == recorded["scans"] == 0
    # AND its percentiles lie within the times measured
    assert now["handler_ms_p50"] <= now["handler_ms_p99"] <= now["handler_ms_max"]
