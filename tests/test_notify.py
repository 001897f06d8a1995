"""sd_notify over a real AF_UNIX datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from daemon.notify import Notifier


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer than that.
    folder = Path(tempfile.mkdtemp(prefix="sw-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder)


def bind_receiver(address: str) -> socket.socket:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    # A missing datagram fails the test instead of hanging it.
    receiver.settimeout(5)
    return receiver


@pytest.fixture
def receiver(short_dir: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(short_dir / "notify")
    sock = bind_receiver(path)
    yield path, sock
    sock.close()


@pytest.fixture
def notifier(receiver: tuple[str, socket.socket]) -> Iterator[Notifier]:
    n = Notifier.from_environment({"NOTIFY_SOCKET": receiver[0]})
    yield n
    n.close()


def assert_nothing_queued(sock: socket.socket) -> None:
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_datagrams_are_exact(notifier: Notifier, receiver: tuple[str, socket.socket]) -> None:
    sock = receiver[1]
    assert notifier.enabled
    notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    notifier.ready("watching /srv/in")
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching /srv/in"
    notifier.status("3 jobs queued")
    assert sock.recv(4096) == b"STATUS=3 jobs queued"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.extend_timeout(2.5)
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=2500000"


def test_status_is_utf8_on_one_line(
    notifier: Notifier, receiver: tuple[str, socket.socket]
) -> None:
    notifier.status("failed: Chelséa.jpg\nREADY=1\r\nmore")
    assert receiver[1].recv(4096) == "STATUS=failed: Chelséa.jpg READY=1 more".encode()


def test_reloading_carries_the_monotonic_clock_in_microseconds(
    receiver: tuple[str, socket.socket],
) -> None:
    n = Notifier(receiver[0], monotonic_ns=lambda: 123_456_789_999)
    n.reloading()
    assert receiver[1].recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=123456789"
    n.close()


def test_reloading_defaults_to_the_real_monotonic_clock(
    notifier: Notifier, receiver: tuple[str, socket.socket]
) -> None:
    before = time_monotonic_usec()
    notifier.reloading()
    after = time_monotonic_usec()
    lines = receiver[1].recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def time_monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_abstract_namespace_socket() -> None:
    name = f"stylewatch-test-{uuid.uuid4().hex}"
    sock = bind_receiver("\0" + name)
    try:
        n = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert n.enabled
        n.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        n.close()
    finally:
        sock.close()


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "1000000"}])
def test_disabled_without_notify_socket(environ: dict[str, str]) -> None:
    n = Notifier.from_environment(environ)
    assert not n.enabled
    assert n.watchdog_interval() is None
    with capture_logs() as logs:
        n.ready("x")
        n.status("x")
        n.reloading()
        n.watchdog()
        n.stopping()
        n.extend_timeout(1)
        n.close()
    assert logs == []


def test_unsupported_address_disables_with_a_warning() -> None:
    with capture_logs() as logs:
        n = Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("notify_socket_unsupported", "warning")
    ]


def test_default_environment_is_os_environ(
    receiver: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver[0])
    n = Notifier.from_environment()
    n.watchdog()
    assert receiver[1].recv(4096) == b"WATCHDOG=1"
    n.close()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(extra: dict[str, str], expected: float | None) -> None:
    n = Notifier.from_environment({"NOTIFY_SOCKET": "/run/nonexistent/notify", **extra})
    assert n.watchdog_interval() == expected


def test_socket_that_goes_away_does_not_raise_and_is_reconnected(
    short_dir: Path,
) -> None:
    path = str(short_dir / "notify")
    first = bind_receiver(path)
    n = Notifier.from_environment({"NOTIFY_SOCKET": path})
    n.status("one")
    assert first.recv(4096) == b"STATUS=one"

    # systemd going away: the socket closes and its file disappears.
    first.close()
    Path(path).unlink()
    with capture_logs() as logs:
        n.watchdog()
        n.watchdog()
        n.stopping()
    assert [e["log_level"] for e in logs] == ["warning", "debug", "debug"]
    assert {e["event"] for e in logs} == {"notify_failed"}
    assert logs[0]["address"] == path

    # systemd back (re-executed): a new socket at the same path is found without a restart.
    second = bind_receiver(path)
    try:
        with capture_logs() as logs:
            n.ready()
        assert second.recv(4096) == b"READY=1"
        assert [e["event"] for e in logs] == ["notify_recovered"]
    finally:
        second.close()
        n.close()


def test_socket_missing_from_the_start_does_not_raise(short_dir: Path) -> None:
    n = Notifier.from_environment({"NOTIFY_SOCKET": str(short_dir / "absent")})
    with capture_logs() as logs:
        n.ready("x")
    assert [e["event"] for e in logs] == ["notify_failed"]
    n.close()


def test_full_queue_does_not_block_or_raise(receiver: tuple[str, socket.socket]) -> None:
    # A receiver that never reads: its queue fills and sends fail with EAGAIN.
    n = Notifier(receiver[0], send_timeout=0)
    with capture_logs() as logs:
        for _ in range(5000):
            n.watchdog()
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["event"] == "notify_failed"
    n.close()


def open_sockets() -> int:
    return sum(1 for fd in Path("/proc/self/fd").iterdir() if "socket:" in readlink(fd))


def readlink(fd: Path) -> str:
    try:
        return str(fd.readlink())
    except FileNotFoundError:  # the fd listing itself, closed by the time it is read
        return ""


def test_connection_is_reused_and_not_leaked(
    notifier: Notifier, receiver: tuple[str, socket.socket]
) -> None:
    before = open_sockets()
    for _ in range(20):
        notifier.watchdog()
        # Read each one: the kernel queues only a handful of datagrams per socket.
        assert receiver[1].recv(4096) == b"WATCHDOG=1"
        assert open_sockets() == before + 1
    notifier.close()
    assert open_sockets() == before


def test_failures_do_not_leak_sockets(short_dir: Path) -> None:
    n = Notifier.from_environment({"NOTIFY_SOCKET": str(short_dir / "absent")})
    before = open_sockets()
    with capture_logs():
        for _ in range(20):
            n.watchdog()
    assert open_sockets() == before


def test_close_makes_later_calls_no_ops(
    notifier: Notifier, receiver: tuple[str, socket.socket]
) -> None:
    notifier.close()
    notifier.ready()
    notifier.close()
    assert_nothing_queued(receiver[1])


def test_context_manager_closes(receiver: tuple[str, socket.socket]) -> None:
    with Notifier(receiver[0]) as n:
        n.watchdog()
    n.watchdog()
    assert receiver[1].recv(4096) == b"WATCHDOG=1"
    assert_nothing_queued(receiver[1])
