"""Summaries of run reports: per run and per period (day or ISO week), as terminal tables and a PNG chart.

Input is a list of run reports (the `--json` run report of `spotctl demo`, or what the ledger keeps). Two
optional report fields identify runs: `run_id` (else "run-N" in input order) and `started_at` (ISO 8601; runs
without it are grouped under the period "unknown"). Periods are UTC days and ISO weeks. A run still running
(`pipeline_status` neither SUCCEEDED nor FAILED) shows its cost so far in its own row; its deadline is neither met
nor missed yet, and the money totals leave it out (its cost so far set against its whole On-Demand plan would
inflate the savings). A failed run delivered nothing to compare: its cost is counted apart, as spent on failed
runs, and it has no savings; the savings compare the succeeded runs' cost with their On-Demand-only cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from spot_hpc.clock import parse_time
from spot_hpc.cost import check_run_report_costs, savings_pct
from spot_hpc.events import TERMINAL_STATUSES

from spotctl.cli import is_id, shown
from spotctl.files import write_png

Period = Literal["day", "week"]
PERIODS: tuple[Period, ...] = ("day", "week")
UNKNOWN_PERIOD = "unknown"
# The largest figures a run report may carry. A run lives at most a year (a Standard workflow's limit): a billion
# dollars and a million interruptions, requeues or unknown prices (one every half a minute for a year) are far past
# any real run, and a billion dollars a run leaves the totals of any number of runs far from the largest float.
MAX_RUN_USD = 1e9
MAX_RUN_COUNT = 1_000_000
# A run's savings: at most all of its On-Demand-only cost, and no run costs ten thousand times that (-1e6 %).
SAVINGS_PCT_RANGE = (-1e6, 100.0)


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    period_start: datetime | None
    status: str
    deadline_met: bool
    cost_usd: float
    on_demand_only_cost_usd: float
    savings_pct: float
    interruptions: int
    requeues_to_on_demand: int
    cost_problems: tuple[str, ...]
    # Prices that could not be looked up, which the run's cost counts as $0 (absent from reports written before).
    prices_unknown: int = 0

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    @property
    def failed(self) -> bool:
        return self.ended and not self.succeeded


@dataclass(frozen=True)
class PeriodSummary:
    period: str
    runs: int
    succeeded: int
    deadlines_met: int
    cost_usd: float  # of the succeeded runs, as `on_demand_only_cost_usd`
    on_demand_only_cost_usd: float
    interruptions: int
    requeues_to_on_demand: int
    ended: int  # runs that succeeded or failed: the others have no deadline outcome yet
    failed_cost_usd: float  # spent on failed runs, which have no savings

    @property
    def savings_pct(self) -> float:
        return savings_pct(self.cost_usd, self.on_demand_only_cost_usd)


def summarise_run(run_report: Mapping[str, Any], index: int) -> RunSummary:
    """One run's summary; raises ValueError naming the run and the field when the report lacks a required field or
    one of its figures is not what it can be: costs are numbers from 0 to MAX_RUN_USD, savings a number of at most
    100 %, counts whole numbers from 0 to MAX_RUN_COUNT."""
    given_id = run_report.get("run_id")
    if given_id not in (None, "") and not is_id(given_id):
        raise ValueError(f"run report #{index + 1} is malformed: run_id is {shown(given_id)}, not text")
    run_id = str(given_id or f"run-{index + 1}")
    try:
        return RunSummary(
            run_id=run_id,
            period_start=_parse_started_at(run_report.get("started_at")),
            status=_status(run_report),
            # Only a JSON true: bool("false") is True.
            deadline_met=run_report["deadline_met"] is True,
            cost_usd=_usd(run_report, "cost_usd"),
            on_demand_only_cost_usd=_usd(run_report, "on_demand_only_cost_usd"),
            savings_pct=_number(run_report, "savings_pct", *SAVINGS_PCT_RANGE, "a percentage from -1,000,000 to 100"),
            interruptions=_count(run_report, "interruptions"),
            requeues_to_on_demand=_count(run_report, "requeues_to_on_demand"),
            cost_problems=tuple(check_run_report_costs(run_report)),
            prices_unknown=_count(run_report, "prices_unknown"),
        )
    except KeyError as exc:
        raise ValueError(f"run report {run_id!r} has no {exc.args[0]!r} field") from None
    except (TypeError, ValueError, OverflowError) as exc:
        # OverflowError: hours or prices the costs are checked with that pass the largest float (JSON integers have no
        # limit, and two finite hours may lie further apart than any float).
        raise ValueError(f"run report {run_id!r} is malformed: {exc}") from None


def summarise_runs(run_reports: Sequence[Mapping[str, Any]]) -> list[RunSummary]:
    summaries = []
    for index, report in enumerate(run_reports):
        if not isinstance(report, Mapping):
            raise ValueError(f"run report {index + 1} is not a JSON object")
        summaries.append(summarise_run(report, index))
    return summaries


def period_label(moment: datetime | None, period: Period) -> str:
    if moment is None:
        return UNKNOWN_PERIOD
    if period == "day":
        return moment.date().isoformat()
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def summarise_periods(runs: Sequence[RunSummary], period: Period = "day") -> list[PeriodSummary]:
    """Totals per day or ISO week, in time order (runs of unknown date last); money of the runs that ended, the
    failed runs' cost apart."""
    groups: dict[str, list[RunSummary]] = {}
    for run in runs:
        groups.setdefault(period_label(run.period_start, period), []).append(run)
    ordered = sorted(groups, key=lambda label: (label == UNKNOWN_PERIOD, label))
    return [
        PeriodSummary(
            period=label,
            runs=len(groups[label]),
            succeeded=sum(run.succeeded for run in groups[label]),
            deadlines_met=sum(run.deadline_met for run in groups[label]),
            ended=sum(run.ended for run in groups[label]),
            cost_usd=round(sum(run.cost_usd for run in groups[label] if run.succeeded), 6),
            on_demand_only_cost_usd=round(
                sum(run.on_demand_only_cost_usd for run in groups[label] if run.succeeded), 6
            ),
            interruptions=sum(run.interruptions for run in groups[label]),
            requeues_to_on_demand=sum(run.requeues_to_on_demand for run in groups[label]),
            failed_cost_usd=round(sum(run.cost_usd for run in groups[label] if run.failed), 6),
        )
        for label in ordered
    ]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_columns: set[int]) -> str:
    """An aligned plain-text table: numeric columns right-aligned, the others left-aligned."""
    widths = [max(len(headers[col]), *(len(row[col]) for row in rows)) for col in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(widths[col]) if col in numeric_columns else cell.ljust(widths[col])
            for col, cell in enumerate(cells)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * width for width in widths]), *(line(row) for row in rows)])


