"""S3 "Object Created" under incoming/ -> one pipeline execution per object version (rejections recorded)."""

from spot_hpc.aws import account_of
from spot_hpc.handler import control_plane_handler
from spot_hpc.ingest import start_pipeline

lambda_handler = control_plane_handler(
    lambda services, event, context: start_pipeline(services, event, account_of(context.invoked_function_arn)),
)
