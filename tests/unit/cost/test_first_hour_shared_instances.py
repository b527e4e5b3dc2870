"""AWS charges nothing for a Spot instance that EC2 interrupts within its first hour, whichever jobs ran on it: Batch
runs one job after another on an instance, so the attempts that ran there before the one it was taken from (of this
run or of another) are not billed for their time on it either, whichever end is told first, however often."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sample_events import load_event
from spot_hpc.batch import Ec2Instance
from spot_hpc.clock import format_time
from spot_hpc.cost import check_run_report_costs
from spot_hpc.events import BatchJobDetail
from spot_hpc.first_hour import AWAITED_FOR, confirm_interruptions
from spot_hpc.interruptions import SIGNAL_KEPT_FOR, on_spot_signal
from spot_hpc.job_events import apply_job_state
from spot_hpc.ledger import (
    CANCEL_REQUEUE,
    UNPROCESSED_TRIES,
    Attempt,
    InstanceSignal,
    JobRef,
    Ledger,
    LedgerContended,
    Run,
    Stage,
)
from spot_hpc.outcome import run_report

REUSED = "i-0aaaaaaaaaaaaaaa1"  # the instance EC2 interrupts within its first hour
OTHER = "i-0bbbbbbbbbbbbbbb2"
THIRD = "i-0ccccccccccccccc3"
# Spot of one node by type, and On-Demand of one node of any.
SPOT_USD_PER_HOUR = {"c6i.4xlarge": 0.60, "m6i.4xlarge": 1.00}
ON_DEMAND_USD_PER_HOUR = 1.20
CONTAINER_EXITED = "Essential container in task exited"
ACCOUNT = "123456789012"
SPOT_TERMINATION = "Server.SpotInstanceTermination"  # EC2's reason for an instance it took back


def _arn(instance_id: str) -> str:
    return f"arn:aws:ecs:us-east-1:123456789012:container-instance/spot-hpc-spot/{instance_id}"


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


class Instances:
    """ECS and EC2 as they tell of the instances jobs ran on, each launched when the test says, and Batch of an
    array's shards. `forgotten`: EC2 no longer describes them (it does for about an hour after they terminated)."""

    def __init__(self) -> None:
        self.launched: dict[str, tuple[str, datetime]] = {}
        self.shards: dict[str, list[dict[str, Any]]] = {}
        self.forgotten = False
        # EC2's state of an instance and the code of its reason, where not "taken back by EC2" (the default).
        self.states: dict[str, tuple[str, str]] = {}
        self.described: list[list[str]] = []  # the instance ids of each DescribeInstances call

    def launch(self, instance_id: str, at: datetime, instance_type: str = "c6i.4xlarge") -> None:
        self.launched[instance_id] = (instance_type, at)

    def instances_of(self, arns: Any) -> dict[str, str]:
        named = {arn: arn.rsplit("/", 1)[-1] for arn in arns}
        return {arn: instance_id for arn, instance_id in named.items() if instance_id in self.launched}

    def instance_ids(self, arns: Any) -> list[str]:
        return list(self.instances_of(arns).values())

    def describe_instances(self, instance_ids: Any) -> dict[str, Ec2Instance]:
        instance_ids = list(instance_ids)
        self.described.append(sorted(instance_ids))
        if self.forgotten:
            return {}
        known = {i: self.launched[i] for i in instance_ids if i in self.launched}
        return {
            i: Ec2Instance(kind, "us-east-1b", launched, *self.states.get(i, ("terminated", SPOT_TERMINATION)))
            for i, (kind, launched) in known.items()
        }

    def array_children(self, array_job_id: str, *statuses: str) -> list[dict[str, Any]]:
        return [shard for shard in self.shards.get(array_job_id, []) if shard["status"] in statuses]


class Prices:
    """Spot by instance type, On-Demand at one price."""

    def usd_per_hour(self, instance_type: str, region: str, capacity: str, nodes: int = 1, **_: Any) -> float:
        return (SPOT_USD_PER_HOUR[instance_type] if capacity == "spot" else ON_DEMAND_USD_PER_HOUR) * nodes


