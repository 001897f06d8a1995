"""The metrics textfile for node_exporter: written atomically, parseable at every moment."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from harness import order
from prometheus_client.parser import text_string_to_metric_families

from daemon.journal import Journal
from daemon.metrics import TextfileWriter


def test_the_textfile_is_replaced_atomically_while_a_reader_reads_it(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "state")
    for n in range(200):  # a text of some size, so that a torn write would show
        journal.enqueue(order(f"p{n}.jpg", f"fp{n}", output=f"p{n}.jpg"))
    target = tmp_path / "textfile" / "stylewatch.prom"
    target.parent.mkdir()
    writer = TextfileWriter(target, 3600.0, journal, lambda: None)
    reads: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if target.exists():
                reads.append(target.read_text())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(30):
            writer.write()
    finally:
        stop.set()
        thread.join()
        journal.close()
    assert reads
    for text in reads:  # every read saw a whole file
        families = {f.name: f for f in text_string_to_metric_families(text)}
        queued = {s.labels["state"]: s.value for s in families["stylewatch_queue_jobs"].samples}
        assert queued["queued"] == 200
        assert "stylewatch_build_info" in families  # the last family: the file is whole
    assert [p.name for p in target.parent.iterdir()] == ["stylewatch.prom"]


def test_the_writer_writes_on_start_and_at_stop(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "state")
    target = tmp_path / "m.prom"
    writer = TextfileWriter(target, 3600.0, journal, lambda: None)
    writer.start()
    deadline = time.monotonic() + 30
    while not target.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    target.unlink()
    writer.stop()
    journal.close()
    assert "stylewatch_worker_up" in target.read_text()
