"""Trust: crashes. kill -9 at random moments, SIGTERM mid-job, a journal locked or damaged.

After each, every photo has exactly one output, none half-written, and the journal is never
quietly replaced by an empty one.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import (
    STYLEWATCH,
    Daemon,
    Fleet,
    OutputSpy,
    check_invariants,
    originals,
    output_names,
    photo,
    planned,
    sha256,
)

from daemon.journal import Journal, JournalError


def run_once(config: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`stylewatch run` expected to refuse to start: its exit code and message."""
    return subprocess.run(
        [str(STYLEWATCH), "run", "-c", str(config), "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def damages(good: bytes) -> dict[str, bytes]:
    page = 4096
    return {
        "garbage header": b"\xff" * 100 + good[100:],
        "broken b-tree page": good[:page] + b"\xff" * 12 + good[page + 12 :],
        "cut in half": good[: len(good) // 2],
        "one page left": good[:page],
        "random bytes": random.Random(7).randbytes(len(good)),
        "text": b"not a database at all\n" * 200,
    }


def test_sigterm_a_second_daemon_and_a_damaged_or_locked_journal_lose_nothing(
    fleet: Fleet,
) -> None:
    inbox, outbox = fleet.inbox, fleet.outbox
    daemon = fleet.daemon(steps=60, batch=1)  # a second or more per job
    with OutputSpy(outbox) as spy:
        daemon.start()
        # The state folder is taken: a second daemon says so and leaves everything alone.
        second = run_once(daemon.config)
        assert second.returncode == 78, second.stderr
        assert f"another stylewatch daemon (pid {daemon.proc.pid})" in second.stderr
        made = [photo(inbox / f"t{i}.jpg", (i * 80, 90, 10)) for i in range(3)]
        sources = {p: sha256(p) for p in made}
        daemon.wait(lambda: daemon.full_status()["counts"].get("running"), "a running job")

        # SIGTERM mid-job: the running batch is finished, not cut short; the rest stays queued.
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=120) == 0
        assert daemon.saw("service_stopped")
        assert not daemon.saw("batch_interrupted")
        status = daemon.full_status()
        assert set(status["counts"]) == {"done", "queued"}, status
        assert len(output_names(outbox)) == status["counts"]["done"]
        again = fleet.again(daemon).start()
        again.wait(lambda: len(output_names(outbox)) == 3, "the rest after the restart")
        assert again.stop() == 0
        done = output_names(outbox)

        # A damaged journal: refused, said so, left byte for byte as it was. Each damage
        # in-process (fast), and the one a disk is likeliest to do through the CLI as well.
        journal = fleet.root / "state" / "journal.sqlite3"
        good = journal.read_bytes()
        for what, damaged in damages(good).items():
            journal.write_bytes(damaged)
            with pytest.raises(JournalError, match="is damaged"):
                Journal.open(journal.parent)
            assert journal.read_bytes() == damaged, f"{what}: the journal was changed"
        journal.write_bytes(damages(good)["broken b-tree page"])
        refused = run_once(daemon.config)
        assert refused.returncode == 78, refused.stderr
        assert "is damaged" in refused.stderr
        assert "left untouched" in refused.stderr
        assert journal.read_bytes() == damages(good)["broken b-tree page"]

        # The journal locked by another program (an sqlite3 shell in a write transaction).
        journal.write_bytes(good)
        holder = sqlite3.connect(journal, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            refused = run_once(daemon.config)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert refused.returncode == 78, refused.stderr
        assert "locked by another process" in refused.stderr
        assert output_names(outbox) == done  # none of the refused starts touched anything

        # Back in good order: it carries on from where it was, nothing is redone.
        last = fleet.again(daemon).start()
        made.append(photo(inbox / "later.jpg", (5, 5, 250)))
        sources[made[-1]] = sha256(made[-1])
        last.wait(lambda: "later.jpg" in output_names(outbox), "a photo after the restart")
        assert last.stop() == 0
    status = check_invariants(
        last, outbox=outbox, sources=sources, expected={p.name for p in made}, spy=spy
    )
    assert status["counts"] == {"done": 4}


@pytest.mark.slow
def test_the_journal_locked_for_a_while_at_run_time_delays_but_loses_nothing(
    fleet: Fleet,
) -> None:
    """Another program (an sqlite3 shell) holds the journal's write lock for longer than the
    daemon's 5 s busy wait, while a batch runs and while a new photo arrives."""
    inbox, outbox = fleet.inbox, fleet.outbox
    daemon = fleet.daemon(steps=40)  # a second or two per batch of two
    with OutputSpy(outbox) as spy:
        daemon.start()
        made = [photo(inbox / f"b{i}.jpg", (i * 60, 200, 9)) for i in range(4)]
        daemon.wait(
            lambda: sum(e.get("event") == "job_queued" for e in daemon.events()) == 4,
            "four queued jobs",
        )
        holder = sqlite3.connect(fleet.root / "state" / "journal.sqlite3", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            made.append(photo(inbox / "while-locked.jpg", (100, 0, 100)))
            # 12 s: the intake's and then the worker's 5 s busy waits both run out (they share
            # the daemon's one connection, so they wait in turn).
            deadline = time.monotonic() + 12
            while time.monotonic() < deadline and not daemon.exited():
                time.sleep(0.1)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        daemon.wait(lambda: len(output_names(outbox)) == 5, "every photo after the unlock")
        assert daemon.stop() == 0
    check_invariants(
        daemon,
        outbox=outbox,
        sources=originals(made),
        expected={p.name for p in made},
        spy=spy,
        # A journal failure in the worker is logged with its traceback, then the batch is retried.
        allowed_bugs={"worker_error"},
    )
    # Intake paused while the lock was held (one line, not one per file), and resumed by itself.
    assert daemon.saw("intake_paused")
    assert daemon.saw("intake_resumed")
    # The worker meets the lock too: a batch whose journal write fails (worker_error, then the
    # batch requeued) or, since each photo is marked done as soon as it is written, that photo's
    # write within its batch (job_retry kind=journal: trouble that passes).
    assert daemon.saw("worker_error") or daemon.saw("job_retry", kind="journal")
    if daemon.saw("worker_error"):
        assert daemon.saw("jobs_requeued", reason="worker_error")


KILLS = 12
PHOTOS = 30


@pytest.mark.slow
def test_kill_9_at_random_moments_across_30_photos_loses_and_repeats_nothing(
    fleet: Fleet,
) -> None:
    """Twelve kill -9s at random moments (starting up, scanning, optimising, writing),
    restarted each time; photos keep arriving between restarts."""
    inbox, outbox = fleet.inbox, fleet.outbox
    seed = int(os.environ.get("TRUST_SEED", time.time_ns() % 1_000_000))
    chance = random.Random(seed)
    print(f"trust: kill loop seed={seed} (TRUST_SEED={seed} reruns it)")
    # A few under the two-style rule: a kill can fall between a photo's two outputs.
    made = [photo(inbox / f"k{i:02d}.jpg", (i * 8, 255 - i * 8, 90)) for i in range(15)]
    made += [photo(inbox / "booth1" / f"k{i:02d}.jpg", (i * 8, 9, 9)) for i in range(15, 20)]
    daemon = fleet.daemon(steps=20)  # about a second per batch: kills land in every phase
    kills = 0
    with OutputSpy(outbox) as spy:
        while kills < KILLS:
            ready_before = count(daemon, "service_ready")
            daemon.launch()
            if kills % 4 == 3:  # now and then while it starts up (loading, recovering, scanning)
                time.sleep(chance.uniform(0.2, 6.0))
            else:  # mostly while it works
                daemon.wait(more_than(daemon, "service_ready", ready_before), "ready")
                time.sleep(chance.uniform(0.0, 2.5))
            if len(made) < PHOTOS:
                made.append(photo(inbox / f"k{len(made):02d}.jpg", (len(made) * 8, 30, 200)))
            assert not daemon.exited(), daemon.log.read_text()[-3000:]
            daemon.kill()
            kills += 1
            assert spy.partial == [], spy.partial
            daemon = fleet.again(daemon)
        while len(made) < PHOTOS:
            made.append(photo(inbox / f"k{len(made):02d}.jpg", (len(made) * 8, 30, 200)))
        daemon.start()
        expected = planned(*(p.relative_to(inbox).as_posix() for p in made))
        daemon.wait(lambda: output_names(outbox) >= expected, "every output", timeout=300)
        assert daemon.stop() == 0
    status = check_invariants(
        daemon,
        outbox=outbox,
        sources=originals(made),
        expected=expected,
        spy=spy,
    )
    assert status["counts"] == {"done": len(expected)}  # 30 photos, 5 of them in two styles
    recovered = [e for e in daemon_events(fleet) if e.get("event") == "journal_recovered"]
    cleaned = sum(
        e.get("stale_temporaries", 0)
        for e in daemon_events(fleet)
        if e.get("event") == "service_starting"
    )
    print(
        f"trust: kills={kills} photos={PHOTOS} restarts_with_running_jobs={len(recovered)}"
        f" stale_temporaries_cleaned={cleaned} outputs_checked_while_running={spy.checked}"
    )
    assert recovered, "no kill landed while a job ran: the test proved little"


def count(daemon: Daemon, event: str) -> int:
    return sum(e.get("event") == event for e in daemon.events())


def more_than(daemon: Daemon, event: str, before: int) -> Callable[[], bool]:
    return lambda: count(daemon, event) > before


def daemon_events(fleet: Fleet) -> list[dict[str, object]]:
    """Every event of every run (they share one log file)."""
    return fleet.started[-1].events()
