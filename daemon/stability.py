"""Decide when a file has finished being written.

A camera, a card reader or a network copy writes a photo in pieces; the file exists long before it
is complete. A path becomes ready only when its size, mtime and identity have stayed the same for
`settle_seconds` on a monotonic clock (the wall clock can jump: NTP, a booth with a dead RTC
battery). Any sign of life, a changed stat or a filesystem event, restarts the wait; a writer that
closes and reopens the file therefore restarts it too.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Signature", "StabilityTracker", "StatFn", "stat_signature"]


@dataclass(frozen=True)
class Signature:
    """What a stat says about a file's content, cheaply: equal signatures mean "no news"."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> Signature:
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, device=st.st_dev)


StatFn = Callable[[Path], Signature | None]


def stat_signature(path: Path) -> Signature | None:
    """The signature of a regular file, or None when it is gone or is not a regular file."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return Signature.of(st)


@dataclass(frozen=True)
class _Pending:
    # None: seen only through an event, never stat-ed; the first stat counts as a change.
    signature: Signature | None
    since: float  # monotonic time of the last change or activity


class StabilityTracker:
    """Paths being written, and when each last showed a sign of life.

    Thread-safe: the watcher thread may call observe()/activity()/forget() while another thread
    calls due(). due() stats outside the lock so a slow network share does not block the watcher.
    """

    def __init__(self, settle_seconds: float, now: Callable[[], float] = time.monotonic) -> None:
        if not settle_seconds >= 0:
            raise ValueError(f"settle_seconds must be >= 0, got {settle_seconds!r}")
        self._settle = float(settle_seconds)
        self._now = now
        self._pending: dict[Path, _Pending] = {}
        self._lock = threading.Lock()

    @property
    def settle_seconds(self) -> float:
        return self._settle

    @property
    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def is_pending(self, path: Path) -> bool:
        with self._lock:
            return path in self._pending

    def observe(self, path: Path, signature: Signature) -> None:
        """A fresh stat of `path`: a new path or a changed signature (re)starts its wait."""
        with self._lock:
            entry = self._pending.get(path)
            if entry is None or entry.signature != signature:
                self._pending[path] = _Pending(signature, self._now())

    def activity(self, path: Path) -> None:
        """A filesystem event on `path` (modified, opened, closed): restart its wait without a stat.

        Events can arrive with the size and mtime unchanged (a writer that opens, pauses and
        closes); the file is still in use, so the wait starts again.
        """
        with self._lock:
            entry = self._pending.get(path)
            signature = entry.signature if entry is not None else None
            self._pending[path] = _Pending(signature, self._now())

    def forget(self, path: Path) -> None:
        """Stop tracking `path` (deleted, or moved away)."""
        with self._lock:
            self._pending.pop(path, None)

    def next_deadline(self) -> float | None:
        """The earliest monotonic time at which some path may become due; None when none pends.

        A path whose stat changes in the meantime moves its own deadline later, so the caller
        waits until this time (or the next event) and calls due() again.
        """
        with self._lock:
            if not self._pending:
                return None
            return min(entry.since for entry in self._pending.values()) + self._settle

    def due(self, stat: StatFn = stat_signature) -> list[Path]:
        """Paths quiet for settle_seconds, oldest first; they are forgotten once returned.

        Every pending path is stat-ed again: a changed one restarts its wait, a vanished one is
        dropped quietly.
        """
        with self._lock:
            snapshot = list(self._pending.items())
        observed = [(path, entry, stat(path)) for path, entry in snapshot]
        now = self._now()
        ready: list[tuple[float, str, Path]] = []
        with self._lock:
            for path, entry, signature in observed:
                if self._pending.get(path) is not entry:
                    continue  # an event or observe() came in while we were stat-ing: it wins
                if signature is None:
                    del self._pending[path]
                elif signature != entry.signature:
                    self._pending[path] = _Pending(signature, now)
                elif now - entry.since >= self._settle:
                    del self._pending[path]
                    ready.append((entry.since, str(path), path))
        ready.sort()
        return [path for _, _, path in ready]
