"""Trust: the ways files arrive. Each ends in exactly one output per photo, none half-written.

The real daemon (random VGG19 weights, 32-pixel images) watches a real folder while writers behave
as cameras, copy tools and people do: in chunks, closing and reopening, under a temporary name,
a whole folder at once, overwriting, deleting.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from harness import (
    Daemon,
    Fleet,
    OutputSpy,
    check_invariants,
    output_names,
    photo,
    planned,
    sha256,
)
from PIL import Image


def picture_bytes(scratch: Path, colour: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    """A JPEG's bytes, made aside so that the test can write it into the inbox as it likes."""
    return photo(scratch / f"{colour}-{size}.jpg", colour, size).read_bytes()


def queued_ids(daemon: Daemon, prefix: str) -> dict[str, int]:
    return {
        e["source"]: e["job"]
        for e in daemon.events()
        if e.get("event") == "job_queued" and e["source"].startswith(prefix)
    }


def test_writers_that_pause_reopen_rename_move_overwrite_and_delete(
    fleet: Fleet, tmp_path: Path
) -> None:
    inbox, outbox, scratch = fleet.inbox, fleet.outbox, tmp_path / "scratch"
    scratch.mkdir()
    sources: dict[Path, str] = {}
    expected: set[str] = set()
    daemon = fleet.daemon(settle=1.0)
    with OutputSpy(outbox) as spy:
        daemon.start()

        # A writer that closes the file and opens it again, pausing under the settle time.
        data = picture_bytes(scratch, (200, 40, 40), (64, 48))
        target = inbox / "reopened.jpg"
        quarter = len(data) // 4 + 1
        for i in range(4):
            with target.open("ab") as out:
                out.write(data[i * quarter : (i + 1) * quarter])
            time.sleep(0.4)
        sources[target] = sha256(target)
        expected.add("reopened.jpg")

        # Temporary names renamed into place: a browser's .part, a hidden rsync-style name.
        renames = {"dl.jpg.part": "downloaded.jpg", ".r.jpg.Xy12": "synced.jpg"}
        for temporary in renames:
            photo(inbox / temporary, (40, 200, 40))
        time.sleep(1.5)  # long enough to settle, were they not ignored
        for temporary, final in renames.items():
            (inbox / temporary).rename(inbox / final)
            sources[inbox / final] = sha256(inbox / final)
            expected.add(final)

        # A photo overwritten in place after it was processed: new content, a second output; the
        # same bytes written again: nothing new.
        over = photo(inbox / "over.jpg", (10, 10, 200))
        same = photo(inbox / "same.jpg", (10, 200, 200))
        daemon.wait(lambda: {"over.jpg", "same.jpg"} <= output_names(outbox), "first outputs")
        first = (outbox / "over.jpg").read_bytes()
        photo(over, (250, 250, 10))
        same.write_bytes(same.read_bytes())
        sources[over], sources[same] = sha256(over), sha256(same)
        expected |= {"over.jpg", "over~2.jpg", "same.jpg"}

        # A photo under a two-style rule: two outputs, one per style.
        booth = photo(inbox / "booth1" / "cam" / "IMG_0001.JPG", (120, 120, 0))
        sources[booth] = sha256(booth)
        expected |= planned("booth1/cam/IMG_0001.JPG")

        # A folder of 50 photos moved into the tree at once, then one more photo inside it; the
        # photo queued last is deleted before its turn.
        album = scratch / "album"
        for i in range(50):
            photo(album / f"p{i:02d}.jpg", (i * 5, 100, 255 - i * 5))
        album.rename(inbox / "album")
        ids = daemon.wait(
            lambda: (found := queued_ids(daemon, "album/")) and len(found) == 50 and found,
            "the album's 50 jobs",
        )
        victim = max(ids, key=ids.__getitem__)
        (inbox / victim).unlink()
        photo(inbox / "album" / "late.jpg", (1, 2, 3))
        for path in (inbox / "album").iterdir():
            sources[path] = sha256(path)
        expected |= {f"album/{p.name}" for p in (inbox / "album").iterdir()}

        daemon.wait(lambda: output_names(outbox) >= expected, "every output")
        daemon.wait(
            lambda: daemon.saw("job_cancelled", source=victim, reason="source_removed"),
            "the deleted photo's job to be cancelled",
        )
        assert daemon.stop() == 0

    status = check_invariants(daemon, outbox=outbox, sources=sources, expected=expected, spy=spy)
    assert (outbox / "over.jpg").read_bytes() == first  # the first output is kept
    assert status["counts"] == {"done": len(expected), "cancelled": 1}
    queued = [e["source"] for e in daemon.events() if e.get("event") == "job_queued"]
    assert queued.count("reopened.jpg") == 1  # one job, for the whole file
    assert not any(s.endswith((".part", ".Xy12")) for s in queued)
    with Image.open(outbox / "reopened.jpg") as im:
        assert im.size == (32, 24)  # made from the whole photo (64x48), not a cut-off part


def test_a_source_deleted_while_it_runs_ends_cleanly_and_the_rest_goes_on(
    fleet: Fleet,
) -> None:
    inbox, outbox = fleet.inbox, fleet.outbox
    daemon = fleet.daemon(steps=150, batch=1)  # seconds per job: time to see it run, delete
    running = photo(inbox / "running.jpg", (200, 100, 0))
    with OutputSpy(outbox) as spy:
        daemon.start()
        daemon.wait(lambda: daemon.full_status()["counts"].get("running"), "the job to run")
        running.unlink()
        after = photo(inbox / "after.jpg", (0, 100, 200))
        sources = {after: sha256(after)}
        daemon.wait(lambda: "after.jpg" in output_names(outbox), "the next photo's output")
        assert daemon.stop() == 0
    # The photo was whole when its job began, so its output may stand; what matters is that it
    # ended (done, or cancelled) instead of hanging or failing, and nothing else was disturbed.
    outputs = output_names(outbox)
    assert outputs in ({"after.jpg"}, {"after.jpg", "running.jpg"})
    status = check_invariants(daemon, outbox=outbox, sources=sources, expected=outputs, spy=spy)
    assert set(status["counts"]) <= {"done", "cancelled"}
    assert sum(status["counts"].values()) == 2


@pytest.mark.slow
def test_a_copy_in_chunks_over_20_seconds_is_processed_once_when_complete(
    fleet: Fleet, tmp_path: Path
) -> None:
    inbox, outbox = fleet.inbox, fleet.outbox
    daemon = fleet.daemon(settle=1.5).start()
    data = picture_bytes(tmp_path, (90, 30, 160), (96, 64))
    target = inbox / "slow copy.jpg"
    chunks = 40
    size = len(data) // chunks + 1
    started = time.monotonic()
    with OutputSpy(outbox) as spy:
        with target.open("wb") as out:
            for i in range(chunks):  # 40 chunks, 0.5 s apart: 20 s, each pause under settle
                out.write(data[i * size : (i + 1) * size])
                out.flush()
                os.fsync(out.fileno())
                time.sleep(0.5)
                assert output_names(outbox) == set()  # nothing while it is being written
        assert time.monotonic() - started >= 20
        daemon.wait(lambda: "slow copy.jpg" in output_names(outbox), "the copy's output")
        assert daemon.stop() == 0
    check_invariants(
        daemon,
        outbox=outbox,
        sources={target: hashlib.sha256(data).hexdigest()},  # the bytes written, all chunks
        expected={"slow copy.jpg"},
        spy=spy,
    )
    queued = [e for e in daemon.events() if e.get("event") == "job_queued"]
    assert len(queued) == 1
