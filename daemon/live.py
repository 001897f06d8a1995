"""The service's live state, published as one JSON file in the state folder for `stylewatch web`.

The stylizing service never listens on a socket (its unit has no network at all): what the web
process needs beyond the journal (is the service alive, is its model loaded, what is running and
how far along) it reads from `state/live.json`. The file is replaced atomically, so a reader sees
a whole old version or a whole new one. It is written by a thread of its own, soon after each
event and at most every PUBLISH_SECONDS, so that emitting (from the worker) never waits for a
disk; the service's main loop emits a heartbeat every second, so a stale `heartbeat` means a
stopped or stuck service.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from daemon import events
from daemon.outputs import TEMP_MARKER, write_atomic

__all__ = ["LIVE_NAME", "LiveState", "Running", "read_live", "remove_stale_temporaries"]

log = structlog.get_logger()

LIVE_NAME = "live.json"
LIVE_VERSION = 1
# Progress reports arrive at every optimisation step (many a second at small sizes); the file is
# rewritten at most this often.
PUBLISH_SECONDS = 0.25


@dataclass
class Running:
    job: int
    source: str
    style: str
    started: float
    scale: int = 0
    scales: int = 1
    step: int = 0
    steps: int = 1
    seconds: float = 0.0


class LiveState:
    """An event subscriber that keeps what `stylewatch web` shows and writes it to live.json."""

    def __init__(
        self,
        state_dir: Path,
        *,
        input_dir: Path | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.path = state_dir / LIVE_NAME
        # Looked at from this thread, never the service's main loop: a stat on a share that
        # hangs must not hold up systemd's watchdog pings.
        self._input_dir = input_dir
        self._wall = wall
        self._lock = threading.Lock()
        self._ready = False
        self._stopping = False
        self._healthy = True
        self._input_reachable = True
        self._device = ""
        self._precision = ""
        self._heartbeat = wall()
        self._running: dict[int, Running] = {}
        self._write_failed = False
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._publish, name="stylewatch-live", daemon=True)

    def start(self) -> None:
        """Start publishing, at once: a file left by the last run then says `starting`."""
        remove_stale_temporaries(self.path)
        self._dirty.set()
        self._thread.start()

    def stop(self) -> None:
        """Write the last state (the service stopping) and end the thread."""
        self._stop.set()
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join(10.0)

    def __call__(self, event: events.Event) -> None:
        with self._lock:
            self._apply(event)
        self._dirty.set()

    def _publish(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            self._dirty.clear()
            self.publish()
            self._stop.wait(PUBLISH_SECONDS)
        self.publish()

    def publish(self) -> None:
        reachable = self._input_dir is None or self._input_dir.is_dir()
        with self._lock:
            self._input_reachable = reachable
            snapshot = self.snapshot()
        self._write(snapshot)

    def _apply(self, event: events.Event) -> None:
        if isinstance(event, events.ServiceReady):
            self._ready, self._stopping = True, False
            self._device, self._precision = event.device, event.precision
            self._heartbeat = event.at
        elif isinstance(event, events.ServiceStopping):
            self._stopping = True
            self._heartbeat = event.at
        elif isinstance(event, events.ServiceHeartbeat):
            self._healthy = event.healthy
            self._heartbeat = event.at
        elif isinstance(event, events.JobStarted):
            self._running[event.job] = Running(
                event.job,
                event.source,
                event.style,
                event.at,
                scales=event.scales,
                steps=event.steps,
            )
        elif isinstance(event, events.JobProgress):
            for job in event.jobs:
                running = self._running.get(job)
                if running is not None:
                    running.scale, running.scales = event.scale, event.scales
                    running.step, running.steps = event.step, event.steps
                    running.seconds = event.seconds
        elif isinstance(event, events.JobDone | events.JobFailed | events.JobRetry):
            self._running.pop(event.job, None)
        elif isinstance(event, events.JobsReleased):
            for job in event.jobs:
                self._running.pop(job, None)
        elif isinstance(event, events.JobCancelled):
            self._running.pop(event.job or 0, None)  # job None: queued ones, none running

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": LIVE_VERSION,
            "pid": os.getpid(),
            "heartbeat": self._heartbeat,
            "written": self._wall(),
            "ready": self._ready and not self._stopping,
            "model_loaded": self._ready,
            "stopping": self._stopping,
            "healthy": self._healthy,
            "input_reachable": self._input_reachable,
            "device": self._device,
            "precision": self._precision,
            "running": [
                {
                    "job": r.job,
                    "source": r.source,
                    "style": r.style,
                    "scale": r.scale,
                    "scales": r.scales,
                    "step": r.step,
                    "steps": r.steps,
                    "percent": round(100.0 * r.step / max(1, r.steps), 1),
                    "seconds": round(r.seconds, 1),
                }
                for r in self._running.values()
            ],
        }

    def _write(self, snapshot: dict[str, Any]) -> None:
        try:
            write_atomic(self.path, json.dumps(snapshot).encode(), overwrite=True)
        except OSError as exc:
            # The page shows the service as away; the service itself goes on. Logged once.
            if not self._write_failed:
                log.warning("live_state_not_written", path=str(self.path), error=str(exc))
            self._write_failed = True
        else:
            self._write_failed = False


def remove_stale_temporaries(path: Path) -> None:
    """Temporaries of `path` that a killed process left beside it (write_atomic's names)."""
    for stale in path.parent.glob(f".{path.name}.*{TEMP_MARKER}"):
        try:
            stale.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("stale_temporary_not_removed", path=str(stale), error=str(exc))


def read_live(state_dir: Path) -> dict[str, Any] | None:
    """The last live state the service published, or None (never ran, or unreadable)."""
    try:
        data = json.loads((state_dir / LIVE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
