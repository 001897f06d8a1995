"""systemd's sd_notify protocol, spoken directly: no libsystemd, no extra package.

The service manager names a socket in $NOTIFY_SOCKET; the daemon sends it datagrams of
newline-separated `VAR=value` assignments (READY=1, STATUS=..., WATCHDOG=1, ...). A path starting
with `@` names a socket in Linux's abstract namespace. Without $NOTIFY_SOCKET (a terminal, a test,
another init system) every call is a no-op.

Telling systemd is never worth crashing or stalling the daemon for: a send that fails is logged
(a warning the first time, then debug until a send succeeds again) and dropped. The socket is
connected once and reconnected after a failure, because systemd recreates the notify socket when it
re-executes itself and the old connection then fails.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

import structlog

__all__ = ["DEFAULT_SEND_TIMEOUT", "Notifier"]

log = structlog.get_logger()

# Long enough for a busy systemd to drain its queue, short enough that a wedged manager cannot
# hold a job or the shutdown hostage.
DEFAULT_SEND_TIMEOUT = 1.0


class Notifier:
    """A connection to systemd's notify socket; disabled (every call a no-op) without one.

    Thread-safe: the watchdog pinger and the main loop may send at the same time.
    """

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        """`address` is $NOTIFY_SOCKET as systemd writes it (a path, or `@name`); None disables.

        `monotonic_ns` must read CLOCK_MONOTONIC (systemd compares RELOADING's timestamp with its
        own clock); it is a parameter so tests can pin the value.
        """
        self._address = _socket_address(address) if address else None
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self._send_timeout = send_timeout
        self._monotonic_ns = monotonic_ns
        self._sock: socket.socket | None = None
        self._failing = False
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID; malformed values disable a part."""
        address = environ.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            # Newer systemd can also hand out vsock: addresses (for VMs); a daemon on a host never
            # gets one, and guessing at it would be worse than saying so.
            log.warning("notify_socket_unsupported", address=address)
            address = None
        watchdog_usec = _positive_int(environ.get("WATCHDOG_USEC"))
        watchdog_pid: int | None = None
        raw_pid = environ.get("WATCHDOG_PID")
        if raw_pid is not None:
            watchdog_pid = _positive_int(raw_pid)
            if watchdog_pid is None:
                # A watchdog meant for a pid we cannot read may not be ours: pinging is not safe.
                watchdog_usec = None
        return cls(address, watchdog_usec=watchdog_usec, watchdog_pid=watchdog_pid)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str | None = None) -> None:
        """Startup is complete: a Type=notify unit becomes active only now."""
        fields = {"READY": "1"}
        if status is not None:
            fields["STATUS"] = _one_line(status)
        self._send(fields)

    def status(self, text: str) -> None:
        """A one-line description for `systemctl status`."""
        self._send({"STATUS": _one_line(text)})

    def reloading(self) -> None:
        """A config reload has begun; send ready() when it is done (Type=notify-reload)."""
        # systemd 253 ignores RELOADING=1 without a fresh timestamp on its own monotonic clock.
        monotonic_usec = self._monotonic_ns() // 1000
        self._send({"RELOADING": "1", "MONOTONIC_USEC": str(monotonic_usec)})

    def stopping(self) -> None:
        """Shutdown has begun, so systemd shows `deactivating` instead of a hung service."""
        self._send({"STOPPING": "1"})

    def watchdog(self) -> None:
        """Keep-alive ping: systemd kills the service if these stop for WATCHDOG_USEC."""
        self._send({"WATCHDOG": "1"})

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more before the start or stop timeout fires (a slow model load)."""
        self._send({"EXTEND_TIMEOUT_USEC": str(max(0, round(seconds * 1_000_000)))})

    def watchdog_interval(self) -> float | None:
        """How often to call watchdog(), in seconds; None when no watchdog is asked of this process.

        Half the watchdog timeout, as sd_watchdog_enabled(3) advises, so one late ping is survived.
        """
        if not self.enabled or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            # Inherited by a child from the main process: the watchdog is not the child's.
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def close(self) -> None:
        """Close the socket; later calls are no-ops."""
        with self._lock:
            self._closed = True
            self._disconnect()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, fields: Mapping[str, str]) -> None:
        if self._address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        with self._lock:
            if self._closed:
                return
            try:
                self._send_once(self._address, message)
            except (BlockingIOError, TimeoutError) as error:
                # A full queue: the connection is fine and a second try would wait again.
                self._report_failure(fields, error)
                return
            except OSError:
                # The connection may be stale (systemd re-executed): one fresh try, then give up.
                self._disconnect()
                try:
                    self._send_once(self._address, message)
                except OSError as error:
                    self._disconnect()
                    self._report_failure(fields, error)
                    return
            if self._failing:
                self._failing = False
                log.info("notify_recovered", address=self._printable_address())

    def _send_once(self, address: str, message: bytes) -> None:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.settimeout(self._send_timeout)
                sock.connect(address)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        self._sock.send(message)

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _report_failure(self, fields: Mapping[str, str], error: OSError) -> None:
        # A dead notify socket fails every few seconds (each watchdog ping): say so once.
        emit = log.debug if self._failing else log.warning
        self._failing = True
        emit(
            "notify_failed",
            address=self._printable_address(),
            message=",".join(fields),
            error=str(error),
        )

    def _printable_address(self) -> str:
        address = self._address or ""
        return "@" + address[1:] if address.startswith("\0") else address


def _socket_address(address: str) -> str:
    # Linux's abstract namespace: the name starts with a NUL byte instead of living on disk.
    return "\0" + address[1:] if address.startswith("@") else address


def _positive_int(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value > 0 else None


def _one_line(text: str) -> str:
    # A newline would start a new assignment and let status text forge READY=1 or worse.
    return " ".join(text.splitlines())
