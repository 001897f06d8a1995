"""The service's lifecycle: start -> run -> drain -> stop, read top to bottom.

Three parts (see the README's picture): the intake (daemon/intake.py: watcher events -> settled
files -> work orders in the journal, on its own thread), the pool (daemon/pool.py: one worker
process per device, each fed by a worker thread here that owns outputs and the journal's
completion), and this lifecycle, whose main thread only answers signals, systemd's watchdog and
STATUS, and checks that the journal is still its own. Signal handlers only set flags and wake it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType

import structlog

from daemon import events
from daemon.config import Config, load_config
from daemon.coordinator import Coordinator
from daemon.errors import ConfigError
from daemon.hooks import HookRunner
from daemon.intake import Intake, adopt, replan
from daemon.journal import Journal, JournalError
from daemon.live import LiveState
from daemon.metrics import TextfileWriter
from daemon.notify import Notifier
from daemon.outputs import OUTPUT_MARKER, claim_output_folder, clean_stale_temporaries
from daemon.pool import EngineFactory, Pool, real_engine
from daemon.watcher import Watcher

log = structlog.get_logger()

STATUS_SECONDS = 2.0  # how often STATUS= is refreshed
STATE_CHECK_SECONDS = 2.0  # how often the service checks that its journal is still its own
HEARTBEAT_SECONDS = 1.0  # how often live.json says the main loop is alive
# Settings that only take effect at start: a reload that changes them says a restart is needed.
RESTART_ONLY = ("input", "output", "state", "watch", "engine", "retry", "broker")


class StatusBoard:
    """sd_notify's STATUS line, kept up to date from events (the queue's counts, workers going
    down and up); the main loop only reads `text`."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._error: str | None = None
        self._down: dict[str, str] = {}
        self.paused: str | None = None  # set by the service from the intake
        self.changed: Callable[[], None] | None = None  # wakes the main loop to send it

    def __call__(self, event: events.Event) -> None:
        if self.changed is not None and isinstance(event, events.WorkerDown | events.WorkerUp):
            self.changed()
        if isinstance(event, events.QueueCounts):
            self._error = event.error
            if event.error is None:
                self._counts = dict(event.counts)
        elif isinstance(event, events.WorkerDown):
            self._down[event.worker] = event.reason
        elif isinstance(event, events.WorkerUp):
            self._down.pop(event.worker, None)

    @property
    def text(self) -> str:
        if self._error is not None:
            return f"journal unreadable: {self._error}"
        counts = self._counts
        text = (
            f"{counts.get('queued', 0)} queued, {counts.get('running', 0)} running, "
            f"{counts.get('done', 0)} done, {counts.get('failed', 0)} failed"
        )
        if self._down:
            text += f"; restarting {', '.join(sorted(self._down))}"
        if self.paused is not None:
            text += f"; intake paused: {self.paused}"
        return text


