"""Cost and savings accounting of a pipeline run: pure functions, no AWS.

Billing model (EC2 Linux, which AWS Batch instances are): per-second billing with a 60-second minimum each
time an instance starts, and nothing for a Spot instance that EC2 interrupts within its first hour. An attempt's
`usd_per_hour` is the price of its capacity for all of its nodes, so an attempt's cost is
`usd_per_hour * billed_hours`. The run's cost is the sum over its attempts.

What the run "would have cost On-Demand" is each stage's uninterrupted compute at the On-Demand price of that
stage's nodes, summed over stages (`on_demand_only_hours`): measured where the run measured it (a stage whose
successful attempt did all its work), the stage's declared compute hours where it did not (the successful attempt
resumed from a checkpoint), and, for a stage that has not succeeded, the run time of its attempts so far (the same
work on On-Demand: an unfinished run's savings are so far, and a failed run's are on what it ran). What ran counts
whether or not it was billed: a Spot instance EC2 interrupted within its first hour costs nothing (for every attempt
that ran on it, the one it was taken from and those that ran there before), but the same work would have been paid for
On-Demand. Savings compare the two.

The functions return the run-report fields (see the run report contract in the design): `cost_usd` per attempt,
and `cost_usd`, `on_demand_only_cost_usd`, `savings_pct` per run (plus `savings_usd`, an added field).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Capacity = Literal["spot", "on-demand"]
CAPACITIES: tuple[Capacity, ...] = ("spot", "on-demand")

SECONDS_PER_HOUR = 3600.0
# EC2 Linux instances are billed per second, at least 60 seconds each time an instance starts.
MINIMUM_BILLED_SECONDS = 60
# Run reports keep hours to 6 decimals (3.6 ms): a duration is taken to the hundredth of a second before it is
# rounded up to the billed second, so a 2,640 s attempt reported as 0.033333 h -> 0.766667 h bills 2,640 s, not 2,641.
DURATION_SECOND_DECIMALS = 2
# Money is kept to the micro-dollar: enough for per-second prices, free of float noise in the ledger.
USD_DECIMALS = 6
PCT_DECIMALS = 2
# Tolerance when checking a stored figure against its recomputation (stored values are rounded).
CHECK_TOLERANCE_USD = 1e-4


@dataclass(frozen=True)
class Attempt:
    """One Batch job attempt of a stage, in hours of run time (hours since the run started).

    `stopped_hours` is None while the attempt is still running. An attempt that never got an instance
    (cancelled or failed while RUNNABLE) has `started_hours` None or equal to `stopped_hours`, and costs nothing.
    An ended array job's shards each ran on an instance of their own, for as long as they ran: `instance_seconds` is
    what EC2 billed them, at `usd_per_hour / nodes` each (the array's own times span its shards, and while it runs
    it is billed as all of them from its start), and `run_seconds` how long they ran, billed or not (`instance_seconds`
    leaves out a shard on an instance EC2 interrupted within its first hour, then or after the array ended; None:
    they are the same). An attempt whose Spot instance EC2 interrupted within the instance's first hour
    (`interrupted_in_first_hour`), while it ran or after it ended, costs nothing: AWS does not charge for such an
    instance.
    """

    capacity: Capacity
    nodes: int
    started_hours: float | None
    stopped_hours: float | None
    usd_per_hour: float
    instance_seconds: int | None = None
    interrupted_in_first_hour: bool = False
    run_seconds: int | None = None

    def __post_init__(self) -> None:
        if self.capacity not in CAPACITIES:
            raise ValueError(f"capacity must be one of {CAPACITIES}, got {self.capacity!r}")
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes}")
        if self.usd_per_hour < 0 or not math.isfinite(self.usd_per_hour):
            raise ValueError(f"usd_per_hour must be a finite non-negative number, got {self.usd_per_hour}")
        if (
            self.started_hours is not None
            and self.stopped_hours is not None
            and self.stopped_hours < self.started_hours
        ):
            raise ValueError("an attempt cannot stop before it started")


@dataclass(frozen=True)
class StagePlan:
    """What a stage needs on one uninterrupted On-Demand attempt: the base of `on_demand_only_cost_usd`."""

    name: str
    compute_hours: float
    on_demand_usd_per_hour: float  # for all of the stage's nodes
    # Of `compute_hours`, those an ended array's shards ran, over its nodes: each shard's seconds were rounded up to
    # the second (a minute at least) as EC2 bills them, so their average is not rounded up to a whole second again.
    shard_hours: float = 0.0

    def __post_init__(self) -> None:
        if self.compute_hours < 0 or self.on_demand_usd_per_hour < 0 or self.shard_hours < 0:
            raise ValueError(f"stage {self.name!r}: compute hours and price must be non-negative")


@dataclass(frozen=True)
class RunCost:
    """The settled figures of a run, as the run report and the ledger keep them."""

    cost_usd: float
    on_demand_only_cost_usd: float
    savings_usd: float
    savings_pct: float

    def as_report_fields(self) -> dict[str, float]:
        return {
            "cost_usd": self.cost_usd,
            "on_demand_only_cost_usd": self.on_demand_only_cost_usd,
            "savings_usd": self.savings_usd,
            "savings_pct": self.savings_pct,
        }


def round_usd(value: float) -> float:
    # A float even for a sum over nothing (an int 0 there): the report's money fields are JSON numbers with a point.
    return float(round(value, USD_DECIMALS))


def billed_seconds(started_hours: float | None, stopped_hours: float | None, now_hours: float | None = None) -> int:
    """Seconds EC2 bills for one attempt: its running time rounded up to the second, at least 60 s if it ran.

    A running attempt (`stopped_hours` None) is billed up to `now_hours`; without `now_hours` it bills nothing yet.
    """
    if started_hours is None:
        return 0
    end_hours = stopped_hours if stopped_hours is not None else now_hours
    if end_hours is None or end_hours <= started_hours:
        return 0
    # Round away float noise and the hours' rounding (0.5 h must be 1800 s, not 1801) before rounding up.
    seconds = math.ceil(round((end_hours - started_hours) * SECONDS_PER_HOUR, DURATION_SECOND_DECIMALS))
    return max(seconds, MINIMUM_BILLED_SECONDS)


def attempt_cost_usd(attempt: Attempt, now_hours: float | None = None) -> float:
    """What EC2 bills for the attempt (all of its nodes), so far when it is still running."""
    if attempt.interrupted_in_first_hour:
        return 0.0
    if attempt.instance_seconds is not None:
        return round_usd(attempt.usd_per_hour / attempt.nodes * attempt.instance_seconds / SECONDS_PER_HOUR)
    seconds = billed_seconds(attempt.started_hours, attempt.stopped_hours, now_hours)
    return round_usd(attempt.usd_per_hour * seconds / SECONDS_PER_HOUR)


def run_cost_usd(attempts: Iterable[Attempt], now_hours: float | None = None) -> float:
    """The run's cost: the sum of its attempts' costs (so far, for attempts still running at `now_hours`)."""
    return round_usd(sum(attempt_cost_usd(attempt, now_hours) for attempt in attempts))


def on_demand_only_cost_usd(stages: Iterable[StagePlan]) -> float:
    """What the same stages would have cost on On-Demand capacity without interruption (billed like any attempt).

    Each stage's cost is rounded to the micro-dollar before they are summed, as the run's cost sums its attempts'
    rounded costs: a run that ran each stage once on On-Demand, uninterrupted, costs its base to the micro-dollar
    and saves nothing, not a micro-dollar's 0.01 %."""
    return round_usd(
        sum(
            round_usd(_on_demand_only_seconds(stage) * stage.on_demand_usd_per_hour / SECONDS_PER_HOUR)
            for stage in stages
        )
    )


