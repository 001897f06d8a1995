"""`stylewatch` command line. The only place in the project that calls sys.exit."""

from __future__ import annotations

import argparse
import enum
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine import params as engine_params
from engine.metadata import METADATA_POLICIES


class ExitCode(enum.IntEnum):
    """sysexits.h codes, so that systemd and scripts can tell failures apart."""

    OK = 0
    USAGE = 64  # a bad setting on the command line
    DATAERR = 65  # a photo or painting that cannot be used
    NOINPUT = 66  # an input file that does not exist
    SOFTWARE = 70  # a bug, or the optimisation broke down (NaN)
    CANTCREAT = 73  # the output cannot be written
    TEMPFAIL = 75  # out of memory: a smaller size may work
    CONFIG = 78  # missing weights or a bad config: fix the setup, restarting will not help


class CliError(Exception):
    """A failure to report as one line, with its exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylewatch",
        description="Turn photos into artworks by neural style transfer (VGG19, Gatys et al.).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    one = commands.add_parser(
        "stylize",
        help="stylize one photo now",
        description="Stylize one photo with one painting (or a blend of several) and write it.",
    )
    one.add_argument("content", type=Path, help="the photo")
    one.add_argument(
        "-s",
        "--style",
        type=Path,
        action="append",
        required=True,
        dest="styles",
        metavar="STYLE",
        help="a painting; repeat to blend several",
    )
    one.add_argument(
        "--blend",
        type=_weights,
        metavar="W,W,...",
        help="blend weights of the paintings, in order (default: equal)",
    )
    one.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="the result; its suffix (.jpg, .png, .webp, .avif) picks the format",
    )
    defaults = engine_params.StyleParams()
    one.add_argument(
        "--preset",
        choices=tuple(engine_params.PRESETS),
        help="a named schedule of scales and steps; other flags override it",
    )
    one.add_argument("--size", type=int, help=f"long edge in pixels (default {defaults.size})")
    one.add_argument(
        "--steps",
        type=int,
        help=f"optimisation steps over all scales (default {engine_params.DEFAULT_STEPS})",
    )
    one.add_argument(
        "--seconds",
        type=float,
        help="time budget of the optimisation: scales and steps are planned to fill it on this "
        "machine (--steps beside it wins)",
    )
    one.add_argument(
        "--scales",
        type=int,
        help=f"coarse-to-fine scales, each twice the last (default {defaults.scales})",
    )
    one.add_argument(
        "--style-weight",
        type=float,
        help=f"weight of the style loss (default {defaults.style_weight:g})",
    )
    one.add_argument(
        "--content-weight",
        type=float,
        help=f"weight of the content loss (default {defaults.content_weight:g})",
    )
    one.add_argument(
        "--tv-weight",
        type=float,
        help=f"weight of the smoothness loss (default {defaults.tv_weight:g})",
    )
    one.add_argument(
        "--style-scale",
        type=float,
        help=f"painting size relative to the photo (default {defaults.style_scale:g})",
    )
    one.add_argument("--optimizer", choices=engine_params.OPTIMIZERS)
    one.add_argument("--init", choices=("content", "random"))
    one.add_argument("--pooling", choices=engine_params.POOLINGS)
    one.add_argument("--seed", type=int, help=f"random seed (default {defaults.seed})")
    one.add_argument(
        "--preserve-colors",
        nargs="?",
        const="luminance",
        choices=("luminance", "histogram"),
        help="keep the photo's colours (default method: luminance)",
    )
    one.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    one.add_argument(
        "--precision",
        choices=engine_params.PRECISIONS,
        default=engine_params.EngineConfig().precision,
        help="network precision; auto: bf16 where the hardware runs it natively, else fp32 "
        "(default auto)",
    )
    one.add_argument(
        "--weights", type=Path, help="VGG19 checkpoint file (default: torch's hub cache)"
    )
    one.add_argument(
        "--preprocess",
        choices=engine_params.PREPROCESSES,
        default="torchvision",
        help="torchvision for torchvision's checkpoint, caffe for the Caffe one",
    )
    one.add_argument(
        "--no-download",
        action="store_true",
        help="never download the weights; fail with where to put them instead",
    )
    one.add_argument(
        "--quality", type=int, default=92, help="JPEG/WebP/AVIF quality 1-100 (default 92)"
    )
    one.add_argument(
        "--metadata",
        choices=METADATA_POLICIES,
        default="private",
        help="what the result keeps of the photo's metadata: private drops location and serial "
        "numbers (default), full keeps them, minimal keeps none",
    )
    one.set_defaults(handler=_stylize)

    run = commands.add_parser(
        "run",
        help="run the watch-folder service",
        description="Watch the input folder and stylize every new photo.",
    )
    _config_argument(run)
    run.add_argument(
        "--log-level", help="debug, info, warning or error (default: the config's logging.level)"
    )
    run.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        help="auto: console on a terminal, JSON lines otherwise (default: the config's "
        "logging.format)",
    )
    run.set_defaults(handler=_run)

    check = commands.add_parser(
        "check",
        help="validate a config, its paintings and the weights",
        description="Validate the config, decode the paintings, find the weights, list the rules.",
    )
    _config_argument(check)
    check.set_defaults(handler=_check)

    estimate = commands.add_parser(
        "estimate",
        help="how long one photo takes here, measured",
        description="Time a few optimisation steps at two small sizes on this machine, with the "
        "config's engine settings, and price each rule's schedule (steps per scale) with them.",
    )
    _config_argument(estimate)
    estimate.set_defaults(handler=_estimate)

    status = commands.add_parser("status", help="what happened to the photos (from the journal)")
    _config_argument(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--failures", type=int, default=10, help="how many recent failures to show")
    status.set_defaults(handler=_status)

    weights = commands.add_parser(
        "weights",
        help="find, fetch or verify the VGG19 checkpoint",
        description="Where the VGG19 checkpoint is looked for, fetching it there, and checking it. "
        "Honours TORCH_HOME and the config's engine.weights and engine.preprocess.",
    )
    weights.add_argument("action", choices=("path", "fetch", "verify"))
    weights.add_argument(
        "-c", "--config", type=Path, help="take weights/preprocess from this config"
    )
    weights.add_argument(
        "--preprocess",
        choices=engine_params.PREPROCESSES,
        help="which checkpoint, without a config (default torchvision)",
    )
    weights.set_defaults(handler=_weights_command)

    worker = commands.add_parser(
        "worker",
        help="stylize for a coordinator on another host (broker.url), one process per GPU",
        description="Take batches from Redis (the config's broker.url), stylize them on one "
        "device, stage each artwork in the shared output and report it to the coordinator.",
    )
    _config_argument(worker)
    worker.add_argument(
        "--device", help="cpu, cuda or cuda:N (default: the config's engine.device)"
    )
    worker.add_argument(
        "--name",
        help="its name in Redis, unique among the workers and the same after a restart "
        "(default HOST:DEVICE)",
    )
    worker.add_argument("--log-level", default="info", help="debug, info, warning or error")
    worker.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help="auto: console on a terminal, JSON lines otherwise (default)",
    )
    worker.set_defaults(handler=_worker)

    retry = commands.add_parser("retry", help="queue failed jobs again")
    _config_argument(retry)
    retry.set_defaults(handler=_retry)

    web = commands.add_parser(
        "web",
        help="serve the booth page, the dashboard, /metrics and health checks",
        description="A web server beside the service: /booth, / (dashboard), /metrics, /healthz, "
        "/readyz. Reads the journal and the service's live state; listens on loopback unless "
        "web.token is set.",
    )
    _config_argument(web)
    web.add_argument("--listen", metavar="HOST:PORT", help="overrides web.listen (port 0: any)")
    web.add_argument("--log-level", default="info", help="debug, info, warning or error")
    web.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help="auto: console on a terminal, JSON lines otherwise (default)",
    )
    web.set_defaults(handler=_web)
    return parser


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, required=True, help="the YAML config file")


def _load(path: Path, *, require_input: bool = True) -> Any:
    from daemon.config import load_config
    from daemon.errors import ConfigError

    try:
        return load_config(path, require_input=require_input)
    except ConfigError as exc:
        raise CliError(f"invalid config\n{exc}", ExitCode.CONFIG) from exc
    except OSError as exc:
        raise CliError(
            f"cannot read config {path}: {exc.strerror or exc}", ExitCode.CONFIG
        ) from exc


class _EarlySignals:
    """Signal handlers for the seconds between `stylewatch run` starting and the service taking
    over (reading the config, importing the service's modules).

    Without them a SIGHUP sent then (a reload right after `systemctl start`) would kill the
    process, and systemd counts death by SIGHUP as a clean exit, so Restart=on-failure would not
    bring it back. They only remember the signal; the service acts on it once it runs.
    """

    def __init__(self) -> None:
        import signal

        self.seen: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._remember)

    def _remember(self, signum: int, frame: object) -> None:
        self.seen.append(signum)


def _run(args: argparse.Namespace) -> int:
    early = _EarlySignals()
    import os

    from daemon import logs
    from daemon.broker import BrokerError, BrokerUnavailableError
    from daemon.errors import ConfigError
    from daemon.journal import JournalError
    from daemon.service import Service
    from engine import errors

    # Outputs and the journal are readable by others but writable only by the service user.
    os.umask(0o022)
    if args.log_level is not None:
        try:  # a bad flag is refused before the config is read
            logs.configure(level=args.log_level)
        except ValueError as exc:
            raise CliError(str(exc), ExitCode.USAGE) from exc
    try:
        service = Service(args.config)
    except ConfigError as exc:
        raise CliError(f"invalid config\n{exc}", ExitCode.CONFIG) from exc
    except OSError as exc:
        raise CliError(f"cannot read config {args.config}: {exc}", ExitCode.CONFIG) from exc
    settings = service.config.logging
    logs.configure(
        level=args.log_level or settings.level, renderer=args.log_format or settings.format
    )
    # engine.threads applies in the worker processes (daemon/pool.py): this one has no torch.
    service.install_signal_handlers(early.seen)
    try:
        service.run()
    except errors.WeightsError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from exc
    except JournalError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from exc
    except BrokerUnavailableError as exc:  # Redis may come back: systemd tries again
        raise CliError(str(exc), ExitCode.TEMPFAIL) from exc
    except BrokerError as exc:  # another coordinator, or a Redis set up against the design
        raise CliError(str(exc), ExitCode.CONFIG) from exc
    except errors.EngineError as exc:
        # The config was validated: what is left is the device (a GPU not ready yet at boot).
        # TEMPFAIL lets systemd restart the service; CONFIG (78) would stop it for good.
        raise CliError(str(exc), ExitCode.TEMPFAIL) from exc
    return ExitCode.OK


def _worker(args: argparse.Namespace) -> int:
    import os
    import signal

    from daemon import logs
    from daemon.remote import RemoteWorker, engine_factory
    from engine import errors

    os.umask(0o022)  # staged artworks: readable by others, the coordinator's to rename
    try:
        logs.configure(level=args.log_level, renderer=args.log_format)
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from exc
    config = _load(args.config)
    if config.broker.url is None:
        raise CliError(
            f"{args.config} has no broker.url: a worker takes its batches from the "
            "coordinator's Redis (README: Several machines)",
            ExitCode.CONFIG,
        )
    worker = RemoteWorker(
        config,
        args.device or config.engine.engine.device,
        name=args.name,
        factory=engine_factory(),
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, worker.request_stop)
    try:
        worker.run()
    except errors.WeightsError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from exc
    except errors.EngineError as exc:  # the device (a GPU not ready yet): systemd tries again
        raise CliError(str(exc), ExitCode.TEMPFAIL) from exc
    return ExitCode.OK


def _apply_threads(config: Any) -> None:
    if config.engine.threads is not None:
        import torch

        # Before the engine is built: torch sizes its thread pool on first use.
        torch.set_num_threads(config.engine.threads)


def _estimate(args: argparse.Namespace) -> int:
    import time

    from daemon import estimate
    from engine import errors
    from engine.stylizer import Stylizer

    config = _load(args.config)
    _apply_threads(config)
    started = time.perf_counter()
    try:
        stylizer = Stylizer(config.engine.engine, download_progress=sys.stderr.isatty())
    except errors.WeightsError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from exc
    except errors.EngineError as exc:
        raise CliError(str(exc), ExitCode.TEMPFAIL) from exc
    loaded = time.perf_counter() - started
    costs: dict[engine_params.StyleParams, estimate.StepCost] = {}
    shown: set[tuple[str, int, tuple[tuple[int, int], ...]]] = set()
    width, height = estimate.ASPECT
    try:
        for rule in config.rules:
            for target in rule.outputs:
                params = target.settings.params
                line = (target.style_name, params.size, params.schedule())
                if line in shown:
                    continue
                shown.add(line)
                where = f"rule {rule.index} ({' | '.join(rule.match)}), style {target.style_name}"
                if params.budgeted:
                    # The engine plans the steps to fill the budget: the budget is the answer.
                    sys.stdout.write(
                        f"{where}: a {width}:{height} photo at {params.size} px within its time "
                        f"budget: about {_duration(params.seconds or 0.0)}\n"
                    )
                    continue
                # What a step costs does not depend on the schedule or the painting's scale.
                key = params.replace(size=64, steps=1, seconds=None, scales=1, style_scale=1.0)
                if key not in costs:
                    costs[key] = estimate.measure(stylizer, target.style, params)
                    cost = costs[key]
                    sys.stdout.write(
                        f"measured on {stylizer.device} ({stylizer.precision}): "
                        + ", ".join(
                            f"{cost.seconds(w * h):.3f} s/step at {w}x{h}"
                            for w, h in (
                                estimate.working_size(estimate.ASPECT, edge)
                                for edge in estimate.SIZES
                            )
                        )
                        + "\n"
                    )
                seconds = estimate.predict(costs[key], params)
                sys.stdout.write(
                    f"{where}: a {width}:{height} photo at {params.size} px, {params.step_count} "
                    f"steps over {len(params.schedule())} scale(s): about {_duration(seconds)}\n"
                )
    except errors.StyleError as exc:
        raise CliError(str(exc), ExitCode.DATAERR) from exc
    finally:
        stylizer.close()
    sys.stdout.write(
        f"the network loaded in {loaded:.1f} s; a style's first photo also computes its "
        "targets (seconds), and bigger or smaller photos scale with their pixels\n"
    )
    return ExitCode.OK


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def _check(args: argparse.Namespace) -> int:
    from engine import errors, images
    from engine.vgg import resolve_weights

    config = _load(args.config)
    problems: list[str] = []
    for name, style in config.styles.items():
        for image in style.spec.images:
            try:
                picture = images.decode(image.path).image
            except (errors.BadImageError, OSError) as exc:
                problems.append(f"style {name}: {exc}")
            else:
                sys.stdout.write(
                    f"style {name}: {image.path} ({picture.width}x{picture.height}, "
                    f"weight {image.weight:g})\n"
                )
    engine = config.engine.engine
    try:
        weights = resolve_weights(engine.weights, engine.preprocess, download=False)
        sys.stdout.write(f"weights: {weights}\n")
    except errors.WeightsError:
        missing = _missing_weights(args.config, engine)
        if engine.download and engine.weights is None:
            # Whether the download will work is known only by trying it; check stays offline.
            sys.stderr.write(f"stylewatch: warning: {missing}\n")
        else:
            problems.append(missing)
    sys.stdout.write(f"input: {config.input}\noutput: {config.output}\nstate: {config.state}\n")
    for rule in config.rules:
        for target in rule.outputs:
            p = target.settings.params
            sys.stdout.write(
                f"rule {rule.index}: {' | '.join(rule.match)} -> style {target.style_name} "
                f"(size {p.size}, "
                f"{f'budget {p.seconds:g} s' if p.budgeted else f'steps {p.step_count}'}, "
                f"format {target.settings.output.format})\n"
            )
    if config.broker.url is not None:
        problems += _check_broker(config)
    if problems:
        raise CliError("\n".join(problems), ExitCode.CONFIG)
    sys.stdout.write("config OK\n")
    return ExitCode.OK


def _check_broker(config: Any) -> list[str]:
    """What the Redis server of broker.url says against the design (the coordinator refuses
    to start on an error); warnings are printed, errors returned as problems."""
    from daemon.broker import Broker, BrokerError, BrokerSettings

    broker = Broker(BrokerSettings.from_config(config.broker))
    try:
        check = broker.check_server()
    except BrokerError as exc:
        return [f"broker: {exc}"]
    finally:
        broker.close()
    sys.stdout.write(f"broker: {broker.url} ({check.server} {check.version})\n")
    for problem in check.problems:
        if problem.level == "warning":
            sys.stderr.write(f"stylewatch: warning: broker: {problem.message}\n")
    return [f"broker: {p.message}" for p in check.problems if p.level == "error"]


def _missing_weights(config_path: Path, engine: engine_params.EngineConfig) -> str:
    """What `check` says when the checkpoint is not there: what happens next and how to fix it."""
    from engine import vgg

    known = vgg.KNOWN_CHECKPOINTS[engine.preprocess]
    if engine.weights is not None:
        path = Path(engine.weights).expanduser()
        why = "engine.weights names it, so it is never downloaded"
    else:
        path = vgg.hub_checkpoint_path(engine.preprocess)
        why = "engine.download is off" if not engine.download else ""
    fix = (
        f"run `stylewatch weights fetch -c {config_path}` (it downloads {known.url}), "
        f"or copy the file to {path}"
    )
    if why:
        return f"VGG19 weights missing at {path} ({why}): {fix}"
    return (
        f"VGG19 weights not at {path} yet: a download will be tried at start; "
        f"without internet access the service cannot start: {fix}"
    )


def _weights_command(args: argparse.Namespace) -> int:
    from engine import errors, vgg

    if args.config is not None:
        engine = _load(args.config).engine.engine
        weights, preprocess = engine.weights, args.preprocess or engine.preprocess
    else:
        weights, preprocess = None, args.preprocess or "torchvision"
    known = vgg.KNOWN_CHECKPOINTS[preprocess]
    path = Path(weights) if weights is not None else vgg.hub_checkpoint_path(preprocess)
    if args.action == "path":
        sys.stdout.write(f"{path}\n")
        return ExitCode.OK if path.is_file() else ExitCode.NOINPUT
    try:
        if args.action == "fetch" and not path.is_file():
            sys.stdout.write(f"fetching {known.url}\n  -> {path}\n")
            try:
                vgg.fetch_checkpoint(known, path, progress=sys.stderr.isatty())
            except (OSError, RuntimeError) as exc:
                raise CliError(
                    f"cannot download {known.url} ({exc}); fetch it on another machine and copy "
                    f"it to {path}",
                    ExitCode.TEMPFAIL,
                ) from exc
        digest = vgg.verify_checkpoint(path, preprocess)
    except errors.WeightsError as exc:
        raise CliError(str(exc), ExitCode.DATAERR) from exc
    sys.stdout.write(f"{path}: VGG19 weights OK (sha256 {digest[:16]}...)\n")
    return ExitCode.OK


def _open_journal(args: argparse.Namespace) -> Any:
    from daemon.journal import Journal, JournalError

    # The journal is all these commands read: an input folder that is away (an unmounted share)
    # is worth a note, not a refusal.
    config = _load(args.config, require_input=False)
    if not config.input.is_dir():
        sys.stderr.write(
            f"stylewatch: note: the input folder {config.input} is missing; "
            "the service waits for it to come back\n"
        )
    try:
        return Journal.open(config.state, exclusive=False)
    except JournalError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from exc


def _status(args: argparse.Namespace) -> int:
    import json

    journal = _open_journal(args)
    try:
        counts = {state.value: n for state, n in journal.counts().items()}
        failures = journal.recent_failures(args.failures)
        waiting = journal.waiting(args.failures)
    finally:
        journal.close()
    workers = _remote_workers(_load(args.config, require_input=False))
    if args.json:
        sys.stdout.write(
            json.dumps(
                {
                    "styles": _styles_json(_load(args.config, require_input=False)),
                    "counts": counts,
                    "failures": [
                        {
                            "source": j.source,
                            "style": j.style,
                            "kind": j.error_kind,
                            "error": j.last_error,
                            "attempts": j.attempts,
                            "updated": j.updated,
                        }
                        for j in failures
                    ],
                    # Queued after trouble that can pass: tried again at `retry_at`.
                    "waiting": [
                        {
                            "source": j.source,
                            "style": j.style,
                            "kind": j.error_kind,
                            "error": j.last_error,
                            "since": j.first_failure,
                            "retry_at": j.not_before,
                        }
                        for j in waiting
                    ],
                    **({} if workers is None else {"workers": workers}),
                },
                indent=2,
            )
            + "\n"
        )
        return ExitCode.OK
    sys.stdout.write("  ".join(f"{state}: {n}" for state, n in sorted(counts.items())) + "\n")
    for job in waiting:
        sys.stdout.write(
            f"waiting {job.source} [{job.style}] {job.error_kind}: {job.last_error}"
            f" (next try {_clock(job.not_before)})\n"
        )
    for job in failures:
        sys.stdout.write(f"failed {job.source} [{job.style}] {job.error_kind}: {job.last_error}\n")
    for worker in workers or []:
        if "error" in worker:
            sys.stdout.write(f"workers: {worker['error']}\n")
            continue
        running = ", ".join(worker["running"]) or "idle"
        sys.stdout.write(
            f"worker {worker['name']} on {worker['host']} ({worker['device']}, pid "
            f"{worker['pid']}): {running}\n"
        )
    return ExitCode.OK


def _remote_workers(config: Any) -> list[dict[str, Any]] | None:
    """The live workers of a broker (None without one); one entry with `error` when Redis
    cannot be asked: the journal's part of the status still counts."""
    if config.broker.url is None:
        return None
    from daemon.broker import Broker, BrokerError, BrokerSettings

    broker = Broker(BrokerSettings.from_config(config.broker))
    try:
        return [
            {
                "name": w.name,
                "host": w.host,
                "device": w.device,
                "pid": w.pid,
                "heartbeat": w.heartbeat,
                "running": list(w.running),
            }
            for w in broker.workers()
        ]
    except BrokerError as exc:
        return [{"error": str(exc)}]
    finally:
        broker.close()


def _clock(epoch: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch).astimezone().strftime("%H:%M:%S")


def _styles_json(config: Any) -> dict[str, Any]:
    """Each style's paintings and the credit its outputs carry (null when none is given)."""
    import dataclasses

    return {
        name: {
            "images": [str(image.path) for image in style.spec.images],
            "credit": None if style.credit is None else dataclasses.asdict(style.credit),
        }
        for name, style in config.styles.items()
    }


def _retry(args: argparse.Namespace) -> int:
    journal = _open_journal(args)
    try:
        count = journal.retry_failed()
    finally:
        journal.close()
    sys.stdout.write(f"{count} failed job(s) queued again\n")
    return ExitCode.OK


def _web(args: argparse.Namespace) -> int:
    import socket

    from daemon import logs
    from daemon.config import is_loopback, parse_listen

    try:
        logs.configure(level=args.log_level, renderer=args.log_format)
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from exc
    # The journal and live.json are what it reads: an input folder that is away is shown, not
    # refused.
    config = _load(args.config, require_input=False)
    listen = args.listen or config.web.listen
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise CliError(f"--listen: {exc}", ExitCode.USAGE) from exc
    if not is_loopback(host) and config.web.token is None:
        raise CliError(
            f"refusing to listen on {listen} without a token: anyone who reaches it could see "
            f"the photos and retry jobs. Set web.token in {args.config} "
            "(`openssl rand -hex 16`), or listen on 127.0.0.1",
            ExitCode.CONFIG,
        )
    from daemon.web.server import serve

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        message = f"cannot listen on {listen}: {exc.strerror or exc}"
        raise CliError(message, ExitCode.CONFIG) from exc
    serve(config, sock, listen)
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from daemon import logs

    # stdout is for results (status --json is parsed by scripts); logs go to stderr. `run`
    # configures its own level and format.
    logs.configure(level="warning")
    try:
        code = args.handler(args)
    except CliError as exc:
        sys.stderr.write(f"stylewatch: error: {exc}\n")
        sys.exit(exc.code)
    except KeyboardInterrupt:
        sys.stderr.write("stylewatch: interrupted\n")
        sys.exit(130)
    sys.exit(code)


def _weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def _style_params(args: argparse.Namespace) -> engine_params.StyleParams:
    given: dict[str, Any] = {
        name: getattr(args, name)
        for name in (
            "size",
            "steps",
            "seconds",
            "scales",
            "style_weight",
            "content_weight",
            "tv_weight",
            "style_scale",
            "optimizer",
            "init",
            "pooling",
            "seed",
            "preserve_colors",
        )
        if getattr(args, name) is not None
    }
    try:
        # The budget first: under one, a preset gives the schedule's shape but not its steps.
        base = engine_params.StyleParams(seconds=args.seconds)
        if args.preset is not None:
            base = engine_params.with_preset(base, args.preset)
        return base.replace(**given)
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from exc


def _style_spec(args: argparse.Namespace) -> engine_params.StyleSpec:
    paths: list[Path] = args.styles
    blend: tuple[float, ...] = args.blend or (1.0,) * len(paths)
    if len(blend) != len(paths):
        raise CliError(f"--blend has {len(blend)} weights for {len(paths)} styles", ExitCode.USAGE)
    try:
        images = tuple(engine_params.StyleImage(p, w) for p, w in zip(paths, blend, strict=True))
        return engine_params.StyleSpec(images)
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from exc


def _stylize(args: argparse.Namespace) -> int:
    # Imported here so that `stylewatch --help` answers without loading torch.
    from daemon.outputs import write_atomic
    from engine import errors, images
    from engine.stylizer import Stylizer

    params = _style_params(args)
    style = _style_spec(args)
    for path in [args.content, *args.styles]:
        if not path.is_file():
            raise CliError(f"{path}: no such file", ExitCode.NOINPUT)
    try:
        fmt = images.format_for_suffix(args.output.suffix)
    except ValueError as exc:
        raise CliError(f"{args.output}: {exc}", ExitCode.USAGE) from exc
    # Checked before minutes of work, and never created: a typo in the folder would otherwise
    # scatter results into new folders.
    folder = args.output.parent
    if not folder.is_dir():
        raise CliError(
            f"cannot write {args.output}: the folder {folder} does not exist", ExitCode.CANTCREAT
        )
    if not 1 <= args.quality <= 100:
        raise CliError("--quality must be between 1 and 100", ExitCode.USAGE)
    try:
        config = engine_params.EngineConfig(
            device=args.device,
            weights=args.weights,
            preprocess=args.preprocess,
            precision=args.precision,
            download=not args.no_download,
        )
        decoded = images.decode(args.content)
        stylizer = Stylizer(config, download_progress=sys.stderr.isatty())
        with _ProgressBar(params.step_count) as bar:
            result = stylizer.stylize(decoded.image, style, params, progress=bar.update)
        data = images.encode(
            result.image,
            fmt,
            quality=args.quality,
            metadata=decoded.metadata,
            style=" + ".join(path.stem for path in args.styles),
            policy=args.metadata,
        )
    except errors.WeightsError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from exc
    except (errors.BadImageError, errors.StyleError) as exc:
        raise CliError(str(exc), ExitCode.DATAERR) from exc
    except errors.OutOfMemoryError as exc:
        raise CliError(str(exc), ExitCode.TEMPFAIL) from exc
    except errors.NumericalError as exc:
        raise CliError(str(exc), ExitCode.SOFTWARE) from exc
    except errors.EngineError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from exc
    try:
        write_atomic(args.output, data, overwrite=True)
    except OSError as exc:
        raise CliError(
            f"cannot write {args.output}: {exc.strerror or exc}", ExitCode.CANTCREAT
        ) from exc
    width, height = result.image.size
    sys.stdout.write(
        f"{args.output}: {width}x{height}, {result.steps} steps in {result.seconds:.1f} s "
        f"on {result.device}, loss {result.loss.total:.4g}\n"
    )
    return ExitCode.OK


class _ProgressBar:
    """A tqdm bar on a terminal; silent otherwise (logs and pipes want no carriage returns)."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit="step", disable=not sys.stderr.isatty(), leave=False)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def update(self, progress: engine_params.Progress) -> None:
        self._bar.total = progress.steps  # a time budget revises its plan as it goes
        self._bar.set_postfix_str(f"{progress.size}px loss {progress.loss:.4g}", refresh=False)
        self._bar.update(progress.step - self._bar.n)
