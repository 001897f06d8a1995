"""Who takes part: the coordinator's lease (one per input tree) and the registered workers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from daemon.broker.client import BrokerClient
from daemon.broker.settings import (
    ORDERS_GROUP,
    BrokerError,
    BrokerSettings,
    CoordinatorBusyError,
    WorkerInfo,
    ms,
)

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


class Members(BrokerClient):
    """The coordinator's lease and the worker registry, on top of the connection."""

    def __init__(self, settings: BrokerSettings) -> None:
        super().__init__(settings)
        self._renew_lease = self._redis.register_script(_RENEW_LEASE)
        self._release_lease = self._redis.register_script(_RELEASE_LEASE)

    # --- The coordinator's lease: one coordinator per input tree (beside its local flock).

    def acquire_coordinator(self, owner_id: str, lease_seconds: float) -> None:
        """Take the lease for `lease_seconds` (SET NX PX: only when nobody holds it), or raise
        CoordinatorBusyError naming the holder. Holding it already (the same owner_id) renews it.
        A coordinator that dies keeps it until it expires, so a restart may wait that long."""
        for _ in range(3):
            with self._calling("acquiring the coordinator lease"):
                if self._redis.set(self.lease_key, owner_id, nx=True, px=ms(lease_seconds)):
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
            done = self._renew_lease(keys=[self.lease_key], args=[owner_id, ms(lease_seconds)])
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
            pipe.pexpire(key, ms(self.settings.worker_ttl_seconds))
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
                pipe.pexpire(key, ms(self.settings.worker_ttl_seconds))
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
