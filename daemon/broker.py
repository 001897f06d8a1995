"""Work orders and results between one coordinator and GPU workers on several hosts, over Redis.

Redis only moves work; the coordinator's journal stays the one place that decides what is done.
Every path here may repeat a message (a retried command, a batch taken over from a worker that was
only slow), and none of that can cost more than repeated computation: completion in the journal is
idempotent, so a second result for a job is a no-op there.

Why Redis Streams with consumer groups (and not lists, pub/sub or a protocol of our own):

- An entry read through a group stays in the group's *pending entries list* until it is
  acknowledged (XACK). A worker that dies mid-batch leaves its batch there, with its owner and the
  time since it was last touched.
- XAUTOCLAIM hands the entries idle longer than a lease to another consumer in one command, so a
  dead worker's batch is taken over without any bookkeeping of ours. A live worker keeps its batch
  by re-claiming it (XCLAIM ... JUSTID), which resets the idle time.
- Every delivery counts (XPENDING shows the count), so a batch that kills each worker it reaches
  is recognised after `max_attempts` deliveries and failed instead of killing workers forever.
- Results travel the same way in the other direction, read through the coordinator's own group:
  a result survives a coordinator restart until the coordinator acknowledges it.

Only commands that Redis >= 6.2 (XAUTOCLAIM) and Valkey both have are used, over RESP2.

Keys, all under the namespace (so several installs can share one Redis):

    {ns}:orders        stream: one entry per same-style batch; group `workers`
    {ns}:results       stream: one entry per report; group `coordinator`
    {ns}:coordinator   string: the coordinator's lease (its owner id), with an expiry
    {ns}:workers       set: names of registered workers
    {ns}:worker:{name} hash: a worker's host, device, pid, capacity, heartbeat, running jobs;
                       it expires unless heartbeats renew it, so a dead worker drops out by itself

Nothing here imports the journal, the rules or torch: the coordinator (`stylewatch run`) and the
workers (`stylewatch worker`) both build on this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import structlog
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from daemon.errors import DaemonError

log = structlog.get_logger()

T = TypeVar("T")

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
    """How to reach Redis and the timings of leases. Every broker default lives here."""

    url: str  # redis://host:port/db, rediss://host:port/db (TLS), unix:///path/redis.sock
    # Key prefix: several stylewatch installs (input trees) can share one Redis.
    namespace: str = "stylewatch"
    # A batch untouched for this long belongs to a dead worker and is taken over. Workers renew
    # their lease (keep_lease) well within it, every lease_seconds / 3.
    lease_seconds: float = 60.0
    # A batch delivered more often than this is poison: its photos fail with a reason.
    max_attempts: int = 3
    # A worker's registration lives this long after its last heartbeat.
    worker_ttl_seconds: float = 30.0
    # Connecting and each command's reply. A blocking read waits for at most block_ms on top.
    connect_timeout: float = 5.0
    socket_timeout: float = 30.0
    # redis-py retries a command after a connection error this often (with back-off) before the
    # error reaches the caller as BrokerUnavailableError. Every command here may safely run twice.
    retries: int = 2


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
_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
# A worker re-claims its own batch to reset the idle time, and only while it is still its own:
# a bare XCLAIM would take it back from a worker that has rightly taken it over.
_KEEP_BATCH = """
local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #entry == 0 or entry[1][2] ~= ARGV[3] then
    return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""


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


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


