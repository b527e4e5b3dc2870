"""`spotctl bench policy` and `spotctl simulate` end to end on a tiny trace."""

from __future__ import annotations

import json
import os
import sys

import pytest
from full_disk import full_disk_after_4_kib

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


def test_bench_policy_on_free_spot_puts_paid_runs_infinitely_above_the_optimum(tmp_path, tiny_trace, scenario, capsys):
    # GIVEN a scenario on free Spot whose capacity lets the optimum finish on Spot alone, for nothing
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": [{**scenario, "nodes": 2, "spot_price": 0}]}))
    out, plot = tmp_path / "results.json", tmp_path / "cost.png"
    # WHEN the benchmark command runs with a plot
    argv = ["bench", "policy", "--scenarios", str(scenarios), "--shared-dir", str(tmp_path), "--json", str(out)]
    code = main([*argv, "--plot", str(plot), "--jobs", "1"])
    # THEN On-Demand, which paid, is infinitely above the optimum in the summary, and the plot is still drawn
    assert code == 0
    costs = {row["policy"]: row["cost"] for row in json.loads(out.read_text())["results"]}
    assert costs["optimum"] == 0 and costs["on_demand"] > 0
    assert "| on_demand | 1 | inf | 1/1 |" in capsys.readouterr().out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_policy_missing_scenario_file_is_a_clean_error(tmp_path, capsys):
    # GIVEN no scenario file
    # WHEN the benchmark command runs
    code = main(["bench", "policy", "--scenarios", str(tmp_path / "none.json"), "--json", str(tmp_path / "o.json")])
    # THEN exit code 2 and a message
    assert code == 2
    assert f"{tmp_path / 'none.json'}: no such file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "policy", "--scenarios", "none.json", "--json", "o.json"],
        ["bench", "planner", "--case", "2:1:0.1", "--template", "none.yaml"],
    ],
)
def test_bench_errors_name_the_benchmark(tmp_path, monkeypatch, capsys, argv):
    # GIVEN a scenario file or a template that is not there
    monkeypatch.chdir(tmp_path)
    # WHEN a benchmark is run with it
    code = main(argv)
    # THEN the error is headed by the whole command, as argparse's usage errors and the invalid scenarios' lines are
    assert code == 2
    assert capsys.readouterr().err.startswith(f"spotctl bench {argv[1]}: error: ")


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


def test_simulate_optimum_whose_plan_is_too_large_to_keep_says_so(tmp_path, tiny_trace, monkeypatch, capsys):
    # GIVEN an optimum whose decisions are too many to keep (a week of one-minute ticks passes the bound)
    from spotctl.policy_sim import optimum

    monkeypatch.setattr(optimum, "MAX_PLAN_CELLS", 0)
    png, out = tmp_path / "timeline.png", tmp_path / "run.json"
    # WHEN it is simulated, writing a PNG and JSON
    job = [*_simulate_tiny(tiny_trace), "--compute-hours", "1", "--policy", "optimum"]
    code = main([*job, "--png", str(png), "--json", str(out)])
    # THEN it gives the exact cost and says the deadline is met but the finish time is not known, without a traceback
    assert code == 0
    text = capsys.readouterr().out
    assert "met the deadline" in text and "finish time is not known" in text and "cost $" in text
    run = json.loads(out.read_text())
    assert run["met"] and run["finish_hours"] is None and run["timeline"] == []
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_simulate_unknown_trace_is_a_clean_error(tmp_path, capsys):
    # GIVEN a trace that does not exist
    # WHEN simulated
    code = main(["simulate", "--trace", str(tmp_path / "x.json"), "--deadline-hours", "3", "--compute-hours", "1"])
    # THEN exit code 2 with the reason
    assert code == 2
    assert f"{tmp_path / 'x.json'}: no such file" in capsys.readouterr().err


def _bench(tmp_path, scenarios_file, *options, jobs=1):
    common = ["bench", "policy", "--scenarios", str(scenarios_file), "--shared-dir", str(tmp_path)]
    return main([*common, "--jobs", str(jobs), *options])


