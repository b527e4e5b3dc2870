"""The SLA guard's pass within its invocation's time: it starts no stage check too near its timeout, and the stages it
leaves are not the same ones pass after pass."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from spot_hpc.batch import Ec2Instance
from spot_hpc.guard import PASS_PERIOD, STAGE_CHECK_MARGIN_SECONDS, run_guard
from spot_hpc.ledger import AwaitedInterruption, Run, Stage


class LedgerOfVanishedRuns:
    """Active stages whose runs are gone (the cheapest check there is); records which runs the pass looked up."""

    def __init__(self, stages: list[Stage], open_runs: list[Run] | None = None) -> None:
        self.stages = stages
        self.runs = open_runs or []
        self.looked_up: list[str] = []

    def active_stages(self) -> Iterator[Stage]:
        return iter(self.stages)

    def open_runs(self) -> Iterator[Run]:
        return iter(self.runs)

    def awaited_interruptions(self, now: Any) -> Iterator[Any]:
        return iter([])  # no instance's interruption awaited

    def get_run(self, run_id: str) -> Run | None:
        self.looked_up.append(run_id)
        return None


class NoJobs:
    def describe(self, job_ids: list[str]) -> dict[str, Any]:
        return {}


class ExecutionsAsked:
    """Step Functions, recording which executions a pass asked about (each still running)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def execution_status(self, execution_arn: str) -> str:
        self.asked.append(execution_arn)
        return "RUNNING"


@pytest.fixture(autouse=True)
def no_notices_to_send(monkeypatch: pytest.MonkeyPatch) -> None:
    # Sent last in a pass, with their own time bounds (tests/unit/notifications/test_parked_notices.py and
    # test_notification_claims.py).
    monkeypatch.setattr("spot_hpc.guard.redeliver_parked_notices", lambda svc, remaining: {"sent": 0})
    monkeypatch.setattr("spot_hpc.guard.send_orphaned_notices", lambda svc, remaining, **_: ({"sent": 0}, []))


def _services(ledger: LedgerOfVanishedRuns, pipeline: ExecutionsAsked | None = None) -> Any:
    return SimpleNamespace(ledger=ledger, batch=NoJobs(), pipeline=pipeline)  # all the guard reaches on this path


def _stages(count: int) -> list[Stage]:
    return [Stage(f"run-{number}", "preprocess", 0, 1.0, True, 1) for number in range(count)]


def _seconds_left(per_check: float, total: float) -> Any:
    """The invocation's time left, falling by `per_check` each time it is asked."""
    left = [total + per_check]

    def remaining() -> float:
        left[0] -= per_check
        return left[0]

    return remaining


def test_a_pass_starts_no_stage_check_within_its_margin_of_the_timeout(utc_clock) -> None:
    # GIVEN five active stages, and an invocation whose time runs out after two checks
    ledger = LedgerOfVanishedRuns(_stages(5))
    remaining = _seconds_left(per_check=60.0, total=STAGE_CHECK_MARGIN_SECONDS + 60.0)

    # WHEN the guard runs a pass
    result = run_guard(_services(ledger), remaining_seconds=remaining)

    # THEN it checked two stages and says it left three to a later pass
    assert len(ledger.looked_up) == 2
    assert result["active_stages"] == 5 and result["deferred_stages"] == 3


def test_a_pass_out_of_time_leaves_the_open_runs_to_a_later_pass(utc_clock) -> None:
    # GIVEN three open runs without active stages, and an invocation whose time runs out after two looks
    runs = [Run(f"run-{n}", "b", "incoming/a.csv", "v", "2026-01-05T12:00:00Z", 6.0, "2026-01-05T06:00:00Z", {},
                execution_arn=f"arn:execution:{n}") for n in range(3)]  # fmt: skip
    pipeline = ExecutionsAsked()
    remaining = _seconds_left(per_check=60.0, total=STAGE_CHECK_MARGIN_SECONDS + 60.0)

    # WHEN the guard runs a pass
    run_guard(_services(LedgerOfVanishedRuns([], runs), pipeline), remaining_seconds=remaining)

    # THEN it asked after two runs' executions, and left the third
    assert len(set(pipeline.asked)) == 2 and set(pipeline.asked) < {f"arn:execution:{n}" for n in range(3)}


