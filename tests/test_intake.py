"""The intake runs on its own thread: reading a large file on a slow share (fingerprinting) never
holds up the main thread's answers to systemd's watchdog."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from harness import Fleet, photo, wait_until

import daemon.journal as journal_module
from daemon.notify import Notifier
from daemon.service import Service


class Recorder(Notifier):
    """A notifier without a socket that records watchdog pings, asked for every 0.1 s."""

    def __init__(self) -> None:
        super().__init__(None)
        self.pings: list[float] = []

    def watchdog_interval(self) -> float | None:
        return 0.1

    def watchdog(self) -> None:
        self.pings.append(time.monotonic())


def test_watchdog_pings_go_on_while_a_file_is_fingerprinted_slowly(
    tmp_path: Path,
    vgg_checkpoint: Path,
    style_files: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = Fleet(tmp_path, vgg_checkpoint, style_files)
    config = fleet.config(settle=0.1)
    photo(fleet.inbox / "big.jpg", (120, 40, 200))
    reading, gate = threading.Event(), threading.Event()
    real = journal_module.hash_file

    def slow_share(path: Path) -> str:
        reading.set()
        gate.wait(120)  # the read takes until the test has seen the pings it wants
        return real(path)

    monkeypatch.setattr(journal_module, "hash_file", slow_share)
    notifier = Recorder()
    service = Service(config, notifier=notifier)
    runner = threading.Thread(target=service.run, name="service")
    runner.start()
    try:
        wait_until(reading.is_set, "the intake to start reading the photo")
        before = len(notifier.pings)
        wait_until(
            lambda: len(notifier.pings) >= before + 5, "watchdog pings while the photo is read"
        )
        assert not gate.is_set()  # the read is still blocked: the pings did not wait for it
        gate.set()
        wait_until((fleet.outbox / "big.jpg").exists, "the photo's artwork")
    finally:
        gate.set()
        service.request_stop()
        runner.join(120)
    assert not runner.is_alive()
