"""Slack notifications: Block Kit messages, a retrying incoming-webhook sender, SNS and dead-letter delivery.

The webhook URL is a secret (anyone holding it can post to the channel): it lives in Secrets Manager, is checked
strictly before use, and is never logged, echoed in an error, or shown in a repr. A Slack outage never fails a
pipeline: `deliver_notification` publishes to SNS, tries Slack, and parks an undelivered message on a dead-letter
queue instead of raising; the SLA guard later sends parked messages to Slack again (`build_delayed_message`).

Only the standard library is used for HTTP: the Lambda runtime has no `requests`.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import logging
import math
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol, get_args
from urllib.parse import urlsplit

from spot_checkpoint.csvfields import ascii_digits

from spot_hpc.clock import format_epoch_ms, format_time, parse_time, utc_now

logger = logging.getLogger(__name__)

NotificationKind = Literal["started", "interrupted", "requeued", "sla_at_risk", "succeeded", "failed"]
NOTIFICATION_KINDS: tuple[str, ...] = get_args(NotificationKind)

SLACK_WEBHOOK_HOST = "hooks.slack.com"
# Incoming webhooks (/services/) and Workflow Builder webhooks (/workflows/, /triggers/).
SLACK_WEBHOOK_PATH_PREFIXES = ("/services/", "/workflows/", "/triggers/")
# Real webhook URLs are ~80 characters; anything near this is not one.
MAX_WEBHOOK_URL_LENGTH = 512
# Keys under which a JSON secret may hold the URL (a plain-string secret is the URL itself).
WEBHOOK_SECRET_JSON_KEYS = ("webhook_url", "url")

# Block Kit limits (https://api.slack.com/reference/block-kit/blocks).
HEADER_TEXT_LIMIT = 150
SECTION_TEXT_LIMIT = 3000
FIELD_TEXT_LIMIT = 2000
# SNS: subject up to 100 printable ASCII characters, no line breaks.
SNS_SUBJECT_LIMIT = 100

_KIND_TITLES: dict[str, tuple[str, str]] = {
    "started": (":rocket:", "Pipeline started"),
    "interrupted": (":warning:", "Spot interruption"),
    "requeued": (":arrows_counterclockwise:", "Requeued to On-Demand"),
    "sla_at_risk": (":hourglass_flowing_sand:", "SLA at risk"),
    "succeeded": (":white_check_mark:", "Pipeline succeeded"),
    "failed": (":x:", "Pipeline failed"),
}


# --- Notifications and their messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    """One event worth telling the team about. Money is USD; hours are hours since the run started."""

    kind: NotificationKind
    run_id: str
    stage: str | None
    reason: str
    cost_usd: float | None = None  # the run's cost so far (final for succeeded / failed)
    on_demand_only_cost_usd: float | None = None
    savings_pct: float | None = None
    attempt: int | None = None  # which attempt of the stage the event is about
    deadline_hours: float | None = None
    elapsed_hours: float | None = None
    deadline_met: bool | None = None
    details: Mapping[str, str] = field(default_factory=dict)  # extra fields shown as-is, e.g. job id, queue
    title: str | None = None  # instead of the kind's own (an On-Demand instance lost is no Spot interruption)

    def __post_init__(self) -> None:
        if self.kind not in NOTIFICATION_KINDS:
            raise ValueError(f"unknown notification kind {self.kind!r}; expected one of {NOTIFICATION_KINDS}")
        if not self.run_id:
            raise ValueError("a notification needs a run id")

    @property
    def dedupe_key(self) -> str:
        return notification_dedupe_key(self.run_id, self.stage, self.kind, self.attempt)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the dead-letter queue and SNS attributes); `from_dict` reverses it."""
        data = asdict(self)
        data["details"] = dict(self.details)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notification:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)

    def to_compact_dict(self) -> dict[str, Any]:
        """`to_dict` without the optional fields left at no value (`from_dict` fills them in again), for storing."""
        required = {f.name for f in dataclass_fields(self) if f.default is MISSING and f.default_factory is MISSING}
        return {
            name: value
            for name, value in self.to_dict().items()
            if name in required or (value is not None and value != {})
        }


def notification_dedupe_key(run_id: str, stage: str | None, kind: str, attempt: int | None = None) -> str:
    """A deterministic key per event (run, stage, kind, attempt): store it with a conditional put to send once.

    Hashing a JSON array keeps the parts apart (no separator inside a run id can make two events collide, and a
    stage of None differs from a stage named "None").
    """
    canonical = json.dumps([run_id, stage, kind, attempt], separators=(",", ":"), ensure_ascii=True)
    return "notification#" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:40]


def notification_title(notification: Notification) -> str:
    return notification.title or _KIND_TITLES[notification.kind][1]


