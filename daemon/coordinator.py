"""The coordinator: `stylewatch run` with `broker.url` set, feeding workers on other hosts.

The watcher, the intake, the rules and the journal stay on this host, as with the local pool;
in the pool's place, one thread here takes same-style batches from the journal (only while the
workers have room, so that batches fill up meanwhile), dispatches them through Redis
(daemon/broker/), and applies the workers' reports with the same code as a local worker's
(daemon/worker.py's Worker and Run): claim the output's name, write it atomically, mark the job
done, classify a failure. So completion happens in one place, and a report that comes twice (a
batch taken over from a stalled worker, a repeated message) finds its job no longer running and
changes nothing.

A job dispatched in batch B is RUNNING in the journal, owned by `broker:B`. It stays so until a
report for it from B comes, or until B is gone from Redis (acknowledged, or lost with a Redis
that restarted without its data) with no report for a grace time: then it goes back to the
queue. A restarted coordinator keeps such jobs running and reads first the reports its
predecessor never took into the journal. It never imports torch.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog

from daemon import events
from daemon.broker import (
    Broker,
    BrokerError,
    BrokerSettings,
    BrokerUnavailableError,
    CoordinatorBusyError,
)
from daemon.config import Config
from daemon.executor import Batch, Outcome, Reporter
from daemon.journal import Job, JobState, Journal, JournalError
from daemon.returns import OWNER_PREFIX, Returns
from daemon.staging import staging_folder
from daemon.worker import Worker

__all__ = ["OWNER_PREFIX", "Coordinator"]

log = structlog.get_logger()

CHECK_SECONDS = 2.0  # how often lost batches and stray staged files are looked for


class _Remote:
    """The coordinator's worker runs nothing itself: its executors are on other hosts (the
    coordinator relays their reports to worker.Run)."""

    def run(self, batch: Batch, reporter: Reporter, should_stop: Callable[[], bool]) -> None:
        raise NotImplementedError("the coordinator's batches run on remote workers")

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        pass


class Coordinator:
    """Dispatches batches to remote workers and completes their jobs; the pool's stand-in for
    the service (start, run, alive, busy, stop, abort, join, close)."""

    def __init__(
        self,
        journal: Journal,
        config: Callable[[], Config],
        *,
        bus: events.EventBus,
        source_missing: Callable[[str], None],
        lost: Callable[[str], None],
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        first = config()
        assert first.broker.url is not None
        self._journal = journal
        self._config = config
        self._lost = lost  # told when another coordinator took the lease
        self._stopping = stopping
        self._settings = BrokerSettings.from_config(first.broker)
        self._broker = Broker(self._settings)
        self._worker = Worker(
            journal,
            _Remote(),
            config,
            name="coordinator",
            source_missing=source_missing,
            bus=bus,
        )
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._staging = staging_folder(first.output)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._returns = Returns(journal, config, self._broker, self._worker, staging=self._staging)
        self.device = "broker"
        self.precision = "remote"
        self.graphs = False
        self.slots: list[object] = []  # no local workers

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the server, take the coordinator's lease, and put back what a local run left.
        Raises BrokerError: a server that stands against the design, another coordinator
        (CoordinatorBusyError), or Redis out of reach (BrokerUnavailableError)."""
        check = self._broker.check_server()
        for problem in check.problems:
            log.warning("broker_server_problem", level=problem.level, problem=problem.message)
        if not check.ok:
            raise BrokerError(
                f"Redis at {self._broker.url} ({check.server} {check.version}): "
                + "; ".join(p.message for p in check.problems if p.level == "error")
            )
        take_lease(self._broker, self.owner, self._settings.lease_seconds, self._stopping)
        self._staging.mkdir(parents=True, exist_ok=True)
        # Jobs a local pool left running (the service ran without a broker before): put back.
        for job in self._journal.jobs(JobState.RUNNING):
            if not (job.worker or "").startswith(OWNER_PREFIX):
                self._worker.fail(
                    job,
                    "the service stopped while running this job",
                    "interrupted",
                    Outcome.UNKNOWN,
                )
        log.info(
            "coordinator_up",
            owner=self.owner,
            broker=self._broker.url,
            server=f"{check.server} {check.version}",
            namespace=self._settings.namespace,
            dispatched=len(self._returns.dispatched()),
        )

    # -- the pool's interface ----------------------------------------------------------------

    def run(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="stylewatch-coordinator")
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """New jobs: nothing to do, the loop looks at the queue every turn (RESULTS_BLOCK_MS)."""

    def busy(self) -> list[str]:
        """Nothing runs here: remote batches go on without this process."""
        return []

    def down(self) -> list[str]:
        return []

    def stop(self) -> None:
        self._stop.set()

    def abort(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.alive()

    def close(self) -> None:
        """After join(): tidy the staging folder, give the lease up for a successor."""
        self._stop.set()
        try:
            self._returns.sweep()
            self._broker.release_coordinator(self.owner)
        except (BrokerError, JournalError, OSError) as exc:
            log.warning("coordinator_close_failed", error=str(exc))
        self._broker.close()

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        renew_every = self._settings.lease_seconds / 3
        next_renew = next_check = 0.0
        away = False
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_renew:
                    if not self._renew():
                        return
                    next_renew = now + renew_every
                self._returns.apply_all()
                self._dispatch()
                if now >= next_check:
                    self._returns.check_lost()
                    self._returns.sweep()
                    next_check = now + CHECK_SECONDS
                if away:
                    log.info("broker_back", broker=self._broker.url)
                    away = False
            except BrokerUnavailableError as exc:
                if not away:  # once per episode: the loop retries every second
                    log.warning("broker_unavailable", error=str(exc), retry_in=1.0)
                    away = True
                self._stop.wait(1.0)
            except Exception:  # a journal or disk error: log it, wait, carry on
                log.exception("coordinator_error")
                self._stop.wait(1.0)

    def _renew(self) -> bool:
        """Keep the lease; False (and the service stops) when another coordinator has it."""
        if self._broker.renew_coordinator(self.owner, self._settings.lease_seconds):
            return True
        try:  # it expired while Redis was away, and no one took it: ours again
            self._broker.acquire_coordinator(self.owner, self._settings.lease_seconds)
            return True
        except CoordinatorBusyError as exc:
            why = (
                f"another coordinator ({exc.holder}) took the lease on {self._broker.url} "
                "while this one could not renew it; this one stopped so that no batch is "
                "dispatched twice"
            )
            log.error("coordinator_lease_lost", holder=exc.holder)
            self._lost(why)
            return False

    def _dispatch(self) -> None:
        """Dispatch same-style batches while the workers have room for them."""
        config = self._config()
        while not self._stop.is_set() and self._broker.room() > 0:
            batch = uuid.uuid4().hex[:16]
            jobs = self._journal.take(
                config.engine.batch_size, time.time(), worker=OWNER_PREFIX + batch
            )
            if not jobs:
                return
            left = [job for job in jobs if not self._worker.reuse(config, job)]
            if not left:
                continue
            try:
                entry = {"batch": batch, "jobs": [self._order(config, job) for job in left]}
                self._broker.dispatch(entry)
            except BaseException:
                for job in left:  # never dispatched: back to the queue at once
                    self._journal.release(job.id)
                raise
            log.info(
                "batch_dispatched",
                batch=batch,
                style=left[0].style,
                sources=[job.source for job in left],
            )

    def _order(self, config: Config, job: Job) -> dict[str, Any]:
        assert job.order is not None  # take() returns jobs with orders only
        claimed = self._journal.claim_output(
            job.output,
            job.source,
            job.fingerprint,
            taken=lambda rel: os.path.lexists(config.output / rel),
        )
        return {
            "job": job.id,
            "attempt": job.attempts,
            "order": job.order.to_dict(),
            "claimed": claimed,
        }


def take_lease(broker: Broker, owner: str, lease: float, stopping: Callable[[], bool]) -> None:
    """The coordinator's lease, waiting at most one lease for a holder that stopped renewing
    it (a coordinator killed a moment ago); one on this host whose process is gone is cleared.
    Raises CoordinatorBusyError when the holder kept renewing it."""
    deadline = time.monotonic() + lease + 1.0
    while True:
        try:
            broker.acquire_coordinator(owner, lease)
            return
        except CoordinatorBusyError as exc:
            if _dead_here(exc.holder):
                broker.release_coordinator(exc.holder)
                continue
            if time.monotonic() >= deadline or stopping():
                raise CoordinatorBusyError(
                    f"{exc}; it kept renewing it for {lease:g} s: stop the other "
                    "coordinator of this input tree, or give this one another "
                    "broker.namespace",
                    exc.holder,
                    exc.expires_in,
                ) from exc
            log.warning("coordinator_waiting", holder=exc.holder, expires_in=exc.expires_in)
            time.sleep(min(1.0, max(0.1, exc.expires_in or 1.0)))


def _dead_here(holder: str) -> bool:
    """Whether the lease's holder is a process of this host that is gone."""
    host, _, pid = holder.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
