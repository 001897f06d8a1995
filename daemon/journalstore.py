"""The journal's storage: its SQL schema and in-place upgrades, opening and locking the file, the
job rows, and the one-transaction plumbing that every part of the Journal uses.

See daemon/journal.py for what the journal promises; this module is how it keeps it.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog

from daemon.orders import OrderError, WorkOrder

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


class Store:
    """What the parts of the Journal share: the connection, its lock, the clock, the limits."""

    _conn: sqlite3.Connection
    _path: Path
    _mutex: threading.RLock
    _max_attempts: int
    _retry_for: float
    _wall: Callable[[], float]

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
