"""Spot traces (data/spot-traces) and the benchmark's blocking of raw trace ticks into policy ticks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from spotctl.cli import ToolError, shown
from spotctl.files import read_json


@dataclass(frozen=True)
class RawTrace:
    """A trace file as published: capacity (0/1, or instances that could be had) every `gap_seconds`."""

    path: str
    gap_seconds: float
    values: tuple[int, ...]
    prices: tuple[float, ...] | None

    @property
    def hours(self) -> float:
        return len(self.values) * self.gap_seconds / 3600


@dataclass(frozen=True)
class BlockedTrace:
    """Capacity per policy tick for a job of `nodes` nodes: a tick has capacity only if every raw tick in it does."""

    capacity: tuple[bool, ...]
    tick_hours: float
    raw_ticks_per_tick: int


@lru_cache(maxsize=64)
def load_trace(path: str) -> RawTrace:
    """Read and check a trace file (cached: the benchmark reads the same traces many times). The one reader of the
    format: the simulator, the benchmark and the offline runtime's Batch emulator all take traces through it."""
    document = read_json(Path(path), finite=False)
    try:
        gap, data, prices = document["metadata"]["gap_seconds"], document["data"], document.get("prices")
    except (KeyError, TypeError, AttributeError) as exc:
        raise ToolError(f"{path}: not a Spot trace ({exc!r})") from None
    # Refused here rather than failing mid-run.
    if not finite_number(gap) or gap <= 0:
        raise ToolError(f"{path}: gap_seconds must be a positive finite number, not {shown(gap)}")
    if not isinstance(data, list) or not data:
        raise ToolError(f"{path}: data must be a non-empty list of capacities")
    for index, value in enumerate(data):
        if not whole_count(value):
            raise ToolError(f"{path}: capacity [{index}] is {value!r}: not a whole number >= 0")
    if prices and not (isinstance(prices, list) and all(finite_number(p) and p >= 0 for p in prices)):
        raise ToolError(f"{path}: prices must be a list of finite prices >= 0")
    counts = tuple(int(value) for value in data)
    return RawTrace(path, float(gap), counts, tuple(map(float, prices)) if prices else None)


def finite_number(value: object) -> bool:
    """A finite JSON number: json reads NaN and Infinity, a bool is an int to Python, and an integer past the largest
    float (JSON sets no limit) is infinite as the float it is used as (math.isfinite raises on one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def whole_count(value: Any) -> bool:
    """A capacity: a whole number >= 0. An integer of any size is one, as a count compares as it is (float() of one
    past the largest float would overflow); a float must be finite and whole."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value >= 0
    return finite_number(value) and value >= 0 and float(value).is_integer()


def ticks_per_block(tick_seconds: float, gap_seconds: float) -> int:
    return max(1, nearest_whole(tick_seconds / gap_seconds))


def nearest_whole(ratio: float) -> int:
    """`round` (ties to even), tolerant of float noise: 0.2975 / 0.085 is 3.4999999999999996 in floats, a tie."""
    return round(round(ratio, 9))


@lru_cache(maxsize=128)
def block_trace(path: str, tick_seconds: float, nodes: int) -> BlockedTrace:
    """Group raw ticks into blocks of `round(tick_seconds / gap)`; a trailing partial block is dropped."""
    raw = load_trace(path)
    size = ticks_per_block(tick_seconds, raw.gap_seconds)
    blocks = len(raw.values) // size
    capacity = tuple(all(value >= nodes for value in raw.values[i * size : (i + 1) * size]) for i in range(blocks))
    return BlockedTrace(capacity, size * raw.gap_seconds / 3600, size)


def ticks_within(hours: float, tick_hours: float) -> int:
    """Whole ticks that fit in `hours` (floor, tolerant of float noise such as 59.99999999)."""
    return math.floor(hours / tick_hours + 1e-9)


def ticks_to_cover(hours: float, tick_hours: float) -> int:
    """Ticks needed to cover `hours` > 0 (ceil, tolerant of float noise): at least one, however little the work (the
    tolerance would make work under a billionth of a tick none)."""
    return max(1, math.ceil(hours / tick_hours - 1e-9))


def resolve(path: str, base: Path) -> str:
    candidate = Path(path)
    return str(candidate if candidate.is_absolute() else base / candidate)
