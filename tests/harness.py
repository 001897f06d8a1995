"""The real daemon as a subprocess in tests: start, signal, read its JSON logs and status."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from daemon.orders import Painting, WorkOrder
from engine.params import StyleParams

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


# The digest of every file photo() wrote, taken as it wrote it: check_invariants compares the
# sources with these, so a daemon that changed a source's bytes cannot pass unseen.
WRITTEN: dict[Path, str] = {}


def photo(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (48, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format="PNG" if path.suffix == ".png" else "JPEG")
    WRITTEN[path] = sha256(path)
    return path


def originals(paths: Iterable[Path]) -> dict[Path, str]:
    """The photos' digests from when photo() wrote them, for check_invariants(sources=...)."""
    return {p: WRITTEN[p] for p in paths}


# The minimal config of the daemon issue, word for word: it must work as it reads.
MINIMAL = """\
input: inbox            # relative to this file
output: outbox
state: state
watch: {settle_seconds: 1, rescan_interval: 60}
engine: {device: auto}
styles:
  starry: {image: styles/starry_night.jpg}
  blend: {images: [{path: styles/the_scream.jpg, weight: 0.7}, {path: styles/shipwreck.jpg, weight: 0.3}]}
defaults: {size: 512, steps: 300}
rules:
  - match: "booth1/**/*.jpg"
    styles: [starry, blend]
  - match: "**/*"
    styles: [starry]
"""  # noqa: E501 - the issue's text, verbatim


