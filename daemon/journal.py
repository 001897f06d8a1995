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

import contextlib
import enum
import errno
import fcntl
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import structlog

from daemon.orders import OrderError, WorkOrder, hash_file

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_RETRY_FOR",
    "JOURNAL_NAME",
    "LOCK_NAME",
    "SCHEMA_VERSION",
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

JOURNAL_NAME = "journal.sqlite3"
LOCK_NAME = "lock"
SCHEMA_VERSION = 3
DEFAULT_MAX_ATTEMPTS = 5
# Six hours: a share or a disk away overnight still fails its jobs by morning, where `stylewatch
# status` shows them; anything shorter fails photos during an ordinary outage.
DEFAULT_RETRY_FOR = 6 * 3600.0
# Long enough to ride out a `stylewatch status` or `retry` in another process holding the write
# lock for a moment; short enough that a stuck one is reported instead of hanging the daemon.
BUSY_TIMEOUT_SECONDS = 5.0
WAL_PAGES = 32

_SCHEMA = """
CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    source        TEXT    NOT NULL,
    fingerprint   TEXT    NOT NULL,
    rule          TEXT    NOT NULL,  -- the rule's name (schema 3; its index before)
    style         TEXT    NOT NULL,
    settings_hash TEXT    NOT NULL,
    output        TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    error_kind    TEXT,
    not_before    REAL    NOT NULL DEFAULT 0,
    seq           INTEGER NOT NULL,  -- arrival order; renewed when a job is queued again by hand
    created       REAL    NOT NULL,
    updated       REAL    NOT NULL,
    started       REAL,              -- when the current or last attempt began (schema 2)
    first_failure REAL,              -- start of the current streak of passing trouble (schema 2)
    work_order    TEXT,              -- the order as canonical JSON; NULL: from schema 2, not yet
                                     -- read against the config (daemon/intake.py adopts it)
    worker        TEXT,              -- the worker that runs (or last ran) the job
    UNIQUE (source, fingerprint, style, settings_hash)
);
CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE TABLE fingerprints (
    source      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    ctime_ns    INTEGER NOT NULL,
    inode       INTEGER NOT NULL,
    fingerprint TEXT    NOT NULL
);
CREATE TABLE outputs (
    output      TEXT PRIMARY KEY,  -- the relative path handed out
    wanted      TEXT NOT NULL,     -- the relative path the rule asked for
    source      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    claimed     REAL NOT NULL,
    UNIQUE (wanted, source, fingerprint)
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
# From schema 1 (the first release) to 2 and 3, in place; done jobs stay done, queued ones run
# once. Schema 3 drops the rule's index from the key (a rule is known by its name now), so the
# table is rebuilt; two rows that differed only by the rule's index keep the one that got furthest.
_MIGRATIONS = {
    1: """
ALTER TABLE jobs ADD COLUMN started REAL;
ALTER TABLE jobs ADD COLUMN first_failure REAL;
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
""",
    2: """
ALTER TABLE jobs RENAME TO jobs_v2;
DROP INDEX jobs_by_state;
"""
    + _SCHEMA.split("CREATE TABLE fingerprints", maxsplit=1)[0]
    + """
INSERT OR IGNORE INTO jobs (id, source, fingerprint, rule, style, settings_hash, output, state,
    attempts, last_error, error_kind, not_before, seq, created, updated, started, first_failure)
SELECT id, source, fingerprint, '#' || rule, style, settings_hash, output, state, attempts,
    last_error, error_kind, not_before, seq, created, updated, started, first_failure
FROM jobs_v2
ORDER BY CASE state WHEN 'done' THEN 0 WHEN 'running' THEN 1 WHEN 'queued' THEN 2
    WHEN 'failed' THEN 3 ELSE 4 END, id;
