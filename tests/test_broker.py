"""daemon/broker/ against a real redis-server (tests/redisharness.py): dispatch, leases,
takeover, poison batches, the coordinator's lease, kill -9 of Redis, server checks and errors.

Leases are short (fractions of a second) so that takeovers happen quickly; nothing asserts on
time: each test waits on a condition with a deadline.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import wait_until
from redisharness import RedisServer, redis_server_binary

from daemon.broker import (
    Broker,
    BrokerError,
    BrokerSettings,
    BrokerUnavailableError,
    CoordinatorBusyError,
    Delivery,
)

# Short enough that a takeover comes quickly, long enough that a renewal a few milliseconds
# after the last one always lands within it.
LEASE = 0.3


def batch(name: str, *jobs: str) -> dict[str, Any]:
    return {
        "batch": name,
        "jobs": [
            {"job": job, "attempt": 1, "order": {"source": f"{job}.jpg"}, "claimed": f"{job}.png"}
            for job in jobs
        ],
    }


@pytest.fixture
def brokers(redis_server: RedisServer) -> Iterator[Any]:
    """make(**settings) -> a Broker on the test's server; all closed after the test."""
    made: list[Broker] = []

    def make(**overrides: Any) -> Broker:
        settings = BrokerSettings(**{"url": redis_server.url, "lease_seconds": LEASE, **overrides})
        broker = Broker(settings)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def take(broker: Broker, consumer: str) -> Delivery:
    """The next batch for `consumer`, waiting for one (a takeover needs the lease to run out)."""
    return wait_until(lambda: broker.next_batch(consumer, block_ms=50), f"a batch for {consumer}")


def idle_ms(server: RedisServer, broker: Broker, entry_id: str) -> int:
    client = server.client()
    try:
        [entry] = client.xpending_range(broker.orders_key, "workers", entry_id, entry_id, 1)
        return int(entry["time_since_delivered"])
    finally:
        client.close()


def owner(server: RedisServer, broker: Broker, entry_id: str) -> str | None:
    client = server.client()
    try:
        entries = client.xpending_range(broker.orders_key, "workers", entry_id, entry_id, 1)
        return str(entries[0]["consumer"]) if entries else None
    finally:
        client.close()


def test_dispatch_consume_report_ack(brokers: Any) -> None:
    coordinator, worker = brokers(), brokers()
    worker.register_worker("gpu-a:cuda:0", host="gpu-a", device="cuda:0", pid=101, capacity=1)
    assert coordinator.room() == 1

    sent = batch("b1", "j1", "j2")
    entry_id = coordinator.dispatch(sent)
    assert coordinator.is_pending(entry_id)
    assert coordinator.backlog().waiting == 1
    assert coordinator.room() == 0

    delivery = take(worker, "gpu-a:cuda:0")
    assert delivery.entry_id == entry_id
    assert delivery.batch == sent
    assert (delivery.deliveries, delivery.poison, delivery.taken_over) == (1, False, False)
    backlog = coordinator.backlog()
    assert (backlog.waiting, backlog.running) == (0, 1)
    assert worker.keep_lease("gpu-a:cuda:0", entry_id)

    for job in ("j1", "j2"):
        worker.report({"kind": "result", "batch": "b1", "job": job, "staged": f"{job}.tmp"})
    assert worker.ack_batch(entry_id)
    assert not worker.ack_batch(entry_id), "a second acknowledgement finds nothing pending"
    assert not coordinator.is_pending(entry_id)
    assert coordinator.entries() == set()
    assert coordinator.room() == 1

    reports = wait_until(lambda: coordinator.results(block_ms=50), "the reports")
    assert [report.result["job"] for report in reports] == ["j1", "j2"]
    for report in reports:
        coordinator.ack_result(report.entry_id)
    assert coordinator.results(block_ms=10) == []
    # Acknowledged entries are deleted: neither stream grows with finished work.
    client = coordinator._redis
    assert client.xlen(coordinator.orders_key) == 0
    assert client.xlen(coordinator.results_key) == 0


