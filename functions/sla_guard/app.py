"""Schedule -> re-evaluate every active stage against its deadline; reconcile the ledger with Batch."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from spot_hpc.guard import run_guard
from spot_hpc.metrics import record_event_outcome
from spot_hpc.services import Services

logger = Logger()
tracer = Tracer()
metrics = Metrics()
services = Services.from_environ()  # environment validated at cold start


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    result = run_guard(services)
    record_event_outcome(metrics, result)
    return result
