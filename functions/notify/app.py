"""Step Functions -> settle the run and tell Slack and SNS how it ended, with cost and savings."""

from spot_hpc.handler import control_plane_handler
from spot_hpc.outcome import finish, record_settlement

lambda_handler = control_plane_handler(
    lambda services, event, context: finish(services, event),
    record_settlement,
)
