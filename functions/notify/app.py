"""Step Functions -> settle the run and tell Slack and SNS how it ended, with cost and savings."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from spot_hpc.metrics import record_settled_run
from spot_hpc.outcome import finish
from spot_hpc.services import Services

logger = Logger()
tracer = Tracer()
metrics = Metrics()
services = Services.from_environ()  # environment validated at cold start


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settlement = finish(services, event)
    if settlement.first_time:
        record_settled_run(metrics, settlement.report)
    return settlement.summary()
