"""Helpers for policy tests: tick states and tiny jobs built by hand."""

from __future__ import annotations

import pytest
from spot_hpc.policy import Action, TickState


def tick_state(**overrides: object) -> TickState:
    values: dict[str, object] = {
        "tick": 0,
        "ticks": 20,
        "progress": 0,
        "work_ticks": 10,
        "changeover_ticks": 1,
        "running": Action.IDLE,
        "warmup_left": 0,
        "capacity": True,
        "tick_hours": 1.0,
        "od_price": 3.0,
        "spot_price": 1.0,
    }
    values.update(overrides)
    return TickState(**values)  # type: ignore[arg-type]


@pytest.fixture
def make_state():
    return tick_state
