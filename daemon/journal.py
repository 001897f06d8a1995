"""The job journal: SQLite in the state folder, written through, one row per unit of work.

A job is a work order (daemon/orders.py), stored as canonical JSON, keyed by (source,
fingerprint, style, settings_hash): the same content in the same style and settings is processed
once, whatever happens to the file's metadata, to the rules' order or to the daemon. The worker
that runs a job is recorded with it, so the jobs of a worker process that died go back to the
queue without touching the other workers' jobs. The journal is the only memory of the service,
so it refuses to guess: a corrupted, newer or foreign database, or one in use by another daemon,
raises JournalError instead of being replaced by an empty one.

Failures: a failure that cannot pass (a bad photo) fails the job at once. Trouble that can pass
(I/O, permissions, a painting or a share that is away) keeps the job queued, retried with capped
back-off, for `retry_for` seconds from the first failure of the streak. Errors of unknown kind and
crashes during a job count attempts instead, up to `max_attempts`, so that a photo that crashes the
process every time ends FAILED rather than looping.

Times: `created` and `updated` are wall-clock epoch seconds for humans. `now`, `not_before` and
`retry_at` are wall-clock epoch seconds too (not monotonic): they are stored, and a monotonic
reading means nothing after a reboot. They are parameters so tests control them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

import structlog

from daemon.journaljobs import Queueing, Running
from daemon.journalreads import Reads
from daemon.journalstore import (
    BUSY_TIMEOUT_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RETRY_FOR,
    JOURNAL_NAME,
    LOCK_NAME,
    SCHEMA_VERSION,
    WAL_PAGES,
    Job,
    JobState,
    JournalError,
    SourceChangedError,
    _connect,
    _file_identity,
    _lock,
)
from daemon.orders import hash_file

__all__ = [
    "BUSY_TIMEOUT_SECONDS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_RETRY_FOR",
    "JOURNAL_NAME",
    "LOCK_NAME",
    "SCHEMA_VERSION",
    "WAL_PAGES",
    "Job",
    "JobState",
    "Journal",
    "JournalError",
    "SourceChangedError",
    "backoff_seconds",
    "hash_file",
    "streak_delay",
]

log = structlog.get_logger()


def backoff_seconds(
    attempt: int, *, base: float = 5.0, factor: float = 3.0, cap: float = 600.0
) -> float:
    """Wait before retry number `attempt` (1-based): 5 s, 15 s, 45 s, ... at most 10 minutes.

    No jitter: jitter spreads many clients hammering one server, and here one daemon retries
    its own jobs. Fixed delays are predictable to a user reading `stylewatch status`.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    # min() before the power would be wrong, but the exponent is clamped so it cannot overflow.
    return float(min(cap, base * factor ** min(attempt - 1, 64)))


def streak_delay(streak_seconds: float, *, first: float = 5.0, cap: float = 60.0) -> float:
    """Wait before the next try of passing trouble that has lasted `streak_seconds`: as long as it
    has lasted so far, at least `first` and at most `cap` (5 s, 5 s, 10 s, 20 s, 40 s, 60 s, ...).

    Doubling keeps the number of tries small over hours; the cap bounds how long a booth waits
    after the trouble is gone.
    """
    return float(min(cap, max(first, streak_seconds)))


def _variant(wanted: str, n: int) -> str:
    """`a/photo.jpg`, 2 -> `a/photo~2.jpg`."""
    p = PurePosixPath(wanted)
    return str(p.with_name(f"{p.stem}~{n}{p.suffix}"))