def _simulate_tiny(trace):
    return ["simulate", "--trace", str(trace), "--nodes", "4", "--deadline-hours", "3"]


def _refuse_to_run(monkeypatch, target):
    def run(*args, **kwargs):
        raise AssertionError("ran although an option was refused")

    monkeypatch.setattr(target, run)


def test_bench_policy_reports_a_nan_scenario_as_error_rows(tmp_path, tiny_trace, scenario, capsys):
    # GIVEN a scenario file (JSON text, as written by hand) where one scenario's deadline is NaN
    bad = json.dumps({**scenario, "id": "nan"}).replace('"deadline_hours": 3.0', '"deadline_hours": NaN')
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(f'{{"scenarios": [{json.dumps(scenario)}, {bad}]}}')
    out = tmp_path / "results.json"
    # WHEN the benchmark runs on two worker processes
    code = _bench(tmp_path, scenarios, "--json", str(out), jobs=2)
    # THEN the NaN scenario has error rows naming the field, and the other scenario its results
    assert code == 0
    rows = json.loads(out.read_text())["results"]
    assert all("deadline_hours must be a finite number" in row["error"] for row in rows if row["id"] == "nan")
    assert all("error" not in row for row in rows if row["id"] == "t1")


def test_bench_policy_refuses_duplicate_scenario_ids(tmp_path, tiny_trace, scenario, capsys):
    # GIVEN two scenarios with the same id (results are keyed by id, so they would be merged)
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": [scenario, {**scenario, "start_tick": 2}]}))
    # WHEN the benchmark runs
    code = _bench(tmp_path, scenarios, "--json", str(tmp_path / "o.json"))
    # THEN it refuses the file, naming the repeated id
    assert code == 2
    assert "repeated: t1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "path", "message"),
    [
        ("--plot", "cost.svg", "give a file name ending in .png"),
        ("--plot", "a_file/cost.png", "is not a directory"),
        ("--json", "a_file/results.json", "is not a directory"),
        ("--summary", ".", "is a directory"),
    ],
)
def test_bench_policy_refuses_unwritable_outputs_before_running(
    tmp_path, tiny_trace, scenario, monkeypatch, capsys, option, path, message
):
    # GIVEN a scenario file, and an output path that cannot be written (a regular file where a folder should be)
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": [scenario]}))
    (tmp_path / "a_file").write_text("")
    outputs = {"--json": str(tmp_path / "results.json"), option: str(tmp_path / path)}
    _refuse_to_run(monkeypatch, "spotctl.policy_sim.benchmark.run_benchmark")
    # WHEN the benchmark is asked to write there
    code = _bench(tmp_path, scenarios, *(item for pair in outputs.items() for item in pair))
    # THEN it is refused before the benchmark runs or any output is written
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_bench_policy_creates_a_missing_plot_folder(tmp_path, tiny_trace, scenario, capsys):
    # GIVEN a plot path in a folder that does not exist yet
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": [scenario]}))
    plot = tmp_path / "plots" / "cost.png"
    # WHEN the benchmark writes its plot there
    code = _bench(tmp_path, scenarios, "--json", str(tmp_path / "o.json"), "--plot", str(plot))
    # THEN the folder is made, as it is for --json
    assert code == 0
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_simulate_refuses_job_options_beside_a_scenario_file(tmp_path, tiny_trace, scenario, capsys):
    # GIVEN a scenario file
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": [scenario]}))
    # WHEN a job option is given too (it would be ignored: the job comes from the file)
    code = main(["simulate", "--scenarios", str(scenarios), "--deadline-hours", "9", "--nodes", "2"])
    # THEN it is refused, naming the options
    assert code == 2
    assert "--deadline-hours, --nodes: the job comes from --scenarios" in capsys.readouterr().err


def test_simulate_refuses_compute_hours_beside_stages(tiny_trace, capsys):
    # GIVEN stages (whose hours are the compute) and a different --compute-hours
    # WHEN simulated
    code = main([*_simulate_tiny(tiny_trace), "--stages", "pre=0.5,hpc=1", "--compute-hours", "9"])
    # THEN it is refused
    assert code == 2
    assert "--compute-hours or --stages, not both" in capsys.readouterr().err


