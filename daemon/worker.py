"""The worker: takes queued jobs in batches, stylizes them, writes outputs, classifies failures."""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Protocol

import structlog
from PIL import Image

from daemon import events, rules
from daemon.config import Config
from daemon.journal import Job, Journal, JournalError, backoff_seconds, streak_delay
from daemon.outputs import write_atomic
from daemon.progress import BatchProgress, group_weights
from daemon.snapshots import SnapshotStore
from engine import errors as engine_errors
from engine import images
from engine.params import Progress, Snapshot, StyleParams, StyleSpec

if TYPE_CHECKING:
    # The real engine (and torch) is imported by the process that builds it, not by the daemon's
    # modules: `stylewatch status` and the signal handlers must not wait for torch.
    from engine.stylizer import Stylized

log = structlog.get_logger()

PROGRESS_LOG_SECONDS = 10.0  # one progress line per batch this often (and at each group's end)


class Engine(Protocol):
    """What the daemon needs of the engine; engine.Stylizer is the real one."""

    def prepare_style(self, style: StyleSpec, params: StyleParams) -> None: ...

    def stylize_batch(
        self,
        contents: Sequence[Image.Image],
        style: StyleSpec,
        params: StyleParams,
        *,
        progress: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_result: Callable[[int, Stylized], None] | None = None,
        snapshot: Callable[[Snapshot], None] | None = None,
        snapshot_every: float = 10.0,
        resume: Mapping[int, Snapshot] | None = None,
    ) -> list[Stylized]: ...

    def close(self) -> None: ...

    def shrink_memory_budget(self) -> bool: ...


class Outcome(enum.Enum):
    """What a failure means for its job (daemon/journal.py's mark_failed)."""

    PERMANENT = "permanent"  # the same inputs fail the same way: failed at once
    PASSING = "passing"  # trouble that can pass (I/O, a share away): retried for hours
    UNKNOWN = "unknown"  # an error of unknown kind: retried up to retry.max_attempts


# Engine failures of a whole batch: (type, kind recorded in the journal, outcome).
_BATCH_FAILURES: tuple[tuple[type[Exception], str, Outcome], ...] = (
    # e.g. a photo too thin for the network
    (engine_errors.BadImageError, "bad_image", Outcome.PERMANENT),
    # NaN: the same inputs give it again
    (engine_errors.NumericalError, "numerical", Outcome.PERMANENT),
    # the painting may be fixed, or its share come back
    (engine_errors.StyleError, "style", Outcome.PASSING),
)


def _classify(exc: Exception) -> tuple[str, Outcome]:
    if isinstance(exc, JournalError):
        # A photo's write reached the journal from inside the batch (each photo is marked done
        # as soon as it is written) and the journal failed: its disk full, its lock held.
        return "journal", Outcome.PASSING
    for kind_type, kind, outcome in _BATCH_FAILURES:
        if isinstance(exc, kind_type):
            return kind, outcome
    return "internal", Outcome.UNKNOWN


def settings_hash(output: rules.PlannedOutput) -> str:
    """Identity of everything that shapes an output: a change makes new jobs, not stale ones."""
    key = repr((output.params, output.style.images, output.format, output.quality))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def still_planned(config: Config, job: Job) -> rules.PlannedOutput | None:
    """The output that `config` plans for `job`'s photo in its style and settings, or None.

    The rule's position does not matter: a rule moved in the list, or one inserted above it,
    plans the same output, and the queued job stands.
    """
    decision = rules.decide(config, PurePosixPath(job.source))
    if not isinstance(decision, rules.Plan):
        return None
    for output in decision.outputs:
        if output.style_name == job.style and settings_hash(output) == job.settings_hash:
            return output
    return None


@dataclass
class _Item:
    job: Job
    planned: rules.PlannedOutput
    decoded: images.Decoded