def notification_text(notification: Notification) -> str:
    """One plain-text line: Slack's fallback text, the SNS message head, and the run report's `text`."""
    parts = [f"{notification_title(notification)}: run {notification.run_id}"]
    if notification.stage:
        parts.append(f"stage {notification.stage}")
    if notification.attempt is not None:
        parts.append(f"attempt {notification.attempt}")
    parts.append(notification.reason)
    if notification.cost_usd is not None:
        final = notification.kind in ("succeeded", "failed")
        parts.append(f"cost {'' if final else 'so far '}{format_usd(notification.cost_usd)}")
    if notification.on_demand_only_cost_usd is not None:
        parts.append(f"On-Demand only {format_usd(notification.on_demand_only_cost_usd)}")
    if notification.savings_pct is not None:
        saved, percent = savings_shown(notification.savings_pct)
        parts.append(f"saved {percent}" if saved else f"cost {percent} more than On-Demand only")
    return " | ".join(parts)


def build_message(notification: Notification) -> dict[str, Any]:
    """The incoming-webhook payload: Block Kit blocks plus the plain-text fallback for notifications."""
    # Slack renders the fallback text as mrkdwn too, so it is escaped like the blocks.
    text = _truncate_mrkdwn(escape_mrkdwn(notification_text(notification)), SECTION_TEXT_LIMIT)
    return {"text": text, "blocks": build_blocks(notification)}


def build_blocks(notification: Notification) -> list[dict[str, Any]]:
    """Block Kit blocks: a header, the event's reason, and fields for run, stage, cost and savings."""
    emoji, title = _KIND_TITLES[notification.kind][0], notification_title(notification)
    fields = [
        ("Run", escape_mrkdwn(notification.run_id)),
        ("Stage", escape_mrkdwn(notification.stage) if notification.stage else "—"),
    ]
    if notification.attempt is not None:
        fields.append(("Attempt", str(notification.attempt)))
    final = notification.kind in ("succeeded", "failed")
    if notification.cost_usd is not None:
        fields.append(("Cost" if final else "Cost so far", escape_mrkdwn(format_usd(notification.cost_usd))))
    if notification.on_demand_only_cost_usd is not None:
        fields.append(("On-Demand only", escape_mrkdwn(format_usd(notification.on_demand_only_cost_usd))))
    if notification.savings_pct is not None:
        saved, percent = savings_shown(notification.savings_pct)
        # Escaped: a value line starting with ">" would show as a quote.
        fields.append(("Savings", escape_mrkdwn(percent if saved else f"none: {percent} more than On-Demand")))
    if notification.deadline_hours is not None:
        deadline = f"{notification.deadline_hours:.2f} h"
        if notification.deadline_met is not None:
            deadline += " (met)" if notification.deadline_met else " (missed)"
        fields.append(("Deadline", deadline))
    if notification.elapsed_hours is not None:
        fields.append(("Elapsed", f"{hours_shown(notification.elapsed_hours, notification.deadline_hours)} h"))
    for name, value in notification.details.items():
        fields.append((escape_mrkdwn(str(name)), escape_mrkdwn(str(value))))
    # A section holds at most 10 fields: spread longer lists over several sections.
    field_blocks = [
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _truncate_mrkdwn(f"*{name}*\n{value}", FIELD_TEXT_LIMIT)}
                for name, value in fields[start : start + 10]
            ],
        }
        for start in range(0, len(fields), 10)
    ]
    return [
        {"type": "header", "text": {"type": "plain_text", "text": _truncate(f"{emoji} {title}", HEADER_TEXT_LIMIT)}},
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _truncate_mrkdwn(escape_mrkdwn(notification.reason) or "—", SECTION_TEXT_LIMIT),
            },
        },
        *field_blocks,
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": _truncate(f"spot-hpc · {notification.kind}", FIELD_TEXT_LIMIT)}],
        },
    ]


