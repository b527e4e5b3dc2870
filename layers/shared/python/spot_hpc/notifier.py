"""Notifications from the control plane: deduplicated in the ledger, published to SNS and Slack.

A Slack outage never fails a pipeline: undelivered messages go to the notifications dead-letter queue, and for a
minute after Slack failed to take one the next are parked there at once rather than each waiting on Slack.
"""

from __future__ import annotations

import logging
from typing import Any

from spot_hpc.clock import hours_between, parse_time, utc_now
from spot_hpc.ledger import Run
from spot_hpc.services import Services
from spot_hpc.slack import (
    Notification,
    SlackCircuit,
    SlackWebhook,
    WebhookSecretError,
    deliver_notification,
    notification_report_entries,
    read_webhook_url,
)

logger = logging.getLogger(__name__)

# Powertools caches the secret this long, so a rotated webhook is picked up without a cold start.
WEBHOOK_MAX_AGE_SECONDS = 300
# Each notice may spend this long on Slack (its retries included)...
SLACK_BUDGET_SECONDS = 20.0
# ... and after Slack failed to take one, the notices of the next minute in this process are parked on the
# dead-letter queue at once: a Slack outage must not hold up requeues within a Spot warning's two minutes, nor the
# SLA guard's pass over every stage.
SLACK_CIRCUIT = SlackCircuit(cool_down_seconds=60.0)


def _webhook(svc: Services) -> SlackWebhook | None:
    """The Slack webhook; None (SNS only) when the secret is missing or invalid."""
    loopback = svc.settings.slack_allow_loopback
    try:
        url = read_webhook_url(
            svc.secrets,
            svc.settings.slack_secret_id,
            allow_loopback_http=loopback,
            max_age_seconds=WEBHOOK_MAX_AGE_SECONDS,
        )
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
    **figures: Any,
) -> bool:
    """Sends one notification per (run, stage, kind, attempt); False when it was already sent."""
    notification = Notification(
        kind=kind,  # type: ignore[arg-type]
        run_id=run.run_id,
        stage=stage,
        reason=reason,
        attempt=attempt,
        deadline_hours=run.deadline_hours,
        elapsed_hours=round(hours_between(parse_time(run.started_at), utc_now()), 3),
        **figures,
    )
    return _send(svc, notification, notification.dedupe_key)


def notify_rejected_upload(svc: Services, run_id: str, source: str, reason: str, event_id: str) -> bool:
    """Tells the team an upload will not run (once per event): it would otherwise wait for a run that never comes."""
    notification = Notification(
        kind="failed", run_id=run_id, stage=None, reason=f"upload rejected: {reason}", details={"source": source}
    )
    return _send(svc, notification, f"rejected#{event_id or source}")


def _send(svc: Services, notification: Notification, dedupe_key: str) -> bool:
    if not svc.ledger.claim_notification(dedupe_key):
        return False
    try:
        outcome = deliver_notification(
            notification,
            webhook=_webhook(svc),
            sns_client=svc.sns,
            topic_arn=svc.settings.notification_topic_arn,
            sqs_client=svc.sqs,
            dead_letter_queue_url=svc.settings.notifications_dlq_url,
            budget_seconds=SLACK_BUDGET_SECONDS,
            circuit=SLACK_CIRCUIT,
        )
    except Exception:
        # SNS or SQS failed (after botocore's retries): free the claim so that the event's retry sends it.
        svc.ledger.release_notification(dedupe_key)
        raise
    svc.ledger.record_notifications(notification.run_id, notification_report_entries(notification, outcome))
    logger.info(
        "notified",
        extra={
            "kind": notification.kind,
            "run_id": notification.run_id,
            "stage": notification.stage,
            "slack": outcome.slack,
        },
    )
    return True
