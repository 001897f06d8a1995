"""The job journal: real SQLite files, reopened to prove durability and crash recovery."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import order, settings_hash

import daemon.journal as journal_module
from daemon.journal import (
    JOURNAL_NAME,
    SCHEMA_VERSION,
    JobState,
    Journal,
    JournalError,
    SourceChangedError,
    backoff_seconds,
)
from daemon.orders import WorkOrder

REPO = Path(__file__).resolve().parents[1]


class Wall:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 1.0  # every stamp is distinct, so "most recent" is well defined
        return self.t


def spec(
    source: str = "a.jpg",
    *,
    fingerprint: str = "f1",
    rule: str = "r",
    style: str = "starry",
    settings_hash: str = "s1",
    output: str | None = None,
) -> WorkOrder:
    return order(source, fingerprint, rule=rule, style=style, settings=settings_hash, output=output)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def journal(state_dir: Path) -> Iterator[Journal]:
    j = Journal.open(state_dir, max_attempts=3, wall=Wall())
    yield j
    j.close()


# ---- opening ----------------------------------------------------------------------------------


def test_open_creates_a_wal_journal_with_a_schema_version(
    journal: Journal, state_dir: Path
) -> None:
    path = state_dir / JOURNAL_NAME
    assert journal.path == path
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    other.close()


def test_jobs_survive_reopening(state_dir: Path) -> None:
    with Journal.open(state_dir) as j:
        job = j.enqueue(spec())
        assert job is not None
    with Journal.open(state_dir) as j:
        assert j.jobs() == [job]
        assert j.enqueue(spec()) is None


def test_second_daemon_on_the_same_state_dir_is_refused(journal: Journal, state_dir: Path) -> None:
    with pytest.raises(JournalError, match=r"another stylewatch daemon \(pid \d+\)"):
        Journal.open(state_dir)
    journal.close()
    Journal.open(state_dir).close()  # the lock goes with the first one


def test_garbage_journal_is_reported_and_left_untouched(state_dir: Path) -> None:
    state_dir.mkdir()
    garbage = os.urandom(3000)
    (state_dir / JOURNAL_NAME).write_bytes(garbage)
    with pytest.raises(JournalError, match="damaged") as info:
        Journal.open(state_dir)
    assert str(state_dir / JOURNAL_NAME) in str(info.value)
    assert "move it aside" in str(info.value)
    assert (state_dir / JOURNAL_NAME).read_bytes() == garbage
    assert sorted(p.name for p in state_dir.iterdir()) == [JOURNAL_NAME, "lock"]
    # The lock was released: once the file is moved aside, a new journal starts.
    (state_dir / JOURNAL_NAME).rename(state_dir / "journal.broken")
    Journal.open(state_dir).close()


def test_journal_from_a_newer_version_is_refused(state_dir: Path) -> None:
    Journal.open(state_dir).close()
    with sqlite3.connect(state_dir / JOURNAL_NAME) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(JournalError, match="newer stylewatch"):
        Journal.open(state_dir)


def test_foreign_database_is_refused(state_dir: Path) -> None:
    state_dir.mkdir()
    with sqlite3.connect(state_dir / JOURNAL_NAME) as db:
        db.execute("CREATE TABLE mine (x)")
    db.close()
    with pytest.raises(JournalError, match="not a stylewatch journal"):
        Journal.open(state_dir)


def test_reader_needs_an_existing_journal(state_dir: Path) -> None:
    with pytest.raises(JournalError, match="no journal"):
        Journal.open(state_dir, exclusive=False)
    assert not state_dir.exists()


def test_reader_shares_the_journal_with_the_running_daemon(
    journal: Journal, state_dir: Path
) -> None:
    journal.enqueue(spec())
    [job] = journal.take(1, now=0)
    journal.mark_failed(job.id, "bad", "bad_image", permanent=True, retry_at=None)
    with Journal.open(state_dir, exclusive=False) as cli:
        assert cli.counts()[JobState.FAILED] == 1
        assert cli.retry_failed() == 1
    assert journal.take(1, now=0)[0].id == job.id  # the daemon sees the CLI's requeue


# ---- jobs -------------------------------------------------------------------------------------


def test_enqueue_is_idempotent_per_key(journal: Journal) -> None:
    first = journal.enqueue(spec())
    assert first is not None
    assert first.state is JobState.QUEUED
    assert first.attempts == 0
    assert journal.enqueue(spec()) is None
    # Any part of the key that differs is another job.
    assert journal.enqueue(spec(fingerprint="f2")) is not None
    assert journal.enqueue(spec(style="scream")) is not None
    assert journal.enqueue(spec(settings_hash="s2")) is not None
    # The rule is not part of the key: the same work planned by a renamed or moved rule.
    assert journal.enqueue(spec(rule="renamed")) is None
    assert journal.queued_count() == 4


def test_done_and_failed_jobs_are_not_queued_again(journal: Journal) -> None:
    journal.enqueue(spec("a.jpg"))
    journal.enqueue(spec("b.jpg"))
    done, failed = journal.take(2, now=0)
    journal.mark_done(done.id, "starry/a.jpg")
    journal.mark_failed(failed.id, "not a JPEG", "bad_image", permanent=True, retry_at=None)
    assert journal.enqueue(spec("a.jpg")) is None
    assert journal.enqueue(spec("b.jpg")) is None
    assert journal.job(done.id).output == "starry/a.jpg"


def test_cancelled_job_can_be_queued_again(journal: Journal) -> None:
    job = journal.enqueue(spec())
    assert job is not None
    assert journal.cancel(job.id, "source removed")
    assert journal.job(job.id).state is JobState.CANCELLED
    assert not journal.cancel(job.id, "again")  # already ended
    again = journal.enqueue(spec())
    assert again is not None
    assert again.id == job.id
    assert again.state is JobState.QUEUED


def test_cancel_source_cancels_only_its_queued_jobs(journal: Journal) -> None:
    journal.enqueue(spec("gone.jpg", style="starry"))
    journal.enqueue(spec("gone.jpg", style="scream"))
    journal.enqueue(spec("kept.jpg"))
    assert journal.cancel_source("gone.jpg", "deleted") == 2
    assert [j.source for j in journal.jobs(JobState.QUEUED)] == ["kept.jpg"]


def test_take_batches_same_style_and_settings_in_arrival_order(journal: Journal) -> None:
    names = {}
    for source, style, settings in [
        ("1.jpg", "starry", "s1"),
        ("2.jpg", "scream", "s1"),
        ("3.jpg", "starry", "s1"),
        ("4.jpg", "starry", "s2"),  # same style, other settings: another batch
        ("5.jpg", "starry", "s1"),
        ("6.jpg", "starry", "s1"),
    ]:
        job = journal.enqueue(spec(source, style=style, settings_hash=settings))
        assert job is not None
        names[job.id] = source
    batch = journal.take(3, now=0)
    assert [j.source for j in batch] == ["1.jpg", "3.jpg", "5.jpg"]
    assert all(j.state is JobState.RUNNING and j.attempts == 1 for j in batch)
    assert [j.source for j in journal.take(3, now=0)] == ["2.jpg"]
    assert [j.source for j in journal.take(3, now=0)] == ["4.jpg"]
    assert [j.source for j in journal.take(3, now=0)] == ["6.jpg"]
    assert journal.take(3, now=0) == []


def test_transient_failure_backs_off_then_gives_up(journal: Journal) -> None:
    job = journal.enqueue(spec())
    assert job is not None
    for attempt in (1, 2):
        [running] = journal.take(1, now=1000.0 * attempt)
        assert running.attempts == attempt
        retry_at = 1000.0 * attempt + backoff_seconds(attempt)
        after = journal.mark_failed(
            job.id, "disk full", "transient", permanent=False, retry_at=retry_at
        )
        assert after.state is JobState.QUEUED
        assert after.not_before == retry_at
        assert journal.next_due() == retry_at
        assert journal.take(1, now=retry_at - 0.1) == []  # not yet
    [last] = journal.take(1, now=10_000.0)
    final = journal.mark_failed(job.id, "disk full", "transient", permanent=False, retry_at=1e9)
    assert last.attempts == 3
    assert final.state is JobState.FAILED  # max_attempts=3 reached
    assert final.last_error == "disk full"
    assert final.error_kind == "transient"
    assert journal.next_due() is None


def test_permanent_failure_is_not_retried(journal: Journal) -> None:
    journal.enqueue(spec())
    [job] = journal.take(1, now=0)
    after = journal.mark_failed(job.id, "truncated", "bad_image", permanent=True, retry_at=None)
    assert after.state is JobState.FAILED
    assert after.attempts == 1
    assert journal.take(1, now=1e12) == []


def test_transitions_need_a_running_job(journal: Journal) -> None:
    job = journal.enqueue(spec())
    assert job is not None
    with pytest.raises(JournalError, match="queued, not running"):
        journal.mark_done(job.id, "x.jpg")
    with pytest.raises(KeyError):
        journal.job(999)


def test_release_does_not_count_the_attempt(journal: Journal) -> None:
    journal.enqueue(spec())
    [job] = journal.take(1, now=0)
    released = journal.release(job.id)
    assert released.state is JobState.QUEUED
    assert released.attempts == 0


def test_counts_recent_failures_and_retry(journal: Journal) -> None:
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        journal.enqueue(spec(name))
    a, b, c, _d = journal.take(4, now=0)
    journal.mark_done(a.id, "out/a.jpg")
    journal.mark_failed(b.id, "first", "bad_image", permanent=True, retry_at=None)
    journal.mark_failed(c.id, "second", "bad_image", permanent=True, retry_at=None)
    counts = journal.counts()
    assert counts == {
        JobState.QUEUED: 0,
        JobState.RUNNING: 1,
        JobState.DONE: 1,
        JobState.FAILED: 2,
        JobState.CANCELLED: 0,
    }
    assert [j.last_error for j in journal.recent_failures(5)] == ["second", "first"]
    assert [j.last_error for j in journal.recent_failures(1)] == ["second"]
    assert journal.retry_failed() == 2
    retried = journal.take(4, now=0)
    assert [j.source for j in retried] == ["b.jpg", "c.jpg"]
    assert all(j.attempts == 1 for j in retried)  # fresh attempts


# ---- crashes ----------------------------------------------------------------------------------


def test_running_job_returns_to_the_queue_once_after_a_crash(state_dir: Path) -> None:
    j = Journal.open(state_dir)
    j.enqueue(spec())
    [job] = j.take(1, now=0)
    j.close()  # the process "dies" here, before mark_done

    j = Journal.open(state_dir)
    assert j.take(1, now=0) == []  # still marked running until recovered
    assert j.recover() == 1
    assert j.recover() == 0
    [again] = j.take(5, now=0)
    assert again.id == job.id
    assert again.attempts == 2
    assert j.take(5, now=0) == []
    j.close()


def test_a_job_that_keeps_killing_the_daemon_ends_failed(state_dir: Path) -> None:
    j = Journal.open(state_dir, max_attempts=2)
    j.enqueue(spec())
    for _ in range(2):
        j.recover()
        assert len(j.take(1, now=0)) == 1
        j.close()  # the photo crashes the process
        j = Journal.open(state_dir, max_attempts=2)
    assert j.recover() == 0
    [failed] = j.jobs()
    assert failed.state is JobState.FAILED
    assert failed.error_kind == "interrupted"
    j.close()


def test_kill_9_mid_job_loses_nothing(state_dir: Path) -> None:
    """A real process killed with SIGKILL: its lock is released and its job is recovered."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from daemon.journal import Journal
        sys.path.insert(0, sys.argv[2])
        from harness import order
        j = Journal.open(Path(sys.argv[1]))
        j.enqueue(order("a.jpg"))
        j.enqueue(order("b.jpg"))
        [job] = j.take(1, now=0)
        j.mark_done(job.id, "starry/a.jpg")
        j.take(1, now=0)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(state_dir), str(REPO / "tests")],
        cwd=REPO,
        env=env,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL
    with Journal.open(state_dir) as j:
        assert j.recover() == 1
        assert [(job.source, job.state) for job in j.jobs()] == [
            ("a.jpg", JobState.DONE),
            ("b.jpg", JobState.QUEUED),
        ]


