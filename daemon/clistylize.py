"""`stylewatch stylize`: one photo from the command line, with a progress bar."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from daemon.clicommon import CliError, ExitCode
from engine import params as engine_params


def blend_weights(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def style_params(args: argparse.Namespace) -> engine_params.StyleParams:
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


def stylize_command(args: argparse.Namespace) -> int:
    # Imported here so that `stylewatch --help` answers without loading torch.
    from daemon.outputs import write_atomic
    from engine import errors, images
    from engine.stylizer import Stylizer

    params = style_params(args)
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
