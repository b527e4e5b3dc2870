"""A handler's cold start gives the domain package's loggers (`logging.getLogger(__name__)` in spot_hpc, and in the
checkpoint protocol it shares with the jobs, spot_checkpoint) the Powertools logger's level and JSON output: the Lambda
runtime leaves the root logger at WARNING, and Powertools' logger is named after the service, not their parent."""

from __future__ import annotations

import io
import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from spot_hpc import handler

from spotctl.offline.adapters import LambdaContextStandIn


@pytest.mark.parametrize(
    ("logger_name", "level"),
    [("spot_hpc.placement", logging.INFO), ("spot_checkpoint.store", logging.WARNING)],
    ids=["domain-info", "checkpoint-protocol-warning"],
)
def test_the_domains_records_reach_the_functions_log_as_powertools_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], logger_name: str, level: int
) -> None:
    # GIVEN the Lambda runtime's logging (one handler on the root logger, left at WARNING), Powertools at INFO, and a
    # handler whose domain call logs as placement does (INFO), or as the checkpoint store does reading a stage's
    # progress (WARNING)
    runtime_output = io.StringIO()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [logging.StreamHandler(runtime_output)])
    monkeypatch.setattr(root, "level", logging.WARNING)
    # A service name of its own (each case's): Powertools keeps one logger per name, with the handler of the first test
    # to make it.
    environment = {
        "POWERTOOLS_SERVICE_NAME": f"spot-hpc-logging-{logger_name}",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "SpotHpc",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(handler.Services, "from_environ", classmethod(lambda cls: SimpleNamespace()))

    def place(services: Any, event: Any, context: Any) -> dict[str, str]:
        logging.getLogger(logger_name).log(level, "placed", extra={"run_id": "run-1"})
        return {"status": "placed"}

    lambda_handler = handler.control_plane_handler(place)

    # WHEN the function handles an event
    lambda_handler({}, LambdaContextStandIn("stage-runner", "arn:aws:lambda:us-east-1:123456789012:function:f"))

    # THEN the record is in the function's output, as Powertools JSON with its extra keys and the invocation's, and once
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    placed = [record for record in records if record.get("message") == "placed"]
    assert [(r["level"], r["run_id"], r["name"]) for r in placed] == [
        (logging.getLevelName(level), "run-1", logger_name)
    ]
    assert "function_request_id" in placed[0]
    assert "placed" not in runtime_output.getvalue()