# ---- fingerprints and outputs -------------------------------------------------------------------


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = journal_module.hash_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(journal_module, "hash_file", counting)
    return calls


def test_fingerprint_is_cached_until_the_file_changes(
    journal: Journal, tmp_path: Path, hash_calls: list[Path]
) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"pixels")
    first = journal.fingerprint("a.jpg", photo)
    assert first == journal_module.hash_file(photo)
    hash_calls.clear()
    assert journal.fingerprint("a.jpg", photo) == first
    assert hash_calls == []  # an unchanged file is not read again


def test_metadata_only_touch_is_not_processed_again(
    journal: Journal, tmp_path: Path, hash_calls: list[Path]
) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"pixels")
    fp = journal.fingerprint("a.jpg", photo)
    journal.enqueue(spec(fingerprint=fp))
    [job] = journal.take(1, now=0)
    journal.mark_done(job.id, "starry/a.jpg")

    st = photo.stat()
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    hash_calls.clear()
    touched = journal.fingerprint("a.jpg", photo)
    assert hash_calls == [photo]  # the stat changed, so it was read again...
    assert touched == fp  # ...and found to be the same content
    assert journal.enqueue(spec(fingerprint=touched)) is None


def test_new_content_under_a_reused_name_is_processed_into_a_new_output(
    journal: Journal, tmp_path: Path
) -> None:
    photo = tmp_path / "IMG_0001.jpg"
    photo.write_bytes(b"first shoot")
    old_fp = journal.fingerprint("IMG_0001.jpg", photo)
    old_out = journal.claim_output("starry/IMG_0001.jpg", "IMG_0001.jpg", old_fp)
    journal.enqueue(spec("IMG_0001.jpg", fingerprint=old_fp))

    # The camera's counter was reset: same name, same size, other pictures, a later day. (The
    # mtime is set explicitly: the kernel's coarse clock could give both writes the same one.)
    taken = photo.stat().st_mtime_ns + 86_400 * 10**9
    photo.write_bytes(b"other shoot")
    os.utime(photo, ns=(taken, taken))
    new_fp = journal.fingerprint("IMG_0001.jpg", photo)
    assert new_fp != old_fp
    assert journal.enqueue(spec("IMG_0001.jpg", fingerprint=new_fp)) is not None
    new_out = journal.claim_output("starry/IMG_0001.jpg", "IMG_0001.jpg", new_fp)
    assert old_out == "starry/IMG_0001.jpg"
    assert new_out == "starry/IMG_0001~2.jpg"