def _on_demand_only_seconds(stage: StagePlan) -> float:
    """The seconds a stage's base bills each of its nodes: its hours rounded up to the second, at least a minute,
    but for its shards' (`StagePlan.shard_hours`), billed already."""
    if stage.shard_hours <= 0:
        return billed_seconds(0.0, stage.compute_hours)
    rest = round((stage.compute_hours - stage.shard_hours) * SECONDS_PER_HOUR, DURATION_SECOND_DECIMALS)
    return max(stage.shard_hours * SECONDS_PER_HOUR + max(math.ceil(rest), 0), MINIMUM_BILLED_SECONDS)


def savings_pct(cost_usd: float, on_demand_only_usd: float) -> float:
    """Share of the On-Demand-only cost saved; negative when the run cost more (e.g. requeues after long Spot). To
    PCT_DECIMALS, but a share that is not nil or whole is never rounded to be so: a run that cost a little more than
    On-Demand would read as having saved 0 %, one that cost a little as having saved all."""
    if on_demand_only_usd <= 0:
        return 0.0
    share = (on_demand_only_usd - cost_usd) / on_demand_only_usd * 100.0
    shown, step = round(share, PCT_DECIMALS), 10.0**-PCT_DECIMALS
    if shown == 0 and share != 0:
        return math.copysign(step, share)
    if shown == 100 and share < 100:
        return round(100 - step, PCT_DECIMALS)
    return shown