def test_a_batch_whose_worker_stops_renewing_is_taken_over(
    brokers: Any, redis_server: RedisServer
) -> None:
    coordinator, dead, alive = brokers(), brokers(), brokers()
    entry_id = coordinator.dispatch(batch("b1", "j1"))
    first = take(dead, "dead")
    assert first.entry_id == entry_id
    # `dead` never calls keep_lease again: after the lease, another worker gets the batch.
    second = take(alive, "alive")
    assert second.entry_id == entry_id
    assert second.batch == first.batch
    assert (second.deliveries, second.taken_over, second.poison) == (2, True, False)
    assert owner(redis_server, coordinator, entry_id) == "alive"
    # The slow worker, back, cannot take its old batch back from the one that runs it now.
    assert not dead.keep_lease("dead", entry_id)
    assert owner(redis_server, coordinator, entry_id) == "alive"
    assert alive.keep_lease("alive", entry_id)
    assert alive.ack_batch(entry_id)
    assert not dead.ack_batch(entry_id)


def test_renewing_the_lease_prevents_takeover(brokers: Any, redis_server: RedisServer) -> None:
    lease = 2.0
    coordinator = brokers()
    owner_, other = brokers(lease_seconds=lease), brokers(lease_seconds=lease)
    entry_id = coordinator.dispatch(batch("b1", "j1"))
    take(owner_, "owner")
    # Let the batch become claimable, then renew it: it is no longer idle for a lease, and the
    # other worker gets nothing.
    wait_until(
        lambda: idle_ms(redis_server, coordinator, entry_id) > lease * 1000,
        "the batch to be idle past its lease",
    )
    assert owner_.keep_lease("owner", entry_id)
    assert idle_ms(redis_server, coordinator, entry_id) < lease * 1000
    assert other.next_batch("other", block_ms=10) is None
    assert owner(redis_server, coordinator, entry_id) == "owner"
    # Renewal does not count as a delivery: the takeover after it is the second.
    taken = take(other, "other")
    assert (taken.entry_id, taken.deliveries) == (entry_id, 2)


def test_a_batch_delivered_more_than_max_attempts_times_is_poison(brokers: Any) -> None:
    coordinator = brokers()
    entry_id = coordinator.dispatch(batch("b1", "poison"))
    other_id = coordinator.dispatch(batch("b2", "fine"))
    workers = [brokers(max_attempts=2) for _ in range(3)]
    # Each worker dies on the batch (never renews, never acknowledges).
    deliveries = [take(worker, f"w{n}") for n, worker in enumerate(workers[:2])]
    assert [(d.entry_id, d.poison) for d in deliveries] == [(entry_id, False), (other_id, False)]
    seen: list[Delivery] = []
    for n in range(2, 6):
        delivery = take(workers[n % 3], f"w{n}")
        seen.append(delivery)
        if delivery.entry_id == entry_id and delivery.poison:
            break
    poison = seen[-1]
    assert (poison.entry_id, poison.poison, poison.deliveries) == (entry_id, True, 3)
    assert poison.batch["jobs"][0]["job"] == "poison"
    # The caller fails its photos with a reason and acknowledges it: it is gone for good.
    workers[0].report({"kind": "failed", "job": "poison", "reason": "delivered 3 times"})
    assert workers[0].ack_batch(entry_id)
    assert entry_id not in coordinator.entries()


def test_a_second_coordinator_is_refused_until_the_lease_expires(brokers: Any) -> None:
    first, second = brokers(), brokers()
    first.acquire_coordinator("host-a:pid-1", lease_seconds=LEASE)
    with pytest.raises(CoordinatorBusyError, match="host-a:pid-1") as refused:
        second.acquire_coordinator("host-b:pid-2", lease_seconds=LEASE)
    assert refused.value.holder == "host-a:pid-1"
    assert first.coordinator() == "host-a:pid-1"
    assert first.renew_coordinator("host-a:pid-1", LEASE)
    first.acquire_coordinator("host-a:pid-1", LEASE)  # ours already: a renewal
    assert not second.release_coordinator("host-b:pid-2"), "only the holder may release"
    assert first.coordinator() == "host-a:pid-1"

    # The first coordinator stops renewing (it died): the second takes over after the lease.
    def took_over() -> bool:
        try:
            second.acquire_coordinator("host-b:pid-2", lease_seconds=30)
        except CoordinatorBusyError:
            return False
        return True

    wait_until(took_over, "the second coordinator to take the lease")
    assert not first.renew_coordinator("host-a:pid-1", LEASE), "the first must stop dispatching"
    assert not first.release_coordinator("host-a:pid-1")
    with pytest.raises(CoordinatorBusyError, match="host-b:pid-2"):
        first.acquire_coordinator("host-a:pid-1", LEASE)
    assert second.release_coordinator("host-b:pid-2")
    assert first.coordinator() is None
    first.acquire_coordinator("host-a:pid-1", LEASE)


