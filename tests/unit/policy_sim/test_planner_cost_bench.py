"""`spotctl bench planner`: the planner's solve time and peak memory in the SLA guard Lambda, each case in a process of
its own, checked against the function's MemorySize."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from spot_hpc.policy.plan import MAX_CELLS, PLAN_CACHE_BYTES, age_states, grid_multiple
from spot_hpc.policy.stats import band_hours_for

from spotctl.cli import main
from spotctl.offline.stack import load_template
from spotctl.policy_sim.planner_cost import (
    FUNCTION,
    PROJECT_ROOT,
    PlannerCase,
    default_cases,
    handler_file,
    lambda_environment,
    memory_limit_mb,
    run_case,
)

STEP_HOURS = 5 / 60


def test_a_small_case_is_measured_in_its_own_process_and_checked_against_the_template(tmp_path: Path, capsys) -> None:
    # GIVEN one small case: 1 h of work due in 2 h, with 6-minute changeovers
    out = tmp_path / "planner.json"

    # WHEN the benchmark runs it, against the SLA guard's MemorySize
    code = main(["bench", "planner", "--case", "2:1:0.1", "--json", str(out)])

    # THEN its row has the plan it solved, how long that took and the memory of its process, within the limit
    assert code == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["memory_mb"] == memory_limit_mb(load_template(PROJECT_ROOT / "template.yaml"))
    assert row["within_memory"] is True and row["decision"] in {"spot", "idle", "on_demand"}
    assert row["grid_multiple"] == 1 and row["step_minutes"] == pytest.approx(5.0)
    assert row["plan_cells"] == (24 + 1) * (12 + 1) * 2 * 8  # 24 steps left, 12 of work, 8 ages of a 5-minute band
    assert 0 < row["solve_seconds"] < 5
    assert 20 < row["baseline_rss_mb"] <= row["peak_rss_mb"] < row["memory_mb"]
    assert "| 2:1:0.1 | 2 | 1 | 0.1 | 1 (5 min) |" in capsys.readouterr().out


def test_a_case_started_from_a_large_process_is_charged_only_its_own_memory(tmp_path: Path) -> None:
    # GIVEN a benchmark started from a process holding more than the function's memory (a test run can)
    ballast = bytearray(300 * 2**20)
    ballast[:: 2**12] = b"\x01" * len(ballast[:: 2**12])  # touched, so resident
    out = tmp_path / "planner.json"

    # WHEN it runs a small case
    code = main(["bench", "planner", "--case", "2:1:0.1", "--json", str(out)])

    # THEN the case's peak is its own process's, not its parent's carried over through fork and exec
    (row,) = json.loads(out.read_text())["results"]
    assert code == 0 and row["peak_rss_mb"] < 300 - 1 < len(ballast) / 2**20


def test_a_case_over_the_memory_limit_fails_the_benchmark(capsys) -> None:
    # GIVEN a memory limit no Python process fits in
    # WHEN the benchmark runs the same small case
    code = main(["bench", "planner", "--case", "2:1:0.1", "--memory-mb", "1"])

    # THEN it exits 1 and says which case exceeded it, and by how much
    assert code == 1
    captured = capsys.readouterr()
    assert "**no** (1)" in captured.out
    assert "2:1:0.1: peak RSS" in captured.err and "exceeds 1 MB" in captured.err


def test_the_default_cases_cap_the_work_and_end_with_the_largest_plan_max_cells_allows() -> None:
    # GIVEN the default cases
    cases = default_cases()

    # THEN three deadlines times three changeovers, 96 h of work capped where the policy still plans...
    by_label = {case.label: case for case in cases}
    assert len(cases) == 11
    assert by_label["168 h / c 1 h"].work_hours == 96.0
    assert by_label["24 h / c 1 h"].work_hours == pytest.approx(22.0)  # two changeovers of slack
    # ... then a plan on the finest grid that one more step of work would make coarser, from a cold plan cache and
    # last from a full one
    worst = cases[-2]
    assert not worst.full_cache and cases[-1] == replace(worst, label=cases[-1].label, full_cache=True)
    ages = age_states(band_hours_for(STEP_HOURS, 1.0), STEP_HOURS)
    steps, work = round(worst.deadline_hours / STEP_HOURS), round(worst.work_hours / STEP_HOURS)
    assert worst.changeover_hours == 1.0
    assert grid_multiple(steps, work, ages) == 1 and grid_multiple(steps + 1, work + 1, ages) > 1
    assert (steps + 1) * (work + 1) * 2 * ages > 0.99 * MAX_CELLS


def test_a_malformed_case_is_a_usage_error(capsys) -> None:
    # GIVEN a case with work longer than its deadline
    # WHEN the benchmark is asked for it
    with pytest.raises(SystemExit) as exited:
        main(["bench", "planner", "--case", "2:3:0.1"])

    # THEN argparse refuses it, saying why
    assert exited.value.code == 2
    assert "0 < work <= deadline" in capsys.readouterr().err


FUNCTION_256_MB = "  SlaGuardFunction:\n    Type: AWS::Serverless::Function\n    Properties: {MemorySize: 256%s}\n"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Resources:\n  Other: {Type: AWS::SNS::Topic}\n", "no SlaGuardFunction in Resources"),
        ("Globals: [1]\nResources:\n" + FUNCTION_256_MB % "", "Globals is not a mapping"),
        ("Globals: {Function: x}\nResources:\n" + FUNCTION_256_MB % "", "Globals.Function is not a mapping"),
        (
            "Resources:\n" + FUNCTION_256_MB % ", CodeUri: functions/sla_guard, Handler: app.handler, Environment: x",
            "Resources.SlaGuardFunction.Properties.Environment is not a mapping",
        ),
        ("Resources:\n  SlaGuardFunction: {Type: AWS::Serverless::Function}\n", "SlaGuardFunction has no MemorySize"),
        ("Resources: [\n", "not valid YAML: expected the node content, but found '<stream end>' (line 2, column 1)"),
    ],
    ids=["no function", "Globals a list", "Globals.Function a string", "Environment a string", "no MemorySize", "YAML"],
)
def test_a_template_without_what_the_benchmark_needs_is_named_in_one_line(
    template: str, message: str, tmp_path: Path, capsys
) -> None:
    # GIVEN a --template that has no SLA guard function, has a section of the wrong shape, or is not YAML
    path = tmp_path / "other.yaml"
    path.write_text(template)

    # WHEN the benchmark reads it
    code = main(["bench", "planner", "--case", "2:1:0.1", "--template", str(path)])

    # THEN it is a user error of one line that names the template given (not the project's) and what is wrong
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"{path}: " in err and message in err
    assert "template.yaml" not in err


@pytest.mark.parametrize(("kind", "message"), [("directory", "cannot read {path}: "), ("binary", "{path}: not UTF-8")])
def test_a_template_that_cannot_be_read_as_text_is_a_user_error(
    kind: str, message: str, tmp_path: Path, capsys
) -> None:
    # GIVEN a --template that is a directory, or a file that is not text
    path = tmp_path / "other.yaml"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"\xff\xfe\x00")

    # WHEN the benchmark reads it
    code = main(["bench", "planner", "--case", "2:1:0.1", "--template", str(path)])

    # THEN it says so in one line, not that it is not YAML
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message.format(path=path) in err and "YAML" not in err


def test_a_reference_to_a_parameter_the_template_does_not_define_gets_a_placeholder() -> None:
    # GIVEN environment values referring to a parameter that is not a mapping, and with a Ref that is not a name
    variables = {"SIZE": {"Ref": "Size"}, "ODD": {"Ref": ["Size"]}}
    template = {
        "Parameters": {"Size": 5},
        "Resources": {FUNCTION: {"Properties": {"Environment": {"Variables": variables}}}},
    }

    # WHEN the function's environment is built from it
    environment = lambda_environment(template)

    # THEN each gets a placeholder, as any value the template does not resolve does, rather than a TypeError
    assert environment["SIZE"] == "placeholder-size" and environment["ODD"] == "placeholder-odd"


def test_a_case_solved_with_the_plan_cache_full_keeps_it_within_its_bound() -> None:
    # GIVEN the SLA guard's handler and environment, and a small case solved after other stages' plans filled the
    # plan cache to its bound
    template = load_template(PROJECT_ROOT / "template.yaml")
    case = PlannerCase("full", 2.0, 1.0, 0.1, full_cache=True)

    # WHEN it is measured in its own process
    row = run_case(case, handler_file(template, PROJECT_ROOT), lambda_environment(template), memory_limit_mb(template))

    # THEN the cache held close to its bound before the solve and no more after it, and the process stayed within
    # the function's memory
    bound_mb = PLAN_CACHE_BYTES / 2**20
    assert "error" not in row, row.get("error")
    assert bound_mb - 5 < row["cached_mb_before"] <= bound_mb and row["cached_mb_after"] <= bound_mb
    assert row["within_memory"] is True
