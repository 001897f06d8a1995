"""The event bus, and the live state file the service publishes from the events."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from test_worker import FakeEngine, enqueue

from daemon import events
from daemon.config import load_config
from daemon.journal import Journal
from daemon.live import LIVE_NAME, LiveState, read_live
from daemon.worker import Worker
from engine import errors


def test_events_are_frozen_values() -> None:
    event = events.JobQueued(1, "a.jpg", 0, "starry", "a.jpg")
    with pytest.raises(AttributeError):
        event.job = 2  # type: ignore[misc]
    assert event == events.JobQueued(1, "a.jpg", 0, "starry", "a.jpg", at=event.at)
    assert hash(event) == hash(events.JobQueued(1, "a.jpg", 0, "starry", "a.jpg", at=event.at))


def test_a_subscriber_that_raises_is_logged_and_the_others_still_run() -> None:
    bus = events.EventBus(log_lines=False)
    seen: list[tuple[str, events.Event]] = []

    def broken(event: events.Event) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(lambda e: seen.append(("first", e)))
    bus.subscribe(broken)
    bus.subscribe(lambda e: seen.append(("last", e)))
    event = events.JobCancelled("a.jpg", "source_removed")
    with capture_logs() as logs:
        bus.emit(event)
    assert seen == [("first", event), ("last", event)]
    (failure,) = logs
    assert failure["event"] == "event_subscriber_failed"
    assert failure["event_type"] == "JobCancelled"
    assert failure["log_level"] == "error"
    assert failure["exc_info"] is True


def test_the_log_lines_of_jobs_and_workers_are_written_from_their_events() -> None:
    bus = events.EventBus()
    with capture_logs() as logs:
        bus.emit(events.JobQueued(3, "a.jpg", "booth", "starry", "a.jpg"))
        bus.emit(events.JobDone(3, "a.jpg", "a.jpg", "booth", "starry", 1.5, details={"steps": 9}))
        bus.emit(events.JobRetry(4, "b.jpg", "starry", "io", "EIO", attempts=0, retry_in=5.0))
        bus.emit(events.JobFailed(5, "c.jpg", "c.jpg", "booth", "starry", "bad_image", "no"))
        bus.emit(events.JobCancelled("d.jpg", "source_removed", jobs=2))
        bus.emit(events.WorkerDown("worker-1", "killed by SIGKILL", restarts=1))
        bus.emit(events.ServiceHeartbeat(healthy=True))  # not a line of the log
    lines = [(e["event"], e["log_level"]) for e in logs]
    assert lines == [
        ("job_queued", "info"),
        ("job_done", "info"),
        ("job_retry", "warning"),
        ("job_failed", "warning"),
        ("job_cancelled", "info"),
        ("worker_down", "error"),
    ]
    queued, done, retry, failed, cancelled, down = logs
    assert (queued["rule"], queued["job"], queued["output"]) == ("booth", 3, "a.jpg")
    assert (done["result"], done["steps"], done["rule"]) == ("done", 9, "booth")
    assert (retry["retry_in"], retry["result"], retry["kind"]) == (5.0, "queued", "io")
    assert (failed["retry_in"], failed["result"]) == (None, "failed")
    assert (cancelled["jobs"], cancelled["reason"]) == (2, "source_removed")
    assert (down["worker"], down["restarts"]) == ("worker-1", 1)


def test_the_live_state_follows_jobs_and_is_published_whole(tmp_path: Path) -> None:
    live = LiveState(tmp_path)
    assert read_live(tmp_path) is None
    live.start()
    try:
        live(events.ServiceReady(pid=1, device="cpu", precision="bf16", input="/i", output="/o"))
        live(events.JobStarted(job=7, source="a/b.jpg", style="starry", steps=300, scales=3))
        live(events.JobProgress(jobs=(7,), scale=2, scales=3, step=150, steps=300, seconds=4.25))

        def running() -> list[dict[str, object]]:
            state = read_live(tmp_path)
            return [] if state is None else state["running"]

        deadline = time.monotonic() + 30
        while running() == [] or running()[0]["step"] != 150:
            assert time.monotonic() < deadline, read_live(tmp_path)
            time.sleep(0.05)
        (job,) = running()
        assert job == {
            "job": 7,
            "source": "a/b.jpg",
            "style": "starry",
            "scale": 2,
            "scales": 3,
            "step": 150,
            "steps": 300,
            "percent": 50.0,
            "seconds": 4.2,
        }
        live(
            events.JobDone(
                job=7, source="a/b.jpg", output="a/b.jpg", rule=0, style="starry", seconds=9.0
            )
        )
    finally:
        live.stop()
    state = json.loads((tmp_path / LIVE_NAME).read_text())
    assert state["running"] == []
    assert (state["model_loaded"], state["device"], state["precision"]) == (True, "cpu", "bf16")
    assert [p.name for p in tmp_path.iterdir()] == [LIVE_NAME]  # no temporary left


def test_temporaries_left_by_a_killed_service_are_removed_at_start(tmp_path: Path) -> None:
    left = tmp_path / f".{LIVE_NAME}.0badf00d.stylewatch-tmp"
    left.write_text("{")
    other = tmp_path / ".other.0badf00d.stylewatch-tmp"
    other.write_text("not ours")
    live = LiveState(tmp_path)
    live.start()
    live.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LIVE_NAME, other.name])


def test_released_and_finished_jobs_leave_the_running_list(tmp_path: Path) -> None:
    live = LiveState(tmp_path)
    for job in (1, 2, 3, 4):
        live(events.JobStarted(job=job, source=f"p{job}.jpg", style="s", steps=9, scales=1))
    live(events.JobsReleased((1, 2), "out_of_memory"))
    live(events.JobRetry(job=3, source="p3.jpg", style="s", kind="io", error="EIO"))
    assert [r["job"] for r in live.snapshot()["running"]] == [4]
    live(events.JobCancelled("p4.jpg", "source_removed", job=4))
    assert live.snapshot()["running"] == []


def test_the_worker_emits_each_job_event_once(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "paint.jpg").write_bytes(b"the fake engine never reads it")
    (tmp_path / "c.yaml").write_text(
        "input: inbox\noutput: outbox\nstate: state\nengine: {batch_size: 4}\n"
        "styles: {s: {image: paint.jpg}}\ndefaults: {size: 16, steps: 1}\n"
        "rules: [{match: '**/*', styles: [s]}]\n"
    )
    config = load_config(tmp_path / "c.yaml")
    journal = Journal.open(config.state)
    bus = events.EventBus()
    seen: list[events.Event] = []
    bus.subscribe(seen.append)
    engine = FakeEngine()
    worker = Worker(journal, engine, lambda: config, wall=lambda: 1000.0, bus=bus)
    try:
        enqueue(config, journal, "good.png", (200, 0, 0))
        (config.input / "bad.png").write_bytes(b"\x89PNG not really")
        good = journal.jobs()[0].order
        assert good is not None
        journal.enqueue(  # not a picture: it fails at decoding, before the engine
            dataclasses.replace(
                good,
                source="bad.png",
                fingerprint=hashlib.sha256((config.input / "bad.png").read_bytes()).hexdigest(),
                output="bad.png",
            )
        )
        assert worker.run_once()
        kinds = [type(e).__name__ for e in seen]
        assert kinds == ["JobFailed", "JobStarted", "JobDone"], kinds
        failed, started, done = seen
        assert isinstance(started, events.JobStarted)
        assert (started.source, started.steps, started.scales) == ("good.png", 1, 3)
        assert isinstance(failed, events.JobFailed)
        assert (failed.source, failed.kind.startswith("bad_image")) == ("bad.png", True)
        assert isinstance(done, events.JobDone)
        assert (done.source, done.output, done.style) == ("good.png", "good.png", "s")
        assert (config.output / done.output).is_file()  # in place when the event is emitted

        seen.clear()
        enqueue(config, journal, "big.png", (0, 200, 0))
        engine.fail_with = errors.OutOfMemoryError("no room")
        assert worker.run_once()
        assert [type(e).__name__ for e in seen] == ["JobStarted", "JobsReleased"]
    finally:
        journal.close()
