"""daemon/watcher.py: real folders, a real watchdog observer (inotify, polling), a recording sink.

Tests wait on conditions with a deadline; the watcher's intervals come from a config with small
values so that supervision rounds happen every few hundredths of a second.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import structlog
from watchdog.events import (
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileMovedEvent,
)

from daemon import watcher as watcher_module
from daemon.config import Config, load_config
from daemon.watcher import Watcher

P = PurePosixPath

# watchdog warns in its inotify reader thread when `mkdir -p a/b` races its own recursive watch
# set-up ("Callback with id ... already exists"). Harmless, but this project's
# filterwarnings=error would turn it into an exception that kills that thread.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


class Sink:
    """Records every call, in order, from whichever thread makes it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, PurePosixPath]] = []
        self._lock = threading.Lock()

    def _record(self, kind: str, relpath: PurePosixPath) -> None:
        assert isinstance(relpath, PurePosixPath)
        with self._lock:
            self.calls.append((kind, relpath))

    def seen(self, relpath: PurePosixPath) -> None:
        self._record("seen", relpath)

    def activity(self, relpath: PurePosixPath) -> None:
        self._record("activity", relpath)

    def gone(self, relpath: PurePosixPath) -> None:
        self._record("gone", relpath)

    def paths(self, kind: str = "seen") -> set[PurePosixPath]:
        with self._lock:
            return {path for k, path in self.calls if k == kind}

    def count(self, kind: str, relpath: PurePosixPath) -> int:
        with self._lock:
            return self.calls.count((kind, relpath))


def make_config(root: Path, **watch: Any) -> Config:
    """A config whose input is root/inbox, with the output folder inside it (inbox/_out)."""
    (root / "inbox").mkdir(exist_ok=True)
    (root / "styles").mkdir(exist_ok=True)
    (root / "styles" / "starry.jpg").write_bytes(b"painting")  # the loader only checks it exists
    settings = {"mode": "native", "poll_interval": 0.05, "rescan_interval": 0, **watch}
    text = (
        "input: inbox\n"
        "output: inbox/_out\n"
        "state: state\n"
        f"watch: {json.dumps(settings)}\n"
        "styles: {starry: {image: styles/starry.jpg}}\n"
        "rules: [{match: '**/*', styles: [starry]}]\n"
    )
    path = root / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def write(path: Path, data: bytes = b"photo") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    # Requested by `started` below, so it is torn down after every watcher has stopped.
    with structlog.testing.capture_logs() as captured:
        yield captured


@pytest.fixture
def started(logs: list[dict[str, Any]]) -> Iterator[Callable[..., Watcher]]:
    """start(config, sink) -> a started Watcher, stopped at teardown."""
    watchers: list[Watcher] = []

    def start(config: Config, sink: Any) -> Watcher:
        watcher = Watcher(config, sink)
        watchers.append(watcher)
        watcher.start()
        return watcher

    yield start
    for watcher in watchers:
        watcher.stop()


