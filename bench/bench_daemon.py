"""Daemon benchmark: a burst of photos dropped into the inbox, end to end, next to the engine alone.

    python bench/bench_daemon.py --photos 24 --size 256 --steps 50 --batch-size 4 --device auto

It writes a config into a temporary folder, prepares N distinct photos (crops, flips and colour
shifts of samples/chelsea.png and samples/astronaut.png, all the same shape so they batch), and
times the engine alone before and after the daemon (the faster run is the reference; the two
differ by the noise of a shared machine): an in-process Stylizer with the EngineConfig and
StyleParams the daemon's config resolves to, stylize_batch over the same photos in batches of
--batch-size, after one warm-up batch.

Then it starts `stylewatch run --log-format json`, waits for `service_ready`, lets one warm-up batch
through (the engine side gets one too), and renames the N photos into the inbox in one burst. A
photo's "last write" is time.time() right after its rename; its output "appears" at the timestamp
of its `job_done` log line, which the worker writes just after the output is linked into place and
the journal marks it done (the outputs' mtimes, taken just before the link, are a cross-check).
The log is read every 50 ms; nothing polls the outbox, so the benchmark takes no CPU from the
daemon.

Reported: photos per minute of the daemon (first drop to last output) and of the engine, their
ratio, and the latency p50/p95, raw and minus settle_seconds: the settle time is a deliberate wait
that makes sure a file is complete, not overhead. Timings belong here and in BENCHMARKS.md, never
in tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from daemon import rules
from daemon.config import Config, load_config
from daemon.errors import ConfigError
from engine import images
from engine.errors import EngineError
from engine.params import PRECISIONS
from engine.stylizer import Stylizer

REPO = Path(__file__).resolve().parent.parent
SOURCES = (REPO / "samples" / "chelsea.png", REPO / "samples" / "astronaut.png")
PAINTING = REPO / "samples" / "starry_night.jpg"
STYLEWATCH = Path(sys.executable).parent / "stylewatch"
READY_SECONDS = 300.0  # loading VGG19 and the style targets; generous for a busy machine
LOG_POLL_SECONDS = 0.05

CONFIG = """\
input: inbox
output: outbox
state: state
# No rescans: every photo must arrive through its filesystem event, as in production between scans.
watch: {{settle_seconds: {settle}, rescan_interval: 0, poll_interval: 0.25}}
engine: {{device: {device}, precision: {precision}, batch_size: {batch_size}, weights: {weights},
          download: false}}
styles:
  starry: {{image: {painting}}}
defaults: {{size: {size}, steps: {steps}, scales: {scales}}}
rules:
  - match: "**/*"
    styles: [starry]
