"""One group's optimisation, coarse to fine: the scale loop, the full-size tiles, snapshots.

A group is photos of one working size that run as one batch (engine.planner decides which). The
loop here walks the plan's scales, each one a call of engine.optimize.run_scale; what a call of
stylize_batch() asked for (progress, cancellation, snapshots) comes down in one RunContext.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from engine.budget import LAST_SCALE_STRETCH, BudgetRun, ScaleClock, chain
from engine.device import Autocast, MemoryBudget, resize, to_pil, to_tensor
from engine.images import decode
from engine.optimize import (
    AfterStep,
    GraphPolicy,
    Objective,
    ProgressCallback,
    StepReport,
    StopCheck,
    run_scale,
)
from engine.params import LossTerms, Snapshot, SnapshotCallback, StyleParams, StyleSpec
from engine.planner import Resume, StepCosts, StepPlan, working_size
from engine.targets import StyleTargets, Targets
from engine.tiles import feather
from engine.vgg import VGGFeatures


@dataclass(frozen=True)
class RunContext:
    """What one stylize_batch() call carries down to every group, scale and tile."""

    progress: ProgressCallback | None = None
    should_stop: StopCheck | None = None
    snapshot: SnapshotCallback | None = None
    snapshot_every: float = 10.0


@dataclass
class Workbench:
    """What the Stylizer holds for the life of the process, as the scale loop needs it."""

    model: VGGFeatures
    device: torch.device
    autocast: Autocast
    graphs: GraphPolicy
    targets: StyleTargets
    budget: MemoryBudget
    # Snapshot intervals and time budgets are measured on this clock; tests inject theirs.
    clock: Callable[[], float]
    # What an optimisation step costs on this device at this precision, by pixels per pass:
    # calibrated once, refined by every scale that runs under a time budget.
    step_costs: StepCosts = dataclasses.field(default_factory=StepCosts)

    def to_tensor(self, picture: Image.Image) -> torch.Tensor:
        return to_tensor(picture, self.device)

    def objective(
        self,
        photo: torch.Tensor,
        style: StyleSpec,
        params: StyleParams,
        long_edge: int,
        style_targets: Targets | None = None,
    ) -> Objective:
        with torch.no_grad(), self.autocast():
            features = self.model(photo, params.content_layers, params.pooling)
        content_targets = {name: f.float() for name, f in features.items()}
        if style_targets is not None:
            pass  # given: a tile of a larger picture shares the whole picture's targets
        elif params.preserve_colors == "histogram":
            per_photo = [
                self.targets.get(style, params, long_edge, photo=photo[i : i + 1])
                for i in range(photo.shape[0])
            ]
            style_targets = {
                layer: torch.cat([t[layer] for t in per_photo]) for layer in params.style_layers
            }
        else:
            style_targets = self.targets.get(style, params, long_edge, photo=None)
        return Objective(
            model=self.model,
            params=params,
            content_targets=content_targets,
            style_targets=style_targets,
            autocast=self.autocast,
        )


class Snapshots:
    """Hands the pixels being optimised to a snapshot callback at most every `every` seconds."""

    def __init__(
        self,
        callback: SnapshotCallback,
        every: float,
        clock: Callable[[], float],
        indices: tuple[int, ...],
    ) -> None:
        self._callback = callback
        self._every = every
        self._clock = clock
        self._indices = indices
        self._last = clock()

    def hook(
        self, scale: int, done_before: int, schedule: tuple[tuple[int, int], ...]
    ) -> AfterStep:
        """The after-step check of one scale of `schedule` whose first step is step
        `done_before` + 1."""

        def after_step(step: int, image: torch.Tensor) -> bool:
            now = self._clock()
            if now - self._last < self._every:
                return False
            self._last = now
            for i, index in enumerate(self._indices):
                self._callback(
                    Snapshot(
                        index=index,
                        schedule=schedule,
                        scale=scale,
                        step=done_before + step,
                        image=to_pil(image[i]),
                    )
                )
            return False

        return after_step


def calibrate(
    bench: Workbench,
    photos: torch.Tensor,
    style: StyleSpec,
    params: StyleParams,
    *,
    final: tuple[int, int],
    edge: int,
) -> None:
    """Measure a step at `edge` (the coarsest of a plan: cheap) before the first plan of the
    process; the others are measured as they run, and larger sizes estimated from it."""
    width, height = working_size(final, edge)
    photo = resize(photos, height, width)
    objective = bench.objective(photo, style, params, edge)
    image = photo.detach().clone().requires_grad_(True)
    times = [bench.clock()]
    for _ in range(2):  # the first pass carries the allocator's and the kernels' set-up
        image.grad = None
        objective.loss(image).backward()  # type: ignore[no-untyped-call]
        if bench.device.type == "cuda":
            torch.cuda.synchronize(bench.device)
        times.append(bench.clock())
    pixels = width * height * photos.shape[0]
    bench.step_costs = bench.step_costs.measured(pixels, times[-1] - times[-2])


def optimise(
    bench: Workbench,
    ctx: RunContext,
    photos: torch.Tensor,
    style: StyleSpec,
    params: StyleParams,
    *,
    final: tuple[int, int],
    plan: StepPlan,
    started: float,
    start: Resume | None = None,
    start_images: Sequence[Image.Image] | None = None,
    snapshots: Snapshots | None = None,
    run: BudgetRun | None = None,
) -> tuple[torch.Tensor, list[LossTerms], tuple[tuple[int, int], ...]]:
    """The optimised pixels at the final working size, their losses, and the schedule that
    ran ((long edge, steps) per scale that ran any, whole steps of a resumed run included)."""
    generator = torch.Generator(device="cpu").manual_seed(params.seed)
    image: torch.Tensor | None = None
    objective: Objective | None = None
    done = 0
    first = 1
    if start is not None and start_images is not None:
        image = torch.cat([bench.to_tensor(picture) for picture in start_images])
        done, first = start.step, start.scale
    # Revised before each scale under a time budget, and set to what ran after it.
    schedule = list(plan.whole)
    scales = len(schedule) + (1 if plan.tiles else 0)
    for number in range(first, len(schedule) + 1):
        if run is not None and start is None and number > 1:
            revised = run.replan([e for e, _ in schedule[number - 1 :]])
            schedule[number - 1 :] = [(e, revised[e]) for e, _ in schedule[number - 1 :]]
        long_edge = schedule[number - 1][0]
        before = sum(n for _, n in schedule[: number - 1])
        # A resumed scale runs only the steps it had left.
        left = before + schedule[number - 1][1] - done
        last = number == len(schedule)
        if left <= 0 and not last:
            continue
        width, height = working_size(final, long_edge)
        photo = resize(photos, height, width)
        if image is None:
            image = _initial(bench, photo, params, generator)
        else:
            image = resize(image, height, width).clamp(0, 1)
        objective = bench.objective(photo, style, params, long_edge)
        if left <= 0:
            continue
        total = sum(n for _, n in schedule) + plan.tile_steps * len(plan.tiles)
        report = StepReport(number, scales, long_edge, done, total, started)
        timer: ScaleClock | None = None
        if run is not None:
            later = [e for e, n in schedule[number:] if n > 0]
            timer = run.scale(long_edge, left, later, last_edge=schedule[-1][0])
            if last and start is None:
                # Steps turn out cheaper or dearer than planned: the clock decides.
                left = left * LAST_SCALE_STRETCH
                report = dataclasses.replace(report, estimate=timer.estimate)
        # What a snapshot says is running: this scale with as many steps as it may take.
        running = (*schedule[: number - 1], (long_edge, done - before + left))
        running += tuple(schedule[number:])
        image = run_scale(
            objective,
            image,
            left,
            report,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
            graphs=bench.graphs,
            after_step=chain(
                None if snapshots is None else snapshots.hook(number, done, running),
                None if timer is None else timer.after_step,
            ),
        )
        if timer is not None:
            timer.finish()
            left = timer.steps
        done += left
        schedule[number - 1] = (long_edge, done - before)
    assert image is not None
    assert objective is not None
    ran = tuple((e, n) for e, n in schedule if n > 0)
    if not plan.tiles:
        losses_at_end = objective.evaluate(image)
        if image.shape[2:] != (final[1], final[0]):
            # Optimised at a smaller size than the output's (a budget too small for it).
            image = resize(image, final[1], final[0]).clamp(0, 1)
        return image, losses_at_end, ran
    image = resize(image, final[1], final[0]).clamp(0, 1)
    report = StepReport(scales, scales, params.size, done, plan.total, started)
    refined, tile_losses = refine_tiles(
        bench, ctx, photos, image, style=style, params=params, plan=plan, report=report
    )
    return refined, tile_losses, (*ran, (params.size, plan.tile_steps * len(plan.tiles)))


def refine_tiles(
    bench: Workbench,
    ctx: RunContext,
    photo: torch.Tensor,
    start: torch.Tensor,
    *,
    style: StyleSpec,
    params: StyleParams,
    plan: StepPlan,
    report: StepReport,
) -> tuple[torch.Tensor, list[LossTerms]]:
    """The full-size scale, tile by tile; overlaps are blended with linear ramps."""
    matched = photo if params.preserve_colors == "histogram" else None
    style_targets = bench.targets.get(style, params, params.size, photo=matched)
    # The canvas lives on the CPU: a 4096 px image is large next to one tile's activations.
    total = torch.zeros(start.shape, dtype=torch.float32)
    weight = torch.zeros((1, 1, *start.shape[2:]), dtype=torch.float32)
    losses_sum = [0.0, 0.0, 0.0]
    for index, (y0, y1, x0, x1) in enumerate(plan.tiles):
        tile_photo = photo[..., y0:y1, x0:x1]
        objective = bench.objective(
            tile_photo, style, params, params.size, style_targets=style_targets
        )
        tile_report = dataclasses.replace(
            report, first_step=report.first_step + index * plan.tile_steps
        )
        out = run_scale(
            objective,
            start[..., y0:y1, x0:x1],
            plan.tile_steps,
            tile_report,
            progress=ctx.progress,
            should_stop=ctx.should_stop,
            graphs=bench.graphs,
        )
        terms = objective.evaluate(out)[0]
        area = (y1 - y0) * (x1 - x0)
        losses_sum = [
            a + b * area
            for a, b in zip(losses_sum, (terms.content, terms.style, terms.tv), strict=True)
        ]
        ramp = feather(y1 - y0, x1 - x0, plan.tiles, (y0, y1, x0, x1))
        total[..., y0:y1, x0:x1] += out.float().cpu() * ramp
        weight[..., y0:y1, x0:x1] += ramp
    pixels = start.shape[2] * start.shape[3]
    # Overlaps count twice in the sum of tile areas: an area-weighted mean over the tiles.
    covered = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in plan.tiles) or pixels
    loss = LossTerms(*(v / covered for v in losses_sum))
    return (total / weight).to(bench.device).clamp(0, 1), [loss]


def _initial(
    bench: Workbench, photo: torch.Tensor, params: StyleParams, generator: torch.Generator
) -> torch.Tensor:
    if params.init_image is not None:
        picture = decode(params.init_image).image
        start = bench.to_tensor(picture)
        return resize(start, photo.shape[2], photo.shape[3]).expand_as(photo).clone()
    if params.init == "random":
        noise = torch.rand(photo.shape, generator=generator)
        return noise.to(bench.device)
    return photo.clone()
