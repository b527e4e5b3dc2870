"""Watching for the end: the Spot notice in instance metadata, the control plane's request, and SIGTERM.

AWS Batch forwards the two-minute Spot warning to no container, so the job polls for it itself, on a thread of its
own: a slow or hung S3 read of the request (botocore waits and retries) must not eat into that warning. The watcher
only records *that* the job must stop; the job's own thread checkpoints at its next safe point, so a signal or a notice
arriving during a checkpoint never interrupts the write.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from .imds import InstanceMetadata, MetadataUnavailable
from .store import CheckpointRequest, CheckpointStore, earlier_attempt

logger = logging.getLogger(__name__)

REASON_SPOT_INTERRUPTION = "spot-interruption"
REASON_CHECKPOINT_REQUEST = "checkpoint-request"
REASON_SIGTERM = "sigterm"
REASON_S3_UNAVAILABLE = "s3-unavailable"  # the job's start could not read S3, past its retries (not an interruption)

# While the metadata service does not answer (not on EC2, hop limit of 1 in a bridged container), poll it less often;
# but only after several failures in a row, so one lost answer does not hide a notice AWS advises checking every 5 s.
UNREACHABLE_BACKOFF_SECONDS = 30.0
FAILURES_BEFORE_BACKOFF = 3


@dataclass(frozen=True)
class StopSignal:
    """Why and when the job was told to stop."""

    reason: str
    detail: str
    noticed_at: float
    request_id: str | None = None


class SigtermRecorder:
    """The SIGTERM handler of a job process until its watcher is in place: it only counts the signals, and the watcher
    that replaces it takes them over (see :func:`sigterm_recorded`)."""

    def __init__(self) -> None:
        self.received = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1

    def take(self) -> int:
        """The signals recorded so far, which are no longer recorded here."""
        received, self.received = self.received, 0
        return received


@contextmanager
def sigterm_recorded() -> Iterator[None]:
    """Record SIGTERM from now to the end of the block, for the watcher of a job started in it: a SIGTERM sent once
    before the job starts (while it reads its settings) is not lost (Python as a container's PID 1 ignores a signal
    it has no handler for; under an init, it dies of it) but stops the job as it starts, as one sent while it reads
    its checkpoint does. The previous handler is put back at the end. ``run_job`` runs every job in such a block."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set a handler
        yield
        return
    previous = signal.signal(signal.SIGTERM, SigtermRecorder())
    try:
        yield
    finally:
        if previous is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGTERM, previous)


