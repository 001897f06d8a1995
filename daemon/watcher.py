"""Filesystem activity in the input folder -> candidate paths for the service.

Three sources feed one sink, all with paths relative to the input folder:

- a watchdog observer: inotify (`native`) or directory snapshots (`polling`, for network shares
  whose changes inotify never sees), chosen by `watch.mode`;
- `scan()`: a full walk, which the service calls once at startup;
- a supervisor thread owned by the Watcher (`start()` starts it, `stop()` joins it). Every
  `rescan_interval` seconds it scans again, because events get lost (an inotify queue overflow, a
  polling emitter that died). Every `poll_interval` seconds it checks that the input folder is still
  there and that the observer still runs: a dead observer is replaced (`watcher_restarted`), a
  vanished input folder is logged once (`input_unavailable`) and, when it is back
  (`input_available`), watched and scanned afresh.

Only regular files that `rules.ignored()` lets through reach the sink; the file extension and rule
matching are the service's call (`rules.decide()`), so it can log those decisions. Symlinked folders
are never followed, and a symlinked file counts only when it points at a regular file inside the
input folder.

A deleted or moved-away folder is only logged: the sink hears of files, and the files that were
inside are not known here. The sink's own stat checks (StabilityTracker.due() drops vanished
paths) and the journal's checks before work starts take care of them.

The sink is called from the observer's thread, from the supervisor thread and from whichever
thread calls scan(), so it must be thread-safe.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

import structlog
from watchdog.events import (
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserverVFS

from daemon.config import Config
from daemon.rules import ignored

__all__ = ["WatchSink", "Watcher"]

log = structlog.get_logger()

# How long stop() waits for each thread. Watchdog's threads are daemon threads, so a thread stuck
# in a hung network filesystem call cannot keep the process alive after this.
JOIN_SECONDS = 5.0
# inotify's per-user limits (watches, instances): polling still works when they are exhausted.
_INOTIFY_EXHAUSTED = frozenset({errno.ENOSPC, errno.EMFILE})
# Events on a file that may mean new content. Attrib covers `touch` and `cp -p`, which set the
# mtime after the data is written.
_CHANGED = (FileCreatedEvent, FileModifiedEvent, FileClosedEvent, FileAttribEvent)


class WatchSink(Protocol):
    def seen(self, relpath: PurePosixPath) -> None:
        """A file exists or changed: created, modified, closed, moved in, found by a scan."""

    def activity(self, relpath: PurePosixPath) -> None:
        """Write activity without a content change to stat yet (a writer opened the file)."""

    def gone(self, relpath: PurePosixPath) -> None:
        """A file was deleted or moved away."""


class Watcher:
    """Watches `config.input` and tells `sink` about candidate files.

    start() starts the observer and the supervisor thread, and nothing else: the caller runs the
    startup scan with scan(), typically right after start() so that no file slips between the
    two. stop() stops and joins both.
    """

    def __init__(self, config: Config, sink: WatchSink, *, mountinfo: str | None = None) -> None:
        self._config = config
        self._sink = sink
        self._root = config.input
        self.mode: Literal["native", "polling"] = config.watch.resolve_mode(config.input, mountinfo)
        self._handler = _Handler(self)
        self._lock = threading.Lock()  # guards _observer and _unavailable
        self._scan_lock = threading.Lock()  # one full walk at a time
        self._observer: BaseObserver | None = None
        self._unavailable = False
        self._identity: tuple[int, int] | None = None
        self._start_failing = False  # the supervisor thread's own, like _identity
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> None:
        """Start watching. Does not raise when the observer cannot start (the input folder is
        missing, inotify is exhausted): the supervisor keeps trying and logs what happens."""
        if self._thread is not None:
            raise RuntimeError("the watcher is already started")
        self._stop = threading.Event()
        self._unavailable = self._start_failing = False
        self._identity = _identity(self._root)
        if self._identity is None:
            self._set_unavailable()
        else:
            self._start_observer()
        log.info(
            "watch_started",
            mode=self.mode,
            input=str(self._root),
            recursive=self._config.watch.recursive,
        )
        self._thread = threading.Thread(
            target=self._supervise, args=(self._stop,), name="watcher-supervisor", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the supervisor and the observer and join them, each within JOIN_SECONDS."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(JOIN_SECONDS)
            if thread.is_alive():
                log.warning("watch_thread_stuck", thread=thread.name)
        with self._lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            _stop_observer(observer)

    def alive(self) -> bool:
        """The supervisor runs, and so does the observer unless the input folder is away.

        An unavailable input folder counts as healthy: the supervisor is waiting for it, and a
        restart of the service would not bring it back sooner.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        with self._lock:
            if self._unavailable:
                return True
            observer = self._observer
        return observer is not None and _observer_problem(observer) is None

    # -- scanning

    def scan(self) -> int:
        """Walk the whole input folder now and report every candidate file; returns their count.

        Safe from any thread. An unreadable or vanished folder is logged and skipped.
        """
        with self._scan_lock:
            started = time.monotonic()
            count = self._walk(PurePosixPath())
            log.info("scan_done", files=count, seconds=round(time.monotonic() - started, 3))
        return count

    def _scan_folder(self, relpath: PurePosixPath) -> int:
        """Report every file below a folder that appeared in the tree.

        inotify reports a folder moved in as one event, nothing for the files inside it.
        """
        if ignored(self._config, relpath, is_dir=True) is not None:
            return 0
        count = self._walk(relpath)
        log.debug("folder_scanned", folder=relpath.as_posix(), files=count)
        return count

    def _walk(self, top: PurePosixPath) -> int:
        # Own walk rather than os.walk: symlinked folders are leaves, errors are logged per folder,
        # ignored folders are pruned before they are read, and stop() cuts a long walk short.
        count = 0
        stack = [top]
        while stack and not self._stop.is_set():
            relpath = stack.pop()
            try:
                with os.scandir(self._root.joinpath(*relpath.parts)) as entries:
                    found = sorted(entries, key=lambda entry: entry.name, reverse=True)
            except OSError as exc:
                log.warning("scan_folder_skipped", folder=relpath.as_posix(), error=str(exc))
                continue
            for entry in found:
                child = relpath / entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir:
                    if ignored(self._config, child, is_dir=True) is None:
                        stack.append(child)
                elif (
                    ignored(self._config, child) is None
                    and self._is_candidate(child)
                    and self._tell(self._sink.seen, child)
                ):
                    count += 1
        return count

    def _is_candidate(self, relpath: PurePosixPath) -> bool:
        """A regular file, or a symlink to a regular file inside the input folder."""
        path = self._root.joinpath(*relpath.parts)
        try:
            st = path.lstat()
        except OSError:
            return False  # gone already; its deletion event or the sink's stat handles it
        if stat.S_ISLNK(st.st_mode):
            return self._link_inside(path)
        return stat.S_ISREG(st.st_mode)

    def _link_inside(self, link: Path) -> bool:
        """Whether a symlink points at a regular file inside the input folder, not ignored."""
        try:
            # strict: a dangling link or a loop raises (ELOOP) instead of resolving to nonsense.
            target = Path(os.path.realpath(link, strict=True))
            if not stat.S_ISREG(target.stat().st_mode):
                return False
        except OSError:
            return False
        if not target.is_relative_to(self._root) or target == self._root:
            return False
        # A link to a file in the output folder would make us stylize our own results.
        inside = PurePosixPath(target.relative_to(self._root).as_posix())
        return ignored(self._config, inside) is None

    # -- events

    def _relative(self, raw: bytes | str) -> PurePosixPath | None:
        """An event's path relative to the input folder; None when it lies elsewhere."""
        text = os.fsdecode(raw)
        if not text:
            return None
        path = Path(text)
        if not path.is_absolute() or not path.is_relative_to(self._root):
            return None
        relpath = PurePosixPath(path.relative_to(self._root).as_posix())
        if not relpath.parts or ".." in relpath.parts:
            return None  # the input folder itself: the supervisor watches over it
        return relpath

    def _through_symlink(self, relpath: PurePosixPath) -> bool:
        # Events can name paths below a symlinked folder (a polling snapshot, a watch added before
        # the folder became a link); such a file lives outside the tree we are asked to watch.
        folders = relpath.parts[:-1]
        expected = Path(os.path.realpath(self._root)).joinpath(*folders)
        return Path(os.path.realpath(self._root.joinpath(*folders))) != expected

    def _report_seen(self, relpath: PurePosixPath) -> None:
        if (
            ignored(self._config, relpath) is None
            and not self._through_symlink(relpath)
            and self._is_candidate(relpath)
        ):
            self._tell(self._sink.seen, relpath)

    def _report_gone(self, relpath: PurePosixPath) -> None:
        if ignored(self._config, relpath) is None:
            self._tell(self._sink.gone, relpath)

    def _tell(self, call: Callable[[PurePosixPath], None], relpath: PurePosixPath) -> bool:
        """Pass one path to the sink; a failure there is logged and skips only this path."""
        try:
            call(relpath)
        except Exception:
            # One path the service chokes on must not hide the rest of a scan from it.
            log.exception("watch_sink_failed", call=call.__name__, path=relpath.as_posix())
            return False
        return True

    def _on_event(self, event: FileSystemEvent) -> None:
        src = self._relative(event.src_path)
        if isinstance(event, FileSystemMovedEvent):
            # A source outside the tree (or none) is a move in; a destination outside is a move out.
            dest = self._relative(event.dest_path)
            if event.is_directory:
                if src is not None:
                    log.debug("watch_folder_gone", folder=src.as_posix())
                if dest is not None:
                    self._scan_folder(dest)
            else:
                if src is not None:
                    self._report_gone(src)
                if dest is not None:
                    self._report_seen(dest)
            return
        if src is None:
            return
        if event.is_directory:
            if event.event_type == "created":
                self._scan_folder(src)
            elif event.event_type == "deleted":
                log.debug("watch_folder_gone", folder=src.as_posix())
            return
        if isinstance(event, _CHANGED):
            self._report_seen(src)
        elif isinstance(event, FileOpenedEvent):
            # A writer that closes and reopens the file restarts the settle wait. Reads open
            # files too, our own worker's included; the tracker and the journal absorb those.
            if ignored(self._config, src) is None and not self._through_symlink(src):
                self._tell(self._sink.activity, src)
        elif isinstance(event, FileDeletedEvent):
            self._report_gone(src)
        # FileClosedNoWriteEvent: a reader finished, the content did not change.

    # -- supervision

    def _supervise(self, stop: threading.Event) -> None:
        watch = self._config.watch
        rescan = watch.rescan_interval if watch.rescan_interval > 0 else None
        tick = watch.poll_interval if rescan is None else min(watch.poll_interval, rescan)
        next_rescan = None if rescan is None else time.monotonic() + rescan
        while not stop.wait(max(tick, 0.01)):
            try:
                scanned = self._check()
                now = time.monotonic()
                if scanned and rescan is not None:
                    next_rescan = now + rescan
                elif next_rescan is not None and rescan is not None and now >= next_rescan:
                    with self._lock:
                        away = self._unavailable
                    if not away:
                        self.scan()
                    next_rescan = time.monotonic() + rescan
            except Exception:
                # The supervisor must outlive whatever goes wrong in one round (a sink bug, an
                # odd OSError): it is what brings the watcher back.
                log.exception("watch_supervisor_failed")

    def _check(self) -> bool:
        """One supervision round; True when it scanned the whole tree."""
        identity = _identity(self._root)
        with self._lock:
            was_away = self._unavailable
            observer = self._observer
        if identity is None:
            if not was_away:
                self._set_unavailable()
            return False
        if was_away or identity != self._identity:
            self._identity = identity
            if was_away:
                with self._lock:
                    self._unavailable = False
                log.info("input_available", input=str(self._root))
            else:
                # Replaced between two rounds: the observer may be watching the old folder.
                log.warning("watcher_restarted", reason="input_replaced")
            self._restart_observer()
            self.scan()
            return True
        problem = "not_running" if observer is None else _observer_problem(observer)
        if problem is None:
            return False
        # A start that keeps failing is logged once (watch_start_failed), then its end.
        failing = self._start_failing
        if not failing:
            log.warning("watcher_restarted", reason=problem)
        if not self._restart_observer():
            return False
        if failing:
            log.warning("watcher_restarted", reason=problem)
        self.scan()  # events during the outage are lost
        return True

    def _set_unavailable(self) -> None:
        log.warning("input_unavailable", input=str(self._root))
        with self._lock:
            self._unavailable = True
            observer, self._observer = self._observer, None
        # A native watch follows the folder's inode wherever it went; drop it.
        if observer is not None:
            _stop_observer(observer)

    def _restart_observer(self) -> bool:
        with self._lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            _stop_observer(observer)
        return self._start_observer()

    def _start_observer(self) -> bool:
        """Start a fresh observer; False when it could not start (logged once per streak)."""
        try:
            observer = self._launch(self.mode)
        except OSError as exc:
            if self.mode == "native" and exc.errno in _INOTIFY_EXHAUSTED:
                log.warning("watch_fallback_polling", error=str(exc))
                self.mode = "polling"
                return self._start_observer()
            if not self._start_failing:
                log.error("watch_start_failed", mode=self.mode, error=str(exc))
            self._start_failing = True
            return False
        self._start_failing = False
        with self._lock:
            self._observer = observer
        if self._stop.is_set():  # stop() ran meanwhile and did not see this observer
            with self._lock:
                self._observer = None
            _stop_observer(observer)
        return True

    def _launch(self, mode: Literal["native", "polling"]) -> BaseObserver:
        observer: BaseObserver
        if mode == "native":
            observer = Observer()
        else:
            # lstat: symlinked folders stay leaves (no walks out of the tree, no loops); the
            # filtered listing keeps ignored folders, such as an output folder inside the input,
            # out of every snapshot.
            observer = PollingObserverVFS(
                stat=os.lstat,
                listdir=self._poll_listdir,
                polling_interval=self._config.watch.poll_interval,
            )
        observer.schedule(self._handler, str(self._root), recursive=self._config.watch.recursive)
        try:
            observer.start()
        except BaseException:
            _stop_observer(observer)
            raise
        return observer

    def _poll_listdir(self, folder: str | None) -> Iterator[os.DirEntry[str]]:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    relpath = self._relative(entry.path)
                    if relpath is None or ignored(self._config, relpath, is_dir=True) is not None:
                        continue
                yield entry


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._watcher._on_event(event)
        except Exception:
            # An exception here would kill watchdog's dispatcher thread, and with it every later
            # event; the rescan catches whatever this event meant.
            log.exception(
                "watch_event_failed",
                kind=event.event_type,
                src=os.fsdecode(event.src_path),
                dest=os.fsdecode(event.dest_path),
            )


def _identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder, None when it is not there or not a folder."""
    try:
        st = folder.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _observer_problem(observer: BaseObserver) -> str | None:
    """Why this observer no longer delivers events, or None when it does."""
    if not observer.is_alive():
        return "observer_stopped"
    emitters = tuple(observer.emitters)
    # An emitter stops on its own when the watched folder vanishes, or dies on an error, while the
    # observer thread goes on dispatching nothing.
    if not emitters or not all(emitter.is_alive() for emitter in emitters):
        return "emitter_stopped"
    # The inotify observer reads the kernel's queue in a thread of its own; if that one dies, the
    # rest keeps running and hears nothing. The attribute is private, hence the careful look.
    reader = getattr(observer, "_inotify_fd", None)
    if isinstance(reader, threading.Thread) and not reader.is_alive():
        return "inotify_reader_stopped"
    return None


def _stop_observer(observer: BaseObserver) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(JOIN_SECONDS)
    except Exception:
        log.exception("watch_stop_failed")