class Plane:
    """The Batch handler's services on the test's ledger, and the story of the instances' jobs told to it."""

    def __init__(self, ledger: Ledger, clock: Any) -> None:
        self.ledger = ledger
        self.clock = clock
        self.launched_at = clock.now  # of REUSED: its first hour runs to an hour after this
        settings = SimpleNamespace(
            region="us-east-1", changeover_hours=0.25, spot_interruption_bucket=4, spot_job_queue="spot-queue"
        )
        self.instances = Instances()
        self.svc = SimpleNamespace(
            settings=settings, ledger=ledger, batch=self.instances, prices=Prices(), pipeline=None, s3=None
        )
        for instance_id in (REUSED, OTHER, THIRD):
            self.instances.launch(instance_id, self.launched_at)

    def minutes(self, minutes: float) -> datetime:
        """So many minutes after REUSED was launched."""
        return self.launched_at + timedelta(minutes=minutes)

    def tell(self, at_minutes: float, detail: dict[str, Any]) -> dict[str, Any]:
        self.clock.now = self.minutes(at_minutes)
        return apply_job_state(self.svc, BatchJobDetail.model_validate(detail))  # type: ignore[arg-type]

    def place(self, run_id: str, stage: str, job_id: str, at_minutes: float, nodes: int = 1) -> None:
        """A run of one stage (half an hour declared), its Spot job placed at the first Spot type's price."""
        started = format_time(self.minutes(at_minutes))
        deadline = format_time(self.minutes(at_minutes + 12 * 60))
        self.ledger.create_run(
            Run(run_id, "ingest", f"incoming/{run_id}.csv", "v1", deadline, 12.0, started, {}),
            [Stage(run_id, stage, 0, 0.5, True, nodes, on_demand_usd_per_hour=ON_DEMAND_USD_PER_HOUR * nodes)],
        )
        self.ledger.claim_attempt(run_id, stage, 0)
        price = SPOT_USD_PER_HOUR["c6i.4xlarge"] * nodes
        self.ledger.record_attempt(Attempt(run_id, stage, 1, job_id, "spot-queue", "spot", nodes, started, price))

    def job_ran(self, run_id: str, job_id: str, instance_id: str, start: float, stop: float | None) -> None:
        """A single Spot job placed two minutes before it started on the instance, that ended (succeeded) at `stop`
        (None: its end is not told yet)."""
        self.place(run_id, "preprocess", job_id, start - 2)
        ran = {"jobId": job_id, "jobName": job_id, "jobQueue": "spot-queue", "startedAt": _ms(self.minutes(start))}
        self.tell(start, {**ran, "status": "RUNNING", "container": {"containerInstanceArn": _arn(instance_id)}})
        if stop is not None:
            self.job_ended(job_id, instance_id, start, stop)

    def job_ended(self, job_id: str, instance_id: str, start: float, stop: float, told_at: float | None = None) -> None:
        ended = {"jobId": job_id, "jobName": job_id, "jobQueue": "spot-queue", "status": "SUCCEEDED"}
        times = {"startedAt": _ms(self.minutes(start)), "stoppedAt": _ms(self.minutes(stop))}
        container = {"containerInstanceArn": _arn(instance_id), "exitCode": 0}
        detail = {**ended, **times, "statusReason": CONTAINER_EXITED, "container": container}
        self.tell(stop if told_at is None else told_at, detail)

    def array_ran(
        self, run_id: str, job_id: str, shards: dict[str, str], start: float, stop: float, start_lost: str = ""
    ) -> None:
        """An array of a shard on each instance (with its type), all running from `start` to `stop`; the array's own
        end is told by `array_ended`. The start of the shard on `start_lost` is never told."""
        self.place(run_id, "hpc", job_id, start - 2, nodes=len(shards))
        self.instances.shards[job_id] = []
        for index, (instance_id, instance_type) in enumerate(shards.items()):
            self.instances.launch(instance_id, self.launched_at, instance_type)
            shard = {
                "jobId": f"{job_id}:{index}",
                "jobName": job_id,
                "jobQueue": "spot-queue",
                "startedAt": _ms(self.minutes(start)),
                "container": {"containerInstanceArn": _arn(instance_id)},
            }
            if instance_id != start_lost:
                self.tell(start, {**shard, "status": "RUNNING"})
            self.instances.shards[job_id].append({**shard, "status": "SUCCEEDED", "stoppedAt": _ms(self.minutes(stop))})

    def array_ended(self, job_id: str, at: float) -> None:
        shards = self.instances.shards[job_id]
        summary: dict[str, int] = {}
        for shard in shards:
            summary[shard["status"]] = summary.get(shard["status"], 0) + 1
        array = {"size": len(shards), "statusSummary": summary}
        status = "FAILED" if "FAILED" in summary else "SUCCEEDED"
        ended = {"jobId": job_id, "jobName": job_id, "jobQueue": "spot-queue", "status": status}
        self.tell(at, {**ended, "stoppedAt": _ms(self.minutes(at)), "arrayProperties": array})

    def reclaimed_in_first_hour(self, run_id: str, job_id: str, instance_id: str, start: float) -> dict[str, Any]:
        """A Spot job of another run started on the instance, warned 20 minutes later (still in the instance's first
        hour): the warning moved its stage to On-Demand (the job marked cancelled, the next attempt claimed), and
        EC2 interrupted the instance two minutes after the warning. Returns what its end's handler answered."""
        self.job_ran(run_id, job_id, instance_id, start, None)
        warned = self.minutes(start + 20)
        kept = InstanceSignal(instance_id, "interruption warning", warning=True, signalled_at=format_time(warned))
        self.ledger.keep_instance_signal(kept, f"warning-{instance_id}", SIGNAL_KEPT_FOR)
        self.ledger.cancel_attempt(run_id, "preprocess", 1, CANCEL_REQUEUE)
        self.ledger.claim_attempt(run_id, "preprocess", 1)
        return self.reclaim_told(job_id, instance_id, start)

    def reclaim_told(self, job_id: str, instance_id: str, start: float) -> dict[str, Any]:
        ended = {"jobId": job_id, "jobName": job_id, "jobQueue": "spot-queue", "status": "FAILED"}
        times = {"startedAt": _ms(self.minutes(start)), "stoppedAt": _ms(self.minutes(start + 22))}
        reason = f"Host EC2 (instance {instance_id}) terminated."
        container = {"containerInstanceArn": _arn(instance_id)}
        return self.tell(start + 22, {**ended, **times, "statusReason": reason, "container": container})

    def warned(self, instance_id: str, at_minutes: float) -> dict[str, Any]:
        """EC2's interruption warning for the instance, handled by the Spot signal handler; returns its answer."""
        self.clock.now = self.minutes(at_minutes)
        event = load_event("spot_interruption_warning", **{"instance-id": instance_id})
        event["time"] = format_time(self.clock.now)
        return on_spot_signal(self.svc, event, ACCOUNT)  # type: ignore[arg-type]

    def report(self, run_id: str) -> dict[str, Any]:
        run = self.ledger.get_run(run_id)
        assert run is not None
        return run_report(self.svc, run)  # type: ignore[arg-type]


def _figures(report: dict[str, Any]) -> tuple[float, float, float]:
    """The first attempt's cost, the run's, and its savings in percent."""
    attempt = report["stages"][0]["attempts"][0]
    return attempt["cost_usd"], report["cost_usd"], report["savings_pct"]


def test_a_job_that_ran_earlier_on_an_instance_interrupted_in_its_first_hour_is_not_billed(ledger, utc_clock):
    # GIVEN run-1's Spot job, 24 minutes on an instance at $0.60 an hour ($0.24, against $0.48 On-Demand: 50% saved),
    # that succeeded and settled its run's stage; and another run's job on another instance
    plane = Plane(ledger, utc_clock)
    plane.job_ran("run-1", "job-a", REUSED, start=1, stop=25)
    plane.job_ran("run-3", "job-c", OTHER, start=1, stop=25)
    before = _figures(plane.report("run-1"))
    # WHEN run-2's job, which Batch placed on the same instance after it, loses it to EC2 within its first hour
    answer = plane.reclaimed_in_first_hour("run-2", "job-b", REUSED, start=28)
    # THEN the earlier job is not billed either: run-1's report (read after) tells it cost nothing, and saved all
    after = _figures(plane.report("run-1"))
    assert before == (0.24, 0.24, 50.0)
    assert after == (0.0, 0.0, 100.0)
    assert plane.report("run-1")["stages"][0]["attempts"][0]["interrupted_in_first_hour"] is True
    assert check_run_report_costs(plane.report("run-1")) == []
    # AND the reclaimed job itself costs nothing, as before, and the job on the other instance is billed as it was
    assert answer["reason"] == "superseded attempt"
    assert _figures(plane.report("run-2"))[0] == 0.0
    assert _figures(plane.report("run-3")) == before


