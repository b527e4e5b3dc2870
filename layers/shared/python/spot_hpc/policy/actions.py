"""What a stage can run on, and a decision with the reason a user is shown."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(str, Enum):
    """What a stage runs on for the next interval."""

    IDLE = "idle"
    SPOT = "spot"
    ON_DEMAND = "on_demand"


@dataclass(frozen=True)
class Decision:
    """A policy's choice for one stage at one moment, with a short human-readable reason."""

    action: Action
    reason: str
