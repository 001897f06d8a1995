"""`stylewatch web` as a subprocess beside the real service, for the web's end-to-end tests."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from harness import STYLEWATCH, Daemon, wait_until


def add_config(daemon: Daemon, text: str) -> None:
    """Append sections (web:, hooks:, metrics:) to a Fleet daemon's config."""
    daemon.config.write_text(daemon.config.read_text() + text)


class Web:
    def __init__(self, root: Path, config: Path) -> None:
        self.log = root / "web.log"
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> Web:
        handle = self.log.open("ab")
        before = self._lines("web_listening")
        self.proc = subprocess.Popen(
            [
                str(STYLEWATCH),
                "web",
                "-c",
                str(self.config),
                "--listen",
                "127.0.0.1:0",  # any free port: the log line says which
                "--log-format",
                "json",
            ],
            stdout=handle,
            stderr=handle,
        )
        handle.close()

        def listening() -> Any:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"stylewatch web exited:\n{self.log.read_text()}")
            lines = self._lines("web_listening")
            return lines[len(before)]["url"] if len(lines) > len(before) else None

        self.url = wait_until(listening, "stylewatch web to listen")
        return self

    def _lines(self, event: str) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == event:
                    out.append(entry)
        return out

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as answer:
                return int(answer.status), bytes(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, path: str) -> tuple[int, Any]:
        status, body = self.get(path)
        return status, json.loads(body)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