@pytest.fixture(params=["native", "polling"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- scans


def test_scan_reports_nested_files_and_skips_ignored_ones(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    inbox = config.input
    for name in (
        "a.jpg",
        "sub/deep/b.JPG",
        "notes.txt",  # the extension is the service's call (rules.decide), not the watcher's
        ".hidden/c.jpg",
        ".d.jpg",
        "e.jpg.part",
        "@eaDir/f.jpg",
        "_out/g.jpg",  # the output folder, inside the input
    ):
        write(inbox / name)
    (inbox / "empty").mkdir()
    os.mkfifo(inbox / "pipe.jpg")  # not a regular file: reading it would block the worker
    sink = Sink()

    count = Watcher(config, sink).scan()

    assert sink.paths() == {P("a.jpg"), P("sub/deep/b.JPG"), P("notes.txt")}
    assert count == 3
    assert sink.paths("gone") == set()


def test_non_recursive_scan_reports_the_top_folder_only(tmp_path: Path) -> None:
    config = make_config(tmp_path, recursive=False)
    write(config.input / "top.jpg")
    write(config.input / "sub" / "below.jpg")
    sink = Sink()

    assert Watcher(config, sink).scan() == 1
    assert sink.paths() == {P("top.jpg")}


def test_scan_follows_no_symlink_out_of_the_tree_and_survives_loops(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    inbox = config.input
    outside = tmp_path / "outside"
    write(outside / "x.jpg")
    write(inbox / "real.jpg")
    write(inbox / "_out" / "result.jpg")
    (inbox / "outdir").symlink_to(outside, target_is_directory=True)
    (inbox / "out.jpg").symlink_to(outside / "x.jpg")
    (inbox / "alias.jpg").symlink_to(inbox / "real.jpg")
    (inbox / "result.jpg").symlink_to(inbox / "_out" / "result.jpg")
    (inbox / "up").symlink_to(inbox, target_is_directory=True)
    (inbox / "self.jpg").symlink_to(inbox / "self.jpg")
    (inbox / "ping.jpg").symlink_to(inbox / "pong.jpg")
    (inbox / "pong.jpg").symlink_to(inbox / "ping.jpg")
    (inbox / "dangling.jpg").symlink_to(inbox / "missing.jpg")
    sink = Sink()

    Watcher(config, sink).scan()

    assert sink.paths() == {P("real.jpg"), P("alias.jpg")}


def test_scan_logs_and_skips_unreadable_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logs: list[dict[str, Any]]
) -> None:
    config = make_config(tmp_path)
    write(config.input / "locked" / "a.jpg")
    write(config.input / "open" / "b.jpg")
    real_scandir = os.scandir
    locked = str(config.input / "locked")

    def scandir(path: Any) -> Any:
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)

    # Root can read any folder, so the refusal is simulated where the watcher reads folders.
    monkeypatch.setattr(os, "scandir", scandir)
    sink = Sink()

    assert Watcher(config, sink).scan() == 1
    assert sink.paths() == {P("open/b.jpg")}
    assert [e["folder"] for e in events(logs, "scan_folder_skipped")] == ["locked"]


def test_scan_of_a_vanished_input_folder_returns_nothing(
    tmp_path: Path, logs: list[dict[str, Any]]
) -> None:
    config = make_config(tmp_path)
    write(config.input / "a.jpg")
    config.input.rename(tmp_path / "elsewhere")

    assert Watcher(config, Sink()).scan() == 0
    assert events(logs, "scan_folder_skipped")
    assert events(logs, "scan_done")[0]["files"] == 0


def test_mode_follows_the_filesystem_in_auto_mode(tmp_path: Path) -> None:
    config = make_config(tmp_path, mode="auto")
    nfs = f"36 25 0:50 / {config.input.parent} rw - nfs4 server:/photos rw\n"
    local = "36 25 8:1 / / rw - ext4 /dev/sda1 rw\n"

    assert Watcher(config, Sink(), mountinfo=local + nfs).mode == "polling"
    assert Watcher(config, Sink(), mountinfo=local).mode == "native"


# -- events


def test_new_files_are_seen(tmp_path: Path, mode: str, started: Callable[..., Watcher]) -> None:
    config = make_config(tmp_path, mode=mode)
    sink = Sink()
    watcher = started(config, sink)
    assert watcher.mode == mode

    write(config.input / "new.jpg")
    write(config.input / "later" / "deeper" / "n.jpg")

    wait_until(lambda: {P("new.jpg"), P("later/deeper/n.jpg")} <= sink.paths())


def test_a_modified_file_is_seen_again(
    tmp_path: Path, mode: str, started: Callable[..., Watcher]
) -> None:
    config = make_config(tmp_path, mode=mode)
    photo = write(config.input / "a.jpg")
    sink = Sink()
    started(config, sink)  # no scan and no rescan: only an event can report it

    with photo.open("ab") as f:
        f.write(b" more bytes")

    wait_until(lambda: P("a.jpg") in sink.paths())


def test_a_deleted_file_is_gone(tmp_path: Path, mode: str, started: Callable[..., Watcher]) -> None:
    config = make_config(tmp_path, mode=mode)
    photo = write(config.input / "sub" / "a.jpg")
    sink = Sink()
    started(config, sink)

    photo.unlink()

    wait_until(lambda: P("sub/a.jpg") in sink.paths("gone"))
    assert P("sub/a.jpg") not in sink.paths()


def test_a_download_renamed_to_its_final_name_is_seen(
    tmp_path: Path, mode: str, started: Callable[..., Watcher]
) -> None:
    config = make_config(tmp_path, mode=mode)
    part = write(config.input / "x.part")
    sink = Sink()
    started(config, sink)

    part.rename(config.input / "x.jpg")

    wait_until(lambda: P("x.jpg") in sink.paths())
    with sink._lock:
        assert all(path != P("x.part") for _, path in sink.calls)


def test_a_move_within_the_tree_is_gone_then_seen(
    tmp_path: Path, mode: str, started: Callable[..., Watcher]
) -> None:
    config = make_config(tmp_path, mode=mode)
    write(config.input / "a.jpg")
    (config.input / "sorted").mkdir()
    sink = Sink()
    started(config, sink)

    (config.input / "a.jpg").rename(config.input / "sorted" / "b.jpg")

    wait_until(lambda: P("sorted/b.jpg") in sink.paths() and P("a.jpg") in sink.paths("gone"))


def test_a_file_moved_out_of_the_tree_is_gone(
    tmp_path: Path, mode: str, started: Callable[..., Watcher]
) -> None:
    config = make_config(tmp_path, mode=mode)
    write(config.input / "a.jpg")
    sink = Sink()
    started(config, sink)

    (config.input / "a.jpg").rename(tmp_path / "a.jpg")

    wait_until(lambda: P("a.jpg") in sink.paths("gone"))


def test_a_folder_moved_into_the_tree_is_scanned_whole(
    tmp_path: Path, mode: str, started: Callable[..., Watcher]
) -> None:
    config = make_config(tmp_path, mode=mode)
    album = tmp_path / "album"
    for name in ("a.jpg", "sub/b.jpg", "sub/deeper/c.png", ".hidden.jpg"):
        write(album / name)
    sink = Sink()
    started(config, sink)

    album.rename(config.input / "album")

    expected = {P("album/a.jpg"), P("album/sub/b.jpg"), P("album/sub/deeper/c.png")}
    wait_until(lambda: expected <= sink.paths())
    assert P("album/.hidden.jpg") not in sink.paths()


def test_events_follow_no_symlink_out_of_the_tree(
    tmp_path: Path, mode: str, started: Callable[..., Watcher]
) -> None:
    config = make_config(tmp_path, mode=mode)
    inbox = config.input
    outside = tmp_path / "outside"
    write(outside / "x.jpg")
    write(inbox / "real.jpg")
    (inbox / "outdir").symlink_to(outside, target_is_directory=True)
    sink = Sink()
    started(config, sink)

    write(outside / "new.jpg")
    (inbox / "out.jpg").symlink_to(outside / "x.jpg")
    (inbox / "loop.jpg").symlink_to(inbox / "loop.jpg")
    (inbox / "alias.jpg").symlink_to(inbox / "real.jpg")
    write(inbox / "_out" / "result.jpg")  # the output folder
    write(inbox / "marker.jpg")  # written last: once it is seen, the others were handled

    wait_until(lambda: {P("alias.jpg"), P("marker.jpg")} <= sink.paths())
    assert sink.paths() == {P("alias.jpg"), P("marker.jpg")}


def test_opening_a_file_for_writing_is_activity(
    tmp_path: Path, started: Callable[..., Watcher]
) -> None:
    config = make_config(tmp_path, mode="native")  # polling cannot see an open
    photo = write(config.input / "a.jpg")
    sink = Sink()
    started(config, sink)

    with photo.open("ab"):
        pass  # a writer that reopens the file: its settle wait must start again

    wait_until(lambda: P("a.jpg") in sink.paths("activity"))


def test_a_sink_failure_skips_only_that_path(
    tmp_path: Path, mode: str, started: Callable[..., Watcher], logs: list[dict[str, Any]]
) -> None:
    class FailingSink(Sink):
        def seen(self, relpath: PurePosixPath) -> None:
            if relpath.name == "bad.jpg":
                raise OSError("the sink broke")
            super().seen(relpath)

    config = make_config(tmp_path, mode=mode)
    write(config.input / "a" / "bad.jpg")
    write(config.input / "b" / "good.jpg")
    sink = FailingSink()

    assert Watcher(config, sink).scan() == 1  # the walk goes on past the failure
    assert sink.paths() == {P("b/good.jpg")}

    watcher = started(config, sink)
    write(config.input / "bad.jpg")
    wait_until(lambda: any(e["path"] == "bad.jpg" for e in events(logs, "watch_sink_failed")))
    write(config.input / "good.jpg")
    wait_until(lambda: P("good.jpg") in sink.paths())
    failure = events(logs, "watch_sink_failed")[0]
    assert failure["call"] == "seen"
    assert failure["exc_info"] is True
    assert watcher.alive()


def test_an_event_that_fails_is_logged_and_watching_goes_on(
    tmp_path: Path,
    mode: str,
    started: Callable[..., Watcher],
    logs: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_ignored = watcher_module.ignored

    def ignored(config: Config, relpath: PurePosixPath, *, is_dir: bool = False) -> Any:
        if relpath.name == "bad.jpg":
            raise RuntimeError("a bug in the rules")
        return real_ignored(config, relpath, is_dir=is_dir)

    monkeypatch.setattr(watcher_module, "ignored", ignored)
    config = make_config(tmp_path, mode=mode)
    sink = Sink()
    watcher = started(config, sink)

    write(config.input / "bad.jpg")
    wait_until(lambda: events(logs, "watch_event_failed"))
    write(config.input / "good.jpg")

    wait_until(lambda: P("good.jpg") in sink.paths())
    failure = events(logs, "watch_event_failed")[0]
    assert failure["src"].endswith("bad.jpg")
    assert failure["exc_info"] is True
    assert watcher.alive()
    assert not events(logs, "watcher_restarted")  # the dispatcher thread survived


def test_odd_events_are_handled_defensively(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    inbox, outside = config.input, tmp_path / "outside"
    write(outside / "x.jpg")
    (inbox / "outdir").symlink_to(outside, target_is_directory=True)
    for name in ("a.jpg", "c.jpg", "d.jpg", "album/e.jpg"):
        write(inbox / name)
    sink = Sink()
    handler = Watcher(config, sink)._handler  # what watchdog's dispatcher thread calls

    for event in (
        FileCreatedEvent(str(outside / "x.jpg")),  # not below the input folder
        FileCreatedEvent(""),
        FileCreatedEvent(str(inbox / "outdir" / "x.jpg")),  # reached through a symlinked folder
        DirDeletedEvent(str(inbox)),  # the input folder itself: the supervisor's business
        FileClosedNoWriteEvent(str(inbox / "a.jpg")),  # a reader, our own worker perhaps
        FileMovedEvent("", str(inbox / "a.jpg")),  # moved in from an unwatched place
        FileMovedEvent(str(inbox / "b.jpg"), ""),  # moved out
        FileMovedEvent(str(outside / "y.jpg"), str(inbox / "c.jpg")),
        FileCreatedEvent(os.fsencode(inbox / "d.jpg")),  # bytes paths exist in watchdog's API
        DirMovedEvent(str(outside / "album"), str(inbox / "album")),
    ):
        handler.dispatch(event)

    assert sink.calls == [
        ("seen", P("a.jpg")),
        ("gone", P("b.jpg")),
        ("seen", P("c.jpg")),
        ("seen", P("d.jpg")),
        ("seen", P("album/e.jpg")),
    ]


# -- supervision


def test_the_rescan_reports_a_file_whose_event_was_lost(
    tmp_path: Path,
    mode: str,
    started: Callable[..., Watcher],
    logs: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(tmp_path, mode=mode, rescan_interval=0.2)
    sink = Sink()
    watcher = started(config, sink)
    # Every event is dropped, as after an inotify queue overflow.
    monkeypatch.setattr(watcher, "_on_event", lambda event: None)

    write(config.input / "missed.jpg")

    wait_until(lambda: P("missed.jpg") in sink.paths())
    assert events(logs, "scan_done")


def test_a_dead_observer_is_restarted(
    tmp_path: Path, mode: str, started: Callable[..., Watcher], logs: list[dict[str, Any]]
) -> None:
    config = make_config(tmp_path, mode=mode)
    sink = Sink()
    watcher = started(config, sink)
    assert watcher.alive()

    watcher._observer.stop()  # type: ignore[union-attr]  # dies behind the watcher's back

    wait_until(lambda: events(logs, "watcher_restarted") and watcher.alive())
    assert events(logs, "watcher_restarted")[0]["reason"] in ("observer_stopped", "emitter_stopped")
    write(config.input / "after.jpg")  # no rescan configured: only the new observer reports it
    wait_until(lambda: P("after.jpg") in sink.paths())


def test_alive_reports_a_dead_observer_until_it_is_replaced(
    tmp_path: Path, started: Callable[..., Watcher]
) -> None:
    config = make_config(tmp_path, poll_interval=600)  # the supervisor will not look in time
    watcher = started(config, Sink())
    assert watcher.alive()

    watcher._observer.stop()  # type: ignore[union-attr]

    wait_until(lambda: not watcher.alive())


def test_native_watching_falls_back_to_polling_when_inotify_is_exhausted(
    tmp_path: Path,
    started: Callable[..., Watcher],
    logs: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def exhausted() -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watcher_module, "Observer", exhausted)
    config = make_config(tmp_path, mode="native")
    sink = Sink()
    watcher = started(config, sink)

    assert watcher.mode == "polling"
    assert events(logs, "watch_fallback_polling")
    write(config.input / "a.jpg")
    wait_until(lambda: P("a.jpg") in sink.paths())


def test_an_observer_that_cannot_start_is_retried_quietly(
    tmp_path: Path,
    started: Callable[..., Watcher],
    logs: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures = [OSError(errno.EACCES, "denied")] * 5  # the first in start(), then retries
    real_observer = watcher_module.Observer

    def flaky() -> Any:
        if failures:
            raise failures.pop()
        return real_observer()

    monkeypatch.setattr(watcher_module, "Observer", flaky)
    config = make_config(tmp_path, mode="native")
    sink = Sink()
    watcher = started(config, sink)
    assert not watcher.alive()

    wait_until(watcher.alive)
    assert len(events(logs, "watch_start_failed")) == 1
    assert len(events(logs, "watcher_restarted")) == 1
    write(config.input / "a.jpg")
    wait_until(lambda: P("a.jpg") in sink.paths())


def test_stop_joins_every_thread(tmp_path: Path, mode: str) -> None:
    config = make_config(tmp_path, mode=mode, poll_interval=600, rescan_interval=600)
    before = set(threading.enumerate())
    watcher = Watcher(config, Sink())
    watcher.start()
    assert set(threading.enumerate()) - before

    watcher.stop()

    assert not watcher.alive()
    assert set(threading.enumerate()) - before == set()


def test_the_input_folder_away_and_back_recovers(
    tmp_path: Path, mode: str, started: Callable[..., Watcher], logs: list[dict[str, Any]]
) -> None:
    config = make_config(tmp_path, mode=mode)
    inbox = config.input
    away = tmp_path / "away"
    sink = Sink()
    watcher = started(config, sink)

    inbox.rename(away)
    wait_until(lambda: events(logs, "input_unavailable"))
    assert watcher.alive()  # waiting for the folder is the healthy thing to do
    write(away / "while_away.jpg")  # no observer now: only the scan on return can report it
    away.rename(inbox)

    wait_until(lambda: P("while_away.jpg") in sink.paths())
    assert len(events(logs, "input_unavailable")) == 1
    assert len(events(logs, "input_available")) == 1
    names = [entry["event"] for entry in logs]
    assert names.index("input_unavailable") < names.index("input_available")
    write(inbox / "after.jpg")
    wait_until(lambda: P("after.jpg") in sink.paths())
    assert watcher.alive()


def test_a_watcher_started_without_its_input_folder_waits_for_it(
    tmp_path: Path, started: Callable[..., Watcher], logs: list[dict[str, Any]]
) -> None:
    config = make_config(tmp_path)
    config.input.rename(tmp_path / "away")
    sink = Sink()
    watcher = started(config, sink)
    assert events(logs, "input_unavailable")
    assert watcher.alive()

    write(tmp_path / "away" / "a.jpg")
    (tmp_path / "away").rename(config.input)

    wait_until(lambda: P("a.jpg") in sink.paths())
    assert events(logs, "input_available")
