"""StabilityTracker: a file is ready only after settle_seconds without change or activity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.stability import Signature, StabilityTracker, stat_signature


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeStat:
    """Signatures by path; a missing key means the file is gone."""

    def __init__(self) -> None:
        self.files: dict[Path, Signature] = {}

    def __call__(self, path: Path) -> Signature | None:
        return self.files.get(path)

    def write(self, path: Path, size: int, mtime_ns: int = 1) -> Signature:
        self.files[path] = Signature(size=size, mtime_ns=mtime_ns, inode=7, device=1)
        return self.files[path]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fs() -> FakeStat:
    return FakeStat()


def test_file_is_due_only_after_settle_time(clock: Clock, fs: FakeStat) -> None:
    tracker = StabilityTracker(2.0, now=clock)
    photo = Path("in/a.jpg")
    tracker.observe(photo, fs.write(photo, 100))
    clock.advance(1.9)
    assert tracker.due(fs) == []
    clock.advance(0.1)
    assert tracker.due(fs) == [photo]
    assert tracker.pending_count == 0
    assert tracker.due(fs) == []  # returned once, then forgotten


def test_growing_file_restarts_the_wait(clock: Clock, fs: FakeStat) -> None:
    tracker = StabilityTracker(2.0, now=clock)
    photo = Path("a.jpg")
    tracker.observe(photo, fs.write(photo, 100))
    clock.advance(1.5)
    fs.write(photo, 200, mtime_ns=2)  # the writer went on, without an event reaching us
    assert tracker.due(fs) == []  # due() noticed the change and restarted the wait
    clock.advance(1.9)
    assert tracker.due(fs) == []
    clock.advance(0.1)
    assert tracker.due(fs) == [photo]


def test_observe_with_same_signature_does_not_restart(clock: Clock, fs: FakeStat) -> None:
    tracker = StabilityTracker(2.0, now=clock)
    photo = Path("a.jpg")
    sig = fs.write(photo, 100)
    tracker.observe(photo, sig)
    clock.advance(1.5)
    tracker.observe(photo, sig)  # a rescan seeing the same file
    clock.advance(0.5)
    assert tracker.due(fs) == [photo]


def test_close_and_reopen_restarts_the_wait(clock: Clock, fs: FakeStat) -> None:
    """A writer that closes and reopens the file, leaving size and mtime alone, is still busy."""
    tracker = StabilityTracker(2.0, now=clock)
    photo = Path("a.jpg")
    tracker.observe(photo, fs.write(photo, 100))
    clock.advance(1.5)
    tracker.activity(photo)  # close event
    clock.advance(1.0)
    tracker.activity(photo)  # open event
    clock.advance(1.9)
    assert tracker.due(fs) == []
    clock.advance(0.1)
    assert tracker.due(fs) == [photo]


def test_activity_alone_waits_for_two_equal_stats(clock: Clock, fs: FakeStat) -> None:
    tracker = StabilityTracker(2.0, now=clock)
    photo = Path("a.jpg")
    fs.write(photo, 100)
    tracker.activity(photo)  # an event, never stat-ed: nothing is known about the content yet
    clock.advance(2.0)
    assert tracker.due(fs) == []  # first stat: the wait starts from here
    clock.advance(2.0)
    assert tracker.due(fs) == [photo]


def test_vanished_and_forgotten_files_are_dropped(clock: Clock, fs: FakeStat) -> None:
    tracker = StabilityTracker(1.0, now=clock)
    gone, moved, kept = Path("gone.jpg"), Path("moved.jpg"), Path("kept.jpg")
    for p in (gone, moved, kept):
        tracker.observe(p, fs.write(p, 10))
    del fs.files[gone]
    tracker.forget(moved)
    clock.advance(1.0)
    assert tracker.due(fs) == [kept]
    assert tracker.pending_count == 0


def test_due_returns_oldest_first(clock: Clock, fs: FakeStat) -> None:
    tracker = StabilityTracker(1.0, now=clock)
    a, b = Path("a.jpg"), Path("b.jpg")
    tracker.observe(a, fs.write(a, 1))
    tracker.observe(b, fs.write(b, 1))
    clock.advance(0.5)
    tracker.activity(a)  # a settled last: neither name nor first sight decides the order
    clock.advance(5)
    assert tracker.due(fs) == [b, a]


def test_next_deadline(clock: Clock, fs: FakeStat) -> None:
    tracker = StabilityTracker(3.0, now=clock)
    assert tracker.next_deadline() is None
    a, b = Path("a.jpg"), Path("b.jpg")
    tracker.observe(a, fs.write(a, 1))
    start = clock.t
    clock.advance(1.0)
    tracker.observe(b, fs.write(b, 1))
    assert tracker.next_deadline() == start + 3.0
    tracker.activity(a)
    assert tracker.next_deadline() == start + 1.0 + 3.0


def test_event_during_due_is_not_lost(clock: Clock, fs: FakeStat) -> None:
    """An event arriving while due() stats (another thread) keeps the file pending."""
    tracker = StabilityTracker(1.0, now=clock)
    photo = Path("a.jpg")
    tracker.observe(photo, fs.write(photo, 1))
    clock.advance(5)

    def stat_with_interleaved_event(path: Path) -> Signature | None:
        tracker.activity(path)
        return fs(path)

    assert tracker.due(stat_with_interleaved_event) == []
    assert tracker.is_pending(photo)


def test_rejects_negative_settle_time() -> None:
    with pytest.raises(ValueError, match="settle_seconds"):
        StabilityTracker(-1)


def test_stat_signature_on_real_files(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"1234")
    first = stat_signature(photo)
    assert first is not None
    assert first.size == 4
    os.utime(photo, ns=(0, first.mtime_ns + 1_000_000_000))
    second = stat_signature(photo)
    assert second is not None
    assert second != first
    assert stat_signature(tmp_path) is None  # a folder is not a file to process
    assert stat_signature(tmp_path / "missing.jpg") is None


def test_real_file_settles_with_default_stat(tmp_path: Path, clock: Clock) -> None:
    tracker = StabilityTracker(2.0, now=clock)
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"partial")
    sig = stat_signature(photo)
    assert sig is not None
    tracker.observe(photo, sig)
    clock.advance(2.0)
    with photo.open("ab") as f:
        f.write(b" and the rest")
    assert tracker.due() == []
    clock.advance(2.0)
    assert tracker.due() == [photo]