class Service:
    def __init__(
        self,
        config_path: Path,
        *,
        engine_factory: EngineFactory = real_engine,
        notifier: Notifier | None = None,
        stop_grace: float = 30.0,
    ) -> None:
        self.config_path = config_path
        # A broken config fails here, before anything.
        self.config: Config = load_config(config_path)
        self._engine_factory = engine_factory
        self._notifier = notifier or Notifier.from_environment()
        self._stop_grace = stop_grace  # how long a running batch may finish before it is aborted
        self.stop_event = threading.Event()
        self._wake = threading.Event()  # wakes the main loop
        self._pool: Pool | Coordinator | None = None
        self._reload_requested = False
        self._stop_now = False  # a second stop signal: abort the running batches at once
        self._state_lost: str | None = None  # why the service stopped: its journal is gone
        # Job, worker and service events: the live state file, hooks, the metrics textfile and
        # STATUS listen.
        self.bus = events.EventBus()
        self.status = StatusBoard()
        self.status.changed = self._wake.set
        self._intake: Intake | None = None

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
        self.bus.subscribe(self.status)
        for subscriber in (live, hooks):
            self.bus.subscribe(subscriber)
            subscriber.start()
        if textfile is not None:
            textfile.start()
        try:
            claim_output(journal, config.output)
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
        # With a broker, dispatched jobs stay running: their reports may wait in Redis.
        recovered = journal.recover() if config.broker.url is None else 0
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
        adopt(journal, config, self.bus)  # jobs of a journal from before work orders
        if self.stop_event.is_set():
            return  # stopped while starting: nothing was taken, nothing to drain
        intake = Intake(
            journal,
            lambda: self.config,
            bus=self.bus,
            queued=self._wake_workers,
            reload=self._reload,
        )
        self._intake = intake
        pool = workers(self, journal, intake)
        self._pool = pool
        pool.start()  # the models load (or the broker's lease is taken); a refusal raises here
        if self.stop_event.is_set():
            pool.close()  # SIGTERM while the models loaded: no batch may start now
            return
        watcher = Watcher(config, intake)
        try:
            watcher.start()
            found = watcher.scan()
            if self.stop_event.is_set():
                return  # the finally below stops the watcher; no worker started
            pool.run()
            intake.start(scan=watcher.scan)
            log.info(
                "service_ready",
                mode=watcher.mode,
                files_found=found,
                queued=journal.queued_count(),
                workers=len(pool.slots),
                # Where the models run: `device: auto` falls back to the CPU when no GPU is seen.
                device=pool.device,
                precision=pool.precision,
                # True only on a GPU with engine.cuda_graphs on (a failed capture logs why).
                cuda_graphs=pool.graphs,
            )
            self.bus.emit(
                events.ServiceReady(
                    pid=os.getpid(),
                    device=pool.device,
                    precision=pool.precision,
                    input=str(config.input),
                    output=str(config.output),
                )
            )
            self._notifier.ready(self.status.text)
            self._main_loop(journal, watcher, intake, pool)
        finally:
            self._notifier.stopping()
            log.info("service_stopping")
            self.bus.emit(events.ServiceStopping(pid=os.getpid()))
            # The workers first: they must not take another batch while the watcher's threads
            # are being joined (seconds on a slow share).
            pool.stop()
            if self._state_lost is not None:
                pool.abort()  # its journal is gone: nothing they finish could be recorded
            intake.stop()
            watcher.stop()
            drain(pool, self._stop_grace, lambda: self._stop_now)
            pool.close()

    def _main_loop(
        self, journal: Journal, watcher: Watcher, intake: Intake, pool: Pool | Coordinator
    ) -> None:
        ping_every = self._notifier.watchdog_interval()
        next_ping = next_status = next_state_check = next_beat = 0.0
        was_healthy = True
        sent = ""
        while not self.stop_event.is_set():
            if self._reload_requested:
                self._reload_requested = False
                intake.request_reload()  # read and applied on the intake's thread
            if time.monotonic() >= next_state_check:
                next_state_check = time.monotonic() + STATE_CHECK_SECONDS
                # A journal no longer its own (the state folder removed, the file replaced):
                # the service stops, with exit 78, rather than split in two.
                self._state_lost = state_lost(journal, self.config.output)
                if self._state_lost is not None:
                    self.stop_event.set()
                    break
            now = time.monotonic()
            self.status.paused = intake.paused
            text = self.status.text
            if now >= next_status or text != sent:  # a change (a worker down) is told at once
                self._notifier.status(text)
                sent, next_status = text, now + STATUS_SECONDS
            healthy = watcher.alive() and intake.alive() and pool.alive()
            if now >= next_beat:
                self.bus.emit(events.ServiceHeartbeat(healthy=healthy))
                next_beat = now + HEARTBEAT_SECONDS
            if now >= next_ping:
                if healthy and ping_every is not None:
                    self._notifier.watchdog()
                if healthy != was_healthy:
                    # Logged once per episode: systemd restarts the service if it lasts.
                    log.log(
                        logging.INFO if healthy else logging.ERROR,
                        "service_healthy" if healthy else "service_unhealthy",
                        watcher_alive=watcher.alive(),
                        intake_alive=intake.alive(),
                        workers_alive=pool.alive(),
                    )
                    was_healthy = healthy
                next_ping = now + (ping_every or 1.0)
            wake_at = min(next_status, next_beat, next_ping, now + STATE_CHECK_SECONDS)
            self._wake.wait(max(0.01, wake_at - time.monotonic()))
            self._wake.clear()

    def _wake_workers(self) -> None:
        if self._pool is not None:
            self._pool.wake()

    # -- reload: on the intake's thread ---------------------------------------------------------

    def _reload(self) -> None:
        self._notifier.reloading()
        try:
            new = reloaded(self.config_path, self.config)
        except ConfigError as exc:
            self._notifier.ready(f"reload refused: {len(exc.problems)} problem(s) in config")
            return
        self.config = new
        assert self._intake is not None
        kept, cancelled = replan(self.journal, new, self.bus)
        self._intake.forget_all()
        # One scan takes every file in again under the new rules: what they plan anew is
        # queued, what was done stays done (journal.has_done), what is queued stays queued.
        self._intake.request_scan()
        log.info(
            "config_reloaded",
            rules=len(new.rules),
            styles=len(new.styles),
            queued_kept=kept,
            queued_cancelled=cancelled,
        )
        self._notifier.ready()