def test_kill_9_of_redis_keeps_pending_batches_and_unacknowledged_results(
    brokers: Any, redis_server: RedisServer
) -> None:
    coordinator, worker = brokers(), brokers()
    running_id = coordinator.dispatch(batch("b1", "j1"))
    waiting_id = coordinator.dispatch(batch("b2", "j2"))
    assert take(worker, "w").entry_id == running_id
    worker.report({"job": "j0", "n": 0})
    read = wait_until(lambda: coordinator.results(block_ms=50), "the first report")
    assert [r.result["job"] for r in read] == ["j0"]  # read, never acknowledged
    worker.report({"job": "j1", "n": 1})  # never read

    redis_server.restart()  # kill -9, then start on the same append-only file

    # The same Broker reconnects; a new one (a restarted coordinator) sees the same state.
    assert worker.entries() == {running_id, waiting_id}
    assert owner(redis_server, worker, running_id) == "w"
    backlog = worker.backlog()
    assert (backlog.waiting, backlog.running) == (1, 1)
    restarted = brokers()
    backlog_reports = wait_until(lambda: restarted.results(block_ms=50), "the read report")
    assert [r.result["job"] for r in backlog_reports] == ["j0"]
    new_reports = wait_until(lambda: restarted.results(block_ms=50), "the unread report")
    assert [r.result["job"] for r in new_reports] == ["j1"]
    for report in backlog_reports + new_reports:
        restarted.ack_result(report.entry_id)
    # The worker keeps its batch and finishes it; the waiting one is still delivered.
    assert worker.keep_lease("w", running_id)
    assert worker.ack_batch(running_id)
    assert take(worker, "w").entry_id == waiting_id


def test_redis_restarted_without_its_data_forgets_batches_and_recovers(tmp_path: Path) -> None:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "volatile", appendonly=False)
    server.start()
    try:
        broker = Broker(BrokerSettings(url=server.url, lease_seconds=LEASE))
        lost = broker.dispatch(batch("b1", "j1"))
        assert take(broker, "w").entry_id == lost
        server.restart()
        # The coordinator sees the batch is gone (and would put its jobs back) ...
        assert not broker.is_pending(lost)
        assert broker.entries() == set()
        # ... and the groups come back by themselves for the next dispatch.
        again = broker.dispatch(batch("b1", "j1"))
        assert take(broker, "w").entry_id == again
        broker.report({"job": "j1"})
        reports = wait_until(lambda: broker.results(block_ms=50), "the report")
        assert reports[0].result["job"] == "j1"
        broker.close()
    finally:
        server.stop()


def test_workers_register_heartbeat_and_expire(brokers: Any) -> None:
    coordinator = brokers()
    worker = brokers(worker_ttl_seconds=LEASE)
    worker.register_worker("a:cuda:0", host="a", device="cuda:0", pid=11, capacity=2)
    worker.register_worker("b:cuda:1", host="b", device="cuda:1", pid=12)
    assert worker.heartbeat("a:cuda:0", running=["j1", "j2"])
    listed = {info.name: info for info in coordinator.workers()}
    assert set(listed) == {"a:cuda:0", "b:cuda:1"}
    a = listed["a:cuda:0"]
    assert (a.host, a.device, a.pid, a.capacity, a.running) == ("a", "cuda:0", 11, 2, ("j1", "j2"))
    assert a.heartbeat >= a.started > 0
    assert coordinator.backlog().capacity == 3

    worker.unregister_worker("b:cuda:1")
    assert [info.name for info in coordinator.workers()] == ["a:cuda:0"]
    # No more heartbeats: the registration expires, and the worker drops out of the list.
    wait_until(lambda: coordinator.workers() == [], "the silent worker to drop out")
    assert coordinator.room() == 0
    assert not worker.heartbeat("a:cuda:0"), "an expired worker must register again"


