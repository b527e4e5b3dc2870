"""The control plane's notion of now.

Every decision that depends on time asks `utc_now()`; the offline runtime swaps in its virtual clock here, so the
very same code runs a 30-hour pipeline in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime


def _system_now() -> datetime:
    return datetime.now(UTC)


_now: Callable[[], datetime] = _system_now


def utc_now() -> datetime:
    return _now()


def use_clock(now: Callable[[], datetime] | None) -> None:
    """Install another clock (None restores the system clock)."""
    global _now
    _now = now or _system_now


def hours_between(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() / 3600.0


def parse_time(value: str) -> datetime:
    """An ISO 8601 time as a UTC datetime (another offset is moved to UTC; none means UTC). A value that is not text
    (a number an item holds where a time belongs) is a TypeError, as `fromisoformat` gives, not an AttributeError."""
    if not isinstance(value, str):
        raise TypeError(f"not a time: {value!r}")
    return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))


def as_utc(value: datetime) -> datetime:
    """The time in UTC; a time without an offset is taken as UTC."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def happened_at(event_time: datetime) -> datetime:
    """When an event says it happened, in UTC, and never later than now (its sender's clock may run ahead)."""
    return min(as_utc(event_time), utc_now())


def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def from_epoch_ms(value: int) -> datetime:
    """A time AWS gives in milliseconds since the epoch (Batch's startedAt, stoppedAt)."""
    return datetime.fromtimestamp(value / 1000, UTC)


def format_epoch_ms(value: int | None) -> str | None:
    """An AWS epoch-milliseconds timestamp (Batch's startedAt, SQS's SentTimestamp) in `format_time`'s form; None
    for none or zero."""
    return None if not value else format_time(from_epoch_ms(value))
