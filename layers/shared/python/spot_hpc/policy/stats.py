"""Online statistics of Spot availability, learnt from what a run has seen so far.

Availability is modelled as alternating runs: capacity (an instance can be had or kept) and no capacity. The
statistics keep a life table of both: exposure and run ends by age, in bands a whole number of decision steps wide
(`band_hours_for`). It gives the hazard, the chance per hour that a run of a given age ends, that the planner
(`spot_hpc.policy.plan`) works with. Ages matter: capacity in the public traces dies young far more often than an
exponential lifetime says (a fifth of the runs end within five minutes; a run that has lasted half an hour is likely
to last hours). The prior comes from the Spot Advisor interruption bucket, so that a fresh run has sensible figures
before it has seen anything; each band is shrunk toward it by `PRIOR_EXPOSURE_BANDS` band widths of pseudo-exposure,
so that a band seen little stays near it. Totals and mean run lengths (the exponential estimate, with the prior worth
`PRIOR_WEIGHT` runs) are read off the same table.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

# Spot Advisor buckets (share of instances interrupted per month: <5%, 5-10%, 10-15%, 15-20%, >20%) mapped to a
# prior mean capacity lifetime and mean time to capacity, in hours. Only the order matters much: the prior is
# worth one observed run and is outweighed by a run's own history within hours.
PRIOR_MEAN_UP_HOURS = (48.0, 24.0, 12.0, 8.0, 4.0)
PRIOR_MEAN_DOWN_HOURS = (0.25, 0.5, 0.5, 1.0, 1.0)
DEFAULT_BUCKET = 4
PRIOR_WEIGHT = 1.0
# The life table has AGE_BANDS - 1 bands one decision step wide (the SLA guard's five minutes by default), then one
# open band: ages are counted in the steps the planner works in.
AGE_BANDS = 8
# Time until the policy is asked again, when the caller does not say (the SLA guard's schedule), and so the width of
# a band of the life table.
DEFAULT_STEP_HOURS = 5.0 / 60.0
# A band is a whole number of decision steps, about this share of a changeover wide when a changeover spans several
# steps: the closed bands then reach the ages, up to about two changeovers, at which a Spot start pays back or not.
BANDS_PER_CHANGEOVER = 4
PRIOR_EXPOSURE_BANDS = 5.0
REFRESH_GROWTH = 1.5


def band_hours_for(step_hours: float, changeover_hours: float) -> float:
    """Width of a life-table band for a policy asked every `step_hours` whose instances take `changeover_hours` to
    start: one step, or as many whole steps as a quarter changeover when that is longer."""
    return step_hours * max(1, round(changeover_hours / step_hours / BANDS_PER_CHANGEOVER))


def age_edges(band_hours: float) -> tuple[float, ...]:
    """Upper edges of the closed bands of the life table, in hours."""
    return tuple(band_hours * band for band in range(1, AGE_BANDS))


def age_band(age_hours: float, band_hours: float) -> int:
    """The life-table band of a run that ends at `age_hours` (bands are closed above: (lower, upper])."""
    return min(max(math.ceil(age_hours / band_hours - 1e-9), 1), AGE_BANDS) - 1


def band_overlaps(start_hours: float, end_hours: float, band_hours: float) -> list[float]:
    """Hours of the age span (start, end] that fall in each band."""
    edges = age_edges(band_hours)
    lowers = (0.0, *edges)
    uppers = (*edges, math.inf)
    return [
        max(0.0, min(end_hours, upper) - max(start_hours, lower)) for lower, upper in zip(lowers, uppers, strict=True)
    ]


@dataclass
class SpotStats:
    """Exposure and run ends of Spot capacity observed so far (JSON-serialisable with `to_dict`/`from_dict`)."""

    advisor_bucket: int = DEFAULT_BUCKET
    band_hours: float = DEFAULT_STEP_HOURS
    available: bool | None = None
    run_hours: float = 0.0
    up_exposure: list[float] = field(default_factory=lambda: [0.0] * AGE_BANDS)
    up_ends: list[int] = field(default_factory=lambda: [0] * AGE_BANDS)
    down_exposure: list[float] = field(default_factory=lambda: [0.0] * AGE_BANDS)
    down_ends: list[int] = field(default_factory=lambda: [0] * AGE_BANDS)
    # The hazards the planner uses: taken from the life table when a run ends, at most once per `REFRESH_GROWTH` of
    # observed time, so that a plan holds for a while (each new one is a solve). A gap that outlives the closed bands
    # refreshes the gap hazards itself, at most once per `REFRESH_GROWTH` of its age (`gap_planned_at_hours`).
    planned_up: list[float] | None = None
    planned_down: list[float] | None = None
    planned_at_hours: float = 0.0
    gap_planned_at_hours: float = 0.0

    @classmethod
    def with_prior(cls, advisor_bucket: int | None, band_hours: float = DEFAULT_STEP_HOURS) -> SpotStats:
        """Fresh statistics seeded from a Spot Advisor interruption bucket (0..4); None means the worst bucket."""
        bucket = DEFAULT_BUCKET if advisor_bucket is None else min(max(int(advisor_bucket), 0), 4)
        return cls(advisor_bucket=bucket, band_hours=band_hours)

    def observe(self, available: bool, hours: float) -> None:
        """Record that Spot capacity was (or was not) available during the last `hours`. A span that ends before it
        starts (two clocks apart) is none: its negative hours would take that much off the age of the run in progress,
        whose next hours would then count again at ages already seen."""
        hours = hours if hours > 0.0 else 0.0  # NaN too: it would never be used up below
        if self.available is not None and available != self.available:
            ends = self.down_ends if available else self.up_ends
            ends[age_band(self.run_hours, self.band_hours)] += 1
            self.run_hours = 0.0
            observed = self.up_hours + self.down_hours
            if self.planned_up is None or observed >= self.planned_at_hours * REFRESH_GROWTH:
                self.planned_up, self.planned_down = self._table_hazards(True), self._table_hazards(False)
                self.planned_at_hours = observed
            self.gap_planned_at_hours = 0.0
        self.available = available
        exposure = self.up_exposure if available else self.down_exposure
        # A gap is taken a band at a time, as a policy asked every step sees it: its refresh below then depends on the
        # gap's age alone, not on how much of it one call reports (the SLA guard reports a whole wait in one call).
        left = hours
        while True:
            span = left if available else min(left, self.band_hours)
            for band, overlap in enumerate(band_overlaps(self.run_hours, self.run_hours + span, self.band_hours)):
                exposure[band] += overlap
            self.run_hours += span
            left -= span
            if not available:
                self._refresh_for_long_gap()
            if left <= 1e-12:
                return

    def _refresh_for_long_gap(self) -> None:
        """A gap in progress that is older than the closed bands counts in the gap hazards the planner uses, before
        it ends: its hours without an end say that old gaps last. Otherwise a run that has seen only short gaps (or
        none: the prior) goes on expecting capacity back soon, hour after hour, and waits away slack that it needs
        later to return to Spot from On-Demand. (Refreshing capacity runs in progress the same way measured no better:
        benchmarks/RESULTS.md.)"""
        outlived = self.run_hours > age_edges(self.band_hours)[-1]
        if outlived and self.run_hours >= self.gap_planned_at_hours * REFRESH_GROWTH:
            self.planned_down = self._table_hazards(False)
            self.gap_planned_at_hours = self.run_hours

    @property
    def up_hours(self) -> float:
        """Hours with capacity observed."""
        return math.fsum(self.up_exposure)

    @property
    def down_hours(self) -> float:
        """Hours without capacity observed."""
        return math.fsum(self.down_exposure)

    @property
    def interruptions(self) -> int:
        """Capacity runs seen to end."""
        return sum(self.up_ends)

    @property
    def recoveries(self) -> int:
        """Gaps seen to end."""
        return sum(self.down_ends)

    @property
    def mean_up_hours(self) -> float:
        """Expected lifetime of Spot capacity once it is there."""
        prior = PRIOR_MEAN_UP_HOURS[self.advisor_bucket]
        return (self.up_hours + PRIOR_WEIGHT * prior) / (self.interruptions + PRIOR_WEIGHT)

    @property
    def mean_down_hours(self) -> float:
        """Expected time to capacity once it is gone."""
        prior = PRIOR_MEAN_DOWN_HOURS[self.advisor_bucket]
        return (self.down_hours + PRIOR_WEIGHT * prior) / (self.recoveries + PRIOR_WEIGHT)

    @property
    def availability(self) -> float:
        """Long-run share of time with Spot capacity."""
        up, down = self.mean_up_hours, self.mean_down_hours
        return up / (up + down)

    def hazards(self, available: bool) -> list[float]:
        """Chance per hour that a capacity run (`available`) or a gap ends, by age band, as the planner uses it: the
        life table as it was at the last refresh, or the prior before any run has ended."""
        planned = self.planned_up if available else self.planned_down
        return list(planned) if planned is not None else [self._prior_hazard(available)] * AGE_BANDS

    def _prior_hazard(self, available: bool) -> float:
        means = PRIOR_MEAN_UP_HOURS if available else PRIOR_MEAN_DOWN_HOURS
        return 1.0 / means[self.advisor_bucket]

    def _table_hazards(self, available: bool) -> list[float]:
        prior = self._prior_hazard(available)
        if available:
            exposure, ends = self.up_exposure, self.up_ends
        else:
            exposure, ends = self.down_exposure, self.down_ends
        pseudo = PRIOR_EXPOSURE_BANDS * self.band_hours
        return [(ended + pseudo * prior) / (hours + pseudo) for hours, ended in zip(exposure, ends, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        # The totals go along for whoever reads the stored record; they are derived, so `from_dict` ignores them.
        totals = {"up_hours": self.up_hours, "down_hours": self.down_hours}
        return asdict(self) | totals | {"interruptions": self.interruptions, "recoveries": self.recoveries}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpotStats:
        # A copy: what is observed next must not change the record read (a stage's, which may be learnt from again).
        known = copy.deepcopy({name: data[name] for name in cls.__dataclass_fields__ if name in data})
        for table in ("up_exposure", "up_ends", "down_exposure", "down_ends"):
            if table in known and len(known[table]) != AGE_BANDS:
                del known[table]  # written with other age bands: start the table afresh
        for planned in ("planned_up", "planned_down"):
            if known.get(planned) is not None and len(known[planned]) != AGE_BANDS:
                del known[planned]  # taken from a table with other age bands: the prior's until a run ends
        return cls(**known)
