"""How a batch is run, planned as pure functions and frozen records: no torch, no clock.

- Which photos share a pass (same working size, same resume point, as many as the memory budget
  holds), and where a photo resumed from a snapshot starts.
- The scales of a photo (its settings' schedule fitted to its shape) and, for an output larger
  than the memory budget, the scales optimised whole and the full-size tiles.
- Under a time budget: a coarse-to-fine schedule that fills it, from measured step costs. The
  Stylizer measures what a step costs on its device (by pixels per pass, at its precision) and
  asks here how many scales to run, at which sizes and for how many steps each; the plans are
  tested with made-up costs.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.errors import BadImageError
from engine.params import Snapshot, StyleParams
from engine.tiles import Tile, tile_grid

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


def pixels(size: tuple[int, int], long_edge: int) -> int:
    width, height = working_size(size, long_edge)
    return width * height


@dataclass(frozen=True)
class Resume:
    """Where photos resumed from snapshots start: `step` steps into `schedule`, at `scale`."""

    schedule: tuple[tuple[int, int], ...]
    scale: int
    step: int


def resume_point(
    saved: Snapshot, final: tuple[int, int], params: StyleParams, pixel_budget: int
) -> Resume | str:
    """Where a snapshot lets a photo of working size `final` start, or why it cannot."""
    schedule = tuple((int(e), int(n)) for e, n in saved.schedule)
    if not schedule or schedule[-1][0] != params.size:
        end = schedule[-1][0] if schedule else None
        return f"its schedule ends at {end} px, this photo's at {params.size} px"
    if not 1 <= saved.scale <= len(schedule):
        return f"scale {saved.scale} is not one of its {len(schedule)} scales"
    before = sum(n for _, n in schedule[: saved.scale - 1])
    expected = working_size(final, schedule[saved.scale - 1][0])
    if not before <= saved.step <= before + schedule[saved.scale - 1][1]:
        return f"step {saved.step} is not within scale {saved.scale}"
    if saved.image.size != expected:
        return (
            f"its image is {saved.image.size[0]}x{saved.image.size[1]}, "
            f"the photo at that scale {expected[0]}x{expected[1]}"
        )
    if final[0] * final[1] > pixel_budget:
        return "the photo is optimised in tiles, which do not resume"
    return Resume(schedule, saved.scale, saved.step)


def passes(
    shapes: Sequence[tuple[int, int]], points: Sequence[Resume | None], pixel_budget: int
) -> list[tuple[Resume | None, list[int]]]:
    """The photos (by index) that run together: same working shape and start, as many per pass
    as the memory budget holds (at least one: it may tile); in the order first seen."""
    groups: dict[tuple[tuple[int, int], Resume | None], list[int]] = {}
    for index, (shape, point) in enumerate(zip(shapes, points, strict=True)):
        # Photos that start at different points cannot share a pass.
        groups.setdefault((shape, point), []).append(index)
    chunks: list[tuple[Resume | None, list[int]]] = []
    for (shape, point), indices in groups.items():
        per_pass = max(1, pixel_budget // (shape[0] * shape[1]))
        chunks += [(point, indices[i : i + per_pass]) for i in range(0, len(indices), per_pass)]
    return chunks


def used_layers(params: StyleParams) -> tuple[str, ...]:
    return params.content_layers + params.style_layers


def fitted_schedule(
    size: tuple[int, int], params: StyleParams, min_edge: int
) -> tuple[tuple[int, int], ...]:
    """params.schedule() for a photo of this shape: scales whose short edge would be under
    `min_edge` (the network would pool it away) are dropped and their steps given to the next."""
    kept: list[tuple[int, int]] = []
    carried = 0
    schedule = params.schedule()
    for long_edge, steps in schedule[:-1]:
        if min(working_size(size, long_edge)) >= min_edge:
            kept.append((long_edge, steps + carried))
            carried = 0
        else:
            carried += steps
    final_edge, final_steps = schedule[-1]
    short = min(working_size(size, final_edge))
    if short < min_edge:
        width, height = size
        raise BadImageError(
            f"the photo is {width}x{height}: at size {final_edge} its short edge would be "
            f"{short} px, and VGG19 needs at least {min_edge}; raise the size setting",
            reason="too_small",
        )
    return (*kept, (final_edge, final_steps + carried))


def ladder(
    final: tuple[int, int], params: StyleParams, min_edge: int, count: int, pixel_budget: int
) -> Callable[[int], list[int]]:
    """For plan(): the coarse-to-fine edges of a run that ends at a given edge (params'
    scales, those the network can see), or none when that edge is too small for the network
    or too large for the memory budget (a budgeted run upsamples rather than tiles)."""

    def edges(edge: int) -> list[int]:
        if edge < 16 or min(working_size(final, edge)) < min_edge:
            return []
        if pixels(final, edge) * count > pixel_budget:
            return []
        sizes = params.replace(size=edge, min_scale_size=min(edge, params.min_scale_size))
        coarse = sizes.scale_sizes()[:-1]
        return [e for e in coarse if min(working_size(final, e)) >= min_edge] + [edge]

    return edges


@dataclass(frozen=True)
class StepPlan:
    """The scales optimised whole, then (for outputs over the budget) the full-size tiles."""

    whole: list[tuple[int, int]]  # (long edge, steps), coarsest first
    tile_steps: int = 0
    tiles: list[Tile] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(steps for _, steps in self.whole) + self.tile_steps * len(self.tiles)


def step_plan(
    final: tuple[int, int],
    schedule: Sequence[tuple[int, int]],
    size: int,
    pixel_budget: int,
    *,
    may_tile: bool,
) -> StepPlan:
    """`schedule` as run for a photo of working size `final` (long edge `size`): whole when it
    fits the memory budget (or may not tile), else every scale that fits whole and the last
    (full-size) scale tile by tile."""
    if not (may_tile and final[0] * final[1] > pixel_budget):
        return StepPlan(list(schedule))
    whole = [(e, n) for e, n in schedule[:-1] if pixels(final, e) <= pixel_budget]
    if not whole:
        whole = [(fitting_edge(final, size, pixel_budget), schedule[0][1])]
    tiles = tile_grid(final[1], final[0], tile_edge(pixel_budget))
    return StepPlan(whole, tile_steps=schedule[-1][1], tiles=tiles)


def fitting_edge(size: tuple[int, int], long_edge: int, budget: int) -> int:
    """The largest long edge (at most `long_edge`) whose picture fits in `budget` pixels."""
    edge = long_edge
    while edge > 16 and pixels(size, edge) > budget:
        edge = int(edge * 0.9)
    return edge


def tile_edge(budget: int) -> int:
    """Square tiles that fit the budget, in multiples of 16 so that pooling divides them."""
    return max(32, math.isqrt(budget) // 16 * 16)
