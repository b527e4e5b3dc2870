"""Benchmark scenarios: parsing, validation, and turning one into a simulated job."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spotctl.cli import ToolError, is_id, shown
from spotctl.files import read_json
from spotctl.policy_sim.simulator import Job, Stage
from spotctl.policy_sim.traces import (
    block_trace,
    finite_number,
    nearest_whole,
    resolve,
    ticks_to_cover,
    ticks_within,
)

REQUIRED_NUMBERS = (
    "nodes",
    "tick_seconds",
    "start_tick",
    "compute_hours",
    "deadline_hours",
    "changeover_hours",
    "od_price",
    "spot_price",
)

# USD per hour for a whole job: a thousand nodes of the dearest instance EC2 sells cost well under it. A price past it
# is a typo, whose costs would print hundreds of digits long or overflow to infinity.
MAX_PRICE_PER_HOUR = 1e6


class ScenarioError(ValueError):
    """A scenario that cannot be run; the benchmark reports it as error rows."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    compute_hours: float
    spot_allowed: bool = True


@dataclass(frozen=True)
class Scenario:
    id: str
    trace: str
    nodes: int
    tick_seconds: float
    start_tick: int
    compute_hours: float
    deadline_hours: float
    changeover_hours: float
    od_price: float
    spot_price: float
    advisor_bucket: int | None = None
    stages: tuple[StageSpec, ...] = ()

    @property
    def slack(self) -> float:
        """Deadline over compute: the slack class the results are grouped by."""
        return self.deadline_hours / self.compute_hours


def scenario_id(raw: Any, index: int) -> str:
    """A scenario's id, or `#index` (its place in the file) when it has none or one that is not an id (`is_id`):
    how rows and `simulate --id` name it."""
    return str(raw["id"]) if isinstance(raw, dict) and is_id(raw.get("id")) else f"#{index}"


