"""What the real daemon tells systemd, read from a real AF_UNIX datagram socket as $NOTIFY_SOCKET:
through start, a reload, a stuck worker and stop."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import CONFIG, Daemon, photo, wait_until


class Systemd:
    """The receiving end of sd_notify: collects datagrams with the time they arrived."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(dir="/tmp"))  # AF_UNIX paths are short
        self.path = self.folder / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.05)
        # Stamped when read: drain() before taking a time mark that pings are counted from.
        self.messages: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))
        return [fields for _, fields in self.messages]

    def saw(self, after: int = 0, **wanted: str) -> bool:
        """Whether a message with these fields came, among those after the first `after`."""
        return any(all(m.get(k) == v for k, v in wanted.items()) for m in self.drain()[after:])

    def pings_since(self, since: float) -> int:
        self.drain()
        return sum(1 for at, m in self.messages if at >= since and m.get("WATCHDOG") == "1")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
        self.folder.rmdir()


@pytest.fixture
def systemd() -> Iterator[Systemd]:
    receiver = Systemd()
    yield receiver
    receiver.close()


def test_ready_status_watchdog_reload_stuck_and_stopping(
    tmp_path: Path, vgg_checkpoint: Path, style_files: tuple[Path, Path], systemd: Systemd
) -> None:
    painting = tmp_path / "painting.jpg"
    painting.write_bytes(style_files[0].read_bytes())
    (tmp_path / "inbox").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        CONFIG.format(
            settle=0.2, weights=vgg_checkpoint, style_a=painting, style_b=style_files[1], steps=2
        ).replace("batch_size: 2}", "batch_size: 2, stuck_seconds: 1}")
    )
    env = {**os.environ, "NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "400000"}
    daemon = Daemon(tmp_path, config)
    try:
        daemon.start(env=env)
        # READY=1 comes once, after the model is loaded and the startup scan is queued.
        wait_until(lambda: systemd.saw(READY="1"), "READY=1")
        first = systemd.messages[0][1]
        assert first.get("READY") == "1"
        assert "queued" in first.get("STATUS", "")
        assert daemon.saw("service_ready")
        wait_until(lambda: systemd.saw(STATUS="0 queued, 0 running, 0 done, 0 failed"), "STATUS")
        systemd.drain()  # earlier datagrams get earlier stamps
        started = time.monotonic()
        wait_until(lambda: systemd.pings_since(started) >= 3, "WATCHDOG=1 pings")

        # SIGHUP: RELOADING=1 with the monotonic clock, then READY=1 again.
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: systemd.saw(RELOADING="1"), "RELOADING=1")
        reloading = next(m for _, m in systemd.messages if m.get("RELOADING") == "1")
        assert abs(int(reloading["MONOTONIC_USEC"]) - time.monotonic_ns() // 1000) < 60_000_000
        wait_until(lambda: daemon.saw("config_reloaded"), "the reload")
        at_reload = next(i for i, (_, m) in enumerate(systemd.messages) if m.get("RELOADING"))
        wait_until(lambda: systemd.saw(after=at_reload, READY="1"), "READY=1 after the reload")

        # A stuck worker: the painting becomes a pipe nobody writes to, so a job that reads it
        # blocks. The pool kills the worker process after engine.stuck_seconds and starts
        # another; the service itself stays healthy and keeps pinging, and STATUS says so.
        painting.unlink()
        os.mkfifo(painting)
        photo(tmp_path / "inbox" / "stuck.jpg", (10, 200, 10))
        # Drained while waiting: the pings go on meanwhile and must not fill the socket.
        wait_until(
            lambda: systemd.drain() is not None and daemon.saw("worker_down"),
            "the pool to see the worker stuck",
        )
        wait_until(
            lambda: any("restarting worker-0" in m.get("STATUS", "") for m in systemd.drain()),
            "STATUS to say the worker is being restarted",
        )
        meanwhile = time.monotonic()
        wait_until(lambda: systemd.pings_since(meanwhile) >= 3, "pings while it restarts")
        assert not daemon.saw("service_unhealthy")
        painting.unlink()  # the painting comes back as a file: the job goes through
        painting.write_bytes(style_files[0].read_bytes())
        wait_until(
            lambda: systemd.drain() is not None and (tmp_path / "outbox" / "stuck.jpg").exists(),
            "the job, once the painting is back",
        )
        assert daemon.count("worker_up") >= 2

        assert daemon.stop() == 0
        wait_until(lambda: systemd.saw(STOPPING="1"), "STOPPING=1")
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait()