@pytest.mark.parametrize("deliveries", [1, 2])
def test_an_arrays_shard_that_ran_on_the_instance_is_taken_out_of_its_bill_once(ledger, utc_clock, deliveries):
    # GIVEN an array of three half-hour shards that succeeded: one on the instance EC2 will interrupt (a c6i.4xlarge
    # at $0.60), two on m6i.4xlarge instances at $1.00 ($1.30 in all, against $1.80 On-Demand)
    plane = Plane(ledger, utc_clock)
    shards = {REUSED: "c6i.4xlarge", OTHER: "m6i.4xlarge", THIRD: "m6i.4xlarge"}
    plane.array_ran("run-1", "array-1", shards, start=1, stop=31)
    plane.array_ended("array-1", at=32)
    before = _figures(plane.report("run-1"))
    # WHEN another run's job on that instance is reclaimed within the instance's first hour, its end told
    # `deliveries` times (EventBridge delivers at least once)
    plane.reclaimed_in_first_hour("run-2", "job-b", REUSED, start=33)
    for _ in range(deliveries - 1):
        plane.reclaim_told("job-b", REUSED, start=33)
    # THEN the array is billed for its two other shards alone, at their own price, once however often it was told
    report = plane.report("run-1")
    array = report["stages"][0]["attempts"][0]
    assert before == (1.3, 1.3, pytest.approx(27.78))
    assert _figures(report) == (1.0, 1.0, pytest.approx(44.44))
    assert (array["instance_seconds"], array["run_seconds"]) == (3600, 5400)
    assert check_run_report_costs(report) == []


def test_a_job_whose_end_is_told_after_the_interruption_was_learnt_is_not_billed(ledger, utc_clock):
    # GIVEN run-1's job on the instance, whose end is not told yet, and another run's job on the instance after it,
    # reclaimed within the instance's first hour (its end told)
    plane = Plane(ledger, utc_clock)
    plane.job_ran("run-1", "job-a", REUSED, start=1, stop=None)
    plane.reclaimed_in_first_hour("run-2", "job-b", REUSED, start=28)
    # WHEN the first job's end (it succeeded at 25 minutes) is told two hours later (its first deliveries failed),
    # when EC2 no longer describes the instance
    plane.instances.forgotten = True
    plane.job_ended("job-a", REUSED, start=1, stop=25, told_at=150)
    # THEN it is not billed
    assert _figures(plane.report("run-1")) == (0.0, 0.0, 100.0)


def test_an_array_whose_end_is_told_after_the_interruption_was_learnt_is_billed_without_that_shard(ledger, utc_clock):
    # GIVEN an array of three shards, one on the instance, that succeeded (its end not told yet), and another run's
    # job placed on that instance after the shard, reclaimed within the instance's first hour
    plane = Plane(ledger, utc_clock)
    shards = {REUSED: "c6i.4xlarge", OTHER: "m6i.4xlarge", THIRD: "m6i.4xlarge"}
    plane.array_ran("run-1", "array-1", shards, start=1, stop=31)
    plane.reclaimed_in_first_hour("run-2", "job-b", REUSED, start=33)
    # WHEN the array's end is told (twice)
    plane.array_ended("array-1", at=60)
    plane.array_ended("array-1", at=61)
    # THEN it is billed for its other two shards alone
    report = plane.report("run-1")
    assert _figures(report) == (1.0, 1.0, pytest.approx(44.44))
    assert check_run_report_costs(report) == []


def test_two_instances_of_an_array_found_unbilled_by_handlers_at_once_both_come_off(ledger, utc_clock, monkeypatch):
    # GIVEN an array of three shards on three instances at $0.60 that succeeded ($0.90), and two other runs' jobs on
    # two of its instances, each reclaimed within its instance's first hour, whose ends are handled at once: the
    # second handled while the first has read the array and not yet written it
    plane = Plane(ledger, utc_clock)
    plane.array_ran("run-1", "array-1", dict.fromkeys((REUSED, OTHER, THIRD), "c6i.4xlarge"), start=1, stop=31)
    plane.array_ended("array-1", at=32)
    plane.job_ran("run-3", "job-c", OTHER, start=33, stop=None)
    read_attempt = Ledger.get_attempt
    meanwhile = {"armed": False}

    def second_end_handled_meanwhile(self: Ledger, run_id: str, stage: str, attempt: int) -> Attempt | None:
        found = read_attempt(self, run_id, stage, attempt)
        if meanwhile["armed"] and run_id == "run-1":
            meanwhile["armed"] = False
            kept = InstanceSignal(OTHER, "interruption warning", True, format_time(plane.minutes(53)))
            ledger.keep_instance_signal(kept, "warning-other", SIGNAL_KEPT_FOR)
            ledger.cancel_attempt("run-3", "preprocess", 1, CANCEL_REQUEUE)
            ledger.claim_attempt("run-3", "preprocess", 1)
            plane.reclaim_told("job-c", OTHER, start=33)
        return found

    monkeypatch.setattr(Ledger, "get_attempt", second_end_handled_meanwhile)
    # WHEN the first job's end is handled
    meanwhile["armed"] = True
    plane.reclaimed_in_first_hour("run-2", "job-b", REUSED, start=33)
    # THEN the array is billed for its third shard alone: neither handler's write undid the other's
    array = plane.report("run-1")["stages"][0]["attempts"][0]
    assert not meanwhile["armed"]
    assert (array["instance_seconds"], array["cost_usd"]) == (1800, 0.3)


