"""`spotctl bench policy` and `spotctl simulate` end to end on a tiny trace."""

from __future__ import annotations

import json

import pytest

from spotctl.cli import main


def test_bench_policy_writes_rows_summary_and_plot(tmp_path, tiny_trace, scenario, capsys):
    # GIVEN a scenario file with one valid and one invalid scenario
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": [scenario, {**scenario, "id": "bad", "nodes": -1}]}))
    out, plot = tmp_path / "out" / "results.json", tmp_path / "cost.png"
    # WHEN the benchmark command runs
    code = main(
        [
            "bench",
            "policy",
            "--scenarios",
            str(scenarios),
            "--shared-dir",
            str(tmp_path),
            "--json",
            str(out),
            "--plot",
            str(plot),
            "--jobs",
            "1",
        ]
    )
    # THEN rows are written, the summary printed, and the plot is a PNG
    assert code == 0
    rows = json.loads(out.read_text())["results"]
    assert {row["policy"] for row in rows if row["id"] == "t1"} >= {"default", "optimum", "greedy"}
    assert all("error" in row for row in rows if row["id"] == "bad")
    assert "mean cost / optimum" in capsys.readouterr().out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_policy_missing_scenario_file_is_a_clean_error(tmp_path, capsys):
    # GIVEN no scenario file
    # WHEN the benchmark command runs
    code = main(["bench", "policy", "--scenarios", str(tmp_path / "none.json"), "--json", str(tmp_path / "o.json")])
    # THEN exit code 2 and a message
    assert code == 2
    assert "not found" in capsys.readouterr().err


def test_simulate_prints_timeline_and_writes_png_and_json(tmp_path, tiny_trace, capsys):
    # GIVEN a two-stage pipeline on the tiny trace
    png, out = tmp_path / "timeline.png", tmp_path / "run.json"
    # WHEN simulated with the default policy
    code = main(
        [
            "simulate",
            "--trace",
            str(tiny_trace),
            "--nodes",
            "4",
            "--deadline-hours",
            "3",
            "--stages",
            "pre=0.5,hpc=1:od",
            "--changeover-hours",
            "0.1",
            "--png",
            str(png),
            "--json",
            str(out),
        ]
    )
    # THEN the timeline explains each choice, and PNG and JSON are written
    assert code == 0
    text = capsys.readouterr().out
    assert "this stage cannot use Spot" in text and "cost $" in text
    run = json.loads(out.read_text())
    assert run["met"] and {tick["stage"] for tick in run["timeline"]} == {"pre", "hpc"}
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("policy", ["optimum", "greedy"])
def test_simulate_other_policies_from_a_scenario_file(tmp_path, tiny_trace, scenario, policy, capsys):
    # GIVEN a scenario file
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": [scenario]}))
    # WHEN one scenario is simulated by id
    code = main(
        ["simulate", "--scenarios", str(scenarios), "--id", "t1", "--shared-dir", str(tmp_path), "--policy", policy]
    )
    # THEN it prints that policy's run
    assert code == 0
    assert capsys.readouterr().out.startswith(policy)


def test_simulate_unknown_trace_is_a_clean_error(tmp_path, capsys):
    # GIVEN a trace that does not exist
    # WHEN simulated
    code = main(["simulate", "--trace", str(tmp_path / "x.json"), "--deadline-hours", "3", "--compute-hours", "1"])
    # THEN exit code 2 with the reason
    assert code == 2
    assert "trace not found" in capsys.readouterr().err