DROP TABLE jobs_v2;
""",
}


class JournalError(Exception):
    """The journal cannot be used: locked, corrupted, from a newer version, or failing I/O."""


class SourceChangedError(Exception):
    """The source changed while it was being fingerprinted: track it again until it settles."""


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Job:
    id: int
    source: str
    fingerprint: str
    rule: str  # the rule's name ("#N" for a job from schema 2 not yet adopted)
    style: str
    settings_hash: str
    output: str  # planned output until done, then the path actually written
    state: JobState
    attempts: int
    last_error: str | None
    error_kind: str | None
    not_before: float
    created: float
    updated: float
    started: float | None = None  # when the current or last attempt began
    first_failure: float | None = None  # queued after passing trouble: since when it lasts
    order: WorkOrder | None = None  # None: a job from schema 2 not yet adopted (intake.py)
    worker: str | None = None  # the worker that runs, or last ran, the job


_JOB_COLUMNS = (
    "id, source, fingerprint, rule, style, settings_hash, output, state, attempts, last_error,"
    " error_kind, not_before, created, updated, started, first_failure, work_order, worker"
)


def _job(row: tuple[Any, ...]) -> Job:
    return Job(
        id=row[0],
        source=row[1],
        fingerprint=row[2],
        rule=row[3],
        style=row[4],
        settings_hash=row[5],
        output=row[6],
        state=JobState(row[7]),
        attempts=row[8],
        last_error=row[9],
        error_kind=row[10],
        not_before=row[11],
        created=row[12],
        updated=row[13],
        started=row[14],
        first_failure=row[15],
        order=_order(row[16]),
        worker=row[17],
    )


def _order(text: str | None) -> WorkOrder | None:
    if not text:
        return None
    try:
        return WorkOrder.from_json(text)
    except OrderError as exc:
        raise JournalError(f"a job's work order cannot be read: {exc}") from exc


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


class Journal:
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

    def enqueue(self, order: WorkOrder) -> Job | None:
        """Queue a work order; None when its key is already known (queued, running, done or
        failed).

        A cancelled job with the same key (its source vanished, then came back) is queued again,
        with this order (the rule that plans it may have a new name).
        """
        now = self._wall()
        key = (order.source, order.fingerprint, order.style, order.settings_hash)
        text = order.to_json()
        with self._tx() as cur:
            row = cur.execute(
                "SELECT id, state FROM jobs WHERE source = ? AND fingerprint = ? AND style = ?"
                " AND settings_hash = ?",
                key,
            ).fetchone()
            if row is None:
                cur.execute(
                    "INSERT INTO jobs (source, fingerprint, style, settings_hash, rule, output,"
                    " work_order, state, seq, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        *key,
                        order.rule,
                        order.output,
                        text,
                        JobState.QUEUED.value,
                        _next_seq(cur),
                        now,
                        now,
                    ),
                )
                job_id = cur.lastrowid
            elif row[1] == JobState.CANCELLED.value:
                job_id = row[0]
                cur.execute(
                    "UPDATE jobs SET state = ?, rule = ?, output = ?, work_order = ?, attempts = 0,"
                    " last_error = NULL, error_kind = NULL, not_before = 0, seq = ?, updated = ?"
                    " WHERE id = ?",
                    (
                        JobState.QUEUED.value,
                        order.rule,
                        order.output,
                        text,
                        _next_seq(cur),
                        now,
                        job_id,
                    ),
                )
            else:
                return None
            assert job_id is not None
            return _fetch(cur, job_id)

    def adopt(self, job_id: int, order: WorkOrder | None) -> bool:
        """Give a job from schema 2 (no order yet) the order that the config plans for it now,
        or None when it plans none: the job is then marked as read (and cancelled if queued).
        False when another job already holds the order's key: this one is then cancelled as its
        duplicate (a queued one) or kept for the record (a done one)."""
        with self._tx() as cur:
            job = _fetch(cur, job_id)
            clash = (
                order is not None
                and cur.execute(
                    "SELECT id FROM jobs WHERE source = ? AND fingerprint = ? AND style = ?"
                    " AND settings_hash = ? AND id != ?",
                    (order.source, order.fingerprint, order.style, order.settings_hash, job_id),
                ).fetchone()
                is not None
            )
            if order is None or clash:
                cur.execute("UPDATE jobs SET work_order = '' WHERE id = ?", (job_id,))
                if job.state is JobState.QUEUED:
                    cur.execute(
                        "UPDATE jobs SET state = ?, error_kind = 'cancelled', last_error = ?,"
                        " updated = ? WHERE id = ?",
                        (
                            JobState.CANCELLED.value,
                            "the same work is queued as another job"
                            if clash
                            else "the config no longer plans this output",
                            self._wall(),
                            job_id,
                        ),
                    )
                return False
            assert order is not None
            cur.execute(
                "UPDATE jobs SET work_order = ?, rule = ?, settings_hash = ? WHERE id = ?",
                (order.to_json(), order.rule, order.settings_hash, job_id),
            )
            return True

    def unadopted(self) -> list[Job]:
        """Jobs from schema 2 that have no order yet (daemon/intake.py adopts them at start)."""
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE work_order IS NULL ORDER BY seq"
            )
            return [_job(r) for r in rows]

    def take(self, limit: int, now: float, *, worker: str = "worker-0") -> list[Job]:
        """Start up to `limit` jobs for `worker`: the oldest due one and more of its style and
        settings.

        Jobs come in arrival order; the batch holds only jobs with the same style and
        settings_hash as the first, since the engine batches photos that share a style target.
        They are marked RUNNING, owned by `worker`, with one more attempt, in one transaction.
        Jobs without an order (from schema 2, not adopted yet) wait for their adoption.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        stamp = self._wall()
        with self._tx() as cur:
            first = cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? AND not_before <= ?"
                " AND work_order != '' ORDER BY seq LIMIT 1",
                (JobState.QUEUED.value, now),
            ).fetchone()
            if first is None:
                return []
            head = _job(first)
            ids = [head.id] + [
                r[0]
                for r in cur.execute(
                    "SELECT id FROM jobs WHERE state = ? AND not_before <= ? AND style = ?"
                    " AND settings_hash = ? AND id != ? AND work_order != ''"
                    " ORDER BY seq LIMIT ?",
                    (
                        JobState.QUEUED.value,
                        now,
                        head.style,
                        head.settings_hash,
                        head.id,
                        limit - 1,
                    ),
                )
            ]
            cur.executemany(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, updated = ?, started = ?,"
                " worker = ? WHERE id = ?",
                [(JobState.RUNNING.value, stamp, stamp, worker, job_id) for job_id in ids],
            )
            return [_fetch(cur, job_id) for job_id in ids]

    def mark_done(self, job_id: int, output: str) -> Job:
        """A running job wrote `output` (relative to the output root).

        Failures of earlier content of the same source in the same style (a copy caught while
        still growing, then finished) are stale now: they become CANCELLED (`superseded`), so
        `status` shows only what still needs someone's attention.
        """
        now = self._wall()
        with self._tx() as cur:
            job = self._require(cur, job_id, JobState.RUNNING)
            cur.execute(
                "UPDATE jobs SET state = ?, output = ?, last_error = NULL, error_kind = NULL,"
                " first_failure = NULL, updated = ? WHERE id = ?",
                (JobState.DONE.value, output, now, job_id),
            )
            cur.execute(
                "UPDATE jobs SET state = ?, error_kind = 'superseded',"
                " last_error = 'a later copy of this file was stylized; before, '"
                " || COALESCE(last_error, 'it failed'),"
                " updated = ? WHERE source = ? AND style = ? AND state = ? AND id != ?",
                (
                    JobState.CANCELLED.value,
                    now,
                    job.source,
                    job.style,
                    JobState.FAILED.value,
                    job_id,
                ),
            )
            return _fetch(cur, job_id)

    def mark_failed(
        self,
        job_id: int,
        error: str,
        kind: str,
        *,
        permanent: bool,
        retry_at: float | None,
        transient: bool = False,
    ) -> Job:
        """A running job failed. Returns the job as it now stands (QUEUED again, or FAILED).

        permanent (a bad photo): FAILED for good. transient (trouble that can pass: I/O, a
        painting or a share away): queued again, not before `retry_at`, until the streak of
        failures has lasted `retry_for` seconds; the attempt is not counted. Otherwise (an error
        of unknown kind): queued again unless it has used up max_attempts.
        """
        now = self._wall()
        with self._tx() as cur:
            job = self._require(cur, job_id, JobState.RUNNING)
            streak = job.first_failure if job.first_failure is not None else now
            if permanent:
                give_up = True
            elif transient:
                give_up = now - streak >= self._retry_for
            else:
                give_up = job.attempts >= self._max_attempts
            state = JobState.FAILED if give_up else JobState.QUEUED
            cur.execute(
                "UPDATE jobs SET state = ?, last_error = ?, error_kind = ?, not_before = ?,"
                " first_failure = ?, attempts = attempts - ?, updated = ? WHERE id = ?",
                (
                    state.value,
                    error,
                    kind,
                    0.0 if give_up or retry_at is None else retry_at,
                    streak if transient else job.first_failure,
                    1 if transient and job.attempts > 0 else 0,
                    now,
                    job_id,
                ),
            )
            return _fetch(cur, job_id)

    def running(self, worker: str) -> list[Job]:
        """The jobs `worker` is running: after it died, the pool puts them back with this."""
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? AND worker = ? ORDER BY seq",
                (JobState.RUNNING.value, worker),
            )
            return [_job(r) for r in rows]

    def release(self, job_id: int) -> Job:
        """Put a running job back in the queue without counting the attempt (shutdown, or a
        batch split after running out of GPU memory)."""
        with self._tx() as cur:
            self._require(cur, job_id, JobState.RUNNING)
            cur.execute(
                "UPDATE jobs SET state = ?, attempts = MAX(attempts - 1, 0), updated = ?"
                " WHERE id = ?",
                (JobState.QUEUED.value, self._wall(), job_id),
            )
            return _fetch(cur, job_id)

    def cancel(self, job_id: int, reason: str) -> bool:
        """Cancel a queued or running job (its source was removed). False when it had ended."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE jobs SET state = ?, last_error = ?, error_kind = 'cancelled', updated = ?"
                " WHERE id = ? AND state IN (?, ?)",
                (
                    JobState.CANCELLED.value,
                    reason,
                    self._wall(),
                    job_id,
                    JobState.QUEUED.value,
                    JobState.RUNNING.value,
                ),
            )
            return cur.rowcount == 1

    def cancel_source(self, source: str, reason: str) -> int:
        """Cancel every queued job of `source` (the watcher saw it deleted). Returns how many."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE jobs SET state = ?, last_error = ?, error_kind = 'cancelled', updated = ?"
                " WHERE source = ? AND state = ?",
                (JobState.CANCELLED.value, reason, self._wall(), source, JobState.QUEUED.value),
            )
            return cur.rowcount

    def recover(self) -> int:
        """At start-up: jobs left RUNNING by a crash go back to the queue. Returns how many.

        The interrupted attempt still counts, so a photo that kills the process every time (a
        decoder crash, the kernel's OOM killer) ends FAILED after max_attempts instead of
        looping forever.
        """
        stamp = self._wall()
        with self._tx() as cur:
            cur.execute(
                "UPDATE jobs SET state = ?, last_error = ?, error_kind = 'interrupted',"
                " not_before = 0, updated = ? WHERE state = ? AND attempts >= ?",
                (
                    JobState.FAILED.value,
                    "the daemon stopped while running this job too many times",
                    stamp,
                    JobState.RUNNING.value,
                    self._max_attempts,
                ),
            )
            given_up = cur.rowcount
            cur.execute(
                "UPDATE jobs SET state = ?, updated = ? WHERE state = ?",
                (JobState.QUEUED.value, stamp, JobState.RUNNING.value),
            )
            requeued = cur.rowcount
        if requeued or given_up:
            log.warning("journal_recovered", requeued=requeued, failed=given_up)
        return requeued

    def retry_failed(self) -> int:
        """Queue every FAILED job again with fresh attempts (`stylewatch retry`)."""
        with self._tx() as cur:
            ids = [
                r[0]
                for r in cur.execute(
                    "SELECT id FROM jobs WHERE state = ? ORDER BY seq", (JobState.FAILED.value,)
                )
            ]
            seq = _next_seq(cur)
            cur.executemany(
                "UPDATE jobs SET state = ?, attempts = 0, not_before = 0, first_failure = NULL,"
                " seq = ?, updated = ? WHERE id = ?",
                [
                    (JobState.QUEUED.value, seq + i, self._wall(), job_id)
                    for i, job_id in enumerate(ids)
                ],
            )
            return len(ids)

    def retry_job(self, job_id: int) -> bool:
        """Queue one FAILED job again with fresh attempts (the web dashboard's retry button).
        False when the job is not (or no longer) failed."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE jobs SET state = ?, attempts = 0, not_before = 0, first_failure = NULL,"
                " seq = ?, updated = ? WHERE id = ? AND state = ?",
                (
                    JobState.QUEUED.value,
                    _next_seq(cur),
                    self._wall(),
                    job_id,
                    JobState.FAILED.value,
                ),
            )
            return cur.rowcount == 1

    # ---- reading --------------------------------------------------------------------------------

    def job(self, job_id: int) -> Job:
        with self._read() as cur:
            return _fetch(cur, job_id)

    def jobs(self, state: JobState | None = None) -> list[Job]:
        """Jobs in arrival order, all of them or those in one state."""
        with self._read() as cur:
            if state is None:
                rows = cur.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY seq")
            else:
                rows = cur.execute(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? ORDER BY seq",
                    (state.value,),
                )
            return [_job(r) for r in rows]

    def has_done(self, source: str, fingerprint: str, style: str) -> bool:
        """Whether this content of `source` was already stylized in this style, under any rule
        and settings: changed settings apply to new photos, not to those already done, and a
        rule moved in the list (its index changed) plans nothing new."""
        with self._read() as cur:
            row = cur.execute(
                "SELECT 1 FROM jobs WHERE source = ? AND fingerprint = ? AND style = ?"
                " AND state = ?",
                (source, fingerprint, style, JobState.DONE.value),
            ).fetchone()
        return row is not None

    def has_pending(self, source: str, fingerprint: str, style: str, settings_hash: str) -> bool:
        """Whether a job for this content, style and settings is queued, running or failed under
        any rule: a reload that moved the rules must not queue the same work a second time."""
        with self._read() as cur:
            row = cur.execute(
                "SELECT 1 FROM jobs WHERE source = ? AND fingerprint = ? AND style = ?"
                " AND settings_hash = ? AND state IN (?, ?, ?)",
                (
                    source,
                    fingerprint,
                    style,
                    settings_hash,
                    JobState.QUEUED.value,
                    JobState.RUNNING.value,
                    JobState.FAILED.value,
                ),
            ).fetchone()
        return row is not None

    def counts(self) -> dict[JobState, int]:
        """Jobs per state; every state is present."""
        with self._read() as cur:
            found = dict(cur.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {state: found.get(state.value, 0) for state in JobState}

    def recent_failures(self, n: int) -> list[Job]:
        """The `n` most recently failed jobs, newest first."""
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? ORDER BY updated DESC, id DESC"
                " LIMIT ?",
                (JobState.FAILED.value, n),
            )
            return [_job(r) for r in rows]

    def waiting(self, n: int) -> list[Job]:
        """Up to `n` queued jobs that failed before and wait for their next try, oldest trouble
        first: `status` shows them with their reason."""
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? AND last_error IS NOT NULL"
                " ORDER BY COALESCE(first_failure, updated), id LIMIT ?",
                (JobState.QUEUED.value, n),
            )
            return [_job(r) for r in rows]

    def reusable(self, fingerprint: str, style: str, settings_hash: str) -> Job | None:
        """The newest done job with this content, style and settings: a folder renamed after its
        photos were done gets copies of the artworks, not new computations."""
        with self._read() as cur:
            row = cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE fingerprint = ? AND style = ?"
                " AND settings_hash = ? AND state = ? ORDER BY updated DESC, id DESC LIMIT 1",
                (fingerprint, style, settings_hash, JobState.DONE.value),
            ).fetchone()
        return None if row is None else _job(row)

    def queued_count(self) -> int:
        with self._read() as cur:
            row = cur.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ?", (JobState.QUEUED.value,)
            ).fetchone()
        return int(row[0])

    def next_due(self) -> float | None:
        """The earliest not_before among queued jobs (0.0: due now); None when none is queued."""
        with self._read() as cur:
            row = cur.execute(
                "SELECT MIN(not_before) FROM jobs WHERE state = ?", (JobState.QUEUED.value,)
            ).fetchone()
        return None if row[0] is None else float(row[0])

    # ---- fingerprints and outputs -----------------------------------------------------------

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

    def output_owner(self, output: str) -> tuple[str, str] | None:
        """(source, fingerprint) that claimed `output`, or None: lets the worker recognise an
        output it wrote before a crash and mark the job done instead of doing it twice."""
        with self._read() as cur:
            row = cur.execute(
                "SELECT source, fingerprint FROM outputs WHERE output = ?", (output,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    # ---- plumbing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction. BEGIN IMMEDIATE takes the write lock up front, so a
        read-then-write never fails half-way on a lock held by another process."""
        with self._mutex, self._translated():
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                # A COMMIT that failed (a full disk) may leave the transaction open; the next
                # BEGIN would then fail for good.
                if self._conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        with self._mutex, self._translated():
            yield self._conn.cursor()

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (sqlite3.ProgrammingError, sqlite3.IntegrityError):
            raise  # our own bugs: keep their type and traceback
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith("SQLITE_FULL"):
                self._give_back_wal()
            raise _explain(self._path, exc) from exc

    def _give_back_wal(self) -> None:
        """After a full disk: fold the write-ahead log into the database and truncate it, so
        that the space it held is there for the next try (best effort: a reader may hold it)."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError as exc:
            log.debug("journal_checkpoint_failed", error=str(exc))

    def _require(self, cur: sqlite3.Cursor, job_id: int, state: JobState) -> Job:
        job = _fetch(cur, job_id)
        if job.state is not state:
            raise JournalError(f"job {job_id} is {job.state.value}, not {state.value}")
        return job


def _fetch(cur: sqlite3.Cursor, job_id: int) -> Job:
    row = cur.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        raise KeyError(f"no job {job_id} in the journal")
    return _job(row)


def _next_seq(cur: sqlite3.Cursor) -> int:
    return int(cur.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0])


def _lock(path: Path) -> IO[str]:
    """Hold an exclusive flock on `path` for the life of the returned file."""
    try:
        f = path.open("a+", encoding="utf-8")
    except OSError as exc:
        raise JournalError(f"cannot open the lock file {path}: {exc}") from exc
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise JournalError(
                f"another stylewatch daemon{who} is using the state folder {path.parent}"
                f" (it holds {path}); stop it, or give this one another state folder"
            ) from exc
        raise JournalError(f"cannot lock {path}: {exc}") from exc
    # The pid is for the message above only; the lock itself is the flock.
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; _tx() opens them explicitly.
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
    )
    try:
        _prepare(conn, path, create=create)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: Path, *, create: bool) -> None:
    try:
        # Read-only checks first: a damaged or foreign file must be left exactly as it is.
        problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise JournalError(_corrupt_message(path, "; ".join(problems[:3])))
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{path} was written by a newer stylewatch (journal schema {version}; this one"
                f" knows up to {SCHEMA_VERSION}): upgrade stylewatch, or move the file aside"
            )
        if version == 0 and tables:
            raise JournalError(
                f"{path} is an SQLite database but not a stylewatch journal: move it aside"
            )
        if version == 0 and not create:
            raise JournalError(f"{path} is empty: the daemon has not started with it yet")
        if version < SCHEMA_VERSION and version != 0 and not create:
            raise JournalError(
                f"{path} was written by an older stylewatch (journal schema {version}): the"
                " service upgrades it in place when it starts next"
            )
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        # WAL lets `stylewatch status` read while the worker writes.
        if create:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("journal_not_wal", path=str(path), mode=mode)
        # FULL: each commit is on disk before we go on, so a power cut cannot forget a job that
        # was marked done and redo it. A commit per photo makes the fsync cost invisible.
        conn.execute("PRAGMA synchronous = FULL")
        # A short write-ahead log: folded into the database every WAL_PAGES pages written (a few
        # jobs) and cut back to that size, so the journal needs little room beyond its own
        # size and a state disk that filled and freed has room again (SQLite's default lets
        # the log grow to 4 MB first).
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_PAGES * 4096}")
        if version == 0:
            _create_schema(conn)
            log.info("journal_created", path=str(path))
        elif version < SCHEMA_VERSION:
            _migrate(conn, version)
            log.info("journal_upgraded", path=str(path), schema=SCHEMA_VERSION, was=version)
    except sqlite3.DatabaseError as exc:
        raise _explain(path, exc) from exc


def _create_schema(conn: sqlite3.Connection) -> None:
    # One transaction: a crash half-way leaves version 0 and no tables, and the next start
    # creates them again.
    _script(conn, _SCHEMA)


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Upgrade schema `version` in place, one transaction for all steps."""
    _script(conn, "".join(_MIGRATIONS[v] for v in range(version, SCHEMA_VERSION)))


def _script(conn: sqlite3.Connection, body: str) -> None:
    identity = uuid.uuid4().hex
    try:
        conn.executescript(
            f"BEGIN IMMEDIATE;\n{body}\n"
            # OR IGNORE: an upgraded journal keeps its identity (the output folder knows it).
            f"INSERT OR IGNORE INTO meta (key, value) VALUES ('journal_id', '{identity}');\n"
            f"PRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;"
        )
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _corrupt_message(path: Path, detail: str) -> str:
    return (
        f"the journal {path} is damaged ({detail}). It was left untouched: stop stylewatch,"
        f" move it aside (with any {path.name}-wal and -shm files) and start again to begin a"
        " new journal; photos already processed will then be processed again"
    )


def _explain(path: Path, exc: sqlite3.DatabaseError) -> JournalError:
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return JournalError(
            f"the journal {path} is locked by another process (waited"
            f" {BUSY_TIMEOUT_SECONDS:g} s): {exc}"
        )
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return JournalError(_corrupt_message(path, str(exc)))
    if name.startswith("SQLITE_FULL"):
        return JournalError(f"the disk holding the journal {path} is full: {exc}")
    return JournalError(f"the journal {path} failed: {exc}")