def test_a_job_the_index_names_that_the_ledger_no_longer_holds_is_passed_over(ledger, utc_clock):
    # GIVEN the instance's index naming a job whose attempt the ledger does not hold (its run expired), and a job of
    # run-1 on the instance that succeeded
    plane = Plane(ledger, utc_clock)
    ledger.index_instance(REUSED, JobRef("job-gone", "run-gone", "preprocess", 1))
    plane.job_ran("run-1", "job-a", REUSED, start=1, stop=25)
    # WHEN a later job on the instance is reclaimed within the instance's first hour
    answer = plane.reclaimed_in_first_hour("run-2", "job-b", REUSED, start=28)
    # THEN the job it holds is not billed, and nothing is written for the one it does not
    assert answer["reason"] == "superseded attempt"
    assert _figures(plane.report("run-1"))[0] == 0.0
    assert ledger.get_attempt("run-gone", "preprocess", 1) is None


@pytest.mark.parametrize(
    ("removed", "values"),
    [
        # before it kept what each instance billed its shards, or which instances were found unbilled
        ("REMOVE billed_on_instances, unbilled_instance_ids", None),
        # before it kept its shards' own instance time (billed over its span, as a job of three nodes), with the one
        # instance a shard's start listed then (concurrent starts kept only the last writer's)
        (
            "SET instance_ids = :one REMOVE instance_seconds, run_seconds, billed_on_instances, unbilled_instance_ids",
            {":one": [REUSED]},
        ),
    ],
    ids=["before-instance-bills", "before-instance-time"],
)
def test_an_array_recorded_before_its_instance_bills_were_kept_loads_and_stays_billed(
    ledger, ledger_table, utc_clock, removed, values
):
    # GIVEN an array of three shards that succeeded, its attempt as the ledger kept it before what `removed` takes out
    plane = Plane(ledger, utc_clock)
    plane.array_ran("run-1", "array-1", dict.fromkeys((REUSED, OTHER, THIRD), "c6i.4xlarge"), start=1, stop=31)
    plane.array_ended("array-1", at=32)
    old_form = {"ExpressionAttributeValues": values} if values else {}
    ledger_table.update_item(Key={"pk": "RUN#run-1", "sk": "ATTEMPT#hpc#001"}, UpdateExpression=removed, **old_form)
    before = _figures(plane.report("run-1"))
    # WHEN a later job on one of its instances is reclaimed within the instance's first hour
    plane.reclaimed_in_first_hour("run-2", "job-b", REUSED, start=33)
    # THEN the array still loads, and is billed as it was: what that instance billed cannot be told apart
    report = plane.report("run-1")
    assert before[0] > 0.89
    assert _figures(report) == before
    assert "interrupted_in_first_hour" not in report["stages"][0]["attempts"][0]


class BatchReadRecordingTable:
    """A table whose BatchGetItem keeps what was asked and answers from `kept` (instance ids kept as unbilled), leaving
    the last key of each of its first `throttled` calls unprocessed, as DynamoDB does when it throttles (fakes over
    mocks)."""

    name = "ledger"

    def __init__(self, kept: set[str], throttled: int = 0, unanswered: int = 0) -> None:
        self.kept, self.throttled, self.unanswered = kept, throttled, unanswered
        self.calls: list[dict[str, Any]] = []
        self.meta = SimpleNamespace(client=self)

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        asked = RequestItems[self.name]
        self.calls.append(asked)
        keys = asked["Keys"]
        if len(self.calls) <= self.unanswered:  # every key unprocessed: the table has no entry in Responses
            return {"Responses": {}, "UnprocessedKeys": {self.name: asked}}
        left = keys[-1:] if len(self.calls) <= self.throttled else []
        items = [{"pk": key["pk"]} for key in keys[: len(keys) - len(left)] if key["pk"][9:] in self.kept]
        return {
            "Responses": {self.name: items},
            "UnprocessedKeys": {self.name: {**asked, "Keys": left}} if left else {},
        }


def test_the_instances_found_unbilled_are_read_once_each_strongly_consistent_100_a_call():
    # GIVEN a ledger on a table that records its reads, where 2 of an array's 250 instances are kept as unbilled
    instances = [f"i-{n:04d}" for n in range(250)]
    table = BatchReadRecordingTable(kept={"i-0007", "i-0201"})
    # WHEN the instances (one named twice) are asked which were found interrupted in their first hour
    found = Ledger(table).unbilled_among([*instances, instances[0]])
    # THEN those two are found, each instance read once, strongly consistent, in calls of at most 100 keys (the most
    # BatchGetItem takes): the handler that finds an instance so keeps it, then reads the attempts on it, while an
    # attempt's end is written, then this read, so that one of the two sees the other
    assert found == {"i-0007", "i-0201"}
    assert [len(call["Keys"]) for call in table.calls] == [100, 100, 50]
    assert all(call["ConsistentRead"] for call in table.calls)
    assert sorted(key["pk"] for call in table.calls for key in call["Keys"]) == [f"INSTANCE#{i}" for i in instances]


def test_keys_left_unprocessed_are_asked_again_and_a_read_throttled_throughout_fails_to_be_retried():
    # GIVEN a table that leaves a key unprocessed at its first 2 calls, and one that does at every call
    once_throttled = BatchReadRecordingTable(kept={REUSED}, throttled=2)
    always_throttled = BatchReadRecordingTable(kept={REUSED}, throttled=UNPROCESSED_TRIES)
    # WHEN the same instances are asked of each
    found = Ledger(once_throttled).unbilled_among([OTHER, REUSED])
    # THEN the first is asked again until answered, and the instance kept is found
    assert found == {REUSED} and len(once_throttled.calls) == 3
    # AND the second fails after UNPROCESSED_TRIES calls, so that the event is handled again, never taken as billed
    with pytest.raises(LedgerContended):
        Ledger(always_throttled).unbilled_among([OTHER, REUSED])
    assert len(always_throttled.calls) == UNPROCESSED_TRIES


def test_a_call_that_answers_none_of_its_keys_is_asked_again():
    # GIVEN a table whose first answer leaves every key unprocessed, so that its Responses name no table
    table = BatchReadRecordingTable(kept={REUSED}, unanswered=1)
    # WHEN instances are asked of it
    found = Ledger(table).unbilled_among([OTHER, REUSED])
    # THEN the keys are asked again and the instance kept is found (a KeyError before)
    assert found == {REUSED} and len(table.calls) == 2