def _number(value: Any, name: str) -> float:
    """A JSON number that is finite (json.loads also reads NaN and Infinity, and integers past the largest float; a
    bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{name} must be a number, got {value!r}")
    if not finite_number(value):
        raise ScenarioError(f"{name} must be a finite number, got {shown(value)}")
    return float(value)


def parse_scenario(raw: Any, index: int) -> Scenario:
    """Validate one scenario object; raise ScenarioError with a message naming the problem."""
    if not isinstance(raw, dict):
        raise ScenarioError("scenario is not an object")
    if "id" in raw and not is_id(raw["id"]):
        raise ScenarioError(f"id must be a non-empty string or an integer, got {raw['id']!r}")
    missing = [name for name in ("trace", *REQUIRED_NUMBERS) if name not in raw]
    if missing:
        raise ScenarioError(f"missing field(s): {', '.join(missing)}")
    numbers: dict[str, float] = {}
    for name in REQUIRED_NUMBERS:
        numbers[name] = _number(raw[name], name)
    for name in ("nodes", "tick_seconds", "compute_hours", "deadline_hours"):
        if numbers[name] <= 0:
            raise ScenarioError(f"{name} must be positive")
    for name in ("start_tick", "changeover_hours", "od_price", "spot_price"):
        if numbers[name] < 0:
            raise ScenarioError(f"{name} must not be negative")
    for name in ("od_price", "spot_price"):
        if numbers[name] > MAX_PRICE_PER_HOUR:
            raise ScenarioError(f"{name} must be at most {MAX_PRICE_PER_HOUR:,.0f} USD per hour")
    if not numbers["nodes"].is_integer() or not numbers["start_tick"].is_integer():
        raise ScenarioError("nodes and start_tick must be integers")
    if not isinstance(raw["trace"], str) or not raw["trace"]:
        raise ScenarioError("trace must be a path")
    bucket = raw.get("advisor_bucket")
    if bucket is not None and (isinstance(bucket, bool) or not isinstance(bucket, int) or not 0 <= bucket <= 4):
        raise ScenarioError("advisor_bucket must be an integer 0..4")
    listed = raw.get("stages")
    if listed is not None and not isinstance(listed, list):
        raise ScenarioError("stages must be a list of stages")
    stages = tuple(_parse_stage(stage) for stage in listed or ())
    # The timeline (and simulate's output) tells stages apart by name only: two of one name read as one stage.
    repeated = sorted(name for name, count in Counter(stage.name for stage in stages).items() if count > 1)
    if repeated:
        unnamed = " (a stage without a name is named 'stage')" if "stage" in repeated else ""
        raise ScenarioError(f"stage names must be unique; given more than once: {', '.join(repeated)}{unnamed}")
    compute = numbers["compute_hours"]
    if stages and abs(sum(stage.compute_hours for stage in stages) - compute) > 1e-6:
        raise ScenarioError("compute_hours must be the sum of the stages' compute_hours")
    return Scenario(
        id=scenario_id(raw, index),
        trace=raw["trace"],
        nodes=int(numbers["nodes"]),
        tick_seconds=numbers["tick_seconds"],
        start_tick=int(numbers["start_tick"]),
        compute_hours=compute,
        deadline_hours=numbers["deadline_hours"],
        changeover_hours=numbers["changeover_hours"],
        od_price=numbers["od_price"],
        spot_price=numbers["spot_price"],
        advisor_bucket=bucket,
        stages=stages,
    )


def _parse_stage(raw: Any) -> StageSpec:
    if not isinstance(raw, dict) or "compute_hours" not in raw:
        raise ScenarioError("a stage needs compute_hours")
    hours = _number(raw["compute_hours"], "a stage's compute_hours")
    if hours <= 0:
        raise ScenarioError("a stage's compute_hours must be a positive number")
    spot = raw.get("spot", True)
    if not isinstance(spot, bool):
        raise ScenarioError(f"a stage's spot must be true or false, got {spot!r}")
    name = raw.get("name", "stage")
    if not isinstance(name, str) or not name.strip():
        # A number or null would be shown by its Python text, and 1 and "1" would be two stages of one name.
        raise ScenarioError(f"a stage's name must be a non-empty string, got {name!r}")
    return StageSpec(name, hours, spot)


def build_job(scenario: Scenario, shared_dir: Path) -> Job:
    """The scenario's window of blocked capacity as a simulated job; ScenarioError when it does not fit the trace."""
    path = resolve(scenario.trace, shared_dir)
    try:
        blocked = block_trace(path, scenario.tick_seconds, scenario.nodes)
    except ToolError as exc:
        raise ScenarioError(str(exc)) from None
    h = blocked.tick_hours
    n = ticks_within(scenario.deadline_hours, h)
    if n <= 0:
        raise ScenarioError("deadline shorter than one tick")
    if scenario.start_tick + n > len(blocked.capacity):
        raise ScenarioError(
            f"window {scenario.start_tick}..{scenario.start_tick + n - 1} passes the end of the trace "
            f"({len(blocked.capacity)} ticks of {h * 60:g} min)"
        )
    specs = scenario.stages or (StageSpec("job", scenario.compute_hours),)
    stages = tuple(Stage(spec.name, ticks_to_cover(spec.compute_hours, h), spec.spot_allowed) for spec in specs)
    return Job(
        capacity=blocked.capacity[scenario.start_tick : scenario.start_tick + n],
        stages=stages,
        changeover_ticks=nearest_whole(scenario.changeover_hours / h),
        tick_hours=h,
        od_price=scenario.od_price,
        spot_price=scenario.spot_price,
    )


def load_scenarios(path: Path) -> list[Any]:
    """The raw scenario objects of a scenario file (each is validated when it is run); ids must be unique, since
    results are keyed by id."""
    document = read_json(path, finite=False)
    scenarios = document.get("scenarios") if isinstance(document, dict) else None
    if not isinstance(scenarios, list):
        raise ToolError(f'{path}: expected {{"scenarios": [...]}}')
    counts = Counter(scenario_id(raw, index) for index, raw in enumerate(scenarios))
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise ToolError(f"{path}: scenario ids must be unique; repeated: {', '.join(duplicates)}")
    return scenarios
