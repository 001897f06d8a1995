"""The worker: takes queued jobs in batches, stylizes them, writes outputs, classifies failures."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Protocol

import structlog
from PIL import Image

from daemon import rules
from daemon.config import Config
from daemon.journal import Job, Journal, backoff_seconds
from daemon.outputs import write_atomic
from daemon.progress import BatchProgress, group_weights
from daemon.snapshots import SnapshotStore
from engine import errors as engine_errors
from engine import images
from engine.params import Progress, Snapshot, StyleParams, StyleSpec
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


# Engine failures of a whole batch: (type, kind recorded in the journal, permanent?).
_BATCH_FAILURES: tuple[tuple[type[Exception], str, bool], ...] = (
    (engine_errors.BadImageError, "bad_image", True),  # e.g. a photo too thin for the network
    (engine_errors.NumericalError, "numerical", True),  # NaN: the same inputs give it again
    (engine_errors.StyleError, "style", False),  # the painting may be fixed or come back
)


def _classify(exc: Exception) -> tuple[str, bool]:
    for kind_type, kind, permanent in _BATCH_FAILURES:
        if isinstance(exc, kind_type):
            return kind, permanent
    return "internal", False  # unknown: retried with backoff, up to max_attempts


def settings_hash(output: rules.PlannedOutput) -> str:
    """Identity of everything that shapes an output: a change makes new jobs, not stale ones."""
    key = repr((output.params, output.style.images, output.format, output.quality))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


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
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self._journal = journal
        self._engine = engine
        self._config = config
        self._wall = wall
        # Told of a job cancelled because its source was not there: the file may come back
        # unchanged (an input folder on a share that was away), and must then be taken in again.
        self._source_missing = source_missing
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

        def progress(p: Progress) -> None:
            self.heartbeat = time.monotonic()
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
            return
        except engine_errors.OutOfMemoryError as exc:
            left = [item for index, item in enumerate(items) if index not in written]
            if left:
                self._out_of_memory(left, exc)
            return
        except Exception as exc:  # the per-batch boundary: record, keep the daemon running
            items = [item for index, item in enumerate(items) if index not in written]
            kind, permanent = _classify(exc)
            if kind == "internal":
                log.exception("batch_failed", sources=[i.job.source for i in items])
            for item in items:
                self._fail(item.job, exc, kind, permanent=permanent)
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
            self._journal.cancel(job.id, "the config no longer plans this output")
            self._forget_snapshot(job)
            log.info("job_cancelled", source=job.source, style=job.style, reason="config_changed")
            return None
        try:
            data = source.read_bytes()
        except FileNotFoundError:
            self._journal.cancel(job.id, "source removed before it was processed")
            self._forget_snapshot(job)
            log.info("job_cancelled", source=job.source, style=job.style, reason="source_removed")
            if self._source_missing is not None:
                self._source_missing(job.source)
            return None
        except OSError as exc:
            self._fail(job, exc, "io", permanent=False)
            return None
        if hashlib.sha256(data).hexdigest() != job.fingerprint:
            # New content under the same name: the watcher queues it as its own job.
            self._journal.cancel(job.id, "source changed before it was processed")
            self._forget_snapshot(job)
            log.info("job_cancelled", source=job.source, style=job.style, reason="source_changed")
            return None
        try:
            decoded = images.decode(data)
        except engine_errors.BadImageError as exc:
            self._fail(job, exc, f"bad_image:{exc.reason}", permanent=True)
            return None
        return _Item(job, planned, decoded)

    def _planned(self, config: Config, job: Job) -> rules.PlannedOutput | None:
        decision = rules.decide(config, PurePosixPath(job.source))
        if not isinstance(decision, rules.Plan) or decision.rule_index != job.rule:
            return None
        for output in decision.outputs:
            if output.style_name == job.style and settings_hash(output) == job.settings_hash:
                return output
        return None

    def _write(self, config: Config, item: _Item, result: Stylized, seconds: float) -> None:
        job, planned = item.job, item.planned
        try:
            claimed = self._journal.claim_output(
                job.output,
                job.source,
                job.fingerprint,
                # lexists: a dangling symlink occupies the name too (exists() follows it and
                # says no; link() would then fail and the job pass as done with no output).
                taken=lambda rel: os.path.lexists(config.output / rel),
            )
            data = images.encode(
                result.image,
                planned.format,
                quality=planned.quality,
                metadata=item.decoded.metadata,
            )
            target = config.output / claimed
            try:
                write_atomic(target, data, overwrite=False)
            except FileExistsError:
                # Written before a crash that came before mark_done: the same content's output.
                if self._journal.output_owner(claimed) != (job.source, job.fingerprint):
                    raise
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                # The source's name plus what the template adds is over the filesystem's limit
                # (255 bytes on most): every retry would fail the same way.
                self._fail(job, exc, "output_name_too_long", permanent=True)
            else:
                self._fail(job, exc, "io", permanent=False)
            return
        self._journal.mark_done(job.id, claimed)
        self._forget_snapshot(job)
        width, height = result.image.size
        log.info(
            "job_done",
            source=job.source,
            output=claimed,
            rule=job.rule,
            style=job.style,
            size=f"{width}x{height}",
            steps=result.steps,
            seconds=round(seconds, 2),
            device=result.device,
            result="done",
            budget_seconds=result.budget_seconds,
            optimise_seconds=round(result.optimise_seconds, 2),
            schedule=[list(scale) for scale in result.schedule],
            upsampled_from=result.upsampled_from,
        )

    def _out_of_memory(self, items: list[_Item], exc: Exception) -> None:
        if len(items) > 1:
            # Try again in smaller batches: put the jobs back without counting the attempt.
            self._batch_limit = max(1, len(items) // 2)
            for item in items:
                self._journal.release(item.job.id)
            log.warning("out_of_memory", batch=len(items), next_batch=self._batch_limit)
            return
        if self._engine.shrink_memory_budget():
            # One photo did not fit: try it again at once in smaller tiles.
            self._journal.release(items[0].job.id)
            log.warning("out_of_memory", batch=1, source=items[0].job.source, retry="smaller tiles")
            return
        for item in items:
            self._fail(item.job, exc, "out_of_memory", permanent=False)

    def _fail(self, job: Job, exc: BaseException, kind: str, *, permanent: bool) -> None:
        retry_at = None if permanent else self._wall() + backoff_seconds(job.attempts)
        after = self._journal.mark_failed(
            job.id, str(exc), kind, permanent=permanent, retry_at=retry_at
        )
        if after.state.value == "failed":
            self._forget_snapshot(job)
        log.warning(
            "job_failed" if after.state.value == "failed" else "job_retry",
            source=job.source,
            style=job.style,
            kind=kind,
            error=str(exc),
            attempts=after.attempts,
            retry_in=None if retry_at is None else round(retry_at - self._wall(), 1),
            result=after.state.value,
        )