def test_an_array_that_ran_on_several_instances_found_unbilled_by_one_end_is_written_once(
    ledger, utc_clock, monkeypatch
):
    # GIVEN an array of three shards on three instances at $0.60 that succeeded ($0.90), and another run's array
    # placed on the same three instances after it, its shards reclaimed with them within their first hour (the warning
    # moved its stage to On-Demand)
    plane = Plane(ledger, utc_clock)
    instances = (REUSED, OTHER, THIRD)
    plane.array_ran("run-1", "array-1", dict.fromkeys(instances, "c6i.4xlarge"), start=1, stop=31)
    plane.array_ended("array-1", at=32)
    plane.array_ran("run-2", "array-2", dict.fromkeys(instances, "c6i.4xlarge"), start=33, stop=55)
    for instance_id in instances:
        kept = InstanceSignal(instance_id, "interruption warning", True, format_time(plane.minutes(53)))
        ledger.keep_instance_signal(kept, f"warning-{instance_id}", SIGNAL_KEPT_FOR)
    ledger.cancel_attempt("run-2", "hpc", 1, CANCEL_REQUEUE)
    ledger.claim_attempt("run-2", "hpc", 1)
    for shard, instance_id in zip(plane.instances.shards["array-2"], instances, strict=True):
        shard.update(status="FAILED", statusReason=f"Host EC2 (instance {instance_id}) terminated.")
    written: list[str] = []
    update_attempt = Ledger.update_attempt

    def counted(self: Ledger, run_id: str, stage: str, attempt: int, **kwargs: Any) -> Attempt:
        written.append(run_id)
        return update_attempt(self, run_id, stage, attempt, **kwargs)

    monkeypatch.setattr(Ledger, "update_attempt", counted)
    # WHEN the second array's end is told
    ended = {"jobId": "array-2", "jobName": "array-2", "jobQueue": "spot-queue", "status": "FAILED"}
    array = {"size": 3, "statusSummary": {"FAILED": 3}}
    plane.tell(56, {**ended, "stoppedAt": _ms(plane.minutes(56)), "arrayProperties": array})
    # THEN the first array's three shards are out of its bill, in one write of its attempt, not one an instance: an
    # array's item holds what each of up to a thousand instances billed it, and each write of it costs its whole size
    report = plane.report("run-1")
    assert _figures(report) == (0.0, 0.0, 100.0)
    assert written.count("run-1") == 1


def test_an_array_with_a_shard_batch_tells_stopped_as_it_started_settles(ledger, utc_clock):
    # GIVEN an array of two shards that succeeded, one on an m6i.4xlarge at $1.00 for half an hour, the other's stop
    # told by Batch at the very millisecond it started (no second billed)
    plane = Plane(ledger, utc_clock)
    plane.array_ran("run-1", "array-1", {REUSED: "c6i.4xlarge", OTHER: "m6i.4xlarge"}, start=1, stop=31)
    shard = plane.instances.shards["array-1"][0]
    shard["stoppedAt"] = shard["startedAt"]
    # WHEN the array's end is told
    plane.array_ended("array-1", at=32)
    # THEN its stage is settled, and the array billed for the other shard's half hour ($0.50)
    attempt, stage = ledger.get_attempt("run-1", "hpc", 1), ledger.get_stage("run-1", "hpc")
    assert attempt is not None and stage is not None
    assert (attempt.status, stage.status) == ("SUCCEEDED", "SUCCEEDED")
    assert _figures(plane.report("run-1"))[0] == 0.5


def test_a_failed_arrays_shard_whose_start_was_never_told_is_not_billed_on_an_instance_lost_in_its_first_hour(
    ledger, utc_clock
):
    # GIVEN an array of three half-hour Spot shards, one on each instance ($0.60, $1.00 and $1.00 an hour), whose
    # shard on the first instance had its RUNNING event lost; EC2 warned at 29 minutes that it interrupts that instance
    # (within its first hour: no job of ours was known there, so the warning found none), and the shard failed with it
    plane = Plane(ledger, utc_clock)
    shards = {REUSED: "c6i.4xlarge", OTHER: "m6i.4xlarge", THIRD: "m6i.4xlarge"}
    plane.array_ran("run-1", "array-1", shards, start=1, stop=31, start_lost=REUSED)
    assert plane.warned(REUSED, at_minutes=29)["status"] == "ignored"
    reclaimed = plane.instances.shards["array-1"][0]
    reclaimed |= {"status": "FAILED", "statusReason": f"Host EC2 (instance {REUSED}) terminated."}
    # AND the stage moved on to its next attempt
    ledger.cancel_attempt("run-1", "hpc", 1, CANCEL_REQUEUE)
    ledger.claim_attempt("run-1", "hpc", 1)
    # WHEN the array's end is told
    plane.array_ended("array-1", at=32)
    # THEN the failed array asked of the instance its shard's end names, not only of those its shards' starts named:
    # that shard is not billed ($1.00 for the two others, not $1.30), and its instance is kept as unbilled
    array = plane.report("run-1")["stages"][0]["attempts"][0]
    assert (array["status"], array["cost_usd"]) == ("FAILED", 1.0)
    assert (array["instance_seconds"], array["run_seconds"]) == (3600, 5400)
    assert ledger.unbilled_among([REUSED]) == {REUSED}


def _warned_while_idle(plane: Plane, instance_id: str, at_minutes: float) -> None:
    """EC2's interruption warning for the instance, kept while no job of ours runs there."""
    warned = InstanceSignal(instance_id, "interruption warning", True, format_time(plane.minutes(at_minutes)))
    plane.ledger.keep_instance_signal(warned, f"idle-{instance_id}", SIGNAL_KEPT_FOR)