RUN_HEADERS = (
    "run",
    "status",
    "deadline met",
    "cost USD",
    "on-demand only USD",
    "savings %",
    "interruptions",
    "requeues",
)
# "deadlines met" is out of the runs that ended (a run still running has not met or missed its deadline yet). Cost,
# On-Demand only and savings are the succeeded runs'; "failed USD" what the failed runs cost.
PERIOD_HEADERS = (
    "runs",
    "succeeded",
    "deadlines met",
    "cost USD",
    "on-demand only USD",
    "savings %",
    "failed USD",
    "interruptions",
)


def run_table(runs: Sequence[RunSummary]) -> str:
    rows = [
        (
            run.run_id,
            run.status,
            "yes" if run.deadline_met else "no" if run.ended else "-",
            f"{run.cost_usd:,.2f}",
            f"{run.on_demand_only_cost_usd:,.2f}",
            # Cost so far against the whole plan says nothing yet; a failed run delivered nothing to compare.
            f"{run.savings_pct:.1f}" if run.succeeded else "-",
            str(run.interruptions),
            str(run.requeues_to_on_demand),
        )
        for run in runs
    ]
    return format_table(RUN_HEADERS, rows, numeric_columns={3, 4, 5, 6, 7})


def period_table(periods: Sequence[PeriodSummary], period: Period) -> str:
    rows = [
        (
            item.period,
            str(item.runs),
            str(item.succeeded),
            f"{item.deadlines_met}/{item.ended}",
            f"{item.cost_usd:,.2f}",
            f"{item.on_demand_only_cost_usd:,.2f}",
            f"{item.savings_pct:.1f}" if item.succeeded else "-",
            f"{item.failed_cost_usd:,.2f}",
            str(item.interruptions),
        )
        for item in periods
    ]
    return format_table((period, *PERIOD_HEADERS), rows, numeric_columns={1, 2, 3, 4, 5, 6, 7, 8})


def plot_cost_vs_on_demand(runs: Sequence[RunSummary], plot_path: Path) -> Path:
    """A PNG bar chart: each run's cost beside what it would have cost On-Demand, savings % above."""
    # Figure + Agg canvas directly: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = max(6.0, 0.9 * len(runs) + 2.0)
    figure = Figure(figsize=(min(width, 40.0), 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(runs)))
    bar_width = 0.4
    axes.bar([p - bar_width / 2 for p in positions], [r.cost_usd for r in runs], bar_width, label="cost (Spot-first)")
    axes.bar(
        [p + bar_width / 2 for p in positions],
        [r.on_demand_only_cost_usd for r in runs],
        bar_width,
        label="On-Demand only, no interruption",
    )
    for position, run in zip(positions, runs, strict=True):
        top = max(run.cost_usd, run.on_demand_only_cost_usd)
        if run.succeeded:  # a run in progress has no savings yet, a failed one none (see `run_table`)
            axes.annotate(f"{run.savings_pct:.0f}%", (position, top), ha="center", va="bottom", fontsize=8)
    # Run ids are names, not mathtext: "$" in one is a dollar sign.
    axes.set_xticks(positions, [r.run_id for r in runs], rotation=30, ha="right", fontsize=8, parse_math=False)
    axes.set_ylabel("USD")
    axes.set_title("Run cost vs On-Demand (label: savings)")
    # Headroom above the tallest bar keeps the legend and the labels off the bars.
    tallest = max((max(r.cost_usd, r.on_demand_only_cost_usd) for r in runs), default=0.0)
    axes.set_ylim(0, tallest * 1.3 if tallest > 0 else 1.0)
    axes.legend(fontsize=8, loc="upper left", ncols=2)
    figure.tight_layout()
    write_png(plot_path, figure)
    return plot_path


