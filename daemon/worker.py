"""A worker, as the service sees it: takes batches of jobs from the journal for one executor,
and turns what the executor reports into outputs, journal entries, log lines and events.

The executor (daemon/executor.py) holds the engine, in a worker process of the pool
(daemon/pool.py) or, in tests, in this process; it reads the photos and returns encoded
artworks. Everything that must happen once happens here, in the process that owns the journal:
claiming an output's name, writing it atomically, marking the job done, classifying a failure.
The worker runs work orders as they stand in the journal and never reads the rules.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol, cast

import structlog

from daemon import events
from daemon.config import Config, RetrySettings
from daemon.executor import Batch, Engine, Executor, Outcome, Reporter, Summary, Task
from daemon.journal import Job, Journal, JournalError, backoff_seconds, streak_delay
from daemon.outputs import OutputBlockedError, publish, read_regular
from daemon.progress import Report
from daemon.snapshots import SnapshotStore
from engine.params import Progress

__all__ = ["Engine", "LocalLink", "Outcome", "Run", "Worker", "WorkerDiedError"]

log = structlog.get_logger()


class WorkerDiedError(Exception):
    """The executor's process ended (or was killed) in the middle of a batch."""


class Link(Protocol):
    """How a worker reaches its executor: in this process, or in a worker process."""

    def run(self, batch: Batch, reporter: Reporter, should_stop: Callable[[], bool]) -> None:
        """Run the batch; every job ends in one report. Raises WorkerDiedError when the executor
        died before reporting them all."""

    def alive(self) -> bool:
        """Whether the executor is there to take a batch (a worker process can die idle)."""

    def close(self) -> None: ...