@pytest.mark.parametrize("end_told", ["before", "after"])
def test_an_instance_warned_while_idle_in_its_first_hour_leaves_the_jobs_that_ran_on_it_billed(
    ledger, utc_clock, end_told
):
    # GIVEN run-1's Spot job, 24 minutes on an instance at $0.60 an hour ($0.24), that succeeded; its end told
    # `end_told` EC2 warned, 40 minutes after the instance's launch, that it interrupts the instance, then idle
    plane = Plane(ledger, utc_clock)
    plane.job_ran("run-1", "job-a", REUSED, start=1, stop=25 if end_told == "before" else None)
    # WHEN the warning is handled (by the Spot signal handler, for the job that ended; kept, for the job whose end is
    # told after it)
    if end_told == "before":
        assert plane.warned(REUSED, at_minutes=40)["status"] == "handled"
    else:
        _warned_while_idle(plane, REUSED, at_minutes=40)
        plane.job_ended("job-a", REUSED, start=1, stop=25, told_at=60)
    report = plane.report("run-1")
    # THEN the job stays billed, and the instance is not kept as unbilled: Batch may terminate an idle instance within
    # the warning's two minutes, and AWS bills an instance its owner terminated (before, the warning's handler, or a
    # job's end told after the warning, took it for the interruption, and the job's cost was hidden)
    assert _figures(report) == (0.24, 0.24, 50.0)
    assert ledger.unbilled_among([REUSED]) == set()


@pytest.mark.parametrize("exit_code", [86, 87])
def test_a_job_that_stopped_on_a_checkpoint_request_before_its_instance_was_warned_stays_billed(
    ledger, utc_clock, exit_code
):
    # GIVEN run-1's Spot job, 24 minutes on an instance at $0.60 an hour ($0.24), that the control plane moved to
    # On-Demand (its deadline at risk) and that stopped itself at 25 minutes on the checkpoint request (exit 86, or 87
    # where it wrote none), leaving the instance idle; and EC2's warning, 40 minutes after the instance's launch, that
    # it interrupts the instance
    plane = Plane(ledger, utc_clock)
    plane.job_ran("run-1", "job-a", REUSED, start=1, stop=None)
    ledger.cancel_attempt("run-1", "preprocess", 1, CANCEL_REQUEUE)
    ledger.claim_attempt("run-1", "preprocess", 1)
    _warned_while_idle(plane, REUSED, at_minutes=40)
    # WHEN the job's end is told after the warning (a late delivery, or the SLA guard's DescribeJobs)
    ended = {"jobId": "job-a", "jobName": "job-a", "jobQueue": "spot-queue", "status": "FAILED"}
    times = {"startedAt": _ms(plane.minutes(1)), "stoppedAt": _ms(plane.minutes(25))}
    container = {"containerInstanceArn": _arn(REUSED), "exitCode": exit_code}
    plane.tell(60, {**ended, **times, "statusReason": CONTAINER_EXITED, "container": container})
    # THEN the job stays billed, and the instance is not kept as unbilled: the warning came while the instance was
    # idle, and Batch may have terminated it first
    assert _figures(plane.report("run-1"))[0] == 0.24
    assert ledger.unbilled_among([REUSED]) == set()


@pytest.mark.parametrize(
    "early_end",
    [
        {"status": "SUCCEEDED", "statusReason": CONTAINER_EXITED, "exitCode": 0},
        {"status": "FAILED", "statusReason": CONTAINER_EXITED, "exitCode": 86},
    ],
    ids=["succeeded", "stopped-on-a-checkpoint-request"],
)
def test_a_failed_arrays_shard_that_ended_before_its_instance_was_warned_stays_billed(ledger, utc_clock, early_end):
    # GIVEN a Spot array of two shards on c6i.4xlarge instances ($0.60 an hour): one reclaimed at 31 minutes within
    # its instance's first hour, and one that ended at 11 minutes (succeeded, or stopped itself on a checkpoint
    # request), whose instance EC2 then warned while it sat idle
    plane = Plane(ledger, utc_clock)
    plane.array_ran("run-1", "array-1", dict.fromkeys((REUSED, OTHER), "c6i.4xlarge"), start=1, stop=31)
    early, reclaimed = plane.instances.shards["array-1"]
    early |= {"status": early_end["status"], "statusReason": early_end["statusReason"]}
    early |= {"stoppedAt": _ms(plane.minutes(11))}
    early["container"] = {**early["container"], "exitCode": early_end["exitCode"]}
    reclaimed |= {"status": "FAILED", "statusReason": f"Host EC2 (instance {OTHER}) terminated."}
    _warned_while_idle(plane, REUSED, at_minutes=20)
    _warned_while_idle(plane, OTHER, at_minutes=29)
    ledger.cancel_attempt("run-1", "hpc", 1, CANCEL_REQUEUE)
    ledger.claim_attempt("run-1", "hpc", 1)
    # WHEN the array's end is told
    plane.array_ended("array-1", at=32)
    # THEN the reclaimed shard is not billed, and the one that ended before its instance was warned is ($0.10):
    # before, every instance a shard's start named was asked, and the idle one was taken as interrupted
    array = plane.report("run-1")["stages"][0]["attempts"][0]
    assert (array["cost_usd"], array["instance_seconds"], array["run_seconds"]) == (0.1, 600, 2400)
    assert ledger.unbilled_among([REUSED, OTHER]) == {OTHER}


# ---------------------------------------------------------------------- interruptions awaited, then confirmed by EC2
def _awaited(ledger: Ledger) -> list[str]:
    """The instances whose warned interruption is awaited, due or not."""
    return [item.instance_id for item in ledger.awaited_interruptions(datetime.max.replace(tzinfo=UTC))]


def _stopped_on_the_notice(plane: Plane, exit_code: int) -> None:
    """run-1's Spot job on REUSED from 1 minute, warned at 20 (still in the instance's first hour): the warning moved
    its stage to On-Demand, and the job stopped itself at 21 minutes on the notice (exit 86, or 87 where it wrote
    no checkpoint), its end told at once, while EC2 still describes the instance as running."""
    plane.job_ran("run-1", "job-a", REUSED, start=1, stop=None)
    _warned_while_idle(plane, REUSED, at_minutes=20)
    plane.ledger.cancel_attempt("run-1", "preprocess", 1, CANCEL_REQUEUE)
    plane.ledger.claim_attempt("run-1", "preprocess", 1)
    plane.instances.states[REUSED] = ("running", "")
    ended = {"jobId": "job-a", "jobName": "job-a", "jobQueue": "spot-queue", "status": "FAILED"}
    times = {"startedAt": _ms(plane.minutes(1)), "stoppedAt": _ms(plane.minutes(21))}
    container = {"containerInstanceArn": _arn(REUSED), "exitCode": exit_code}
    plane.tell(21, {**ended, **times, "statusReason": CONTAINER_EXITED, "container": container})


