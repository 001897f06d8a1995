"""A real redis-server for tests: on a Unix socket in a temp folder, no TCP port, persistence on.

The broker's promise (nothing lost when Redis dies) rests on the append-only file, so the server
runs as production should: `appendonly yes`, `appendfsync always` (each write is on disk before
its reply, so a `kill -9` loses nothing that a client was told about) and `noeviction`. `kill()`
and `start()` again on the same folder replay that file.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

# Starting redis-server takes milliseconds; a loaded CI machine may take seconds.
START_DEADLINE = 30.0

# A Unix socket's path must fit in sockaddr_un (108 bytes on Linux); tmp_path can be longer.
SOCKET_PATH_MAX = 100


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """One redis-server process whose data (the append-only file) lives in `folder`."""

    def __init__(self, folder: Path, *, appendonly: bool = True) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        socket = folder / "redis.sock"
        self._socket_dir: Path | None = None
        if len(str(socket)) > SOCKET_PATH_MAX:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="sw-redis-"))
            socket = self._socket_dir / "redis.sock"
        self.socket = socket
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def config(self) -> str:
        lines = [
            "port 0",  # no TCP at all: tests never open a port
            f"unixsocket {self.socket}",
            "unixsocketperm 700",
            f"dir {self.folder}",
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync always",
            'save ""',  # the append-only file is the persistence under test, not RDB snapshots
            "maxmemory-policy noeviction",
            "daemonize no",
            f"logfile {self.folder / 'redis.log'}",
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start redis-server (replaying the append-only file if there is one) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("redis-server is already running")
        conf = self.folder / "redis.conf"
        conf.write_text(self.config())
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen([self.binary, str(conf)], stdin=subprocess.DEVNULL)
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.process is not None
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"redis-server exited with {code}: {self.log()}")
            if self.socket.exists():
                client = self.client()
                try:
                    # LOADING (replaying the file) answers PING with an error: wait for a PONG.
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                finally:
                    client.close()
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer within {START_DEADLINE} s: {self.log()}")

    def client(self) -> redis.Redis:
        """A plain client on the socket, for the test's own look at the server."""
        return redis.Redis(unix_socket_path=str(self.socket), decode_responses=True, protocol=2)

    def kill(self) -> None:
        """kill -9: no shutdown, no final save. What survives is what the append-only file holds."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def restart(self) -> None:
        """kill -9, then start again on the same folder (and so the same append-only file)."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=START_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"