class Worker:
    """Owns the engine; one thread runs `run()` until `stop` is set."""

    def __init__(
        self,
        journal: Journal,
        engine: Engine,
        config: Callable[[], Config],
        *,
        wall: Callable[[], float] = time.time,
        source_missing: Callable[[str], None] | None = None,
        bus: events.EventBus | None = None,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self._journal = journal
        self._engine = engine
        self._config = config
        self._wall = wall
        # Told of a job cancelled because its source was not there: the file may come back
        # unchanged (an input folder on a share that was away), and must then be taken in again.
        self._source_missing = source_missing
        self._bus = bus or events.EventBus()
        self._abort = threading.Event()
        # Running jobs' snapshots: a stop or a crash resumes them from there (None: not kept).
        self._snapshots = snapshots
        self.current: tuple[str, ...] = ()  # the sources of the running batch
        self._batch_limit: int | None = None  # lowered after running out of memory
        self.heartbeat = time.monotonic()  # last sign of life, for systemd's watchdog
        self.busy = False

    def abort(self) -> None:
        """Stop the running batch at its next step; its jobs go back to the queue."""
        self._abort.set()

    def run(self, stop: threading.Event, wake: threading.Event) -> None:
        if self._snapshots is not None:
            # Jobs that ended while the service was away (or without the worker) keep none.
            live = {j.id for j in self._journal.jobs() if j.state.value in ("queued", "running")}
            self._snapshots.prune(live)
        while not stop.is_set():
            self.heartbeat = time.monotonic()
            if not self.run_once():
                due = self._journal.next_due()
                wait = 1.0 if due is None else min(1.0, max(0.05, due - self._wall()))
                wake.wait(wait)
                wake.clear()

    def run_once(self) -> bool:
        """Take and process one batch; False when nothing was due."""
        config = self._config()
        limit = self._batch_limit or config.engine.batch_size
        jobs = self._journal.take(limit, self._wall())
        if not jobs:
            return False
        self.busy = True
        self.current = tuple(job.source for job in jobs)
        try:
            self._process(config, jobs)
        finally:
            self.busy = False
            self.current = ()
        return True

    def _process(self, config: Config, jobs: list[Job]) -> None:
        items: list[_Item] = []
        for job in jobs:
            item = self._prepare(config, job)
            if item is not None:
                items.append(item)
        items = [item for item in items if not self._reuse(config, item.job, item.planned)]
        if not items:
            return
        planned = items[0].planned
        started = time.perf_counter()
        sizes = [i.decoded.image.size for i in items]
        reporter = BatchProgress(
            group_weights(sizes, planned.params.size),
            interval=PROGRESS_LOG_SECONDS,
            schedule=planned.params.schedule(),
        )
        ids = tuple(i.job.id for i in items)
        for item in items:
            self._bus.emit(
                events.JobStarted(
                    job=item.job.id,
                    source=item.job.source,
                    style=item.job.style,
                    # A budgeted run plans its steps as it goes: progress events carry the plan.
                    steps=planned.params.step_count,
                    scales=planned.params.scales,
                )
            )

        def progress(p: Progress) -> None:
            self.heartbeat = time.monotonic()
            self._bus.emit(
                events.JobProgress(
                    jobs=ids,
                    scale=p.scale,
                    scales=p.scales,
                    step=p.step,
                    steps=p.steps,
                    seconds=p.seconds,
                )
            )
            report = reporter.update(p)
            if report is not None:
                log.info(
                    "job_progress",
                    sources=[i.job.source for i in items],
                    style=planned.style_name,
                    step=p.step,
                    steps=p.steps,
                    scale=p.scale,
                    size=p.size,
                    loss=round(p.loss, 6),
                    seconds=report.seconds,  # since the batch started
                    percent=report.percent,  # of the whole batch
                    eta_seconds=report.eta_seconds,
                )

        written: set[int] = set()

        def on_result(index: int, result: Stylized) -> None:
            # Each photo is written as soon as it is done, not when the whole batch is. One whose
            # write raised (the journal) is left to the batch's failure handling below.
            self._write(config, items[index], result, time.perf_counter() - started)
            written.add(index)

        store = self._snapshots
        every = config.engine.snapshot_seconds

        def snapshot(taken: Snapshot) -> None:
            assert store is not None
            try:
                store.save(items[taken.index].job, taken)
            except OSError as exc:  # a full state disk: the job goes on, only less resumable
                log.warning("snapshot_failed", source=items[taken.index].job.source, error=str(exc))

        resume = self._resume(items)
        try:
            results = self._engine.stylize_batch(
                [i.decoded.image for i in items],
                planned.style,
                planned.params,
                progress=progress,
                should_stop=self._abort.is_set,
                on_result=on_result,
                snapshot=snapshot if store is not None and every > 0 else None,
                snapshot_every=every,
                resume=resume or None,
            )
        except engine_errors.Cancelled:
            items = [item for index, item in enumerate(items) if index not in written]
            for item in items:
                self._journal.release(item.job.id)
            log.info("batch_interrupted", sources=[i.job.source for i in items])
            self._bus.emit(events.JobsReleased(tuple(i.job.id for i in items), "interrupted"))
            return
        except engine_errors.OutOfMemoryError as exc:
            left = [item for index, item in enumerate(items) if index not in written]
            if left:
                self._out_of_memory(left, exc)
            return
        except Exception as exc:  # the per-batch boundary: record, keep the daemon running
            items = [item for index, item in enumerate(items) if index not in written]
            kind, outcome = _classify(exc)
            if kind == "internal":
                log.exception("batch_failed", sources=[i.job.source for i in items])
            for item in items:
                self._fail(item.job, exc, kind, outcome)
            return
        self._batch_limit = None
        seconds = time.perf_counter() - started
        for index, (item, result) in enumerate(zip(items, results, strict=True)):
            if index not in written:  # an engine that hands results over only at the end
                self._write(config, item, result, seconds)

    def _resume(self, items: list[_Item]) -> dict[int, Snapshot]:
        """Snapshots of this batch's jobs, by their position in it."""
        if self._snapshots is None:
            return {}
        found: dict[int, Snapshot] = {}
        for index, item in enumerate(items):
            saved = self._snapshots.load(item.job, index)
            if saved is not None:
                found[index] = saved
                log.info("job_resumed", source=item.job.source, step=saved.step, scale=saved.scale)
        return found

    def _forget_snapshot(self, job: Job) -> None:
        if self._snapshots is not None:
            self._snapshots.delete(job.id)

    def _prepare(self, config: Config, job: Job) -> _Item | None:
        """Check the job still stands and read its photo; None when it ended here."""
        source = config.input / job.source
        planned = self._planned(config, job)
        if planned is None:
            # The reload's own pass (service.py) keeps the queue in step with the config; this
            # is a race with a reload. The service takes the file in again under the new rules.
            self._journal.cancel(job.id, "the config no longer plans this output")
            self._forget_snapshot(job)
            log.info("job_cancelled", source=job.source, style=job.style, reason="config_changed")
            if self._source_missing is not None:
                self._source_missing(job.source)
            self._bus.emit(events.JobCancelled(job.source, "config_changed", job=job.id))
            return None
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            self._journal.cancel(job.id, "source removed before it was processed")
            self._forget_snapshot(job)
            log.info("job_cancelled", source=job.source, style=job.style, reason="source_removed")
            self._bus.emit(events.JobCancelled(job.source, "source_removed", job=job.id))
            if self._source_missing is not None:
                self._source_missing(job.source)
            return None
        except OSError as exc:
            self._fail(job, exc, "io", Outcome.PASSING)
            return None
        if hashlib.sha256(data).hexdigest() != job.fingerprint:
            # New content under the same name: the watcher queues it as its own job.
            self._journal.cancel(job.id, "source changed before it was processed")
            self._forget_snapshot(job)
            log.info("job_cancelled", source=job.source, style=job.style, reason="source_changed")
            self._bus.emit(events.JobCancelled(job.source, "source_changed", job=job.id))
            return None
        try:
            decoded = images.decode(data)
        except engine_errors.BadImageError as exc:
            # Unreadable (permissions) can be mended by the admin; damaged bytes cannot.
            passing = exc.reason == "unreadable"
            self._fail(
                job,
                exc,
                f"bad_image:{exc.reason}",
                Outcome.PASSING if passing else Outcome.PERMANENT,
            )
            return None
        return _Item(job, planned, decoded)

    def _planned(self, config: Config, job: Job) -> rules.PlannedOutput | None:
        return still_planned(config, job)

    def _write(self, config: Config, item: _Item, result: Stylized, seconds: float) -> None:
        job, planned = item.job, item.planned
        data = images.encode(
            result.image,
            planned.format,
            quality=planned.quality,
            metadata=item.decoded.metadata,
            style=planned.style_name,
            credit=planned.credit,
            policy=planned.metadata,
        )
        claimed = self._deliver(config, job, data)
        if claimed is None:
            return
        width, height = result.image.size
        self._done(
            job,
            claimed,
            seconds,
            size=f"{width}x{height}",
            steps=result.steps,
            seconds=round(seconds, 2),
            device=result.device,
            budget_seconds=result.budget_seconds,
            optimise_seconds=round(result.optimise_seconds, 2),
            schedule=[list(scale) for scale in result.schedule],
            upsampled_from=result.upsampled_from,
        )

    def _done(self, job: Job, claimed: str, took: float, **summary: object) -> None:
        """The output is in place: mark the job done, log its one summary line (`job_done`, with
        `summary`'s fields) and tell the subscribers (the booth page, hooks, metrics)."""
        self._journal.mark_done(job.id, claimed)
        self._forget_snapshot(job)
        log.info(
            "job_done",
            source=job.source,
            output=claimed,
            rule=job.rule,
            style=job.style,
            result="done",
            **summary,
        )
        self._bus.emit(
            events.JobDone(
                job=job.id,
                source=job.source,
                output=claimed,
                rule=job.rule,
                style=job.style,
                seconds=took,
            )
        )

    def _reuse(self, config: Config, job: Job, planned: rules.PlannedOutput) -> bool:
        """Deliver the artwork a done job already made of the same content in the same style and
        settings (a folder renamed after its photos were done) as a copy; False to compute it.

        A copy, not a hard link: each mirrored output stays a file of its own that people can
        edit or delete without touching the other.
        """
        done = self._journal.reusable(job.fingerprint, job.style, job.settings_hash)
        if done is None or not _same_metadata(config, done, planned):
            return False
        previous = done.output
        try:
            data = _read_regular(config.output / previous)
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
            self._publish(config.output, config.output / claimed, data, claimed, job)
        except OutputBlockedError as exc:
            self._fail(job, exc, "output_blocked", Outcome.PASSING)
            return None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                # The source's name plus what the template adds is over the filesystem's limit
                # (255 bytes on most): every retry would fail the same way.
                self._fail(job, exc, "output_name_too_long", Outcome.PERMANENT)
            else:
                self._fail(job, exc, "io", Outcome.PASSING)
            return None
        return claimed

    def _publish(self, root: Path, target: Path, data: bytes, claimed: str, job: Job) -> None:
        """write_atomic, telling an output written before a crash (done) from a path that is
        blocked by something else (a file where a folder should be): the latter raises
        OutputBlockedError and is retried until the path is free."""
        try:
            write_atomic(target, data, overwrite=False)
        except (FileExistsError, NotADirectoryError) as exc:
            blocker = _blocker(root, target)
            if blocker is not None:
                raise OutputBlockedError(
                    f"cannot write {target}: {blocker} is in the way (a file where a folder "
                    "should be); move it away and the photo is written at the next try"
                ) from exc
            if isinstance(exc, NotADirectoryError):
                raise
            # Written before a crash that came before mark_done: the same content's output.
            if self._journal.output_owner(claimed) != (job.source, job.fingerprint):
                raise

    def _out_of_memory(self, items: list[_Item], exc: Exception) -> None:
        if len(items) > 1:
            # Try again in smaller batches: put the jobs back without counting the attempt.
            self._batch_limit = max(1, len(items) // 2)
            for item in items:
                self._journal.release(item.job.id)
            log.warning("out_of_memory", batch=len(items), next_batch=self._batch_limit)
            self._bus.emit(events.JobsReleased(tuple(i.job.id for i in items), "out_of_memory"))
            return
        if self._engine.shrink_memory_budget():
            # One photo did not fit: try it again at once in smaller tiles.
            self._journal.release(items[0].job.id)
            log.warning("out_of_memory", batch=1, source=items[0].job.source, retry="smaller tiles")
            self._bus.emit(events.JobsReleased((items[0].job.id,), "out_of_memory"))
            return
        for item in items:
            self._fail(item.job, exc, "out_of_memory", Outcome.UNKNOWN)

    def _fail(self, job: Job, exc: BaseException, kind: str, outcome: Outcome) -> None:
        retry = self._config().retry
        now = self._wall()
        if outcome is Outcome.PERMANENT:
            retry_at = None
        elif outcome is Outcome.PASSING:
            streak = now - (job.first_failure if job.first_failure is not None else now)
            retry_at = now + streak_delay(streak, first=retry.first_delay, cap=retry.max_delay)
        else:
            retry_at = now + backoff_seconds(
                max(1, job.attempts), base=retry.first_delay, cap=retry.max_delay
            )
        after = self._journal.mark_failed(
            job.id,
            str(exc),
            kind,
            permanent=outcome is Outcome.PERMANENT,
            retry_at=retry_at,
            transient=outcome is Outcome.PASSING,
        )
        failed = after.state.value == "failed"
        if failed:
            self._forget_snapshot(job)
        log.warning(
            "job_failed" if failed else "job_retry",
            source=job.source,
            style=job.style,
            kind=kind,
            error=str(exc),
            attempts=after.attempts,
            # Only a job that will be tried again has a next try.
            retry_in=None if failed or retry_at is None else round(retry_at - now, 1),
            failing_for=(
                None if after.first_failure is None else round(now - after.first_failure, 1)
            ),
            result=after.state.value,
        )
        if failed:
            self._bus.emit(
                events.JobFailed(
                    job=job.id,
                    source=job.source,
                    output=job.output,
                    rule=job.rule,
                    style=job.style,
                    kind=kind,
                    error=str(exc),
                )
            )
        else:
            self._bus.emit(
                events.JobRetry(
                    job=job.id, source=job.source, style=job.style, kind=kind, error=str(exc)
                )
            )


def _same_metadata(config: Config, done: Job, planned: rules.PlannedOutput) -> bool:
    """Whether the earlier artwork carries the metadata this output would: the metadata policy
    and the credit are not part of the settings' identity (changing them must not requeue
    anything), so an artwork made under another policy is made anew rather than copied."""
    before = still_planned(config, done)
    return before is not None and (before.metadata, before.credit) == (
        planned.metadata,
        planned.credit,
    )


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file, never through a symlink planted at its name."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
        return f.read()


class OutputBlockedError(OSError):
    """Something that is not ours stands where an output or its folder must go."""


def _blocker(root: Path, target: Path) -> Path | None:
    """The first path from the output folder down to `target`'s folder that exists and is not
    a folder, or `target` itself when it is neither a file nor absent (a folder, a socket)."""
    folders = [target.parent, *target.parent.parents]
    for folder in reversed(folders):
        if not folder.is_relative_to(root.parent):
            continue
        try:
            mode = folder.lstat().st_mode
        except FileNotFoundError:
            return None  # nothing in the way from here down: the folders can be made
        except OSError:
            continue
        if not stat.S_ISDIR(mode):
            return folder
    try:
        mode = target.lstat().st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISLNK(mode) else target
