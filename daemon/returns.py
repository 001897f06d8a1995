"""What comes back from the workers on other hosts, for the coordinator (daemon/coordinator.py).

Reports are applied with the local worker's own code (daemon/worker.py's Run), so completion
happens in one place; a report whose job is no longer running in its batch changes nothing.
Beside them: jobs whose batch Redis lost go back to the queue, and staged files that no report
will ask for are deleted.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from daemon.broker import Broker, ReportEntry
from daemon.config import Config
from daemon.executor import Outcome, Summary
from daemon.journal import Job, JobState, Journal
from daemon.staging import owner, read_staged
from daemon.worker import Run, Worker

__all__ = ["OWNER_PREFIX", "Returns"]

log = structlog.get_logger()

OWNER_PREFIX = "broker:"  # the journal's owner of a dispatched job: broker:<batch id>
RESULTS_BLOCK_MS = 50  # the longest a freed worker waits for its next batch


class Returns:
    """Reports applied to the journal, lost batches put back, stray staged files removed."""

    def __init__(
        self,
        journal: Journal,
        config: Callable[[], Config],
        broker: Broker,
        worker: Worker,
        *,
        staging: Path,
    ) -> None:
        self._journal = journal
        self._config = config
        self._broker = broker
        self._worker = worker
        self._staging = staging
        self._lease = broker.settings.lease_seconds
        self._missing: dict[str, float] = {}  # batch id -> when it was first seen gone
        self._unapplied: list[ReportEntry] = []  # read, not yet in the journal (it failed)
        self._backlog_read = False  # the results stream had nothing more, once at least

    def apply_all(self) -> None:
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
        else:
            log.error("broker_report_unknown", kind=kind, batch=batch)

    def _discard(self, staged: object) -> None:
        if isinstance(staged, str) and staged == Path(staged).name and owner(staged):
            try:
                (self._staging / staged).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("staged_not_removed", name=staged, error=str(exc))

    # -- what Redis lost, and what workers left behind ---------------------------------------

    def dispatched(self) -> dict[str, list[Job]]:
        """Running jobs by the batch they were dispatched in."""
        found: dict[str, list[Job]] = {}
        for job in self._journal.jobs(JobState.RUNNING):
            if (job.worker or "").startswith(OWNER_PREFIX):
                found.setdefault((job.worker or "")[len(OWNER_PREFIX) :], []).append(job)
        return found

    def check_lost(self) -> None:
        """Jobs of a batch Redis no longer holds, with no report for a grace time (a lease):
        Redis lost it (restarted without its data, a failover). Back to the queue."""
        dispatched = self.dispatched()
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
            if now - since < self._lease or not self._backlog_read:
                continue
            del self._missing[batch]
            log.warning(
                "broker_batch_lost",
                batch=batch,
                sources=[job.source for job in jobs],
                hint="Redis no longer holds it and no report came: queued again",
            )
            self._worker.release(jobs, "broker_lost", None)

    def sweep(self) -> None:
        """Delete staged files that no report will ask for: their job is not running in their
        batch any more (done by another delivery, failed, put back)."""
        try:
            names = [entry.name for entry in os.scandir(self._staging)]
        except FileNotFoundError:
            return
        running = {(job.id, batch) for batch, jobs in self.dispatched().items() for job in jobs}
        for name in names:
            found = owner(name)
            if found is not None and found in running:
                continue
            if found is None and _age(self._staging / name) < self._lease:
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