class Journal(Queueing, Running, Reads):
    """The job journal of one state folder. Open it with Journal.open().

    One connection guarded by a lock: safe for the worker thread writing and other threads
    reading. Other processes (`stylewatch status`, `retry`) open it with exclusive=False and
    share it through SQLite's own locking.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        lock_file: IO[str] | None,
        *,
        max_attempts: int,
        retry_for: float,
        wall: Callable[[], float],
    ) -> None:
        self._conn = conn
        self._path = path
        self._lock_file = lock_file
        self._max_attempts = max_attempts
        self._retry_for = retry_for
        self._wall = wall
        self._mutex = threading.RLock()
        # What this process opened: if the files at these paths change (the state folder removed
        # or the journal deleted and made anew), this process is no longer the journal's owner.
        self._identity = {p: _file_identity(p) for p in (path, path.parent / LOCK_NAME)}

    # ---- opening and closing ------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        exclusive: bool = True,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_for: float = DEFAULT_RETRY_FOR,
        wall: Callable[[], float] = time.time,
    ) -> Journal:
        """Open (and with exclusive=True create) `state_dir/journal.sqlite3`.

        exclusive=True is the daemon: it takes an exclusive lock on `state_dir/lock` so two
        daemons never share a journal, and creates or upgrades the schema. exclusive=False is for
        the CLI and the web page reading a running daemon's journal: no lock file, the journal
        must exist and have the current schema, and nothing is created or migrated.
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if not retry_for >= 0:
            raise ValueError(f"retry_for must be >= 0 seconds, got {retry_for!r}")
        path = state_dir / JOURNAL_NAME
        lock_file: IO[str] | None = None
        if exclusive:
            try:
                state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise JournalError(f"cannot create the state folder {state_dir}: {exc}") from exc
            lock_file = _lock(state_dir / LOCK_NAME)
        elif not path.is_file():
            raise JournalError(
                f"no journal at {path}: the daemon has not run with this state folder yet"
            )
        try:
            conn = _connect(path, create=exclusive)
        except BaseException:
            if lock_file is not None:
                lock_file.close()
            raise
        journal = cls(
            conn, path, lock_file, max_attempts=max_attempts, retry_for=retry_for, wall=wall
        )
        log.debug("journal_opened", path=str(path), exclusive=exclusive)
        return journal

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_attempts(self) -> int:
        return self._max_attempts

    @property
    def id(self) -> str:
        """This journal's identity, made when it was created (or first upgraded): an output
        folder remembers which journal wrote it (see daemon/outputs.py)."""
        with self._read() as cur:
            row = cur.execute("SELECT value FROM meta WHERE key = 'journal_id'").fetchone()
        if row is None:
            raise JournalError(f"{self._path} has no identity: open it with exclusive=True first")
        return str(row[0])

    def lost(self) -> str | None:
        """Why this journal is no longer the one at its path, or None while it is.

        A state folder removed (or its journal deleted) under a running daemon leaves it writing
        to unlinked files: `status` would see nothing, a second daemon could take a fresh lock,
        and a restart would start from an empty journal. The service checks this regularly and
        stops rather than split in two.
        """
        for path, opened in self._identity.items():
            now = _file_identity(path)
            if now is None:
                return f"{path} was removed"
            if now != opened:
                return f"{path} was replaced by another file"
        return None

    def close(self) -> None:
        """Close the connection and release the state folder's lock. Idempotent."""
        with self._mutex:
            self._conn.close()
            if self._lock_file is not None:
                self._lock_file.close()  # closing the descriptor releases the flock
                self._lock_file = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- jobs -----------------------------------------------------------------------------------

    def fingerprint(self, source: str, path: Path) -> str:
        """sha256 of `path`'s content, cached under `source` while its stat is unchanged.

        The cache is keyed on size, mtime, ctime and inode: ctime moves on every write, even
        one that restores the old mtime (`cp -p`), so new content is never missed. A
        metadata-only touch misses the cache, hashes again and finds the same fingerprint, so
        it maps to the same job and is not processed again.
        Raises SourceChangedError when the file changes while being read, OSError when it
        cannot be read.
        """
        before = path.stat()
        key = (before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino)
        with self._read() as cur:
            row = cur.execute(
                "SELECT size, mtime_ns, ctime_ns, inode, fingerprint FROM fingerprints"
                " WHERE source = ?",
                (source,),
            ).fetchone()
        if row is not None and tuple(row[:4]) == key:
            return str(row[4])
        digest = hash_file(path)
        after = path.stat()
        if (after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino) != key:
            raise SourceChangedError(f"{path} changed while it was being read")
        with self._tx() as cur:
            cur.execute(
                "INSERT OR REPLACE INTO fingerprints"
                " (source, size, mtime_ns, ctime_ns, inode, fingerprint) VALUES (?, ?, ?, ?, ?, ?)",
                (source, *key, digest),
            )
        return digest

    def claim_output(
        self,
        wanted: str,
        source: str,
        fingerprint: str,
        *,
        taken: Callable[[str], bool] | None = None,
    ) -> str:
        """The output path to write for this content of `source`, recorded so it stays stable.

        The same (source, fingerprint) always gets the same answer back. Other content, of
        this source (a camera counter reset reusing a name) or of another, gets the first free
        variant, `name~2.jpg`, `name~3.jpg`, ..., so earlier outputs are kept. `taken` may say
        that a path is occupied on disk by a file the journal does not know of.
        """
        with self._tx() as cur:
            row = cur.execute(
                "SELECT output FROM outputs WHERE wanted = ? AND source = ? AND fingerprint = ?",
                (wanted, source, fingerprint),
            ).fetchone()
            if row is not None:
                return str(row[0])
            n = 1
            while True:
                candidate = wanted if n == 1 else _variant(wanted, n)
                known = cur.execute(
                    "SELECT 1 FROM outputs WHERE output = ?", (candidate,)
                ).fetchone()
                if known is None and not (taken is not None and taken(candidate)):
                    break
                n += 1
            cur.execute(
                "INSERT INTO outputs (output, wanted, source, fingerprint, claimed)"
                " VALUES (?, ?, ?, ?, ?)",
                (candidate, wanted, source, fingerprint, self._wall()),
            )
            return candidate
