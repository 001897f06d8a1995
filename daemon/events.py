"""Job and service events: typed values emitted once, and the bus that hands them to subscribers.

The worker and the service emit each event where it happens, beside the log line that says the
same thing; the live state file (daemon/live.py), the textfile metrics and the hooks subscribe.
Paths in events are relative to the input and output folders, as in the journal and the logs.
Emitting never blocks on a subscriber's I/O beyond the subscriber's own call: the ones that do
slow work (hooks) hand it to their own thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

__all__ = [
    "Event",
    "EventBus",
    "JobCancelled",
    "JobDone",
    "JobFailed",
    "JobProgress",
    "JobQueued",
    "JobRetry",
    "JobStarted",
    "JobsReleased",
    "QueueCounts",
    "ServiceHeartbeat",
    "ServiceReady",
    "ServiceStopping",
    "WorkerDown",
    "WorkerUp",
]

log = structlog.get_logger()


@dataclass(frozen=True)
class Event:
    at: float = field(default_factory=time.time, kw_only=True)  # wall-clock epoch seconds


@dataclass(frozen=True)
class ServiceReady(Event):
    pid: int
    device: str
    precision: str
    input: str  # absolute folders, for the live state's readers
    output: str


@dataclass(frozen=True)
class ServiceStopping(Event):
    pid: int


@dataclass(frozen=True)
class ServiceHeartbeat(Event):
    """The main loop is alive (about once a second); `healthy` as told to systemd's watchdog."""

    healthy: bool


@dataclass(frozen=True)
class JobQueued(Event):
    job: int
    source: str
    rule: str  # the rule's name
    style: str
    output: str


@dataclass(frozen=True)
class JobStarted(Event):
    job: int
    source: str
    style: str
    steps: int
    scales: int


@dataclass(frozen=True)
class JobProgress(Event):
    """One engine progress report for a batch: the same numbers for each of its jobs."""

    jobs: tuple[int, ...]
    scale: int
    scales: int
    step: int
    steps: int
    seconds: float


@dataclass(frozen=True)
class JobDone(Event):
    job: int
    source: str
    output: str  # the path actually written, relative to the output folder
    rule: str  # the rule's name
    style: str
    seconds: float
    # What the `job_done` log line says beside: size, steps, device, schedule, reused, ...
    details: Mapping[str, object] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class JobFailed(Event):
    """Failed for good: `stylewatch retry` or the dashboard may queue it again."""

    job: int
    source: str
    output: str  # the planned output, relative
    rule: str  # the rule's name
    style: str
    kind: str
    error: str
    attempts: int = 0
    failing_for: float | None = None  # seconds of passing trouble before it failed


@dataclass(frozen=True)
class JobRetry(Event):
    """Failed this attempt; queued again after a back-off."""

    job: int
    source: str
    style: str
    kind: str
    error: str
    attempts: int = 0
    retry_in: float | None = None  # seconds until the next try
    failing_for: float | None = None  # seconds since the streak of passing trouble began


@dataclass(frozen=True)
class JobsReleased(Event):
    """Put back in the queue without counting the attempt (a stop, or out of memory)."""

    jobs: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class JobCancelled(Event):
    source: str
    reason: str
    job: int | None = None  # None: every queued job of the source
    style: str | None = None
    jobs: int | None = None  # how many, for every queued job of the source


@dataclass(frozen=True)
class QueueCounts(Event):
    """The journal's jobs per state, read every few seconds by the intake (for STATUS)."""

    counts: Mapping[str, int]
    error: str | None = None  # the journal could not be read


@dataclass(frozen=True)
class WorkerUp(Event):
    """A worker process started (or restarted) and has its model loaded."""

    worker: str
    device: str
    pid: int | None
    precision: str = ""


@dataclass(frozen=True)
class WorkerDown(Event):
    """A worker process died or hung; the pool restarts it."""

    worker: str
    reason: str
    restarts: int = 0  # how many times in a row it went down


Subscriber = Callable[[Event], None]


class EventBus:
    """Subscribers are called in order, on the emitting thread; one that raises is logged and
    the others still run, so a broken subscriber never fails a job."""

    def __init__(self, *, log_lines: bool = True) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()
        if log_lines:
            # The log is the first subscriber: each job's lines come from its events.
            from daemon.eventlog import EventLog

            self.subscribe(EventLog())

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers = (*self._subscribers, subscriber)

    def emit(self, event: Event) -> None:
        for subscriber in self._subscribers:  # a tuple: subscribing meanwhile is safe
            try:
                subscriber(event)
            except Exception:  # a subscriber's bug must not reach the worker
                log.exception(
                    "event_subscriber_failed",
                    subscriber=getattr(subscriber, "__qualname__", repr(subscriber)),
                    event_type=type(event).__name__,
                )
