"""The SLA guard (scheduled): re-evaluates every active stage and repairs what lost events left behind.

One query of the sparse active-stages index and one DescribeJobs per 100 jobs, whatever the table's size; then, per
active run, one read of the run and one DescribeExecution, and a DescribeJobs more for a Spot job replaced by an
On-Demand one whose end is not recorded yet. Last, with bounded time: one query of the same index for
runs whose execution ended without telling their end (a DescribeExecution for each open run without active stages),
one for instances whose warned interruption is due (a DescribeInstances per 200: `first_hour.confirm_interruptions`),
one for notices whose claimer died before sending them (`notifier.send_orphaned_notices`), and the parked Slack
notices.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from spot_hpc.clock import parse_time, utc_now
from spot_hpc.events import STATUS_RANK, TERMINAL_STATUSES, BatchJobDetail
from spot_hpc.first_hour import confirm_interruptions
from spot_hpc.job_events import answer_state_machine, apply_job_state
from spot_hpc.ledger import CANCEL_REQUEUE, Run, Stage
from spot_hpc.notifier import notify, redeliver_parked_notices, send_orphaned_notices
from spot_hpc.outcome import Settlement, finish, late_run_end_settlement
from spot_hpc.pipeline import job_name
from spot_hpc.placement import (
    choose_capacity,
    end_spot_wait,
    request_checkpoint,
    requeue_to_on_demand,
    stage_view,
    start_spot_wait,
    stop_stage,
    submit_claimed,
    tell_requeue,
)
from spot_hpc.policy import DEFAULT_STEP_HOURS, WAITING_LEAVES_NO_TIME, Action, Decision, waiting_leaves_time
from spot_hpc.services import Services

logger = logging.getLogger(__name__)
T = TypeVar("T")
# A claimed attempt with no job, or a settled stage not yet answered, this long after the fact means its handler
# died between two AWS calls.
STALE_SUBMISSION = timedelta(minutes=3)
# Execution statuses that end a run; SUCCEEDED is settled by the execution's own last state.
ENDED_EXECUTION = frozenset({"FAILED", "TIMED_OUT", "ABORTED"})
# A pass starts no stage check with less of its invocation left than this (a check may solve a plan, some seconds
# at a fraction of a CPU, then place a job). The stages left wait for a later pass, which takes them in another order.
STAGE_CHECK_MARGIN_SECONDS = 30.0
# How often the guard runs (its schedule, and so the step the policy plans with): each period's pass has an order of
# its own.
PASS_PERIOD = timedelta(hours=DEFAULT_STEP_HOURS)


def run_guard(svc: Services, remaining_seconds: Callable[[], float] | None = None) -> dict[str, Any]:
    """One pass over every active stage; then, with what time is left (`remaining_seconds`: the Lambda's), the
    notices whose sender died after claiming them, and the Slack notices parked while Slack was down."""
    # A read failing past the client's retries (the index's partition or Batch throttled, for a while) leaves its part
    # to the next pass; the rest of this one still runs (stages, ended runs, awaited interruptions, notices).
    unread: list[str] = []
    no_stages: list[Stage] = []
    stages = _in_pass_order(
        _read_or_leave(lambda: list(svc.ledger.active_stages()), no_stages, "active stages", unread),
        key=lambda stage: (stage.run_id, stage.order),
    )
    # Not described, a stage's job is looked at by the next pass (see `_guard_stage`, which needs Batch's word).
    no_jobs: dict[str, dict[str, Any]] = {}
    jobs = _read_or_leave(lambda: svc.batch.describe([s.job_id for s in stages if s.job_id]), no_jobs, "jobs", unread)
    actions: list[dict[str, Any]] = []
    runs: dict[str, Run | None] = {}
    settlements: dict[str, Settlement] = {}  # by run: the runs this pass settled
    deferred = 0
    for index, stage in enumerate(stages):
        if remaining_seconds is not None and remaining_seconds() < STAGE_CHECK_MARGIN_SECONDS:
            deferred = len(stages) - index
            logger.warning("pass out of time: stages left to the next pass", extra={"deferred": deferred})
            break
        action: str | None
        try:
            if stage.run_id not in runs:
                # Read once a pass; a read that failed (its partition throttled) is tried again for its next stage.
                runs[stage.run_id], settlement = _current_run(svc, stage.run_id)
                if settlement is not None:
                    settlements[stage.run_id] = settlement
            run = runs[stage.run_id]
            if run is None:
                continue
            if run.run_id in settlements:
                action = "settled the run as failed: its execution had ended (its stages stopped)"
            elif run.status != "RUNNING":
                # The run ended without this stage (its failure notice stops such stages; this repairs a crash).
                stop_stage(svc, stage, f"run {run.status.lower()}")
                action = f"stopped: the run is {run.status}"
            else:
                action = _guard_stage(svc, run, stage, jobs.get(stage.job_id or ""))
        except Exception:  # one broken stage (or its run's read) must not stop the guard from looking after the others
            logger.exception("guard failed on a stage", extra={"run_id": stage.run_id, "stage": stage.stage})
            action = "error"
        if action:
            actions.append({"run_id": stage.run_id, "stage": stage.stage, "action": action})
    no_runs: list[Run] = []
    open_runs = _read_or_leave(lambda: list(svc.ledger.open_runs()), no_runs, "open runs", unread)
    for settlement in _settle_ended_runs(svc, open_runs, set(runs), remaining_seconds):
        settlements[settlement.report["run_id"]] = settlement
    unbilled_instances = confirm_interruptions(
        svc, lambda: remaining_seconds is not None and remaining_seconds() < STAGE_CHECK_MARGIN_SECONDS
    )
    # Last, and bounded in time: notices must never hold up the stages. First those nobody has had (nor SNS), then
    # those Slack could not take.
    orphaned_notices, late_settlements = send_orphaned_notices(
        svc,
        remaining_seconds,
        # A run-end notice's sender counts the run: its claimer died before sending it, so counted nothing.
        before_sending=lambda notification, key: late_run_end_settlement(svc, notification, key),
    )
    for settlement in late_settlements:
        # Replaces what this pass's own settling of the run left to the notice's holder (counted nothing).
        settlements[settlement.report["run_id"]] = settlement
    parked_notices = redeliver_parked_notices(svc, remaining_seconds)
    return {
        "active_stages": len(stages),
        "unread": unread,
        "deferred_stages": deferred,
        "actions": actions,
        "unbilled_instances": unbilled_instances,
        "orphaned_notices": orphaned_notices,
        "parked_notices": parked_notices,
        "settlements": list(
            settlements.values()
        ),  # counted by `outcome.record_guard_pass`, as the notify function counts its own
    }


def _read_or_leave(read: Callable[[], T], instead: T, what: str, unread: list[str]) -> T:
    """What `read` reads, or `instead` when it fails: `what` is then added to `unread` (told in the pass's result)."""
    try:
        return read()
    except Exception:
        logger.exception("guard could not read its %s: left to the next pass", what)
        unread.append(what)
        return instead


def _in_pass_order(items: list[T], key: Callable[[T], Any]) -> list[T]:
    """Stages (or runs) in an order drawn for this pass (the same for a retry of it): a pass that runs out of time
    (see `STAGE_CHECK_MARGIN_SECONDS`) leaves different ones to the next, never the same ones pass after pass."""
    pass_number = int(utc_now().timestamp() // PASS_PERIOD.total_seconds())
    ordered = sorted(items, key=key)
    random.Random(pass_number).shuffle(ordered)
    return ordered


def _current_run(svc: Services, run_id: str) -> tuple[Run | None, Settlement | None]:
    """The run, settled as failed first if its execution ended without settling it: aborted by a user, timed out,
    or failed with its failure notice failing too. Its stages would otherwise be placed again and again."""
    run = svc.ledger.get_run(run_id)
    if run is None or run.status != "RUNNING" or not run.execution_arn:
        return run, None
    try:
        status = svc.pipeline.execution_status(run.execution_arn)
        if status not in ENDED_EXECUTION:
            return run, None
        settlement = _settle_as_ended(svc, run, status)
    except Exception:  # the stages are still looked after; the execution is checked again next pass
        logger.exception("could not settle the run of an ended execution", extra={"run_id": run_id})
        return run, None
    return svc.ledger.get_run(run_id), settlement


def _settle_ended_runs(
    svc: Services, open_runs: list[Run], checked: set[str], remaining_seconds: Callable[[], float] | None
) -> list[Settlement]:
    """Settles and tells the end of `open_runs` whose execution ended without doing so: its notify task failed past
    its retries (Lambda or DynamoDB throttled for a while at the run's end), and the state machine's Catch ended the
    execution anyway. Nothing else comes back to such a run: its stages have all left the guard's watch. The runs
    this pass checked for their stages are left to the next pass (they are open for their stages' sake)."""
    settled: list[Settlement] = []
    for run in _in_pass_order(open_runs, key=lambda run: run.run_id):
        if run.run_id in checked or not run.execution_arn:
            continue  # a run recorded and not started is the upload's retry's (see `ingest`)
        if remaining_seconds is not None and remaining_seconds() < STAGE_CHECK_MARGIN_SECONDS:
            break
        try:
            status = svc.pipeline.execution_status(run.execution_arn)
            if status != "SUCCEEDED" and status not in ENDED_EXECUTION:
                continue
            settled.append(_settle_as_ended(svc, run, status))
            logger.warning("settled a run its execution had left open", extra={"run_id": run.run_id, "status": status})
        except Exception:  # the next pass tries again
            logger.exception("could not settle an open run whose execution ended", extra={"run_id": run.run_id})
    return settled


def _settle_as_ended(svc: Services, run: Run, execution_status: str) -> Settlement:
    """Settles and tells the end of a run whose execution ended (`execution_status`) without doing so: as the run
    was settled already, if it was, else as its execution ended. The guard never comes back to it, so a notice
    another invocation holds is left to that one."""
    succeeded = run.status == "SUCCEEDED" or (run.status == "RUNNING" and execution_status == "SUCCEEDED")
    payload: dict[str, Any] = {"run_id": run.run_id, "outcome": "succeeded" if succeeded else "failed"}
    if not succeeded:
        cause = f"the pipeline's execution ended {execution_status} before the run's end was told"
        payload["error"] = {"Error": f"Execution{execution_status}", "Cause": cause}
    # A run that succeeded ended with its last stage, not at this pass (up to a period after): its deadline is judged
    # by that end, as it would have been had its end been told then.
    ended_at = _last_success_stop(svc, run.run_id) if succeeded and run.status == "RUNNING" else None
    return finish(svc, payload, leave_held_notice=True, ended_at=ended_at)


def _last_success_stop(svc: Services, run_id: str) -> datetime | None:
    """When the run's last attempt to succeed stopped (never later than now); None when none tells its stop."""
    _, attempts = svc.ledger.get_run_items(run_id)
    stops = [parse_time(a.stopped_at) for a in attempts if a.status == "SUCCEEDED" and a.stopped_at]
    return min(max(stops), utc_now()) if stops else None


def _guard_stage(svc: Services, run: Run, stage: Stage, job: dict[str, Any] | None) -> str | None:
    now = utc_now()
    if stage.status in TERMINAL_STATUSES:
        # Settled, but its handler died before telling the state machine (or is doing so right now).
        if stage.settled_at and now - parse_time(stage.settled_at) > STALE_SUBMISSION:
            answer_state_machine(svc, stage)
            return f"answered the state machine: {stage.status}"
        return None
    if _end_requeued_job(svc, stage):
        return "acted on the success of the attempt it was requeued from"
    if not stage.job_id:
        if stage.submitting_since and now - parse_time(stage.submitting_since) > STALE_SUBMISSION:
            submit_claimed(svc, run, stage, stage.capacity or "spot", "recovered an interrupted submission")
            # The handler that claimed it died before telling of a move to On-Demand, if it was one; nothing else
            # comes back to it (the attempt before has ended).
            tell_requeue(svc, run, stage.stage, stage.attempt - 1, "placed on On-Demand after the Spot attempt before")
            return "resubmitted lost submission"
        return None
    if job is None:
        return None
    detail = BatchJobDetail.model_validate(job)
    attempt = svc.ledger.get_attempt(run.run_id, stage.stage, stage.attempt)
    if attempt and (detail.status in TERMINAL_STATUSES or detail.status == "RUNNING"):
        behind = STATUS_RANK[detail.status] > STATUS_RANK.get(attempt.status, -1)
        # An ended attempt the stage still runs on: its handler died after recording the end, before acting on it.
        not_acted_on = detail.status in TERMINAL_STATUSES and attempt.status == detail.status
        if behind or not_acted_on:
            # The ledger is behind Batch: an event was lost or its handler crashed. Apply the state now.
            result = apply_job_state(svc, detail)
            return f"reconciled {detail.status}: {result.get('status')}"
    if detail.status in TERMINAL_STATUSES:
        return None
    if detail.status == "RUNNING" and detail.multinode_nodes > 1 and attempt is not None:
        # A child node's failure, whose event was lost, would leave the job waiting on its main node until the
        # attempt's timeout (`job_events._apply_child_node_state`); so would one recorded by a handler that died
        # before ending the job, which is ended again.
        failed = _failed_child_node(svc, detail)
        if failed is not None and (result := apply_job_state(svc, failed))["status"] == "recorded":
            return f"reconciled a failed node {failed.job_id}: {result['failure_class']}"
    if attempt is not None and attempt.cancel_reason == CANCEL_REQUEUE:
        # A requeue decided (its first step marks the Spot attempt) whose handler died before placing the On-Demand
        # job: carried out now. Left alone, the Spot job would run on under a mark that reads its end, whatever it
        # is, as our cancellation (an application error would then move to On-Demand without spending a retry).
        placed = requeue_to_on_demand(svc, run, stage, detail.job_id, "completing an interrupted requeue")
        return "completed an interrupted requeue" if placed else None
    view = stage_view(svc, run, stage)
    change = svc.settings.changeover_hours
    # At risk: the stage may no longer finish in time for the run's deadline, the later stages on On-Demand, once it
    # starts On-Demand (a changeover), or on Spot, once a reclaim makes it do so (two). Its share of the slack is only
    # what the policy plans with: a stage that cannot use Spot gets none, and would be told at risk on every run.
    # Once per run and stage; a claim another pass holds is left to it, and the next pass raises it again. So does the
    # next pass when it could not be sent (SNS or the ledger throttled): the stage's placement, below, never waits on
    # it, least of all when it is at risk.
    if view.latest_hours - view.remaining_hours < (2 if stage.capacity == "spot" else 1) * change:
        reason = (
            f"{view.remaining_hours:.2f} h of work left, {view.latest_hours:.2f} h until it must be done for the "
            "run's deadline"
        )
        try:
            notify(svc, "sla_at_risk", run, stage.stage, reason)
        except Exception:
            logger.exception("at-risk notice not sent", extra={"run_id": run.run_id, "stage": stage.stage})
    if stage.capacity != "spot":
        return None

    # The stage's Spot wait follows the job's events. A handler that died between recording a status and the wait,
    # or an event lost, leaves the ledger's wait behind what Batch says: mended here, or a job stuck RUNNABLE would
    # never be seen waiting (and never moved to On-Demand), and a running one would be taken for waiting.
    # An array waits for Spot while any shard does (it cannot finish without it).
    job_waits = detail.shards_waiting > 0 if detail.is_array_parent else detail.status == "RUNNABLE"
    job_runs = not detail.shards_waiting if detail.is_array_parent else detail.status == "RUNNING"
    # A job starting (STARTING: Batch placed it on an instance, its container starts) got Spot capacity, though its
    # wait ends with its RUNNING (`job_events`): taken for a job still waiting, it would be replaced by an On-Demand
    # one, paying a changeover again, for want of capacity it has.
    starting = detail.status == "STARTING" and not detail.is_array_parent
    # Batch was described at the start of the pass: a job whose run the ledger has recorded since is not waiting. Not
    # one the ledger holds STARTING: Batch tries the job again when its container cannot start (an image pull
    # failing), and the RUNNABLE it then waits in comes after that STARTING, which no later event would then undo.
    started_since = attempt is not None and attempt.status == "RUNNING" and not detail.is_array_parent
    waiting_since = stage.spot_waiting_since
    if waiting_since and job_runs:
        end_spot_wait(svc, stage)
        waiting_since = None
    elif started_since or starting:
        # It got capacity (since): the wait this pass read with the stage is not a want of it (its start ends it).
        waiting_since = None
    elif not waiting_since and job_waits:
        # The job's start may be recorded while this pass runs, its handler reading the stage before this wait.
        waiting_since = start_spot_wait(svc, stage, None if detail.is_array_parent else stage.attempt)
    waiting = waiting_since and now - parse_time(waiting_since) > timedelta(
        minutes=svc.settings.spot_wait_signal_minutes
    )
    running = detail.status == "RUNNING" or detail.shards_running > 0
    if waiting:
        # Stuck RUNNABLE on the Spot queue (the job, or a shard of the array): there is no Spot capacity for it.
        decision = choose_capacity(svc, run, stage, current=Action.IDLE, spot_available=False, view=view)
    elif running or starting:
        decision = choose_capacity(svc, run, stage, current=Action.SPOT, spot_available=True, view=view)
    elif waiting_since and not waiting_leaves_time(view.remaining_hours, view.hours_left, change):
        # Too young a wait to call it a want of capacity (instances take minutes to start), but the deadline's guard
        # rail holds whatever the wait: the policy placed it on Spot counting on being asked again a pass later.
        decision = Decision(Action.ON_DEMAND, WAITING_LEAVES_NO_TIME)
    else:
        return None
    if decision.action != Action.ON_DEMAND:
        return None
    if running:
        request_checkpoint(svc, stage, f"requeue to On-Demand: {decision.reason}")
    placed = requeue_to_on_demand(svc, run, stage, detail.job_id, decision.reason)
    return "requeued to On-Demand" if placed else None


def _failed_child_node(svc: Services, job: BatchJobDetail) -> BatchJobDetail | None:
    """A failed child node of a running multi-node job, as Batch describes it; None when none has failed."""
    for node in svc.batch.multinode_nodes(job.job_id, job.multinode_nodes):
        described = BatchJobDetail.model_validate(node)
        if described.status == "FAILED" and described.multinode_parent_id == job.job_id:
            return described
    return None


def _end_requeued_job(svc: Services, stage: Stage) -> bool:
    """Ends the Spot job of the attempt before, if it was requeued to On-Demand and its end is not recorded. Either the
    requeue's handler died between placing the On-Demand job and terminating the Spot one, which would otherwise run
    on when capacity returns, writing to the same outputs: it is terminated. Or its end was told nowhere (an event
    lost): recorded now, as its event would have been, with its stop, its bill and the notices of what followed;
    otherwise it would be billed without end and terminated again at every pass.

    A success of that job recorded while the stage still runs the attempt after it was not acted on (its handler died
    after recording it): acted on now, as the event's retry would, from what was recorded. The stage settles on its
    work and the later job is ended; left alone, that job would do the stage again, and the run wait on it. True when
    a success was acted on, recorded or told now (the stage is no longer the one read)."""
    if stage.attempt <= 1:
        return False
    previous = svc.ledger.get_attempt(stage.run_id, stage.stage, stage.attempt - 1)
    if not (previous and previous.cancel_reason and previous.job_id):
        return False
    if previous.status == "SUCCEEDED":
        name = job_name(previous.run_id, previous.stage, previous.attempt)
        recorded = {"jobId": previous.job_id, "jobName": name, "jobQueue": previous.queue, "status": previous.status}
        apply_job_state(svc, BatchJobDetail.model_validate(recorded))
        return True
    if previous.status in TERMINAL_STATUSES:
        return False
    job = svc.batch.describe([previous.job_id]).get(previous.job_id)
    if job is not None and job.get("status") in TERMINAL_STATUSES:
        apply_job_state(svc, BatchJobDetail.model_validate(job))
        return job.get("status") == "SUCCEEDED"  # the stage settled on it (`job_events._act_on_terminal`)
    svc.batch.terminate(previous.job_id, f"spot-hpc: {previous.cancel_reason} (attempt {previous.attempt})")
    return False
