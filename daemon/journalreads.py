"""The journal's questions: jobs by id or state, what is done or pending, counts, failures,
what waits and why, and who claimed an output."""

from __future__ import annotations

from daemon.journalstore import _JOB_COLUMNS, Job, JobState, Store, _fetch, _job


class Reads(Store):
    """Read-only questions; `stylewatch status`, the web page and the service ask them."""

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

    def output_owner(self, output: str) -> tuple[str, str] | None:
        """(source, fingerprint) that claimed `output`, or None: lets the worker recognise an
        output it wrote before a crash and mark the job done instead of doing it twice."""
        with self._read() as cur:
            row = cur.execute(
                "SELECT source, fingerprint FROM outputs WHERE output = ?", (output,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    # ---- plumbing -------------------------------------------------------------------------------
