"""The executor: runs a batch of work orders on the engine and reports what became of each photo.

It is the part of a worker that holds the engine, in a worker process (daemon/pool.py) or, in
tests, in the service's own process. It knows neither the journal nor the rules: a task is a job's
id and its work order, and everything ends in a call to the Reporter (an artwork's encoded bytes,
a failure with its kind, a cancellation, jobs handed back). The parent side (daemon/worker.py)
writes outputs and keeps the journal, so that completion happens in one place.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog
from PIL import Image

from daemon.orders import WorkOrder
from daemon.progress import BatchProgress, Report, group_weights
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


def classify(exc: Exception) -> tuple[str, Outcome]:
    for kind_type, kind, outcome in _BATCH_FAILURES:
        if isinstance(exc, kind_type):
            return kind, outcome
    return "internal", Outcome.UNKNOWN


@dataclass(frozen=True)
class Task:
    """One job of a batch: the journal's id and its order (what snapshots are keyed by)."""

    id: int
    order: WorkOrder

    @property
    def source(self) -> str:
        return self.order.source

    @property
    def fingerprint(self) -> str:
        return self.order.fingerprint

    @property
    def settings_hash(self) -> str:
        return self.order.settings_hash


@dataclass(frozen=True)
class Batch:
    """Orders of one style and settings, run together; `input` is the input folder."""

    tasks: tuple[Task, ...]
    input: Path
    snapshot_every: float = 10.0  # seconds between snapshots; 0: none


@dataclass(frozen=True)
class Summary:
    """What the `job_done` line says of an artwork beside its paths."""

    size: str
    steps: int
    seconds: float
    device: str
    budget_seconds: float | None
    optimise_seconds: float
    schedule: tuple[tuple[int, int], ...]
    upsampled_from: int | None


class Reporter(Protocol):
    """Where an executor's results go. Its calls never raise back into the executor: the
    parent side handles its own trouble (a journal that fails) per job."""

    def started(self, jobs: tuple[int, ...], steps: int, scales: int) -> None: ...

    def progress(
        self, jobs: tuple[int, ...], progress: Progress, report: Report | None
    ) -> None: ...

    def result(self, job: int, data: bytes, summary: Summary) -> None: ...

    def failed(self, job: int, kind: str, outcome: Outcome, error: str) -> None: ...

    def cancelled(self, job: int, reason: str) -> None: ...

    def released(self, jobs: tuple[int, ...], reason: str, next_limit: int | None) -> None: ...


@dataclass
class _Item:
    task: Task
    decoded: images.Decoded


