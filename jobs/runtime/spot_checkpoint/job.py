"""The job side: resume, periodic checkpoints, checkpoint-and-exit on an interruption, cleanup on success."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NoReturn, TypeVar

from .entrypoint import fraction, number_between, positive_number, whole_number
from .errors import InputError
from .imds import DEFAULT_ENDPOINT, InstanceMetadata
from .store import (
    DEFAULT_KEEP,
    DEFAULT_PART,
    TRANSIENT_UNREACHABLE,
    Checkpoint,
    CheckpointRequest,
    CheckpointStore,
    parse_s3_uri,
    part_name,
    transient_failure,
)
from .watch import REASON_CHECKPOINT_REQUEST, REASON_S3_UNAVAILABLE, InterruptionWatcher, StopSignal

logger = logging.getLogger(__name__)

# Exit codes the control plane recognises. All are outside 0-2 (success, errors, usage), sysexits (64-78) and the
# shell's 126-165 (not executable, not found, killed by signal N as 128+N), so an application rarely collides.
EXIT_CHECKPOINTED = 86  # interrupted or asked to stop; the latest checkpoint holds all the work: resubmit and resume
EXIT_STOPPED_WITHOUT_CHECKPOINT = 87  # interrupted, but the checkpoint could not be written: resubmit, work is lost
# S3 stayed busy or failing past the start's retries: resubmit without spending a retry, but no interruption (the
# control plane neither tells it as one nor learns Spot's availability from it).
EXIT_S3_UNAVAILABLE = 88

# Environment the control plane (or a Batch job definition) gives the job.
ENV_CHECKPOINT_URI = "CHECKPOINT_URI"  # s3://bucket/checkpoints/<run_id>/<stage>/ ; unset: run without checkpoints
ENV_METADATA_ENDPOINT = "AWS_EC2_METADATA_SERVICE_ENDPOINT"  # as botocore reads it
ENV_METADATA_DISABLED = "AWS_EC2_METADATA_DISABLED"  # "true": do not poll instance metadata (as botocore)
ENV_POLL_SECONDS = "SPOT_CHECKPOINT_POLL_SECONDS"  # how often to look for a notice or request (default 5)
# Each look is a request to instance metadata (and one to S3 for a request): every 10 ms leaves the watcher idle
# nearly all the time, and much more often it polls back to back, taking a core from the work. A Spot notice comes
# two minutes ahead: a part that looks less often than once a minute can see it too late to checkpoint.
MIN_POLL_SECONDS, MAX_POLL_SECONDS = 0.01, 60.0
ENV_INTERVAL_SECONDS = "SPOT_CHECKPOINT_INTERVAL_SECONDS"  # fixed periodic interval; unset: chosen from the cost
ENV_MIN_INTERVAL_SECONDS = "SPOT_CHECKPOINT_MIN_INTERVAL_SECONDS"  # default 60
ENV_MAX_INTERVAL_SECONDS = "SPOT_CHECKPOINT_MAX_INTERVAL_SECONDS"  # default 900
ENV_MAX_OVERHEAD = "SPOT_CHECKPOINT_MAX_OVERHEAD"  # fraction of run time spent checkpointing, default 0.02
ENV_KEEP = "SPOT_CHECKPOINT_KEEP"  # complete checkpoints kept per part for fallback, default 2
ENV_ATTEMPT = "ATTEMPT"  # the stage attempt this job is (set by the control plane); requests for earlier ones ignored
ENV_PARTS = "SPOT_CHECKPOINT_PARTS"  # number of array shards (Batch tells a shard its index, not the array size)
# Set by AWS Batch.
ENV_NODE_INDEX = "AWS_BATCH_JOB_NODE_INDEX"
ENV_NUM_NODES = "AWS_BATCH_JOB_NUM_NODES"
ENV_MAIN_NODE_INDEX = "AWS_BATCH_JOB_MAIN_NODE_INDEX"
ENV_ARRAY_INDEX = "AWS_BATCH_JOB_ARRAY_INDEX"

# While a part waits (wait_until), how often it looks whether it was told to stop, between two looks at what it awaits.
STOP_CHECK_SECONDS = 0.1

EVENT_KEY = "spot_checkpoint"  # every structured log line of the runtime carries this key

Snapshot = Callable[[], "bytes | Mapping[str, bytes]"]
EventSink = Callable[[str, dict[str, Any]], None]
T = TypeVar("T")


def log_event_to_stderr(event: str, fields: dict[str, Any]) -> None:
    """One JSON line per runtime event on stderr (CloudWatch Logs in Batch; the drill reads them too)."""
    print(json.dumps({EVENT_KEY: event, "time": time.time(), **fields}, sort_keys=True), file=sys.stderr, flush=True)


@dataclass
class CheckpointInterval:
    """How long to work between periodic checkpoints.

    A fixed interval if the job sets one; otherwise the last checkpoint's cost divided by the overhead the job
    accepts, kept within [min, max]: a checkpoint that takes 3 s at 2 % overhead is taken every 150 s. Work lost on
    a hard kill is at most one interval; a notice or request checkpoints at once regardless.
    """

    fixed_seconds: float | None = None
    min_seconds: float = 60.0
    max_seconds: float = 900.0
    max_overhead: float = 0.02

    def after_save(self, save_seconds: float) -> float:
        if self.fixed_seconds is not None:
            return self.fixed_seconds
        return min(max(save_seconds / self.max_overhead, self.min_seconds), self.max_seconds)

    @property
    def first(self) -> float:
        return self.fixed_seconds if self.fixed_seconds is not None else self.min_seconds


@dataclass(frozen=True)
class StartRetry:
    """How a job's start (its checkpoint read, its input read) rides out a transient S3 error that outlasted botocore's
    own retries: throttling when a large array starts at once on one prefix, a 500, a connection reset.

    Tries again after ``first_delay`` seconds, doubling up to ``max_delay``, each delay drawn between its half and its
    whole (so shards that failed together do not retry together), for at most ``seconds`` from the first failure.
    The start has no two-minute deadline, unlike a checkpoint on a Spot notice; a SIGTERM or a notice meanwhile still
    stops the job at once."""

    seconds: float = 300.0
    first_delay: float = 1.0
    max_delay: float = 30.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    jitter: Callable[[], float] = random.random  # in [0, 1)

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row."""
        ceiling = min(self.first_delay * 2 ** min(failures - 1, 30), self.max_delay)
        return ceiling * (0.5 + 0.5 * self.jitter())