@pytest.mark.parametrize("stages", ["hpc=0.5,hpc=1", "pre=0.5, hpc=1,hpc =0.5:od"])
def test_simulate_refuses_a_stage_named_twice(tiny_trace, monkeypatch, capsys, stages):
    # GIVEN a pipeline that names one stage twice (spaces around a name are not part of it)
    _refuse_to_run(monkeypatch, "spotctl.policy_sim.simulator.simulate")
    # WHEN it is simulated
    code = main([*_simulate_tiny(tiny_trace), "--stages", stages])
    # THEN it is refused before the simulation, naming the stage, as the same pipeline in a scenario file is
    assert code == 2
    assert "stage names must be unique; given more than once: hpc\n" in capsys.readouterr().err


def test_simulate_finds_a_scenario_without_id_by_its_fallback_id(tmp_path, tiny_trace, scenario, capsys):
    # GIVEN a scenario file whose second scenario has no id (the benchmark calls it #1)
    unnamed = {key: value for key, value in scenario.items() if key != "id"}
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": [scenario, {**unnamed, "deadline_hours": 2.5}]}))
    # WHEN simulated by that id
    code = main(["simulate", "--scenarios", str(scenarios), "--id", "#1", "--shared-dir", str(tmp_path)])
    # THEN that scenario is run (its 2.5 h deadline is 30 five-minute ticks)
    assert code == 0
    assert "deadline 30 ticks" in capsys.readouterr().out


def test_simulate_says_a_file_without_scenarios_has_none(tmp_path, capsys):
    # GIVEN a scenario file with an empty list
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": []}))
    # WHEN simulated (without --id: its first scenario)
    code = main(["simulate", "--scenarios", str(scenarios)])
    # THEN it says the file has none, not that a scenario lacks every field
    err = capsys.readouterr().err
    assert code == 2
    assert f"{scenarios} has no scenarios" in err and "missing field" not in err


@pytest.mark.parametrize(
    ("option", "path", "message"),
    [
        ("--png", "timeline.jpg", "give a file name ending in .png"),
        ("--png", "a_file/timeline.png", "is not a directory"),
        ("--json", "a_file/run.json", "is not a directory"),
    ],
)
def test_simulate_refuses_unwritable_outputs_before_running(
    tmp_path, tiny_trace, monkeypatch, capsys, option, path, message
):
    # GIVEN an output path that cannot be written
    (tmp_path / "a_file").write_text("")
    _refuse_to_run(monkeypatch, "spotctl.policy_sim.simulator.simulate")
    # WHEN simulated
    code = main([*_simulate_tiny(tiny_trace), "--compute-hours", "1", option, str(tmp_path / path)])
    # THEN it is refused before the simulation
    assert code == 2
    assert message in capsys.readouterr().err


def test_an_output_that_cannot_be_written_whole_leaves_the_earlier_file_as_it_was(
    tmp_path, tiny_trace, monkeypatch, capsys
):
    # GIVEN the JSON of an earlier run, and a disk that takes no more than 4 KiB of a file
    out = tmp_path / "run.json"
    out.write_text('{"earlier": true}\n')
    full_disk_after_4_kib(monkeypatch)
    # WHEN a simulation whose timeline is longer than that writes its run there
    code = main([*_simulate_tiny(tiny_trace), "--compute-hours", "1", "--json", str(out)])
    # THEN it says the file could not be written, and leaves the earlier one whole, with no partial file beside it
    assert code == 2
    assert f"cannot write {out}" in capsys.readouterr().err
    assert out.read_text() == '{"earlier": true}\n'
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.json", "traces"]