def settle_run(attempts: Iterable[Attempt], stages: Iterable[StagePlan], now_hours: float | None = None) -> RunCost:
    """The run's cost, its On-Demand-only cost and the savings, from its attempts and its stages' plans."""
    cost = run_cost_usd(attempts, now_hours)
    on_demand_only = on_demand_only_cost_usd(stages)
    return RunCost(
        cost_usd=cost,
        on_demand_only_cost_usd=on_demand_only,
        savings_usd=round_usd(on_demand_only - cost),
        savings_pct=savings_pct(cost, on_demand_only),
    )


# --- Run reports (dicts of the run report contract) -------------------------------------------------------------


def attempt_from_report(attempt: Mapping[str, Any]) -> Attempt:
    """An `Attempt` from one attempt dict of a run report."""
    return Attempt(
        capacity=attempt["capacity"],
        nodes=int(attempt.get("nodes", 1)),
        started_hours=_optional_float(attempt.get("started_hours")),
        stopped_hours=_optional_float(attempt.get("stopped_hours")),
        usd_per_hour=float(attempt["usd_per_hour"]),
        instance_seconds=None if attempt.get("instance_seconds") is None else int(attempt["instance_seconds"]),
        interrupted_in_first_hour=attempt.get("interrupted_in_first_hour") is True,
        run_seconds=None if attempt.get("run_seconds") is None else int(attempt["run_seconds"]),
    )


def attempts_from_report(run_report: Mapping[str, Any]) -> list[Attempt]:
    return [attempt_from_report(attempt) for stage in run_report.get("stages", []) for attempt in stage["attempts"]]


def on_demand_only_hours(stage: Mapping[str, Any], as_of_hours: float | None = None) -> float:
    """The hours a stage of a run report counts for in `on_demand_only_cost_usd` (see the module's docstring).

    A declared estimate alone would credit a run with savings it did not make whenever a stage ran faster than
    declared (an uninterrupted On-Demand run would show them); the successful attempt's run time is what the stage
    took, unless it resumed from a checkpoint (then it did only the rest, and the declared hours stand)."""
    counted = _on_demand_only_attempts(stage, as_of_hours)
    if counted is None:
        return float(stage["compute_hours"])
    return math.fsum(_run_hours(attempt, as_of_hours) for attempt in counted)


def _on_demand_only_attempts(stage: Mapping[str, Any], as_of_hours: float | None) -> list[Attempt] | None:
    """The attempts whose run time a stage of a run report counts in `on_demand_only_hours`; None when it counts its
    declared compute hours."""
    attempts = [attempt_from_report(attempt) for attempt in stage["attempts"]]
    if stage.get("status") != "SUCCEEDED":
        return attempts
    succeeded = [
        (report, attempt)
        for report, attempt in zip(stage["attempts"], attempts, strict=True)
        if report.get("status") == "SUCCEEDED"
    ]
    if len(succeeded) == 1:
        report, attempt = succeeded[0]
        if not report.get("resumed_from_checkpoint") and _run_hours(attempt, as_of_hours) > 0:
            return [attempt]
    return None


def _shard_hours(stage: Mapping[str, Any], as_of_hours: float | None) -> float:
    """Of a stage's `on_demand_only_hours`, those its ended arrays' shards ran (`StagePlan.shard_hours`)."""
    counted = _on_demand_only_attempts(stage, as_of_hours) or []
    return math.fsum(_run_hours(attempt, as_of_hours) for attempt in counted if _shard_seconds(attempt) is not None)


def _shard_seconds(attempt: Attempt) -> int | None:
    """An ended array's shards' run seconds, the unbilled shards' included (an array reported before `run_seconds`
    was told them in `instance_seconds`); None for any other attempt."""
    return attempt.run_seconds if attempt.run_seconds is not None else attempt.instance_seconds


def _run_hours(attempt: Attempt, as_of_hours: float | None) -> float:
    """How long an attempt ran (so far, up to `as_of_hours`, when it still runs). An ended array's shards ran side
    by side, each for its own time: their instance time over the array's nodes (`_shard_seconds`)."""
    shard_seconds = _shard_seconds(attempt)
    if shard_seconds is not None:
        return shard_seconds / attempt.nodes / SECONDS_PER_HOUR
    end = attempt.stopped_hours if attempt.stopped_hours is not None else as_of_hours
    if attempt.started_hours is None or end is None:
        return 0.0
    return max(0.0, end - attempt.started_hours)


