"""Spot signals for an instance no job is known to run on yet are kept, and acted on when the job's start is told
(EventBridge keeps no order between EC2's events and Batch's)."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

from spot_hpc.clock import format_time
from spot_hpc.interruptions import SIGNAL_KEPT_FOR, act_on_kept_signals
from spot_hpc.ledger import InstanceSignal, JobRef, Ledger


def _signal(at, signal: str = "interruption warning") -> InstanceSignal:
    return InstanceSignal("i-1", signal, warning=signal == "interruption warning", signalled_at=format_time(at))


def test_kept_signals_are_apart_from_the_jobs_on_the_instance(ledger: Ledger, utc_clock):
    # GIVEN a job on an instance, a warning and a rebalance recommendation for it, and one for another instance
    ref = JobRef("job-1", "r1", "preprocess", 1)
    ledger.index_instance("i-1", ref)
    ledger.keep_instance_signal(_signal(utc_clock.now - timedelta(minutes=3)), "e1")
    ledger.keep_instance_signal(_signal(utc_clock.now, "rebalance recommendation"), "e2")
    ledger.keep_instance_signal(InstanceSignal("i-2", "interruption warning", True, format_time(utc_clock.now)), "e3")
    # WHEN the instance's jobs and its signals of the last two minutes are read
    jobs = ledger.jobs_on_instance("i-1")
    recent = ledger.instance_signals("i-1", since=utc_clock.now - timedelta(minutes=2))
    # THEN each read gets its own kind, the signals from `since` on only
    assert jobs == [ref]
    assert recent == [_signal(utc_clock.now, "rebalance recommendation")]


def test_a_repeated_signal_is_kept_once(ledger: Ledger, utc_clock):
    # GIVEN one warning event delivered twice (EventBridge delivers at least once)
    for _ in range(2):
        ledger.keep_instance_signal(_signal(utc_clock.now), "e1")
    # WHEN the instance's signals are read
    kept = ledger.instance_signals("i-1", since=utc_clock.now - SIGNAL_KEPT_FOR)
    # THEN there is one
    assert kept == [_signal(utc_clock.now)]


def test_a_signal_older_than_the_window_is_not_acted_on_when_a_job_starts(ledger: Ledger, utc_clock):
    # GIVEN a warning kept longer ago than a start event may come late, and one kept a minute ago
    ledger.keep_instance_signal(_signal(utc_clock.now - SIGNAL_KEPT_FOR - timedelta(minutes=1)), "old")
    ledger.keep_instance_signal(_signal(utc_clock.now - timedelta(minutes=1)), "new")
    # WHEN a job's start on the instance is recorded (its run is not in this ledger: the answer says so)
    acted = act_on_kept_signals(SimpleNamespace(ledger=ledger), JobRef("job-1", "r1", "preprocess", 1), ["i-1"])  # type: ignore[arg-type]
    # THEN only the recent warning is acted on
    assert acted == [{"job_id": "job-1", "action": "none", "reason": "job no longer current"}]
