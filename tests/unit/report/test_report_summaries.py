"""`spotctl report`: per-run and per-period tables, the PNG chart, and the command's handling of input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from full_disk import full_disk_after_4_kib

from spotctl.cli import main
from spotctl.reporting import render_report, summarise_periods, summarise_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run_report(run_id: str, started_at: str | None, cost: float, on_demand_only: float, **extra: Any) -> dict:
    """A minimal consistent run report: one Spot attempt whose billed hour costs `cost`."""
    report = {
        "run_id": run_id,
        "pipeline_status": "SUCCEEDED",
        "deadline_hours": 8.0,
        "finished_hours": 1.0,
        "deadline_met": True,
        "stages": [
            {"name": "hpc", "status": "SUCCEEDED", "attempts": [
                {"job_id": "j", "queue": "spot", "capacity": "spot", "nodes": 1, "status": "SUCCEEDED",
                 "status_reason": "", "exit_code": 0, "started_hours": 0.0, "stopped_hours": 1.0,
                 "resumed_from_checkpoint": False, "usd_per_hour": cost, "cost_usd": cost},
            ]},
        ],
        "interruptions": 0,
        "requeues_to_on_demand": 0,
        "cost_usd": cost,
        "on_demand_only_cost_usd": on_demand_only,
        "savings_pct": round((on_demand_only - cost) / on_demand_only * 100, 2),
        "notifications": [],
    }  # fmt: skip
    if started_at is not None:
        report["started_at"] = started_at
    report.update(extra)
    return report


REPORTS = [
    _run_report("run-a", "2025-06-23T08:00:00Z", 2.0, 10.0, interruptions=2, requeues_to_on_demand=1),
    _run_report("run-b", "2025-06-23T20:00:00+00:00", 3.0, 10.0),
    _run_report("run-c", "2025-06-30T09:00:00Z", 12.0, 10.0, deadline_met=False, pipeline_status="FAILED"),
    _run_report("run-d", None, 1.0, 4.0),
]


def test_run_table_lists_every_run_with_its_figures() -> None:
    # GIVEN four run reports
    # WHEN the report is rendered
    text = render_report(REPORTS, None)

    # THEN each run has a row with status, deadline, cost, On-Demand-only cost, savings, interruptions, requeues
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("run "))
    for column in (
        "status",
        "deadline met",
        "cost USD",
        "on-demand only USD",
        "savings %",
        "interruptions",
        "requeues",
    ):
        assert column in header
    row_a = next(line for line in lines if line.startswith("run-a"))
    assert row_a.split() == ["run-a", "SUCCEEDED", "yes", "2.00", "10.00", "80.0", "2", "1"]
    row_c = next(line for line in lines if line.startswith("run-c"))
    assert row_c.split() == ["run-c", "FAILED", "no", "12.00", "10.00", "-", "0", "0"]  # a failed run saved nothing
    # the table is aligned: right-aligned numbers end in the same column
    rows = [line for line in lines if line.startswith("run-")]
    assert len({line.index("10.00") + len("10.00") for line in rows if "10.00" in line}) == 1


def test_per_day_and_per_week_totals() -> None:
    # GIVEN runs on two days of one week, one the next week, one of unknown date
    runs = summarise_runs(REPORTS)

    # WHEN they are totalled per day and per week
    days = summarise_periods(runs, "day")
    weeks = summarise_periods(runs, "week")

    # THEN the totals add up per period, in time order, unknown last
    assert [d.period for d in days] == ["2025-06-23", "2025-06-30", "unknown"]
    assert (days[0].runs, days[0].cost_usd, days[0].on_demand_only_cost_usd) == (2, 5.0, 20.0)
    assert days[0].savings_pct == 75.0
    assert [w.period for w in weeks] == ["2025-W26", "2025-W27", "unknown"]
    assert (weeks[1].succeeded, weeks[1].deadlines_met) == (0, 0)


def test_rendered_report_has_period_table_and_overall_total() -> None:
    # GIVEN / WHEN the report is rendered by week
    text = render_report(REPORTS, None, period="week")

    # THEN it has the per-week table and the overall line
    assert "By week" in text
    assert any(line.startswith("2025-W26") and "2/2" in line for line in text.splitlines())
    assert "Total: 4 runs, succeeded ones cost $6.00 vs $24.00 On-Demand only, saved $18.00 (75.0%)" in text
    assert "Warning" not in text


def test_figures_that_disagree_with_their_attempts_are_flagged() -> None:
    # GIVEN a report whose run cost is not the sum of its attempts
    tampered = _run_report("run-x", None, 2.0, 10.0)
    tampered["cost_usd"] = 1.0

    # WHEN / THEN the rendered report warns about it
    text = render_report([tampered], None)
    assert "Warning" in text and "run-x: run cost_usd 1.0 != sum of attempts 2.0" in text


def test_runs_whose_cost_counts_unknown_prices_as_zero_are_flagged() -> None:
    # GIVEN a run whose report says two prices could not be looked up, and one written before reports said so
    unpriced = _run_report("run-u", None, 2.0, 10.0, prices_unknown=2)
    older = _run_report("run-o", None, 2.0, 10.0)

    # WHEN the report is rendered
    text = render_report([unpriced, older], None)

    # THEN it warns of that run only, with the count, and not as figures that disagree
    assert "Warning: these runs' costs count prices that could not be looked up as $0:\n  run-u: 2" in text
    assert "run-o:" not in text and "disagree" not in text


def test_png_chart_is_written(tmp_path: Path) -> None:
    # GIVEN a path in a directory that does not exist yet
    plot = tmp_path / "charts" / "cost.png"

    # WHEN the report is rendered with a plot
    text = render_report(REPORTS, plot)

    # THEN a non-empty PNG was written and the text says where
    assert plot.stat().st_size > 0
    assert plot.read_bytes()[:8] == PNG_SIGNATURE
    assert f"Chart written to {plot}" in text


def test_spotctl_report_chart_that_cannot_be_written_whole_leaves_the_earlier_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the chart of an earlier report, and a disk that takes no more than 4 KiB of a file
    path, plot, earlier = tmp_path / "r.json", tmp_path / "cost.png", PNG_SIGNATURE + b"(an earlier chart)"
    path.write_text(json.dumps(REPORTS))
    plot.write_bytes(earlier)
    full_disk_after_4_kib(monkeypatch)

    # WHEN the report draws its chart, larger than that, there
    code = main(["report", "--from-json", str(path), "--plot", str(plot)])

    # THEN it says the chart could not be written, and leaves the earlier one whole, with no partial file beside it
    assert code == 2 and f"cannot write {plot}" in capsys.readouterr().err
    assert plot.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cost.png", "r.json"]


def test_spotctl_report_charts_run_ids_with_dollar_signs_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN runs whose ids have dollar signs, which matplotlib would read as mathtext (one of them not valid mathtext)
    path, plot = tmp_path / "r.json", tmp_path / "cost.png"
    path.write_text(json.dumps([_run_report("budget $5 and $6", None, 2.0, 10.0),
                                _run_report(r"a$\foo{$", None, 3.0, 10.0)]))  # fmt: skip

    # WHEN the report charts them
    code = main(["report", "--from-json", str(path), "--plot", str(plot)])

    # THEN the chart is written, its labels taken as text, rather than the report failing on a mathtext error
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert plot.read_bytes()[:8] == PNG_SIGNATURE


def test_no_runs_and_bad_reports() -> None:
    # GIVEN / WHEN / THEN an empty list says so; a report without its figures is a clear error
    assert render_report([], None) == "No runs to report."
    with pytest.raises(ValueError, match="'cost_usd'"):
        render_report([{"run_id": "r", "pipeline_status": "SUCCEEDED", "deadline_met": True}], None)


def test_spotctl_report_says_when_there_is_no_run_to_chart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a report file with an empty list of runs, and an earlier chart where the new one is asked for
    path, plot = tmp_path / "r.json", tmp_path / "cost.png"
    path.write_text("[]")
    plot.write_bytes(PNG_SIGNATURE + b"(an earlier chart)")

    # WHEN the report is asked to chart them
    code = main(["report", "--from-json", str(path), "--plot", str(plot)])

    # THEN it prints that there are no runs, says on stderr that no chart was written and exits 1, leaving the earlier
    # chart as it was
    captured = capsys.readouterr()
    assert code == 1 and captured.out == "No runs to report.\n"
    assert captured.err == f"spotctl report: no chart written to {plot}: there are no runs to chart\n"
    assert plot.read_bytes() == PNG_SIGNATURE + b"(an earlier chart)"


def test_spotctl_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN one file with a single report (no run id) and one with a list of reports
    single = dict(REPORTS[0])
    del single["run_id"]
    (tmp_path / "monday.json").write_text(json.dumps(single))
    (tmp_path / "more.json").write_text(json.dumps(REPORTS[1:]))
    plot = tmp_path / "chart.png"

    # WHEN `spotctl report` runs on them with a plot
    code = main(["report", "--from-json", str(tmp_path / "monday.json"), str(tmp_path / "more.json"),
                 "--period", "week", "--plot", str(plot)])  # fmt: skip

    # THEN it prints the tables (the single report named after its file) and writes the PNG
    out = capsys.readouterr().out
    assert code == 0
    assert any(line.startswith("monday ") for line in out.splitlines())
    assert "run-c" in out and "By week" in out
    assert plot.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "input.json: no such file"), ("{not json", "input.json: not JSON: Expecting property name"),
     ("[1, 2]", "expected a run report"),
     ('{"run_id": "r"}', "has no 'pipeline_status' field")],
)  # fmt: skip
def test_spotctl_report_user_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    # GIVEN a missing or malformed input file
    path = tmp_path / "input.json"
    if content is not None:
        path.write_text(content)

    # WHEN `spotctl report` reads it
    code = main(["report", "--from-json", str(path)])

    # THEN it exits 2 with a one-line error, no traceback
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_spotctl_report_refuses_a_run_given_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN one run's report on its own and in a list of every run
    (tmp_path / "a.json").write_text(json.dumps(REPORTS[0]))
    (tmp_path / "all.json").write_text(json.dumps(REPORTS[:2]))

    # WHEN `spotctl report` reads them
    code = main(["report", "--from-json", str(tmp_path / "all.json"), str(tmp_path / "a.json")])

    # THEN it is a user error naming the run and where it was found again, not totals that count its cost twice
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert f"run 'run-a' is in {tmp_path / 'all.json'} and again in {tmp_path / 'a.json'}" in captured.err


def test_spotctl_report_refuses_a_file_without_run_ids_given_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a report without a run id (named after its file), and the file named twice, once by another path to it
    unnamed = dict(REPORTS[0])
    del unnamed["run_id"]
    (tmp_path / "monday.json").write_text(json.dumps(unnamed))
    monkeypatch.chdir(tmp_path)

    # WHEN `spotctl report` reads it
    code = main(["report", "--from-json", "monday.json", str(tmp_path / "monday.json")])

    # THEN it is a user error naming the file, not totals that count its run twice
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert f"{tmp_path / 'monday.json'} is monday.json again: give each file once" in captured.err


def test_spotctl_report_refuses_a_non_png_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a valid report file
    path = tmp_path / "r.json"
    path.write_text(json.dumps(REPORTS[0]))

    # WHEN the plot file is not a .png
    code = main(["report", "--from-json", str(path), "--plot", str(tmp_path / "chart.jpg")])

    # THEN it is a user error
    assert code == 2 and "PNG" in capsys.readouterr().err


def test_only_a_json_true_counts_as_deadline_met() -> None:
    # GIVEN a report whose deadline_met is the string "false" (bool("false") is True)
    report = _run_report("run-s", None, 2.0, 10.0, deadline_met="false")

    # WHEN summarised
    (run,) = summarise_runs([report])

    # THEN the deadline is not counted as met
    assert run.deadline_met is False
    assert summarise_periods([run])[0].deadlines_met == 0


def test_spotctl_report_refuses_a_plot_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a valid report file, and a plot path whose folder is a regular file
    path = tmp_path / "r.json"
    path.write_text(json.dumps(REPORTS[0]))
    (tmp_path / "a_file").write_text("")

    # WHEN the chart is asked for there
    code = main(["report", "--from-json", str(path), "--plot", str(tmp_path / "a_file" / "chart.png")])

    # THEN it is a user error, not a traceback
    assert code == 2 and "is not a directory" in capsys.readouterr().err


def test_spotctl_report_that_fails_creates_no_plot_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a report without its figures, and a chart asked for in folders that are not there yet
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"run_id": "r", "pipeline_status": "SUCCEEDED", "deadline_met": True}))

    # WHEN the report is made
    code = main(["report", "--from-json", str(path), "--plot", str(tmp_path / "charts" / "june" / "cost.png")])

    # THEN it fails as a user error and leaves no folder behind
    assert code == 2 and "has no 'cost_usd' field" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_spotctl_report_whose_chart_cannot_be_written_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a valid report, a chart asked for in folders that are not there yet, and a disk that takes 4 KiB a file
    path = tmp_path / "r.json"
    path.write_text(json.dumps(REPORTS))
    plot = tmp_path / "charts" / "june" / "cost.png"
    full_disk_after_4_kib(monkeypatch)

    # WHEN the report writes its chart
    code = main(["report", "--from-json", str(path), "--plot", str(plot)])

    # THEN it says the chart could not be written, and removes the folders it made for it
    assert code == 2 and f"cannot write {plot}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_periods_are_utc_days_whatever_offset_a_report_carries() -> None:
    # GIVEN a run started at 23:30 in UTC-5 on 23 June, which is 04:30 UTC on 24 June
    report = _run_report("run-late", "2025-06-23T23:30:00-05:00", 2.0, 10.0)

    # WHEN it is totalled per day
    (day,) = summarise_periods(summarise_runs([report]), "day")

    # THEN it counts on its UTC day, as every other run does
    assert day.period == "2025-06-24"


@pytest.mark.parametrize(
    "text", ['"cost_usd": NaN', '"cost_usd": Infinity', '"cost_usd": -Infinity', '"cost_usd": 1e400']
)
def test_spotctl_report_refuses_non_finite_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    # GIVEN a report file whose cost is NaN or infinite (which Python's JSON reader would accept)
    document = json.dumps(REPORTS[0]).replace('"cost_usd": 2.0, "on_demand_only', text + ', "on_demand_only')
    assert text in document
    path = tmp_path / "r.json"
    path.write_text(document)

    # WHEN `spotctl report` reads it
    code = main(["report", "--from-json", str(path)])

    # THEN it is a user error naming the file, not a table of "nan" or "inf"
    captured = capsys.readouterr()
    assert code == 2 and "nan" not in captured.out.lower() and "inf" not in captured.out.lower()
    assert str(path) in captured.err and "finite" in captured.err


@pytest.mark.parametrize(
    ("reports", "field"),
    [
        # finite costs whose sum is past the largest float: the totals would read $inf and nan%
        ([_run_report("run-a", None, 1e308, 1e308), _run_report("run-b", None, 1e308, 1e308)], "cost_usd"),
        ([_run_report("run-a", None, 2.0, 10.0, interruptions=1e300)], "interruptions"),  # 301 digits in its row
        ([_run_report("run-a", None, 2.0, 10.0, interruptions=1.5)], "interruptions"),  # int() would make it 1
        ([_run_report("run-a", None, 2.0, 10.0, requeues_to_on_demand="3")], "requeues_to_on_demand"),
        ([_run_report("run-a", None, 2.0, 10.0, prices_unknown=True)], "prices_unknown"),
        ([_run_report("run-a", None, 2.0, 10.0, on_demand_only_cost_usd=-10.0)], "on_demand_only_cost_usd"),
        ([_run_report("run-a", None, 2.0, 10.0, savings_pct=180.0)], "savings_pct"),
        # counted as a run still going, under the status "None" or "[1]"
        ([_run_report("run-a", None, 2.0, 10.0, pipeline_status=None)], "pipeline_status"),
        ([_run_report("run-a", None, 2.0, 10.0, pipeline_status=["SUCCEEDED"])], "pipeline_status"),
        ([_run_report("run-a", None, 2.0, 10.0, pipeline_status="")], "pipeline_status"),
    ],
)
def test_spotctl_report_refuses_figures_no_run_can_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reports: list[dict], field: str
) -> None:
    # GIVEN a report file with a run whose figure is finite JSON but no cost, savings or count a run can have
    path = tmp_path / "r.json"
    path.write_text(json.dumps(reports))

    # WHEN `spotctl report` reads it
    code = main(["report", "--from-json", str(path)])

    # THEN it prints no table but a one-line error naming the file, the run and the field
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"spotctl report: error: {path}: run report 'run-a' is malformed: {field} is ")


@pytest.mark.parametrize(
    "attempt",
    [
        {"started_hours": -1e308, "stopped_hours": 1e308},  # each finite, the hours between them past the largest float
        {"usd_per_hour": 10**400},  # an integer JSON allows, past the largest float
    ],
)
def test_spotctl_report_refuses_attempt_figures_no_float_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], attempt: dict[str, Any]
) -> None:
    # GIVEN a report file with a run whose attempt's hours or price, checked against its cost, pass the largest float
    report = _run_report("run-a", None, 2.0, 10.0)
    report["stages"][0]["attempts"][0].update(attempt)
    path = tmp_path / "r.json"
    path.write_text(json.dumps([report]))

    # WHEN `spotctl report` reads it
    code = main(["report", "--from-json", str(path)])

    # THEN it prints no table but a one-line error naming the file and the run, not a traceback
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"spotctl report: error: {path}: run report 'run-a' is malformed: ")


@pytest.mark.parametrize("run_id", [["run-a"], {"id": "run-a"}, True, 1.5])
def test_spotctl_report_refuses_a_run_id_that_is_not_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run_id: object
) -> None:
    # GIVEN a report file whose second run's id is not text (nor a number a run could be called by)
    path = tmp_path / "r.json"
    path.write_text(json.dumps([_run_report("run-a", None, 2.0, 10.0), _run_report("x", None, 2.0, 10.0)]))
    reports = json.loads(path.read_text())
    reports[1]["run_id"] = run_id
    path.write_text(json.dumps(reports))

    # WHEN `spotctl report` reads it
    code = main(["report", "--from-json", str(path)])

    # THEN it prints no table but a one-line error naming the file, the run by its place and the field
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert (
        captured.err
        == f"spotctl report: error: {path}: run report #2 is malformed: run_id is {json.dumps(run_id)}, not text\n"
    )


def test_a_non_finite_figure_is_a_malformed_report() -> None:
    # GIVEN a report (e.g. read from a ledger) whose On-Demand-only cost is infinite
    report = _run_report("run-inf", None, 2.0, 10.0, on_demand_only_cost_usd=float("inf"))

    # WHEN / THEN it is refused by name rather than summed into the totals
    with pytest.raises(ValueError, match=r"run-inf.*on_demand_only_cost_usd"):
        summarise_runs([report])


def test_a_run_still_running_is_not_counted_as_a_missed_deadline() -> None:
    # GIVEN a succeeded run and one still running (its cost so far, no finish yet)
    running = _run_report("run-now", "2025-06-23T09:00:00Z", 0.5, 10.0, pipeline_status="RUNNING",
                          deadline_met=False, finished_hours=None)  # fmt: skip
    running["stages"][0]["attempts"][0].update(stopped_hours=None, cost_usd=0.5)
    reports = [REPORTS[0], running]

    # WHEN the report is rendered
    text = render_report(reports, None)

    # THEN the running run says so instead of "no", and the day's deadlines are counted over ended runs
    row = next(line for line in text.splitlines() if line.startswith("run-now"))
    assert row.split()[:3] == ["run-now", "RUNNING", "-"]
    day = next(line for line in text.splitlines() if line.startswith("2025-06-23"))
    assert "1/1" in day.split()
    assert "Warning" not in text


def test_savings_totals_leave_out_runs_still_running() -> None:
    # GIVEN a run that ended (cost 2 of 10 On-Demand) and one just begun (0.5 so far of a 10 On-Demand plan)
    running = _run_report("run-now", "2025-06-23T09:00:00Z", 0.5, 10.0, pipeline_status="RUNNING",
                          deadline_met=False, finished_hours=None)  # fmt: skip
    running["stages"][0]["attempts"][0].update(stopped_hours=None, cost_usd=0.5)

    # WHEN the report is rendered
    text = render_report([REPORTS[0], running], None)

    # THEN the day's and the overall money are those of the ended run (80% saved), not 0.5 set against a whole
    # plan not yet run (87.5%), and the total says a run is left out
    day = next(line for line in text.splitlines() if line.startswith("2025-06-23")).split()
    assert day[:4] == ["2025-06-23", "2", "1", "1/1"] and day[4:7] == ["2.00", "10.00", "80.0"]
    assert "Total: 2 runs (1 still running, left out of the money), cost $2.00 vs $10.00 On-Demand only" in text
    assert "(80.0%)" in text
    # AND the running run's own row gives no savings yet
    row = next(line for line in text.splitlines() if line.startswith("run-now")).split()
    assert row[3:6] == ["0.50", "10.00", "-"], row


def test_a_failed_run_counts_in_the_spend_but_not_in_the_savings() -> None:
    # GIVEN three succeeded runs (cost 6 of 24 On-Demand) and a failed one that spent 12 (its plan: 10 On-Demand)
    # WHEN the report is rendered by week
    text = render_report(REPORTS, None, period="week")
    lines = text.splitlines()

    # THEN the failed run's row gives no savings: it delivered nothing to compare
    row = next(line for line in lines if line.startswith("run-c")).split()
    assert row[:6] == ["run-c", "FAILED", "no", "12.00", "10.00", "-"], row
    # AND its week counts its spend apart, with no On-Demand-only baseline or savings
    week = next(line for line in lines if line.startswith("2025-W27")).split()
    assert week[4:8] == ["0.00", "0.00", "-", "12.00"], week
    # AND the total compares the succeeded runs with their baseline, and states the failed run's spend besides
    assert lines[-1] == (
        "Total: 4 runs, succeeded ones cost $6.00 vs $24.00 On-Demand only, saved $18.00 (75.0%); "
        "1 failed run cost $12.00"
    )
