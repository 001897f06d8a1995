"""The broker's settings, errors, values and URL handling (daemon/broker/__init__.py: the design).

Every broker default lives in daemon/config.py's BrokerConfig (what users set) or here (timings
that users need not touch); BrokerSettings.from_config builds these from the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from daemon.config import BrokerConfig
from daemon.errors import DaemonError

_DEFAULTS = BrokerConfig()
# XAUTOCLAIM appeared in Redis 6.2; Valkey reports a Redis-compatible version (7.2.4) too.
MIN_SERVER_VERSION = (6, 2)

ORDERS_GROUP = "workers"
RESULTS_GROUP = "coordinator"
# One coordinator at a time holds the lease, so one fixed consumer name: a restarted (or a new)
# coordinator finds the results its predecessor read but never acknowledged under it.
RESULTS_CONSUMER = "coordinator"

URL_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class BrokerSettings:
    """How to reach Redis and the timings of leases (users set theirs in BrokerConfig)."""

    url: str  # redis://host:port/db, rediss://host:port/db (TLS), unix:///path/redis.sock
    # Key prefix: several stylewatch installs (input trees) can share one Redis.
    namespace: str = _DEFAULTS.namespace
    # A batch untouched for this long belongs to a dead worker and is taken over. Workers renew
    # their lease (keep_lease) well within it, every lease_seconds / 3.
    lease_seconds: float = _DEFAULTS.lease_seconds
    # A batch delivered more often than this is poison: its photos fail with a reason.
    max_attempts: int = _DEFAULTS.max_attempts
    # A worker's registration lives this long after its last heartbeat.
    worker_ttl_seconds: float = 30.0
    # Connecting and each command's reply. A blocking read waits for at most block_ms on top.
    connect_timeout: float = 5.0
    socket_timeout: float = 30.0
    # redis-py retries a command after a connection error this often (with back-off) before the
    # error reaches the caller as BrokerUnavailableError. Every command here may safely run twice.
    retries: int = 2

    @classmethod
    def from_config(cls, config: BrokerConfig) -> BrokerSettings:
        """The settings of `broker:` in the config (its url must be set)."""
        if config.url is None:
            raise BrokerError("broker.url is not set: this install runs on one host")
        return cls(
            url=config.url,
            namespace=config.namespace,
            lease_seconds=config.lease_seconds,
            max_attempts=config.max_attempts,
        )


class BrokerError(DaemonError):
    """Redis could not do what the broker asked. The message names the URL and the operation."""


class BrokerUnavailableError(BrokerError):
    """Redis could not be reached (refused, timed out, connection lost). Trying later may work."""


class CoordinatorBusyError(BrokerError):
    """Another coordinator holds the lease on this namespace."""

    def __init__(self, message: str, holder: str, expires_in: float | None) -> None:
        super().__init__(message)
        self.holder = holder
        self.expires_in = expires_in


@dataclass(frozen=True)
class ServerProblem:
    level: Literal["error", "warning"]
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


@dataclass(frozen=True)
class ServerCheck:
    """What `check_server` found: the server, its version, and what stands against the design."""

    server: str  # "redis" or "valkey"
    version: str
    problems: tuple[ServerProblem, ...]

    @property
    def ok(self) -> bool:
        return not any(problem.level == "error" for problem in self.problems)


@dataclass(frozen=True)
class Delivery:
    """One batch handed to a worker.

    `deliveries` counts every time Redis handed this entry to a worker, this time included.
    `poison`: delivered more than max_attempts times; the worker must not run it but fail its
    photos with a recorded reason, report that, and acknowledge the entry.
    `taken_over`: it came from another worker whose lease ran out (a dead or stuck worker).
    """

    entry_id: str
    batch: dict[str, Any]
    deliveries: int
    poison: bool
    taken_over: bool


@dataclass(frozen=True)
class ReportEntry:
    """One worker report, as the coordinator reads it. Acknowledge it with ack_result(entry_id)."""

    entry_id: str
    result: dict[str, Any]


@dataclass(frozen=True)
class WorkerInfo:
    """A registered, live worker (its registration has not expired), for `stylewatch status`."""

    name: str
    host: str
    device: str
    pid: int
    capacity: int  # batches it takes at once
    started: float  # Unix time (Redis's clock) of its registration
    heartbeat: float  # Unix time (Redis's clock) of its last heartbeat
    running: tuple[str, ...]  # the jobs it said it is running


@dataclass(frozen=True)
class Backlog:
    """Batches in Redis: dispatched and not yet taken, taken and not yet acknowledged."""

    waiting: int
    running: int
    capacity: int  # what live workers can take at once

    @property
    def room(self) -> int:
        return max(0, self.capacity - self.waiting - self.running)


# Only the holder may extend or drop the lease: compare and act in one atomic step.


def redact(url: str) -> str:
    """The URL without its password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())
