"""`stylewatch` command line. The only place in the project that calls sys.exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from daemon.clicommon import (
    CliError,
    ExitCode,
    config_argument,
    load_config_file,
)
from daemon.cliinspect import (
    check_command,
    estimate_command,
    retry_command,
    status_command,
    weights_command,
)
from daemon.clistylize import blend_weights, stylize_command
from engine import params as engine_params
from engine.metadata import METADATA_POLICIES

__all__ = ["CliError", "ExitCode", "build_parser", "main"]


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
        type=blend_weights,
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
    one.set_defaults(handler=stylize_command)

    run = commands.add_parser(
        "run",
        help="run the watch-folder service",
        description="Watch the input folder and stylize every new photo.",
    )
    config_argument(run)
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
    config_argument(check)
    check.set_defaults(handler=check_command)

    estimate = commands.add_parser(
        "estimate",
        help="how long one photo takes here, measured",
        description="Time a few optimisation steps at two small sizes on this machine, with the "
        "config's engine settings, and price each rule's schedule (steps per scale) with them.",
    )
    config_argument(estimate)
    estimate.set_defaults(handler=estimate_command)

    status = commands.add_parser("status", help="what happened to the photos (from the journal)")
    config_argument(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--failures", type=int, default=10, help="how many recent failures to show")
    status.set_defaults(handler=status_command)

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
    weights.set_defaults(handler=weights_command)

    worker = commands.add_parser(
        "worker",
        help="stylize for a coordinator on another host (broker.url), one process per GPU",
        description="Take batches from Redis (the config's broker.url), stylize them on one "
        "device, stage each artwork in the shared output and report it to the coordinator.",
    )
    config_argument(worker)
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
    config_argument(retry)
    retry.set_defaults(handler=retry_command)

    web = commands.add_parser(
        "web",
        help="serve the booth page, the dashboard, /metrics and health checks",
        description="A web server beside the service: /booth, / (dashboard), /metrics, /healthz, "
        "/readyz. Reads the journal and the service's live state; listens on loopback unless "
        "web.token is set.",
    )
    config_argument(web)
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
    from daemon.worker import WorkerDiedError
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
    except (errors.EngineError, WorkerDiedError) as exc:
        # The config was validated: what is left is the device (a GPU not ready yet at boot) or
        # a worker process that died while its model loaded. TEMPFAIL lets systemd restart the
        # service; CONFIG (78) would stop it for good.
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
    config = load_config_file(args.config)
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
    config = load_config_file(args.config, require_input=False)
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
