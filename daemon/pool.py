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

import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from daemon import events, logs
from daemon.config import Config
from daemon.executor import Batch, Engine, Executor, Outcome, Reporter, Summary
from daemon.journal import Journal, JournalError, backoff_seconds
from daemon.progress import Report
from daemon.snapshots import SnapshotStore
from daemon.worker import ProcessLinkBase, Worker, WorkerDiedError
from engine.params import EngineConfig, Progress, StyleParams, StyleSpec

__all__ = ["EngineFactory", "Pool", "WorkerProcess", "WorkerSpec", "resolve_devices"]

log = structlog.get_logger()

EngineFactory = Callable[[EngineConfig], Engine]
START_SECONDS = 600.0  # loading the model (a first download, a cold disk) may take this long
STOP_SECONDS = 10.0  # a worker process asked to stop is killed after this long
RESTART_CAP_SECONDS = 300.0  # back-off between restarts of a worker that keeps dying
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def real_engine(config: EngineConfig) -> Engine:
    from engine.stylizer import Stylizer

    return Stylizer(config)


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


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is started with (pickled to the child)."""

    name: str
    device: str  # cpu, cuda, cuda:N, mps, auto
    engine: EngineConfig
    engine_factory: EngineFactory
    state: Path  # the state folder: snapshots live there
    threads: int | None  # torch CPU threads; None: torch's default
    log_level: str
    log_renderer: logs.Renderer
    styles: tuple[tuple[StyleSpec, StyleParams], ...] = ()  # loaded at start to report problems


class WorkerProcess(ProcessLinkBase):
    """A worker process and the pipe to it; `run` sends a batch and relays its reports."""

    def __init__(self, spec: WorkerSpec, *, stuck_seconds: float) -> None:
        self.spec = spec
        self.stuck_seconds = stuck_seconds
        self._ctx = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        self._abort = self._ctx.Event()
        self.device = spec.device
        self.precision = "unknown"
        self.graphs = False

    @property
    def pid(self) -> int | None:
        return None if self._process is None else int(self._process.pid)

    def start(self) -> None:
        """Spawn the process and wait until its model is loaded. Raises the engine's own
        WeightsError or EngineError when it cannot start (a bad checkpoint, no GPU)."""
        parent, child = self._ctx.Pipe()
        self._abort.clear()
        process = self._ctx.Process(
            target=child_main,
            args=(child, self._abort, self.spec),
            name=f"stylewatch-{self.spec.name}",
            daemon=True,  # never outlives the service, whatever happens to it
        )
        process.start()
        child.close()
        self._process, self._conn = process, parent
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if parent.poll(0.2):
                try:
                    message = parent.recv()
                except (EOFError, OSError):
                    break
                if message[0] == "ready":
                    _, self.device, self.precision, self.graphs = message
                    return
                if message[0] == "error":
                    self.kill()
                    _raise_engine_error(message[1], message[2])
            elif not process.is_alive():
                break
        self.kill()
        raise WorkerDiedError(f"worker {self.spec.name} did not start: {self._exit_text()}")

    def run(self, batch: Batch, reporter: Reporter, should_stop: Callable[[], bool]) -> None:
        conn = self._conn
        if conn is None or self._process is None or not self._process.is_alive():
            raise WorkerDiedError(f"worker process {self.spec.name} is not running")
        self._abort.clear()
        try:
            conn.send(("batch", batch))
        except (OSError, ValueError) as exc:
            raise self._died(f"cannot reach it ({exc})") from exc
        seen = time.monotonic()
        while True:
            if should_stop() and not self._abort.is_set():
                self._abort.set()
            try:
                ready = conn.poll(0.2)
                message = conn.recv() if ready else None
            except (EOFError, OSError):
                raise self._died(self._exit_text()) from None
            if message is None:
                if not self._process.is_alive():
                    raise self._died(self._exit_text())
                if time.monotonic() - seen > self.stuck_seconds:
                    self.kill()
                    raise self._died(f"no sign of life for {self.stuck_seconds:g} s: killed")
                continue
            seen = time.monotonic()
            if message[0] == "end":
                return
            _relay(message, reporter)

    def ask_to_stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("stop",))

    def close(self) -> None:
        """Ask the process to stop, and kill it if it does not within STOP_SECONDS."""
        self.ask_to_stop()
        if self._process is not None:
            self._process.join(STOP_SECONDS)
        self.kill()

    def kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(5.0)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _died(self, why: str) -> WorkerDiedError:
        self.kill()
        return WorkerDiedError(f"worker process {self.spec.name} died while running it: {why}")

    def _exit_text(self) -> str:
        if self._process is None:
            return "not started"
        self._process.join(1.0)
        code = self._process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"


def _relay(message: tuple[Any, ...], reporter: Reporter) -> None:
    kind, args = message[0], message[1:]
    if kind == "started":
        reporter.started(*args)
    elif kind == "progress":
        reporter.progress(*args)
    elif kind == "result":
        reporter.result(*args)
    elif kind == "failed":
        reporter.failed(*args)
    elif kind == "cancelled":
        reporter.cancelled(*args)
    elif kind == "released":
        reporter.released(*args)


def _raise_engine_error(kind: str, message: str) -> None:
    from engine import errors  # torch-free

    if kind == "weights":
        raise errors.WeightsError(message)
    raise errors.EngineError(message)


class _PipeReporter:
    """The executor's reports, sent to the service over the pipe."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self._conn = conn

    def started(self, jobs: tuple[int, ...], steps: int, scales: int) -> None:
        self._conn.send(("started", jobs, steps, scales))

    def progress(self, jobs: tuple[int, ...], progress: Progress, report: Report | None) -> None:
        self._conn.send(("progress", jobs, progress, report))

    def result(self, job: int, data: bytes, summary: Summary) -> None:
        self._conn.send(("result", job, data, summary))

    def failed(self, job: int, kind: str, outcome: Outcome, error: str) -> None:
        self._conn.send(("failed", job, kind, outcome, error))

    def cancelled(self, job: int, reason: str) -> None:
        self._conn.send(("cancelled", job, reason))

    def released(self, jobs: tuple[int, ...], reason: str, next_limit: int | None) -> None:
        self._conn.send(("released", jobs, reason, next_limit))


