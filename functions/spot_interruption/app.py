"""EC2 Spot Instance Interruption Warning / Rebalance Recommendation -> checkpoint, and requeue when at risk."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext
from spot_hpc.aws import account_of
from spot_hpc.interruptions import on_spot_signal
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
    result = on_spot_signal(services, event, account_of(context.invoked_function_arn))
    record_event_outcome(metrics, result)
    return result
