"""One group of a batch, from photos to results: its plan (whole, in tiles, or to a time
budget), its optimisation (engine.scales) and the Stylized records it returns."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
import torch
from PIL import Image

from engine import color
from engine.budget import BudgetRun
from engine.device import release_cached, to_pil
from engine.errors import OutOfMemoryError
from engine.images import resize_long_edge
from engine.layers import min_input_edge
from engine.params import LossTerms, StyleParams, StyleSpec
from engine.planner import (
    Resume,
    fitted_schedule,
    ladder,
    pixels,
    step_plan,
    used_layers,
    working_size,
)
from engine.scales import RunContext, Snapshots, Workbench, calibrate, optimise

log = structlog.get_logger()


@dataclass(frozen=True)
class Stylized:
    """One finished photo."""

    image: Image.Image  # RGB, long edge = params.size
    # At the end, at the size optimised (under upsampled_from, that smaller one).
    loss: LossTerms
    steps: int
    seconds: float  # wall time of the batch it was part of
    device: str
    # The time budget this photo's group of the batch was planned to (None: none was set).
    budget_seconds: float | None = None
    # The group's optimisation time on the Stylizer's clock (planning and calibration included).
    optimise_seconds: float = 0.0
    # (long edge, steps) per scale that ran; a tiled run ends with (size, steps of all its tiles).
    schedule: tuple[tuple[int, int], ...] = ()
    # The long edge the optimisation ended at when the budget was too small for one step at
    # the output's size; the result was upsampled from it. None: optimised at full size.
    upsampled_from: int | None = None


# Told of each photo as soon as it is finished, with its position in the batch.
ResultCallback = Callable[[int, Stylized], None]


@dataclass(frozen=True)
class Group:
    """Photos of one working size, small enough together for the memory budget (a single
    photo may be larger: it is tiled), and how they start."""

    contents: Sequence[Image.Image]
    indices: Sequence[int]  # their positions in the batch
    start: Resume | None = None
    start_images: Sequence[Image.Image] | None = None
    budget_seconds: float | None = None  # this group's share of the batch's time budget


def run_group(
    bench: Workbench,
    ctx: RunContext,
    group: Group,
    style: StyleSpec,
    params: StyleParams,
) -> list[Stylized]:
    """The group's results; the bench's step costs are refined by what ran. A single photo
    larger than the memory budget is optimised at a size that fits, then refined in tiles
    (under a time budget: at a size that fits, then upsampled)."""
    contents, start = group.contents, group.start
    started = time.perf_counter()
    clock_started = bench.clock()
    final = working_size(contents[0].size, params.size)
    photos = torch.cat(
        [bench.to_tensor(resize_long_edge(c.convert("RGB"), params.size)) for c in contents]
    )
    min_edge = min_input_edge(used_layers(params))
    pixel_budget = bench.budget.pixels()
    run: BudgetRun | None = None
    upsampled_from: int | None = None
    if group.budget_seconds is not None:
        count = len(contents)
        run = BudgetRun(
            group.budget_seconds,
            clock=bench.clock,
            costs=bench.step_costs,
            pixels=lambda edge: pixels(final, edge) * count,
            ratio=params.scale_step_ratio,
        )
    if start is not None:
        schedule = start.schedule
        if run is not None and not bench.step_costs.points:
            calibrate(bench, photos, style, params, final=final, edge=schedule[start.scale - 1][0])
            run.costs = bench.step_costs
    elif run is not None:
        edges = ladder(final, params, min_edge, len(contents), pixel_budget)
        if not bench.step_costs.points:
            coarsest = (edges(params.size) or [min(params.size, min_edge * 4)])[0]
            calibrate(bench, photos, style, params, final=final, edge=coarsest)
            run.costs = bench.step_costs
        planned = run.first_plan(params.size, edges)
        schedule, upsampled_from = planned.schedule, planned.upsampled_from
    else:
        schedule = fitted_schedule(final, params, min_edge)
    plan = step_plan(final, schedule, params.size, pixel_budget, may_tile=run is None)
    snapshots = None
    if ctx.snapshot is not None and not plan.tiles:
        snapshots = Snapshots(ctx.snapshot, ctx.snapshot_every, bench.clock, tuple(group.indices))
    try:
        image, final_loss, ran = optimise(
            bench,
            ctx,
            photos,
            style,
            params,
            final=final,
            plan=plan,
            started=started,
            start=start,
            start_images=group.start_images,
            snapshots=snapshots,
            run=run,
        )
        if params.preserve_colors == "luminance":
            image = color.keep_luminance(image, photos)
    except torch.OutOfMemoryError as exc:
        bench.targets.clear()
        release_cached(bench.device)
        raise OutOfMemoryError(
            f"out of memory on {bench.device} for {len(contents)} photo(s) at "
            f"{params.size} px: lower engine.memory_budget_mb, the batch or the size"
        ) from exc
    finally:
        if run is not None:
            bench.step_costs = run.costs
    seconds = time.perf_counter() - started
    used = bench.clock() - clock_started
    if upsampled_from is not None:
        log.info(
            "budget_upsampled",
            budget_seconds=group.budget_seconds,
            size=params.size,
            optimised_size=upsampled_from,
            reason="one step at the full size does not fit the time (or memory) budget",
        )
    return [
        Stylized(
            image=to_pil(image[i]),
            loss=final_loss[i],
            steps=sum(n for _, n in ran),
            seconds=seconds,
            device=str(bench.device),
            budget_seconds=group.budget_seconds,
            optimise_seconds=used,
            schedule=ran,
            upsampled_from=upsampled_from,
        )
        for i in range(len(contents))
    ]
