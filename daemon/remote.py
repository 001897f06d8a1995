"""`stylewatch worker`: one GPU's worker on a host of its own, fed by the coordinator through Redis.

One process per device, with its resident engine (the same Executor as a worker process of the
local pool). It registers (host, device, pid) and sends heartbeats; then, batch after batch: take
one (or one a dead worker left, after its lease), keep its lease renewed from a thread while it
runs, run it, write each artwork into the staging folder of the shared output (fsync'd), report
each job (result, failure, cancellation), and only then acknowledge the batch. It never touches
the journal: the coordinator completes the jobs (daemon/coordinator.py).

It checks what it can before it spends a GPU on an order: each painting's content against the
hash the order names (a painting changed, or another file at that path on this host, cannot
reproduce the order's settings), and, through the executor, each photo's fingerprint. A batch
delivered more than broker.max_attempts times (it killed each worker that ran it) is not run:
its photos fail with the reason.

SIGTERM or SIGINT: no new batch; the running one may finish within the grace time, then it is
aborted at its next step and its jobs handed back; the worker unregisters and exits.

STYLEWATCH_TEST_ENGINE=module:function (tests only, never set in production) replaces the
engine's factory, so that tests can run a worker whose engine crashes on a marked photo.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import socket
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, cast

import structlog

from daemon.broker import (
    Broker,
    BrokerError,
    BrokerSettings,
    BrokerUnavailableError,
    Delivery,
)
from daemon.config import Config
from daemon.executor import Batch, Executor, Outcome, Summary, Task
from daemon.orders import OrderError, WorkOrder, hash_file
from daemon.outputs import write_atomic
from daemon.process import EngineFactory, real_engine
from daemon.progress import Report
from daemon.staging import staged_name, staging_folder
from engine.params import Progress

__all__ = ["TEST_ENGINE_VARIABLE", "RemoteWorker", "engine_factory"]

log = structlog.get_logger()

TEST_ENGINE_VARIABLE = "STYLEWATCH_TEST_ENGINE"
RETRY_SECONDS = 1.0  # while Redis is away


def engine_factory() -> EngineFactory:
    """The real engine, or the test-only one that STYLEWATCH_TEST_ENGINE names."""
    named = os.environ.get(TEST_ENGINE_VARIABLE)
    if not named:
        return real_engine
    module, _, attr = named.partition(":")
    return cast(EngineFactory, getattr(importlib.import_module(module), attr))


class RemoteWorker:
    """A worker on its own host: `run()` until request_stop()."""

    def __init__(
        self,
        config: Config,
        device: str,
        *,
        name: str | None = None,
        factory: EngineFactory = real_engine,
        grace: float = 30.0,
    ) -> None:
        assert config.broker.url is not None
        self._config = config
        self.device = device
        self._factory = factory
        self._grace = grace  # how long a running batch may finish after a stop signal
        self._broker = Broker(BrokerSettings.from_config(config.broker))
        self.host = socket.gethostname()
        # Stable across restarts: a restarted worker is the same consumer in the group.
        self.name = name or f"{self.host}:{device}"
        self._staging = staging_folder(config.output)
        self._stop = threading.Event()
        self._stop_at: float | None = None
        self._lost = threading.Event()  # the running batch was taken over: abort it
        self._ended = threading.Event()  # the process is on its way out: the keeper stops
        self._current: tuple[str, tuple[str, ...]] | None = None  # entry id, its sources

    # -- signals: flags only -----------------------------------------------------------------

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        else:
            self._stop_at = 0.0  # a second signal: abort at once
        self._stop.set()

    def _should_stop(self) -> bool:
        if self._lost.is_set():
            return True
        return self._stop_at is not None and time.monotonic() - self._stop_at > self._grace

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> None:
        """Load the engine (raises its WeightsError or EngineError), then serve until stopped."""
        engine_config = self._config.engine.engine
        device = self.device
        if device.startswith("cuda:"):
            # Pinned before torch is imported: this process sees its GPU only, as cuda:0.
            os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
            device = "cuda:0"
        if self._config.engine.threads is not None:
            import torch

            torch.set_num_threads(self._config.engine.threads)
        executor = Executor(self._factory(dataclasses.replace(engine_config, device=device)))
        keeper = threading.Thread(target=self._keep, name="stylewatch-keeper", daemon=True)
        try:
            self._register()
            keeper.start()
            log.info(
                "worker_up",
                worker=self.name,
                host=self.host,
                device=self.device,
                pid=os.getpid(),
                broker=self._broker.url,
            )
            while not self._stop.is_set():
                try:
                    delivery = self._broker.next_batch(self.name, block_ms=1000)
                except BrokerUnavailableError as exc:
                    log.warning("broker_unavailable", error=str(exc), retry_in=RETRY_SECONDS)
                    self._stop.wait(RETRY_SECONDS)
                    continue
                if delivery is None:
                    continue
                try:
                    self._serve(executor, delivery)
                except BrokerUnavailableError as exc:
                    # Not acknowledged: it is taken over after its lease, and whatever it
                    # reported already counts once (completion is idempotent).
                    log.warning("broker_unavailable", error=str(exc), retry_in=RETRY_SECONDS)
                except Exception:  # a bug: the batch is taken over after its lease
                    log.exception("batch_error", worker=self.name, entry=delivery.entry_id)
        finally:
            self._stop.set()
            self._ended.set()
            executor.close()
            try:
                self._broker.unregister_worker(self.name)
            except BrokerUnavailableError as exc:  # it expires by itself
                log.warning("worker_unregister_failed", error=str(exc))
            self._broker.close()
            log.info("worker_stopped", worker=self.name)

    def _register(self) -> None:
        while True:
            try:
                self._broker.register_worker(
                    self.name, host=self.host, device=self.device, pid=os.getpid()
                )
                return
            except BrokerUnavailableError as exc:
                log.warning("broker_unavailable", error=str(exc), retry_in=RETRY_SECONDS)
                if self._stop.wait(RETRY_SECONDS):
                    return

    def _keep(self) -> None:
        """Heartbeats, and the running batch's lease, renewed well within their expiry."""
        settings = self._broker.settings
        every = min(settings.lease_seconds, settings.worker_ttl_seconds) / 3
        while not self._ended.wait(every):
            current = self._current
            try:
                if not self._broker.heartbeat(self.name, current[1] if current else ()):
                    self._register()
                if current is not None and not self._broker.keep_lease(self.name, current[0]):
                    log.warning("batch_taken_over", worker=self.name, entry=current[0])
                    self._lost.set()
            except BrokerUnavailableError as exc:
                log.warning("broker_unavailable", error=str(exc), retry_in=every)

    # -- one batch ---------------------------------------------------------------------------

    def _serve(self, executor: Executor, delivery: Delivery) -> None:
        batch_id = str(delivery.batch.get("batch"))
        entries: list[dict[str, Any]] = list(delivery.batch.get("jobs") or [])
        reports = _Reports(self._broker, batch_id, self.name, self._staging, self._lost)
        log.info(
            "batch_taken",
            worker=self.name,
            batch=batch_id,
            jobs=len(entries),
            deliveries=delivery.deliveries,
            taken_over=delivery.taken_over,
        )
        if delivery.poison:
            reason = str(
                delivery.batch.get("error")
                or f"delivered {delivery.deliveries} times, more than broker.max_attempts "
                f"({self._broker.settings.max_attempts}): it stopped each worker that ran it"
            )
            for entry in entries:
                reports.failed(int(entry["job"]), "poison", Outcome.PERMANENT, reason)
        else:
            tasks = [task for task in (self._task(entry, reports) for entry in entries) if task]
            if tasks:
                self._lost.clear()
                self._current = (delivery.entry_id, tuple(t.source for t in tasks))
                try:
                    executor.run(
                        Batch(tuple(tasks), self._config.input, 0.0), reports, self._should_stop
                    )
                finally:
                    self._current = None
        if self._lost.is_set():
            return  # another worker runs it now: its reports and acknowledgement count
        if reports.flush(self._stop) and self._broker.ack_batch(delivery.entry_id):
            log.info("batch_acknowledged", worker=self.name, batch=batch_id, jobs=len(entries))

    def _task(self, entry: dict[str, Any], reports: _Reports) -> Task | None:
        """The entry's order, checked; None when it was reported as failed."""
        job = int(entry["job"])
        try:
            order = WorkOrder.from_dict(entry["order"])
        except (OrderError, KeyError) as exc:
            reports.failed(job, "order_unreadable", Outcome.PERMANENT, str(exc))
            return None
        for painting in order.paintings:
            try:
                digest = hash_file(Path(painting.path))
            except OSError as exc:  # a share away: it may come back
                reports.failed(job, "style", Outcome.PASSING, f"painting {painting.path}: {exc}")
                return None
            if painting.sha256 and digest != painting.sha256:
                reports.failed(
                    job,
                    "settings_unreproducible",
                    Outcome.PERMANENT,
                    f"painting {painting.path} on {self.host} is not the one the order was "
                    f"made with (sha256 {digest[:12]}, the order's {painting.sha256[:12]}): "
                    "share the same paintings with every host, at the same path",
                )
                return None
        reports.orders[job] = order
        return Task(job, order)