def _guard_looks(plane: Plane, at_minutes: float, out_of_time: Any = lambda: False) -> int:
    plane.clock.now = plane.minutes(at_minutes)
    return confirm_interruptions(plane.svc, out_of_time)  # type: ignore[arg-type]


@pytest.mark.parametrize("exit_code", [86, 87])
def test_a_job_that_stopped_on_the_notice_is_unbilled_once_ec2_describes_its_instance_taken_back(
    ledger, utc_clock, exit_code
):
    # GIVEN a Spot job that stopped itself on the interruption notice at 21 minutes ($0.20 at $0.60 an hour), before
    # EC2 took its instance
    plane = Plane(ledger, utc_clock)
    _stopped_on_the_notice(plane, exit_code)
    at_its_end = _figures(plane.report("run-1"))[0]
    # WHEN the SLA guard looks once the warning's two minutes are out, and EC2 describes the instance as taken back
    plane.instances.states.pop(REUSED)
    found = _guard_looks(plane, at_minutes=25)
    # THEN the job was billed at its end (the instance was up: its owner might still have ended it first), is not
    # billed now, and the instance is kept as unbilled and awaited no more
    assert at_its_end == 0.2
    assert found == 1
    assert _figures(plane.report("run-1")) == (0.0, 0.0, 100.0)
    assert plane.report("run-1")["stages"][0]["attempts"][0]["interrupted_in_first_hour"] is True
    assert ledger.unbilled_among([REUSED]) == {REUSED}
    assert _awaited(ledger) == []


def test_an_instance_its_owner_terminated_before_ec2_took_it_stays_billed(ledger, utc_clock):
    # GIVEN a Spot job that stopped itself on the notice at 21 minutes ($0.20), and Batch then terminating the idle
    # instance before EC2 took it (AWS bills an instance its owner ended)
    plane = Plane(ledger, utc_clock)
    _stopped_on_the_notice(plane, 86)
    plane.instances.states[REUSED] = ("terminated", "Client.UserInitiatedShutdown")
    # WHEN the SLA guard looks
    found = _guard_looks(plane, at_minutes=25)
    # THEN the job stays billed, and the instance is awaited no more
    assert found == 0
    assert _figures(plane.report("run-1"))[0] == 0.2
    assert ledger.unbilled_among([REUSED]) == set()
    assert _awaited(ledger) == []


def test_an_instance_ec2_still_describes_as_running_is_looked_at_again_until_an_hour_after_its_warning(
    ledger, utc_clock
):
    # GIVEN a Spot job that stopped itself on the notice at 21 minutes ($0.20), warned at 20, its instance still
    # running
    plane = Plane(ledger, utc_clock)
    _stopped_on_the_notice(plane, 86)
    awaited_minutes = AWAITED_FOR.total_seconds() / 60
    # WHEN the SLA guard looks at 25 minutes, a minute before AWAITED_FOR is out after the warning, and a minute after
    looks = [_guard_looks(plane, at_minutes=25)]
    awaited_after_first = _awaited(ledger)
    looks.append(_guard_looks(plane, at_minutes=20 + awaited_minutes - 1))
    awaited_before_the_end = _awaited(ledger)
    looks.append(_guard_looks(plane, at_minutes=20 + awaited_minutes + 1))
    # THEN it is awaited until AWAITED_FOR is out, and no more after; the job stays billed throughout
    assert looks == [0, 0, 0]
    assert awaited_after_first == awaited_before_the_end == [REUSED]
    assert _awaited(ledger) == []
    assert _figures(plane.report("run-1"))[0] == 0.2


def test_an_interruption_not_yet_due_is_not_asked_of_ec2(ledger, utc_clock):
    # GIVEN a Spot job that stopped itself on the notice at 21 minutes, a minute after the warning
    plane = Plane(ledger, utc_clock)
    _stopped_on_the_notice(plane, 86)
    plane.instances.described.clear()
    # WHEN the SLA guard looks at 21 minutes 30 seconds, before the warning's two minutes are out
    found = _guard_looks(plane, at_minutes=21.5)
    # THEN EC2 is not asked, and the instance is still awaited
    assert found == 0
    assert plane.instances.described == []
    assert _awaited(ledger) == [REUSED]


@pytest.mark.parametrize(
    "ec2_answer", ["no longer described", "throttled"], ids=["instance-forgotten", "describe-throttled"]
)
def test_an_instance_ec2_cannot_tell_of_stays_billed(ledger, utc_clock, ec2_answer):
    # GIVEN a Spot job that stopped itself on the notice at 21 minutes ($0.20); and EC2 no longer describing its
    # instance (terminated over an hour before), or DescribeInstances throttled past the client's retries
    plane = Plane(ledger, utc_clock)
    _stopped_on_the_notice(plane, 86)
    if ec2_answer == "no longer described":
        plane.instances.forgotten = True
    else:

        def throttled(instance_ids: Any) -> dict[str, Ec2Instance]:
            raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "slow down"}}, "DescribeInstances")

        plane.instances.describe_instances = throttled  # type: ignore[method-assign]
    # WHEN the SLA guard looks
    found = _guard_looks(plane, at_minutes=25)
    # THEN the job stays billed; a forgotten instance is awaited no more, a throttled look is left to the next pass
    assert found == 0
    assert _figures(plane.report("run-1"))[0] == 0.2
    assert _awaited(ledger) == ([] if ec2_answer == "no longer described" else [REUSED])


