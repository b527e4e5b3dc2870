"""The deployed policy: Spot, On-Demand or wait, for one stage with work left and a time budget.

Reasoning, all in hours and from the past and present only:
- *Slack* is the time left beyond the remaining compute. Waiting burns slack; so does every changeover (a new
  instance is paid but makes no progress for `changeover_hours`); On-Demand and productive Spot keep it.
- *Safety*: whatever runs off On-Demand must leave enough slack to start On-Demand and still finish, even if Spot
  is reclaimed at the next moment. So: idle only while the slack at the next decision still covers a changeover;
  start Spot only with two changeovers of slack (its own, and the On-Demand one after a reclaim).
- *Economics*: waiting for Spot costs nothing but slack, so gaps in capacity are waited out (as the paper's Greedy
  does) while the slack stays above a *reserve*. The reserve is what the end game needs: from then on gaps are
  filled with On-Demand, which keeps the slack, and the stage returns to Spot whenever capacity comes back, each
  return costing two changeovers of slack (the Spot start and the On-Demand restart after the reclaim). Returns come
  about once per capacity cycle (expected capacity lifetime plus expected time to capacity, learnt online by
  `SpotStats`) over the remaining work. Greedy, in contrast, keeps no reserve and so finishes on On-Demand even when
  Spot comes back.
- Long gaps are where On-Demand pays: started in a gap, it costs two changeovers (its own and the Spot restart
  after it), which a long gap pays back and a short one does not. So once a gap has outlasted
  `LONG_GAP_CHANGEOVERS` changeovers it is filled with On-Demand a little before the reserve is reached, while the
  slack is below the reserve plus a share of the gaps still expected; the slack saved is left for waiting out the
  short gaps later.
- With the slack at or below the reserve, a return to Spot is taken only if the expected Spot run pays for its
  changeover and the On-Demand restart after the reclaim; On-Demand is left for idling only when the slack is above
  the reserve by the expected wait and a changeover, so that the stage does not flip back and forth.
- Slack is kept for returns only if they are the better use of it: a return spends two changeovers of slack, which
  could instead wait out that much more of a gap; with short capacity runs, long changeovers or a small Spot
  discount the return saves less than that, and the reserve is the final fallback changeover alone.
"""

from __future__ import annotations

import math

from spot_hpc.policy.actions import Action, Decision
from spot_hpc.policy.stats import SpotStats

# Time until the policy is asked again, when the caller does not say (the SLA guard's schedule).
DEFAULT_STEP_HOURS = 5.0 / 60.0
_EPS = 1e-9
# Returns to Spot kept in reserve beyond the expected count: they come in whole numbers and the count is an estimate.
HOP_MARGIN = 1.0
# A gap in capacity counts as long once it has lasted this many changeovers: On-Demand started in it then likely
# runs long enough to pay back its own changeover and the Spot restart after it.
LONG_GAP_CHANGEOVERS = 8.0
# Share of the gap time expected over the remaining work that a long gap is filled with On-Demand to protect.
LONG_GAP_SLACK_SHARE = 0.1
# What an hour of slack saves when spent waiting out a gap instead of running On-Demand through it, as a share of
# the On-Demand price: less than all of it, as not every hour kept ends up replacing On-Demand.
SLACK_HOUR_VALUE = 0.5


