"""The pool with the real daemon: two worker processes on the CPU, one killed with SIGKILL in the
middle of its batch again and again. Every photo still ends with exactly one output, nothing
partial, the dead worker is restarted, and the service never stops."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from harness import Fleet, check_invariants, originals, photo

KILLS = 3


def test_a_worker_killed_mid_batch_again_and_again_loses_nothing(
    tmp_path: Path, vgg_checkpoint: Path, style_files: tuple[Path, Path]
) -> None:
    fleet = Fleet(tmp_path, vgg_checkpoint, style_files)
    daemon = fleet.daemon(settle=0.2, steps=150, batch=2)
    text = daemon.config.read_text().replace("device: cpu", "devices: [cpu, cpu]")
    # Retried soon: the test need not wait out the default first delay after each kill.
    daemon.config.write_text(text + "retry: {first_delay: 1, max_delay: 2, max_attempts: 10}\n")
    sources = [photo(fleet.inbox / f"p{i}.jpg", (20 * i, 200 - 20 * i, 90)) for i in range(4)]
    try:
        daemon.start()
        assert daemon.count("worker_up") == 2
        for kill in range(KILLS):
            # Two new photos each round: the worker whose batch takes one of them dies in the
            # middle of it.
            wave = [
                photo(fleet.inbox / f"k{kill}-{i}.jpg", (60 * kill, 30 * i, 200)) for i in range(2)
            ]
            sources += wave
            names = {p.name for p in wave}

            def started(names: set[str] = names) -> dict[str, object] | None:
                for e in daemon.events():
                    if e["event"] == "batch_started" and names & set(e["sources"]):
                        return e
                return None

            victim = daemon.wait(started, f"a batch of wave {kill}")["worker"]
            pid = [
                e for e in daemon.events() if e["event"] == "worker_up" and e["worker"] == victim
            ][-1]["pid"]
            downs, ups = daemon.count("worker_down"), daemon.count("worker_up")
            os.kill(pid, signal.SIGKILL)
            daemon.wait(lambda n=downs: daemon.count("worker_down") > n, "the pool to see it died")
            daemon.wait(lambda n=ups: daemon.count("worker_up") > n, "the dead worker restarted")
        daemon.wait(lambda: daemon.count("job_done") == len(sources), "every photo", timeout=300)
        assert daemon.proc is not None
        assert daemon.proc.poll() is None  # it never stopped
        status = daemon.status()
        assert status["counts"] == {"done": len(sources)}
        retried = [e for e in daemon.events() if e["event"] == "job_retry"]
        assert {e["kind"] for e in retried} == {"worker_died"}
        assert daemon.stop() == 0
        check_invariants(
            daemon,
            outbox=fleet.outbox,
            sources=originals(sources),
            expected={p.name for p in sources},
        )
        # Every worker process ended with the service.
        time.sleep(0.5)
        for e in daemon.events():
            if e["event"] == "worker_up":
                assert not _alive(e["pid"]), f"worker process {e['pid']} outlived the service"
    finally:
        fleet.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by its parent) counts as ended.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
