"""Schedule -> re-evaluate every active stage against its deadline; reconcile the ledger with Batch."""

from spot_hpc.guard import run_guard
from spot_hpc.handler import control_plane_handler

lambda_handler = control_plane_handler(
    lambda services, event, context: run_guard(services),
)