START_RETRY = StartRetry()


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything the runtime reads from the environment, in one place."""

    checkpoint_uri: str | None
    part: str = "main"
    part_index: int = 0
    parts_total: int = 1
    metadata_endpoint: str | None = DEFAULT_ENDPOINT
    poll_seconds: float = 5.0
    interval: CheckpointInterval = field(default_factory=CheckpointInterval)
    keep: int = DEFAULT_KEEP
    attempt: int | None = None
    is_main_node: bool = False  # a multi-node parallel job's main node: its exit ends the job, with its status

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
        """The configuration the environment gives; an :class:`InputError` naming a number it cannot run with (a
        word, ``1_0`` or the digits of another script, a poll interval of 0, a negative index): the job definition is
        wrong and no attempt will go better, so the job reports it in one line and exits 1, as for its own settings."""
        env = os.environ if environ is None else environ
        # Unset or blank: the default; Batch sets the indices, so a part without one is a plain job's "main".
        node_index = whole_number(env, ENV_NODE_INDEX, None, minimum=0)
        array_index = whole_number(env, ENV_ARRAY_INDEX, None, minimum=0) if node_index is None else None
        is_main_node = False
        if node_index is not None:
            part_index = node_index
            part = part_name(node_index=part_index)
            parts_total = whole_number(env, ENV_NUM_NODES, 1)
            is_main_node = whole_number(env, ENV_MAIN_NODE_INDEX, None, minimum=0) == part_index
            _check_part_of(ENV_NODE_INDEX, part_index, ENV_NUM_NODES, parts_total)
        elif array_index is not None:
            part_index = array_index
            part = part_name(shard_index=part_index)
            parts_total = whole_number(env, ENV_PARTS, 1)
            _check_part_of(ENV_ARRAY_INDEX, part_index, ENV_PARTS, parts_total)
        else:
            part, part_index, parts_total = part_name(), 0, 1
        disabled = env.get(ENV_METADATA_DISABLED, "").strip().lower() == "true"
        interval = CheckpointInterval(
            # 0: a checkpoint after every unit of work.
            fixed_seconds=positive_number(env, ENV_INTERVAL_SECONDS, None, zero_allowed=True),
            min_seconds=positive_number(env, ENV_MIN_INTERVAL_SECONDS, 60.0),
            max_seconds=positive_number(env, ENV_MAX_INTERVAL_SECONDS, 900.0),
            max_overhead=fraction(env, ENV_MAX_OVERHEAD, 0.02),
        )
        if interval.min_seconds > interval.max_seconds:
            # Taken as they are, the first checkpoint would come after the least and every other after the most.
            raise InputError(
                f"environment variable {ENV_MIN_INTERVAL_SECONDS} ({interval.min_seconds:g} s) must not be above "
                f"{ENV_MAX_INTERVAL_SECONDS} ({interval.max_seconds:g} s)"
            )
        return cls(
            checkpoint_uri=_checkpoint_uri(env),
            part=part,
            part_index=part_index,
            parts_total=parts_total,
            metadata_endpoint=None if disabled else _metadata_endpoint(env),
            poll_seconds=number_between(env, ENV_POLL_SECONDS, 5.0, MIN_POLL_SECONDS, MAX_POLL_SECONDS),
            interval=interval,
            keep=whole_number(env, ENV_KEEP, DEFAULT_KEEP),
            attempt=_attempt_from(env),
            is_main_node=is_main_node,
        )


def _checkpoint_uri(env: Mapping[str, str]) -> str | None:
    """The stage's checkpoint prefix, an ``s3://bucket/prefix/`` URI; None (unset or blank) runs without checkpoints.
    Another scheme, no bucket or no prefix (a bucket's root, which the stage's cleanup would empty) is an input error:
    it was a ValueError's traceback from the store."""
    uri = env.get(ENV_CHECKPOINT_URI, "").strip()
    if not uri:
        return None
    try:
        bucket, prefix = parse_s3_uri(uri)
    except ValueError as exc:
        raise InputError(f"environment variable {ENV_CHECKPOINT_URI}: {exc}") from None
    if not prefix:
        raise InputError(
            f"environment variable {ENV_CHECKPOINT_URI} ({uri!r}) has no key prefix: give the stage's, such as "
            f"s3://{bucket}/checkpoints/<run>/<stage>/"
        )
    return uri


