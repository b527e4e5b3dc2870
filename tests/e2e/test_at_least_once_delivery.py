"""The demo's pipeline again with every event delivered twice, the second time after the next event (EventBridge
delivers at least once, and keeps no order): the run must come out as it does with each event delivered once."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from spot_hpc.outcome import run_report

from spotctl.offline.demo import SAMPLE_CSV, DemoOptions, control_plane_services
from spotctl.offline.runtime import OfflineControlPlane

pytestmark = pytest.mark.e2e

# The demo's run: Spot capacity drops 46 minutes in, and a tight 12-hour deadline has work requeued to On-Demand.
DEMO = DemoOptions(
    start_hour=75.0, deadline_hours=12.0, stage_hours={"preprocess": 2.0, "hpc": 4.0, "postprocess": 1.0}
)


def _run(redeliver: bool) -> dict[str, Any]:
    with OfflineControlPlane(
        start_hour=DEMO.start_hour, stage_hours=DEMO.stage_hours, redeliver_events=redeliver
    ) as plane:
        plane.upload("incoming/sample.csv", SAMPLE_CSV, DEMO.upload_metadata())
        status = plane.run_until_settled(max_hours=40)
        svc = control_plane_services(plane)
        runs = svc.ledger.list_runs()
        report = run_report(svc, runs[-1])
        delivered = Counter((d.event_id, d.rule) for d in plane.bus.deliveries)
        return {
            "status": status,
            "runs": len(runs),
            "report": report,
            # The run's id ends in a digest of the upload's version id, which differs from one plane to another.
            "slack": [
                str(message.get("text")).replace(runs[-1].run_id, "RUN") for message in plane.webhook.delivered_messages
            ],
            "delivered_twice": sum(1 for count in delivered.values() if count > 1),
        }


@pytest.fixture(scope="module")
def runs() -> tuple[dict[str, Any], dict[str, Any]]:
    return _run(redeliver=False), _run(redeliver=True)


def _attempts(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    fields = ("capacity", "nodes", "status", "status_reason", "exit_code", "resumed_from_checkpoint", "cost_usd")
    return [
        (stage["name"], *(attempt[f] for f in fields)) for stage in report["stages"] for attempt in stage["attempts"]
    ]


def test_a_run_whose_events_are_delivered_twice_and_out_of_order_comes_out_the_same(runs) -> None:
    # GIVEN the demo's run with each event delivered once, and again with each delivered twice, out of order
    once, twice = runs
    # THEN the second did redeliver (the upload's, the jobs' and EC2's events alike)
    assert once["delivered_twice"] == 0 and twice["delivered_twice"] > 20
    # AND it started one run, placed the same attempts on the same capacity, and they ended the same
    assert (twice["status"], twice["runs"]) == (once["status"], 1) == ("SUCCEEDED", 1)
    assert _attempts(twice["report"]) == _attempts(once["report"])
    # AND it counted the same interruptions and requeues, and the same cost
    figures = ("interruptions", "requeues_to_on_demand", "cost_usd", "on_demand_only_cost_usd", "deadline_met")
    assert {name: twice["report"][name] for name in figures} == {name: once["report"][name] for name in figures}
    # AND it told Slack the same, each notice once
    assert twice["slack"] == once["slack"]
    assert [(n["channel"], n["kind"]) for n in twice["report"]["notifications"]] == [
        (n["channel"], n["kind"]) for n in once["report"]["notifications"]
    ]
