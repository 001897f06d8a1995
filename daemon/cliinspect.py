"""The commands that look without running the service: check, estimate, status, retry and
weights. Each returns an exit code or raises CliError (daemon/cli.py exits)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from daemon.clicommon import CliError, ExitCode, apply_threads, load_config_file
from engine import params as engine_params


def estimate_command(args: argparse.Namespace) -> int:
    import time

    from daemon import estimate
    from engine import errors
    from engine.stylizer import Stylizer

    config = load_config_file(args.config)
    apply_threads(config)
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


def check_command(args: argparse.Namespace) -> int:
    from engine import errors, images
    from engine.vgg import resolve_weights

    config = load_config_file(args.config)
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


def weights_command(args: argparse.Namespace) -> int:
    from engine import errors, vgg

    if args.config is not None:
        engine = load_config_file(args.config).engine.engine
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
    config = load_config_file(args.config, require_input=False)
    if not config.input.is_dir():
        sys.stderr.write(
            f"stylewatch: note: the input folder {config.input} is missing; "
            "the service waits for it to come back\n"
        )
    try:
        return Journal.open(config.state, exclusive=False)
    except JournalError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from exc


def status_command(args: argparse.Namespace) -> int:
    import json

    journal = _open_journal(args)
    try:
        counts = {state.value: n for state, n in journal.counts().items()}
        failures = journal.recent_failures(args.failures)
        waiting = journal.waiting(args.failures)
    finally:
        journal.close()
    workers = _remote_workers(load_config_file(args.config, require_input=False))
    if args.json:
        sys.stdout.write(
            json.dumps(
                {
                    "styles": _styles_json(load_config_file(args.config, require_input=False)),
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


def retry_command(args: argparse.Namespace) -> int:
    journal = _open_journal(args)
    try:
        count = journal.retry_failed()
    finally:
        journal.close()
    sys.stdout.write(f"{count} failed job(s) queued again\n")
    return ExitCode.OK