def escape_mrkdwn(text: str) -> str:
    """Escape the three characters Slack treats as control sequences (`<@U…>`, `<!channel>`, links)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def savings_shown(savings_pct: float) -> tuple[bool, str]:
    """Whether the run saved (else it cost more), and by what percentage as shown: to a tenth, but never rounded to
    0.0% or 100.0% when it is not (a tiny loss is "<0.1%", a tiny saving "under 0.1%", almost all ">99.9%")."""
    shown = f"{abs(savings_pct):.1f}"
    if savings_pct < 0:
        return False, "<0.1%" if shown == "0.0" else f"{shown}%"
    if shown == "0.0" and savings_pct > 0:
        return True, "under 0.1%"
    if shown == "100.0" and savings_pct < 100:
        return True, ">99.9%"
    return True, f"{shown}%"


def hours_shown(hours: float, deadline_hours: float | None) -> str:
    """Hours to a hundredth, never rounded down onto a deadline they are past: a run seconds late reads "6.01" beside
    a 6 h deadline, not "6.00", which would say it finished on time."""
    shown = f"{hours:.2f}"
    if deadline_hours is not None and hours > deadline_hours and float(shown) <= deadline_hours:
        shown = f"{math.ceil(hours * 100) / 100:.2f}"
    return shown


def format_usd(value: float) -> str:
    """Dollars to the cent; sub-dollar amounts to a hundredth of a cent so short attempts do not read as $0.00.
    The format is chosen from the amount as rounded ($0.999996 is "$1.00"); a positive amount under a hundredth of
    a cent is "<$0.0001"."""
    if 0 < value < 0.0001:
        return "<$0.0001"
    sign = "-" if value < 0 else ""
    amount = abs(value)
    return f"{sign}${amount:,.2f}" if round(amount, 4) >= 1 or amount == 0 else f"{sign}${amount:,.4f}"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _truncate_mrkdwn(text: str, limit: int) -> str:
    """`_truncate` for escaped mrkdwn: never ends inside an entity (`&amp;`, `&lt;`, `&gt;`), which Slack would show
    as its raw characters. Every `&` of escaped text starts an entity."""
    if len(text) <= limit:
        return text
    kept = text[: limit - 1]
    entity = kept.rfind("&")
    if entity != -1 and ";" not in kept[entity:]:
        kept = kept[:entity]
    return kept + "…"


# --- The webhook URL --------------------------------------------------------------------------------------------


class WebhookSecretError(RuntimeError):
    """The webhook secret could not be read or used. The message names the secret id at most, never its value."""


class WebhookSecretUnreadable(WebhookSecretError):
    """The webhook secret exists (or may) but could not be read now: throttled, Secrets Manager failing, access
    denied (the notifier also tells a secret that holds no webhook URL this way). Slack is configured, so a notice's
    Slack copy is parked for later, not skipped."""


class InvalidWebhookUrl(WebhookSecretError, ValueError):
    """The secret does not hold a usable Slack webhook URL. The message never contains the secret."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"the Slack webhook secret is not a valid webhook URL: {problem}")