def child_main(conn: multiprocessing.connection.Connection, abort: Any, spec: WorkerSpec) -> None:
    """A worker process: load the engine, then run the batches the service sends until told to
    stop or until the service is gone."""
    # The service stops its workers itself (after letting a batch finish): a terminal's Ctrl-C
    # and systemd's SIGTERM to the whole unit must not kill a worker in the middle of a photo.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    device = spec.device
    if device.startswith("cuda:"):
        # Pinned before torch is imported: this process sees its GPU only, as cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        device = "cuda:0"
    logs.configure(level=spec.log_level, renderer=spec.log_renderer)
    structlog.contextvars.bind_contextvars(worker=spec.name)
    parent = os.getppid()
    try:
        if spec.threads is not None:
            import torch

            torch.set_num_threads(spec.threads)
        engine = spec.engine_factory(_with_device(spec.engine, device))
    except Exception as exc:
        from engine import errors

        kind = "weights" if isinstance(exc, errors.WeightsError) else "engine"
        if not isinstance(exc, errors.EngineError):
            log.exception("worker_start_failed")
        conn.send(("error", kind, str(exc)))
        return
    for style, params in spec.styles:
        try:
            engine.prepare_style(style, params)
        except Exception as exc:  # a broken painting is reported; its jobs retry later
            log.error("style_unusable", style=style.name, error=str(exc))
    executor = Executor(engine, SnapshotStore(spec.state / "snapshots"))
    conn.send(
        (
            "ready",
            str(getattr(engine, "device", device)),
            str(getattr(engine, "precision", spec.engine.precision)),
            bool(getattr(getattr(engine, "graphs", None), "enabled", False)),
        )
    )

    def should_stop() -> bool:
        return bool(abort.is_set()) or os.getppid() != parent

    reporter = _PipeReporter(conn)
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the service is gone
            if message[0] != "batch":
                break
            executor.run(message[1], reporter, should_stop)
            conn.send(("end",))
    finally:
        executor.close()


def _with_device(config: EngineConfig, device: str) -> EngineConfig:
    return dataclasses.replace(config, device=device)


class Pool:
    """The service's workers: one Worker thread and one worker process per device."""

    def __init__(
        self,
        journal: Journal,
        config: Callable[[], Config],
        *,
        engine_factory: EngineFactory = real_engine,
        bus: events.EventBus,
        wake: threading.Event,
        source_missing: Callable[[str], None],
    ) -> None:
        self._journal = journal
        self._config = config
        self._bus = bus
        self._wake = wake
        first = config()
        devices = resolve_devices(first.engine.devices, first.engine.engine.device)
        cpus = sum(1 for d in devices if d in {"cpu", "auto"})
        threads = first.engine.threads
        if threads is None and cpus > 1:
            # CPU workers share the cores: each gets its part, at least one.
            threads = max(1, (os.cpu_count() or 1) // cpus)
        styles = tuple(
            (target.style, target.settings.params)
            for rule in first.rules
            for target in rule.targets
        )
        log_level, log_renderer = logs.current()
        self.slots: list[_Slot] = []
        snapshots = SnapshotStore(first.state / "snapshots")
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
            log.info(
                "worker_up",
                worker=slot.worker.name,
                pid=slot.process.pid,
                device=slot.process.device,
                precision=slot.process.precision,
            )
            self._bus.emit(events.WorkerUp(slot.worker.name, slot.process.device, slot.process.pid))

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
        self._wake.set()

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
                slot.worker.run(self._stop, self._wake)
            except WorkerDiedError as exc:
                failures += 1
                slot.down_since = time.monotonic()
                log.error(
                    "worker_down", worker=slot.worker.name, reason=str(exc), restarts=failures
                )
                self._bus.emit(events.WorkerDown(slot.worker.name, str(exc)))
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
        log.info(
            "worker_up", worker=slot.worker.name, pid=slot.process.pid, device=slot.process.device
        )
        self._bus.emit(events.WorkerUp(slot.worker.name, slot.process.device, slot.process.pid))

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
