"""The daemon's errors. The CLI turns a ConfigError into exit code 78 (EX_CONFIG)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


class DaemonError(Exception):
    """Base of every error the daemon raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config file, located precisely enough to fix it without searching."""

    file: Path
    line: int | None  # 1-based; None when the problem has no place (an unreadable file)
    key: str  # a key path such as `rules[1].styles`; "" for the document itself
    message: str

    def __str__(self) -> str:
        place = str(self.file) if self.line is None else f"{self.file}:{self.line}"
        return f"{place}: {self.key}: {self.message}" if self.key else f"{place}: {self.message}"


class ConfigError(DaemonError):
    """The config cannot be used. Carries every problem found, so one edit can fix them all."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        # The same problem can be found twice (a bad default reaches every rule): report it once.
        # In line order, as an editor shows the file.
        unique = dict.fromkeys(problems)
        self.problems: tuple[Problem, ...] = tuple(
            sorted(unique, key=lambda p: (str(p.file), p.line or 0))
        )
        super().__init__("\n".join(str(problem) for problem in self.problems))