def _metadata_endpoint(env: Mapping[str, str]) -> str:
    """The instance metadata endpoint, an ``http(s)://host[:port]/`` URL, the default unset or blank. Any other value
    (``169.254.169.254`` without its scheme, say) is an input error, as botocore makes it: every look would fail, and
    the job would never see a Spot notice, warned of only as a service it could not reach."""
    endpoint = env.get(ENV_METADATA_ENDPOINT, "").strip()
    if not endpoint:
        return DEFAULT_ENDPOINT
    try:
        parts = urllib.parse.urlsplit(endpoint)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # a port that is not a number, a bracket left open
        usable = False
    if not usable:
        raise InputError(
            f"environment variable {ENV_METADATA_ENDPOINT} must be an http:// or https:// URL, not {endpoint!r}"
        )
    return endpoint


def _check_part_of(index_name: str, index: int, total_name: str, total: int) -> None:
    """A part's index is below the number of parts: the stage's progress is the mean over that many parts
    (`store.progress`), which a part numbered past them would put wrong."""
    if index >= total:
        raise InputError(
            f"environment variable {index_name} ({index}) must be below {total_name} ({total}): parts are numbered "
            f"from 0{', and Batch tells a shard its index, not the array size' if total_name == ENV_PARTS else ''}"
        )