def test_fingerprint_refuses_a_file_changing_while_read(
    journal: Journal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"half")
    real = journal_module.hash_file

    def hash_while_writer_appends(path: Path) -> str:
        digest = real(path)
        with path.open("ab") as f:
            f.write(b" and more")
        return digest

    monkeypatch.setattr(journal_module, "hash_file", hash_while_writer_appends)
    with pytest.raises(SourceChangedError):
        journal.fingerprint("a.jpg", photo)
    monkeypatch.setattr(journal_module, "hash_file", real)
    # Nothing was cached from the torn read.
    assert journal.fingerprint("a.jpg", photo) == real(photo)


def test_claim_output_keeps_earlier_outputs_and_is_stable(state_dir: Path) -> None:
    with Journal.open(state_dir) as j:
        assert j.claim_output("o/p.jpg", "p.jpg", "f1") == "o/p.jpg"
        assert j.claim_output("o/p.jpg", "p.jpg", "f1") == "o/p.jpg"
        assert j.claim_output("o/p.jpg", "p.jpg", "f2") == "o/p~2.jpg"
        assert j.claim_output("o/p.jpg", "other/p.jpg", "f9") == "o/p~3.jpg"
        assert j.claim_output("o/noext", "noext", "f1") == "o/noext"
        assert j.claim_output("o/noext", "noext", "f2") == "o/noext~2"
    with Journal.open(state_dir) as j:  # a restart gives the same answers
        assert j.claim_output("o/p.jpg", "p.jpg", "f2") == "o/p~2.jpg"
        assert j.claim_output("o/p.jpg", "p.jpg", "f1") == "o/p.jpg"
        assert j.output_owner("o/p~3.jpg") == ("other/p.jpg", "f9")
        assert j.output_owner("o/none.jpg") is None


