"""Step Functions (waitForTaskToken) -> place the stage's Batch work on the queue the deadline policy chooses."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from spot_hpc.runner import run_stage
from spot_hpc.services import Services

logger = Logger()
tracer = Tracer()
metrics = Metrics()
services = Services.from_environ()  # environment validated at cold start


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_stage(services, event)