class Daemon:
    def __init__(self, root: Path, config: Path) -> None:
        self.root = root
        self.config = config
        self.log = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Daemon:
        # Restarts append to the same log: wait for this process's own service_ready line.
        before = self._count("service_ready")
        self.launch(env)
        wait_until(
            lambda: self._count("service_ready") > before or self.exited(),
            "the daemon to be ready",
        )
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def launch(self, env: dict[str, str] | None = None) -> Daemon:
        """Start the process without waiting for it to be ready (to kill it at any moment)."""
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(STYLEWATCH), "run", "-c", str(self.config), "--log-format", "json"],
            stdout=handle,
            stderr=handle,
            env=env,
        )
        handle.close()
        return self

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
        """wait_until, failing at once (with the log's tail) if the daemon exits meanwhile."""

        def met_or_dead() -> Any:
            value = condition()
            if value or not self.exited():
                return value
            tail = self.log.read_text(errors="replace")[-4000:]
            raise AssertionError(f"the daemon exited while waiting for {what}:\n{tail}")

        return wait_until(met_or_dead, what, timeout)

    def _count(self, event: str) -> int:
        return sum(e.get("event") == event for e in self.events())

    def count(self, event: str, **fields: Any) -> int:
        """How many lines of this event (with these fields) the log holds."""
        return sum(
            e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            for e in self.events()
        )

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

    def status(self, failures: int = 50) -> dict[str, Any]:
        """`stylewatch status --json` with the latest `failures` failures; zero counts dropped."""
        done = subprocess.run(
            [
                str(STYLEWATCH),
                "status",
                "-c",
                str(self.config),
                "--json",
                "--failures",
                str(failures),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        result: dict[str, Any] = json.loads(done.stdout)
        result["counts"] = {state: n for state, n in result["counts"].items() if n}
        return result

    def full_status(self) -> dict[str, Any]:
        """status() with every failure, not the latest 50."""
        return self.status(failures=100_000)


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


# ---- the trust suite's shared checks (tests/test_trust_*.py) ----------------------------------

TEMP_MARKER = ".stylewatch-tmp"
OUTPUT_MARKER = ".stylewatch-journal"  # the output folder's record of its journal: no output
# Events that only a bug produces: an exception escaped a per-job or per-event boundary.
BUG_EVENTS = frozenset(
    {"worker_error", "watch_sink_failed", "watch_event_failed", "watch_supervisor_failed"}
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprints(root: Path) -> dict[Path, str]:
    """sha256 of every regular file under `root` (symlinks not followed): the sources' originals."""
    return {p: sha256(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


def output_names(outbox: Path) -> set[str]:
    """Every regular file under the output folder except our temporaries, relative, POSIX
    separators. Symlinks are not outputs: the daemon never makes them (tests plant some)."""
    if not outbox.exists():
        return set()
    return {
        p.relative_to(outbox).as_posix()
        for p in outbox.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and TEMP_MARKER not in p.name
        and p.relative_to(outbox).as_posix() != OUTPUT_MARKER
    }


def temporaries(outbox: Path) -> list[str]:
    return sorted(p.name for p in outbox.rglob("*") if TEMP_MARKER in p.name)


def complete_image(path: Path) -> str | None:
    """None when `path` is a whole image; otherwise what is wrong with it."""
    try:
        with Image.open(path) as im:
            im.load()
    except FileNotFoundError:
        return None  # replaced or removed meanwhile: nothing was visible half-written
    except Exception as exc:  # whatever Pillow says of half a file
        return f"{type(exc).__name__}: {exc}"
    return None


class OutputSpy:
    """Watches the output folder while the daemon runs. Every file that shows up under a final
    name must already be a whole image (`partial` lists those that were not), and every name ever
    seen is kept (`seen`), so a duplicate that came and went is caught too."""

    def __init__(self, outbox: Path, interval: float = 0.05) -> None:
        self.outbox = outbox
        self.interval = interval
        self.partial: list[str] = []
        self.seen: set[str] = set()
        self.preexisting = output_names(outbox)  # not this run's outputs (a disk filler)
        self.checked = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="output-spy", daemon=True)

    def __enter__(self) -> OutputSpy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.look()

    def look(self) -> None:
        try:
            names = output_names(self.outbox)
        except OSError:  # a folder vanished mid-walk (the test tidies up)
            return
        for name in sorted(names - self.seen - self.preexisting):
            self.seen.add(name)
            self.checked += 1
            problem = complete_image(self.outbox / name)
            if problem is not None:
                self.partial.append(f"{name}: {problem}")


def planned(*sources: str) -> set[str]:
    """The outputs that CONFIG's rules plan for these sources (relative, POSIX): two styles for
    `booth1/**/*.jpg`, the same path otherwise."""
    out = set()
    for source in sources:
        path = PurePosixPath(source)
        if path.parts[0] == "booth1" and path.suffix.lower() == ".jpg":
            out |= {str(path.with_name(f"{path.stem}.{style}{path.suffix}")) for style in STYLES}
        else:
            out.add(source)
    return out


STYLES = ("starry", "blend")


def failures_by_source(status: dict[str, Any]) -> dict[str, str]:
    return {f["source"]: f["kind"] for f in status["failures"]}


def check_invariants(
    daemon: Daemon,
    *,
    outbox: Path,
    sources: dict[Path, str],
    expected: Iterable[str],
    rejected: Iterable[str] = (),
    spy: OutputSpy | None = None,
    allowed_bugs: Iterable[str] = (),
) -> dict[str, Any]:
    """The suite's promise, checked after every daemon run; returns the status it read.

    - every good photo has exactly its planned outputs: no more (no `~2` duplicate), no fewer;
    - each output is a whole image, no temporary file is left, and none was ever seen half-written;
    - every source still has the bytes it had before;
    - every rejected file is in `stylewatch status --json` with a kind, and nothing else failed;
    - no exception escaped a per-job or per-event boundary.
    """
    found = output_names(outbox)
    wanted = set(expected)
    assert found == wanted, f"lost: {sorted(wanted - found)}, extra: {sorted(found - wanted)}"
    broken = {name: complete_image(outbox / name) for name in found}
    assert not {k: v for k, v in broken.items() if v}, broken
    assert temporaries(outbox) == [], temporaries(outbox)
    if spy is not None:
        spy.look()
        assert spy.partial == [], spy.partial
        assert spy.seen <= wanted, f"seen then gone: {sorted(spy.seen - wanted)}"
    changed = [str(p) for p, digest in sources.items() if not p.exists() or sha256(p) != digest]
    assert changed == [], f"sources changed or gone: {changed}"
    status = daemon.full_status()
    failed = failures_by_source(status)
    assert set(failed) == set(rejected), f"failed: {failed}, expected rejections: {rejected}"
    assert all(kind for kind in failed.values()), failed
    bugs = [
        e
        for e in daemon.events()
        if e.get("event") in BUG_EVENTS and e.get("event") not in set(allowed_bugs)
    ]
    assert bugs == [], bugs
    # One line per check, for RELIABILITY.md's figures (`pytest -s` shows them).
    print(
        f"trust: checked outputs={len(found)} rejected={len(failed)}"
        f" seen_while_running={0 if spy is None else spy.checked} partial=0 duplicates=0 lost=0"
    )
    return status


class Fleet:
    """Configs and daemons for one test's folder; close() kills whatever still runs."""

    def __init__(self, root: Path, weights: Path, styles: tuple[Path, Path]) -> None:
        self.root = root
        self.weights = weights
        self.styles = styles
        self.inbox = root / "inbox"
        self.outbox = root / "outbox"
        self.started: list[Daemon] = []

    def config(
        self,
        *,
        settle: float = 0.3,
        steps: int = 1,
        rescan: float = 30,
        batch: int = 2,
        output: str = "outbox",
        state: str = "state",
    ) -> Path:
        self.inbox.mkdir(parents=True, exist_ok=True)
        text = CONFIG.format(
            settle=settle,
            weights=self.weights,
            style_a=self.styles[0],
            style_b=self.styles[1],
            steps=steps,
        )
        text = text.replace("rescan_interval: 30", f"rescan_interval: {rescan}")
        text = text.replace("batch_size: 2", f"batch_size: {batch}")
        text = text.replace("output: outbox", f"output: {output}")
        text = text.replace("state: state", f"state: {state}")
        path = self.root / "config.yaml"
        path.write_text(text)
        return path

    def daemon(self, **settings: Any) -> Daemon:
        daemon = Daemon(self.root, self.config(**settings))
        self.started.append(daemon)
        return daemon

    def again(self, daemon: Daemon) -> Daemon:
        """A new process on the same config and folders (a restart)."""
        fresh = Daemon(self.root, daemon.config)
        self.started.append(fresh)
        return fresh

    def close(self) -> None:
        for daemon in self.started:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.proc.kill()
                daemon.proc.wait()


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str, why_fine: str) -> Iterator[Path]:
    """A tmpfs of `size` (`256k`) mounted on `folder` (made if missing) for the test's length; the
    test skips where mounting is not allowed (it needs root or CAP_SYS_ADMIN), saying
    `why_fine`: what covers the case without it."""
    import pytest

    folder.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}; {why_fine}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def one_rule_config(tmp_path: Path, defaults: str, rule_extra: str = "") -> Path:
    """The smallest config with one style (a placeholder painting: nothing decodes it) and one
    rule matching everything; `defaults` is the defaults mapping, `rule_extra` lines under the
    rule (indented four spaces)."""
    (tmp_path / "inbox").mkdir(exist_ok=True)
    (tmp_path / "p.jpg").write_bytes(b"painting")
    path = tmp_path / "c.yaml"
    path.write_text(
        f"input: inbox\noutput: outbox\nstate: state\nstyles: {{s: {{image: p.jpg}}}}\n"
        f"defaults: {defaults}\nrules:\n  - match: '**/*'\n    styles: [s]\n{rule_extra}"
    )
    return path


def order(
    source: str = "a.jpg",
    fingerprint: str = "f1",
    *,
    style: str = "starry",
    rule: str = "r",
    output: str | None = None,
    settings: str = "s1",
) -> WorkOrder:
    """A work order for journal-level tests: `settings` names a set of settings (each label
    gives other StyleParams, hence another settings_hash)."""
    seed = int(hashlib.sha256(settings.encode()).hexdigest()[:8], 16)
    return WorkOrder(
        source=source,
        fingerprint=fingerprint,
        rule=rule,
        style=style,
        paintings=(Painting("/styles/starry.jpg"),),
        params=StyleParams(seed=seed),
        output=output or f"{style}/{source}",
        format="JPEG",
        quality=92,
    )


def settings_hash(settings: str = "s1") -> str:
    """The settings_hash of order(settings=...)."""
    return order(settings=settings).settings_hash