def test_a_job_whose_instance_ec2_could_not_describe_at_its_end_is_unbilled_once_the_guard_asks_again(
    ledger, utc_clock, monkeypatch
):
    # GIVEN run-1's Spot job on an instance from 1 minute ($0.22 for its 22 minutes at $0.60), whose RUNNING event was
    # lost: EC2's warning at 20 minutes (within the instance's first hour) found no job of ours there, and so awaits
    # nothing; and DescribeInstances throttled past the client's retries as the job's reclaim is told
    plane = Plane(ledger, utc_clock)
    plane.place("run-1", "preprocess", "job-a", at_minutes=-1)
    assert plane.warned(REUSED, at_minutes=20)["status"] == "ignored"
    plane.ledger.cancel_attempt("run-1", "preprocess", 1, CANCEL_REQUEUE)
    plane.ledger.claim_attempt("run-1", "preprocess", 1)
    describe = plane.instances.describe_instances

    def throttled(instance_ids: Any) -> dict[str, Ec2Instance]:
        raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "slow down"}}, "DescribeInstances")

    monkeypatch.setattr(plane.instances, "describe_instances", throttled)
    plane.reclaim_told("job-a", REUSED, start=1)
    billed_at_its_end = _figures(plane.report("run-1"))[0]
    # WHEN the SLA guard looks at 25 minutes, EC2 answering again and describing the instance as taken back
    monkeypatch.setattr(plane.instances, "describe_instances", describe)
    found = _guard_looks(plane, at_minutes=25)
    # THEN the job was billed at its end, and is not once EC2 told: the instance was awaited though its first look
    # failed (before, nothing awaited it, and the job stayed billed for an instance AWS charges nothing for)
    assert billed_at_its_end == 0.22
    assert found == 1
    assert _figures(plane.report("run-1")) == (0.0, 0.0, 100.0)
    assert _awaited(ledger) == []


def test_an_instance_warned_while_idle_in_its_first_hour_is_unbilled_once_ec2_took_it(ledger, utc_clock):
    # GIVEN run-1's Spot job, 24 minutes on an instance at $0.60 an hour ($0.24), that succeeded; then EC2's warning
    # for the idle instance 40 minutes after its launch, handled by the Spot signal handler
    plane = Plane(ledger, utc_clock)
    plane.job_ran("run-1", "job-a", REUSED, start=1, stop=25)
    assert plane.warned(REUSED, at_minutes=40)["status"] == "handled"
    billed_then = _figures(plane.report("run-1"))
    # WHEN the SLA guard looks at 43 minutes, and EC2 describes the instance as taken back
    found = _guard_looks(plane, at_minutes=43)
    # THEN the job is billed until EC2 says it took the instance, and not after: AWS bills none of an instance it
    # interrupted within its first hour, whoever's jobs ran there before
    assert billed_then == (0.24, 0.24, 50.0)
    assert found == 1
    assert _figures(plane.report("run-1")) == (0.0, 0.0, 100.0)
    assert check_run_report_costs(plane.report("run-1")) == []


def test_an_instance_warned_after_its_first_hour_stays_billed(ledger, utc_clock):
    # GIVEN run-1's Spot job on an instance from 1 to 25 minutes, and EC2's warning for the idle instance at 70
    # minutes, after its first hour
    plane = Plane(ledger, utc_clock)
    plane.job_ran("run-1", "job-a", REUSED, start=1, stop=25)
    plane.warned(REUSED, at_minutes=70)
    # WHEN the SLA guard looks once EC2 took it
    found = _guard_looks(plane, at_minutes=73)
    # THEN the job stays billed, and the instance is awaited no more
    assert found == 0
    assert _figures(plane.report("run-1"))[0] == 0.24
    assert _awaited(ledger) == []


def test_a_warning_for_an_instance_none_of_our_jobs_ran_on_or_a_rebalance_recommendation_awaits_nothing(
    ledger, utc_clock
):
    # GIVEN a job of ours on REUSED
    plane = Plane(ledger, utc_clock)
    plane.job_ran("run-1", "job-a", REUSED, start=1, stop=25)
    # WHEN EC2 warns of another workload's instance, and recommends rebalancing ours
    foreign = plane.warned("i-0fffffffffffffff9", at_minutes=30)
    plane.clock.now = plane.minutes(31)
    event = load_event("rebalance_recommendation", **{"instance-id": REUSED})
    event["time"] = format_time(plane.clock.now)
    rebalance = on_spot_signal(plane.svc, event, ACCOUNT)  # type: ignore[arg-type]
    # THEN neither instance is awaited
    assert foreign["status"] == "ignored" and rebalance["status"] == "handled"
    assert _awaited(ledger) == []


def test_one_instance_whose_writes_fail_leaves_the_others_confirmed(ledger, utc_clock, monkeypatch, caplog):
    # GIVEN two idle instances our jobs ran on ($0.24 each), both warned within their first hour and taken by EC2,
    # and the ledger refusing to keep the first as unbilled (its partition throttled past the client's retries)
    plane = Plane(ledger, utc_clock)
    plane.job_ran("run-1", "job-a", REUSED, start=1, stop=25)
    plane.job_ran("run-2", "job-b", OTHER, start=1, stop=25)
    plane.warned(REUSED, at_minutes=40)
    plane.warned(OTHER, at_minutes=40)
    keep = Ledger.keep_unbilled_instance

    def throttled_for_reused(self: Ledger, instance_id: str) -> None:
        if instance_id == REUSED:
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": ""}}, "PutItem")
        keep(self, instance_id)

    monkeypatch.setattr(Ledger, "keep_unbilled_instance", throttled_for_reused)
    # WHEN the SLA guard looks
    found = _guard_looks(plane, at_minutes=43)
    # THEN the other instance's job is unbilled, the first's stays billed and awaited for the next pass, and the log
    # names the instance
    assert found == 1
    assert (_figures(plane.report("run-1"))[0], _figures(plane.report("run-2"))[0]) == (0.24, 0.0)
    assert _awaited(ledger) == [REUSED]
    assert "could not settle an awaited interruption" in caplog.text


def test_a_look_out_of_time_leaves_the_instances_to_the_next_pass(ledger, utc_clock):
    # GIVEN an idle instance our job ran on, warned within its first hour and taken by EC2
    plane = Plane(ledger, utc_clock)
    plane.job_ran("run-1", "job-a", REUSED, start=1, stop=25)
    plane.warned(REUSED, at_minutes=40)
    # WHEN the SLA guard looks with no time left
    found = _guard_looks(plane, at_minutes=43, out_of_time=lambda: True)
    # THEN nothing is settled: the instance is still awaited, the job still billed
    assert found == 0
    assert _awaited(ledger) == [REUSED]
    assert _figures(plane.report("run-1"))[0] == 0.24
