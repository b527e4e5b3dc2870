"""The end of a run: settle it in the ledger and tell the team what it cost and saved."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spot_hpc.clock import parse_time
from spot_hpc.ledger import LedgerConflict, Run
from spot_hpc.metrics import record_event_outcome, record_settled_run
from spot_hpc.notifier import notify
from spot_hpc.placement import node_price, stop_stage
from spot_hpc.run_report import FailureClass, build_run_report, describe_failure
from spot_hpc.services import Services
from spot_hpc.slack import Notification, hours_shown

logger = logging.getLogger(__name__)


def run_report(svc: Services, run: Run, keep_prices: bool = False) -> dict[str, Any]:
    """The run's report. An attempt placed while prices could not be looked up is priced again, as of its placement;
    `keep_prices` keeps that price in the ledger, and, once the run has ended, each stage's On-Demand price (the base
    of its savings), so that every later report tells the same figures whatever the stack's instance types or AWS's
    prices are by then: for the control plane, which settles runs, not for a reader of the ledger (`spotctl report
    --stack` may only read it)."""
    stages, attempts = svc.ledger.get_run_items(run.run_id)
    by_name = {stage.stage: stage for stage in stages}
    for index, attempt in enumerate(attempts):
        if attempt.price_unknown and attempt.stage in by_name:
            price = node_price(svc, attempt.capacity, by_name[attempt.stage], at=parse_time(attempt.submitted_at))
            if price is not None:
                attempt.usd_per_hour, attempt.price_unknown = price, False
                if keep_prices:
                    try:
                        svc.ledger.update_attempt(
                            attempt.run_id,
                            attempt.stage,
                            attempt.attempt,
                            # Only over the unknown price read: the attempt's end, told meanwhile (a run that fails
                            # terminates its jobs), may have priced it on the instances it got, which stands.
                            condition="#price_unknown = :unknown",
                            condition_values={"unknown": True},
                            usd_per_hour=price,
                            price_unknown=False,
                        )
                    except LedgerConflict:
                        attempts[index] = (
                            svc.ledger.get_attempt(attempt.run_id, attempt.stage, attempt.attempt) or attempt
                        )
    prices = {
        stage.stage: stage.on_demand_usd_per_hour
        if stage.on_demand_usd_per_hour is not None
        else node_price(svc, "on-demand", stage)
        for stage in stages
    }
    if keep_prices and run.status != "RUNNING":
        for stage in stages:
            price = prices[stage.stage]
            if stage.on_demand_usd_per_hour is None and price is not None:
                svc.ledger.keep_on_demand_base(run.run_id, stage.stage, price)
    report = build_run_report(run, stages, attempts, prices)
    report["notifications"] = svc.ledger.run_notifications(run.run_id)
    return report


@dataclass(frozen=True)
class Settlement:
    report: dict[str, Any]
    # Whether this invocation settled the run-end notice (sent it and marked it sent), and so counts the run's
    # figures: a notice is marked sent once, so they are counted once, also when the invocation that settled the run
    # died before its notice and a retry sends it (a retry after the notice went out counts nothing), or when a notice
    # sent could not be marked sent and is sent again.
    counted: bool

    def summary(self) -> dict[str, Any]:
        return {k: self.report[k] for k in SUMMARY_FIELDS}


def record_settlement(metrics: Any, settlement: Settlement) -> dict[str, Any]:
    """The run's figures go to the metrics once (not again when the state machine retries the notify task)."""
    if settlement.counted:
        record_settled_run(metrics, settlement.report)
    return settlement.summary()


def record_guard_pass(metrics: Any, result: dict[str, Any]) -> dict[str, Any]:
    """The SLA guard's pass: the runs it settled are counted like the notify function's, then its own figures. Each
    run it counts goes out as a record of its own, as the notify function's do, so that its `run_id` goes with its
    figures (one record for several runs would carry only the last one's)."""
    settled = []
    for settlement in result.pop("settlements", []):
        settled.append(record_settlement(metrics, settlement))
        if settlement.counted:
            metrics.flush_metrics()
    return record_event_outcome(metrics, result | {"settled_runs": settled})


SUMMARY_FIELDS = ("run_id", "pipeline_status", "cost_usd", "on_demand_only_cost_usd", "savings_pct", "deadline_met")


