"""The pool: one worker process per device, each with its own resident model and style cache.

Each entry of `engine.devices` is a worker: a thread in the service (daemon/worker.py's Worker:
journal, outputs, logs) linked to a process of its own (the executor and the engine). Processes
are spawned, never forked (CUDA does not survive a fork), and pinned to their GPU with
CUDA_VISIBLE_DEVICES before torch is imported; CPU workers share the cores between them. The
service's process never imports torch, so it never initialises CUDA.

A worker process that dies (a crash, an out-of-memory kill, `kill -9`) or hangs (no sign of life
for `engine.stuck_seconds` while busy) costs the attempt of the jobs it was running; the pool puts
them back in the queue, restarts the process with back-off, and says so in the log and in STATUS.
The other workers go on.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon import events, logs
from daemon.config import Config
from daemon.executor import Outcome
from daemon.journal import Journal, JournalError, backoff_seconds
from daemon.process import EngineFactory, WorkerProcess, WorkerSpec, real_engine
from daemon.snapshots import FOLDER, SnapshotStore
from daemon.worker import Worker, WorkerDiedError

__all__ = ["EngineFactory", "Pool", "real_engine", "resolve_devices"]

log = structlog.get_logger()

RESTART_CAP_SECONDS = 300.0  # back-off between restarts of a worker that keeps dying
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def resolve_devices(devices: Sequence[str], device: str) -> list[str]:
    """The device of each worker: `auto` is one worker on `engine.device`; `all` is one per
    CUDA GPU, counted without initialising CUDA (the driver's /proc entries, narrowed by
    CUDA_VISIBLE_DEVICES), or one on `device` when there is none."""
    if tuple(devices) == ("auto",):
        return [device]
    if tuple(devices) == ("all",):
        try:
            count = len(list(NVIDIA_GPUS.iterdir()))
        except OSError:
            count = 0
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            count = min(count, len([v for v in visible.split(",") if v.strip()]))
        return [f"cuda:{i}" for i in range(count)] or [device]
    return list(devices)


class Pool:
    """The service's workers: one Worker thread and one worker process per device."""

    def __init__(
        self,
        journal: Journal,
        config: Callable[[], Config],
        *,
        engine_factory: EngineFactory = real_engine,
        bus: events.EventBus,
        source_missing: Callable[[str], None],
    ) -> None:
        self._journal = journal
        self._config = config
        self._bus = bus
        first = config()
        devices = resolve_devices(first.engine.devices, first.engine.engine.device)
        threads = first.engine.threads
        if threads is None and len(devices) > 1:
            # The workers share the cores (CPU workers compute on them; GPU workers decode,
            # encode and feed their GPU): each gets its part, at least one.
            threads = max(1, (os.cpu_count() or 1) // len(devices))
        styles = tuple(
            (target.style, target.settings.params)
            for rule in first.rules
            for target in rule.outputs
        )
        log_level, log_renderer = logs.current()
        self.slots: list[_Slot] = []
        snapshots = SnapshotStore(first.state / FOLDER)
        for index, device in enumerate(devices):
            spec = WorkerSpec(
                name=f"worker-{index}",
                device=device,
                engine=first.engine.engine,
                engine_factory=engine_factory,
                state=first.state,
                threads=threads,
                log_level=log_level,
                log_renderer=log_renderer,
                styles=styles if index == 0 else (),
            )
            process = WorkerProcess(spec, stuck_seconds=first.engine.stuck_seconds)
            worker = Worker(
                journal,
                process,
                config,
                name=spec.name,
                source_missing=source_missing,
                bus=bus,
                snapshots=snapshots,
            )
            self.slots.append(_Slot(process, worker))
        self._stop = threading.Event()

    def start(self) -> None:
        """Start every worker process at once and wait for them all (the models load in
        parallel). Raises the engine's error when one cannot start at all."""
        errors: list[BaseException] = []

        def start(slot: _Slot) -> None:
            try:
                slot.process.start()
            except BaseException as exc:
                errors.append(exc)

        starters = [threading.Thread(target=start, args=(s,)) for s in self.slots]
        for thread in starters:
            thread.start()
        for thread in starters:
            thread.join()
        if errors:
            for slot in self.slots:
                slot.process.kill()
            raise errors[0]
        for slot in self.slots:
            # The paintings are checked once, at the first start: a restart must not wait for
            # a painting that hangs (the reason it may have been restarted).
            slot.process.spec = dataclasses.replace(slot.process.spec, styles=())
            self._up(slot)

    def run(self) -> None:
        """Start each worker's thread (after start())."""
        for slot in self.slots:
            slot.thread = threading.Thread(
                target=self._serve, args=(slot,), name=f"stylewatch-{slot.worker.name}"
            )
            slot.thread.start()

    @property
    def device(self) -> str:
        return ",".join(slot.process.device for slot in self.slots)

    @property
    def precision(self) -> str:
        return ",".join(sorted({slot.process.precision for slot in self.slots}))

    @property
    def graphs(self) -> bool:
        return any(slot.process.graphs for slot in self.slots)

    def wake(self) -> None:
        """New jobs: every worker looks (each has its own event, so none misses it)."""
        for slot in self.slots:
            slot.wake.set()

    def alive(self) -> bool:
        """Every worker's thread runs (a worker process being restarted counts as alive)."""
        return all(slot.thread is not None and slot.thread.is_alive() for slot in self.slots)

    def busy(self) -> list[str]:
        return [source for slot in self.slots for source in slot.worker.current]

    def down(self) -> list[str]:
        """Workers whose process is being restarted."""
        return [slot.worker.name for slot in self.slots if slot.down_since is not None]

    def stop(self) -> None:
        """No new batches: each worker finishes the one it runs (see drain/abort)."""
        self._stop.set()
        self.wake()

    def abort(self) -> None:
        for slot in self.slots:
            slot.worker.abort()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the workers' threads; True when they all ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for slot in self.slots:
            if slot.thread is not None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                slot.thread.join(left)
        return not any(slot.thread is not None and slot.thread.is_alive() for slot in self.slots)

    def close(self) -> None:
        for slot in self.slots:  # all at once: each closes its engine meanwhile
            slot.process.ask_to_stop()
        for slot in self.slots:
            slot.process.close()

    def _serve(self, slot: _Slot) -> None:
        """One worker's loop: run batches; after its process died, put its jobs back and
        restart it with back-off; after a journal error, wait and carry on."""
        failures = 0
        while not self._stop.is_set():
            try:
                if slot.down_since is not None:
                    self._restart(slot, failures)
                slot.worker.run(self._stop, slot.wake)
            except WorkerDiedError as exc:
                failures += 1
                slot.down_since = time.monotonic()
                self._bus.emit(events.WorkerDown(slot.worker.name, str(exc), restarts=failures))
                self._requeue(slot, str(exc))
            except Exception:  # a journal or disk error: log it, wait, carry on
                log.exception("worker_error", worker=slot.worker.name)
                # The batch that broke off is still marked running: it goes back to the queue
                # before the worker takes anything else, however long the journal needs.
                while not self._stop.wait(5.0) and not self._requeue(slot, "worker_error"):
                    pass
            else:
                failures = 0

    def _restart(self, slot: _Slot, failures: int) -> None:
        wait = backoff_seconds(max(1, failures), base=1.0, cap=RESTART_CAP_SECONDS)
        if self._stop.wait(wait):
            return
        try:
            slot.process.start()
        except Exception as exc:
            # It may start later (a GPU that recovers); the back-off grows meanwhile.
            raise WorkerDiedError(f"restart failed: {exc}") from exc
        slot.down_since = None
        self._up(slot)

    def _up(self, slot: _Slot) -> None:
        process = slot.process
        self._bus.emit(
            events.WorkerUp(slot.worker.name, process.device, process.pid, process.precision)
        )

    def _requeue(self, slot: _Slot, reason: str) -> bool:
        """Put the jobs the worker left running back in the queue (their attempt counts); False
        when the journal still fails (the caller tries again)."""
        try:
            jobs = self._journal.running(slot.worker.name)
            for job in jobs:
                slot.worker.fail(job, reason, "worker_died", Outcome.UNKNOWN)
        except JournalError as exc:
            log.warning("requeue_failed", worker=slot.worker.name, error=str(exc), retry_in=5.0)
            return False
        if jobs:
            log.info("jobs_requeued", worker=slot.worker.name, jobs=len(jobs), reason=reason)
        return True


@dataclass
class _Slot:
    process: WorkerProcess
    worker: Worker
    thread: threading.Thread | None = None
    down_since: float | None = None
    wake: threading.Event = dataclasses.field(default_factory=threading.Event)
