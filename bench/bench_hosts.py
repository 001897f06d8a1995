"""Several-hosts benchmark: the same burst through the local pool and through Redis to N workers.

    python bench/bench_hosts.py                       # fake engine: pool and broker, N = 1, 2, 3
    python bench/bench_hosts.py --real --workers 1 2  # the real engine on the CPU, random weights

For each N, the service runs in this process twice on a fresh folder: once with the local pool
(`engine.devices` = N CPU workers) and once as the coordinator (`broker.url` set) with N
`stylewatch worker` processes on this machine, fed by a redis-server on a Unix socket (append-
only file on, `appendfsync always`, as the tests run it). A burst of distinct small photos is
dropped in once the service is ready and every worker is registered; the clock runs from the
first drop to the last `JobDone`.

With the fake engine (it sleeps a fixed time per batch, batch_size 1), both paths can at best do
N batches at once: the difference between them, per photo, is what the broker path costs a job
(dispatch, a stream entry each way, the staged file written, read and deleted, the lease). The
workers load it through STYLEWATCH_TEST_ENGINE, the worker's hook for non-production engines.
Timings belong here and in BENCHMARKS.md, never in tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the tests' redis-server harness

from bench_pool import (  # noqa: E402 - after the path
    SleepEngine,
    random_checkpoint,
    run_burst,
    write_config,
)
from redisharness import RedisServer  # noqa: E402

from daemon import logs  # noqa: E402
from daemon.broker import Broker, BrokerSettings  # noqa: E402
from engine.params import EngineConfig  # noqa: E402


def sleep_engine(config: EngineConfig) -> SleepEngine:
    """The fake engine for `stylewatch worker` processes (STYLEWATCH_TEST_ENGINE)."""
    return SleepEngine(config, seconds=float(os.environ["BENCH_SLEEP"]))


def start_workers(
    config: Path, n: int, redis: RedisServer, *, real: bool, sleep: float
) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
    if not real:
        env |= {
            "STYLEWATCH_TEST_ENGINE": "bench_hosts:sleep_engine",
            "BENCH_SLEEP": str(sleep),
            "PYTHONPATH": os.pathsep.join([str(REPO / "bench"), str(REPO)]),
        }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "daemon", "worker", "-c", str(config), "--device", "cpu",
             "--name", f"bench-{i}", "--log-level", "warning"],
            env=env,
            cwd=REPO,
        )
        for i in range(n)
    ]
    broker = Broker(BrokerSettings(url=redis.url, namespace="bench"))
    deadline = time.monotonic() + 600
    while len(broker.workers()) < n:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit("the workers did not start")
        time.sleep(0.1)
    broker.close()
    return procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--photos-per-worker", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=0.2, help="fake engine: seconds per batch")
    parser.add_argument("--real", action="store_true", help="the real engine, random weights")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    logs.configure(level="warning")
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}"
    )
    photos = max(args.workers) * args.photos_per_worker
    rows: list[tuple[int, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_checkpoint(Path(tmp)) if args.real else None
        factory: Any
        if args.real:
            from daemon.process import real_engine

            factory = real_engine
        else:
            factory = functools.partial(SleepEngine, seconds=args.sleep)
        for n in args.workers:
            local_root = Path(tmp) / f"local{n}"
            config = write_config(local_root, n, weights=weights, size=args.size, steps=args.steps)
            local = run_burst(config, factory, photos, args.size)
            redis = RedisServer(Path(tmp) / f"redis{n}")
            redis.start()
            procs: list[subprocess.Popen[bytes]] = []
            try:
                root = Path(tmp) / f"broker{n}"
                config = write_config(root, 1, weights=weights, size=args.size, steps=args.steps)
                with config.open("a") as f:
                    f.write(f"broker: {{url: '{redis.url}', namespace: bench}}\n")
                procs = start_workers(config, n, redis, real=args.real, sleep=args.sleep)
                remote = run_burst(config, factory, photos, args.size)
            finally:
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(60)
                redis.stop()
            rows.append((n, local, remote))
            print(
                f"N={n}: {photos} photos: local pool {local:.2f} s ({photos / local:.2f}/s), "
                f"broker {remote:.2f} s ({photos / remote:.2f}/s), "
                f"{(remote - local) / photos * 1000:+.0f} ms per photo"
            )
    engine = "real engine" if args.real else f"fake engine, {args.sleep:g} s per batch"
    print(f"\n{engine}; {photos} photos per run, batch_size 1")
    base = photos / rows[0][2]
    for n, local, remote in rows:
        print(
            f"N={n}: broker {photos / remote / base:.2f}x of N={rows[0][0]}, "
            f"{photos / remote / (photos / local):.2f}x of the local pool; "
            f"broker path per job {(remote - local) / photos * 1000 * n:+.0f} ms of worker time"
        )


if __name__ == "__main__":
    main()
