"""EC2 Spot Instance Interruption Warning / Rebalance Recommendation -> checkpoint, and requeue when at risk."""

from spot_hpc.aws import account_of
from spot_hpc.handler import control_plane_handler
from spot_hpc.interruptions import on_spot_signal

lambda_handler = control_plane_handler(
    lambda services, event, context: on_spot_signal(services, event, account_of(context.invoked_function_arn)),
)