class InterruptionWatcher:
    """Polls instance metadata and the checkpoint request, each on a daemon thread of its own, and records SIGTERM.

    ``ignore_request_id`` is the request the part's latest checkpoint already honoured, so that a resubmitted job
    does not stop again on the request that stopped its predecessor. ``attempt`` is this job's stage attempt: a
    request for an earlier attempt was meant for a predecessor still stopping, not for this job.
    """

    def __init__(
        self,
        *,
        metadata: InstanceMetadata | None,
        store: CheckpointStore | None,
        poll_seconds: float = 5.0,
        ignore_request_id: str | None = None,
        attempt: int | None = None,
        on_signal: Callable[[StopSignal], None] | None = None,
    ) -> None:
        self.metadata = metadata
        self.store = store
        self.poll_seconds = poll_seconds
        self.ignore_request_id = ignore_request_id
        self.attempt = attempt
        self.on_signal = on_signal
        self.signals_received = 0
        self._stop: StopSignal | None = None
        self._save_request: CheckpointRequest | None = None
        self._closed = threading.Event()
        self._first_reason = threading.Lock()  # taken once, by the first reason to stop; never released
        self._threads: list[threading.Thread] = []
        self._metadata_retry_at = 0.0
        self._metadata_warned = False
        self._metadata_failures = 0
        self._sigterm_handled = False
        self._previous_sigterm: object = None

    @property
    def stop_signal(self) -> StopSignal | None:
        return self._stop

    @property
    def save_request(self) -> CheckpointRequest | None:
        """A request to checkpoint and go on working, not yet honoured (`CheckpointedJob.step` saves for it)."""
        return self._save_request

    def save_honoured(self, request_id: str) -> None:
        """The job has saved for the request: it is not honoured again (nor by a job resumed from that checkpoint)."""
        self.ignore_request_id = request_id
        if self._save_request is not None and self._save_request.request_id == request_id:
            self._save_request = None

    def trigger(self, reason: str, detail: str = "", request_id: str | None = None, *, notify: bool = True) -> bool:
        """Record a reason to stop; only the first one counts. Returns True if this call set it."""
        # Two pollers and the SIGTERM handler may race here. The handler runs on the main thread and must never wait,
        # so the first reason claims a lock without blocking, and every later one finds it taken.
        if self._stop is not None or not self._first_reason.acquire(blocking=False):
            return False
        stop = self._stop = StopSignal(reason, detail, time.time(), request_id)
        if notify and self.on_signal is not None:
            self.on_signal(stop)
        return True

    # -- SIGTERM ------------------------------------------------------------------------------------------------
    def _handle_sigterm(self, signum: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread: record and return, never raise into a checkpoint write.
        # No logging here either: writing to a stream the interrupted code is writing to raises a reentrancy error.
        self.signals_received += 1
        self.trigger(REASON_SIGTERM, f"signal {signum}", notify=False)

    def install_signal_handler(self) -> None:
        """Record SIGTERM from now on (once: a second call keeps the handler the first one replaced, for close()),
        and any that a :class:`SigtermRecorder` it replaces recorded before."""
        if not self._sigterm_handled and threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._handle_sigterm)
            self._sigterm_handled = True
            if isinstance(self._previous_sigterm, SigtermRecorder):
                # The recorder is no longer called from here on: no signal is counted twice, or lost in between.
                for _ in range(self._previous_sigterm.take()):
                    self._handle_sigterm(signal.SIGTERM, None)

    # -- polling ------------------------------------------------------------------------------------------------
    def poll_once(self) -> StopSignal | None:
        """One round of checks; returns the stop signal, if any."""
        if self._stop is None:
            self._poll_metadata()
        if self._stop is None:
            self._poll_request()
        return self._stop

    def look_for_notice(self) -> None:
        """One look for the Spot notice while the pollers do not run yet (a job retrying its start); none once they
        do, as they look themselves."""
        if self._stop is None and not self._threads:
            self._poll_safely(self._poll_metadata)

    def _poll_metadata(self) -> None:
        if self.metadata is None or time.monotonic() < self._metadata_retry_at:
            return
        try:
            notice = self.metadata.spot_instance_action()
        except MetadataUnavailable as exc:
            self._metadata_failures += 1
            if self._metadata_failures >= FAILURES_BEFORE_BACKOFF:
                if not self._metadata_warned:
                    logger.warning(
                        "%s; retrying every %.0f s, SIGTERM and requests still work", exc, UNREACHABLE_BACKOFF_SECONDS
                    )
                    self._metadata_warned = True
                self._metadata_retry_at = time.monotonic() + UNREACHABLE_BACKOFF_SECONDS
            return
        self._metadata_failures = 0
        if notice is not None:
            self.trigger(REASON_SPOT_INTERRUPTION, f"{notice.get('action', '?')} at {notice.get('time', '?')}")

    def _poll_request(self) -> None:
        if self.store is None:
            return
        try:
            request = self.store.pending_request()
        except Exception as exc:  # a transient S3 error must not kill the watcher
            logger.warning("could not read the checkpoint request: %s", exc)
            return
        if request is None or request.request_id == self.ignore_request_id or self._for_earlier_attempt(request):
            return
        if not request.stop:
            self._save_request = request
            return
        self.trigger(REASON_CHECKPOINT_REQUEST, request.reason, request.request_id)

    def _for_earlier_attempt(self, request: CheckpointRequest) -> bool:
        return earlier_attempt(request.attempt, self.attempt)

    def _poll_safely(self, poll: Callable[[], None]) -> None:
        # Whatever one poll raises, its poller must live on: a dead poller never sees a notice or request again.
        try:
            poll()
        except Exception:
            logger.exception("checking for a Spot notice or checkpoint request failed; polling on")

    def _run(self, poll: Callable[[], None]) -> None:
        while not self._closed.is_set() and self._stop is None:
            self._poll_safely(poll)
            self._closed.wait(self.poll_seconds)

    def start(self) -> None:
        self.install_signal_handler()
        pollers = (("metadata", self.metadata, self._poll_metadata), ("request", self.store, self._poll_request))
        for name, source, poll in pollers:
            if source is None:
                continue
            # The first look is synchronous: a job started on an instance already marked for interruption stops in
            # CheckpointedJob.start(), and one started while a request is pending after its first unit of work, rather
            # than whenever the thread gets to it. The metadata thread starts before the first request read, which a
            # hung S3 could hold up.
            if self._stop is None:
                self._poll_safely(poll)
            thread = threading.Thread(target=self._run, args=(poll,), name=f"spot-checkpoint-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._closed.set()
        # Wait about as long as one metadata poll can take, no longer: a poller stuck in an S3 read is a daemon thread
        # and does not hold up the job's exit.
        deadline = time.monotonic() + (self.metadata.timeout * 2 + 1 if self.metadata else 1)
        for thread in self._threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0))
        if self._sigterm_handled and threading.current_thread() is threading.main_thread():
            if self._previous_sigterm is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(signal.SIGTERM, self._previous_sigterm)  # type: ignore[arg-type]
            self._previous_sigterm = None
            self._sigterm_handled = False
