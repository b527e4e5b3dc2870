"""Online statistics of Spot availability, learnt from what a run has seen so far.

Availability is modelled as alternating runs: capacity (an instance can be had or kept) and no capacity. The
expected length of each kind of run is estimated from the observed exposure and the observed run ends, which is
the maximum-likelihood estimate for exponentially distributed runs and handles the run still in progress
(censored) correctly. A prior, worth `PRIOR_WEIGHT` observed runs, comes from the Spot Advisor interruption
bucket so that a fresh run has sensible figures before it has seen anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Spot Advisor buckets (share of instances interrupted per month: <5%, 5-10%, 10-15%, 15-20%, >20%) mapped to a
# prior mean capacity lifetime and mean time to capacity, in hours. Only the order matters much: the prior is
# worth one observed run and is outweighed by a run's own history within hours.
PRIOR_MEAN_UP_HOURS = (48.0, 24.0, 12.0, 8.0, 4.0)
PRIOR_MEAN_DOWN_HOURS = (0.25, 0.5, 0.5, 1.0, 1.0)
DEFAULT_BUCKET = 4
PRIOR_WEIGHT = 1.0


@dataclass
class SpotStats:
    """Exposure and run ends of Spot capacity observed so far (JSON-serialisable with `to_dict`/`from_dict`)."""

    advisor_bucket: int = DEFAULT_BUCKET
    up_hours: float = 0.0
    down_hours: float = 0.0
    interruptions: int = 0
    recoveries: int = 0
    available: bool | None = None
    run_hours: float = 0.0

    @classmethod
    def with_prior(cls, advisor_bucket: int | None) -> SpotStats:
        """Fresh statistics seeded from a Spot Advisor interruption bucket (0..4); None means the worst bucket."""
        bucket = DEFAULT_BUCKET if advisor_bucket is None else min(max(int(advisor_bucket), 0), 4)
        return cls(advisor_bucket=bucket)

    def observe(self, available: bool, hours: float) -> None:
        """Record that Spot capacity was (or was not) available during the last `hours`."""
        if self.available is not None and available != self.available:
            if available:
                self.recoveries += 1
            else:
                self.interruptions += 1
            self.run_hours = 0.0
        self.available = available
        self.run_hours += hours
        if available:
            self.up_hours += hours
        else:
            self.down_hours += hours

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpotStats:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)
