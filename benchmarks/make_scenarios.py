"""Draw benchmark scenarios from the public Spot traces in data/ (seeded, so the checked-in files can be rebuilt).

    python benchmarks/make_scenarios.py [--count 400] [--seed 2024] [--out benchmarks/scenarios.json]
    python benchmarks/make_scenarios.py --pipelines --count 60 --out benchmarks/pipelines.json
    python benchmarks/make_scenarios.py --changeover-hours 0.25,0.5,0.75,1 --seed 5 --out long-changeovers.json
    python benchmarks/make_scenarios.py --tick-seconds 60 --seed 6 --out one-minute-ticks.json
    python benchmarks/make_scenarios.py --tick-seconds 60 --max-sample-seconds 60 --seed 16 --out fine-traces.json
    python benchmarks/make_scenarios.py --draw-by file --count 300 --seed 71 --out by-file.json

Every trace set is drawn equally often (or, with `--draw-by file`, every trace file: the 1-node availability sets
then give 17 of 30 draws); slack (deadline / compute) is uniform in 1.1..3, compute log-uniform from
2 hours to 2 days, nodes 1..16 as far as the trace's node count allows, the start uniform over the ticks where the
window fits. Prices per hour for the whole job: On-Demand from data/ec2-ondemand-prices.json times nodes; Spot from
the trace's own prices over the window where it has them, else On-Demand less the Spot Advisor savings.
Changeovers are 0.1, 0.2 or 0.25 hours and ticks 5 minutes unless asked otherwise (to check that the policy holds up
beyond the checked-in set). A tick is a whole number of the trace's samples (BENCHMARK's rule 1), so traces sampled
every 10 minutes keep 10-minute ticks whatever is asked: `--max-sample-seconds` draws only from traces sampled at
least that often.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRACES = Path("data/spot-traces")
TICK_SECONDS = 300
CHANGEOVER_HOURS = (0.1, 0.2, 0.25)
# Instance type of each trace file, by its name's suffix (see data/README.md).
INSTANCE_BY_SUFFIX = {
    "v100_1": "p3.2xlarge",
    "v100_8": "p3.16xlarge",
    "k80_1": "p2.xlarge",
    "k80_8": "p2.8xlarge",
    "intel_64": "r5.16xlarge",
}
NODE_CHOICES = {1: (1,), 4: (1, 2, 4), 16: (1, 2, 4, 8, 16)}


def trace_sets(max_sample_seconds: float | None = None) -> dict[str, list[Path]]:
    """Trace files by set (folder); only those sampled at least every `max_sample_seconds` when given."""
    sets: dict[str, list[Path]] = {}
    for path in sorted((ROOT / TRACES).rglob("*.json")):
        too_coarse = (
            max_sample_seconds is not None
            and json.loads(path.read_text())["metadata"]["gap_seconds"] > max_sample_seconds
        )
        if too_coarse:
            continue
        sets.setdefault(str(path.parent.relative_to(ROOT)), []).append(path)
    return sets


def node_capacity(set_name: str) -> int:
    return 16 if "/16-node/" in set_name else 4 if "/4-node/" in set_name else 1


def instance_and_region(path: Path) -> tuple[str, str]:
    zone, _, suffix = path.stem.partition("_")
    return INSTANCE_BY_SUFFIX[suffix], zone[:-1]


def draw(
    rng: random.Random,
    sets: dict[str, list[Path]],
    number: int,
    pipelines: bool,
    changeovers: tuple[float, ...] = CHANGEOVER_HOURS,
    tick_seconds: int = TICK_SECONDS,
) -> dict[str, Any]:
    od_prices = json.loads((ROOT / "data/ec2-ondemand-prices.json").read_text())
    advisor = json.loads((ROOT / "data/spot-advisor-data.json").read_text())["spot_advisor"]
    set_name = rng.choice(sorted(sets))
    path = rng.choice(sets[set_name])
    trace = json.loads(path.read_text())
    gap = trace["metadata"]["gap_seconds"]
    block = max(1, round(tick_seconds / gap))
    tick_hours = block * gap / 3600
    blocks = len(trace["data"]) // block
    nodes = rng.choice(NODE_CHOICES[node_capacity(set_name)]) if not pipelines else 1
    slack = rng.uniform(1.1, 3.0)
    longest = min(48.0, blocks * tick_hours / slack * 0.95)
    compute = round(math.exp(rng.uniform(math.log(2.0), math.log(longest))), 2)
    deadline = round(compute * slack, 2)
    window = math.floor(deadline / tick_hours + 1e-9)
    start = rng.randrange(0, blocks - window + 1)
    instance, region = instance_and_region(path)
    od = od_prices[instance]["ondemand_usd_per_hour"][region] * nodes
    entry = advisor[region]["Linux"][instance]
    if trace.get("prices"):
        window_prices = trace["prices"][start * block : (start + window) * block]
        spot = sum(window_prices) / len(window_prices) * nodes
    else:
        spot = od * (1 - entry["s"] / 100)
    scenario: dict[str, Any] = {
        "id": f"{'p' if pipelines else 's'}{number:03d}",
        "trace": str(path.relative_to(ROOT)),
        "nodes": nodes,
        "tick_seconds": tick_seconds,
        "start_tick": start,
        "compute_hours": compute,
        "deadline_hours": deadline,
        "changeover_hours": rng.choice(changeovers),
        "od_price": round(od, 4),
        "spot_price": round(spot, 4),
        "advisor_bucket": entry["r"],
    }
    if pipelines:
        # preprocess and postprocess on Spot; the HPC stage half the time a multi-node job (On-Demand only).
        pre, post = round(compute * 0.15, 2), round(compute * 0.1, 2)
        scenario["stages"] = [
            {"name": "preprocess", "compute_hours": pre, "spot": True},
            {"name": "hpc", "compute_hours": round(compute - pre - post, 2), "spot": rng.random() < 0.5},
            {"name": "postprocess", "compute_hours": post, "spot": True},
        ]
        scenario["compute_hours"] = round(sum(s["compute_hours"] for s in scenario["stages"]), 2)
    return scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--pipelines", action="store_true", help="three-stage pipelines instead of single jobs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/scenarios.json")
    parser.add_argument(
        "--changeover-hours",
        type=lambda text: tuple(float(part) for part in text.split(",")),
        default=CHANGEOVER_HOURS,
        help="comma-separated changeover times to draw from (default: %(default)s)",
    )
    parser.add_argument("--tick-seconds", type=int, default=TICK_SECONDS, help="decision tick (default: %(default)s)")
    parser.add_argument(
        "--max-sample-seconds",
        type=float,
        help="draw only from traces sampled at least this often (so that fine ticks are not rounded up)",
    )
    parser.add_argument(
        "--draw-by",
        choices=("set", "file"),
        default="set",
        help="draw a trace set then a file in it, or any trace file alike (default: %(default)s)",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    sets = trace_sets(args.max_sample_seconds)
    if args.draw_by == "file":  # each file its own "set", named by its path (node_capacity reads the folder in it)
        sets = {str(path.relative_to(ROOT)): [path] for paths in sets.values() for path in paths}
    if not sets:
        parser.error(f"no trace is sampled every {args.max_sample_seconds:g} s or more often")
    scenarios = [
        draw(rng, sets, number, args.pipelines, args.changeover_hours, args.tick_seconds)
        for number in range(1, args.count + 1)
    ]
    args.out.write_text(json.dumps({"scenarios": scenarios}, indent=1) + "\n")
    print(f"wrote {len(scenarios)} scenarios to {args.out}")


if __name__ == "__main__":
    main()
