"""The SLA guard's passes over many Spot stages with the plan cache, against keeping one plan as the guard did
before: solves and seconds per pass, in-process (numpy on one thread, as the functions run it).

    .venv/bin/python benchmarks/guard_plan_cache.py --stages 20 30 --json /tmp/plan_cache.json

Each stage has a day's deadline, 20 hours of work and Spot figures of its own (so a plan of its own, 3.2 MB of
tables); the guard takes the stages in a new order each pass. "One plan" is the cache bounded to a single plan, which
is what the guard kept before: every stage whose plan differs from the last one solved is solved again.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from spot_hpc.policy import Action, SpotStats, decide, plan  # after the thread setting, which numpy reads on import
from spot_hpc.policy.plan import PlanCache

PASSES = 5


def stages(count: int) -> list[SpotStats]:
    """Stages whose capacity histories differ, so that no two share a plan."""
    out = []
    for index in range(count):
        stats = SpotStats.with_prior(index % 5)
        for repeat in range(index % 7 + 1):
            stats.observe(True, 0.5 + 0.1 * index)
            stats.observe(False, 0.2 + 0.05 * repeat)
        out.append(stats)
    return out


def guard_pass(checked: list[SpotStats]) -> None:
    for stats in checked:
        decide(
            remaining_hours=20.0,
            hours_left=24.0,
            current=Action.IDLE,
            spot_available=True,
            changeover_hours=0.2,
            od_price=3.0,
            spot_price=0.9,
            stats=stats,
        )


def run(count: int, cache_bytes: int) -> list[dict[str, Any]]:
    plan.PLANS = PlanCache(cache_bytes)
    checked = stages(count)
    rows = []
    for number in range(PASSES):
        random.Random(number).shuffle(checked)  # as the guard draws its order for each pass
        solved, started = plan.PLANS.solves, time.perf_counter()
        guard_pass(checked)
        rows.append({"solves": plan.PLANS.solves - solved, "seconds": round(time.perf_counter() - started, 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[20, 30])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = []
    for count in args.stages:
        for label, cache_bytes in (("one plan", 1), ("plan cache", plan.PLAN_CACHE_BYTES)):
            passes = run(count, cache_bytes)
            results.append({"stages": count, "cache": label, "passes": passes})
            shown = ", ".join(f"{p['solves']} solves {p['seconds']:.2f} s" for p in passes)
            print(f"{count} stages, {label}: {shown}")
    if args.json:
        args.json.write_text(json.dumps({"results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
