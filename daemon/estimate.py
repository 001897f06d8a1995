"""How long one photo takes on this machine: measured, not guessed (`stylewatch estimate`, and
`make run` before its first photo).

A step costs a fixed part (launches, the optimiser's bookkeeping) plus a part that grows with the
pixels (VGG19's passes). A few steps are timed at two small sizes, a line is drawn through the two
costs, and the photo's schedule (steps per scale, each at its own pixel count) is priced with it.
"""

from __future__ import annotations

import functools
import itertools
import random
import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from engine.params import Progress, StyleParams, StyleSpec
from engine.planner import working_size
from engine.stylizer import Stylizer

__all__ = [
    "ASPECT",
    "SIZES",
    "StepCost",
    "fit",
    "measure",
    "predict",
    "step_seconds",
    "working_size",
]

ASPECT = (3, 2)  # a camera photo's shape, landscape
SIZES = (96, 192)  # long edges timed; small, so that measuring takes seconds
WARMUP_STEPS = 2  # the first steps at a new size pay for one-off set-up
TIMED_STEPS = 6


@dataclass(frozen=True)
class StepCost:
    """Seconds one optimisation step takes, as a function of the photo's pixels."""

    fixed: float
    per_pixel: float

    def seconds(self, pixels: int) -> float:
        return max(0.0, self.fixed + self.per_pixel * pixels)


def step_seconds(reports: Sequence[Progress], warmup: int = WARMUP_STEPS) -> float:
    """Median seconds per step after the warm-up, from a run's progress reports (the median: one
    step slowed down by another program should not set the estimate)."""
    timed = [p for p in reports if p.step > warmup]
    rates = [
        (b.seconds - a.seconds) / (b.step - a.step)
        for a, b in itertools.pairwise(timed)
        if b.step > a.step
    ]
    if rates:
        return statistics.median(rates)
    last = reports[-1]  # reported in chunks (a GPU): the whole run, set-up included
    return last.seconds / last.step


def fit(points: Sequence[tuple[int, float]]) -> StepCost:
    """The line through (pixels, seconds per step) of the smallest and the largest size."""
    (p0, s0), (p1, s1) = min(points), max(points)
    if p1 > p0 and s1 > s0:
        per_pixel = (s1 - s0) / (p1 - p0)
        fixed = s1 - per_pixel * p1
        if fixed >= 0:
            return StepCost(fixed=fixed, per_pixel=per_pixel)
    # The larger size took no longer, or more than its pixels explain: the machine's load changed
    # while it was measured. The larger size alone, scaled by pixels, is the safer guess.
    return StepCost(fixed=0.0, per_pixel=s1 / p1)


def measure(stylizer: Stylizer, style: StyleSpec, params: StyleParams) -> StepCost:
    """Time a few steps of this style and these settings at two small sizes."""
    points = []
    rng = random.Random(0)
    for edge in SIZES:
        width, height = working_size(ASPECT, edge)
        # Noise: the step time does not depend on what the picture shows.
        photo = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
        small = params.replace(size=edge, steps=WARMUP_STEPS + TIMED_STEPS, seconds=None, scales=1)
        reports: list[Progress] = []
        _in_a_thread(
            functools.partial(stylizer.stylize, photo, style, small, progress=reports.append)
        )
        points.append((width * height, step_seconds(reports)))
    return fit(points)


def _in_a_thread(work: Callable[[], object]) -> None:
    """Run `work` in a thread of its own, as the service's worker runs the engine: here, torch
    with two threads ran steps 20x slower called from a process's main thread than from another
    thread (1.44 s against 0.07 s at 128 px), and the estimate is of the service."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the caller's thread, raised there
            failure.append(exc)

    thread = threading.Thread(target=run, name="stylewatch-estimate")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def predict(cost: StepCost, params: StyleParams, aspect: tuple[int, int] = ASPECT) -> float:
    """Seconds of optimisation for one photo of this shape with these settings."""
    total = 0.0
    for long_edge, steps in params.schedule():
        width, height = working_size(aspect, long_edge)
        total += steps * cost.seconds(width * height)
    return total
