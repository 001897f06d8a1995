"""structlog set-up for a process: called from the CLI, and in each worker process
(daemon/process.py) with the service's level and format, so the service writes one kind of line.

On a terminal the lines are coloured for people; anywhere else (systemd's journal captures stderr,
a file, a pipe) each line is one JSON object for machines. Modules only ever do
`log = structlog.get_logger()`; a worker process binds `worker=worker-N` with
`structlog.contextvars.bind_contextvars`, which every line it writes then carries.

Libraries that log through the standard `logging` module (watchdog, Pillow) and Python warnings
(torch's) are forwarded into the same output, so the journal never gets a line in another format.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Final, Literal, TextIO

import structlog
from structlog.typing import Processor

__all__ = ["LEVELS", "RENDERERS", "Renderer", "configure"]

Renderer = Literal["auto", "console", "json"]

LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
RENDERERS: Final[tuple[Renderer, ...]] = ("auto", "console", "json")

# Libraries are chatty below this; their warnings are what an operator needs to see.
_STDLIB_MIN_LEVEL = logging.WARNING


def configure(
    *,
    level: str = "info",
    renderer: Renderer = "auto",
    stream: TextIO = sys.stderr,
) -> None:
    """Configure structlog, and forward stdlib logging and warnings, to write to `stream`.

    `level` is one of LEVELS (any case). `renderer` "auto" picks the console renderer when `stream`
    is a terminal and JSON lines otherwise. Calling it again replaces the previous set-up.
    """
    min_level = LEVELS.get(level.lower())
    if min_level is None:
        raise ValueError(f"unknown log level {level!r}; expected one of: {', '.join(LEVELS)}")
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}; expected one of: {', '.join(RENDERERS)}")
    use_console = renderer == "console" or (renderer == "auto" and _isatty(stream))

    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        # The journal stamps lines itself, but the same JSON also ends up in files and pipes.
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if use_console:
        # The console renderer formats exceptions itself; format_exc_info before it would make it
        # warn and print a flattened traceback.
        colors = _isatty(stream) and "NO_COLOR" not in os.environ
        processors.append(structlog.dev.ConsoleRenderer(colors=colors))
    else:
        processors += [
            structlog.processors.format_exc_info,
            # default=str: paths and other objects as their text, not as PosixPath('...') reprs.
            # ASCII escapes stay on: a file name with undecodable bytes (surrogates) must not
            # make the write itself fail.
            structlog.processors.JSONRenderer(default=str),
        ]

    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        # Not cached: module-level loggers must follow a later configure() (tests reconfigure;
        # structlog.testing.capture_logs relies on it). The cost is a dict lookup per line.
        cache_logger_on_first_use=False,
    )
    _forward_stdlib(max(min_level, _STDLIB_MIN_LEVEL))
    _current[:] = [(level, renderer)]


_current: list[tuple[str, Renderer]] = [("info", "auto")]


def current() -> tuple[str, Renderer]:
    """(level, renderer) of the last configure(): worker processes log the same way."""
    return _current[0]


class _ToStructlog(logging.Handler):
    """Hands stdlib log records to structlog, so they get the same processors and renderer."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, object] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            structlog.get_logger().log(
                _standard_level(record.levelno), record.getMessage(), **fields
            )
        except Exception:
            # logging's own contract: a malformed record is reported, never raised into the caller.
            self.handleError(record)


def _forward_stdlib(min_level: int) -> None:
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    root.addHandler(_ToStructlog(level=min_level))
    if root.level > min_level:
        root.setLevel(min_level)
    # Python warnings (torch's UserWarnings) go to the "py.warnings" logger instead of raw stderr.
    logging.captureWarnings(True)


def _standard_level(levelno: int) -> int:
    # structlog's filtering loggers know only the five standard levels; round custom ones down.
    standard = [value for value in LEVELS.values() if value <= levelno]
    return max(standard) if standard else logging.DEBUG


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except ValueError:  # a closed stream
        return False
