"""Pool benchmark: photos per second of the service with N worker processes.

    python bench/bench_pool.py                      # fake engine: N = 1, 2, 4
    python bench/bench_pool.py --real --workers 1 2 # the real engine on the CPU, random weights

The service runs in this process (intake, journal, outputs) with `engine.devices` set to N CPU
workers, each a process of its own. A burst of distinct small photos is dropped into the inbox
once the service is ready; the clock runs from the first drop to the last `JobDone` event.

The fake engine sleeps a fixed time per batch (batch_size 1), so N workers can at best do N times
the work of one: the ratio against N = 1, measured in the same run, says how much the pool's own
machinery (intake, journal, pipes, outputs) costs. The goal is >= 0.9 N. With --real, each worker
runs the real engine (a VGG19 with random weights, built here: nothing is downloaded); on a
machine with C cores, 2 CPU workers share the cores the one worker had, so expect about 1x.
Timings belong here and in BENCHMARKS.md, never in tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon import events, logs  # noqa: E402 - after the path
from daemon.notify import Notifier  # noqa: E402
from daemon.service import Service  # noqa: E402
from engine.params import EngineConfig, StyleParams, StyleSpec  # noqa: E402

PAINTING = REPO / "samples" / "starry_night.jpg"


@dataclass(frozen=True)
class _Result:
    image: Image.Image
    steps: int = 1
    device: str = "cpu"
    budget_seconds: float | None = None
    optimise_seconds: float = 0.0
    schedule: tuple[tuple[int, int], ...] = ()
    upsampled_from: int | None = None


class SleepEngine:
    """An engine that sleeps `seconds` per batch and returns the photos unchanged."""

    def __init__(self, config: EngineConfig, *, seconds: float) -> None:
        self.seconds = seconds
        self.device = "fake"
        self.precision = "fp32"

    def prepare_style(self, style: StyleSpec, params: StyleParams) -> None:
        pass

    def stylize_batch(
        self, contents: Sequence[Image.Image], style: StyleSpec, params: StyleParams, **_: Any
    ) -> list[_Result]:
        time.sleep(self.seconds)
        return [_Result(image.convert("RGB")) for image in contents]

    def close(self) -> None:
        pass

    def shrink_memory_budget(self) -> bool:
        return False


def write_config(
    root: Path, workers: int, *, weights: Path | None, size: int, steps: int, threads: int | None
) -> Path:
    (root / "inbox").mkdir(parents=True)
    engine = f"devices: [{', '.join(['cpu'] * workers)}], batch_size: 1, snapshot_seconds: 0"
    if threads is not None:
        engine += f", threads: {threads}"
    if weights is not None:
        engine += f", weights: {weights}, download: false"
    path = root / "config.yaml"
    path.write_text(
        "input: inbox\noutput: outbox\nstate: state\n"
        "watch: {settle_seconds: 0.1, rescan_interval: 0}\n"
        f"engine: {{{engine}}}\n"
        f"styles: {{s: {{image: {PAINTING}}}}}\n"
        f"defaults: {{size: {size}, steps: {steps}, scales: 1}}\n"
        "rules: [{match: '**/*', styles: [s]}]\n"
        "logging: {level: warning}\n"
    )
    return path


def run_burst(config: Path, factory: Any, photos: int, size: int) -> float:
    """Seconds from the first photo dropped to the last one done."""
    service = Service(config, engine_factory=factory, notifier=Notifier(None))
    ready, done = threading.Event(), threading.Event()
    finished: list[float] = []

    def listen(event: events.Event) -> None:
        if isinstance(event, events.ServiceReady):
            ready.set()
        elif isinstance(event, events.JobDone):
            finished.append(time.perf_counter())
            if len(finished) == photos:
                done.set()
        elif isinstance(event, events.JobFailed):
            print(f"failed: {event.source}: {event.error}", file=sys.stderr)

    service.bus.subscribe(listen)
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        if not ready.wait(600):
            raise SystemExit("the service did not get ready")
        inbox = config.parent / "inbox"
        staged = config.parent / "staged"
        staged.mkdir()
        for i in range(photos):
            colour = (i * 37 % 256, i * 91 % 256, i * 53 % 256)
            Image.new("RGB", (size, size * 2 // 3), colour).save(staged / f"p{i}.png")
        start = time.perf_counter()
        for path in sorted(staged.iterdir()):
            path.rename(inbox / path.name)
        if not done.wait(3600):
            raise SystemExit(f"only {len(finished)} of {photos} photos done")
        return finished[-1] - start
    finally:
        service.request_stop()
        runner.join()


def random_checkpoint(folder: Path) -> Path:
    import torch

    from engine.vgg import build_vgg19_features

    torch.manual_seed(1234)
    features = build_vgg19_features()
    path = folder / "vgg19-random.pth"
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    torch.save(state, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--photos-per-worker", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=0.5, help="fake engine: seconds per batch")
    parser.add_argument("--real", action="store_true", help="the real engine, random weights")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, help="engine.threads per worker (default: shared)")
    args = parser.parse_args()
    logs.configure(level="warning")
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    results: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_checkpoint(Path(tmp)) if args.real else None
        if args.real:
            from daemon.pool import real_engine

            factory: Any = real_engine
        else:
            factory = functools.partial(SleepEngine, seconds=args.sleep)
        photos = max(args.workers) * args.photos_per_worker
        for n in args.workers:
            root = Path(tmp) / f"n{n}"
            config = write_config(
                root, n, weights=weights, size=args.size, steps=args.steps, threads=args.threads
            )
            seconds = run_burst(config, factory, photos, args.size)
            results[n] = photos / seconds
            print(f"N={n}: {photos} photos in {seconds:.2f} s = {results[n]:.2f} photos/s")
    base = results[min(results)]
    engine = "real engine" if args.real else f"fake engine, {args.sleep:g} s per batch"
    print(f"\n{engine}; {photos} photos per run, batch_size 1")
    for n, rate in results.items():
        print(f"N={n}: {rate / base:.2f}x of N={min(results)} (fake engine goal >= {0.9 * n:.1f})")


if __name__ == "__main__":
    main()
