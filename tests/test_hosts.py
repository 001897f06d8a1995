"""Several hosts on one machine: the real daemon as the coordinator, a real redis-server (on a
Unix socket, append-only file on) and real `stylewatch worker` processes on the CPU, with a
random-weight VGG19 and tiny photos. Each test kills a part with SIGKILL (a worker mid-batch,
Redis, the coordinator) and then checks the promise: every photo exactly one output, nothing
partial, sources untouched, the journal's counts matching the outputs.

Leases are the shortest the config allows (5 s), so a takeover costs seconds; nothing asserts on
time: each step waits on a condition with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import STYLEWATCH, Daemon, Fleet, check_invariants, originals, photo, wait_until
from redisharness import RedisServer

from daemon.staging import STAGING_FOLDER

TESTS = Path(__file__).resolve().parent
# A photo of exactly this colour kills the worker that runs it (tests/hostsengine.py).
POISON = (255, 0, 255)


class Workers:
    """`stylewatch worker` processes on one config; each logs JSON lines to its own file."""

    def __init__(self, root: Path, config: Path) -> None:
        self.root = root
        self.config = config
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, env: dict[str, str] | None = None) -> None:
        log = self.log(name)
        before = self.count(name, "worker_up")
        with log.open("ab") as handle:
            self.procs[name] = subprocess.Popen(
                [str(STYLEWATCH), "worker", "-c", str(self.config), "--device", "cpu",
                 "--name", name, "--log-format", "json"],
                stdout=handle,
                stderr=handle,
                env={**os.environ, **(env or {})},
            )
        wait_until(
            lambda: self.count(name, "worker_up") > before or self.procs[name].poll() is not None,
            f"worker {name} to be up",
        )
        assert self.procs[name].poll() is None, log.read_text()

    def log(self, name: str) -> Path:
        return self.root / f"worker-{name}.log"

    def events(self, name: str) -> list[dict[str, Any]]:
        path = self.log(name)
        if not path.exists():
            return []
        lines = path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def count(self, name: str, event: str) -> int:
        return sum(e.get("event") == event for e in self.events(name))

    def all_events(self) -> list[dict[str, Any]]:
        return [e for name in self.procs for e in self.events(name)]

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait()

    def stop(self) -> None:
        """SIGTERM to each live worker: each unregisters and exits 0."""
        live = {n: p for n, p in self.procs.items() if p.poll() is None}
        for proc in live.values():
            proc.send_signal(signal.SIGTERM)
        for name, proc in live.items():
            assert proc.wait(timeout=120) == 0, self.log(name).read_text()[-3000:]

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def hosts(
    tmp_path: Path,
    vgg_checkpoint: Path,
    style_files: tuple[Path, Path],
    redis_server: RedisServer,
) -> Iterator[tuple[Fleet, Workers, RedisServer]]:
    fleet = Fleet(tmp_path, vgg_checkpoint, style_files)
    workers = Workers(tmp_path, tmp_path / "config.yaml")
    yield fleet, workers, redis_server
    workers.close()
    fleet.close()


def coordinator(
    fleet: Fleet, redis: RedisServer, *, steps: int, batch: int = 2, max_attempts: int = 3
) -> Daemon:
    daemon = fleet.daemon(settle=0.2, steps=steps, batch=batch)
    with daemon.config.open("a") as f:
        f.write(
            f"broker: {{url: 'unix://{redis.socket}', lease_seconds: 5, "
            f"max_attempts: {max_attempts}}}\n"
            "retry: {first_delay: 1, max_delay: 2, max_attempts: 10}\n"
        )
    return daemon


def burst(fleet: Fleet, n: int, prefix: str = "p") -> list[Path]:
    """n photos of distinct content (the prefix shifts the colours: no reuse of an artwork)."""
    blue = 90 + 40 * (ord(prefix) - ord("p"))
    return [
        photo(fleet.inbox / f"{prefix}{i}.png", (20 * i % 250, 200 - 15 * i % 200, blue))
        for i in range(n)
    ]


def all_done(daemon: Daemon, n: int) -> bool:
    return daemon.status()["counts"].get("done", 0) == n


def finish(daemon: Daemon, workers: Workers, fleet: Fleet, sources: list[Path], **kw: Any) -> None:
    """Stop everything cleanly and check the promise."""
    workers.stop()
    assert daemon.stop() == 0, daemon.log.read_text()[-3000:]
    status = check_invariants(
        daemon,
        outbox=fleet.outbox,
        sources=originals(sources),
        expected={p.name for p in sources} - {p.name for p in kw.get("rejected", [])},
        rejected={p.name for p in kw.get("rejected", [])},
    )
    done = len(sources) - len(kw.get("rejected", []))
    assert status["counts"] == {
        k: v for k, v in {"done": done, "failed": len(kw.get("rejected", []))}.items() if v
    }
    staging = fleet.outbox / STAGING_FOLDER
    assert not staging.exists() or list(staging.iterdir()) == []
    assert not daemon.saw("coordinator_error")


def test_a_burst_and_a_worker_killed_mid_batch(hosts: tuple[Fleet, Workers, RedisServer]) -> None:
    fleet, workers, redis = hosts
    daemon = coordinator(fleet, redis, steps=60)
    daemon.start()
    assert daemon.saw("coordinator_up")
    for name in ("a", "b"):
        workers.start(name)
    sources = burst(fleet, 8)
    # The first batch a worker takes: kill it in the middle (SIGKILL, no goodbye).
    victim = wait_until(
        lambda: next((n for n in ("a", "b") if workers.count(n, "batch_taken")), None),
        "a worker to take a batch",
    )
    workers.kill(victim)
    daemon.wait(lambda: all_done(daemon, len(sources)), "every photo", timeout=300)
    survivor = "b" if victim == "a" else "a"
    assert any(e.get("taken_over") for e in workers.events(survivor)), "no takeover"
    # `stylewatch status` lists the live workers (the dead one until its registration expires).
    listed = {w["name"]: w for w in daemon.status()["workers"]}
    assert survivor in listed
    assert all(w["host"] and w["device"] == "cpu" and w["pid"] for w in listed.values())
    text = subprocess.run(
        [str(STYLEWATCH), "status", "-c", str(daemon.config)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert f"worker {survivor} on " in text
    # SIGTERM in the middle of a batch: the worker finishes it, unregisters and exits 0.
    workers.start("c")
    taken = workers.count(survivor, "batch_taken")
    second = burst(fleet, 4, prefix="r")
    wait_until(lambda: workers.count(survivor, "batch_taken") > taken, "a batch for the survivor")
    proc = workers.procs[survivor]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, workers.log(survivor).read_text()[-3000:]
    # Every batch it took, the one it ran at SIGTERM included, it finished and acknowledged.
    assert workers.count(survivor, "batch_acknowledged") == workers.count(survivor, "batch_taken")
    assert workers.count(survivor, "worker_stopped") == 1
    sources += second
    daemon.wait(lambda: all_done(daemon, len(sources)), "the second wave", timeout=300)
    assert survivor not in {w["name"] for w in daemon.status()["workers"]}
    finish(daemon, workers, fleet, sources)


def test_redis_and_the_coordinator_killed_and_restarted(
    hosts: tuple[Fleet, Workers, RedisServer],
) -> None:
    fleet, workers, redis = hosts
    daemon = coordinator(fleet, redis, steps=30)
    daemon.start()
    for name in ("a", "b"):
        workers.start(name)
    sources = burst(fleet, 6)
    daemon.wait(lambda: daemon.saw("batch_dispatched"), "a dispatched batch")
    redis.restart()  # kill -9, then start on its append-only file
    first = burst(fleet, 3, prefix="q")
    daemon.wait(lambda: daemon.count("job_done") >= 2, "work going on after Redis came back")
    daemon.kill()  # the coordinator, kill -9, with batches out at the workers
    restarted = fleet.again(daemon)
    restarted.start()
    sources += first
    restarted.wait(lambda: all_done(restarted, len(sources)), "every photo", timeout=300)
    assert restarted.saw("coordinator_up")
    finish(restarted, workers, fleet, sources)


def test_the_coordinator_and_the_worker_command_load_without_torch() -> None:
    code = "import sys, daemon.coordinator, daemon.remote; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False", done.stderr


def test_a_second_coordinator_is_refused(hosts: tuple[Fleet, Workers, RedisServer]) -> None:
    fleet, _, redis = hosts
    daemon = coordinator(fleet, redis, steps=1)
    daemon.start()
    other_root = fleet.root / "other"
    other_root.mkdir()
    text = daemon.config.read_text()
    for key in ("input", "output", "state"):
        text = text.replace(f"{key}: ", f"{key}: {fleet.root}/other-", 1)
    (other_root / "config.yaml").write_text(text)
    (fleet.root / "other-inbox").mkdir()
    done = subprocess.run(
        [str(STYLEWATCH), "run", "-c", str(other_root / "config.yaml"), "--log-format", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 78, done.stderr
    assert "another coordinator" in done.stderr
    assert daemon.stop() == 0


def test_a_poison_photo_fails_after_max_attempts_and_the_others_finish(
    hosts: tuple[Fleet, Workers, RedisServer],
) -> None:
    fleet, workers, redis = hosts
    daemon = coordinator(fleet, redis, steps=1, batch=1, max_attempts=2)
    daemon.start()
    env = {
        "STYLEWATCH_TEST_ENGINE": "hostsengine:killer_engine",
        "PYTHONPATH": os.pathsep.join([os.environ.get("PYTHONPATH", ""), str(TESTS)]),
    }
    for name in ("a", "b", "c"):
        workers.start(name, env=env)
    sources = [*burst(fleet, 4), photo(fleet.inbox / "poison.png", POISON)]
    poison = sources[-1]
    daemon.wait(
        lambda: daemon.status()["counts"] == {"done": 4, "failed": 1}, "the poison to fail",
        timeout=300,
    )
    [failure] = daemon.status()["failures"]
    assert failure["source"] == "poison.png"
    assert failure["kind"] == "poison"
    assert "more than broker.max_attempts (2)" in failure["error"]
    dead = [n for n, p in workers.procs.items() if p.poll() is not None]
    assert len(dead) == 2, "each of the first two deliveries killed its worker"
    finish(daemon, workers, fleet, sources, rejected=[poison])


def test_check_reads_the_redis_settings(hosts: tuple[Fleet, Workers, RedisServer]) -> None:
    fleet, _, redis = hosts
    daemon = coordinator(fleet, redis, steps=1)

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(STYLEWATCH), "check", "-c", str(daemon.config)],
            capture_output=True, text=True, timeout=120, check=False,
        )

    done = check()
    assert done.returncode == 0, done.stderr
    assert f"broker: unix://{redis.socket}" in done.stdout
    client = redis.client()
    client.config_set("maxmemory-policy", "allkeys-lru")
    client.close()
    done = check()
    assert done.returncode == 78
    assert "noeviction" in done.stderr
    # The coordinator refuses to start on it too; a worker without broker.url refuses at once.
    daemon.launch()
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=120) == 78
    assert "noeviction" in daemon.log.read_text()
    plain = fleet.root / "plain.yaml"
    plain.write_text(daemon.config.read_text().split("broker:")[0])
    done = subprocess.run(
        [str(STYLEWATCH), "worker", "-c", str(plain)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 78
    assert "no broker.url" in done.stderr


def test_reports_complete_once_and_strays_are_removed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The coordinator's side in this process: a result completes its job, the same result again
    changes nothing, staged files no report will ask for go, a batch Redis lost is requeued."""
    from harness import one_rule_config, order

    from daemon import events
    from daemon.broker import Broker, BrokerSettings
    from daemon.config import load_config
    from daemon.coordinator import _Remote
    from daemon.journal import JobState, Journal
    from daemon.returns import OWNER_PREFIX, Returns
    from daemon.staging import staged_name, staging_folder
    from daemon.worker import Worker

    config = load_config(one_rule_config(tmp_path, "{size: 32}"))
    journal = Journal.open(config.state)
    broker = Broker(BrokerSettings(url=redis_server.url, lease_seconds=0.2))
    worker = Worker(journal, _Remote(), lambda: config, name="coordinator", bus=events.EventBus())
    staging = staging_folder(config.output)
    staging.mkdir(parents=True)
    returns = Returns(journal, lambda: config, broker, worker, staging=staging)
    for source in ("a.png", "b.png"):
        journal.enqueue(order(source, fingerprint=source, output=source))
    [a] = journal.take(1, time.time(), worker=OWNER_PREFIX + "aaaaaaaaaaaaaaaa")
    [b] = journal.take(1, time.time(), worker=OWNER_PREFIX + "bbbbbbbbbbbbbbbb")
    png = (TESTS.parent / "samples" / "chelsea.png").read_bytes()

    def report(job: int, batch: str) -> str:
        name = staged_name(job, batch, "x.png")
        (staging / name).write_bytes(png)
        broker.report(
            {"kind": "result", "batch": batch, "job": job, "staged": name, "summary": {}}
        )
        return name

    broker.dispatch({"batch": "aaaaaaaaaaaaaaaa", "jobs": []})  # a's batch: held by Redis
    first = report(a.id, "aaaaaaaaaaaaaaaa")
    again = report(a.id, "aaaaaaaaaaaaaaaa")  # a taken-over batch's second result
    wait_until(lambda: returns.apply_all() or journal.job(a.id).state is JobState.DONE, "a")
    returns.apply_all()
    assert journal.job(a.id).state is JobState.DONE
    # One output (no `a~2.png` from the repeat), the staged bytes exactly.
    assert sorted(p.name for p in config.output.iterdir() if p.is_file()) == ["a.png"]
    assert (config.output / "a.png").read_bytes() == png
    assert not (staging / first).exists()
    assert not (staging / again).exists()
    # A file of a running job stays; a stranger's of a job that ended goes.
    kept = staged_name(b.id, "bbbbbbbbbbbbbbbb", "b.png")
    stray = staged_name(a.id, "cccccccccccccccc", "a.png")
    for name in (kept, stray):
        (staging / name).write_bytes(b"x")
    returns.sweep()
    assert sorted(p.name for p in staging.iterdir()) == [kept]
    # b's batch is not in Redis and no report comes: after a lease, b is queued again.
    wait_until(
        lambda: returns.check_lost() or journal.job(b.id).state is JobState.QUEUED,
        "the lost batch to be requeued",
    )
    returns.sweep()
    assert list(staging.iterdir()) == []
    broker.close()
    journal.close()