def test_namespaces_keep_installs_apart(brokers: Any) -> None:
    one, two = brokers(namespace="site-one"), brokers(namespace="site-two")
    entry_id = one.dispatch(batch("b1", "j1"))
    assert two.next_batch("w", block_ms=10) is None
    assert two.entries() == set()
    two.acquire_coordinator("two", LEASE)
    one.acquire_coordinator("one", LEASE)
    assert take(one, "w").entry_id == entry_id


def test_check_server(brokers: Any, redis_server: RedisServer) -> None:
    broker = brokers()
    check = broker.check_server()
    assert check.server in {"redis", "valkey"}
    assert check.version
    assert check.problems == ()
    assert check.ok

    client = redis_server.client()
    client.config_set("appendonly", "no")
    check = broker.check_server()
    assert [p.level for p in check.problems] == ["warning"]
    assert "appendonly" in check.problems[0].message
    assert check.ok

    client.config_set("maxmemory-policy", "allkeys-lru")
    check = broker.check_server()
    assert sorted(p.level for p in check.problems) == ["error", "warning"]
    assert any("noeviction" in p.message for p in check.problems if p.level == "error")
    assert not check.ok

    # A managed Redis that refuses CONFIG: said so, not guessed.
    client.acl_setuser(
        "limited",
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-config"],
    )
    client.close()
    limited = brokers(url=f"unix://limited:secret@{redis_server.socket}")
    check = limited.check_server()
    assert [p.level for p in check.problems] == ["warning"]
    assert "could not check" in check.problems[0].message
    assert "secret" not in limited.url


def test_unreachable_redis_is_a_broker_error_naming_the_url(
    brokers: Any, redis_server: RedisServer
) -> None:
    broker = brokers(retries=0)
    broker.ping()
    redis_server.kill()  # the socket file stays: connections are refused
    where = re.escape(str(redis_server.socket))
    with pytest.raises(BrokerUnavailableError, match=where) as refused:
        broker.dispatch(batch("b1", "j1"))
    assert "dispatching a batch" in str(refused.value)
    with pytest.raises(BrokerUnavailableError, match=where):
        broker.next_batch("w", block_ms=10)

    # A TCP address nobody listens on; the password never shows in the message.
    tcp = Broker(BrokerSettings(url="redis://:hunter2@127.0.0.1:1/0", retries=0))
    with pytest.raises(BrokerUnavailableError, match=re.escape("127.0.0.1:1")) as refused:
        tcp.ping()
    assert "hunter2" not in str(refused.value)
    tcp.close()

    with pytest.raises(BrokerError, match="scheme"):
        Broker(BrokerSettings(url="http://127.0.0.1:6379"))


def test_unregistering_keeps_the_consumer_of_a_worker_that_holds_a_batch(
    brokers: Any, redis_server: RedisServer
) -> None:
    coordinator, busy, idle = brokers(), brokers(), brokers()
    entry_id = coordinator.dispatch(batch("b1", "j1"))
    for name, broker in (("busy", busy), ("idle", idle)):
        broker.register_worker(name, host="h", device="cpu", pid=1)
    assert take(busy, "busy").entry_id == entry_id
    done_id = coordinator.dispatch(batch("b2", "j2"))
    assert take(idle, "idle").entry_id == done_id
    assert idle.ack_batch(done_id)

    def consumers() -> set[str]:
        client = redis_server.client()
        try:
            return {c["name"] for c in client.xinfo_consumers(coordinator.orders_key, "workers")}
        finally:
            client.close()

    assert consumers() == {"busy", "idle"}
    busy.unregister_worker("busy")
    idle.unregister_worker("idle")
    # Removing "busy" from the group would drop its batch from the pending list for good.
    assert consumers() == {"busy"}
    assert coordinator.workers() == []
    taken = take(idle, "idle")
    assert (taken.entry_id, taken.taken_over) == (entry_id, True)


def test_the_broker_loads_without_torch_the_journal_or_the_rules() -> None:
    """Workers and the coordinator build on it; `stylewatch status` lists workers through it."""
    code = (
        "import sys, daemon.broker; "
        "print(sorted({'torch', 'daemon.journal', 'daemon.rules'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stderr