def finish(
    svc: Services, payload: dict[str, Any], leave_held_notice: bool = False, ended_at: datetime | None = None
) -> Settlement:
    """Settles the run, as ended at `ended_at` (now, unless said), and tells how it ended. A notice whose claim
    another invocation holds raises NotificationClaimHeld, so that the state machine retries the notify task after
    that claim's lease (its holder may have died before sending); `leave_held_notice` leaves the notice to its holder
    instead, for a caller that never comes back to the run (the SLA guard)."""
    run_id, outcome = str(payload.get("run_id", "")), payload.get("outcome")
    if outcome not in ("succeeded", "failed"):
        raise ValueError(f"outcome must be succeeded or failed, not {outcome!r}")
    run = svc.ledger.get_run(run_id)
    if run is None:
        raise ValueError(f"run {run_id!r} is not in the ledger")
    error = _error_text(payload.get("error"))
    settled_as = "SUCCEEDED" if outcome == "succeeded" else "FAILED"
    svc.ledger.finish_run(run_id, settled_as, error or None, finished_at=ended_at)
    run = svc.ledger.get_run(run_id) or run
    if run.status not in (settled_as, "RUNNING"):
        # Settled first as the other outcome (a notify task still running when the execution was stopped and the SLA
        # guard settled the run): the run's end is told as it was settled, by whoever settled it, never as this one.
        logger.warning("run settled as the other outcome: nothing told", extra={"run_id": run_id, "status": run.status})
        return Settlement(run_report(svc, run), counted=False)
    if outcome == "failed":
        # A stage the state machine gave up on (timed out, its runner failed) may still have a job running.
        stop_unfinished_stages(svc, run_id, f"run failed: {error or 'a stage failed'}")
    report = run_report(svc, run, keep_prices=True)
    history = _history(report)
    stage: str | None = None
    if outcome == "succeeded":
        took = hours_shown(report["finished_hours"], run.deadline_hours)
        reason = (
            f"deadline {'met' if report['deadline_met'] else 'missed'}: {took} h of {run.deadline_hours:g} h; {history}"
        )
        figures = {k: report[k] for k in ("cost_usd", "on_demand_only_cost_usd", "savings_pct", "deadline_met")}
    else:
        # Which stage failed for good and why, in words; the state machine's error follows for the engineers.
        # A failed run delivered nothing: its cost is told, not "savings" against stages it never ran.
        failed = next((item for item in report["stages"] if item["status"] == "FAILED"), None)
        stage = failed["name"] if failed else None
        reason = f"{_stage_failure(failed) if failed else 'a stage failed'}; {history}"
        if error:
            reason += f". Details: {error}"
        figures = {k: report[k] for k in ("cost_usd", "deadline_met")}
    if report["prices_unknown"]:
        reason += f"; the cost counts {_plural(report['prices_unknown'], 'price')} that could not be looked up as $0"
    # A notice left to the invocation holding its claim is not sent here: its holder counts the run. One sent but not
    # marked sent is sent again after its lease, by a retry or the SLA guard, which count it instead.
    sent = notify(svc, outcome, run, stage, reason, raise_if_held=not leave_held_notice, **figures)
    # Told, or claimed by an invocation that tells it (or, if it dies, the SLA guard): the run is no longer open.
    # A failure here must not fail the invocation: its retry would find the notice sent and count nothing, so the
    # run's figures would reach no metric. A run left open is settled again by the SLA guard, which counts nothing.
    try:
        svc.ledger.close_run(run_id)
    except Exception:
        logger.exception("could not close the run; the SLA guard's sweep closes it", extra={"run_id": run_id})
    return Settlement(report, counted=sent)


def late_run_end_settlement(svc: Services, notification: Notification, dedupe_key: str) -> Settlement | None:
    """The figures of a run whose run-end notice the SLA guard sends because the invocation that claimed it died
    first (`notifier.send_orphaned_notices`, called under the guard's claim, before the notice goes out): that
    invocation counted nothing (a notify invocation counts the run with the notice it sends), so the guard counts
    them, once, as that notice goes out once. The report is read now: the run was settled before its notice was
    claimed. None for any other notice, and for a run-end notice of the other outcome than the run was settled as
    (`finish` counts nothing for it either)."""
    if notification.kind not in ("succeeded", "failed") or dedupe_key != notification.dedupe_key:
        return None  # not a run's end (a rejected upload's notice is keyed by its event)
    run = svc.ledger.get_run(notification.run_id)
    if run is None or run.status != notification.kind.upper():
        return None
    return Settlement(run_report(svc, run, keep_prices=True), counted=True)


def stop_unfinished_stages(svc: Services, run_id: str, reason: str) -> None:
    """Ends the stages a run left running, terminating their jobs (see `placement.stop_stage`); stages it never
    reached stay PENDING."""
    stages, _ = svc.ledger.get_run_items(run_id)
    for stage in stages:
        if stage.status == "RUNNING":
            stop_stage(svc, stage, reason)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _history(report: dict[str, Any]) -> str:
    """What the run went through: "2 interruptions, 1 requeue to On-Demand"."""
    return (
        f"{_plural(report['interruptions'], 'interruption')}, "
        f"{_plural(report['requeues_to_on_demand'], 'requeue')} to On-Demand"
    )


def _stage_failure(stage: dict[str, Any]) -> str:
    attempts = stage["attempts"]
    if not attempts:
        return f"{stage['name']} failed for good"
    last = attempts[-1]
    # Running when the run ended, or stopped by the control plane for it: a requeue's cancelled attempt is never a
    # stage's last (the requeue places the next one), so a last cancelled attempt is the run's end, not the stage's.
    stopped_for_the_run = last.get("failure_class") == FailureClass.CANCELLED_BY_CONTROL_PLANE
    if stopped_for_the_run or (last.get("failure_class") is None and last.get("status") != "FAILED"):
        return f"{stage['name']} was still on attempt {len(attempts)} when the run ended; its job is stopped"
    return (
        f"{stage['name']} failed for good on attempt {len(attempts)}: "
        f"{describe_failure(last.get('failure_class'), last.get('exit_code'))}"
    )


def _error_text(error: Any) -> str:
    """The state machine's caught error: {"Error": ..., "Cause": ...} (the cause may itself be JSON)."""
    if not isinstance(error, dict):
        return ""
    cause = error.get("Cause") or ""
    try:
        parsed = json.loads(cause)
        if isinstance(parsed, dict):
            cause = parsed.get("errorMessage") or parsed.get("Cause") or cause
    except (TypeError, ValueError):
        pass
    return f"{error.get('Error', 'Error')}: {cause}".strip(": ")
