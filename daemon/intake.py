"""Intake: settled files become work orders in the journal, on a thread of its own.

The watcher reports files (seen, activity, gone: daemon/watcher.py's WatchSink); once a file has
settled, the intake decides once what to do with it (rules.decide), fingerprints it, and queues
one work order per output. Fingerprinting reads whole files, and a share can be slow: none of it
runs on the service's main thread, which answers systemd's watchdog. Reloads (a new config, its
pass over the queue and the rescan) and the adoption of a journal's older jobs happen here too.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import structlog

from daemon import events, rules
from daemon.config import Config
from daemon.journal import Job, JobState, Journal, JournalError, SourceChangedError
from daemon.orders import PaintingIds, WorkOrder
from daemon.stability import Signature, StabilityTracker, stat_signature

__all__ = [
    "INTAKE_LOG_SECONDS",
    "INTAKE_RETRY_SECONDS",
    "Intake",
    "adopt",
    "replan",
    "still_planned",
]

log = structlog.get_logger()

# While the journal cannot be written (its disk full, a lock held by another program), intake
# pauses: it tries again this often, and says so in the log at most once per INTAKE_LOG_SECONDS.
INTAKE_RETRY_SECONDS = 5.0
INTAKE_LOG_SECONDS = 60.0
COUNTS_SECONDS = 2.0  # how often the queue's counts are read for STATUS and the live state


def still_planned(config: Config, job: Job) -> WorkOrder | None:
    """The order that `config` plans for `job`'s photo in its style and settings, or None.

    The rule's position and name do not matter: a rule moved in the list, one inserted above it,
    or a name given to it plans the same work, and the queued job stands.
    """
    decision = rules.decide(config, PurePosixPath(job.source))
    if not isinstance(decision, rules.Plan):
        return None
    for order in rules.orders(decision, job.source, job.fingerprint):
        if order.style == job.style and order.settings_hash == job.settings_hash:
            return order
    return None


def _legacy_settings_hash(order: WorkOrder) -> str:
    """The identity that schema 2 (the release before work orders) gave the same settings."""
    key = repr((order.params, order.style_spec.images, order.format, order.quality))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def adopt(journal: Journal, config: Config, bus: events.EventBus) -> int:
    """Give the queued and done jobs of an upgraded journal (schema 2, no orders) the orders
    the config plans for them; returns how many got one. A queued job the config no longer plans
    is cancelled, as a reload would; a done job stays done either way (the intake never redoes
    a photo done in its style)."""
    adopted = 0
    for job in journal.unadopted():
        order = None
        decision = rules.decide(config, PurePosixPath(job.source))
        if isinstance(decision, rules.Plan):
            for candidate in rules.orders(decision, job.source, job.fingerprint):
                if (
                    candidate.style == job.style
                    and _legacy_settings_hash(candidate) == job.settings_hash
                ):
                    order = candidate
        if journal.adopt(job.id, order):
            adopted += 1
        elif job.state is JobState.QUEUED:
            bus.emit(events.JobCancelled(job.source, "config_changed", job=job.id, style=job.style))
    if adopted:
        log.info("journal_jobs_adopted", jobs=adopted)
    return adopted


class Intake:
    """The watcher's sink and the thread that queues settled files."""

    def __init__(
        self,
        journal: Journal,
        config: Callable[[], Config],
        *,
        bus: events.EventBus,
        queued: Callable[[], None],
        reload: Callable[[], None],
    ) -> None:
        self._journal = journal
        self._config = config
        self._bus = bus
        self._queued = queued  # wakes the workers: new jobs
        self._reload = reload  # the service's reload, run on this thread
        self._tracker = StabilityTracker(config().watch.settle_seconds)
        # Signatures of files already taken in, so rescans do not redo intake for unchanged files.
        self._taken: dict[Path, Signature] = {}
        self._unmatched: set[PurePosixPath] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reload_requested = False
        self._scan: Callable[[], int] | None = None
        self._scan_requested = False
        self._paintings = PaintingIds()
        self._pause = _Pause()
        self._thread: threading.Thread | None = None

    # -- the thread ------------------------------------------------------------------------------

    def start(self, scan: Callable[[], int]) -> None:
        self._scan = scan
        self._thread = threading.Thread(target=self._run, name="stylewatch-intake", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def request_scan(self) -> None:
        self._scan_requested = True
        self._wake.set()

    def _run(self) -> None:
        next_counts = 0.0
        while not self._stop.is_set():
            try:
                if self._reload_requested:
                    self._reload_requested = False
                    self._reload()
                if self._scan_requested and self._scan is not None:
                    self._scan_requested = False
                    self._scan()  # after a reload: files the new rules plan differently
                # Wake the workers once per round, not per file: a burst that settled together is
                # queued together and so can run as one batch.
                if self.round():
                    self._queued()
                if time.monotonic() >= next_counts:
                    next_counts = time.monotonic() + COUNTS_SECONDS
                    publish_counts(self._journal, self._bus)
            except Exception:  # the intake's boundary: log, wait a moment, carry on
                log.exception("intake_error")
                self._stop.wait(INTAKE_RETRY_SECONDS)
            deadline = self._tracker.next_deadline()
            wait = COUNTS_SECONDS if deadline is None else deadline - time.monotonic()
            self._wake.wait(max(0.01, min(wait, COUNTS_SECONDS)))
            self._wake.clear()

    # -- what the watcher reports (called from its threads) -------------------------------------

    def seen(self, relpath: PurePosixPath) -> None:
        config = self._config()
        path = config.input / relpath
        signature = stat_signature(path)
        if signature is None:
            self._tracker.forget(path)
            return
        with self._lock:
            if self._taken.get(path) == signature:
                return  # unchanged since intake: a rescan, or a metadata-free event
        if not self._tracker.is_pending(path):
            log.info(
                "file_settling", source=str(relpath), settle_seconds=config.watch.settle_seconds
            )
        self._tracker.observe(path, signature)
        self._wake.set()

    def activity(self, relpath: PurePosixPath) -> None:
        self._tracker.activity(self._config().input / relpath)
        self._wake.set()

    def gone(self, relpath: PurePosixPath) -> None:
        path = self._config().input / relpath
        self._tracker.forget(path)
        with self._lock:
            self._taken.pop(path, None)
        if _undecodable(relpath) is not None:
            return  # never queued (see _take_in)
        cancelled = self._journal.cancel_source(
            str(relpath), "source removed before it was processed"
        )
        if cancelled:
            self._bus.emit(events.JobCancelled(str(relpath), "source_removed", jobs=cancelled))

    def source_missing(self, source: str) -> None:
        """A worker found no file for a queued job. Forget that it was taken in: if the same file
        comes back (its folder was away), the rescan queues it again."""
        with self._lock:
            self._taken.pop(self._config().input / source, None)

    def forget_all(self) -> None:
        """After a reload: new rules may now match files that were unmatched."""
        with self._lock:
            self._taken.clear()
        self._unmatched.clear()

    # -- a settled file becomes jobs ------------------------------------------------------------

    @property
    def paused(self) -> str | None:
        """Why intake is paused (the journal cannot be written), or None."""
        return self._pause.reason

    def round(self) -> int:
        """Take in every settled file; returns how many jobs were queued.

        When the journal cannot be written (its disk full, its lock held by another program),
        intake pauses: the files stay tracked, the round is tried again every
        INTAKE_RETRY_SECONDS, and the log and STATUS say so once a minute, not once per file.
        """
        if self._pause.waiting():
            return 0
        queued = 0
        due = self._tracker.due()
        for index, path in enumerate(due):
            try:
                queued += self._take_in(path)
            except JournalError as exc:
                # This file and the rest of the round wait; nothing is lost.
                for waiting in due[index:]:
                    with self._lock:
                        self._taken.pop(waiting, None)
                    self._tracker.activity(waiting)
                self._pause.pause(str(exc), len(due) - index)
                return queued
        if due:
            self._pause.resume()
        return queued

    def _take_in(self, path: Path) -> int:
        """A settled file: decide, fingerprint, queue. Returns how many jobs it queued."""
        config = self._config()
        relpath = PurePosixPath(path.relative_to(config.input).as_posix())
        signature = stat_signature(path)
        if signature is None:
            return 0
        with self._lock:
            if self._taken.get(path) == signature:
                # Opened or closed without a change (our own worker reading it, a viewer).
                return 0
        shown = _undecodable(relpath)
        if shown is not None:
            log.warning(
                "file_ignored",
                source=shown,
                reason="undecodable_name",
                detail="the name is not valid UTF-8, which the journal needs; rename the file",
            )
            self._remember(path, signature)
            return 0
        decision = rules.decide(config, relpath)
        if isinstance(decision, rules.Ignored):
            log.info(
                "file_ignored", source=str(relpath), reason=decision.reason, detail=decision.detail
            )
            self._remember(path, signature)
            return 0
        if isinstance(decision, rules.Unmatched):
            if relpath not in self._unmatched:
                self._unmatched.add(relpath)
                log.info("file_unmatched", source=str(relpath), hint="no rule matches this path")
            self._remember(path, signature)
            return 0
        return self._queue(path, relpath, decision, signature)

    def _queue(
        self, path: Path, relpath: PurePosixPath, decision: rules.Plan, signature: Signature
    ) -> int:
        """One job per planned output, unless this content was already done in that style."""
        try:
            fingerprint = self._journal.fingerprint(str(relpath), path)
        except SourceChangedError:
            self._tracker.activity(path)  # still being written after all: wait again
            return 0
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("source_unreadable", source=str(relpath), error=str(exc))
            return 0
        self._remember(path, signature)
        queued = 0
        for order in rules.orders(decision, str(relpath), fingerprint, self._paintings):
            if self._journal.has_done(order.source, order.fingerprint, order.style):
                # Already stylized in this style (perhaps under older settings): not redone.
                log.info("file_already_done", source=order.source, style=order.style)
                continue
            if self._journal.has_pending(
                order.source, order.fingerprint, order.style, order.settings_hash
            ):
                continue  # queued (or failed) under another rule name: it stands
            job = self._journal.enqueue(order)
            if job is not None:
                queued += 1
                self._bus.emit(
                    events.JobQueued(job.id, order.source, order.rule, order.style, order.output)
                )
        return queued

    def _remember(self, path: Path, signature: Signature) -> None:
        with self._lock:
            self._taken[path] = signature


def publish_counts(journal: Journal, bus: events.EventBus) -> None:
    """The queue's counts for STATUS (a QueueCounts event), read off the main thread."""
    try:
        counts = {state.value: n for state, n in journal.counts().items()}
    except JournalError as exc:
        bus.emit(events.QueueCounts({}, error=str(exc)))
        return
    bus.emit(events.QueueCounts(counts))


class _Pause:
    """Intake paused by a journal that cannot be written: when to try again, and what the log
    said of it."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._until = 0.0
        self._logged = -math.inf
        self._announced = False

    def waiting(self) -> bool:
        return self.reason is not None and time.monotonic() < self._until

    def pause(self, reason: str, files: int) -> None:
        now = time.monotonic()
        self.reason, self._until = reason, now + INTAKE_RETRY_SECONDS
        if now - self._logged >= INTAKE_LOG_SECONDS:
            self._logged = now
            self._announced = True
            log.warning(
                "intake_paused",
                error=reason,
                files_waiting=files,
                retry_every=INTAKE_RETRY_SECONDS,
                hint="new photos are taken in as soon as the journal can be written again",
            )

    def resume(self) -> None:
        if self.reason is not None and self._announced:
            # Said once per pause that was said: a disk that flaps (frees a little, fills
            # again) makes at most a pair of lines a minute.
            log.info("intake_resumed", after=self.reason)
            self._announced = False
        self.reason = None


def replan(journal: Journal, config: Config, bus: events.EventBus) -> tuple[int, int]:
    """A reload's one pass over the queue: a queued job that the new config still plans (same
    style, same settings) stays; one it no longer plans is cancelled here, once. Returns (kept,
    cancelled)."""
    kept = cancelled = 0
    try:
        for job in journal.jobs(JobState.QUEUED):
            if job.order is None or still_planned(config, job) is not None:
                kept += 1
                continue
            if journal.cancel(job.id, "the config no longer plans this output"):
                cancelled += 1
                bus.emit(
                    events.JobCancelled(job.source, "config_changed", job=job.id, style=job.style)
                )
    except JournalError as exc:
        log.warning("reload_replan_failed", error=str(exc))
    return kept, cancelled


def _undecodable(relpath: PurePosixPath) -> str | None:
    """A printable form of a name that is not valid UTF-8 (bytes from an old camera or share),
    or None for a good name. The journal keeps names as SQLite text, which must be UTF-8."""
    text = str(relpath)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return None
