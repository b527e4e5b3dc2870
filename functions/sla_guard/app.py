"""Schedule -> re-evaluate every active stage against its deadline; reconcile the ledger with Batch; then send the
notices whose sender died after claiming them, and the Slack notices parked while Slack was down."""

from spot_hpc.guard import run_guard
from spot_hpc.handler import control_plane_handler
from spot_hpc.outcome import record_guard_pass

lambda_handler = control_plane_handler(
    # The Lambda's time left: no stage check is started near the timeout, and notices to send late use what is left.
    lambda services, event, context: run_guard(
        services, remaining_seconds=lambda: context.get_remaining_time_in_millis() / 1000
    ),
    record_guard_pass,
)
