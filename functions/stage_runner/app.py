"""Step Functions (waitForTaskToken) -> place the stage's Batch work on the queue the deadline policy chooses."""

from spot_hpc.handler import control_plane_handler
from spot_hpc.runner import run_stage

lambda_handler = control_plane_handler(
    lambda services, event, context: run_stage(services, event),
)