@pytest.mark.parametrize("command", ["bench policy", "simulate"])
def test_a_chart_that_cannot_be_written_whole_leaves_the_earlier_one_as_it_was(
    tmp_path, tiny_trace, scenario, monkeypatch, capsys, command
):
    # GIVEN the chart of an earlier run, and a disk that takes no more than 4 KiB of a file
    plot, earlier = tmp_path / "chart.png", b"\x89PNG\r\n\x1a\n(an earlier chart)"
    plot.write_bytes(earlier)
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": [scenario]}))
    full_disk_after_4_kib(monkeypatch)
    # WHEN the command draws its chart, larger than that, there
    if command == "simulate":
        code = main([*_simulate_tiny(tiny_trace), "--compute-hours", "1", "--png", str(plot)])
    else:
        code = _bench(tmp_path, scenarios, "--json", str(tmp_path / "rows.json"), "--plot", str(plot))
    # THEN it says the chart could not be written, and leaves the earlier one whole, with no partial file beside it
    assert code == 2
    assert f"cannot write {plot}" in capsys.readouterr().err
    assert plot.read_bytes() == earlier
    assert not [path.name for path in tmp_path.iterdir() if path.name.endswith(".partial")]


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["simulate", "--scenarios", "{deep}"], "{deep}: JSON nested too deeply to read"),
        (["bench", "policy", "--json", "{out}", "--scenarios", "{deep}"], "{deep}: JSON nested too deeply to read"),
        (["simulate", "--deadline-hours", "3", "--compute-hours", "1", "--trace", "{deep}"], "{deep}: JSON nested too"),
    ],
)
def test_a_json_file_nested_too_deeply_is_a_user_error(tmp_path, capsys, command, message):
    # GIVEN a JSON file nested deeper than Python's JSON reader goes (its recursion limit)
    deep, out = tmp_path / "deep.json", tmp_path / "rows.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    # WHEN a command reads it as its scenarios or its trace
    code = main([part.format(deep=deep, out=out) for part in command])
    # THEN it is a one-line user error naming the file, not a traceback
    assert code == 2
    assert message.format(deep=deep) in capsys.readouterr().err


def test_a_json_output_through_a_symlink_is_written_to_the_file_it_names(tmp_path, tiny_trace):
    # GIVEN a link to the file runs are kept in
    kept, link = tmp_path / "kept.json", tmp_path / "latest.json"
    kept.write_text("{}")
    link.symlink_to(kept)
    # WHEN a simulation writes its run through the link
    code = main([*_simulate_tiny(tiny_trace), "--compute-hours", "1", "--json", str(link)])
    # THEN the file it names has the run, and the link is still a link
    assert code == 0
    assert link.is_symlink() and json.loads(kept.read_text())["policy"] == "default"


def test_output_to_a_closed_pipe_ends_quietly(tiny_trace, monkeypatch):
    # GIVEN stdout is a pipe whose reader has gone (`spotctl simulate ... | head -1`)
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as pipe:
        monkeypatch.setattr(sys, "stdout", pipe)
        # WHEN the command prints its timeline
        code = main([*_simulate_tiny(tiny_trace), "--compute-hours", "1"])
        # THEN it ends without an error, and nothing is left to fail when Python flushes stdout at exit
        pipe.flush()
    assert code == 1


def test_output_files_are_written_when_the_reader_of_stdout_has_gone(tmp_path, tiny_trace, monkeypatch):
    # GIVEN an earlier run's JSON, and stdout a pipe whose reader has gone (`spotctl simulate ... | head -1`), flushed
    # at every line as a timeline longer than the pipe's buffer is
    run_json, png = tmp_path / "run.json", tmp_path / "timeline.png"
    run_json.write_text('{"policy": "an earlier run"}')
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w", buffering=1) as pipe:
        monkeypatch.setattr(sys, "stdout", pipe)
        # WHEN the command simulates, with files to write
        code = main([*_simulate_tiny(tiny_trace), "--compute-hours", "1", "--json", str(run_json), "--png", str(png)])
    # THEN the files are this run's, not the earlier one left as if it were new
    assert code == 1
    assert json.loads(run_json.read_text())["policy"] == "default"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_bench_policy_names_each_invalid_scenario_on_stderr(tmp_path, tiny_trace, scenario, capsys):
    # GIVEN one valid scenario and 25 invalid ones (nodes -1)
    bad = [{**scenario, "id": f"bad{index}", "nodes": -1} for index in range(25)]
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": [scenario, *bad]}))
    # WHEN the benchmark runs
    code = _bench(tmp_path, scenarios, "--json", str(tmp_path / "o.json"))
    # THEN it still succeeds, and stderr gives the first 20 invalid ones' reasons, one line each, and counts the rest
    err = capsys.readouterr().err.splitlines()
    assert code == 0
    assert "spotctl bench policy: invalid scenario bad0: nodes must be positive" in err
    assert sum("invalid scenario" in line for line in err) == 20
    assert not any("bad20" in line for line in err)
    assert any("... and 5 more invalid" in line for line in err)


