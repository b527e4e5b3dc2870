"""How long the state machine waits on a stage (spot_hpc.pipeline.stage_timeout_seconds)."""

from __future__ import annotations

from spot_hpc.pipeline import MAX_DEADLINE_HOURS, MAX_STAGE_WAIT_SECONDS, stage_timeout_seconds


def test_a_stage_is_waited_on_past_the_deadline_by_the_whole_compute_and_a_day():
    # GIVEN a 12-hour deadline for 1 + 4 + 1 hours of compute
    stage_hours = {"preprocess": 1.0, "hpc": 4.0, "postprocess": 1.0}
    # WHEN the stage timeout is worked out
    timeout = stage_timeout_seconds(12.0, stage_hours)
    # THEN a run that misses its deadline still has time to finish on On-Demand before it is reported failed
    assert timeout == (12 + 6 + 24) * 3600


def test_the_longest_run_is_waited_on_as_long_as_an_execution_can_live():
    # GIVEN the longest deadline and stages accepted
    stage_hours = dict.fromkeys(("preprocess", "hpc", "postprocess"), float(MAX_DEADLINE_HOURS))
    # WHEN the stage timeout is worked out
    timeout = stage_timeout_seconds(MAX_DEADLINE_HOURS, stage_hours)
    # THEN it is a Standard execution's lifetime, a year, not more
    assert timeout == MAX_STAGE_WAIT_SECONDS == 365 * 24 * 3600
