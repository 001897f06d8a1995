"""Hooks: a command of the user's run after a job is done (or has failed for good).

For printing, a booth's display or a sync to a share. The command is an argv list from the config,
run without a shell, its placeholders ({output} {source} {rule} {style}, and {error} for
failures) filled with absolute paths and plain values, which also come as environment variables
(STYLEWATCH_OUTPUT, ...). A hook runs on a thread of its own after the output is in place, with a
timeout; a slow hook delays only the hooks behind it, a full queue drops hooks (logged and
counted), and a failing one is logged and counted: a hook never fails or delays a job.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon import events
from daemon.config import Config

__all__ = ["HookRunner", "render"]

log = structlog.get_logger()

QUEUE_SIZE = 256  # hooks waiting to run; beyond this new ones are dropped
STOP_GRACE_SECONDS = 10.0  # at stop, hooks still queued may run this long (then they are dropped)
STDERR_TAIL = 500  # characters of a failed hook's stderr in its log line
_STOP = object()


@dataclass(frozen=True)
class _Call:
    name: str  # on_done | on_failed
    argv: tuple[str, ...]
    env: dict[str, str]
    job: int
    timeout: float


def render(template: tuple[str, ...], values: dict[str, str]) -> tuple[str, ...]:
    """Fill {output} {source} ... in each argument; other braces are left as written."""
    out = []
    for arg in template:
        filled = arg
        for name, value in values.items():
            filled = filled.replace("{" + name + "}", value)
        out.append(filled)
    return tuple(out)


class HookRunner:
    """An event subscriber that queues hooks, and the thread that runs them."""

    def __init__(self, config: Callable[[], Config]) -> None:
        self._config = config  # read per event: a reload changes the hooks
        self._queue: queue.Queue[_Call | object] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="stylewatch-hooks", daemon=True)
        self.ran = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Run the hooks still queued for up to `grace` seconds (the last artworks get printed
        too), then give up on the rest, saying how many."""
        # A full queue behind a stuck hook: the thread is a daemon thread and dies with us.
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=grace)
        if self._thread.is_alive():
            self._thread.join(grace)
        pending = self._queue.qsize() - (1 if self._thread.is_alive() else 0)
        if self._thread.is_alive() or pending > 0:
            log.warning("hooks_not_run", pending=max(0, pending), reason="service_stopping")

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.JobDone):
            self._submit(
                "on_done",
                job=event.job,
                output=event.output,
                source=event.source,
                rule=event.rule,
                style=event.style,
            )
        elif isinstance(event, events.JobFailed):
            self._submit(
                "on_failed",
                job=event.job,
                output=event.output,
                source=event.source,
                rule=event.rule,
                style=event.style,
                error=event.error,
            )

    def _submit(
        self,
        name: str,
        *,
        job: int,
        output: str,
        source: str,
        rule: str,
        style: str,
        error: str | None = None,
    ) -> None:
        config = self._config()
        template: tuple[str, ...] = getattr(config.hooks, name)
        if not template:
            return
        values = {
            "output": str(config.output / output),
            "source": str(config.input / source),
            "rule": str(rule),
            "style": style,
        }
        if error is not None:
            values["error"] = error
        env = {**os.environ, **{f"STYLEWATCH_{k.upper()}": v for k, v in values.items()}}
        env["STYLEWATCH_JOB"] = str(job)
        env["STYLEWATCH_EVENT"] = name
        call = _Call(name, render(template, values), env, job, config.hooks.timeout_seconds)
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            self.dropped += 1
            log.warning("hook_dropped", hook=name, job=job, queue_size=QUEUE_SIZE)

    def _run(self) -> None:
        while True:
            call = self._queue.get()
            if not isinstance(call, _Call):
                return
            try:
                self._execute(call)
            except Exception:  # the hook boundary: a bug here must not end the thread
                self.failed += 1
                log.exception("hook_failed", hook=call.name, job=call.job)

    def _execute(self, call: _Call) -> None:
        try:
            proc = subprocess.Popen(
                call.argv,
                env=call.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=Path("/"),
                # Its own process group, so that a timeout kills what it started too (a shell
                # script's children would otherwise keep the pipe open and the thread waiting).
                start_new_session=True,
            )
        except OSError as exc:
            self.failed += 1
            log.warning(
                "hook_failed", hook=call.name, job=call.job, command=call.argv[0], error=str(exc)
            )
            return
        try:
            _, stderr = proc.communicate(timeout=call.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            self.failed += 1
            log.warning(
                "hook_failed",
                hook=call.name,
                job=call.job,
                command=call.argv[0],
                reason="timeout",
                timeout_seconds=call.timeout,
            )
            return
        if proc.returncode != 0:
            self.failed += 1
            log.warning(
                "hook_failed",
                hook=call.name,
                job=call.job,
                command=call.argv[0],
                exit_code=proc.returncode,
                stderr=stderr.decode("utf-8", "replace")[-STDERR_TAIL:],
            )
            return
        self.ran += 1
        log.info("hook_done", hook=call.name, job=call.job, command=call.argv[0])