class Broker:
    """The Redis side of several hosts: the coordinator's lease, dispatch, workers and results.

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
        self._renew_lease = self._redis.register_script(_RENEW_LEASE)
        self._release_lease = self._redis.register_script(_RELEASE_LEASE)
        self._keep_batch = self._redis.register_script(_KEEP_BATCH)
        # Where the backlog of unacknowledged results goes on; None once it is read.
        self._results_cursor: str | None = "0"

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
        if _version(str(info.get("redis_version", "0")))[:2] < MIN_SERVER_VERSION:
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

    # --- The coordinator's lease: one coordinator per input tree (beside its local flock).

    def acquire_coordinator(self, owner_id: str, lease_seconds: float) -> None:
        """Take the lease for `lease_seconds` (SET NX PX: only when nobody holds it), or raise
        CoordinatorBusyError naming the holder. Holding it already (the same owner_id) renews it.
        A coordinator that dies keeps it until it expires, so a restart may wait that long."""
        for _ in range(3):
            with self._calling("acquiring the coordinator lease"):
                if self._redis.set(self.lease_key, owner_id, nx=True, px=_ms(lease_seconds)):
                    return
                holder: Any = self._redis.get(self.lease_key)
                ttl: Any = self._redis.pttl(self.lease_key)
            if holder == owner_id:
                if self.renew_coordinator(owner_id, lease_seconds):
                    return
                continue
            if holder is None:
                continue  # it expired between SET and GET: try again
            expires_in = ttl / 1000 if ttl is not None and ttl >= 0 else None
            when = f"; its lease expires in {expires_in:.1f} s" if expires_in is not None else ""
            raise CoordinatorBusyError(
                f"another coordinator holds {self.lease_key} on {self.url}: {holder}{when}",
                str(holder),
                expires_in,
            )
        raise BrokerError(f"Redis at {self.url}: the coordinator lease changed hands while taken")

    def renew_coordinator(self, owner_id: str, lease_seconds: float) -> bool:
        """Extend our lease. False: it is no longer ours (it expired, another took it), and this
        coordinator must stop dispatching."""
        with self._calling("renewing the coordinator lease"):
            done = self._renew_lease(keys=[self.lease_key], args=[owner_id, _ms(lease_seconds)])
        return bool(done)

    def release_coordinator(self, owner_id: str) -> bool:
        """Drop our lease on a clean stop, so a successor need not wait for it to expire.
        Only if it is still ours: never another coordinator's."""
        with self._calling("releasing the coordinator lease"):
            done = self._release_lease(keys=[self.lease_key], args=[owner_id])
        return bool(done)

    def coordinator(self) -> str | None:
        """Who holds the lease now, if anyone."""
        with self._calling("reading the coordinator lease"):
            holder: Any = self._redis.get(self.lease_key)
        return None if holder is None else str(holder)

    # --- Dispatch (the coordinator).

    def dispatch(self, batch: dict[str, Any]) -> str:
        """Add one same-style batch to the orders stream; returns its entry id.

        `batch` is {"batch": id, "jobs": [{"job", "attempt", "order", "claimed"}, ...]}, plain
        JSON. The stream is never capped by length (that would drop work no one has taken);
        entries go away when the worker that ran them acknowledges them (ack_batch).
        """
        if "batch" not in batch or not isinstance(batch.get("jobs"), list):
            raise ValueError("a batch needs 'batch' (its id) and 'jobs' (a list)")
        data = json.dumps(batch, sort_keys=True, separators=(",", ":"))
        with self._calling("dispatching a batch"):
            entry_id = self._redis.xadd(self.orders_key, {"batch": data})
        return str(entry_id)

    def backlog(self) -> Backlog:
        """Batches waiting and running, and what the live workers can take.

        Acknowledged entries are deleted, so the stream holds exactly the batches not yet done:
        its length minus the group's pending count is what no worker has taken yet.
        """

        def count() -> tuple[int, int]:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.xlen(self.orders_key)
                pipe.xpending(self.orders_key, ORDERS_GROUP)
                length, pending = pipe.execute()
            return int(length), int(pending["pending"])

        length, running = self._grouped("counting batches", count)
        capacity = sum(worker.capacity for worker in self.workers())
        return Backlog(waiting=max(0, length - running), running=running, capacity=capacity)

    def room(self) -> int:
        """How many more batches the workers can take now. The coordinator dispatches only while
        this is above zero, so that batches fill up with same-style photos meanwhile."""
        return self.backlog().room

    def is_pending(self, entry_id: str) -> bool:
        """Whether Redis still holds this batch (waiting or running). False for a batch that was
        acknowledged, or lost (Redis restarted without its data): read the results first, and
        put a dispatched job back only when it has no result either."""
        with self._calling("looking up a batch"):
            found = self._redis.xrange(self.orders_key, min=entry_id, max=entry_id, count=1)
        return bool(found)

    def entries(self) -> set[str]:
        """The ids of every batch Redis holds, to check many dispatched batches at once."""
        ids: set[str] = set()
        start = "-"
        with self._calling("listing batches"):
            while True:
                page = self._redis.xrange(self.orders_key, min=start, max="+", count=500)
                if not page:
                    return ids
                ids.update(str(entry_id) for entry_id, _ in page)
                start = "(" + str(page[-1][0])

    # --- Workers.

    def register_worker(
        self, name: str, host: str, device: str, pid: int, capacity: int = 1
    ) -> None:
        """Announce a worker (one per device). `name` is also its consumer name in the orders
        group: keep it stable across restarts (host and device), so that a restarted worker is
        the same consumer. The registration expires unless heartbeats renew it."""
        now = self._server_time()
        fields: dict[Any, str] = {
            "host": host,
            "device": device,
            "pid": str(pid),
            "capacity": str(capacity),
            "started": repr(now),
            "heartbeat": repr(now),
            "running": "[]",
        }
        key = self._worker_prefix + name
        with self._calling(f"registering worker {name}"), self._redis.pipeline() as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, _ms(self.settings.worker_ttl_seconds))
            pipe.sadd(self.workers_key, name)
            pipe.execute()

    def heartbeat(self, name: str, running: Iterable[str] = ()) -> bool:
        """Renew a worker's registration and say what it runs. False: the registration had
        expired (a long stall); register_worker again."""
        key = self._worker_prefix + name
        now = self._server_time()
        with self._calling(f"heartbeat of worker {name}"):
            if not self._redis.exists(key):
                return False
            with self._redis.pipeline() as pipe:
                pipe.hset(
                    key, mapping={"heartbeat": repr(now), "running": json.dumps(list(running))}
                )
                pipe.pexpire(key, _ms(self.settings.worker_ttl_seconds))
                pipe.execute()
        return True

    def unregister_worker(self, name: str) -> None:
        """A worker's clean exit: its registration goes at once, and its consumer in the orders
        group too when it holds no batch (a consumer's removal would drop its pending batches)."""
        with self._calling(f"unregistering worker {name}"):
            self._redis.delete(self._worker_prefix + name)
            self._redis.srem(self.workers_key, name)
        self._forget_consumer(name)

    def workers(self) -> list[WorkerInfo]:
        """The live workers, by name. Registrations that expired are dropped from the index."""
        with self._calling("listing workers"):
            names = sorted(str(name) for name in self._redis.smembers(self.workers_key))
            with self._redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.hgetall(self._worker_prefix + name)
                records = pipe.execute()
        live: list[WorkerInfo] = []
        for name, record in zip(names, records, strict=True):
            if not record:
                with self._calling(f"dropping expired worker {name}"):
                    self._redis.srem(self.workers_key, name)
                self._forget_consumer(name)
                continue
            live.append(
                WorkerInfo(
                    name=name,
                    host=record.get("host", ""),
                    device=record.get("device", ""),
                    pid=int(record.get("pid", "0")),
                    capacity=int(record.get("capacity", "1")),
                    started=float(record.get("started", "0")),
                    heartbeat=float(record.get("heartbeat", "0")),
                    running=tuple(json.loads(record.get("running", "[]"))),
                )
            )
        return live

    def _forget_consumer(self, name: str) -> None:
        """Drop a worker's consumer from the orders group, but only when it holds nothing:
        XGROUP DELCONSUMER discards the consumer's pending entries, which nobody could then take
        over. One that still holds batches stays until they are taken over and done."""

        def forget() -> None:
            consumers = self._redis.xinfo_consumers(self.orders_key, ORDERS_GROUP)
            for consumer in consumers:
                if consumer["name"] == name and int(consumer["pending"]) == 0:
                    self._redis.xgroup_delconsumer(self.orders_key, ORDERS_GROUP, name)

        self._grouped(f"removing consumer {name}", forget)

    def _server_time(self) -> float:
        """Redis's clock: heartbeats written by hosts with skewed clocks compare on one clock."""
        with self._calling("TIME"):
            seconds, micros = self._redis.time()
        return int(seconds) + int(micros) / 1e6

    def next_batch(self, consumer: str, block_ms: int = 2000) -> Delivery | None:
        """The next batch for this worker, or None when none came within block_ms.

        First a batch whose worker let its lease run out (XAUTOCLAIM: it died, or hangs), then a
        new one (XREADGROUP, blocking). Call it again in a loop: a dead worker's batch becomes
        claimable while a call blocks, and is found by the next one.
        """
        taken = self._grouped("taking over a stale batch", lambda: self._claim_stale(consumer))
        if taken is not None:
            entry_id, fields = taken
            return self._delivery(entry_id, fields, taken_over=True)
        block = max(1, min(block_ms, _ms(self.settings.socket_timeout) // 2))

        def read() -> Any:
            return self._redis.xreadgroup(
                ORDERS_GROUP, consumer, {self.orders_key: ">"}, count=1, block=block
            )

        reply: Any = self._grouped("reading the next batch", read)
        if not reply:
            return None
        _, entries = reply[0]
        entry_id, fields = entries[0]
        return self._delivery(str(entry_id), fields, taken_over=False)

    def _claim_stale(self, consumer: str) -> tuple[str, dict[str, str]] | None:
        """One entry idle longer than the lease, now ours; None if there is none."""
        cursor = "0-0"
        # The pending list holds about one entry per worker: a few pages at most.
        for _ in range(100):
            reply: Any = self._redis.xautoclaim(
                self.orders_key,
                ORDERS_GROUP,
                consumer,
                min_idle_time=_ms(self.settings.lease_seconds),
                start_id=cursor,
                count=1,
            )
            cursor, claimed = str(reply[0]), reply[1]
            for entry_id, fields in claimed:
                if entry_id is not None and fields:
                    return str(entry_id), fields
                # Redis 6.2 returns an entry deleted from the stream as nil (7.0 drops it from
                # the pending list itself): nothing to run.
            if cursor == "0-0":
                return None
        return None

    def _delivery(self, entry_id: str, fields: dict[str, str], *, taken_over: bool) -> Delivery:
        with self._calling("reading a batch's delivery count"):
            pending = self._redis.xpending_range(
                self.orders_key, ORDERS_GROUP, min=entry_id, max=entry_id, count=1
            )
        deliveries = int(pending[0]["times_delivered"]) if pending else 1
        try:
            batch = json.loads(fields["batch"])
        except (KeyError, ValueError) as exc:
            # Not ours to run, and no one else can run it either: the caller fails and acks it.
            log.error("broker_bad_entry", entry=entry_id, error=str(exc))
            batch = {"batch": None, "jobs": [], "error": f"unreadable entry: {exc}"}
            return Delivery(entry_id, batch, deliveries, poison=True, taken_over=taken_over)
        poison = deliveries > self.settings.max_attempts
        if taken_over:
            log.warning(
                "broker_batch_taken_over",
                entry=entry_id,
                batch=batch.get("batch"),
                deliveries=deliveries,
            )
        if poison:
            log.error(
                "broker_batch_poison",
                entry=entry_id,
                batch=batch.get("batch"),
                deliveries=deliveries,
                max_attempts=self.settings.max_attempts,
            )
        return Delivery(entry_id, batch, deliveries, poison=poison, taken_over=taken_over)

    def keep_lease(self, consumer: str, entry_id: str) -> bool:
        """Reset the idle time of a batch this worker runs, so it is not taken over. Call it
        every lease_seconds / 3 while the batch runs. False: the batch is no longer ours (taken
        over after a stall, or done): finishing it is harmless (completion is idempotent), but
        the worker may as well stop."""
        with self._calling("keeping the lease on a batch"):
            kept = self._keep_batch(keys=[self.orders_key], args=[ORDERS_GROUP, entry_id, consumer])
        return bool(kept)

    def ack_batch(self, entry_id: str) -> bool:
        """The batch is done (its results, or its failures, are reported): acknowledge it and
        delete it from the stream in one transaction, so the stream holds only unfinished work
        and never grows. False: it was no longer pending (another worker finished it first)."""

        def ack() -> bool:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.orders_key, ORDERS_GROUP, entry_id)
                pipe.xdel(self.orders_key, entry_id)
                acked, _ = pipe.execute()
            return bool(acked)

        return self._grouped("acknowledging a batch", ack)

    # --- Results: workers report, the coordinator reads through its own group.

    def report(self, result: dict[str, Any]) -> str:
        """Send one report to the coordinator (a job's result, failure, ...); returns its id.
        Report before ack_batch: a worker that dies between the two only causes a repeat."""
        data = json.dumps(result, sort_keys=True, separators=(",", ":"))
        with self._calling("reporting a result"):
            entry_id = self._redis.xadd(self.results_key, {"result": data})
        return str(entry_id)

    def results(self, block_ms: int = 1000, count: int = 100) -> list[ReportEntry]:
        """The next reports for the coordinator, oldest first; [] when none came in block_ms.

        A new Broker first returns, page by page, the reports that an earlier coordinator read
        and never acknowledged (it died before the journal had them); then new ones. Acknowledge
        each with ack_result once the journal has it.
        """
        while (cursor := self._results_cursor) is not None:
            page, last = self._grouped(
                "reading unacknowledged results", partial(self._read, cursor, count)
            )
            # Past the last entry of this page next time; the end of the backlog ends the mode.
            self._results_cursor = last
            if page:
                return page
        block = max(1, min(block_ms, _ms(self.settings.socket_timeout) // 2))
        page, _ = self._grouped("reading results", lambda: self._read(">", count, block))
        return page

    def _read(
        self, start: str, count: int, block: int | None = None
    ) -> tuple[list[ReportEntry], str | None]:
        """One XREADGROUP of the results; also the id to read the backlog on from (None at its
        end). From an id, Redis returns this consumer's pending entries after it, not new ones."""
        # redis-py's reply types cover RESP3 too; this client speaks RESP2 (see __init__).
        reply: Any = self._redis.xreadgroup(
            RESULTS_GROUP, RESULTS_CONSUMER, {self.results_key: start}, count=count, block=block
        )
        entries = reply[0][1] if reply else []
        page: list[ReportEntry] = []
        for entry_id, fields in entries:
            if not fields:
                # Deleted from the stream while pending: nothing to read, only to drop.
                self._redis.xack(self.results_key, RESULTS_GROUP, entry_id)
                continue
            page.append(ReportEntry(str(entry_id), json.loads(fields["result"])))
        last = str(entries[-1][0]) if entries else None
        return page, last

    def ack_result(self, entry_id: str) -> None:
        """The journal has this report: acknowledge and delete it (the results stream only holds
        reports not yet taken into the journal)."""

        def ack() -> None:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(self.results_key, RESULTS_GROUP, entry_id)
                pipe.xdel(self.results_key, entry_id)
                pipe.execute()

        self._grouped("acknowledging a result", ack)
