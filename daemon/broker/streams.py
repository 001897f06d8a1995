"""The two streams: batches of work orders to the workers, reports back to the coordinator."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import structlog

from daemon.broker.members import Members
from daemon.broker.settings import (
    ORDERS_GROUP,
    RESULTS_CONSUMER,
    RESULTS_GROUP,
    Backlog,
    BrokerSettings,
    Delivery,
    ReportEntry,
    ms,
)

log = structlog.get_logger()

_KEEP_BATCH = """
local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #entry == 0 or entry[1][2] ~= ARGV[3] then
    return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""


class Broker(Members):
    """The Redis side of several hosts: the coordinator's lease, dispatch, workers and results.

    One instance per process. Its methods are safe to call from several threads (redis-py keeps
    a connection pool), but a blocking read holds a connection for up to `block_ms`.
    Every Redis failure becomes a BrokerError (BrokerUnavailableError when Redis cannot be reached).
    """

    def __init__(self, settings: BrokerSettings) -> None:
        super().__init__(settings)
        self._keep_batch = self._redis.register_script(_KEEP_BATCH)
        # Where the backlog of unacknowledged results goes on; None once it is read.
        self._results_cursor: str | None = "0"

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
            # The id beside the batch: batch_ids() lists them without reading every order.
            entry_id = self._redis.xadd(self.orders_key, {"batch": data, "id": str(batch["batch"])})
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
        return set(self._listing())

    def batch_ids(self) -> set[str]:
        """The coordinator's ids ("batch") of every batch Redis holds (waiting or running)."""
        return {str(fields.get("id", "")) for fields in self._listing().values()}

    def _listing(self) -> dict[str, dict[str, str]]:
        """Every entry of the orders stream, by entry id, with its fields but the batch's."""
        found: dict[str, dict[str, str]] = {}
        start = "-"
        with self._calling("listing batches"):
            while True:
                page: Any = self._redis.xrange(self.orders_key, min=start, max="+", count=500)
                if not page:
                    return found
                for entry_id, fields in page:
                    # A deleted entry still pending comes back without fields on Redis 6.2.
                    kept = {str(k): str(v) for k, v in (fields or {}).items() if k != "batch"}
                    found[str(entry_id)] = kept
                start = "(" + str(page[-1][0])

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
        block = max(1, min(block_ms, ms(self.settings.socket_timeout) // 2))

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
                min_idle_time=ms(self.settings.lease_seconds),
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
        block = max(1, min(block_ms, ms(self.settings.socket_timeout) // 2))
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
