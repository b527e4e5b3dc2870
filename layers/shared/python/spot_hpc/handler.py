"""What every Lambda of the control plane is: Powertools' decorator stack around one call into the domain.

    lambda_handler = control_plane_handler(lambda services, event, context: run_guard(services))

The environment is validated and the AWS clients are built when the function's module is imported (its cold
start); a misconfigured stack fails there, loudly, before any event is touched.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.typing import LambdaContext

from spot_hpc.clock import utc_now
from spot_hpc.metrics import new_metrics, record_event_outcome
from spot_hpc.services import Services

# Most events change nothing worth a metric (a duplicate, a guard run with every stage on track); Powertools would
# warn about the empty flush on each of them.
warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)

# The packages whose loggers log as the function's own.
DOMAIN_PACKAGES = ("spot_hpc", "spot_checkpoint")

Result = TypeVar("Result")
Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def control_plane_handler(
    call: Callable[[Services, dict[str, Any], LambdaContext], Result],
    outcome: Callable[[Metrics, Result], dict[str, Any]] = record_event_outcome,  # type: ignore[assignment]
) -> Handler:
    """`call` does the work; `outcome` records its metrics and returns what the handler answers."""
    logger, tracer, metrics = Logger(), Tracer(), new_metrics()
    # The domain package logs through `logging.getLogger(__name__)` ("spot_hpc.*"), and so does the checkpoint
    # protocol it reads stages' progress with ("spot_checkpoint.*"); Powertools' logger (named after the service) is
    # not their parent: without its configuration they would log at the Lambda runtime's default level (WARNING),
    # their INFO records lost, and unstructured, without the invocation's keys.
    copy_config_to_registered_loggers(source_logger=logger, include=set(DOMAIN_PACKAGES))
    services = Services.from_environ()

    @logger.inject_lambda_context
    @tracer.capture_lambda_handler
    @metrics.log_metrics
    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        services.invocation_ends_at = utc_now() + timedelta(milliseconds=context.get_remaining_time_in_millis())
        return outcome(metrics, call(services, event, context))

    return lambda_handler
