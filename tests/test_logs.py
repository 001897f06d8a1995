"""The process-wide log set-up: JSON lines off a terminal, console text on one, stdlib forwarded."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from daemon import logs

# Created at import time, before any configure(), as the daemon's modules do.
log = structlog.get_logger()


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    root_level = root.level
    yield
    for handler in root.handlers[:]:
        if isinstance(handler, logs._ToStructlog):
            root.removeHandler(handler)
    root.setLevel(root_level)
    logging.captureWarnings(False)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_event_level_timestamp_and_context(stream: io.StringIO) -> None:
    logs.configure(renderer="json", stream=stream)
    structlog.contextvars.bind_contextvars(job=7, rule="booth")
    log.info("job_done", src=Path("/srv/in/a.jpg"), seconds=1.5)
    structlog.contextvars.clear_contextvars()
    log.warning("queue_full", size=3)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "job_done"
    assert first["level"] == "info"
    assert first["job"] == 7
    assert first["rule"] == "booth"
    assert first["src"] == "/srv/in/a.jpg"
    assert first["seconds"] == 1.5
    stamp = datetime.fromisoformat(first["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert second["event"] == "queue_full"
    assert second["level"] == "warning"
    assert "job" not in second


def test_json_exception_includes_the_traceback(stream: io.StringIO) -> None:
    logs.configure(renderer="json", stream=stream)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("job_failed", src="a.jpg")
    (record,) = records(stream)
    assert record["event"] == "job_failed"
    assert record["level"] == "error"
    assert "Traceback (most recent call last)" in record["exception"]
    assert "ValueError: boom" in record["exception"]


def test_non_ascii_and_undecodable_names_survive_json() -> None:
    # A strict UTF-8 stream, as a log file opened by a service manager can be.
    raw = io.BytesIO()
    strict = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    logs.configure(renderer="json", stream=strict)
    undecodable = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")
    log.info("seen", name="Chelséa.jpg", raw=undecodable)
    record = json.loads(raw.getvalue())
    assert record["name"] == "Chelséa.jpg"
    assert record["raw"] == undecodable


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("debug", ["d", "i", "w", "e"]),
        ("info", ["i", "w", "e"]),
        ("WARNING", ["w", "e"]),
        ("error", ["e"]),
        ("critical", []),
    ],
)
def test_level_filtering(stream: io.StringIO, level: str, expected: list[str]) -> None:
    logs.configure(level=level, renderer="json", stream=stream)
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [r["event"] for r in records(stream)] == expected


def test_unknown_level_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="verbose") as info:
        logs.configure(level="verbose")
    for name in logs.LEVELS:
        assert name in str(info.value)


def test_unknown_renderer_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        logs.configure(renderer="xml")  # type: ignore[arg-type]


def test_auto_writes_json_off_a_terminal(stream: io.StringIO) -> None:
    logs.configure(stream=stream)
    log.info("started", version="0.1.0")
    (record,) = records(stream)
    assert record["event"] == "started"


def test_auto_writes_colored_console_text_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty = FakeTTY()
    logs.configure(stream=tty)
    structlog.contextvars.bind_contextvars(job=7)
    log.info("started", version="0.1.0")
    text = tty.getvalue()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert "started" in text
    assert "version" in text
    assert "job" in text
    assert "\x1b[" in text


def test_no_color_is_respected_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    tty = FakeTTY()
    logs.configure(stream=tty)
    log.info("started")
    assert "started" in tty.getvalue()
    assert "\x1b[" not in tty.getvalue()


def test_forced_console_off_a_terminal_has_no_colors(stream: io.StringIO) -> None:
    logs.configure(renderer="console", stream=stream)
    log.info("started", version="0.1.0")
    text = stream.getvalue()
    assert "started" in text
    assert "version=0.1.0" in text
    assert "\x1b[" not in text


def test_forced_json_on_a_terminal() -> None:
    tty = FakeTTY()
    logs.configure(renderer="json", stream=tty)
    log.info("started")
    assert json.loads(tty.getvalue())["event"] == "started"


def test_console_exception_shows_the_traceback(stream: io.StringIO) -> None:
    logs.configure(renderer="console", stream=stream)
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("job_failed")
    text = stream.getvalue()
    assert "job_failed" in text
    assert "Traceback" in text
    assert "ValueError: boom" in text


def test_stdlib_warnings_are_forwarded_and_info_is_not(stream: io.StringIO) -> None:
    logs.configure(level="debug", renderer="json", stream=stream)
    library = logging.getLogger("watchdog.observers.inotify")
    library.info("chatter")
    library.warning("queue %s overflowed", "inotify")
    (record,) = records(stream)
    assert record["event"] == "queue inotify overflowed"
    assert record["level"] == "warning"
    assert record["logger"] == "watchdog.observers.inotify"
    assert "timestamp" in record


def test_stdlib_follows_a_stricter_level(stream: io.StringIO) -> None:
    logs.configure(level="error", renderer="json", stream=stream)
    library = logging.getLogger("PIL.Image")
    library.warning("dropped")
    library.error("kept")
    assert [r["event"] for r in records(stream)] == ["kept"]


def test_stdlib_exceptions_and_custom_levels(stream: io.StringIO) -> None:
    logs.configure(renderer="json", stream=stream)
    library = logging.getLogger("somelib")
    try:
        raise OSError("disk gone")
    except OSError:
        library.exception("write failed")
    library.log(35, "between warning and error")
    first, second = records(stream)
    assert first["level"] == "error"
    assert "OSError: disk gone" in first["exception"]
    assert second["level"] == "warning"
    assert second["event"] == "between warning and error"


def test_python_warnings_are_forwarded(stream: io.StringIO) -> None:
    logs.configure(renderer="json", stream=stream)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    (record,) = records(stream)
    assert record["logger"] == "py.warnings"
    assert "DeprecationWarning: old API" in record["event"]


def test_reconfiguring_replaces_the_previous_setup() -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.configure(renderer="json", stream=first)
    logs.configure(renderer="json", stream=second)
    log.info("structlog_line")
    logging.getLogger("lib").warning("stdlib_line")
    assert first.getvalue() == ""
    assert [r["event"] for r in records(second)] == ["structlog_line", "stdlib_line"]


def test_capture_logs_still_works_after_configure(stream: io.StringIO) -> None:
    logs.configure(renderer="json", stream=stream)
    with structlog.testing.capture_logs() as captured:
        log.info("captured_event", key=1)
    assert captured == [{"event": "captured_event", "key": 1, "log_level": "info"}]
    assert stream.getvalue() == ""
