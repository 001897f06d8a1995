"""Stopping like a good server, against the real daemon: a second signal stops at once with the
jobs queued, and a job killed mid-optimisation resumes from its snapshot."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from harness import Daemon, Fleet, complete_image, photo

STEPS = 600  # at 32 px on a 2-core CPU: about 20 s, long enough to be killed half-way through


def _snapshotting(fleet: Fleet, steps: int, batch: int = 1) -> Daemon:
    daemon = fleet.daemon(steps=steps, batch=batch)
    text = daemon.config.read_text()
    daemon.config.write_text(
        text.replace("download: false,", "download: false, snapshot_seconds: 0.3,")
    )
    return daemon


def _snapshot_step(state: Path) -> int:
    steps = []
    for sidecar in (state / "snapshots").glob("*.json"):
        try:
            steps.append(json.loads(sidecar.read_text())["step"])
        except (OSError, ValueError):
            continue  # replaced while read
    return max(steps, default=0)


def test_a_second_sigint_stops_at_once_with_the_jobs_queued(fleet: Fleet) -> None:
    daemon = _snapshotting(fleet, steps=100_000)  # would run for many minutes
    for name in ("a.png", "b.png"):
        photo(fleet.inbox / name, (200, 100, 50))
    daemon.start()
    daemon.wait(lambda: daemon.status()["counts"].get("running"), "a running job")
    daemon.signal(signal.SIGINT)
    waiting = daemon.wait(
        lambda: next((e for e in daemon.events() if e["event"] == "stop_waiting"), None),
        "the first signal's word on what it waits for",
    )
    assert waiting["grace_seconds"] == 30.0
    assert len(waiting["sources"]) == 1
    assert "second Ctrl-C" in waiting["hint"]
    assert not daemon.exited()  # the first signal waits for the batch
    daemon.signal(signal.SIGINT)
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=60) == 0
    assert daemon.saw("stopping_now", reason="second signal")
    assert daemon.saw("batch_interrupted")
    assert not daemon.saw("aborting_batch")  # not the grace time running out
    assert daemon.status()["counts"] == {"queued": 2}
    assert not list(fleet.outbox.rglob("*.png"))


def test_a_job_killed_mid_optimisation_resumes_from_its_snapshot(fleet: Fleet) -> None:
    daemon = _snapshotting(fleet, steps=STEPS)
    photo(fleet.inbox / "p.png", (40, 120, 200))
    state = fleet.root / "state"
    daemon.start()
    before = daemon.wait(
        lambda: (step := _snapshot_step(state)) > STEPS // 2 and step,
        "a snapshot past half the steps",
        timeout=300,
    )
    daemon.kill()
    assert not (fleet.outbox / "p.png").exists()
    restarted = fleet.again(daemon).start()
    restarted.wait(lambda: restarted.saw("job_done", source="p.png"), "the job done", timeout=300)
    (resumed,) = [e for e in restarted.events() if e["event"] == "job_resumed"][-1:]
    assert resumed["source"] == "p.png"
    assert resumed["step"] >= before  # the last snapshot before the kill, or a later one
    # Fewer steps ran after the restart than before it.
    assert STEPS - resumed["step"] < resumed["step"]
    output = fleet.outbox / "p.png"
    assert complete_image(output) is None
    assert output.stat().st_size > 0
    assert restarted.status()["counts"] == {"done": 1}
    assert restarted.stop() == 0
    assert not list((state / "snapshots").iterdir())  # done: its snapshot is gone
