"""A tiny trace on disk, and a scenario on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def tiny_trace(tmp_path: Path) -> Path:
    # 60-second raw ticks; a 4-node trace whose capacity comes and goes.
    values = ([4] * 30 + [2] * 10 + [0] * 20) * 4
    path = tmp_path / "traces" / "tiny_4node.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"metadata": {"gap_seconds": 60}, "data": values}))
    return path


@pytest.fixture
def scenario(tiny_trace: Path) -> dict:
    return {
        "id": "t1",
        "trace": "traces/tiny_4node.json",
        "nodes": 4,
        "tick_seconds": 300,
        "start_tick": 0,
        "compute_hours": 1.5,
        "deadline_hours": 3.0,
        "changeover_hours": 0.1,
        "od_price": 12.24,
        "spot_price": 3.67,
    }
