"""A coarse-to-fine schedule that fills a time budget, planned from measured step costs.

Pure functions and frozen records: the Stylizer measures what a step costs on its device (by
pixels per pass, at its precision) and asks here how many scales to run, at which sizes and for
how many steps each. Nothing here reads a clock, so the plans are tested with made-up costs.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A scale's set-up (the photo's content features, the first loss of L-BFGS) costs about a forward
# pass; counted as one step of that size to keep a margin.
SETUP_STEPS = 1.0
# The final loss, evaluated without gradients at the optimised size: about half a step.
EVALUATION_STEPS = 0.5
# A coarse scale planned for fewer steps than this is dropped and its time given to the others:
# L-BFGS needs a few steps to build its curvature, and the set-up costs as much as one.
MIN_COARSE_STEPS = 5
# The plan fills this share of the budget: the clock is read between steps, and a step that
# would cross the end is not started, so a plan to the full budget would stop short anyway.
PLAN_SHARE = 0.95
# A budget too small for one step at the output size is planned at this fraction of the edge,
# then this again, ..., and the result is upsampled.
SHRINK = 0.8


@dataclass(frozen=True)
class StepCosts:
    """Seconds per optimisation step by pixels per pass (photos x height x width), measured."""

    points: tuple[tuple[int, float], ...] = ()  # (pixels, seconds), sorted by pixels

    def seconds(self, pixels: int) -> float:
        """A step's cost at `pixels`: interpolated between measured sizes, and beyond them
        proportional to the pixels from the nearest (a step's work grows with its pixels)."""
        if not self.points:
            raise ValueError("no step has been measured yet")
        sizes = [p for p, _ in self.points]
        at = bisect.bisect_left(sizes, pixels)
        if at < len(sizes) and sizes[at] == pixels:
            return self.points[at][1]
        if at == 0 or at == len(sizes):
            near_pixels, near_seconds = self.points[0 if at == 0 else -1]
            return near_seconds * pixels / near_pixels
        (p0, s0), (p1, s1) = self.points[at - 1], self.points[at]
        return s0 + (s1 - s0) * (pixels - p0) / (p1 - p0)

    def measured(self, pixels: int, seconds: float, weight: float = 0.5) -> StepCosts:
        """These costs refined by a new measurement: blended into the one at the same size
        (the machine's load drifts), or added."""
        if not (math.isfinite(seconds) and seconds > 0):
            return self
        table = dict(self.points)
        old = table.get(pixels)
        table[pixels] = seconds if old is None else old + weight * (seconds - old)
        return StepCosts(tuple(sorted(table.items())))


@dataclass(frozen=True)
class Plan:
    """A schedule planned to a budget."""

    schedule: tuple[tuple[int, int], ...]  # (long edge, steps) per scale, coarsest first
    seconds: float  # what it is expected to take, set-ups and the final evaluation included
    upsampled_from: int | None = None  # the last scale's edge, when under the output's

    @property
    def steps(self) -> int:
        return sum(steps for _, steps in self.schedule)


def plan(
    budget: float,
    output_edge: int,
    ladder: Callable[[int], Sequence[int]],
    pixels: Callable[[int], int],
    costs: StepCosts,
    *,
    ratio: float,
) -> Plan:
    """The schedule that fills `budget` seconds, ending at `output_edge` when one step there fits.

    `ladder(edge)` gives the long edges of a coarse-to-fine run ending at `edge` (coarsest first;
    empty when `edge` is too small for the network), `pixels(edge)` the pixels of one pass at that
    edge. Steps are shared between scales as in StyleParams.schedule(): each finer scale gets
    1/`ratio` of the steps of the one before. Coarse scales that would get fewer than
    MIN_COARSE_STEPS are dropped. When even one step at the output size does not fit, the run
    ends at a smaller edge (SHRINK at a time) and the result is upsampled; when nothing fits,
    one step at the smallest edge the network takes.
    """
    edge = output_edge
    smallest: Plan | None = None
    while True:
        edges = list(ladder(edge))
        if not edges:
            break
        found = fill(budget, edges, [costs.seconds(pixels(e)) for e in edges], ratio)
        if found is not None:
            return _upsampled(found, output_edge)
        cost = costs.seconds(pixels(edge))
        smallest = Plan(((edge, 1),), (SETUP_STEPS + 1 + EVALUATION_STEPS) * cost)
        next_edge = math.floor(edge * SHRINK)
        if next_edge >= edge or next_edge < 1:
            break
        edge = next_edge
    if smallest is None:
        raise ValueError(f"no schedule ends at {output_edge} px: too small for the network")
    return _upsampled(smallest, output_edge)


def _upsampled(found: Plan, output_edge: int) -> Plan:
    last = found.schedule[-1][0]
    return Plan(found.schedule, found.seconds, None if last == output_edge else last)


def fill(budget: float, edges: list[int], costs: list[float], ratio: float) -> Plan | None:
    """The most scales of `edges` (dropping the coarsest first) whose steps fill the budget,
    or None when not even one step at the last edge fits."""
    room = budget * PLAN_SHARE - EVALUATION_STEPS * costs[-1]
    for first in range(len(edges)):
        sizes, prices = edges[first:], costs[first:]
        count = len(sizes)
        shares = [ratio ** (count - 1 - i) for i in range(count)]
        left = room - SETUP_STEPS * sum(prices)
        if left < prices[-1]:
            continue  # the set-ups alone leave no room for a step at the end: fewer scales
        per_share = left / sum(w * c for w, c in zip(shares, prices, strict=True))
        steps = [math.floor(per_share * w) for w in shares]
        if count > 1 and min(steps[:-1]) < MIN_COARSE_STEPS:
            continue
        if steps[-1] < 1:
            # The last scale gets one step; the coarser ones share what is left.
            rest = left - prices[-1]
            weighted = sum(w * c for w, c in zip(shares[:-1], prices[:-1], strict=True))
            steps = [math.floor(rest / weighted * w) for w in shares[:-1]] + [1]
            if min(steps[:-1]) < MIN_COARSE_STEPS:
                continue
        # Flooring leaves some time over: spend it on the coarsest scale, where steps are cheap.
        spent = sum(n * c for n, c in zip(steps, prices, strict=True))
        steps[0] += math.floor(max(0.0, left - spent) / prices[0])
        expected = (
            sum((n + SETUP_STEPS) * c for n, c in zip(steps, prices, strict=True))
            + EVALUATION_STEPS * prices[-1]
        )
        return Plan(tuple(zip(sizes, steps, strict=True)), expected)
    return None


def working_size(size: tuple[int, int], long_edge: int) -> tuple[int, int]:
    """(width, height) scaled so that the long edge is `long_edge`, each edge at least 1."""
    width, height = size
    scale = long_edge / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))
