"""Notifications from the control plane: deduplicated in the ledger, published to SNS and Slack.

A Slack outage never fails a pipeline: undelivered messages go to the notifications dead-letter queue, and for a
minute after Slack failed to take one the next are parked there at once rather than each waiting on Slack. The SLA
guard sends parked messages to Slack again once it is back (`redeliver_parked_notices`).

Each notice is claimed in the ledger before it is sent, and the claim is a lease that ends with the claiming
invocation (`Services.invocation_ends_at`): a handler killed between the claim and the send leaves a claim that a
retry takes over. A claim also keeps the notice it is to send, so that when its holder died and nothing else comes
back for it, the SLA guard sends it, late, once the lease has lapsed (`send_orphaned_notices`). A send that finds
the claim still held by another invocation never reports it sent: that invocation may have died before sending (a
crash well before its deadline). The state machine's notify task then raises `NotificationClaimHeld` and retries its
run-end notice for longer than the notify function's lease; the event handlers and the SLA guard leave it to the
holder, or to the guard (`notify`'s default).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from spot_hpc.clock import format_time, hours_between, parse_time, utc_now
from spot_hpc.ledger import NoticeClaim, NotificationClaimHeld, Run
from spot_hpc.services import Services
from spot_hpc.slack import (
    MESSAGE_REFUSED_STATUSES,
    DeliveryOutcome,
    InvalidWebhookUrl,
    NotANotification,
    Notification,
    SlackAttempt,
    SlackCircuit,
    SlackWebhook,
    WebhookSecretError,
    WebhookSecretUnreadable,
    build_delayed_message,
    delete_parked_notice,
    deliver_notification,
    notification_report_entries,
    notification_report_entry,
    parked_body_excerpt,
    parse_parked_notice,
    parse_stored_notice,
    read_webhook_url,
    receive_parked_notices,
    release_parked_notices,
    stored_notice,
    stored_notice_excerpt,
    try_slack,
)

logger = logging.getLogger(__name__)
Sent = TypeVar("Sent")  # what a notice's sender returns

# Powertools caches the secret this long, so a rotated webhook is picked up without a cold start.
WEBHOOK_MAX_AGE_SECONDS = 300
# Each notice may spend this long on Slack (its retries included)...
SLACK_BUDGET_SECONDS = 20.0
# ... and after Slack failed to take one, the notices of the next minute in this process are parked on the
# dead-letter queue at once: a Slack outage must not hold up requeues within a Spot warning's two minutes, nor the
# SLA guard's pass over every stage.
SLACK_CIRCUIT = SlackCircuit(cool_down_seconds=60.0)


def _webhook(svc: Services) -> SlackWebhook | WebhookSecretUnreadable | None:
    """The Slack webhook; None (SNS only) when the secret is missing; why it cannot be used, when it could not be read
    now or holds no webhook URL (Slack's copies are parked until it can be used)."""
    loopback = svc.settings.slack_allow_loopback
    try:
        url = read_webhook_url(
            svc.secrets,
            svc.settings.slack_secret_id,
            allow_loopback_http=loopback,
            max_age_seconds=WEBHOOK_MAX_AGE_SECONDS,
        )
    except WebhookSecretUnreadable as exc:
        logger.warning("Slack unreachable: %s", exc)
        return exc
    except InvalidWebhookUrl as exc:
        # The secret exists, so Slack is set up: its notices wait on the dead-letter queue (and raise its alarm) until
        # the secret is fixed, rather than being dropped with a log line nobody reads.
        logger.error("Slack unreachable: %s", exc)
        return WebhookSecretUnreadable(str(exc))
    except WebhookSecretError as exc:
        logger.warning("Slack disabled: %s", exc)
        return None
    return SlackWebhook(url, allow_loopback_http=loopback)


def notify(
    svc: Services,
    kind: str,
    run: Run,
    stage: str | None,
    reason: str,
    attempt: int | None = None,
    raise_if_held: bool = False,
    **figures: Any,
) -> bool:
    """Sends one notification per (run, stage, kind, attempt). True when this invocation settled it: sent it and
    recorded it sent. False when it was sent already, or left to another invocation (below), or went out but could not
    be recorded sent: its claim then lapses with its notice, and whoever sends it again (a retry, or the SLA guard)
    settles it, so that a run's end is counted once (`outcome.finish`).

    A claim another invocation holds is left to it, or, should it have died, to the SLA guard once its lease lapses
    (`send_orphaned_notices`): for the event handlers, whose notice is the last step of work already done, and the
    guard (False). `raise_if_held` raises NotificationClaimHeld instead, for the state machine's notify task, which
    retries its run-end notice past the holder's lease."""
    notification = Notification(
        kind=kind,  # type: ignore[arg-type]
        run_id=run.run_id,
        stage=stage,
        reason=reason,
        attempt=attempt,
        deadline_hours=run.deadline_hours,
        elapsed_hours=round(hours_between(parse_time(run.started_at), _ended_or_now(run)), 3),
        **figures,
    )
    return _send(svc, notification, notification.dedupe_key, raise_if_held)


def _ended_or_now(run: Run) -> datetime:
    """When the run ended, once it has (the SLA guard settles a run as of its last stage's end, minutes before it
    tells it: its hours are those its deadline is judged by); now while it runs."""
    return parse_time(run.finished_at) if run.status != "RUNNING" and run.finished_at else utc_now()


def notify_rejected_upload(
    svc: Services, run_id: str, source: str, reason: str, event_id: str, title: str | None = None
) -> bool:
    """Tells the team an upload will not run (once per event): it would otherwise wait for a run that never comes. A
    claim another delivery of the event holds is left to it, as `notify` leaves one."""
    notification = Notification(
        kind="failed",
        run_id=run_id,
        stage=None,
        reason=f"upload rejected: {reason}",
        details={"source": source},
        title=title,
    )
    return _send(svc, notification, f"rejected#{event_id or source}")


def _deliver(
    svc: Services, notification: Notification, dedupe_key: str, late_since: str | None = None
) -> DeliveryOutcome:
    """SNS and Slack, or parked for Slack (`late_since`: a notice its first sender died with, first due then)."""
    return deliver_notification(
        notification,
        webhook=_webhook(svc),
        sns_client=svc.sns,
        topic_arn=svc.settings.notification_topic_arn,
        sqs_client=svc.sqs,
        dead_letter_queue_url=svc.settings.notifications_dlq_url,
        budget_seconds=SLACK_BUDGET_SECONDS,
        circuit=SLACK_CIRCUIT,
        dedupe_key=dedupe_key,
        late_since=late_since,
    )


def _send(svc: Services, notification: Notification, dedupe_key: str, raise_if_held: bool = False) -> bool:
    """Sends a notice once (SNS and Slack, or parked for Slack); whether this invocation settled it, as `notify` says
    (NotificationClaimHeld with `raise_if_held` when another invocation holds its claim). The claim keeps the
    notice, for the SLA guard to send if this invocation dies before it does."""
    # SNS or SQS failing (after botocore's retries) raises: the claim is given back so that the retry sends it.
    try:
        outcome = _send_claimed(
            svc,
            dedupe_key,
            lambda: _deliver(svc, notification, dedupe_key),
            notice=stored_notice(notification, due_at=format_time(utc_now())),
        )
    except NotificationClaimHeld:
        if raise_if_held:
            raise
        logger.info("notice held by another invocation; left to it", extra={"key": dedupe_key})
        return False
    if outcome is None:
        return False
    delivered, settled = outcome
    _note_on_run(svc, notification, notification_report_entries(notification, delivered))
    logger.info(
        "notified",
        extra={
            "kind": notification.kind,
            "run_id": notification.run_id,
            "stage": notification.stage,
            "slack": delivered.slack,
        },
    )
    return settled


def _note_on_run(svc: Services, notification: Notification, entries: list[dict[str, str]]) -> None:
    """Notes a notice's delivery on its run, for the run report. The notice went out (and may be marked sent): a
    failure here must not fail its sender, whose retry would find the notice sent and count nothing for it."""
    try:
        svc.ledger.record_notifications(notification.run_id, entries)
    except Exception:
        logger.exception(
            "notice sent but not noted on its run",
            extra={"kind": notification.kind, "run_id": notification.run_id, "stage": notification.stage},
        )


def _send_claimed(
    svc: Services,
    dedupe_key: str,
    send: Callable[[], Sent],
    went_out: Callable[[Sent], bool] = lambda _: True,
    notice: str | None = None,
    keep_notice: bool = False,
) -> tuple[Sent, bool] | None:
    """The one flow of every notice: claim it in the ledger, `send` it, then mark it sent when it `went_out`, or give
    the claim back (`send` raising, or what it returned saying the notice did not go out) so that a retry sends it at
    once. Returns what `send` returned and whether the notice is now marked sent by this invocation; None, sending
    nothing, when it was sent already; NotificationClaimHeld when another invocation holds its claim.

    `notice` (`stored_notice`) is kept with the claim until it is marked sent or given back, for the SLA guard to
    send should this invocation die in between; `keep_notice` gives a claim back with its notice kept (the guard's
    own sends: no retry of an event comes back for them)."""
    claim = svc.ledger.claim_notification(dedupe_key, svc.invocation_ends_at, notice)
    if claim is None:
        return None
    give_back = _lapse_claim if keep_notice else _release_claim
    try:
        result = send()
    except Exception:
        give_back(svc, dedupe_key, claim)
        raise
    if went_out(result):
        return result, _settle_claim(svc, dedupe_key, claim)
    give_back(svc, dedupe_key, claim)
    return result, False


def _settle_claim(svc: Services, dedupe_key: str, claim: str) -> bool:
    """Marks a notice sent; whether it could. Failing that (DynamoDB still throttling), the notice is out all the
    same: the handler goes on, and the claim stops duplicates until its lease ends. Then its notice, kept with the
    claim, is sent again by a retry or the SLA guard, which settle it (and count a run's end: this one does not)."""
    try:
        if svc.ledger.mark_notification_sent(dedupe_key, claim):
            return True
        logger.warning("notification claim was taken over before it was marked sent", extra={"key": dedupe_key})
    except Exception:
        logger.exception("notification sent but not marked sent; a retry after the lease may send it again")
    return False


def _release_claim(svc: Services, dedupe_key: str, claim: str) -> None:
    """Gives a claim back without hiding the error that made the send fail: a claim not given back is taken over by
    a retry once its lease ends."""
    try:
        svc.ledger.release_notification(dedupe_key, claim)
    except Exception:
        logger.exception("notification claim not released; a retry takes it over after the lease")


def _lapse_claim(svc: Services, dedupe_key: str, claim: str) -> None:
    """Gives a claim back keeping its notice, for a retry or a later guard pass (an error here is logged: the claim
    lapses with its lease all the same)."""
    try:
        svc.ledger.lapse_notification(dedupe_key, claim)
    except Exception:
        logger.exception("notification claim not given back; it lapses with its lease")


# --- Parked notices ---------------------------------------------------------------------------------------------

# The SLA guard sends parked notices again after its stage checks, within this much time...
REDELIVERY_BUDGET_SECONDS = 60.0
# ... and never closer than this to its Lambda timeout.
REDELIVERY_TIMEOUT_MARGIN_SECONDS = 15.0
# At most this many a pass: a backlog drains over a few passes, never in one long one.
REDELIVERY_MAX_NOTICES = 50
# Taken notices are hidden from other readers this long: the guard's timeout, so the next pass never takes a notice
# this one holds; one that Slack did not take comes back for a later pass.
REDELIVERY_VISIBILITY_SECONDS = 300
# Sending a parked notice again is claimed in the ledger too: a notice parked twice, or received again after its
# delete failed, reaches Slack once.
REDELIVERY_KEY_PREFIX = "redelivery#"
PARKED_NOTICES_SOURCE = "notifications dead-letter queue"


def redeliver_parked_notices(
    svc: Services,
    remaining_seconds: Callable[[], float] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Sends the notices Slack could not take, parked on the notifications dead-letter queue, to Slack again, each
    saying it is late and when it was first due. Slack only: SNS had every one of them already.

    Bounded: at most `REDELIVERY_MAX_NOTICES`, within `REDELIVERY_BUDGET_SECONDS` and, given `remaining_seconds` (the
    Lambda's time left), never within `REDELIVERY_TIMEOUT_MARGIN_SECONDS` of its timeout; a notice is started only if
    a whole Slack budget fits. A notice leaves the queue only when Slack took it, or when it can never be sent (not a
    notification, or refused by Slack as invalid): those are recorded and dropped. While Slack rests (`SLACK_CIRCUIT`),
    fails or refuses the webhook, nothing more is tried: the notices wait for a later pass (the queue keeps them 14
    days). Never raises: the guard's own work is done by then.
    """
    counts = {"redelivered": 0, "duplicates": 0, "dropped": 0, "left": 0}
    time_for_one = _time_for_one_notice(REDELIVERY_BUDGET_SECONDS, remaining_seconds, clock)
    if not time_for_one():
        return _pass_summary(counts, "no time left in this invocation")
    webhook = _webhook(svc)
    if webhook is None:
        return _pass_summary(counts, "Slack is not configured")
    if isinstance(webhook, WebhookSecretUnreadable):
        return _pass_summary(counts, str(webhook))
    stopped = SLACK_CIRCUIT.resting(webhook)
    queue_url = svc.settings.notifications_dlq_url
    taken = 0
    try:
        while stopped is None and taken < REDELIVERY_MAX_NOTICES and time_for_one():
            messages = receive_parked_notices(
                svc.sqs,
                queue_url,
                max_messages=min(10, REDELIVERY_MAX_NOTICES - taken),
                visibility_timeout_seconds=REDELIVERY_VISIBILITY_SECONDS,
            )
            if not messages:
                break
            taken += len(messages)
            for index, message in enumerate(messages):
                if stopped is None and not time_for_one():
                    stopped = "time budget spent"
                if stopped is not None:
                    release_parked_notices(svc.sqs, queue_url, messages[index:])
                    counts["left"] += len(messages) - index
                    break
                outcome, stopped = _redeliver(svc, webhook, message)
                counts[outcome] += 1
    except Exception:
        # What was taken and not settled reappears when its visibility timeout ends.
        logger.exception("sending parked notices again stopped on an AWS error; they stay on the queue")
        stopped = "AWS error"
    return _pass_summary(counts, stopped)


def _time_for_one_notice(
    budget_seconds: float, remaining_seconds: Callable[[], float] | None, clock: Callable[[], float]
) -> Callable[[], bool]:
    """Whether one more notice, with its whole Slack budget, fits in a guard's sending of late notices that started
    now: within `budget_seconds`, and never within `REDELIVERY_TIMEOUT_MARGIN_SECONDS` of the Lambda's timeout
    (`remaining_seconds`: its time left)."""
    budget = budget_seconds
    if remaining_seconds is not None:
        budget = min(budget, remaining_seconds() - REDELIVERY_TIMEOUT_MARGIN_SECONDS)
    deadline = clock() + budget
    return lambda: deadline - clock() >= SLACK_BUDGET_SECONDS


def _pass_summary(counts: dict[str, int], stopped: str | None, what: str = "parked notices") -> dict[str, Any]:
    """What a guard pass did with late notices (`what`), logged when it did or stopped anything."""
    if stopped is not None or any(counts.values()):
        logger.info(what, extra={**counts, "stopped": stopped})
    return {**counts, "stopped": stopped}


def _redeliver(svc: Services, webhook: SlackWebhook, message: dict[str, Any]) -> tuple[str, str | None]:
    """One parked message: (what became of it, why the pass stops or None)."""
    queue_url = svc.settings.notifications_dlq_url
    try:
        parked = parse_parked_notice(message)
    except NotANotification as exc:
        excerpt = parked_body_excerpt(message)
        logger.error(
            "parked message dropped: it is not a notification and can never be sent",
            extra={"message_id": message.get("MessageId"), "problem": str(exc), "body": excerpt},
        )
        svc.ledger.record_rejection(
            PARKED_NOTICES_SOURCE, str(exc), {"event_id": message.get("MessageId"), "body": excerpt}
        )
        delete_parked_notice(svc.sqs, queue_url, message)
        return "dropped", None
    notification = parked.notification

    def post_late() -> SlackAttempt:
        late = build_delayed_message(notification, parked.due_at)
        return try_slack(webhook, lambda: webhook.post(late, budget_seconds=SLACK_BUDGET_SECONDS), SLACK_CIRCUIT)

    def done_with(attempt: SlackAttempt) -> bool:  # taken, or refused as invalid (it never will be taken)
        return attempt.delivered or attempt.status in MESSAGE_REFUSED_STATUSES

    try:
        claimed = _send_claimed(svc, REDELIVERY_KEY_PREFIX + parked.dedupe_key, post_late, went_out=done_with)
    except NotificationClaimHeld:
        return "left", None  # another pass is sending it now: it comes back if that pass dies
    if claimed is None:  # a second copy of a notice sent again already
        delete_parked_notice(svc.sqs, queue_url, message)
        return "duplicates", None
    attempt, _ = claimed
    details = {"kind": notification.kind, "run_id": notification.run_id, "due_at": parked.due_at, "then": parked.error}
    if attempt.delivered:
        status = "delivered late"
        logger.info("parked notice delivered to Slack", extra=details)
    elif attempt.status in MESSAGE_REFUSED_STATUSES:
        status = "undeliverable"
        logger.error("parked notice dropped: Slack refuses it", extra={**details, "error": attempt.error})
    else:
        # Slack is down (the circuit rests it now) or refuses the webhook itself (revoked, archived channel): the
        # claim was given back and the notices wait on the queue until the next passes find it back, or the webhook
        # secret is fixed.
        logger.warning("parked notice not delivered; left on the queue", extra={**details, "error": attempt.error})
        return "left", attempt.error
    delete_parked_notice(svc.sqs, queue_url, message)
    _note_on_run(svc, notification, [notification_report_entry(notification, "slack", status)])
    return ("redelivered" if attempt.delivered else "dropped"), None


# --- Orphaned notices -------------------------------------------------------------------------------------------

# The SLA guard sends notices whose claimer died before sending them (and whose lease has ended) after its stage
# checks and before the parked notices, within this much time (and never within REDELIVERY_TIMEOUT_MARGIN_SECONDS
# of its timeout)...
ORPHAN_SWEEP_BUDGET_SECONDS = 60.0
# ... and looks at most at this many claims a pass: the rest wait for the next.
ORPHAN_SWEEP_MAX_NOTICES = 20
ORPHANED_NOTICES_SOURCE = "notification claims"


def send_orphaned_notices(
    svc: Services,
    remaining_seconds: Callable[[], float] | None = None,
    clock: Callable[[], float] = time.monotonic,
    before_sending: Callable[[Notification, str], Any] | None = None,
) -> tuple[dict[str, Any], list[Any]]:
    """Sends the notices whose claimer died between its claim and its send, when no retry came back for them after
    the claim's lease (the event's retries were spent on the held claim): SNS and Slack (or parked for it), each
    saying it is late and when it was first due, recorded on its run and marked sent.

    Each is taken over through the same conditional claim as a retry's, so that a retry and the guard never both
    send it: a claim taken meanwhile (held) or a notice sent meanwhile is skipped. `before_sending(notification,
    dedupe_key)` runs under the claim before the notice goes out (raising gives the claim back, sending nothing);
    what it returns for each notice sent and marked sent is returned with the pass's summary.

    Bounded like `redeliver_parked_notices`: at most `ORPHAN_SWEEP_MAX_NOTICES` claims, within
    `ORPHAN_SWEEP_BUDGET_SECONDS`, never within `REDELIVERY_TIMEOUT_MARGIN_SECONDS` of the Lambda's timeout, and a
    notice is started only if a whole Slack budget fits. A stored notice that cannot be read is recorded as a
    rejection and taken out of the index. An AWS error stops the sweep until the next pass. Never raises.
    """
    counts = {"sent": 0, "already_sent": 0, "held": 0, "dropped": 0}
    prepared: list[Any] = []
    time_for_one = _time_for_one_notice(ORPHAN_SWEEP_BUDGET_SECONDS, remaining_seconds, clock)
    if not time_for_one():
        return _pass_summary(counts, "no time left in this invocation", "orphaned notices"), prepared
    stopped: str | None = None
    looked_at = 0
    try:
        for claim in svc.ledger.lapsed_notice_claims(limit=ORPHAN_SWEEP_MAX_NOTICES + 1):
            if looked_at >= ORPHAN_SWEEP_MAX_NOTICES:
                stopped = f"at most {ORPHAN_SWEEP_MAX_NOTICES} a pass"
                break
            if not time_for_one():
                stopped = "time budget spent"
                break
            looked_at += 1
            outcome, before = _send_orphan(svc, claim, before_sending)
            counts[outcome] += 1
            if outcome == "sent" and before is not None:
                prepared.append(before)
    except Exception:
        # A claim taken and not sent was given back (lapsed, its notice kept) or lapses with this invocation.
        logger.exception("sending orphaned notices stopped on an error; they wait for the next pass")
        stopped = "AWS error"
    return _pass_summary(counts, stopped, "orphaned notices"), prepared


def _send_orphan(
    svc: Services, claim: NoticeClaim, before_sending: Callable[[Notification, str], Any] | None
) -> tuple[str, Any]:
    """One lapsed claim: (what became of it, what `before_sending` returned for it)."""
    key = claim.dedupe_key
    try:
        notification, due_at = parse_stored_notice(claim.notice)
    except NotANotification as exc:
        excerpt = stored_notice_excerpt(claim.notice)
        logger.error(
            "orphaned notice dropped: what its claim stored is not a notification and can never be sent",
            extra={"key": key, "problem": str(exc), "body": excerpt},
        )
        svc.ledger.record_rejection(ORPHANED_NOTICES_SOURCE, str(exc), {"event_id": key, "body": excerpt})
        svc.ledger.unlist_notification(key, claim.claim_id)
        return "dropped", None
    before: list[Any] = []

    def send() -> DeliveryOutcome:
        if before_sending is not None:
            before.append(before_sending(notification, key))
        return _deliver(svc, notification, key, late_since=due_at)

    # Taken over as a retry would take it; SNS or SQS failing gives the claim back with its notice (and raises).
    try:
        claimed = _send_claimed(svc, key, send, notice=claim.notice, keep_notice=True)
    except NotificationClaimHeld:
        return "held", None  # a retry took it over since the index was read: it sends it
    if claimed is None:
        return "already_sent", None
    outcome, settled = claimed
    details = {"kind": notification.kind, "run_id": notification.run_id, "due_at": due_at, "slack": outcome.slack}
    logger.warning("orphaned notice sent late: the invocation that claimed it died before sending it", extra=details)
    _note_on_run(svc, notification, notification_report_entries(notification, outcome, late=True))
    # Not marked sent, it is sent again by a later pass, which counts a run's end instead of this one.
    return "sent", before[0] if before and settled else None
