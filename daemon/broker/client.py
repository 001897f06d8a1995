"""The connection to Redis: errors translated, consumer groups made on demand, the server read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import urlsplit

import redis
import structlog
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from daemon.broker.settings import (
    MIN_SERVER_VERSION,
    ORDERS_GROUP,
    RESULTS_GROUP,
    URL_SCHEMES,
    BrokerError,
    BrokerSettings,
    BrokerUnavailableError,
    ServerCheck,
    ServerProblem,
    redact,
    version_tuple,
)

log = structlog.get_logger()

T = TypeVar("T")


class BrokerClient:
    """The connection under the Broker (daemon/broker/streams.py), and what every part needs of it.

    One instance per process. Its methods are safe to call from several threads (redis-py keeps
    a connection pool), but a blocking read holds a connection for up to `block_ms`.
    Every Redis failure becomes a BrokerError (BrokerUnavailableError when Redis cannot be reached).
    """

    def __init__(self, settings: BrokerSettings) -> None:
        scheme = urlsplit(settings.url).scheme
        if scheme not in URL_SCHEMES:
            raise BrokerError(
                f"broker url {redact(settings.url)!r}: the scheme must be one of "
                + ", ".join(f"{name}://" for name in URL_SCHEMES)
            )
        self.settings = settings
        self.url = redact(settings.url)
        ns = settings.namespace
        self.orders_key = f"{ns}:orders"
        self.results_key = f"{ns}:results"
        self.lease_key = f"{ns}:coordinator"
        self.workers_key = f"{ns}:workers"
        self._worker_prefix = f"{ns}:worker:"
        try:
            # RESP2: its reply shapes for stream commands are the same on every server version.
            self._redis = redis.Redis.from_url(
                settings.url,
                decode_responses=True,
                protocol=2,
                socket_connect_timeout=settings.connect_timeout,
                socket_timeout=settings.socket_timeout,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), settings.retries),
                health_check_interval=30,
            )
        except ValueError as exc:
            raise BrokerError(f"broker url {self.url!r}: {exc}") from exc

    def close(self) -> None:
        self._redis.close()

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BrokerUnavailableError(f"Redis at {self.url}: {what}: {exc}") from exc
        except redis.RedisError as exc:
            raise BrokerError(f"Redis at {self.url}: {what}: {exc}") from exc

    def _grouped(self, what: str, call: Callable[[], T]) -> T:
        """Run a command that needs the consumer groups, creating them when Redis has none.

        Groups vanish with the data when Redis restarts without its append-only file (or fails
        over to a replica that had not seen them); the next command recreates them instead of
        failing forever. Created at id 0, so entries added before the group are still delivered.
        """
        with self._calling(what):
            try:
                return call()
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):  # also inside a pipeline's error message
                    raise
            self._create_groups()
            return call()

    def _create_groups(self) -> None:
        for key, group in ((self.orders_key, ORDERS_GROUP), (self.results_key, RESULTS_GROUP)):
            try:
                self._redis.xgroup_create(key, group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    # --- The server.

    def ping(self) -> None:
        with self._calling("PING"):
            self._redis.ping()

    def check_server(self) -> ServerCheck:
        """What in the server's settings stands against the design, for `stylewatch check`/start.

        - The version: XAUTOCLAIM (taking over a dead worker's batch) needs Redis >= 6.2.
        - appendonly off: a Redis restart loses the queued orders and unread results. The
          coordinator puts such jobs back after a deadline, so this costs time, not photos: a
          warning.
        - A maxmemory-policy other than noeviction: under memory pressure Redis may delete
          streams, the lease or registrations at will: an error.
        Managed services often disable CONFIG; then these two cannot be checked, and the
        problem says so (a warning) rather than guessing.
        """
        with self._calling("INFO server"):
            info = self._redis.info("server")
        server = "valkey" if "valkey_version" in info else "redis"
        version = str(info.get("valkey_version") or info.get("redis_version") or "")
        problems: list[ServerProblem] = []
        if version_tuple(str(info.get("redis_version", "0")))[:2] < MIN_SERVER_VERSION:
            problems.append(
                ServerProblem(
                    "error",
                    f"{server} {version} is too old: the broker needs Redis 6.2 or newer "
                    "(XAUTOCLAIM) or Valkey",
                )
            )
        try:
            with self._calling("CONFIG GET"):
                appendonly = self._redis.config_get("appendonly").get("appendonly")
                policy = self._redis.config_get("maxmemory-policy").get("maxmemory-policy")
        except BrokerUnavailableError:
            raise
        except BrokerError as exc:
            problems.append(
                ServerProblem(
                    "warning",
                    "could not check appendonly and maxmemory-policy (CONFIG GET refused: "
                    f"{exc.__cause__}); make sure the server runs with appendonly yes and "
                    "maxmemory-policy noeviction",
                )
            )
            return ServerCheck(server, version, tuple(problems))
        if appendonly != "yes":
            problems.append(
                ServerProblem(
                    "warning",
                    f"appendonly is {appendonly!r}: a Redis restart loses queued batches and "
                    "unread results (their jobs are put back after a deadline and run again); "
                    "set appendonly yes",
                )
            )
        if policy != "noeviction":
            problems.append(
                ServerProblem(
                    "error",
                    f"maxmemory-policy is {policy!r}: Redis may evict queued batches, results "
                    "or the coordinator's lease under memory pressure; "
                    "set maxmemory-policy noeviction",
                )
            )
        return ServerCheck(server, version, tuple(problems))

    def _server_time(self) -> float:
        """Redis's clock: heartbeats written by hosts with skewed clocks compare on one clock."""
        with self._calling("TIME"):
            seconds, micros = self._redis.time()
        return int(seconds) + int(micros) / 1e6