def render_report(run_reports: list[dict[str, Any]], plot_path: Path | None, period: Period = "day") -> str:
    """The `spotctl report` text (per-run table, per-period totals, overall line); writes the PNG when asked.

    Raises ValueError when a run report lacks a field the summary needs.
    """
    if period not in PERIODS:
        raise ValueError(f"period must be one of {PERIODS}, got {period!r}")
    runs = summarise_runs(run_reports)
    if not runs:
        return "No runs to report."
    periods = summarise_periods(runs, period)
    total_cost = sum(run.cost_usd for run in runs if run.succeeded)
    total_on_demand = sum(run.on_demand_only_cost_usd for run in runs if run.succeeded)
    running = sum(not run.ended for run in runs)
    left_out = f" ({running} still running, left out of the money)" if running else ""
    failed = [run for run in runs if run.failed]
    # A failed run's cost is spent all the same, but it has nothing to compare with On-Demand.
    whose_cost = "succeeded ones cost" if failed else "cost"
    failed_spend = (
        f"; {len(failed)} failed run{'' if len(failed) == 1 else 's'} cost ${sum(run.cost_usd for run in failed):,.2f}"
        if failed
        else ""
    )
    sections = [
        "Runs",
        run_table(runs),
        "",
        f"By {period}",
        period_table(periods, period),
        "",
        f"Total: {len(runs)} runs{left_out}, {whose_cost} ${total_cost:,.2f} vs ${total_on_demand:,.2f} On-Demand "
        f"only, saved ${total_on_demand - total_cost:,.2f} ({savings_pct(total_cost, total_on_demand):.1f}%)"
        f"{failed_spend}",
    ]
    problems = [f"  {run.run_id}: {problem}" for run in runs for problem in run.cost_problems]
    if problems:
        sections += ["", "Warning: these figures disagree with their attempts' billed time and prices:", *problems]
    unpriced = [f"  {run.run_id}: {run.prices_unknown}" for run in runs if run.prices_unknown]
    if unpriced:
        sections += ["", "Warning: these runs' costs count prices that could not be looked up as $0:", *unpriced]
    if plot_path is not None:
        plot_cost_vs_on_demand(runs, plot_path)
        sections += ["", f"Chart written to {plot_path}"]
    return "\n".join(sections)


def _status(run_report: Mapping[str, Any]) -> str:
    """The pipeline's status: SUCCEEDED, FAILED or the state of a run still going. Null or a list would be counted as
    a run still going."""
    value = run_report["pipeline_status"]
    if not isinstance(value, str) or not value:
        raise ValueError(f"pipeline_status is {shown(value)}, not a status such as SUCCEEDED or FAILED")
    return value


def _parse_started_at(value: Any) -> datetime | None:
    """The run's start in UTC (a timestamp with another offset is moved to UTC; one without is UTC already)."""
    if value in (None, ""):
        return None
    return parse_time(str(value))


def _number(run_report: Mapping[str, Any], name: str, low: float, high: float, what: str) -> float:
    """A figure of the report: a JSON number within [low, high] (finite bounds, which NaN and the infinities are
    outside). A string or a bool (an int to Python) is none of the figures a report carries; `what` says what the
    figure must be."""
    value = run_report[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{name} is {shown(value)}, not {what}")
    return float(value)


def _usd(run_report: Mapping[str, Any], name: str) -> float:
    return _number(run_report, name, 0.0, MAX_RUN_USD, f"an amount from 0 to {MAX_RUN_USD:,.0f} USD")


def _count(run_report: Mapping[str, Any], name: str) -> int:
    """A count the report may leave out (reports written before it was counted), else a whole number in reason."""
    if name not in run_report:
        return 0
    what = f"a whole number from 0 to {MAX_RUN_COUNT:,}"
    value = _number(run_report, name, 0, MAX_RUN_COUNT, what)
    if not value.is_integer():
        raise ValueError(f"{name} is {shown(run_report[name])}, not {what}")
    return int(value)
