"""Prometheus metrics, computed from the journal and the live state: the same numbers wherever
they are read, at `stylewatch web`'s /metrics or in the service's textfile for node_exporter.

Counting from the journal (instead of counters in one process's memory) means the web process and
the service agree, and a restart loses nothing. The price: `stylewatch_jobs_total` counts jobs by
the outcome they have now, so a failed job queued again by `stylewatch retry` leaves `failed`,
which Prometheus' rate() reads as a counter reset. Names follow prometheus_client's conventions:
one prefix, base units, `_total` counters, `_seconds` histograms, no label per file.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from daemon.journal import Job, JobState, Journal
from daemon.live import remove_stale_temporaries
from daemon.outputs import write_atomic

__all__ = [
    "DURATION_BUCKETS",
    "LATENCY_BUCKETS",
    "STALE_SECONDS",
    "TextfileWriter",
    "readiness",
    "render",
]

log = structlog.get_logger()

# A stylization takes seconds on a GPU and minutes on a CPU.
DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
# From a settled file to its written artwork: the above plus the time spent queued.
LATENCY_BUCKETS = (2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# The service's main loop publishes a heartbeat every second; this much silence means it is
# stopped, killed or stuck.
STALE_SECONDS = 10.0
OUTCOMES = {
    JobState.DONE: "done",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
}


def version() -> str:
    try:
        return metadata.version("stylewatch")
    except metadata.PackageNotFoundError:
        return "unknown"


def readiness(live: dict[str, Any] | None, now: float) -> list[str]:
    """Why the service is not ready to stylize, from its live state; empty when it is."""
    if live is None:
        return ["the service has not published its state (not started with this state folder)"]
    reasons = []
    age = now - float(live.get("heartbeat", 0.0))
    if live.get("stopping"):
        reasons.append("the service has stopped")
    elif age > STALE_SECONDS:
        reasons.append(f"no heartbeat from the service for {age:.0f} s (stopped or stuck)")
    if not live.get("model_loaded"):
        reasons.append("the model is not loaded yet")
    if not live.get("healthy", True):
        reasons.append("the worker shows no progress (stuck) or a thread died")
    if not live.get("input_reachable", True):
        reasons.append("the input folder is not reachable")
    return reasons


def _histogram(
    name: str, doc: str, values: Iterable[float], buckets: tuple[float, ...]
) -> HistogramMetricFamily:
    values = sorted(values)
    counts: list[tuple[str, float]] = []
    seen = 0
    for bound in buckets:
        while seen < len(values) and values[seen] <= bound:
            seen += 1
        counts.append((repr(bound), seen))
    counts.append(("+Inf", len(values)))
    return HistogramMetricFamily(name, doc, buckets=counts, sum_value=sum(values))


class _JournalCollector(Collector):
    def __init__(self, jobs: list[Job], live: dict[str, Any] | None, now: float) -> None:
        self._jobs = jobs
        self._live = live
        self._now = now

    def collect(self) -> Iterable[Metric]:
        jobs, now = self._jobs, self._now
        outcomes = CounterMetricFamily(
            "stylewatch_jobs",
            "Jobs by outcome: done, failed for good, cancelled, and attempts that were retried.",
            labels=["outcome"],
        )
        by_state = dict.fromkeys(JobState, 0)
        retries = 0
        for job in jobs:
            by_state[job.state] += 1
            # Attempts that did not end their job (it was queued again after them): all but the
            # last, unless the job is queued now.
            retries += max(0, job.attempts - (0 if job.state is JobState.QUEUED else 1))
        for state, outcome in OUTCOMES.items():
            outcomes.add_metric([outcome], by_state[state])
        outcomes.add_metric(["retry"], retries)
        yield outcomes

        done = [j for j in jobs if j.state is JobState.DONE]
        yield _histogram(
            "stylewatch_job_duration_seconds",
            "Seconds of the last attempt of each done job, from its start to its written output.",
            # Jobs done by the first release have no start time: left out.
            (j.updated - j.started for j in done if j.started is not None),
            DURATION_BUCKETS,
        )
        yield _histogram(
            "stylewatch_latency_seconds",
            "Seconds from a settled photo being queued to its artwork being written.",
            (j.updated - j.created for j in done),
            LATENCY_BUCKETS,
        )
        queue = GaugeMetricFamily(
            "stylewatch_queue_jobs", "Jobs waiting or running now.", labels=["state"]
        )
        queue.add_metric(["queued"], by_state[JobState.QUEUED])
        queue.add_metric(["running"], by_state[JobState.RUNNING])
        yield queue
        waiting = [j.created for j in jobs if j.state is JobState.QUEUED]
        yield GaugeMetricFamily(
            "stylewatch_oldest_queued_age_seconds",
            "Age of the oldest queued job (0 when none waits).",
            value=max(0.0, now - min(waiting)) if waiting else 0.0,
        )
        live = self._live
        up = GaugeMetricFamily(
            "stylewatch_worker_up",
            "1 when the service is alive, its model loaded and its worker healthy.",
            labels=["device"],
        )
        device = str(live.get("device") or "unknown") if live else "unknown"
        up.add_metric([device], 0.0 if readiness(live, now) else 1.0)
        yield up
        info = GaugeMetricFamily(
            "stylewatch_build_info", "The running stylewatch's version.", labels=["version"]
        )
        info.add_metric([version()], 1.0)
        yield info


def render(journal: Journal, live: dict[str, Any] | None, now: float | None = None) -> bytes:
    """The metrics in Prometheus' text exposition format."""
    return render_jobs(journal.jobs(), live, time.time() if now is None else now)


def render_jobs(jobs: list[Job], live: dict[str, Any] | None, now: float) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_JournalCollector(jobs, live, now))
    return generate_latest(registry)


class TextfileWriter:
    """The service's side: the same metrics written to a file for node_exporter's textfile
    collector, every `interval` seconds and once more at stop."""

    def __init__(
        self,
        path: Path,
        interval: float,
        journal: Journal,
        live: Callable[[], dict[str, Any] | None],
    ) -> None:
        self.path = path
        self._interval = interval
        self._journal = journal
        self._live = live
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stylewatch-metrics", daemon=True)
        self._failing = False

    def start(self) -> None:
        remove_stale_temporaries(self.path)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10.0)
        self.write()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.write()
            self._stop.wait(self._interval)

    def write(self) -> None:
        try:
            write_atomic(self.path, render(self._journal, self._live()), overwrite=True)
        except Exception as exc:  # a full disk or a journal error: metrics must not stop us
            if not self._failing:
                log.warning("metrics_textfile_failed", path=str(self.path), error=str(exc))
            self._failing = True
        else:
            if self._failing:
                log.info("metrics_textfile_written", path=str(self.path))
            self._failing = False
