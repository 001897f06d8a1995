"""A batch's progress as the log shows it: a line at a steady interval, with a percentage and an
estimate of the time left, whatever the working sizes of its photos.

The engine runs the photos of a batch in groups of one working size, one after the other, and
each group reports its own steps (1..steps) and its own clock. The reporter joins them into one
run: a step counter that goes back marks the next group, and each group counts for its share of the
work (photos x pixels: a step costs about the same per pixel at any size). Within a group, a step
counts for the pixels of its scale: the last scale's steps cost 4x the one before it, so counting
steps alone would promise the end far too soon.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.params import Progress
from engine.planner import working_size


@dataclass(frozen=True)
class Report:
    """What one progress line says of the whole batch."""

    percent: float  # of the batch's work, 0..100
    eta_seconds: float | None  # time left at the pace so far; None before the first step
    seconds: float  # since the batch started


def group_weights(sizes: Sequence[tuple[int, int]], long_edge: int) -> list[float]:
    """Each engine group's share of the work, in the order the engine runs them (the order in
    which each working size first appears: see Stylizer.stylize_batch)."""
    groups: dict[tuple[int, int], float] = {}
    for size in sizes:
        width, height = working_size(size, long_edge)
        groups[(width, height)] = groups.get((width, height), 0.0) + width * height
    return list(groups.values())


class BatchProgress:
    """Feed it every Progress of a batch; it answers a Report when a line is due, else None.

    A line is due `interval` seconds after the last one (by the injected clock, not the engine's
    per-group seconds) and at the last step of each group.
    """

    def __init__(
        self,
        weights: Sequence[float],
        *,
        interval: float,
        schedule: Sequence[tuple[int, int]] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._weights = [w for w in weights if w > 0] or [1.0]
        self._schedule = tuple(schedule)  # (long edge, steps) per scale: StyleParams.schedule()
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self._group = 0
        self._last_step = 0
        self._last_seconds = 0.0

    def update(self, progress: Progress) -> Report | None:
        if progress.step < self._last_step or progress.seconds < self._last_seconds:
            # The next group started (its steps and clock begin again). More groups than
            # expected (a group split to fit in memory) keep the last share: an estimate.
            self._group = min(self._group + 1, len(self._weights) - 1)
        self._last_step, self._last_seconds = progress.step, progress.seconds
        now = self._clock()
        if progress.step < progress.steps and now - self._last_line < self._interval:
            return None
        self._last_line = now
        done = sum(self._weights[: self._group])
        done += self._weights[self._group] * self._within(progress)
        fraction = min(1.0, done / sum(self._weights))
        elapsed = now - self._started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        return Report(
            percent=round(100 * fraction, 1),
            eta_seconds=None if eta is None else round(eta, 1),
            seconds=round(elapsed, 1),
        )

    def _within(self, progress: Progress) -> float:
        """The share of a group's work done: its steps weighted by their scale's pixels."""
        if sum(n for _, n in self._schedule) != progress.steps:
            # Another plan than the settings' (scales dropped for a thin photo, tiles): by steps.
            return progress.step / max(1, progress.steps)
        left, done = progress.step, 0.0
        for edge, steps in self._schedule:
            taken = min(steps, left)
            done += taken * edge**2
            left -= taken
        return done / sum(steps * edge**2 for edge, steps in self._schedule)