"""


class BenchError(Exception):
    """The benchmark could not measure: the daemon died, failed a job or missed the deadline."""


# -- photos ---------------------------------------------------------------------------------------


def make_photos(folder: Path, count: int, size: int, prefix: str, first: int = 0) -> list[Path]:
    """`count` distinct 4:3 JPEGs with a long edge of `size`, written into `folder`.

    Every photo has the same shape, so the daemon and the engine can batch them; each is its own
    content (another crop, mirror and colour cast), so none is recognised as already done.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(SOURCES[0]) as a, Image.open(SOURCES[1]) as b:
        bases = [a.convert("RGB"), b.convert("RGB")]
    width, height = photo_shape(size)
    paths = []
    for index in range(first, first + count):
        rng = random.Random(index)
        base = bases[index % 2]
        box_h = min(base.height, base.width * 3 // 4)
        box_h = round(box_h * rng.uniform(0.6, 1.0))
        box_w = box_h * 4 // 3
        left = rng.randint(0, base.width - box_w)
        top = rng.randint(0, base.height - box_h)
        picture = base.crop((left, top, left + box_w, top + box_h))
        if rng.random() < 0.5:
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        gains = np.array([rng.uniform(0.8, 1.2) for _ in range(3)], dtype=np.float32)
        pixels = np.asarray(picture, dtype=np.float32) * gains
        picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        picture = picture.resize((width, height), Image.Resampling.LANCZOS)
        path = folder / f"{prefix}_{index:04d}.jpg"
        picture.save(path, format="JPEG", quality=92)
        paths.append(path)
    digests = {hashlib.sha256(p.read_bytes()).digest() for p in paths}
    if len(digests) != len(paths):
        raise BenchError("two generated photos came out identical; change the variants")
    return paths


def photo_shape(size: int) -> tuple[int, int]:
    return size, max(16, round(size * 3 / 4))


def drop(staged: list[Path], inbox: Path) -> dict[str, float]:
    """Rename the staged photos into `inbox` as fast as possible: name -> time of the rename."""
    inbox.mkdir(parents=True, exist_ok=True)
    dropped: dict[str, float] = {}
    for path in staged:
        target = inbox / path.name
        path.rename(target)  # atomic: the daemon never sees a partial file
        dropped[target.name] = time.time()
    return dropped


# -- the engine alone -----------------------------------------------------------------------------


def engine_reference(
    config: Config,
    relpath: PurePosixPath,
    warm: list[Image.Image],
    pictures: list[Image.Image],
    batch_size: int,
) -> dict[str, Any]:
    """Throughput of the in-process Stylizer with the settings the daemon's config resolves to.

    `warm` and `pictures` are decoded as the worker decodes them; the daemon's reading and
    decoding is part of the overhead the comparison shows.
    """
    plan = rules.decide(config, relpath)
    if not isinstance(plan, rules.Plan):
        raise BenchError(f"the benchmark config does not plan an output for {relpath}")
    target = plan.outputs[0]
    stylizer = Stylizer(config.engine.engine)
    device = stylizer.device
    timed: list[float] = []
    failed: list[BaseException] = []

    def work() -> None:
        try:
            stylizer.stylize_batch(warm, target.style, target.params)
            _sync(device)
            started = time.perf_counter()
            for i in range(0, len(pictures), batch_size):
                stylizer.stylize_batch(pictures[i : i + batch_size], target.style, target.params)
            _sync(device)
            timed.append(time.perf_counter() - started)
        except BaseException as exc:  # handed to the main thread, which raises it
            failed.append(exc)

    try:
        stylizer.prepare_style(target.style, target.params)  # as the daemon does at start
        # In a thread of its own, as the daemon's worker runs it. On a loaded CPU this matters:
        # measured here, torch's CPU kernels ran several times slower from the main thread than
        # from a fresh one under the same load (2 cores, other processes busy).
        thread = threading.Thread(target=work, name="bench-engine")
        thread.start()
        thread.join()
        if failed:
            raise failed[0]
        seconds = timed[0]
    finally:
        stylizer.close()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # leave the GPU to the daemon
    return {
        "device": str(device),
        "seconds": seconds,
        "photos_per_min": 60 * len(pictures) / seconds,
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the daemon -----------------------------------------------------------------------------------


class DaemonProcess:
    """`stylewatch run` as a subprocess, with its JSON log read incrementally."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.events: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # The installed command, or the checkout's own (`python -m daemon`) where none is.
        command = [str(STYLEWATCH)] if STYLEWATCH.is_file() else [sys.executable, "-m", "daemon"]
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # not systemd's child, whatever the shell says
        with self.log.open("ab") as handle:
            self.proc = subprocess.Popen(
                [*command, "run", "-c", str(self.config), "--log-format", "json"],
                stdout=handle,
                stderr=handle,
                env=env,
            )

    def read(self) -> list[dict[str, Any]]:
        """The log lines written since the last call, parsed; kept in self.events too."""
        with self.log.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # an unfinished last line waits for the next read
        new = [json.loads(line) for line in lines if line.startswith(b"{")]
        self.events += new
        return new

    def wait_for(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        """Read the log until `done()` holds; BenchError if the daemon exits or time runs out."""
        end = time.monotonic() + timeout
        while True:
            self.read()
            self.check_failures()
            if done():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(
                    f"the daemon exited with code {self.proc.returncode} while waiting for {what}"
                    f"\n{self.tail()}"
                )
            if time.monotonic() > end:
                raise BenchError(
                    f"timed out after {timeout:.0f} s waiting for {what}\n{self.tail()}"
                )
            time.sleep(LOG_POLL_SECONDS)

    def check_failures(self) -> None:
        failed = [e for e in self.events if e.get("event") in ("job_failed", "job_retry")]
        if failed:
            raise BenchError(f"the daemon failed a job: {failed[0]}\n{self.tail()}")

    def saw(self, event: str) -> bool:
        return any(e.get("event") == event for e in self.events)

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM, then wait; killed if it does not stop in time. Returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise BenchError(f"the daemon did not stop within {timeout:.0f} s of SIGTERM") from None

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "--- daemon log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


def _timestamp(event: dict[str, Any]) -> float:
    # structlog's TimeStamper(fmt="iso", utc=True): "2026-11-24T10:00:00.123456Z".
    return dt.datetime.fromisoformat(str(event["timestamp"])).timestamp()


def _done_by_source(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(e["source"]): e for e in events if e.get("event") == "job_done"}


def daemon_run(
    root: Path, config_path: Path, warmup: list[Path], photos: list[Path], timeout: float
) -> dict[str, Any]:
    daemon = DaemonProcess(config_path, root / "daemon.log")
    inbox = root / "inbox"
    started = time.monotonic()
    daemon.start()
    try:
        daemon.wait_for(lambda: daemon.saw("service_ready"), "service_ready", READY_SECONDS)
        ready_seconds = time.monotonic() - started
        mode = next(e.get("mode") for e in daemon.events if e.get("event") == "service_ready")

        warm_names = {f"warmup/{p.name}" for p in warmup}
        drop(warmup, inbox / "warmup")
        daemon.wait_for(
            lambda: warm_names <= _done_by_source(daemon.events).keys(), "the warm-up", timeout
        )

        dropped = drop(photos, inbox)
        daemon.wait_for(
            lambda: dropped.keys() <= _done_by_source(daemon.events).keys(),
            f"{len(dropped)} outputs",
            timeout,
        )
    finally:
        code = daemon.stop()
    if code != 0:
        raise BenchError(f"the daemon exited with code {code} after SIGTERM\n{daemon.tail()}")

    done = _done_by_source(daemon.events)
    appeared = {name: _timestamp(done[name]) for name in dropped}
    latencies = [appeared[name] - dropped[name] for name in dropped]
    # Cross-check of the clock used: mtimes are taken before the link, job_done after the commit.
    mtimes = {name: (root / "outbox" / done[name]["output"]).stat().st_mtime for name in dropped}
    lag = max(appeared[name] - mtimes[name] for name in dropped)
    # The worker logs one job_progress line at the last step of each batch, naming its photos.
    batches = [
        e["sources"]
        for e in daemon.events
        if e.get("event") == "job_progress"
        and e.get("step") == e.get("steps")
        and set(e["sources"]) <= dropped.keys()
    ]
    in_engine = sum(float(done[batch[0]]["seconds"]) for batch in batches)
    return {
        "mode": mode,
        "device": done[next(iter(dropped))].get("device"),
        "ready_seconds": ready_seconds,
        "wall_seconds": max(appeared.values()) - min(dropped.values()),
        "latencies": latencies,
        "batches": [len(b) for b in batches],
        "in_engine_seconds": in_engine,
        "job_done_after_mtime_max_s": lag,
        "exit_code": code,
    }


# -- report ---------------------------------------------------------------------------------------


def _percentiles(values: list[float]) -> dict[str, float]:
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24, help="photos in the burst (default 24)")
    parser.add_argument("--size", type=int, default=256, help="long edge in pixels (default 256)")
    parser.add_argument("--steps", type=int, default=50, help="steps per photo (default 50)")
    parser.add_argument("--scales", type=int, default=1, help="coarse-to-fine scales (default 1)")
    parser.add_argument("--batch-size", type=int, default=4, help="engine.batch_size (default 4)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument(
        "--settle", type=float, default=0.5, help="watch.settle_seconds (default 0.5)"
    )
    parser.add_argument(
        "--weights", type=Path, help="a VGG19 checkpoint (default: as bench_engine)"
    )
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds to wait for the outputs (default 1800)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.photos < 1 or args.batch_size < 1:
        parser.error("--photos and --batch-size must be at least 1")
    try:
        report = run(args)
    except (BenchError, ConfigError, EngineError) as exc:
        sys.exit(f"bench_daemon: {exc}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def run(args: argparse.Namespace) -> dict[str, Any]:
    # bench/ is not a package: reach bench_engine beside this file, however this one was started.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_engine import _weights

    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
        root = Path(tmp)
        weights, kind = _weights(args.weights, root)
        (root / "inbox").mkdir()
        config_path = root / "stylewatch.yaml"
        config_path.write_text(
            CONFIG.format(
                settle=args.settle,
                device=json.dumps(args.device),
                precision=args.precision,
                batch_size=args.batch_size,
                weights=json.dumps(str(weights)),  # a JSON string is a valid YAML scalar
                painting=json.dumps(str(PAINTING)),
                size=args.size,
                steps=args.steps,
                scales=args.scales,
            )
        )
        config = load_config(config_path)
        staging = root / "staging"  # outside the inbox, on the same filesystem: renames are atomic
        warmup = make_photos(staging / "warmup", args.batch_size, args.size, "warm", args.photos)
        photos = make_photos(staging, args.photos, args.size, "photo")

        warm = [images.decode(p.read_bytes()).image for p in warmup]
        pictures = [images.decode(p.read_bytes()).image for p in photos]
        relpath = PurePosixPath(photos[0].name)
        # Timed before and after the daemon: on a shared machine the difference shows the noise.
        before = engine_reference(config, relpath, warm, pictures, args.batch_size)
        print(
            f"# {time.strftime('%Y-%m-%d')} device={before['device']} torch={torch.__version__} "
            f"threads={torch.get_num_threads()} cpu={platform.processor() or platform.machine()} "
            f"weights={kind}"
        )
        width, height = photo_shape(args.size)
        print(
            f"# photos={args.photos} photo={width}x{height} "
            f"steps={args.steps} scales={args.scales} batch_size={args.batch_size} "
            f"precision={args.precision} settle={args.settle}s"
        )
        sys.stdout.flush()
        daemon = daemon_run(root, config_path, warmup, photos, args.timeout)
        after = engine_reference(config, relpath, warm, pictures, args.batch_size)
    # The less disturbed of the two runs is the reference.
    engine = max(before, after, key=lambda r: r["photos_per_min"])

    settle = args.settle
    wall = daemon["wall_seconds"]
    raw = _percentiles(daemon["latencies"])
    net = _percentiles([max(0.0, x - settle) for x in daemon["latencies"]])
    daemon_ppm = 60 * args.photos / wall
    daemon_ppm_net = 60 * args.photos / max(wall - settle, 1e-9)
    print(
        f"# daemon: watch mode {daemon['mode']}, ready after {daemon['ready_seconds']:.1f} s, "
        f"batches {daemon['batches']}, {daemon['in_engine_seconds']:.2f} s inside stylize_batch "
        f"({wall - settle - daemon['in_engine_seconds']:.2f} s of the wall minus settle outside "
        f"it), exit code {daemon['exit_code']} after SIGTERM"
    )
    print(
        "# latency = last write (rename) -> job_done log line; output mtimes precede job_done by "
        f"at most {daemon['job_done_after_mtime_max_s'] * 1e3:.0f} ms"
    )
    print("| run | seconds | photos/min | vs engine |")
    print("| --- | --- | --- | --- |")
    print(
        f"| engine stylize_batch (batches of {args.batch_size}), best of before/after "
        f"({before['seconds']:.2f} s / {after['seconds']:.2f} s) | {engine['seconds']:.2f} | "
        f"{engine['photos_per_min']:.1f} | 1.00 |"
    )
    print(
        f"| daemon, first drop -> last output | {wall:.2f} | {daemon_ppm:.1f} | "
        f"{daemon_ppm / engine['photos_per_min']:.2f} |"
    )
    print(
        f"| daemon, minus settle ({settle:g} s) | {wall - settle:.2f} | {daemon_ppm_net:.1f} | "
        f"{daemon_ppm_net / engine['photos_per_min']:.2f} |"
    )
    print("| latency (s) | p50 | p95 | max |")
    print("| --- | --- | --- | --- |")
    print(f"| last write -> output | {raw['p50']:.2f} | {raw['p95']:.2f} | {raw['max']:.2f} |")
    print(f"| minus settle | {net['p50']:.2f} | {net['p95']:.2f} | {net['max']:.2f} |")
    print(f"# settle is {settle / raw['p50']:.0%} of the p50 latency")
    return {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "weights": kind,
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "json"
        },
        "engine": {**engine, "before": before, "after": after},
        "daemon": {
            **daemon,
            "photos_per_min": daemon_ppm,
            "photos_per_min_minus_settle": daemon_ppm_net,
            "latency_s": raw,
            "latency_minus_settle_s": net,
        },
        "ratio": daemon_ppm / engine["photos_per_min"],
        "ratio_minus_settle": daemon_ppm_net / engine["photos_per_min"],
    }


if __name__ == "__main__":
    main()