class LocalLink:
    """The executor in this process (tests, and tools that embed the daemon)."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    def run(self, batch: Batch, reporter: Reporter, should_stop: Callable[[], bool]) -> None:
        self.executor.run(batch, reporter, should_stop)

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        self.executor.close()


_CANCEL_REASONS = {
    "source_removed": "source removed before it was processed",
    "source_changed": "source changed before it was processed",
}


class Worker:
    """Takes batches for one executor; one thread runs `run()` until `stop` is set."""

    def __init__(
        self,
        journal: Journal,
        link: Link | Engine,
        config: Callable[[], Config],
        *,
        name: str = "worker-0",
        wall: Callable[[], float] = time.time,
        source_missing: Callable[[str], None] | None = None,
        bus: events.EventBus | None = None,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self.name = name
        self._journal = journal
        # An engine given directly runs in this process (tests); the pool gives a process link.
        self._link: Link = (
            LocalLink(Executor(cast(Engine, link), snapshots))
            if hasattr(link, "stylize_batch")
            else link
        )
        self._config = config
        self._wall = wall
        # Told of a job cancelled because its source was not there: the file may come back
        # unchanged (an input folder on a share that was away), and must then be taken in again.
        self._source_missing = source_missing
        self._bus = bus or events.EventBus()
        self._abort = threading.Event()
        self._snapshots = snapshots  # the parent deletes a job's snapshot when the job ends
        self.current: tuple[str, ...] = ()  # the sources of the running batch
        self._batch_limit: int | None = None  # lowered after running out of memory

    def abort(self) -> None:
        """Stop the running batch at its next step; its jobs go back to the queue."""
        self._abort.set()

    def close(self) -> None:
        self._link.close()

    def run(self, stop: threading.Event, wake: threading.Event) -> None:
        if self._snapshots is not None:
            # Jobs that ended while the service was away (or without the worker) keep none.
            live = {j.id for j in self._journal.jobs() if j.state.value in ("queued", "running")}
            self._snapshots.prune(live)
        while not stop.is_set():
            if not self._link.alive():
                raise WorkerDiedError(f"worker process {self.name} ended while idle")
            if not self.run_once():
                due = self._journal.next_due()
                wait = 1.0 if due is None else min(1.0, max(0.05, due - self._wall()))
                wake.wait(wait)
                wake.clear()

    def run_once(self) -> bool:
        """Take and process one batch; False when nothing was due."""
        config = self._config()
        limit = self._batch_limit or config.engine.batch_size
        jobs = self._journal.take(limit, self._wall(), worker=self.name)
        if not jobs:
            return False
        self.current = tuple(job.source for job in jobs)
        try:
            self._process(config, jobs)
        finally:
            self.current = ()
        return True

    def _process(self, config: Config, jobs: list[Job]) -> None:
        left = [job for job in jobs if not self.reuse(config, job)]
        if not left:
            return
        run = Run(self, config, left)
        batch = Batch(
            # take() gives only jobs with an order (those of an upgraded journal wait for theirs).
            tuple(Task(job.id, job.order) for job in left if job.order is not None),
            config.input,
            config.engine.snapshot_seconds,
        )
        try:
            self._link.run(batch, run, self._abort.is_set)
        except WorkerDiedError as exc:
            run.died(str(exc))
            raise
        finally:
            run.unreported()
        if not run.out_of_memory:
            self._batch_limit = None

    # -- the parent's side of each report ------------------------------------------------------

    def deliver(self, config: Config, job: Job, data: bytes, took: float, summary: Summary) -> None:
        claimed = self._deliver(config, job, data)
        if claimed is None:
            return
        self._done(
            job,
            claimed,
            took,
            size=summary.size,
            steps=summary.steps,
            seconds=summary.seconds,
            device=summary.device,
            budget_seconds=summary.budget_seconds,
            optimise_seconds=summary.optimise_seconds,
            schedule=[list(scale) for scale in summary.schedule],
            upsampled_from=summary.upsampled_from,
        )

    def _done(self, job: Job, claimed: str, took: float, **summary: object) -> None:
        """The output is in place: mark the job done and tell the subscribers (its one log line,
        `job_done` with `summary`'s fields; the booth page, hooks, metrics)."""
        self._journal.mark_done(job.id, claimed)
        self._forget_snapshot(job)
        self._bus.emit(
            events.JobDone(
                job=job.id,
                source=job.source,
                output=claimed,
                rule=job.rule,
                style=job.style,
                seconds=took,
                details=summary,
            )
        )

    def cancel(self, job: Job, reason: str) -> None:
        self._journal.cancel(job.id, _CANCEL_REASONS.get(reason, reason))
        self._forget_snapshot(job)
        self._bus.emit(events.JobCancelled(job.source, reason, job=job.id, style=job.style))
        if reason == "source_removed" and self._source_missing is not None:
            self._source_missing(job.source)

    def reuse(self, config: Config, job: Job) -> bool:
        """Deliver the artwork a done job already made of the same content in the same style and
        settings (a folder renamed after its photos were done) as a copy; False to compute it.

        A copy, not a hard link: each mirrored output stays a file of its own that people can
        edit or delete without touching the other.
        """
        done = self._journal.reusable(job.fingerprint, job.style, job.settings_hash)
        if done is None or done.order is None or job.order is None:
            return False
        # The metadata policy and the credit are outside the settings' identity (changing them
        # must not requeue anything): an artwork made under others is made anew, not copied.
        if (done.order.metadata, done.order.credit) != (job.order.metadata, job.order.credit):
            return False
        previous = done.output
        try:
            data = read_regular(config.output / previous)
        except OSError:
            return False  # moved, deleted or replaced meanwhile: make it anew
        claimed = self._deliver(config, job, data)
        if claimed is not None:
            self._done(job, claimed, 0.0, steps=0, seconds=0.0, reused=previous)
        return True  # done, or failed and recorded

    def _deliver(self, config: Config, job: Job, data: bytes) -> str | None:
        """Claim the job's output name and write `data` there; the name, or None after
        recording the failure."""
        try:
            claimed = self._journal.claim_output(
                job.output,
                job.source,
                job.fingerprint,
                # lexists: a dangling symlink occupies the name too (exists() follows it and
                # says no; link() would then fail and the job pass as done with no output).
                taken=lambda rel: os.path.lexists(config.output / rel),
            )
            publish(
                config.output,
                claimed,
                data,
                # Written before a crash that came before mark_done: the same content's output.
                ours=lambda: self._journal.output_owner(claimed) == (job.source, job.fingerprint),
            )
        except OutputBlockedError as exc:
            self.fail(job, str(exc), "output_blocked", Outcome.PASSING)
            return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                # The source's name plus what the template adds is over the filesystem's limit
                # (255 bytes on most): every retry would fail the same way.
                self.fail(job, str(exc), "output_name_too_long", Outcome.PERMANENT)
            else:
                self.fail(job, str(exc), "io", Outcome.PASSING)
            return None
        return claimed

    def release(self, jobs: list[Job], reason: str, next_limit: int | None) -> None:
        for job in jobs:
            self._journal.release(job.id)
        if reason == "out_of_memory":
            self._batch_limit = next_limit
            if len(jobs) > 1:
                log.warning("out_of_memory", batch=len(jobs), next_batch=next_limit)
            else:
                log.warning("out_of_memory", batch=1, source=jobs[0].source, retry="smaller tiles")
        elif reason == "interrupted":
            log.info("batch_interrupted", sources=[j.source for j in jobs])
        self._bus.emit(events.JobsReleased(tuple(j.id for j in jobs), reason))

    def fail(self, job: Job, error: str, kind: str, outcome: Outcome) -> None:
        now = self._wall()
        retry_at = next_try(job, outcome, self._config().retry, now)
        after = self._journal.mark_failed(
            job.id,
            error,
            kind,
            permanent=outcome is Outcome.PERMANENT,
            retry_at=retry_at,
            transient=outcome is Outcome.PASSING,
        )
        if after.state.value == "failed":
            self._forget_snapshot(job)
        self._bus.emit(failure_event(job, after, kind, error, retry_at=retry_at, now=now))

    def _forget_snapshot(self, job: Job) -> None:
        if self._snapshots is not None:
            self._snapshots.delete(job.id)

    def emit(self, event: events.Event) -> None:
        self._bus.emit(event)


class Run:
    """One batch's reports, applied by the worker: the Reporter the executor talks to (in a
    worker process here, or on another host: daemon/coordinator.py relays its reports to this).

    A report that the journal refuses (its disk full, its lock held) fails that one job as
    passing trouble; if even that cannot be recorded, the job stays running and the pool puts it
    back once the journal works again (pool.py's _requeue)."""

    def __init__(self, worker: Worker, config: Config, jobs: list[Job]) -> None:
        self._worker = worker
        self._config = config
        self._jobs = {job.id: job for job in jobs}
        self._open = set(self._jobs)  # jobs with no report yet
        self._started = time.perf_counter()
        self.out_of_memory = False

    def _guard(self, job: Job, apply: Callable[[Job], None]) -> None:
        self._open.discard(job.id)
        try:
            apply(job)
        except JournalError as exc:
            # The photo's report reached a journal that failed: passing trouble for this job.
            try:
                self._worker.fail(job, str(exc), "journal", Outcome.PASSING)
            except JournalError:
                log.warning("journal_unwritable", source=job.source, error=str(exc))

    def started(self, jobs: tuple[int, ...], steps: int, scales: int) -> None:
        log.info(
            "batch_started",
            worker=self._worker.name,
            sources=[self._jobs[j].source for j in jobs],
            style=self._jobs[jobs[0]].style,
            steps=steps,
        )
        for job_id in jobs:
            job = self._jobs[job_id]
            self._worker.emit(
                events.JobStarted(
                    job=job.id, source=job.source, style=job.style, steps=steps, scales=scales
                )
            )

    def progress(self, jobs: tuple[int, ...], progress: Progress, report: Report | None) -> None:
        self._worker.emit(
            events.JobProgress(
                jobs=jobs,
                scale=progress.scale,
                scales=progress.scales,
                step=progress.step,
                steps=progress.steps,
                seconds=progress.seconds,
            )
        )
        if report is not None:
            log.info(
                "job_progress",
                sources=[self._jobs[j].source for j in jobs],
                style=self._jobs[jobs[0]].style,
                step=progress.step,
                steps=progress.steps,
                scale=progress.scale,
                size=progress.size,
                loss=round(progress.loss, 6),
                seconds=report.seconds,  # since the batch started
                percent=report.percent,  # of the whole batch
                eta_seconds=report.eta_seconds,
                worker=self._worker.name,
            )

    def result(self, job: int, data: bytes, summary: Summary) -> None:
        took = time.perf_counter() - self._started
        self._guard(
            self._jobs[job], lambda j: self._worker.deliver(self._config, j, data, took, summary)
        )

    def failed(self, job: int, kind: str, outcome: Outcome, error: str) -> None:
        self._guard(self._jobs[job], lambda j: self._worker.fail(j, error, kind, outcome))

    def cancelled(self, job: int, reason: str) -> None:
        self._guard(self._jobs[job], lambda j: self._worker.cancel(j, reason))

    def released(self, jobs: tuple[int, ...], reason: str, next_limit: int | None) -> None:
        if reason == "out_of_memory":
            self.out_of_memory = True
        for job_id in jobs:
            self._open.discard(job_id)
        self._worker.release([self._jobs[j] for j in jobs], reason, next_limit)

    def died(self, why: str) -> None:
        """The executor's process ended mid-batch: every job without a report failed this
        attempt (it counts: a photo that kills its worker every time ends failed)."""
        for job_id in sorted(self._open):
            self._guard(
                self._jobs[job_id],
                lambda j: self._worker.fail(j, why, "worker_died", Outcome.UNKNOWN),
            )

    def unreported(self) -> None:
        """Jobs the executor said nothing of (a bug): back to the queue, not lost as running."""
        for job_id in sorted(self._open):
            log.error("job_unreported", source=self._jobs[job_id].source)
            self._guard(self._jobs[job_id], lambda j: self._worker.release([j], "unreported", None))


def next_try(job: Job, outcome: Outcome, retry: RetrySettings, now: float) -> float | None:
    """When a failed job is tried again: never (a permanent failure), after a wait that grows
    with the streak of passing trouble, or after a back-off per attempt (an unknown error)."""
    if outcome is Outcome.PERMANENT:
        return None
    if outcome is Outcome.PASSING:
        streak = now - (job.first_failure if job.first_failure is not None else now)
        return now + streak_delay(streak, first=retry.first_delay, cap=retry.max_delay)
    return now + backoff_seconds(max(1, job.attempts), base=retry.first_delay, cap=retry.max_delay)


def failure_event(
    job: Job, after: Job, kind: str, error: str, *, retry_at: float | None, now: float
) -> events.JobFailed | events.JobRetry:
    """What a failure means to the subscribers: the job failed for good, or it waits to be
    tried again (`after` is the job as the journal now has it)."""
    failing_for = None if after.first_failure is None else round(now - after.first_failure, 1)
    if after.state.value == "failed":
        return events.JobFailed(
            job=job.id,
            source=job.source,
            output=job.output,
            rule=job.rule,
            style=job.style,
            kind=kind,
            error=error,
            attempts=after.attempts,
            failing_for=failing_for,
        )
    return events.JobRetry(
        job=job.id,
        source=job.source,
        style=job.style,
        kind=kind,
        error=error,
        attempts=after.attempts,
        retry_in=None if retry_at is None else round(retry_at - now, 1),
        failing_for=failing_for,
    )
