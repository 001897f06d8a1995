"""The log lines of job and worker events, written by a subscriber of the event bus.

The worker, the intake and the pool emit each event once; this subscriber turns it into the line
that users parse with `jq` (job_queued, job_done, job_failed, job_retry, job_cancelled,
worker_up, worker_down: names and fields as before events existed), the live state, hooks,
metrics and STATUS being other subscribers of the same events.
"""

from __future__ import annotations

import structlog

from daemon import events

log = structlog.get_logger()


class EventLog:
    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.JobQueued):
            log.info(
                "job_queued",
                source=event.source,
                rule=event.rule,
                style=event.style,
                output=event.output,
                job=event.job,
            )
            return
        if isinstance(event, events.JobDone):
            log.info(
                "job_done",
                source=event.source,
                output=event.output,
                rule=event.rule,
                style=event.style,
                result="done",
                **event.details,
            )
            return
        if isinstance(event, events.JobFailed | events.JobRetry):
            failed = isinstance(event, events.JobFailed)
            log.warning(
                "job_failed" if failed else "job_retry",
                source=event.source,
                style=event.style,
                kind=event.kind,
                error=event.error,
                attempts=event.attempts,
                # Only a job that will be tried again has a next try.
                retry_in=None if failed else getattr(event, "retry_in", None),
                failing_for=event.failing_for,
                result="failed" if failed else "queued",
            )
            return
        if isinstance(event, events.JobCancelled):
            where = {"style": event.style} if event.style is not None else {}
            many = {"jobs": event.jobs} if event.jobs is not None else {}
            log.info("job_cancelled", source=event.source, **where, **many, reason=event.reason)
            return
        if isinstance(event, events.WorkerUp):
            extra = {"precision": event.precision} if event.precision else {}
            log.info("worker_up", worker=event.worker, pid=event.pid, device=event.device, **extra)
            return
        if isinstance(event, events.WorkerDown):
            log.error(
                "worker_down", worker=event.worker, reason=event.reason, restarts=event.restarts
            )