class Executor:
    """Owns the engine; runs one batch at a time (`run`)."""

    def __init__(self, engine: Engine, snapshots: SnapshotStore | None = None) -> None:
        self.engine = engine
        # Running jobs' snapshots: a stop or a crash resumes them from there (None: not kept).
        self._snapshots = snapshots

    def run(self, batch: Batch, reporter: Reporter, should_stop: Callable[[], bool]) -> None:
        items = [
            item
            for item in (self._prepare(batch.input, task, reporter) for task in batch.tasks)
            if item is not None
        ]
        if not items:
            return
        order = items[0].task.order
        params, style = order.params, order.style_spec
        started = time.perf_counter()
        ids = tuple(item.task.id for item in items)
        tracker = BatchProgress(
            group_weights([i.decoded.image.size for i in items], params.size),
            interval=PROGRESS_LOG_SECONDS,
            schedule=params.schedule(),
        )
        reporter.started(ids, params.step_count, params.scales)

        def progress(p: Progress) -> None:
            reporter.progress(ids, p, tracker.update(p))

        written: set[int] = set()

        def on_result(index: int, result: Stylized) -> None:
            # Each photo is handed over as soon as it is done, not when the whole batch is.
            self._deliver(items[index], result, time.perf_counter() - started, reporter)
            written.add(index)

        store = self._snapshots

        def snapshot(taken: Snapshot) -> None:
            assert store is not None
            try:
                store.save(items[taken.index].task, taken)
            except OSError as exc:  # a full state disk: the job goes on, only less resumable
                log.warning(
                    "snapshot_failed", source=items[taken.index].task.source, error=str(exc)
                )

        try:
            results = self.engine.stylize_batch(
                [item.decoded.image for item in items],
                style,
                params,
                progress=progress,
                should_stop=should_stop,
                on_result=on_result,
                snapshot=snapshot if store is not None and batch.snapshot_every > 0 else None,
                snapshot_every=batch.snapshot_every or 10.0,
                resume=self._resume(items),
            )
        except engine_errors.Cancelled:
            left = tuple(item.task.id for i, item in enumerate(items) if i not in written)
            reporter.released(left, "interrupted", None)
            return
        except engine_errors.OutOfMemoryError as exc:
            left_items = [item for i, item in enumerate(items) if i not in written]
            if left_items:
                self._out_of_memory(left_items, exc, reporter)
            return
        except Exception as exc:  # the per-batch boundary: record, keep the worker running
            left_items = [item for i, item in enumerate(items) if i not in written]
            kind, outcome = classify(exc)
            if kind == "internal":
                log.exception("batch_failed", sources=[i.task.source for i in left_items])
            for item in left_items:
                reporter.failed(item.task.id, kind, outcome, str(exc))
            return
        seconds = time.perf_counter() - started
        for index, (item, result) in enumerate(zip(items, results, strict=True)):
            if index not in written:  # an engine that hands results over only at the end
                self._deliver(item, result, seconds, reporter)

    def close(self) -> None:
        self.engine.close()

    def _prepare(self, root: Path, task: Task, reporter: Reporter) -> _Item | None:
        """Read and check the task's photo; None when it ended here (reported)."""
        try:
            data = (root / task.source).read_bytes()
        except FileNotFoundError:
            reporter.cancelled(task.id, "source_removed")
            return None
        except OSError as exc:
            reporter.failed(task.id, "io", Outcome.PASSING, str(exc))
            return None
        if hashlib.sha256(data).hexdigest() != task.fingerprint:
            # New content under the same name: the intake queues it as its own job.
            reporter.cancelled(task.id, "source_changed")
            return None
        try:
            decoded = images.decode(data)
        except engine_errors.BadImageError as exc:
            # Unreadable (permissions) can be mended by the admin; damaged bytes cannot.
            passing = exc.reason == "unreadable"
            reporter.failed(
                task.id,
                f"bad_image:{exc.reason}",
                Outcome.PASSING if passing else Outcome.PERMANENT,
                str(exc),
            )
            return None
        return _Item(task, decoded)

    def _resume(self, items: list[_Item]) -> dict[int, Snapshot]:
        """Snapshots of this batch's jobs, by their position in it."""
        if self._snapshots is None:
            return {}
        found: dict[int, Snapshot] = {}
        for index, item in enumerate(items):
            saved = self._snapshots.load(item.task, index)
            if saved is not None:
                found[index] = saved
                log.info("job_resumed", source=item.task.source, step=saved.step, scale=saved.scale)
        return found

    def _deliver(self, item: _Item, result: Stylized, seconds: float, reporter: Reporter) -> None:
        order = item.task.order
        try:
            data = images.encode(
                result.image,
                order.format,
                quality=order.quality,
                metadata=item.decoded.metadata,
                style=order.style,
                credit=order.credit,
                policy=order.metadata,
            )
        except Exception as exc:  # one photo's encoding must not fail the rest of the batch
            log.exception("encode_failed", source=order.source)
            reporter.failed(item.task.id, "internal", Outcome.UNKNOWN, str(exc))
            return
        width, height = result.image.size
        reporter.result(
            item.task.id,
            data,
            Summary(
                size=f"{width}x{height}",
                steps=result.steps,
                seconds=round(seconds, 2),
                device=result.device,
                budget_seconds=result.budget_seconds,
                optimise_seconds=round(result.optimise_seconds, 2),
                schedule=tuple(tuple(scale) for scale in result.schedule),  # type: ignore[misc]
                upsampled_from=result.upsampled_from,
            ),
        )

    def _out_of_memory(self, items: list[_Item], exc: Exception, reporter: Reporter) -> None:
        if len(items) > 1:
            # Try again in smaller batches: the jobs go back without counting the attempt.
            reporter.released(
                tuple(i.task.id for i in items), "out_of_memory", max(1, len(items) // 2)
            )
            return
        if self.engine.shrink_memory_budget():
            # One photo did not fit: try it again at once in smaller tiles.
            reporter.released((items[0].task.id,), "out_of_memory", 1)
            return
        for item in items:
            reporter.failed(item.task.id, "out_of_memory", Outcome.UNKNOWN, str(exc))
