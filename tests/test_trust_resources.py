"""Trust: resources. A full output disk, an input folder that goes away, lost events, a burst.

Each fault is real where the machine allows it: a small tmpfs for the full disk, a folder moved
away for the unavailable input, the kernel's own inotify queue overflowing for the lost events.
"""

from __future__ import annotations

import errno
import hashlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import (
    Daemon,
    Fleet,
    OutputSpy,
    check_invariants,
    originals,
    output_names,
    photo,
    small_tmpfs,
    temporaries,
)

QUEUE_LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")


def count(daemon: Daemon, event: str, **fields: object) -> int:
    return sum(
        e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        for e in daemon.events()
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted on the output folder."""
    with small_tmpfs(
        tmp_path / "outbox", "256k", "tests/test_worker.py covers ENOSPC in-process"
    ) as folder:
        yield folder


def fill(folder: Path) -> Path:
    """Write until the filesystem says ENOSPC; returns the filler file."""
    filler = folder / "filler.bin"
    with filler.open("wb", buffering=0) as out, pytest.raises(OSError, match="No space") as full:  # noqa: PT012
        while True:
            out.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


def test_a_full_output_disk_is_retried_and_recovers_when_space_returns(
    fleet: Fleet, small_disk: Path
) -> None:
    inbox, outbox = fleet.inbox, small_disk
    filler = fill(outbox)
    daemon = fleet.daemon()
    made = [photo(inbox / f"f{i}.jpg", (i * 70, 20, 200)) for i in range(3)]
    with OutputSpy(outbox) as spy:
        daemon.start()
        daemon.wait(lambda: count(daemon, "job_retry", kind="io") >= 3, "every write to fail")
        failed = [e for e in daemon.events() if e.get("event") == "job_retry"]
        assert all("No space left on device" in e["error"] for e in failed), failed
        assert temporaries(outbox) == []  # the failed writes left nothing behind
        assert output_names(outbox) == {"filler.bin"}
        filler.unlink()  # space returns; the back-off (5 s after a first failure) retries
        daemon.wait(lambda: len(output_names(outbox)) == 3, "the outputs once there is space")
        assert daemon.stop() == 0
    status = check_invariants(
        daemon,
        outbox=outbox,
        sources=originals(made),
        expected={p.name for p in made},
        spy=spy,
    )
    assert status["counts"] == {"done": 3}
    print(f"trust: enospc faults={count(daemon, 'job_retry', kind='io')}")


def test_the_input_folder_away_for_a_while_then_back_loses_nothing(
    fleet: Fleet, tmp_path: Path
) -> None:
    inbox, outbox = fleet.inbox, fleet.outbox
    away = tmp_path / "inbox-away"  # an unmounted share, an unplugged card: the folder vanishes
    daemon = fleet.daemon(steps=40)  # a second or so per batch: jobs are still queued
    made = [photo(inbox / f"a{i}.jpg", (i * 30, 200, 40)) for i in range(8)]
    with OutputSpy(outbox) as spy:
        daemon.start()
        daemon.wait(lambda: count(daemon, "job_done") >= 1, "a first output")
        inbox.rename(away)
        daemon.wait(lambda: daemon.saw("input_unavailable"), "the daemon to notice")
        made.append(photo(away / "while-away.jpg", (9, 9, 9)))
        # The admin's first question still has an answer while the share is away.
        assert daemon.status()["counts"].get("done", 0) >= 1
        # Jobs that come up meanwhile find no source; give the worker time to meet them.
        daemon.wait(
            lambda: count(daemon, "job_cancelled", reason="source_removed") >= 1,
            "a queued job to meet the missing folder",
        )
        away.rename(inbox)
        sources = {inbox / p.name: digest for p, digest in originals(made).items()}
        daemon.wait(lambda: daemon.saw("input_available"), "the daemon to see it back")
        daemon.wait(lambda: len(output_names(outbox)) == 9, "every photo after the return")
        assert daemon.stop() == 0
    check_invariants(
        daemon,
        outbox=outbox,
        sources=sources,
        expected={p.name for p in sources},
        spy=spy,
    )


def test_an_inotify_queue_overflow_is_recovered_by_the_rescan(fleet: Fleet) -> None:
    limit = int(QUEUE_LIMIT.read_text())
    if limit > 300_000:
        pytest.skip(f"max_queued_events is {limit}: flooding it would take too long here")
    inbox, outbox = fleet.inbox, fleet.outbox
    daemon = fleet.daemon(rescan=3).start()
    assert daemon.proc is not None
    scans_before = count(daemon, "scan_done")
    # Stopped, the daemon reads no events: the kernel queues them until its limit, then drops
    # the rest and queues one IN_Q_OVERFLOW. Each open/write/close round is three events.
    daemon.signal(signal.SIGSTOP)
    try:
        noise = inbox / "noise.log"
        for _ in range(limit // 3 + 1000):
            with noise.open("ab") as out:
                out.write(b".")
        made = [photo(inbox / f"o{i:02d}.jpg", (i * 12, 90, 30)) for i in range(10)]
    finally:
        daemon.signal(signal.SIGCONT)
    with OutputSpy(outbox) as spy:
        daemon.wait(
            lambda: daemon.saw("Inotify queue overflowed; filesystem events were lost"),
            "the overflow to be reported",
        )
        daemon.wait(lambda: len(output_names(outbox)) == 10, "every photo, found by the rescan")
        assert count(daemon, "scan_done") > scans_before
        assert daemon.stop() == 0
    check_invariants(
        daemon,
        outbox=outbox,
        sources=originals(made),
        expected={p.name for p in made},
        spy=spy,
    )
    print(f"trust: inotify overflow events_flooded={3 * (limit // 3 + 1000)} limit={limit}")


@pytest.mark.slow
def test_a_burst_of_1000_photos_gives_1000_outputs(fleet: Fleet, tmp_path: Path) -> None:
    inbox, outbox = fleet.inbox, fleet.outbox
    daemon = fleet.daemon(batch=8).start()
    # Made aside first, then copied in as fast as the disk allows.
    template = photo(tmp_path / "template.jpg", (10, 10, 10), size=(24, 16)).read_bytes()
    sources = {}
    started = time.monotonic()
    with OutputSpy(outbox, interval=0.5) as spy:
        for i in range(1000):
            target = inbox / f"burst{i // 100}" / f"b{i:04d}.jpg"
            target.parent.mkdir(exist_ok=True)
            content = template[:-2] + i.to_bytes(2, "big") + template[-2:]
            target.write_bytes(content)
            sources[target] = hashlib.sha256(content).hexdigest()
        written = time.monotonic() - started
        daemon.wait(lambda: len(output_names(outbox)) >= 1000, "1000 outputs", timeout=900)
        assert daemon.stop() == 0
    status = check_invariants(
        daemon,
        outbox=outbox,
        sources=sources,
        expected={p.relative_to(inbox).as_posix() for p in sources},
        spy=spy,
    )
    assert status["counts"] == {"done": 1000}
    print(
        f"trust: burst files=1000 written_in={written:.1f}s"
        f" processed_in={time.monotonic() - started:.0f}s"
    )
