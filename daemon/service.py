"""The service's lifecycle: start -> run -> drain -> stop, read top to bottom.

Threads: the watcher's own (events, rescans), the worker (the engine), and the main thread, which
runs intake (settled files -> rules -> journal), reloads, status and systemd's watchdog. Signal
handlers only set flags and wake the main thread.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from types import FrameType

import structlog

from daemon import events, rules, snapshots
from daemon.config import Config, load_config
from daemon.errors import ConfigError
from daemon.hooks import HookRunner
from daemon.journal import JobSpec, JobState, Journal, JournalError, SourceChangedError
from daemon.live import LiveState
from daemon.metrics import TextfileWriter
from daemon.notify import Notifier
from daemon.outputs import OUTPUT_MARKER, claim_output_folder, clean_stale_temporaries
from daemon.snapshots import SnapshotStore
from daemon.stability import Signature, StabilityTracker, stat_signature
from daemon.watcher import Watcher
from daemon.worker import Engine, Worker, settings_hash, still_planned
from engine.errors import StyleError
from engine.params import EngineConfig

log = structlog.get_logger()

STATUS_SECONDS = 2.0  # how often STATUS= is refreshed
STATE_CHECK_SECONDS = 2.0  # how often the service checks that its journal is still its own
# While the journal cannot be written (its disk full, a lock held by another program), intake
# pauses: it tries again this often, and says so in the log at most once per INTAKE_LOG_SECONDS.
INTAKE_RETRY_SECONDS = 5.0
INTAKE_LOG_SECONDS = 60.0
HEARTBEAT_SECONDS = 1.0  # how often live.json says the main loop is alive
# Settings that only take effect at start: a reload that changes them says a restart is needed.
RESTART_ONLY = ("input", "output", "state", "watch", "engine", "retry")


def real_engine(config: EngineConfig) -> Engine:
    from engine.stylizer import Stylizer

    return Stylizer(config)


class Service:
    def __init__(
        self,
        config_path: Path,
        *,
        engine_factory: Callable[[EngineConfig], Engine] = real_engine,
        notifier: Notifier | None = None,
        stop_grace: float = 30.0,
    ) -> None:
        self.config_path = config_path
        self.config: Config = load_config(
            config_path
        )  # a broken config fails here, before anything
        self._engine_factory = engine_factory
        self._notifier = notifier or Notifier.from_environment()
        self._stop_grace = stop_grace  # how long a running batch may finish before it is aborted
        self.stop_event = threading.Event()
        self._wake = threading.Event()  # wakes the main loop
        self._worker_wake = threading.Event()  # wakes the worker: new jobs
        self._reload_requested = False
        self._stop_now = False  # a second stop signal: abort the running batch at once
        self._tracker = StabilityTracker(self.config.watch.settle_seconds)
        # Signatures of files already taken in, so rescans do not redo intake for unchanged files.
        self._taken: dict[Path, Signature] = {}
        self._unmatched: set[PurePosixPath] = set()
        self._taken_lock = threading.Lock()
        self._state_lost: str | None = None  # why the service stopped: its journal is gone
        # Intake paused by a journal that cannot be written: (until, reason, last logged).
        self._intake_paused: tuple[float, str] | None = None
        self._intake_logged = -math.inf
        self._intake_announced = False
        self._scan_requested = False
        # Job and service events: the live state file, hooks and the metrics textfile listen.
        self.bus = events.EventBus()

    # -- signals: flags only ---------------------------------------------------------------------

    def request_stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        if self.stop_event.is_set():
            self._stop_now = True
        self.stop_event.set()
        self._wake.set()

    def request_reload(self, signum: int = signal.SIGHUP, frame: FrameType | None = None) -> None:
        self._reload_requested = True
        self._wake.set()

    def install_signal_handlers(self, early: Iterable[int] = ()) -> None:
        """Take over from the command line's start-up handlers; `early` are the signals that
        arrived before (while the config was read), handled now in their order."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        for signum in early:
            if signum == signal.SIGHUP:
                self.request_reload(signum)
            else:
                self.request_stop(signum)

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> None:
        """Start, serve until stopped, drain. Raises WeightsError/JournalError on a bad start."""
        config = self.config
        config.output.mkdir(parents=True, exist_ok=True)
        config.state.mkdir(parents=True, exist_ok=True)
        journal = Journal.open(
            config.state,
            max_attempts=config.retry.max_attempts,
            retry_for=config.retry.give_up_after,
        )
        live = LiveState(config.state, input_dir=config.input)
        hooks = HookRunner(lambda: self.config)
        textfile = None
        if config.metrics.textfile is not None:
            textfile = TextfileWriter(
                config.metrics.textfile, config.metrics.interval_seconds, journal, live.snapshot
            )
        for subscriber in (live, hooks):
            self.bus.subscribe(subscriber)
            subscriber.start()
        if textfile is not None:
            textfile.start()
        try:
            self._claim_output_folder(journal)
            self._serve(journal)
        finally:
            hooks.stop()
            if textfile is not None:
                textfile.stop()
            live.stop()
            journal.close()
            self._notifier.close()
            log.info("service_stopped")
        if self._state_lost is not None:
            raise JournalError(self._state_lost)

    def _serve(self, journal: Journal) -> None:
        config = self.config
        recovered = journal.recover()
        cleaned = clean_stale_temporaries(config.output)
        log.info(
            "service_starting",
            config=str(self.config_path),
            input=str(config.input),
            output=str(config.output),
            recovered_jobs=recovered,
            stale_temporaries=cleaned,
        )
        self.journal = journal
        if self.stop_event.is_set():
            return  # stopped while starting: nothing was taken, nothing to drain
        engine = self._engine_factory(config.engine.engine)
        if self.stop_event.is_set():
            engine.close()  # SIGTERM while the model loaded: no batch may start now
            return
        self._prepare_styles(engine, config)
        watcher = Watcher(config, self)
        worker = Worker(
            journal,
            engine,
            lambda: self.config,
            source_missing=self._source_missing,
            snapshots=SnapshotStore(config.state / snapshots.FOLDER),
            bus=self.bus,
        )
        worker_stop = threading.Event()
        worker_thread = threading.Thread(
            target=self._run_worker, args=(worker, worker_stop), name="stylewatch-worker"
        )
        try:
            watcher.start()
            found = watcher.scan()
            if self.stop_event.is_set():
                return  # the finally below stops the watcher; the worker never started
            worker_thread.start()
            log.info(
                "service_ready",
                mode=watcher.mode,
                files_found=found,
                queued=journal.queued_count(),
                # Where the model runs: `device: auto` falls back to the CPU when no GPU is seen.
                device=str(getattr(engine, "device", "unknown")),
                precision=str(getattr(engine, "precision", config.engine.engine.precision)),
                # True only on a GPU with engine.cuda_graphs on (a failed capture logs why).
                cuda_graphs=bool(getattr(getattr(engine, "graphs", None), "enabled", False)),
            )
            self.bus.emit(
                events.ServiceReady(
                    pid=os.getpid(),
                    device=str(getattr(engine, "device", "unknown")),
                    precision=str(getattr(engine, "precision", config.engine.engine.precision)),
                    input=str(config.input),
                    output=str(config.output),
                )
            )
            self._notifier.ready(self._status_text(journal))
            self._main_loop(journal, watcher, worker, worker_thread)
        finally:
            self._notifier.stopping()
            log.info("service_stopping")
            self.bus.emit(events.ServiceStopping(pid=os.getpid()))
            # The worker first: it must not take another batch while the watcher's threads are
            # being joined (seconds on a slow share).
            worker_stop.set()
            self._worker_wake.set()
            if self._state_lost is not None:
                worker.abort()  # its journal is gone: nothing it finishes could be recorded
            watcher.stop()
            if worker_thread.is_alive():
                self._drain(worker, worker_thread)
            engine.close()

    def _main_loop(
        self, journal: Journal, watcher: Watcher, worker: Worker, worker_thread: threading.Thread
    ) -> None:
        ping_every = self._notifier.watchdog_interval()
        next_ping = next_status = next_state_check = next_beat = 0.0
        was_healthy = True
        while not self.stop_event.is_set():
            if self._reload_requested:
                self._reload_requested = False
                self._reload(journal)
            if self._scan_requested:
                self._scan_requested = False
                watcher.scan()  # after a reload: files the new rules plan differently
            if time.monotonic() >= next_state_check:
                next_state_check = time.monotonic() + STATE_CHECK_SECONDS
                if self._check_state(journal):
                    break
            # Wake the worker once per round, not per file: a burst that settled together is
            # queued together and so can run as one batch.
            if self._intake_round(journal):
                self._worker_wake.set()
            now = time.monotonic()
            if now >= next_status:
                self._notifier.status(self._status_text(journal))
                next_status = now + STATUS_SECONDS
            if now >= next_beat:
                self.bus.emit(
                    events.ServiceHeartbeat(healthy=self._healthy(watcher, worker, worker_thread))
                )
                next_beat = now + HEARTBEAT_SECONDS
            if now >= next_ping:
                healthy = self._healthy(watcher, worker, worker_thread)
                if healthy and ping_every is not None:
                    self._notifier.watchdog()
                if healthy != was_healthy:
                    # Logged once per episode: systemd restarts the service if it lasts.
                    log.log(
                        logging.INFO if healthy else logging.ERROR,
                        "service_healthy" if healthy else "service_unhealthy",
                        watcher_alive=watcher.alive(),
                        worker_alive=worker_thread.is_alive(),
                        seconds_since_progress=round(now - worker.heartbeat, 1),
                    )
                    was_healthy = healthy
                next_ping = now + (ping_every or 1.0)
            self._wake.wait(self._sleep_time(min(next_status, next_beat), next_ping))
            self._wake.clear()

    def _drain(self, worker: Worker, worker_thread: threading.Thread) -> None:
        """Let the running batch finish within the grace time; a second signal, or the end of
        the grace time, aborts it at its next step (its jobs go back to the queue)."""
        if worker.busy:
            log.warning(
                "stop_waiting",
                sources=list(worker.current),
                grace_seconds=self._stop_grace,
                hint="the running batch may finish first; a second Ctrl-C (or SIGTERM) stops "
                "at once, and its photos resume from their last snapshot at the next start",
            )
        deadline = time.monotonic() + self._stop_grace
        while worker_thread.is_alive() and not self._stop_now and time.monotonic() < deadline:
            worker_thread.join(0.1)
        if worker_thread.is_alive():
            if self._stop_now:
                log.warning("stopping_now", sources=list(worker.current), reason="second signal")
            else:
                log.warning("aborting_batch", grace_seconds=self._stop_grace)
            worker.abort()
            worker_thread.join()

    def _run_worker(self, worker: Worker, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                worker.run(stop, self._worker_wake)
            except Exception:  # a journal or disk error: log it, wait, carry on
                log.exception("worker_error")
                # The batch that broke off is still marked running: it goes back to the queue
                # before the worker takes anything else, however long the journal needs.
                while not stop.wait(5.0) and not self._requeue_abandoned():
                    pass

    def _requeue_abandoned(self) -> bool:
        """Put the jobs of the batch that just broke off back in the queue; False when the
        journal still fails (the caller tries again).

        They are still marked running, and nothing would take them again before a restart. Only
        the worker thread runs jobs, so every running job belongs to that batch.
        """
        try:
            requeued = self.journal.recover()
        except JournalError as exc:
            log.warning("requeue_failed", error=str(exc), retry_in=5.0)
            return False
        if requeued:
            log.info("jobs_requeued", jobs=requeued, reason="worker_error")
        return True

    def _claim_output_folder(self, journal: Journal) -> None:
        """The output folder remembers the journal that writes it (OUTPUT_MARKER). Another
        journal's mark means this state folder is not the one that made these outputs (it was
        lost, deleted or replaced): starting would make every photo again as `~2` copies."""
        output = self.config.output
        try:
            owner = claim_output_folder(output, journal.id)
        except OSError as exc:
            # A full or read-only output disk must not keep the service from starting: its jobs
            # wait for the disk (retried), and the mark is written at the next start.
            log.warning("output_folder_unmarked", folder=str(output), error=str(exc))
            return
        if owner != journal.id:
            raise JournalError(
                f"the output folder {output} was written with another journal (id {owner}) than "
                f"{journal.path} (id {journal.id}): the state folder that made its outputs was "
                "lost or replaced. Restore it, and every photo stays done once; to start afresh "
                "instead (photos already done would be made again, as `~2` copies), remove "
                f"{output / OUTPUT_MARKER}"
            )

    def _check_state(self, journal: Journal) -> bool:
        """True when the journal is no longer this service's own (its state folder removed or
        the file replaced): the service stops, with exit 78, rather than split in two."""
        lost = journal.lost()
        if lost is None:
            return False
        self._state_lost = (
            f"the state folder's journal is gone ({lost}) while the service ran; it stopped so "
            "that no photo is processed twice. Restore the state folder from a backup, or, to "
            f"start afresh (photos already done would be done again), remove "
            f"{self.config.output / OUTPUT_MARKER} and start the service"
        )
        log.error("state_lost", reason=lost, hint=self._state_lost)
        self.stop_event.set()
        return True

    # -- what the watcher reports (called from its threads) -------------------------------------

    def seen(self, relpath: PurePosixPath) -> None:
        path = self.config.input / relpath
        signature = stat_signature(path)
        if signature is None:
            self._tracker.forget(path)
            return
        with self._taken_lock:
            if self._taken.get(path) == signature:
                return  # unchanged since intake: a rescan, or a metadata-free event
        if not self._tracker.is_pending(path):
            log.info(
                "file_settling",
                source=str(relpath),
                settle_seconds=self.config.watch.settle_seconds,
            )
        self._tracker.observe(path, signature)
        self._wake.set()

    def activity(self, relpath: PurePosixPath) -> None:
        self._tracker.activity(self.config.input / relpath)
        self._wake.set()

    def gone(self, relpath: PurePosixPath) -> None:
        path = self.config.input / relpath
        self._tracker.forget(path)
        with self._taken_lock:
            self._taken.pop(path, None)
        if _undecodable(relpath) is not None:
            return  # never queued (see _intake)
        cancelled = self.journal.cancel_source(
            str(relpath), "source removed before it was processed"
        )
        if cancelled:
            log.info("job_cancelled", source=str(relpath), jobs=cancelled, reason="source_removed")
            self.bus.emit(events.JobCancelled(str(relpath), "source_removed"))

    def _source_missing(self, source: str) -> None:
        """The worker found no file for a queued job (called from its thread). Forget that it was
        taken in: if the same file comes back (its folder was away), the rescan queues it again."""
        with self._taken_lock:
            self._taken.pop(self.config.input / source, None)

    # -- intake: a settled file becomes jobs ----------------------------------------------------

    def _intake_round(self, journal: Journal) -> int:
        """Take in every settled file; returns how many jobs were queued.

        When the journal cannot be written (its disk full, its lock held by another program),
        intake pauses: the files stay tracked, the round is tried again every
        INTAKE_RETRY_SECONDS, and the log and STATUS say so once a minute, not once per file.
        """
        now = time.monotonic()
        if self._intake_paused is not None and now < self._intake_paused[0]:
            return 0
        queued = 0
        due = self._tracker.due()
        for index, path in enumerate(due):
            try:
                queued += self._intake(journal, path)
            except JournalError as exc:
                # This file and the rest of the round wait; nothing is lost.
                for waiting in due[index:]:
                    with self._taken_lock:
                        self._taken.pop(waiting, None)
                    self._tracker.activity(waiting)
                self._pause_intake(str(exc), len(due) - index)
                return queued
        if self._intake_paused is not None and due:
            if self._intake_announced:
                # Said once per pause that was said: a disk that flaps (frees a little, fills
                # again) makes at most a pair of lines a minute.
                log.info("intake_resumed", after=self._intake_paused[1])
                self._intake_announced = False
            self._intake_paused = None
        return queued

    def _pause_intake(self, reason: str, files: int) -> None:
        now = time.monotonic()
        self._intake_paused = (now + INTAKE_RETRY_SECONDS, reason)
        if now - self._intake_logged >= INTAKE_LOG_SECONDS:
            self._intake_logged = now
            self._intake_announced = True
            log.warning(
                "intake_paused",
                error=reason,
                files_waiting=files,
                retry_every=INTAKE_RETRY_SECONDS,
                hint="new photos are taken in as soon as the journal can be written again",
            )

    def _intake(self, journal: Journal, path: Path) -> int:
        """A settled file: decide, fingerprint, queue. Returns how many jobs it queued."""
        config = self.config
        relpath = PurePosixPath(path.relative_to(config.input).as_posix())
        signature = stat_signature(path)
        if signature is None:
            return 0
        with self._taken_lock:
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
        return self._queue(journal, path, relpath, decision, signature)

    def _queue(
        self,
        journal: Journal,
        path: Path,
        relpath: PurePosixPath,
        decision: rules.Plan,
        signature: Signature,
    ) -> int:
        """One job per planned output, unless this content was already done in that style."""
        try:
            fingerprint = journal.fingerprint(str(relpath), path)
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
        for output in decision.outputs:
            spec = JobSpec(
                source=str(relpath),
                fingerprint=fingerprint,
                rule=decision.rule_index,
                style=output.style_name,
                settings_hash=settings_hash(output),
                output=str(output.relpath),
            )
            if journal.has_done(spec.source, spec.fingerprint, spec.style):
                # Already stylized in this style (perhaps under older settings): not redone.
                log.info("file_already_done", source=spec.source, style=spec.style)
                continue
            if journal.has_pending(spec.source, spec.fingerprint, spec.style, spec.settings_hash):
                continue  # queued (or failed) under the rule's old position: it stands
            job = journal.enqueue(spec)
            if job is not None:
                queued += 1
                log.info(
                    "job_queued",
                    source=spec.source,
                    rule=spec.rule,
                    style=spec.style,
                    output=spec.output,
                    job=job.id,
                )
                self.bus.emit(
                    events.JobQueued(job.id, spec.source, spec.rule, spec.style, spec.output)
                )
        return queued

    def _remember(self, path: Path, signature: Signature) -> None:
        with self._taken_lock:
            self._taken[path] = signature

    # -- reload, health, status ------------------------------------------------------------------

    def _reload(self, journal: Journal) -> None:
        self._notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error(
                "reload_refused", errors=str(exc).splitlines(), hint="the old config stays in force"
            )
            self._notifier.ready(f"reload refused: {len(exc.problems)} problem(s) in config")
            return
        old = self.config
        changed = [key for key in RESTART_ONLY if getattr(new, key) != getattr(old, key)]
        if changed:
            log.warning(
                "reload_needs_restart",
                settings=changed,
                hint="these keep their old values until `systemctl restart stylewatch`",
            )
            new = dataclasses.replace(new, **{key: getattr(old, key) for key in changed})
        self.config = new
        kept, cancelled = self._replan_queue(journal, new)
        with self._taken_lock:
            self._taken.clear()  # new rules may now match files that were unmatched
        self._unmatched.clear()
        # One scan takes every file in again under the new rules: what they plan anew is
        # queued, what was done stays done (journal.has_done), what is queued stays queued.
        self._scan_requested = True
        log.info(
            "config_reloaded",
            rules=len(new.rules),
            styles=len(new.styles),
            queued_kept=kept,
            queued_cancelled=cancelled,
        )
        self._notifier.ready()

    def _replan_queue(self, journal: Journal, config: Config) -> tuple[int, int]:
        """The reload's one pass over the queue: a queued job that the new config still plans
        (same style, same settings) stays; one it no longer plans is cancelled here, once,
        rather than by the worker when its turn comes. Returns (kept, cancelled)."""
        kept = cancelled = 0
        try:
            queued = journal.jobs(JobState.QUEUED)
            for job in queued:
                if still_planned(config, job) is not None:
                    kept += 1
                    continue
                if journal.cancel(job.id, "the config no longer plans this output"):
                    cancelled += 1
                    log.info(
                        "job_cancelled", source=job.source, style=job.style, reason="config_changed"
                    )
                    self.bus.emit(events.JobCancelled(job.source, "config_changed", job=job.id))
        except JournalError as exc:
            # The worker checks each job against the config before running it anyway.
            log.warning("reload_replan_failed", error=str(exc))
        return kept, cancelled

    def _healthy(self, watcher: Watcher, worker: Worker, worker_thread: threading.Thread) -> bool:
        """Alive and not stuck: a busy worker must show progress within engine.stuck_seconds."""
        if not (watcher.alive() and worker_thread.is_alive()):
            return False
        stuck_after = self.config.engine.stuck_seconds
        return not worker.busy or time.monotonic() - worker.heartbeat < stuck_after

    def _prepare_styles(self, engine: Engine, config: Config) -> None:
        """Load every style's paintings now, so a broken one is reported at start."""
        for rule in config.rules:
            for target in rule.targets:
                try:
                    engine.prepare_style(target.style, target.settings.params)
                except StyleError as exc:
                    log.error("style_unusable", style=target.style_name, error=str(exc))

    def _status_text(self, journal: Journal) -> str:
        try:
            counts = {state.value: n for state, n in journal.counts().items()}
        except JournalError as exc:
            return f"journal unreadable: {exc}"
        text = (
            f"{counts.get('queued', 0)} queued, {counts.get('running', 0)} running, "
            f"{counts.get('done', 0)} done, {counts.get('failed', 0)} failed"
        )
        if self._intake_paused is not None:
            text += f"; intake paused: {self._intake_paused[1]}"
        return text

    def _sleep_time(self, next_status: float, next_ping: float | None) -> float:
        now = time.monotonic()
        wake_at = [next_status, now + STATE_CHECK_SECONDS]
        if next_ping is not None:
            wake_at.append(next_ping)
        deadline = self._tracker.next_deadline()
        if deadline is not None:
            wake_at.append(deadline)
        return max(0.01, min(wake_at) - now)


def _undecodable(relpath: PurePosixPath) -> str | None:
    """A printable form of a name that is not valid UTF-8 (bytes from an old camera or share),
    or None for a good name. The journal keeps names as SQLite text, which must be UTF-8."""
    text = str(relpath)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return None
