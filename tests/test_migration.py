"""A journal written by the release before work orders (schema 2) opens and is upgraded in place:
its done photos stay done (never made again), and its queued photo runs once.

tests/fixtures/journal-v2/ was made by that release's own code (commit c7011b0's journal.py,
rules.py and worker.settings_hash) on two rules: booth1/a.png and b.png done, c.png queued, with
the photos and the outputs as they were.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from harness import Fleet, complete_image, sha256

from daemon.journal import SCHEMA_VERSION

FIXTURE = Path(__file__).parent / "fixtures" / "journal-v2"


def test_a_schema_2_journal_keeps_its_done_photos_and_runs_its_queued_one_once(
    tmp_path: Path, vgg_checkpoint: Path, style_files: tuple[Path, Path]
) -> None:
    shutil.copytree(FIXTURE / "inbox", tmp_path / "inbox")
    shutil.copytree(FIXTURE / "outbox", tmp_path / "outbox")
    (tmp_path / "state").mkdir()
    shutil.copy(FIXTURE / "journal.sqlite3", tmp_path / "state" / "journal.sqlite3")
    done_before = {p: sha256(tmp_path / "outbox" / p) for p in ("booth1/a.png", "b.png")}
    fleet = Fleet(tmp_path, vgg_checkpoint, style_files)
    daemon = fleet.daemon(settle=0.2, steps=2)
    try:
        daemon.start()
        daemon.wait(lambda: daemon.saw("job_done", source="c.png"), "the queued photo")
        assert daemon.saw("journal_upgraded", schema=SCHEMA_VERSION, was=2)
        assert daemon.stop() == 0
    finally:
        fleet.close()
    assert daemon.count("job_done") == 1  # c.png only: the done photos were not made again
    assert {e["sources"][0] for e in daemon.events() if e["event"] == "batch_started"} == {"c.png"}
    assert {p: sha256(tmp_path / "outbox" / p) for p in done_before} == done_before
    assert complete_image(tmp_path / "outbox" / "c.png") is None
    assert not (tmp_path / "outbox" / "c~2.png").exists()
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        states = dict(conn.execute("SELECT source, state FROM jobs WHERE state != 'cancelled'"))
    assert states == {"booth1/a.png": "done", "b.png": "done", "c.png": "done"}