def validate_webhook_url(value: object, *, allow_loopback_http: bool = False) -> str:
    """Return `value` when it is a Slack incoming-webhook URL, else raise `InvalidWebhookUrl`.

    Accepted: https://hooks.slack.com/services/... (or /workflows/, /triggers/), no credentials, port or query.
    With `allow_loopback_http` (offline only), also http://127.0.0.1|[::1]|localhost[:port]/...
    """
    if not isinstance(value, str):
        raise InvalidWebhookUrl("it is not a string")
    if not value:
        raise InvalidWebhookUrl("it is empty")
    if len(value) > MAX_WEBHOOK_URL_LENGTH:
        raise InvalidWebhookUrl(f"it is longer than {MAX_WEBHOOK_URL_LENGTH} characters")
    # Printable ASCII only: rules out CR/LF (header injection), spaces, and look-alike Unicode hosts.
    if not all(33 <= ord(char) <= 126 for char in value):
        raise InvalidWebhookUrl("it contains whitespace, control or non-ASCII characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise InvalidWebhookUrl("it cannot be parsed as a URL") from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise InvalidWebhookUrl("it carries credentials")
    if parts.fragment or "#" in value:
        raise InvalidWebhookUrl("it has a fragment")
    host = (parts.hostname or "").lower()
    if allow_loopback_http and _is_loopback(host):
        if parts.scheme not in ("http", "https"):
            raise InvalidWebhookUrl("a loopback URL must use http or https")
        return value
    if parts.scheme != "https":
        raise InvalidWebhookUrl("it must use https")
    if host != SLACK_WEBHOOK_HOST:
        raise InvalidWebhookUrl(f"its host must be {SLACK_WEBHOOK_HOST}")
    if port not in (None, 443):
        raise InvalidWebhookUrl("it must not name a port")
    if parts.query:
        raise InvalidWebhookUrl("it must not have a query string")
    if not parts.path.startswith(SLACK_WEBHOOK_PATH_PREFIXES) or ".." in parts.path:
        raise InvalidWebhookUrl(f"its path must start with one of {', '.join(SLACK_WEBHOOK_PATH_PREFIXES)}")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def webhook_url_from_secret(secret_string: object, *, allow_loopback_http: bool = False) -> str:
    """The URL in a secret's value: the value itself, or a JSON object's `webhook_url` (or `url`) key."""
    if isinstance(secret_string, str) and secret_string.startswith("{"):
        try:
            document = json.loads(secret_string)
        except ValueError:
            raise InvalidWebhookUrl("it looks like JSON but does not parse") from None
        if not isinstance(document, dict):
            raise InvalidWebhookUrl("its JSON is not an object")
        candidates = [document[key] for key in WEBHOOK_SECRET_JSON_KEYS if key in document]
        if not candidates:
            raise InvalidWebhookUrl(f"its JSON has none of the keys {', '.join(WEBHOOK_SECRET_JSON_KEYS)}")
        secret_string = candidates[0]
    return validate_webhook_url(secret_string, allow_loopback_http=allow_loopback_http)


def read_webhook_url(
    secrets_client: Any,
    secret_id: str,
    *,
    allow_loopback_http: bool = False,
    max_age_seconds: int | None = None,
) -> str:
    """Read and validate the webhook URL from Secrets Manager through an injected client.

    With `max_age_seconds`, the value is cached by Powertools parameters for that long (per client, per process).
    """
    try:
        if max_age_seconds is None:
            secret_string = secrets_client.get_secret_value(SecretId=secret_id).get("SecretString")
        else:
            secret_string = _secrets_provider(secrets_client).get(secret_id, max_age=max_age_seconds)
    except Exception as exc:
        # Only the error's type and code: some SDK errors quote the request, and the secret id is the caller's own.
        code = _client_error_code(exc)
        problem = f"could not read the Slack webhook secret {secret_id!r}: {type(exc).__name__}"
        problem += f" ({code})" if code else ""
        # A secret that does not exist means Slack is not set up (SNS only); anything else is Slack unreachable.
        missing = code == "ResourceNotFoundException"
        raise (WebhookSecretError if missing else WebhookSecretUnreadable)(problem) from None
    return webhook_url_from_secret(secret_string, allow_loopback_http=allow_loopback_http)


def _client_error_code(exc: BaseException) -> str | None:
    """The AWS error code of `exc`, or of the error it was raised from (Powertools wraps every error it meets in a
    GetParameterError of its own, raised while handling it)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            return str(response["Error"].get("Code") or "") or None
        seen = seen.__cause__ or seen.__context__
    return None


# One Powertools provider (and so one cache) per client; the client is kept so a reused id() cannot alias.
_SECRETS_PROVIDERS: dict[int, tuple[Any, Any]] = {}


def _secrets_provider(secrets_client: Any) -> Any:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    known = _SECRETS_PROVIDERS.get(id(secrets_client))
    if known is None or known[0] is not secrets_client:
        known = _SECRETS_PROVIDERS[id(secrets_client)] = (secrets_client, SecretsProvider(boto3_client=secrets_client))
    return known[1]


# --- The webhook sender -----------------------------------------------------------------------------------------


class SlackDeliveryError(Exception):
    """Slack did not take the message after the tries allowed. Never mentions the webhook URL."""

    def __init__(
        self, message: str, *, status: int | None, attempts: int, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts
        self.retryable = retryable  # True when sending it again later may succeed (429, 5xx, timeouts)
        self.retry_after = retry_after  # the last answer's Retry-After (a 429's), in seconds


@dataclass(frozen=True)
class DeliveryResult:
    status: int
    attempts: int
    waited_seconds: float


class Opener(Protocol):
    def open(self, fullurl: urllib.request.Request, data: bytes | None = None, timeout: float = ...) -> Any: ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Slack never redirects a webhook; following one would send the payload (and retries) elsewhere."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


def default_opener(loopback: bool) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if loopback:
        # A proxy from the environment must not capture loopback traffic to the offline sink.
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


class SlackWebhook:
    """Posts messages to a Slack incoming webhook, retrying what Slack asks to retry.

    - 429: waits exactly `Retry-After` seconds (Slack's rate limit) when that fits in the budget; otherwise
      gives up at once (a shorter wait would only be rate limited again; the dead-letter queue retries later).
    - 5xx, timeouts, connection errors, answers that are not HTTP: exponential backoff with full jitter.
    - other 4xx (invalid payload, revoked or archived webhook): no retry.
    At most `max_attempts` requests and never beyond `budget_seconds` (set it below the Lambda's remaining time).
    """

    def __init__(
        self,
        url: str,
        *,
        allow_loopback_http: bool = False,
        opener: Opener | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
        max_attempts: int = 4,
        timeout_seconds: float = 5.0,
        base_backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 8.0,
        budget_seconds: float = 25.0,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._url = validate_webhook_url(url, allow_loopback_http=allow_loopback_http)
        self._host = urlsplit(self._url).hostname or ""
        self._opener: Opener = opener or default_opener(_is_loopback(self._host))
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self.max_attempts = max_attempts
        self.timeout_seconds = timeout_seconds
        self.base_backoff_seconds = base_backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.budget_seconds = budget_seconds

    def __repr__(self) -> str:
        return f"SlackWebhook(host={self._host!r})"

    @property
    def identity(self) -> str:
        """Tells webhooks apart without showing the URL (a digest of it)."""
        return hashlib.sha256(self._url.encode("utf-8")).hexdigest()[:16]

    def send(self, notification: Notification, *, budget_seconds: float | None = None) -> DeliveryResult:
        return self.post(build_message(notification), budget_seconds=budget_seconds)

    def post(self, message: Mapping[str, Any], *, budget_seconds: float | None = None) -> DeliveryResult:
        """Post one message; raise `SlackDeliveryError` when Slack has not taken it."""
        body = json.dumps(message, ensure_ascii=False).encode("utf-8")
        budget = self.budget_seconds if budget_seconds is None else budget_seconds
        started = self._clock()
        waited = 0.0
        status: int | None = None
        problem = "no attempt made"
        for attempt in range(1, self.max_attempts + 1):
            request = urllib.request.Request(
                self._url, data=body, method="POST", headers={"Content-Type": "application/json; charset=utf-8"}
            )
            retry_after: float | None = None
            try:
                with self._opener.open(request, timeout=self.timeout_seconds) as response:
                    response.read()
                    status = int(response.status)
                if 200 <= status < 300:
                    return DeliveryResult(status=status, attempts=attempt, waited_seconds=waited)
                problem = f"HTTP {status}"  # 1xx/3xx: not a delivery
            except urllib.error.HTTPError as exc:
                status = exc.code
                slack_error = _safe_error_body(exc)
                problem = f"HTTP {status}" + (f" ({slack_error})" if slack_error else "")
                if status == 429:
                    retry_after = parse_retry_after(exc.headers.get("Retry-After"))
                elif status < 500:
                    exc.close()
                    raise SlackDeliveryError(
                        f"Slack refused the message: {problem}", status=status, attempts=attempt, retryable=False
                    ) from None
                exc.close()
            except TimeoutError:
                status, problem = None, f"no answer within {self.timeout_seconds:g} s"
            except urllib.error.URLError as exc:
                timed_out = isinstance(exc.reason, TimeoutError)
                status = None
                problem = f"no answer within {self.timeout_seconds:g} s" if timed_out else "could not connect"
            except (ConnectionError, OSError) as exc:
                status, problem = None, f"connection failed ({type(exc).__name__})"
            except http.client.HTTPException as exc:
                # An answer that is not HTTP (a bad status line, a body cut short): urllib lets http.client's raise.
                status, problem = None, f"garbled answer ({type(exc).__name__})"
            if attempt == self.max_attempts:
                break
            wait = retry_after if retry_after is not None else self._backoff(attempt)
            # An injected sleep may not move the clock: the time spent is at least what was slept.
            remaining = budget - max(self._clock() - started, waited)
            # The wait plus one more request must fit in the budget, or the Lambda would be cut off mid-try.
            if wait + self.timeout_seconds > remaining:
                raise SlackDeliveryError(
                    f"Slack did not take the message ({problem}); the next try would not fit in the "
                    f"{budget:g} s budget",
                    status=status,
                    attempts=attempt,
                    retryable=True,
                    retry_after=retry_after,
                )
            logger.info(
                "Slack webhook attempt failed; retrying",
                extra={"attempt": attempt, "problem": problem, "wait_seconds": round(wait, 3)},
            )
            self._sleep(wait)
            waited += wait
        raise SlackDeliveryError(
            f"Slack did not take the message after {self.max_attempts} tries: {problem}",
            status=status,
            attempts=self.max_attempts,
            retryable=True,
            retry_after=retry_after,
        )

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))], never zero so retries are spaced."""
        ceiling = min(self.max_backoff_seconds, self.base_backoff_seconds * 2 ** (attempt - 1))
        return max(ceiling * self._jitter(), ceiling / 10)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - time.time()
    return max(0.0, seconds) if seconds == seconds else None  # NaN guard


def _safe_error_body(exc: urllib.error.HTTPError) -> str:
    """Slack's short error code (e.g. "invalid_payload"), kept to a harmless token."""
    try:
        raw = exc.read(200)
    except Exception:
        return ""
    text = raw.decode("utf-8", errors="replace").strip()
    return text if text and len(text) <= 64 and all(c.isalnum() or c in "_-" for c in text) else ""


# --- Delivery: Slack, SNS, dead-letter queue --------------------------------------------------------------------


# Slack's rate limits last seconds to minutes: a Retry-After longer than this (or an HTTP date far off) is not trusted
# to rest a webhook for longer.
MAX_RATE_LIMIT_REST_SECONDS = 900.0


class SlackCircuit:
    """Rests a webhook for `cool_down_seconds` after Slack failed to take a message (timeouts, 5xx, a rate limit
    longer than the budget), or for as long as a rate limit's Retry-After says if that is longer: the notices of that
    time go to the dead-letter queue at once instead of each spending the whole delivery budget on a Slack that is
    down. The handlers that notify have other work to finish (requeueing jobs within a Spot warning's two minutes, the
    SLA guard's pass over every stage) within their Lambda timeout.

    A refusal of one message (another 4xx) says nothing of Slack's health and does not rest it; a delivery ends the
    rest. Kept per process (a warm Lambda handles one event at a time), per webhook.
    """

    def __init__(self, cool_down_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.cool_down_seconds = cool_down_seconds
        self._clock = clock
        # webhook identity -> (when it failed, seconds it rests, why)
        self._failures: dict[str, tuple[float, float, str]] = {}

    def resting(self, webhook: SlackWebhook) -> str | None:
        """Why Slack is not to be tried now; None when it is."""
        failure = self._failures.get(webhook.identity)
        if failure is None:
            return None
        failed_at, rest_seconds, why = failure
        age = self._clock() - failed_at
        if age >= rest_seconds:
            return None
        return f"Slack not tried: it failed to take a message {age:.0f} s ago ({why})"

    def failed(self, webhook: SlackWebhook, error: str, retry_after: float | None = None) -> None:
        """Rests the webhook; `retry_after`: how long Slack's rate limit asked to wait (a try before is refused)."""
        rest_seconds = max(self.cool_down_seconds, min(retry_after or 0.0, MAX_RATE_LIMIT_REST_SECONDS))
        self._failures[webhook.identity] = (self._clock(), rest_seconds, error)

    def delivered(self, webhook: SlackWebhook) -> None:
        self._failures.pop(webhook.identity, None)


@dataclass(frozen=True)
class DeliveryOutcome:
    # "undelivered": a late notice whose Slack copy could not be parked either (see `deliver_notification`)
    slack: Literal["delivered", "dead-lettered", "skipped", "undelivered"]
    sns_message_id: str | None
    error: str | None = None


def notification_report_entries(
    notification: Notification, outcome: DeliveryOutcome, late: bool = False
) -> list[dict[str, str]]:
    """The run report's `notifications` entries for one delivery: one per channel the message went to (`late`: it
    went later than it was due, "delivered late")."""
    delivered = "delivered late" if late else "delivered"
    entries = []
    if outcome.sns_message_id is not None:
        entries.append(notification_report_entry(notification, "sns", delivered))
    if outcome.slack != "skipped":
        status = delivered if outcome.slack == "delivered" else outcome.slack
        entries.append(notification_report_entry(notification, "slack", status))
    return entries


def notification_report_entry(notification: Notification, channel: str, status: str) -> dict[str, str]:
    """One `notifications` entry of the run report: how the notification went on one channel."""
    return {"channel": channel, "kind": notification.kind, "text": notification_text(notification), "status": status}


def sns_subject(notification: Notification) -> str:
    subject = f"[spot-hpc] {notification_title(notification)}: {notification.run_id}"
    printable = "".join(char if 32 <= ord(char) < 127 else "?" for char in subject)
    return _truncate(printable, SNS_SUBJECT_LIMIT).replace("…", ".")


def publish_to_sns(sns_client: Any, topic_arn: str, notification: Notification, note: str | None = None) -> str:
    """Publish the notification for email or other subscribers, with `note` as a line of its own after the text;
    returns the SNS message id."""
    text = notification_text(notification)
    response = sns_client.publish(
        TopicArn=topic_arn,
        Subject=sns_subject(notification),
        Message=f"{text}\n{note}" if note else text,
        MessageAttributes={
            "kind": {"DataType": "String", "StringValue": notification.kind},
            "run_id": {"DataType": "String", "StringValue": notification.run_id},
        },
    )
    return str(response["MessageId"])


def send_to_dead_letter_queue(
    sqs_client: Any,
    queue_url: str,
    notification: Notification,
    error: str,
    *,
    dedupe_key: str | None = None,
    due_at: str | None = None,
) -> None:
    """Park an undelivered message with why it failed and when it was due, for the SLA guard to send again
    (`parse_parked_notice` reads it back)."""
    key = dedupe_key or notification.dedupe_key
    body = {"notification": notification.to_dict(), "error": error, "dedupe_key": key, "due_at": due_at}
    sqs_client.send_message(
        QueueUrl=queue_url,
        MessageBody=json.dumps({name: value for name, value in body.items() if value is not None}),
        MessageAttributes={"dedupe_key": {"DataType": "String", "StringValue": key}},
    )


@dataclass(frozen=True)
class SlackAttempt:
    """What one try to give Slack a message came to (`try_slack`)."""

    error: str | None = None  # None: Slack took the message
    status: int | None = None  # Slack's HTTP answer, when it gave one
    retryable: bool = True  # False when Slack refused the message: sending the same again cannot help

    @property
    def delivered(self) -> bool:
        return self.error is None


def try_slack(webhook: SlackWebhook, post: Callable[[], object], circuit: SlackCircuit | None) -> SlackAttempt:
    """Runs `post` (one message to `webhook`) unless the circuit rests the webhook, and tells the circuit how it went.
    Never raises: an error the sender did not foresee is named by its type only (it might quote the URL)."""
    resting = circuit.resting(webhook) if circuit is not None else None
    if resting is not None:
        return SlackAttempt(error=resting)
    try:
        post()
    except Exception as exc:
        retry_after = None
        if isinstance(exc, SlackDeliveryError):
            attempt = SlackAttempt(error=str(exc), status=exc.status, retryable=exc.retryable)
            retry_after = exc.retry_after
        else:
            attempt = SlackAttempt(error=f"Slack sender failed ({type(exc).__name__})")
        if circuit is not None and attempt.retryable:
            circuit.failed(webhook, attempt.error or "", retry_after)
        return attempt
    if circuit is not None:
        circuit.delivered(webhook)
    return SlackAttempt()


def deliver_notification(
    notification: Notification,
    *,
    webhook: SlackWebhook | WebhookSecretUnreadable | None,
    sns_client: Any | None = None,
    topic_arn: str | None = None,
    sqs_client: Any | None = None,
    dead_letter_queue_url: str | None = None,
    budget_seconds: float | None = None,
    circuit: SlackCircuit | None = None,
    dedupe_key: str | None = None,
    late_since: str | None = None,
) -> DeliveryOutcome:
    """Tell SNS and Slack; never raise for a Slack failure (the message goes to the dead-letter queue).

    `webhook`: Slack's, None when Slack is not set up (SNS only), or why its secret could not be read now (the
    message is parked, as for Slack failing).

    Dedupe is the caller's: claim `dedupe_key` (default `notification.dedupe_key`) in the ledger before calling this;
    a parked message carries it, so that sending it again later is deduplicated too.
    Errors of SNS or SQS themselves do propagate: they are AWS failures the Lambda's own retries should see.
    With a `circuit`, Slack is not tried while it rests after a failure (see `SlackCircuit`).
    `late_since` (when the notice was first due) sends a notice whose first sender died before sending it: both
    channels say it is late, and a parked copy keeps that time.
    """
    due_at = late_since or format_time(utc_now())
    late_line = delayed_notice_line(late_since, SENDER_STOPPED) if late_since else None
    message_id = publish_to_sns(sns_client, topic_arn, notification, late_line) if sns_client and topic_arn else None
    if isinstance(webhook, WebhookSecretUnreadable):
        attempt = SlackAttempt(error=str(webhook))  # configured, and unreachable for now: parked below
    elif webhook is None:
        return DeliveryOutcome(slack="skipped", sns_message_id=message_id)
    else:
        slack = webhook

        def post() -> object:
            if late_since is None:
                return slack.send(notification, budget_seconds=budget_seconds)
            late = build_delayed_message(notification, late_since, SENDER_STOPPED)
            return slack.post(late, budget_seconds=budget_seconds)

        # Whatever goes wrong with Slack, SNS has the message already: raising would make the event's retry publish
        # again.
        attempt = try_slack(webhook, post, circuit)
    if attempt.delivered:
        return DeliveryOutcome(slack="delivered", sns_message_id=message_id)
    logger.warning(
        "Slack notification not delivered; sent to the dead-letter queue",
        extra={"kind": notification.kind, "run_id": notification.run_id, "error": attempt.error},
    )
    if sqs_client is not None and dead_letter_queue_url:
        try:
            send_to_dead_letter_queue(
                sqs_client,
                dead_letter_queue_url,
                notification,
                attempt.error or "",
                dedupe_key=dedupe_key,
                due_at=due_at,
            )
        except Exception:
            if late_since is None:
                raise
            # A late notice (the SLA guard's, which nothing retries but the guard's next pass) is not sent again for
            # its Slack copy: SNS has it, and each pass would publish it again.
            logger.exception("late notice's Slack copy not parked; SNS has it", extra={"kind": notification.kind})
            return DeliveryOutcome(slack="undelivered", sns_message_id=message_id, error=attempt.error)
    return DeliveryOutcome(slack="dead-lettered", sns_message_id=message_id, error=attempt.error)


# --- Parked notices: sent again once Slack is back --------------------------------------------------------------

# Slack's answers that refuse the message itself (malformed, too large), not the webhook or its health: the same
# message will never be taken. A revoked or archived webhook (403, 404, 410) refuses every message until it is fixed.
MESSAGE_REFUSED_STATUSES = frozenset({400, 413})
# How much of a body that is not a notification a log or record keeps.
PARKED_BODY_EXCERPT = 500


class NotANotification(ValueError):
    """A dead-letter message whose body is not a parked notification: it can never be sent."""


@dataclass(frozen=True)
class ParkedNotice:
    """A notification parked on the dead-letter queue, as received from it."""

    notification: Notification
    dedupe_key: str
    due_at: str  # when the notice was first due (UTC, ISO 8601)
    error: str  # why Slack did not take it then


def receive_parked_notices(
    sqs_client: Any, queue_url: str, *, max_messages: int, visibility_timeout_seconds: int
) -> list[dict[str, Any]]:
    """Up to `max_messages` (1-10) parked messages, hidden from other readers for `visibility_timeout_seconds`.
    Short polling: an empty answer costs no wait (the next pass looks again)."""
    response = sqs_client.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=max_messages,
        VisibilityTimeout=visibility_timeout_seconds,
        WaitTimeSeconds=0,
        MessageSystemAttributeNames=["SentTimestamp"],
        MessageAttributeNames=["dedupe_key"],
    )
    return list(response.get("Messages", []))


def delete_parked_notice(sqs_client: Any, queue_url: str, message: Mapping[str, Any]) -> None:
    sqs_client.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def release_parked_notices(sqs_client: Any, queue_url: str, messages: list[dict[str, Any]]) -> None:
    """Makes received messages visible again at once (taken, but not tried in this pass)."""
    entries = [
        {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"], "VisibilityTimeout": 0}
        for index, message in enumerate(messages)
    ]
    if not entries:
        return
    failed = sqs_client.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries).get("Failed", [])
    if failed:
        # They reappear when their visibility timeout ends instead.
        logger.warning("parked notices not released", extra={"failed": [entry.get("Code") for entry in failed]})


def _notice_in(text: Any, what: str) -> tuple[Notification, dict[str, Any]]:
    """The notification in a JSON body `{"notification": {...}, ...}` and the body; `NotANotification` otherwise."""
    try:
        body = json.loads(text)
        notification = Notification.from_dict(body["notification"])
        build_message(notification)  # fields of the wrong types would fail the message on every pass
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise NotANotification(f"the body is not a {what} ({type(exc).__name__}: {exc})") from None
    return notification, body


def parse_parked_notice(message: Mapping[str, Any]) -> ParkedNotice:
    """The notice in a received dead-letter message; `NotANotification` when its body is none.

    Messages parked before the body carried `due_at` and `dedupe_key` take them from the message: when SQS got it,
    and its `dedupe_key` attribute.
    """
    notification, body = _notice_in(message.get("Body"), "parked notification")
    attributes = message.get("MessageAttributes", {})
    dedupe_key = body.get("dedupe_key") or attributes.get("dedupe_key", {}).get("StringValue")
    due_at = body.get("due_at")
    sent_ms = message.get("Attributes", {}).get("SentTimestamp")
    if not due_at and ascii_digits(sent_ms):
        due_at = format_epoch_ms(int(sent_ms))
    return ParkedNotice(
        notification=notification,
        dedupe_key=str(dedupe_key or notification.dedupe_key),
        due_at=str(due_at or "an unknown time"),
        error=str(body.get("error", "")),
    )


def parked_body_excerpt(message: Mapping[str, Any]) -> str:
    body = str(message.get("Body", ""))
    return _truncate(body, PARKED_BODY_EXCERPT)


# Why a notice is late: Slack did not take it (parked), or the invocation that was to send it died before it did.
SLACK_DID_NOT_TAKE_IT = "Slack could not take it then."
SENDER_STOPPED = "the invocation sending it stopped before it did."


def delayed_notice_line(due_at: str, why: str = SLACK_DID_NOT_TAKE_IT) -> str:
    try:
        due = parse_time(due_at).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        due = due_at
    return f"Delayed notice: first due {due}; {why}"


def build_delayed_message(notification: Notification, due_at: str, why: str = SLACK_DID_NOT_TAKE_IT) -> dict[str, Any]:
    """`build_message`, saying that the notice is late, when it was first due and `why` (text and a context block)."""
    message = build_message(notification)
    line = delayed_notice_line(due_at, why)
    message["text"] = _truncate_mrkdwn(f"{escape_mrkdwn(line)} {message['text']}", SECTION_TEXT_LIMIT)
    context = {"type": "context", "elements": [{"type": "mrkdwn", "text": f":hourglass: {escape_mrkdwn(line)}"}]}
    message["blocks"] = [message["blocks"][0], context, *message["blocks"][1:]]
    return message


# --- Claimed notices: kept with their claim, sent by the SLA guard when their sender died -------------------------


def stored_notice(notification: Notification, due_at: str) -> str:
    """What a claim keeps of the notice it is to send (compact JSON: fields left at no value are not written), and
    when it was due; `parse_stored_notice` reads it back."""
    body = {"notification": notification.to_compact_dict(), "due_at": due_at}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def parse_stored_notice(stored: Any) -> tuple[Notification, str]:
    """The notice a claim keeps and when it was first due; `NotANotification` when it holds none that can be sent."""
    notification, body = _notice_in(stored, "stored notification")
    due_at = body.get("due_at")
    return notification, str(due_at) if due_at else "an unknown time"


def stored_notice_excerpt(stored: Any) -> str:
    return _truncate(str(stored), PARKED_BODY_EXCERPT)