def workers(service: Service, journal: Journal, intake: Intake) -> Pool | Coordinator:
    """The local pool, or with `broker.url` the coordinator that feeds workers on other hosts
    through Redis (daemon/coordinator.py)."""
    if service.config.broker.url is not None:
        return Coordinator(
            journal,
            lambda: service.config,
            bus=service.bus,
            source_missing=intake.source_missing,
            lost=lambda why: lose_lease(service, why),
            stopping=service.stop_event.is_set,
        )
    return Pool(
        journal,
        lambda: service.config,
        engine_factory=service._engine_factory,
        bus=service.bus,
        source_missing=intake.source_missing,
    )


def lose_lease(service: Service, why: str) -> None:
    """Another coordinator took over: the service stops (exit 78), as with a lost journal."""
    service._state_lost = why
    service.stop_event.set()
    service._wake.set()


def reloaded(path: Path, old: Config) -> Config:
    """The config at `path` read again, with the settings that need a restart kept as they
    were (and said so). Raises ConfigError, logged: the old config stays in force."""
    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error(
            "reload_refused", errors=str(exc).splitlines(), hint="the old config stays in force"
        )
        raise
    changed = [key for key in RESTART_ONLY if getattr(new, key) != getattr(old, key)]
    if changed:
        log.warning(
            "reload_needs_restart",
            settings=changed,
            hint="these keep their old values until `systemctl restart stylewatch`",
        )
        new = dataclasses.replace(new, **{key: getattr(old, key) for key in changed})
    return new


def claim_output(journal: Journal, output: Path) -> None:
    """The output folder remembers the journal that writes it (OUTPUT_MARKER). Another
    journal's mark means this state folder is not the one that made these outputs (it was
    lost, deleted or replaced): starting would make every photo again as `~2` copies."""
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


def state_lost(journal: Journal, output: Path) -> str | None:
    """Why the service must stop (logged), or None while its journal is still its own."""
    lost = journal.lost()
    if lost is None:
        return None
    why = (
        f"the state folder's journal is gone ({lost}) while the service ran; it stopped so "
        "that no photo is processed twice. Restore the state folder from a backup, or, to "
        f"start afresh (photos already done would be done again), remove "
        f"{output / OUTPUT_MARKER} and start the service"
    )
    log.error("state_lost", reason=lost, hint=why)
    return why


def drain(pool: Pool | Coordinator, grace: float, hurry: Callable[[], bool]) -> None:
    """Let the running batches finish within the grace time; a second signal, or the end of
    the grace time, aborts them at their next step (their jobs go back to the queue)."""
    busy = pool.busy()
    if busy:
        log.warning(
            "stop_waiting",
            sources=busy,
            grace_seconds=grace,
            hint="the running batch may finish first; a second Ctrl-C (or SIGTERM) stops "
            "at once, and its photos resume from their last snapshot at the next start",
        )
    deadline = time.monotonic() + grace
    while not hurry() and time.monotonic() < deadline:
        if pool.join(0.1):
            return
    if not pool.join(0):
        if hurry():
            log.warning("stopping_now", sources=pool.busy(), reason="second signal")
        else:
            log.warning("aborting_batch", grace_seconds=grace)
        pool.abort()
        pool.join()