def test_the_stages_a_short_pass_leaves_are_not_the_same_pass_after_pass(utc_clock) -> None:
    # GIVEN five active stages, and passes that each have time for one check
    stages = _stages(5)
    checked: set[str] = set()
    orders = set()
    # WHEN the guard runs a pass every five minutes for an hour
    for _ in range(12):
        ledger = LedgerOfVanishedRuns(stages)
        run_guard(_services(ledger), remaining_seconds=_seconds_left(per_check=60.0, total=STAGE_CHECK_MARGIN_SECONDS))
        checked.update(ledger.looked_up)
        orders.add(tuple(ledger.looked_up))
        utc_clock.now += PASS_PERIOD
    # THEN every stage was checked in some pass
    assert checked == {stage.run_id for stage in stages}
    assert len(orders) > 1


def test_a_pass_with_time_checks_every_stage_and_a_retry_of_it_in_the_same_order(utc_clock) -> None:
    # GIVEN five active stages and plenty of time
    ledger = LedgerOfVanishedRuns(_stages(5))
    # WHEN the guard runs a pass, and the same pass again (a retry within its period)
    first = run_guard(_services(ledger), remaining_seconds=lambda: 280.0)
    once = list(ledger.looked_up)
    utc_clock.advance(seconds=30)
    run_guard(_services(ledger), remaining_seconds=lambda: 280.0)
    # THEN it checked every stage, deferred none, and the retry took them in the same order
    assert sorted(once) == sorted(f"run-{number}" for number in range(5)) and first["deferred_stages"] == 0
    assert ledger.looked_up[5:] == once


class LedgerAwaitingOneInterruption(LedgerOfVanishedRuns):
    """No active stage, and one instance whose warned interruption is due; records the instances settled."""

    def __init__(self) -> None:
        super().__init__([])
        self.settled: list[str] = []

    def awaited_interruptions(self, now: Any) -> Iterator[Any]:
        return iter([AwaitedInterruption("i-0aaaaaaaaaaaaaaa1", "2026-01-05T05:30:00Z")])

    def keep_unbilled_instance(self, instance_id: str) -> None:
        pass

    def jobs_on_instance(self, instance_id: str) -> list[Any]:
        return []

    def end_awaited_interruption(self, instance_id: str) -> None:
        self.settled.append(instance_id)


class InstanceTakenBack(NoJobs):
    def describe_instances(self, instance_ids: Any) -> dict[str, Ec2Instance]:
        launched = datetime(2026, 1, 5, 5, 0, tzinfo=UTC)
        return {
            i: Ec2Instance("c6i.4xlarge", "us-east-1a", launched, "terminated", "Server.SpotInstanceTermination")
            for i in instance_ids
        }


@pytest.mark.parametrize(("seconds_left", "settled"), [(STAGE_CHECK_MARGIN_SECONDS - 1, 0), (280.0, 1)])
def test_a_pass_settles_awaited_interruptions_only_outside_its_margin_of_the_timeout(
    utc_clock, seconds_left, settled
) -> None:
    # GIVEN an instance EC2 took back in its first hour, whose interruption is awaited, and an invocation with
    # `seconds_left`
    ledger = LedgerAwaitingOneInterruption()
    svc = SimpleNamespace(ledger=ledger, batch=InstanceTakenBack(), pipeline=None)

    # WHEN the guard runs a pass
    result = run_guard(svc, remaining_seconds=lambda: seconds_left)

    # THEN it settles the instance only with more than its margin left; within it, the instance waits for a later pass
    assert result["unbilled_instances"] == settled
    assert len(ledger.settled) == settled