def test_bench_policy_refuses_a_file_without_scenarios(tmp_path, capsys):
    # GIVEN a scenario file with an empty list
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": []}))
    # WHEN the benchmark runs
    out = tmp_path / "o.json"
    code = _bench(tmp_path, scenarios, "--json", str(out))
    # THEN it is a user error, not an empty success, and the rows file holds no rows
    assert code == 2
    assert "has no scenarios" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"results": []}


def test_bench_policy_fails_when_every_scenario_is_invalid(tmp_path, tiny_trace, scenario, capsys):
    # GIVEN a scenario file whose only scenarios are invalid (a missing trace, a negative node count)
    gone = {**scenario, "id": "gone", "trace": "traces/nope.json"}
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": [gone, {**scenario, "id": "neg", "nodes": -1}]}))
    out = tmp_path / "o.json"
    # WHEN the benchmark runs
    code = _bench(tmp_path, scenarios, "--json", str(out))
    # THEN exit code 2, each reason on stderr, and the error rows are still written
    err = capsys.readouterr().err
    assert code == 2
    assert "invalid scenario gone: " in err and "nope.json: no such file" in err
    assert "invalid scenario neg: nodes must be positive" in err
    assert "all 2 scenarios" in err and "are invalid" in err
    assert all("error" in row for row in json.loads(out.read_text())["results"])


@pytest.mark.parametrize("jobs", ["-3", "0"])
def test_bench_policy_jobs_must_be_a_positive_integer(tmp_path, jobs, capsys):
    # GIVEN / WHEN --jobs is not a positive integer
    with pytest.raises(SystemExit) as exit_info:
        _bench(tmp_path, tmp_path / "scenarios.json", "--json", str(tmp_path / "o.json"), jobs=jobs)
    # THEN argparse refuses it
    assert exit_info.value.code == 2
    assert f"argument --jobs: not a positive integer: '{jobs}'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("jobs", "scenario_count", "expected"),
    [(["--jobs", "1000"], 3, 3), (["--jobs", "1000"], 6, 4), ([], 1, 1)],
)
def test_bench_policy_caps_workers_at_cpus_and_scenarios(
    tmp_path, tiny_trace, scenario, monkeypatch, capsys, jobs, scenario_count, expected
):
    # GIVEN a machine with 4 CPUs and a scenario file of `scenario_count` scenarios
    import spotctl.policy_sim.benchmark as benchmark

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    many = [{**scenario, "id": f"s{index}"} for index in range(scenario_count)]
    scenarios = tmp_path / "scenarios.json"
    scenarios.write_text(json.dumps({"scenarios": many}))
    used = []
    real_run = benchmark.run_benchmark

    def run(scenarios, shared_dir, *, jobs, progress=None):
        used.append(jobs)
        return real_run(scenarios, shared_dir, jobs=1)

    monkeypatch.setattr(benchmark, "run_benchmark", run)
    # WHEN the benchmark runs with that many workers asked for (or the default)
    common = ["bench", "policy", "--scenarios", str(scenarios), "--shared-dir", str(tmp_path)]
    code = main([*common, "--json", str(tmp_path / "o.json"), *jobs])
    # THEN it uses no more workers than CPUs or scenarios
    assert code == 0
    assert used == [expected]