def stage_plans_from_report(run_report: Mapping[str, Any]) -> list[StagePlan] | None:
    """The stages' On-Demand-only plans when the report carries what they need (stage fields `compute_hours` and
    `on_demand_usd_per_hour`), hours by `on_demand_only_hours`. A report that does not say when it was made cannot
    give a running attempt's run time: its stages' `on_demand_only_hours` are taken as told. One written before
    stages told those hours counted every stage's declared compute hours."""
    as_of_hours = report_as_of_hours(run_report)
    plans: list[StagePlan] = []
    for stage in run_report.get("stages", []):
        if "compute_hours" not in stage or "on_demand_usd_per_hour" not in stage:
            return None
        shard_hours = 0.0
        if "on_demand_only_hours" not in stage:
            hours = float(stage["compute_hours"])
        elif as_of_hours is None:
            hours = float(stage["on_demand_only_hours"])
        else:
            hours, shard_hours = on_demand_only_hours(stage, as_of_hours), _shard_hours(stage, as_of_hours)
        plans.append(StagePlan(stage["name"], hours, float(stage["on_demand_usd_per_hour"]), shard_hours))
    return plans


def report_as_of_hours(run_report: Mapping[str, Any]) -> float | None:
    """When the report was made (hours since the run started), if it says."""
    as_of: Any = run_report.get("as_of_hours")
    return float(as_of) if _is_number(as_of) and math.isfinite(as_of) else None


def check_run_report_costs(run_report: Mapping[str, Any], tolerance_usd: float = CHECK_TOLERANCE_USD) -> list[str]:
    """Recompute a run report's costs from its attempts and prices; return what disagrees (empty when all agree).

    Checks every attempt's `cost_usd`, the run's `cost_usd` (their sum), and, when the stages carry their plans,
    `on_demand_only_cost_usd` and `savings_pct`. A summary without `stages` has nothing to check against. An attempt
    still running (started, not stopped) was billed up to when the report was made, `as_of_hours`. A report without
    it (made before it was written) does not say: that attempt's cost so far is taken as reported (a non-negative
    number) and counted in the run's sum.
    """
    problems: list[str] = []
    if "stages" not in run_report:
        return problems
    as_of_hours = report_as_of_hours(run_report)
    attempt_costs: list[float] = []
    for stage in run_report.get("stages", []):
        for index, attempt_dict in enumerate(stage["attempts"]):
            attempt = attempt_from_report(attempt_dict)
            reported = attempt_dict.get("cost_usd")
            running = attempt.started_hours is not None and attempt.stopped_hours is None
            if running and as_of_hours is None:
                if not (_is_number(reported) and math.isfinite(reported) and reported >= 0):
                    problems.append(f"stage {stage['name']} attempt {index}: cost_usd so far {reported} is not a cost")
                    continue
                attempt_costs.append(float(reported))
                continue
            expected = attempt_cost_usd(attempt, as_of_hours)
            attempt_costs.append(expected)
            if not _close(reported, expected, tolerance_usd):
                problems.append(f"stage {stage['name']} attempt {index}: cost_usd {reported} != {expected}")
    expected_run_cost = round_usd(sum(attempt_costs))
    if not _close(run_report.get("cost_usd"), expected_run_cost, tolerance_usd):
        problems.append(f"run cost_usd {run_report.get('cost_usd')} != sum of attempts {expected_run_cost}")
    plans = stage_plans_from_report(run_report)
    if plans is not None:
        expected_on_demand_only = on_demand_only_cost_usd(plans)
        if not _close(run_report.get("on_demand_only_cost_usd"), expected_on_demand_only, tolerance_usd):
            problems.append(
                f"on_demand_only_cost_usd {run_report.get('on_demand_only_cost_usd')} != {expected_on_demand_only}"
            )
    on_demand_only = run_report.get("on_demand_only_cost_usd")
    if isinstance(on_demand_only, int | float) and isinstance(run_report.get("cost_usd"), int | float):
        expected_pct = savings_pct(float(run_report["cost_usd"]), float(on_demand_only))
        if not _close(run_report.get("savings_pct"), expected_pct, 10**-PCT_DECIMALS):
            problems.append(f"savings_pct {run_report.get('savings_pct')} != {expected_pct}")
    return problems


def stage_wall_hours(attempts: Sequence[Attempt], as_of_hours: float | None = None) -> float | None:
    """From the first attempt's start to the last attempt's stop: how long the stage took, waits included. An attempt
    still running counts up to `as_of_hours`, as its bill does (a run's end stops jobs whose ends are told later)."""
    starts = [a.started_hours for a in attempts if a.started_hours is not None]
    stops = [a.stopped_hours for a in attempts if a.stopped_hours is not None]
    if as_of_hours is not None:
        stops += [as_of_hours for a in attempts if a.started_hours is not None and a.stopped_hours is None]
    if not starts or not stops:
        return None
    return max(0.0, max(stops) - min(starts))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _close(actual: Any, expected: float, tolerance: float) -> bool:
    return _is_number(actual) and abs(float(actual) - expected) <= tolerance