def test_claim_output_skips_paths_taken_on_disk(journal: Journal) -> None:
    on_disk = {"o/p.jpg", "o/p~2.jpg"}
    assert journal.claim_output("o/p.jpg", "p.jpg", "f1", taken=on_disk.__contains__) == (
        "o/p~3.jpg"
    )


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff_seconds(n) for n in (1, 2, 3, 4)] == [5.0, 15.0, 45.0, 135.0]
    assert backoff_seconds(6) == 600.0
    assert backoff_seconds(10_000) == 600.0
    with pytest.raises(ValueError, match="1-based"):
        backoff_seconds(0)


def test_one_writer_thread_and_readers_share_the_journal(journal: Journal) -> None:
    errors: list[BaseException] = []

    def enqueue_many(prefix: str) -> None:
        try:
            for i in range(100):
                journal.enqueue(spec(f"{prefix}{i}.jpg"))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    writers = [threading.Thread(target=enqueue_many, args=(p,)) for p in ("a", "b")]
    for t in writers:
        t.start()
    taken = 0
    while any(t.is_alive() for t in writers) or journal.queued_count():
        taken += len(journal.take(10, now=0))
        journal.counts()
    for t in writers:
        t.join()
    assert errors == []
    assert taken == 200
    assert journal.counts()[JobState.RUNNING] == 200


