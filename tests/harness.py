"""The real daemon as a subprocess in tests: start, signal, read its JSON logs and status."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

STYLEWATCH = Path(sys.executable).parent / "stylewatch"
# Generous for a loaded 2-core CI machine; the waits end as soon as their condition holds.
DEADLINE = 120.0


def wait_until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def photo(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (48, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG" if path.suffix == ".png" else "JPEG")
    return path


class Daemon:
    def __init__(self, root: Path, config: Path) -> None:
        self.root = root
        self.config = config
        self.log = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Daemon:
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(STYLEWATCH), "run", "-c", str(self.config), "--log-format", "json"],
            stdout=handle,
            stderr=handle,
            env=env,
        )
        handle.close()
        wait_until(lambda: self.saw("service_ready") or self.exited(), "the daemon to be ready")
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def saw(self, event: str, **fields: Any) -> bool:
        return any(
            e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            for e in self.events()
        )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=DEADLINE)

    def status(self) -> dict[str, Any]:
        done = subprocess.run(
            [str(STYLEWATCH), "status", "-c", str(self.config), "--json", "--failures", "50"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        result: dict[str, Any] = json.loads(done.stdout)
        result["counts"] = {state: n for state, n in result["counts"].items() if n}
        return result


CONFIG = """\
input: inbox
output: outbox
state: state
watch: {{settle_seconds: {settle}, rescan_interval: 30, poll_interval: 0.2}}
engine: {{device: cpu, weights: {weights}, download: false, batch_size: 2}}
styles:
  starry: {{image: {style_a}}}
  blend: {{images: [{{path: {style_a}, weight: 0.7}}, {{path: {style_b}, weight: 0.3}}]}}
defaults: {{size: 32, steps: {steps}, scales: 1}}
rules:
  - match: "booth1/**/*.jpg"
    styles: [starry, blend]
  - match: "**/*"
    styles: [starry]
"""
