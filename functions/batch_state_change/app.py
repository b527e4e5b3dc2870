"""Batch Job State Change -> ledger, failure classification, resubmission from checkpoint, stage settlement."""

from spot_hpc.aws import account_of
from spot_hpc.handler import control_plane_handler
from spot_hpc.job_events import on_job_state_change

lambda_handler = control_plane_handler(
    lambda services, event, context: on_job_state_change(services, event, account_of(context.invoked_function_arn)),
)