def _attempt_from(env: Mapping[str, str]) -> int | None:
    # An unset or odd ATTEMPT (a job run by hand) means "unknown": every request then applies, as before. Odd is
    # anything but ASCII digits, as for a whole-number setting: str.isdigit() also takes "²", which int() refuses, and
    # the digits of other scripts, which int() reads.
    try:
        return whole_number(env, ENV_ATTEMPT, None, minimum=0)
    except InputError:
        return None


class Stopped(SystemExit):
    """Raised by :meth:`CheckpointedJob.step` to end the process with the code the control plane recognises."""

    def __init__(self, exit_code: int, stop: StopSignal) -> None:
        super().__init__(exit_code)
        self.stop = stop


class CheckpointedJob:
    """Makes a loop of work units interruptible::

        with CheckpointedJob.from_environment(s3) as job:
            state = decode(job.resumed.state) if job.resumed else initial_state()
            while not done(state):
                work_one_unit(state)
                job.step(lambda: encode(state), progress=fraction(state))
            write_outputs(state)
            job.finish()

    ``step`` checkpoints when the interval is due, and on a Spot notice, a checkpoint request to stop or SIGTERM
    checkpoints at once and raises :class:`Stopped` (exit code :data:`EXIT_CHECKPOINTED`); a request with ``stop``
    false has it checkpoint once and return. Units should be short (seconds) so the notice-to-checkpoint time stays
    well inside the two-minute warning.
    """

    def __init__(
        self,
        store: CheckpointStore | None,
        *,
        metadata: InstanceMetadata | None = None,
        poll_seconds: float = 5.0,
        interval: CheckpointInterval | None = None,
        events: EventSink = log_event_to_stderr,
        attempt: int | None = None,
        start_retry: StartRetry | None = None,
    ) -> None:
        self.store = store
        self.interval = interval or CheckpointInterval()
        self.events = events
        self.start_retry = start_retry or START_RETRY
        self.watcher = InterruptionWatcher(
            metadata=metadata, store=store, poll_seconds=poll_seconds, attempt=attempt, on_signal=self._on_signal
        )
        self.resumed: Checkpoint | None = None
        self._work_before = 0.0
        self._work_here = 0.0
        self._mark = time.monotonic()
        self._next_due = float("inf")
        self._unsaved = False
        self._honoured_request_id: str | None = None
        self._final_meta: Mapping[str, Any] | None = None  # set once the part's work is done (finish or resumed)

    @classmethod
    def from_environment(
        cls, s3_client: Any, environ: Mapping[str, str] | None = None, *, events: EventSink = log_event_to_stderr
    ) -> CheckpointedJob:
        config = RuntimeConfig.from_environ(environ)
        store = None
        if config.checkpoint_uri:
            store = CheckpointStore(
                s3_client, config.checkpoint_uri, part=config.part, parts_total=config.parts_total, keep=config.keep
            )
        else:
            logger.warning("%s is not set: running without checkpoints", ENV_CHECKPOINT_URI)
        metadata = InstanceMetadata(config.metadata_endpoint) if config.metadata_endpoint else None
        return cls(
            store,
            metadata=metadata,
            poll_seconds=config.poll_seconds,
            interval=config.interval,
            events=events,
            attempt=config.attempt,
        )

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> Checkpoint | None:
        """Find the latest complete checkpoint (raising CheckpointStoreUnavailable on a missing bucket) and watch.

        A SIGTERM recorded before it returns (before start(), or while the checkpoint is read), or a Spot notice the
        watcher's first look finds, stops the job here, at once: :class:`Stopped`, with nothing read after it and
        nothing written.
        """
        # SIGTERM is sent once, and may come while the checkpoint is read (a large one takes seconds, a slow S3 more):
        # without a handler by then it is lost (ignored by Python as a container's PID 1, so the job works on without a
        # checkpoint until Batch's SIGKILL; under an init, it ends the job without one). The handler only records it.
        # The Spot notice and the checkpoint request are not lost meanwhile: both stay posted, and the watcher's first
        # look, synchronous, comes as soon as the checkpoint is loaded. The request poller cannot start before anyway:
        # which request the part has already honoured is in the checkpoint. A SIGTERM that came before start(), run_job
        # recorded (sigterm_recorded): the watcher takes it over here.
        self.watcher.install_signal_handler()
        self._stop_before_work()
        try:
            if self.store is not None:
                self.resumed = self.read_input(self._read_checkpoint, "checkpoint")
        except BaseException:
            self.watcher.close()  # no job is returned to close: put the previous SIGTERM handler back here
            raise
        if self.resumed is not None:
            self._work_before = self.resumed.work_seconds
            self._honoured_request_id = self.resumed.request_id
            self.watcher.ignore_request_id = self.resumed.request_id
            if self.resumed.final:
                self._final_meta = self.resumed.meta
            self._emit(
                "resumed",
                seq=self.resumed.seq,
                progress=self.resumed.progress,
                work_seconds=self.resumed.work_seconds,
                final=self.resumed.final,
            )
        else:
            self._emit("started")
        self._stop_before_work()
        # The watcher's first look is synchronous: a job started on an instance already marked for interruption stops
        # here too, as for a SIGTERM.
        self.watcher.start()
        self._stop_before_work()
        self._mark = time.monotonic()
        self._next_due = self._mark + self.interval.first
        return self.resumed

    def _read_checkpoint(self) -> Checkpoint | None:
        assert self.store is not None
        self.store.check_bucket()
        return self.store.latest()

    def read_input(self, read: Callable[[], T], what: str = "input") -> T:
        """``read()``, tried again on a transient S3 error (throttling, a 500, a connection reset) for a bounded time
        (:class:`StartRetry`); for what a job reads before its first unit of work. Any other error is raised at once:
        a missing object or bucket stays the job's :class:`InputError`.

        A SIGTERM or a Spot notice while it waits to try again stops the job as in :meth:`start` (exit 86, nothing
        written). Still failing at the end: S3 is busy or failing, not the job's input, so the job stops with
        :data:`EXIT_S3_UNAVAILABLE` (88), which the control plane resubmits without spending the stage's retries;
        except when no connection to S3 could be made at all in that time, which a network without a route to S3
        would do on every attempt: an :class:`InputError` (exit 1), as for a bucket that is not there."""
        retry = self.start_retry
        give_up_at: float | None = None
        failures = 0
        reached = False  # S3 answered one of the tries (throttled, failing): the job's network has a route to it
        while True:
            try:
                return read()
            except Exception as exc:
                kind = transient_failure(exc)
                if kind is None:
                    raise
                failures += 1
                reached = reached or kind != TRANSIENT_UNREACHABLE
                now = retry.clock()
                give_up_at = now + retry.seconds if give_up_at is None else give_up_at
                delay = retry.delay(failures)
                if now + delay > give_up_at:
                    self._give_up(what, exc, failures, reached=reached)
                logger.warning("reading the %s failed (%s); trying again in %.1f s", what, exc, delay)
                self._emit("read_retry", what=what, error=str(exc), failures=failures, delay_seconds=delay)
                self._wait_before_retry(delay)

    def _wait_before_retry(self, seconds: float) -> None:
        """Wait `seconds` to try a read again, looking for a Spot notice meanwhile if the watcher's pollers do not run
        yet; a SIGTERM or notice stops the job as before its first unit (:meth:`_stop_before_work`), or, if it has
        done work it has not saved (a read after a step), as a stop whose checkpoint could not be written."""
        retry = self.start_retry
        end = retry.clock() + seconds
        next_look = retry.clock()
        while not self._stops_before_work(self.watcher.stop_signal) and (left := end - retry.clock()) > 0:
            if retry.clock() >= next_look:
                self.watcher.look_for_notice()
                next_look = retry.clock() + self.watcher.poll_seconds
                continue
            retry.sleep(min(left, STOP_CHECK_SECONDS))
        stop = self.watcher.stop_signal
        if self._unsaved and stop is not None and self._stops_before_work(stop):
            self._exit(stop, EXIT_STOPPED_WITHOUT_CHECKPOINT)
        self._stop_before_work()

    def _give_up(self, what: str, exc: Exception, failures: int, *, reached: bool) -> NoReturn:
        seconds = self.start_retry.seconds
        if not reached:
            raise InputError(
                f"reading the {what}: S3 could not be reached in {failures} tries over {seconds:g} s ({exc}): "
                "check the job's network route to S3"
            ) from None
        detail = f"reading the {what} failed {failures} times over {seconds:g} s: {exc}"
        logger.error("%s; stopping for a resubmission", detail)
        self._exit(StopSignal(REASON_S3_UNAVAILABLE, detail, time.time()), EXIT_S3_UNAVAILABLE)

    def close(self) -> None:
        self.watcher.close()

    def __enter__(self) -> CheckpointedJob:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- the work loop ------------------------------------------------------------------------------------------
    @property
    def work_seconds(self) -> float:
        """Work done on this part so far, across all attempts (checkpoint time excluded)."""
        return self._work_before + self._work_here + (time.monotonic() - self._mark)

    @property
    def stop_signal(self) -> StopSignal | None:
        return self.watcher.stop_signal

    def step(self, snapshot: Snapshot, progress: float, meta: Mapping[str, Any] | None = None) -> None:
        """Call after each unit of work with a function that serialises the state *after* that unit."""
        self._unsaved = True
        stop = self.watcher.stop_signal
        if stop is not None:
            self._stop(stop, snapshot, progress, meta)
        if (request := self.watcher.save_request) is not None:
            self._save_for(request, snapshot, progress, meta)
        if self.store is not None and time.monotonic() >= self._next_due:
            try:
                self._save(snapshot, progress, meta, "periodic")
            except Exception as exc:  # a failed periodic checkpoint costs work only on a hard kill: keep going
                logger.warning("periodic checkpoint failed: %s", exc)
                self._emit("checkpoint_failed", reason="periodic", error=str(exc))
                self._next_due = time.monotonic() + self.interval.first
        # A notice that arrived during the periodic save is honoured now rather than one unit later.
        stop = self.watcher.stop_signal
        if stop is not None:
            self._stop(stop, snapshot, progress, meta)

    def finish(self, meta: Mapping[str, Any] | None = None) -> None:
        """The part's outputs are written: remove checkpoints no longer needed.

        A single-part stage (part ``main``) is done, so its checkpoints go. Any other part keeps one small final
        checkpoint so that, if the stage is resubmitted, this part is not redone; the control plane removes the rest
        with :meth:`CheckpointStore.cleanup` once the whole stage succeeded.
        """
        self._account()
        if self.store is not None:
            if self.store.parts_total == 1 and self.store.part == DEFAULT_PART:
                self._cleanup()
            else:
                self._final_meta = dict(meta or {})
                try:
                    self._save(lambda: b"", 1.0, self._final_meta, "finished", final=True)
                except Exception as exc:
                    # The outputs are written: failing now would turn finished work into an application error
                    # (spending the stage's retries). Without this checkpoint, a resubmitted stage redoes the part.
                    logger.warning("final checkpoint failed: %s", exc)
                    self._emit("checkpoint_failed", reason="finished", error=str(exc))
        self._emit("finished", work_seconds=self.work_seconds)

    def wait_until(self, done: Callable[[], bool], what: str) -> None:
        """After :meth:`finish` (or on resuming this part's final checkpoint): return once ``done()`` is true.

        ``done`` is called every poll interval (``SPOT_CHECKPOINT_POLL_SECONDS``). The watcher stays in force: a Spot
        notice, a checkpoint request or SIGTERM while waiting ends the job as any stop does (:class:`Stopped`, exit
        :data:`EXIT_CHECKPOINTED`); the part's final checkpoint records the request, so the next attempt skips the
        part's work and waits again. No time limit here: the caller's job timeout bounds the wait.
        """
        if self.store is not None and self._final_meta is None:
            raise RuntimeError("wait_until() is for a part whose work is done: call finish() first")
        self._account()
        self._emit("waiting", what=what)
        while not self._done_yet(done):
            stop = self.watcher.stop_signal
            if stop is None:
                self._sleep_unless_stopped(self.watcher.poll_seconds)
                self._mark = time.monotonic()  # waiting is not work: work_seconds stay the part's own
                stop = self.watcher.stop_signal
            if stop is not None:
                self._stop(stop, lambda: b"", 1.0, self._final_meta, final=True)

    # -- internals ----------------------------------------------------------------------------------------------
    def _sleep_unless_stopped(self, seconds: float) -> None:
        """Sleep `seconds`, less once a reason to stop is recorded. A SIGTERM's handler only records it and time.sleep
        goes on after it: a whole poll (up to a minute) could outlast Batch's stop timeout (30 s by default), whose
        SIGKILL ends the job as an application error."""
        deadline = time.monotonic() + seconds
        while self.watcher.stop_signal is None and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, STOP_CHECK_SECONDS))

    def _done_yet(self, done: Callable[[], bool]) -> bool:
        """`done()`, with a failure to tell (S3 throttled past botocore's retries, say) taken as "not yet": the wait
        may last hours, and one failed look must not fail the job as an application error."""
        try:
            return done()
        except Exception as exc:
            logger.warning("could not tell whether the wait is over: %s", exc)
            self._emit("wait_check_failed", error=str(exc))
            return False

    def _account(self) -> None:
        now = time.monotonic()
        self._work_here += now - self._mark
        self._mark = now

    def _save_for(
        self, request: CheckpointRequest, snapshot: Snapshot, progress: float, meta: Mapping[str, Any] | None
    ) -> None:
        """A request to checkpoint and go on working (the instance at risk, not yet going): one save, recording the
        request, so that neither this job nor one resumed from it saves for it again. A save that fails is not tried
        again for it: the periodic ones go on, and a stop still saves."""
        if self.store is not None:
            try:
                self._save(snapshot, progress, meta, REASON_CHECKPOINT_REQUEST, request_id=request.request_id)
            except Exception as exc:
                logger.warning("checkpoint on request failed: %s", exc)
                self._emit("checkpoint_failed", reason=REASON_CHECKPOINT_REQUEST, error=str(exc))
        self.watcher.save_honoured(request.request_id)

    def _save(
        self,
        snapshot: Snapshot,
        progress: float,
        meta: Mapping[str, Any] | None,
        reason: str,
        *,
        final: bool = False,
        request_id: str | None = None,
    ) -> int:
        assert self.store is not None
        self._account()
        work_seconds = self._work_before + self._work_here
        started = time.monotonic()
        stop = self.watcher.stop_signal
        if request_id is None:
            request_id = stop.request_id if stop is not None and stop.request_id else self._honoured_request_id
        seq = self.store.save(
            snapshot(), progress, meta=meta, work_seconds=work_seconds, request_id=request_id, final=final
        )
        save_seconds = time.monotonic() - started
        self._honoured_request_id = request_id
        self._unsaved = False
        interval = self.interval.after_save(save_seconds)
        self._emit(
            "checkpoint_saved",
            seq=seq,
            reason=reason,
            progress=progress,
            work_seconds=work_seconds,
            save_seconds=save_seconds,
            next_interval_seconds=interval,
        )
        self._prune(keep=1 if final else None)  # a final checkpoint is all a finished part needs
        # Checkpoint time is not work: restart the work clock after the save.
        self._mark = time.monotonic()
        self._next_due = self._mark + interval
        return seq

    def _prune(self, keep: int | None = None) -> None:
        # Pruning is housekeeping after a committed save: its failure must not turn the save into a failure (on a
        # stop that would report work lost, exit 87, for a checkpoint that is there). The next save prunes again.
        assert self.store is not None
        try:
            self.store.prune(keep)
        except Exception as exc:
            logger.warning("pruning old checkpoints failed (the checkpoint itself is saved): %s", exc)
            self._emit("prune_failed", error=str(exc))

    def _cleanup(self) -> None:
        # The outputs are written: deleting the checkpoints is housekeeping, which the control plane repeats after
        # the stage succeeds and a bucket lifecycle rule backs up. Failing the finished job for it (exit 1, an
        # application error) would redo or fail work that is done.
        assert self.store is not None
        try:
            self.store.cleanup()
        except Exception as exc:
            logger.warning("removing the finished stage's checkpoints failed (the outputs are written): %s", exc)
            self._emit("cleanup_failed", error=str(exc))

    def _stop(
        self,
        stop: StopSignal,
        snapshot: Snapshot,
        progress: float,
        meta: Mapping[str, Any] | None,
        *,
        final: bool = False,
    ) -> None:
        exit_code = EXIT_CHECKPOINTED
        request_recorded = stop.request_id is None or stop.request_id == self._honoured_request_id
        if self.store is None:
            exit_code = EXIT_STOPPED_WITHOUT_CHECKPOINT
        elif self._unsaved or not request_recorded:
            for attempt in (1, 2):
                try:
                    self._save(snapshot, progress, meta, stop.reason, final=final)
                    break
                except Exception as exc:
                    logger.error("checkpoint on %s failed (attempt %d): %s", stop.reason, attempt, exc)
                    self._emit("checkpoint_failed", reason=stop.reason, error=str(exc))
            else:
                exit_code = EXIT_STOPPED_WITHOUT_CHECKPOINT
        self._exit(stop, exit_code)

    def _stop_before_work(self) -> None:
        """In start(), before the job's first unit of work: stop at once on a SIGTERM recorded so far, or a Spot notice
        the watcher's first look found. The job has done no work, so there is nothing to checkpoint: the part's latest
        checkpoint is as good as any, and reading the checkpoint or the job's input only spends what is left of
        Batch's stop timeout (30 s by default) or of the notice's two minutes, and keeps the control plane from
        placing the next attempt. A checkpoint request stops the job at its first step instead, whose checkpoint
        records the request's id (a job of an unknown attempt would otherwise stop for it again and again)."""
        stop = self.watcher.stop_signal
        if self._stops_before_work(stop):
            assert stop is not None
            self._exit(stop, EXIT_CHECKPOINTED if self.store is not None else EXIT_STOPPED_WITHOUT_CHECKPOINT)

    def _stops_before_work(self, stop: StopSignal | None) -> bool:
        # A request that claimed the stop first leaves a SIGTERM after it unrecorded as the reason, but not unsent: the
        # job is being ended (a requeue asks, then terminates it), and Batch's SIGKILL follows its stop timeout.
        return stop is not None and (stop.request_id is None or self.watcher.signals_received > 0)

    def _exit(self, stop: StopSignal, exit_code: int) -> NoReturn:
        self._account()
        self._emit(
            "stopping",
            reason=stop.reason,
            detail=stop.detail,
            exit_code=exit_code,
            noticed_at=stop.noticed_at,
            work_seconds=self.work_seconds,
            signals_received=self.watcher.signals_received,
        )
        self.close()
        raise Stopped(exit_code, stop)

    def _on_signal(self, stop: StopSignal) -> None:
        # Called from a watcher thread or a signal handler: log only, the work loop does the checkpoint.
        self._emit("notice", reason=stop.reason, detail=stop.detail)

    def _emit(self, event: str, **fields: Any) -> None:
        part = self.store.part if self.store is not None else "main"
        self.events(event, {"part": part, **fields})
