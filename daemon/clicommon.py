"""What the command line's modules share: exit codes, the error that carries one, reading the
config. Only daemon/cli.py turns a CliError into an exit."""

from __future__ import annotations

import argparse
import enum
from pathlib import Path
from typing import Any


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


def config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, required=True, help="the YAML config file")


def load_config_file(path: Path, *, require_input: bool = True) -> Any:
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


def apply_threads(config: Any) -> None:
    if config.engine.threads is not None:
        import torch

        # Before the engine is built: torch sizes its thread pool on first use.
        torch.set_num_threads(config.engine.threads)
