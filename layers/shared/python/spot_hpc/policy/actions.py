"""What a stage can run on, and a decision with the reason a user is shown."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    """What a stage runs on for the next interval (a str: JSON-friendly, compares equal to its value)."""

    IDLE = "idle"
    SPOT = "spot"
    ON_DEMAND = "on_demand"


@dataclass(frozen=True)
class Decision:
    """A policy's choice for one stage at one moment, with a short human-readable reason."""

    action: Action
    reason: str
