"""Work orders with the real daemon: a rule's place in the list is not its identity, so moving,
inserting or naming rules never sends a photo already done through the engine again, whether the
config is reloaded (SIGHUP) or the service restarted."""

from __future__ import annotations

import signal
from pathlib import Path

from harness import Fleet, check_invariants, originals, photo


def rules_as(config: Path, rules: str) -> None:
    text = config.read_text()
    head = text[: text.index("rules:")]
    config.write_text(head + "rules:\n" + rules)


ORIGINAL = """\
  - match: "booth1/**/*.jpg"
    styles: [starry, blend]
  - match: "**/*"
    styles: [starry]
"""
# A rule inserted above the others (matching none of the photos), and the booth rule named.
INSERTED_AND_NAMED = """\
  - match: "elsewhere/**"
    styles: [blend]
  - name: booth
    match: "booth1/**/*.jpg"
    styles: [starry, blend]
  - match: "**/*"
    styles: [starry]
"""
# The same, reordered where order does not change the match, and renamed.
REORDERED_AND_RENAMED = """\
  - name: photo-booth
    match: "booth1/**/*.jpg"
    styles: [starry, blend]
  - name: elsewhere
    match: "elsewhere/**"
    styles: [blend]
  - match: "**/*"
    styles: [starry]
"""


def test_rules_inserted_reordered_or_renamed_never_redo_a_photo(
    tmp_path: Path, vgg_checkpoint: Path, style_files: tuple[Path, Path]
) -> None:
    fleet = Fleet(tmp_path, vgg_checkpoint, style_files)
    daemon = fleet.daemon(settle=0.2)
    rules_as(daemon.config, ORIGINAL)
    sources = [
        photo(fleet.inbox / "booth1" / "a.jpg", (200, 30, 30)),
        photo(fleet.inbox / "b.jpg", (30, 200, 30)),
        photo(fleet.inbox / "c.jpg", (30, 30, 200)),
    ]
    expected = {"booth1/a.starry.jpg", "booth1/a.blend.jpg", "b.jpg", "c.jpg"}
    try:
        daemon.start()
        daemon.wait(lambda: daemon.count("job_done") == 4, "the first outputs")
        batches = daemon.count("batch_started")

        # A reload by SIGHUP: one pass over the queue and a rescan, which finds all four done.
        rules_as(daemon.config, INSERTED_AND_NAMED)
        done_before = daemon.count("file_already_done")
        daemon.signal(signal.SIGHUP)
        daemon.wait(lambda: daemon.saw("config_reloaded"), "the reload")
        daemon.wait(
            lambda: daemon.count("file_already_done") >= done_before + 4,
            "the rescan to find every photo done",
        )
        assert daemon.count("batch_started") == batches, "the engine ran again after the reload"
        assert daemon.count("job_done") == 4
        assert daemon.stop() == 0

        # A restart on a config reordered and renamed: the startup scan finds them done too.
        rules_as(daemon.config, REORDERED_AND_RENAMED)
        again = fleet.again(daemon)
        done_before = again.count("file_already_done")
        again.start()
        again.wait(
            lambda: again.count("file_already_done") >= done_before + 4,
            "the startup scan to find every photo done",
        )
        assert again.count("batch_started") == batches, "the engine ran again after the restart"
        assert again.count("job_done") == 4, "a job_done without a new output"

        # A new photo still runs, under the rule's new name.
        sources.append(photo(fleet.inbox / "booth1" / "d.jpg", (90, 90, 20)))
        expected |= {"booth1/d.starry.jpg", "booth1/d.blend.jpg"}
        again.wait(lambda: again.count("job_done") == 6, "the new photo")
        assert again.count("job_done", rule="photo-booth") == 2
        assert again.stop() == 0
        check_invariants(again, outbox=fleet.outbox, sources=originals(sources), expected=expected)
    finally:
        fleet.close()


def test_a_settings_change_applies_to_new_photos_only(
    tmp_path: Path, vgg_checkpoint: Path, style_files: tuple[Path, Path]
) -> None:
    fleet = Fleet(tmp_path, vgg_checkpoint, style_files)
    daemon = fleet.daemon(settle=0.2)
    rules_as(daemon.config, '  - match: "**/*"\n    styles: [starry]\n')
    first = photo(fleet.inbox / "a.jpg", (200, 30, 30))
    try:
        daemon.start()
        daemon.wait(lambda: daemon.count("job_done") == 1, "the first output")
        rules_as(daemon.config, '  - match: "**/*"\n    styles: [starry]\n    size: 48\n')
        daemon.signal(signal.SIGHUP)
        daemon.wait(lambda: daemon.saw("file_already_done", source="a.jpg"), "the rescan")
        second = photo(fleet.inbox / "b.jpg", (30, 200, 30))
        daemon.wait(lambda: daemon.count("job_done") == 2, "the new photo")
        sizes = {e["source"]: e["size"] for e in daemon.events() if e["event"] == "job_done"}
        assert sizes == {"a.jpg": "32x21", "b.jpg": "48x32"}
        assert daemon.stop() == 0
        check_invariants(
            daemon,
            outbox=fleet.outbox,
            sources=originals([first, second]),
            expected={"a.jpg", "b.jpg"},
        )
    finally:
        fleet.close()