# ---- schema 2: migration, passing trouble, stale failures, reuse, identity ----------------------

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "journal-v1.sqlite3"


def test_a_first_release_journal_is_upgraded_in_place_and_keeps_its_jobs(state_dir: Path) -> None:
    """tests/fixtures/journal-v1.sqlite3 was written by the first release's journal.py: two done
    jobs, one failed, two queued, with their fingerprints and output claims."""
    state_dir.mkdir()
    (state_dir / JOURNAL_NAME).write_bytes(FIXTURE_V1.read_bytes())
    with pytest.raises(JournalError, match="older stylewatch"):
        Journal.open(state_dir, exclusive=False)  # readers never migrate
    with Journal.open(state_dir) as j:
        counts = {state.value: n for state, n in j.counts().items() if n}
        assert counts == {"done": 2, "failed": 1, "queued": 2}
        assert j.output_owner("a0.jpg") == ("a0.jpg", f"{0:064x}")
        first_id = j.id
        # Jobs from before work orders wait until the service reads them against the config
        # (daemon/intake.py's adopt) and gives them their orders.
        assert j.take(10, now=2e9) == []
        waiting = {job.source: job for job in j.unadopted() if job.state is JobState.QUEUED}
        assert set(waiting) == {"a3.jpg", "booth1/b.jpg"}
        a3 = waiting["a3.jpg"]
        assert j.adopt(a3.id, order(a3.source, a3.fingerprint, style=a3.style))
        assert not j.adopt(waiting["booth1/b.jpg"].id, None)  # no longer planned: cancelled
        queued = j.take(10, now=2e9)
        assert [job.source for job in queued] == ["a3.jpg"]
        assert queued[0].started is not None
        assert queued[0].order is not None
        assert j.job(waiting["booth1/b.jpg"].id).state is JobState.CANCELLED
    with sqlite3.connect(state_dir / JOURNAL_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with Journal.open(state_dir, exclusive=False) as reader:
        assert reader.id == first_id  # the identity is made once


def test_passing_trouble_is_retried_until_the_streak_outlasts_retry_for(state_dir: Path) -> None:
    wall = Wall()
    with Journal.open(state_dir, max_attempts=2, retry_for=100.0, wall=wall) as j:
        j.enqueue(spec())
        tries = 0
        while True:
            (job,) = j.take(1, now=2e9)
            tries += 1
            after = j.mark_failed(
                job.id, "share away", "io", permanent=False, retry_at=0.0, transient=True
            )
            if after.state is JobState.FAILED:
                break
            assert after.attempts == 0  # passing trouble does not use up attempts
            wall.t += 20.0
        # Far more tries than max_attempts=2, and only once the streak lasted 100 s.
        assert tries > 2
        assert after.first_failure is not None
        assert wall.t - after.first_failure >= 100.0


def test_a_success_ends_the_streak_and_supersedes_stale_failures(journal: Journal) -> None:
    journal.enqueue(spec(fingerprint="growing"))
    (half,) = journal.take(1, now=2e9)
    journal.mark_failed(half.id, "truncated", "bad_image:truncated", permanent=True, retry_at=None)
    journal.enqueue(spec(fingerprint="complete"))
    (whole,) = journal.take(1, now=2e9)
    journal.mark_done(whole.id, "starry/a.jpg")
    assert journal.recent_failures(10) == []
    stale = journal.job(half.id)
    assert stale.state is JobState.CANCELLED
    assert stale.error_kind == "superseded"
    assert "truncated" in (stale.last_error or "")


def test_retry_job_queues_one_failed_job_and_nothing_else(journal: Journal) -> None:
    journal.enqueue(spec("a.jpg"))
    journal.enqueue(spec("b.jpg"))
    jobs = journal.take(2, now=2e9)
    for job in jobs:
        journal.mark_failed(job.id, "bad", "bad_image:corrupt", permanent=True, retry_at=None)
    assert journal.retry_job(jobs[0].id) is True
    assert journal.retry_job(jobs[0].id) is False  # queued now, not failed
    assert journal.job(jobs[0].id).state is JobState.QUEUED
    assert journal.job(jobs[1].id).state is JobState.FAILED


def test_waiting_lists_queued_jobs_with_their_trouble(journal: Journal) -> None:
    journal.enqueue(spec())
    (job,) = journal.take(1, now=2e9)
    journal.mark_failed(job.id, "EACCES", "io", permanent=False, retry_at=3e9, transient=True)
    (waiting,) = journal.waiting(10)
    assert (waiting.id, waiting.last_error, waiting.state) == (job.id, "EACCES", JobState.QUEUED)


def test_reusable_finds_the_same_content_done_in_the_same_style(journal: Journal) -> None:
    journal.enqueue(spec("old/a.jpg", fingerprint="same"))
    (job,) = journal.take(1, now=2e9)
    journal.mark_done(job.id, "old/a.jpg")
    found = journal.reusable("same", "starry", settings_hash("s1"))
    assert found is not None
    assert (found.source, found.output) == ("old/a.jpg", "old/a.jpg")
    assert journal.reusable("same", "starry", settings_hash("other")) is None
    assert journal.reusable("other", "starry", settings_hash("s1")) is None


def test_lost_says_when_the_state_folder_is_removed_or_the_journal_replaced(
    state_dir: Path,
) -> None:
    with Journal.open(state_dir) as j:
        assert j.lost() is None
        (state_dir / JOURNAL_NAME).rename(state_dir / "moved")
        (state_dir / JOURNAL_NAME).write_bytes(b"")
        assert "replaced" in (j.lost() or "")
    with Journal.open(tmp := state_dir.parent / "other") as j:
        for child in tmp.iterdir():
            child.unlink()
        tmp.rmdir()
        assert "removed" in (j.lost() or "")