def decide(
    *,
    remaining_hours: float,
    hours_left: float,
    current: Action,
    spot_available: bool,
    changeover_hours: float,
    od_price: float,
    spot_price: float,
    stats: SpotStats,
    spot_allowed: bool = True,
    step_hours: float = DEFAULT_STEP_HOURS,
    warmup_left_hours: float = 0.0,
) -> Decision:
    """The default policy's choice for one stage now.

    `remaining_hours`: compute the stage still needs; `hours_left`: until the stage must be finished (its share of the
    pipeline deadline, see `allocate_deadlines`); `current`: what it runs on now; `warmup_left_hours`: changeover
    still to be paid on the current instance; `step_hours`: time until the policy is asked again. Prices are per
    hour for the whole stage.
    """
    current = Action(current)
    if current == Action.SPOT and not spot_available:
        current, warmup_left_hours = Action.IDLE, 0.0  # reclaimed
    if remaining_hours <= _EPS:
        return Decision(Action.IDLE, "no work left")
    if not spot_allowed:
        return Decision(Action.ON_DEMAND, "this stage cannot use Spot")
    eps = _EPS * max(1.0, hours_left)
    change = changeover_hours
    slack = hours_left - remaining_hours
    on_demand_start = warmup_left_hours if current == Action.ON_DEMAND else change
    if slack < on_demand_start - eps:
        return Decision(Action.ON_DEMAND, "deadline cannot be met any more: On-Demand to finish as early as possible")

    if current == Action.SPOT:
        if slack - warmup_left_hours >= change - eps:
            return Decision(Action.SPOT, "on Spot with capacity, and a reclaim would still leave time for On-Demand")
        return Decision(Action.ON_DEMAND, "too little slack left to risk a reclaim")

    reserve = hop_reserve(remaining_hours, change, od_price, spot_price, stats)
    spot_start_safe = slack >= 2 * change - eps
    if spot_available:
        if not spot_start_safe:
            return Decision(Action.ON_DEMAND, "too little slack to pay a Spot changeover and a fallback")
        if current == Action.IDLE:
            return Decision(Action.SPOT, "Spot capacity available and enough slack for a changeover")
        if slack >= reserve + 2 * change - eps:
            return Decision(Action.SPOT, "Spot is back and the slack is above the reserve")
        if _return_saving(remaining_hours, change, od_price, spot_price, stats) > 0:
            return Decision(Action.SPOT, "Spot is back and the expected Spot run pays for its changeovers")
        return Decision(Action.ON_DEMAND, "Spot is back but a switch would not pay for its changeovers")

    if slack - step_hours < change - eps:
        return Decision(Action.ON_DEMAND, "waiting longer would leave no time for On-Demand")
    if current == Action.IDLE and _in_long_gap(stats, change):
        gaps_ahead = remaining_hours * (1.0 - stats.availability)
        if slack - step_hours < reserve + LONG_GAP_SLACK_SHARE * gaps_ahead - eps:
            return Decision(Action.ON_DEMAND, "a long gap in capacity: On-Demand pays for its changeovers here")
    # Leaving On-Demand to wait brings an On-Demand restart later: only when the slack is above the reserve by
    # the expected wait and that changeover, so that the stage does not flip back and forth.
    margin = stats.mean_down_hours + change if current == Action.ON_DEMAND else 0.0
    if slack - step_hours >= reserve + margin - eps:
        return Decision(Action.IDLE, "no Spot capacity; waiting keeps the slack above the reserve")
    return Decision(Action.ON_DEMAND, "no Spot capacity and the slack is down to the reserve")


def hop_reserve(remaining_hours: float, change: float, od_price: float, spot_price: float, stats: SpotStats) -> float:
    """Slack to keep for the end game: On-Demand through capacity gaps and back to Spot whenever it returns, each
    return costing two changeovers (the Spot start and the On-Demand restart after the reclaim), plus the final
    fallback changeover. Returns happen about once per capacity cycle over the remaining work, plus a margin. They
    are reserved for only if one saves more than its two changeovers of slack would save spent waiting in gaps."""
    slack_value = SLACK_HOUR_VALUE * od_price * 2 * change
    if _return_saving(remaining_hours, change, od_price, spot_price, stats) < slack_value:
        return change
    cycle = stats.mean_up_hours + stats.mean_down_hours
    return change + 2 * change * (HOP_MARGIN + remaining_hours / cycle)


def _in_long_gap(stats: SpotStats, change: float) -> bool:
    """Whether Spot capacity has been gone for longer than `LONG_GAP_CHANGEOVERS` changeovers."""
    return stats.available is False and stats.run_hours >= LONG_GAP_CHANGEOVERS * change - _EPS


def _return_saving(
    remaining_hours: float, change: float, od_price: float, spot_price: float, stats: SpotStats
) -> float:
    """Money a return from On-Demand to Spot is expected to save: the Spot run's productive hours at the price
    difference, less its changeover and the On-Demand restart after the reclaim."""
    run = stats.mean_up_hours
    productive = min(remaining_hours, max(run - change, 0.0))
    reclaimed_before_done = 1.0 - math.exp(-(remaining_hours + change) / run) if run > 0 else 1.0
    saving = (od_price - spot_price) * productive
    return saving - spot_price * change - od_price * change * reclaimed_before_done
