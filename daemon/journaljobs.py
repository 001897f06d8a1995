"""The journal's job transitions: queueing work orders (and upgraded jobs' orders), running them
(taken by a worker, done, failed, released, cancelled) and recovering them after a crash."""

from __future__ import annotations

import structlog

from daemon.journalstore import _JOB_COLUMNS, Job, JobState, Store, _fetch, _job, _next_seq
from daemon.orders import WorkOrder

log = structlog.get_logger()


class Queueing(Store):
    """Jobs coming in: orders queued, upgraded jobs given theirs, failed ones queued again."""

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

    def cancel_source(self, source: str, reason: str) -> int:
        """Cancel every queued job of `source` (the watcher saw it deleted). Returns how many."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE jobs SET state = ?, last_error = ?, error_kind = 'cancelled', updated = ?"
                " WHERE source = ? AND state = ?",
                (JobState.CANCELLED.value, reason, self._wall(), source, JobState.QUEUED.value),
            )
            return cur.rowcount

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


class Running(Store):
    """Jobs being run: taken by a worker, and how each attempt ended."""

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

    def running(self, worker: str) -> list[Job]:
        """The jobs `worker` is running: after it died, the pool puts them back with this."""
        with self._read() as cur:
            rows = cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state = ? AND worker = ? ORDER BY seq",
                (JobState.RUNNING.value, worker),
            )
            return [_job(r) for r in rows]

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