class _Reports:
    """The executor's reports for one batch, written to Redis in order; kept and sent again
    while Redis is away (a batch is acknowledged only once all its reports are in)."""

    def __init__(
        self, broker: Broker, batch: str, worker: str, staging: Path, lost: threading.Event
    ) -> None:
        self._broker = broker
        self._lost = lost
        self._batch = batch
        self._worker = worker
        self._staging = staging
        self._queue: list[dict[str, Any]] = []
        self.orders: dict[int, WorkOrder] = {}

    def _send(self, kind: str, **fields: Any) -> None:
        self._queue.append({"kind": kind, "batch": self._batch, "worker": self._worker, **fields})
        self.flush(None)

    def flush(self, stop: threading.Event | None) -> bool:
        """Send what is queued; with `stop`, keep trying while Redis is away until it is set.
        True when everything is sent."""
        while self._queue:
            try:
                self._broker.report(self._queue[0])
            except BrokerError as exc:
                if stop is None:
                    return False
                log.warning("broker_unavailable", error=str(exc), retry_in=RETRY_SECONDS)
                if stop.wait(RETRY_SECONDS):
                    return False
                continue
            self._queue.pop(0)
        return True

    def started(self, jobs: tuple[int, ...], steps: int, scales: int) -> None:
        self._send("started", jobs=list(jobs), steps=steps, scales=scales)

    def progress(self, jobs: tuple[int, ...], progress: Progress, report: Report | None) -> None:
        """Progress stays on this host (its log); the lease keeper says it is alive."""
        if report is not None:
            log.info(
                "job_progress",
                jobs=list(jobs),
                step=progress.step,
                steps=progress.steps,
                percent=report.percent,
                worker=self._worker,
            )

    def result(self, job: int, data: bytes, summary: Summary) -> None:
        order = self.orders[job]
        name = staged_name(job, self._batch, order.output)
        try:
            write_atomic(self._staging / name, data, overwrite=False)
        except OSError as exc:
            self.failed(job, "io", Outcome.PASSING, f"cannot stage the artwork: {exc}")
            return
        self._send("result", job=job, staged=name, summary=dataclasses.asdict(summary))

    def failed(self, job: int, kind: str, outcome: Outcome, error: str) -> None:
        self._send("failed", job=job, error_kind=kind, outcome=outcome.value, error=error)

    def cancelled(self, job: int, reason: str) -> None:
        self._send("cancelled", job=job, reason=reason)

    def released(self, jobs: tuple[int, ...], reason: str, next_limit: int | None) -> None:
        if self._lost.is_set():
            return  # aborted because another worker took the batch over: its jobs run there
        self._send("released", jobs=list(jobs), reason=reason, next_limit=next_limit)
