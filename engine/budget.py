"""One run under a time budget: the plan, its revisions at each scale, and the clock between steps.

The planning itself is engine.planner's (pure); this holds the clock. A scale ends early when the
next step would cross its share of the time, so the run finishes within the budget even when the
machine turns out slower than measured (another process, thermal throttling), and each scale's
measured step cost refines the costs the next plan is made from.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from engine.optimize import AfterStep
from engine.planner import EVALUATION_STEPS, SETUP_STEPS, Plan, StepCosts, fill, plan

# The last scale runs until its time is up, up to this many times the steps planned for it (the
# plan's costs are estimates; L-BFGS keeps a history sized to the steps it may run).
LAST_SCALE_STRETCH = 4
# A coarse scale may overrun its planned time by this share before it is cut: its steps are
# cheap, and the plan of the next scales is made again from what is left anyway.
COARSE_SLACK = 1.1


class BudgetRun:
    """The clock side of one group's optimisation under `seconds` of budget."""

    def __init__(
        self,
        seconds: float,
        *,
        clock: Callable[[], float],
        costs: StepCosts,
        pixels: Callable[[int], int],
        ratio: float,
    ) -> None:
        self.seconds = seconds
        self._clock = clock
        self.started = clock()
        self.deadline = self.started + seconds
        self.costs = costs  # refined by every scale; the Stylizer keeps the result
        self._pixels = pixels
        self._ratio = ratio

    def left(self) -> float:
        return self.deadline - self._clock()

    def used(self) -> float:
        return self._clock() - self.started

    def cost(self, edge: int) -> float:
        return self.costs.seconds(self._pixels(edge))

    def first_plan(self, output_edge: int, ladder: Callable[[int], Sequence[int]]) -> Plan:
        return plan(self.left(), output_edge, ladder, self._pixels, self.costs, ratio=self._ratio)

    def replan(self, edges: Sequence[int]) -> dict[int, int]:
        """Steps per edge for the scales still to run, from the time left (0: skipped). When
        nothing fits, one step at the last edge: a run always ends with an optimised picture."""
        found = fill(self.left(), list(edges), [self.cost(e) for e in edges], self._ratio)
        planned = dict(found.schedule) if found is not None else {edges[-1]: 1}
        return {edge: planned.get(edge, 0) for edge in edges}

    def scale(self, edge: int, steps: int, later: Sequence[int], *, last_edge: int) -> ScaleClock:
        """The clock of one scale of `steps` planned steps, with the scales at `later` edges
        still to come after it (`last_edge` the run's final one)."""
        now = self._clock()
        reserve = EVALUATION_STEPS * self.cost(last_edge)
        reserve += sum((SETUP_STEPS + 1) * self.cost(e) for e in later)
        end = self.deadline - reserve
        if later:
            end = min(end, now + COARSE_SLACK * (SETUP_STEPS + steps) * self.cost(edge))
        return ScaleClock(self, edge, end, started=now)

    def measured(self, edge: int, seconds_per_step: float) -> None:
        self.costs = self.costs.measured(self._pixels(edge), seconds_per_step)


class ScaleClock:
    """Ends a scale before the step that would cross `end`, and measures its steps."""

    def __init__(self, run: BudgetRun, edge: int, end: float, *, started: float) -> None:
        self._run = run
        self._edge = edge
        self._end = end
        self._started = started
        self._times: list[float] = []

    @property
    def steps(self) -> int:
        """Steps run so far."""
        return len(self._times)

    def after_step(self, step: int, image: torch.Tensor) -> bool:
        now = self._run._clock()
        self._times.append(now)
        return now + self._next_step() > self._end

    def _next_step(self) -> float:
        """What the next step is expected to cost, erring long: the plan's figure or the first
        step with the scale's set-up, whichever is more, until two steps are measured; then
        the mean or the latest step, whichever is more (a machine that gets busier mid-scale
        shows in its latest step first)."""
        times = self._times
        if len(times) < 2:
            return max(self._run.cost(self._edge), times[-1] - self._started)
        mean = (times[-1] - times[0]) / (len(times) - 1)
        return max(mean, times[-1] - times[-2])

    def estimate(self, step: int) -> int:
        """The run's steps as now expected, `step` of them done: this scale goes on while the
        measured steps fit before its end."""
        times = self._times
        if len(times) < 2:
            return step
        per_step = (times[-1] - times[0]) / (len(times) - 1)
        return step + max(0, math.floor((self._end - times[-1]) / per_step))

    def finish(self) -> None:
        """Record this scale's step cost (from its second step on: the first carries set-up)."""
        times = self._times
        if len(times) >= 2:
            self._run.measured(self._edge, (times[-1] - times[0]) / (len(times) - 1))
        elif times:
            # One step only: it and the set-up, shared by their estimated weights.
            self._run.measured(self._edge, (times[0] - self._started) / (1 + SETUP_STEPS))


def chain(*hooks: AfterStep | None) -> AfterStep | None:
    """One after-step hook that runs all of `hooks` (each one, always) and ends the scale when
    any of them says so."""
    present = [h for h in hooks if h is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def after_step(step: int, image: torch.Tensor) -> bool:
        ending = [h(step, image) for h in present]
        return any(ending)

    return after_step
