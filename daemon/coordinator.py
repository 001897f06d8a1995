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

import dataclasses
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from daemon import events
from daemon.broker import (
    Broker,
    BrokerError,
    BrokerSettings,
    BrokerUnavailableError,
    CoordinatorBusyError,
    ReportEntry,
)
from daemon.config import Config
from daemon.executor import Outcome, Summary
from daemon.journal import Job, JobState, Journal, JournalError
from daemon.staging import owner, read_staged, staging_folder
from daemon.worker import ProcessLinkBase, Run, Worker

__all__ = ["OWNER_PREFIX", "Coordinator"]

log = structlog.get_logger()

OWNER_PREFIX = "broker:"  # the journal's owner of a dispatched job: broker:<batch id>
CHECK_SECONDS = 2.0  # how often lost batches and stray staged files are looked for
RESULTS_BLOCK_MS = 200  # the loop's pace while nothing comes back


class _Remote(ProcessLinkBase):
    """The coordinator's worker runs nothing itself: its executors are on other hosts."""


class Coordinator:
    """Dispatches batches to remote workers and completes their jobs; the pool's stand-in for
    the service (start, run, alive, busy, stop, abort, join, close)."""

    def __init__(
        self,
        journal: Journal,
        config: Callable[[], Config],
        *,
        bus: events.EventBus,
        wake: threading.Event,
        source_missing: Callable[[str], None],
        lost: Callable[[str], None],
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        first = config()
        assert first.broker.url is not None
        self._journal = journal
        self._config = config
        self._wake = wake  # set by the intake when it queued something
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
        self._missing: dict[str, float] = {}  # batch id -> when it was first seen gone
        self._unapplied: list[ReportEntry] = []  # read, not yet in the journal (it failed)
        self._backlog_read = False  # the results stream had nothing more, once at least
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
        self._take_lease()
        self._staging.mkdir(parents=True, exist_ok=True)
        # Jobs a local pool left running (the service ran without a broker before): put back.
        for job in self._journal.jobs(JobState.RUNNING):
            if not (job.worker or "").startswith(OWNER_PREFIX):
                self._worker.fail(
                    job, "the service stopped while running this job", "interrupted",
                    Outcome.UNKNOWN,
                )
        log.info(
            "coordinator_up",
            owner=self.owner,
            broker=self._broker.url,
            server=f"{check.server} {check.version}",
            namespace=self._settings.namespace,
            dispatched=len(self._dispatched()),
        )

    def _take_lease(self) -> None:
        """The lease, waiting at most one lease for a holder that stopped renewing it (a
        coordinator killed a moment ago); one on this host whose process is gone is cleared."""
        lease = self._settings.lease_seconds
        deadline = time.monotonic() + lease + 1.0
        while True:
            try:
                self._broker.acquire_coordinator(self.owner, lease)
                return
            except CoordinatorBusyError as exc:
                if self._dead_here(exc.holder):
                    self._broker.release_coordinator(exc.holder)
                    continue
                if time.monotonic() >= deadline or self._stopping():
                    raise CoordinatorBusyError(
                        f"{exc}; it kept renewing it for {lease:g} s: stop the other "
                        "coordinator of this input tree, or give this one another "
                        "broker.namespace",
                        exc.holder,
                        exc.expires_in,
                    ) from exc
                log.warning("coordinator_waiting", holder=exc.holder, expires_in=exc.expires_in)
                time.sleep(min(1.0, max(0.1, exc.expires_in or 1.0)))

    @staticmethod
    def _dead_here(holder: str) -> bool:
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

    # -- the pool's interface ----------------------------------------------------------------

    def run(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="stylewatch-coordinator")
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
            self._sweep()
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
                self._apply_all()
                self._dispatch()
                if now >= next_check:
                    self._check_lost()
                    self._sweep()
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
                "batch_dispatched", batch=batch, style=left[0].style,
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

    # -- reports -----------------------------------------------------------------------------

    def _apply_all(self) -> None:
        if not self._unapplied:
            self._unapplied = self._broker.results(block_ms=RESULTS_BLOCK_MS)
            if not self._unapplied:
                self._backlog_read = True
        while self._unapplied:
            entry = self._unapplied[0]
            self._apply(entry.result)  # a JournalError leaves it for the next turn
            self._broker.ack_result(entry.entry_id)
            self._unapplied.pop(0)

    def _apply(self, report: dict[str, Any]) -> None:
        kind = str(report.get("kind"))
        batch = str(report.get("batch"))
        ids = [int(i) for i in report.get("jobs", [report.get("job")]) if i is not None]
        jobs = []
        for job_id in ids:
            try:
                job = self._journal.job(job_id)
            except KeyError:
                continue
            if job.state is JobState.RUNNING and job.worker == OWNER_PREFIX + batch:
                jobs.append(job)
        staged = report.get("staged")
        if not jobs:
            # Done, failed, or dispatched again since: a repeated or late report.
            log.info("broker_report_duplicate", kind=kind, batch=batch, jobs=ids)
            self._discard(staged)
            return
        config = self._config()
        run = Run(self._worker, config, jobs)
        job = jobs[0]
        if kind == "started":
            run.started(tuple(j.id for j in jobs), int(report["steps"]), int(report["scales"]))
        elif kind == "result":
            try:
                data = read_staged(self._staging, str(staged))
            except (OSError, ValueError) as exc:
                run.failed(job.id, "io", Outcome.PASSING, f"the staged artwork is gone: {exc}")
            else:
                run.result(job.id, data, _summary(report.get("summary", {})))
            self._discard(staged)
        elif kind == "failed":
            run.failed(
                job.id, str(report["error_kind"]), Outcome(report["outcome"]), str(report["error"])
            )
        elif kind == "cancelled":
            run.cancelled(job.id, str(report["reason"]))
        elif kind == "released":
            next_limit = report.get("next_limit")
            run.released(
                tuple(j.id for j in jobs),
                str(report["reason"]),
                None if next_limit is None else int(next_limit),
            )
            self._wake.set()
        else:
            log.error("broker_report_unknown", kind=kind, batch=batch)

    def _discard(self, staged: object) -> None:
        if isinstance(staged, str) and staged == Path(staged).name and owner(staged):
            try:
                (self._staging / staged).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("staged_not_removed", name=staged, error=str(exc))

    # -- what Redis lost, and what workers left behind ---------------------------------------

    def _dispatched(self) -> dict[str, list[Job]]:
        """Running jobs by the batch they were dispatched in."""
        found: dict[str, list[Job]] = {}
        for job in self._journal.jobs(JobState.RUNNING):
            if (job.worker or "").startswith(OWNER_PREFIX):
                found.setdefault((job.worker or "")[len(OWNER_PREFIX) :], []).append(job)
        return found

    def _check_lost(self) -> None:
        """Jobs of a batch Redis no longer holds, with no report for a grace time (a lease):
        Redis lost it (restarted without its data, a failover). Back to the queue."""
        dispatched = self._dispatched()
        held = self._broker.batch_ids()
        now = time.monotonic()
        for batch in list(self._missing):
            if batch in held or batch not in dispatched:
                del self._missing[batch]
        for batch, jobs in dispatched.items():
            if batch in held:
                continue
            since = self._missing.setdefault(batch, now)
            # The reports of an acknowledged batch may still be on their way: wait them out.
            if now - since < self._settings.lease_seconds or not self._backlog_read:
                continue
            del self._missing[batch]
            log.warning(
                "broker_batch_lost",
                batch=batch,
                sources=[job.source for job in jobs],
                hint="Redis no longer holds it and no report came: queued again",
            )
            self._worker.release(jobs, "broker_lost", None)
            self._wake.set()

    def _sweep(self) -> None:
        """Delete staged files that no report will ask for: their job is not running in their
        batch any more (done by another delivery, failed, put back)."""
        try:
            names = [entry.name for entry in os.scandir(self._staging)]
        except FileNotFoundError:
            return
        running = {
            (job.id, batch) for batch, jobs in self._dispatched().items() for job in jobs
        }
        for name in names:
            found = owner(name)
            if found is not None and found in running:
                continue
            if found is None and _age(self._staging / name) < self._settings.lease_seconds:
                continue  # a stranger: give whoever made it time
            try:
                (self._staging / name).unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("staged_not_removed", name=name, error=str(exc))
                continue
            log.debug("staged_removed", name=name)


def _age(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


def _summary(data: dict[str, Any]) -> Summary:
    """A worker's Summary from its JSON (lists where the dataclass has tuples)."""
    known = {f.name for f in dataclasses.fields(Summary)}
    values = {key: value for key, value in data.items() if key in known}
    values["schedule"] = tuple(tuple(scale) for scale in values.get("schedule", ()))
    values.setdefault("size", "")
    values.setdefault("steps", 0)
    values.setdefault("seconds", 0.0)
    values.setdefault("device", "remote")
    values.setdefault("budget_seconds", None)
    values.setdefault("optimise_seconds", 0.0)
    values.setdefault("upsampled_from", None)
    return Summary(**values)
