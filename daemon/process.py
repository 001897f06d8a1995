"""A worker process: the executor and its engine in a process of their own, and the pipe to it.

The service's side (WorkerProcess) spawns the process, sends it batches and relays its reports
to the worker thread (daemon/worker.py); the process's side (child_main) loads the engine, pinned
to its device, and runs the batches. Spawned, never forked: CUDA does not survive a fork, and the
service's process never imports torch.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from daemon import logs
from daemon.executor import Batch, Engine, Executor, Outcome, Reporter, Summary
from daemon.progress import Report
from daemon.snapshots import FOLDER, SnapshotStore
from daemon.worker import WorkerDiedError
from engine.params import EngineConfig, Progress, StyleParams, StyleSpec

__all__ = ["EngineFactory", "WorkerProcess", "WorkerSpec", "child_main", "real_engine"]

log = structlog.get_logger()

EngineFactory = Callable[[EngineConfig], Engine]
START_SECONDS = 600.0  # loading the model (a first download, a cold disk) may take this long
STOP_SECONDS = 10.0  # a worker process asked to stop is killed after this long


def real_engine(config: EngineConfig) -> Engine:
    from engine.stylizer import Stylizer

    return Stylizer(config)


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


class WorkerProcess:
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

    def alive(self) -> bool:
        return self._process is not None and bool(self._process.is_alive())

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
    executor = Executor(engine, SnapshotStore(spec.state / FOLDER))
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
    import dataclasses

    return dataclasses.replace(config, device=device)
