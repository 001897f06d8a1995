"""The resident Stylizer: VGG19 loaded once per process, style targets cached, photos in and out."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from engine import color, losses
from engine.budget import LAST_SCALE_STRETCH, BudgetRun, ScaleClock, chain
from engine.errors import BadImageError, EngineError, OutOfMemoryError, StyleError
from engine.images import decode, resize_long_edge
from engine.layers import LAYER_INDEX, min_input_edge
from engine.optimize import (
    AfterStep,
    GraphPolicy,
    Objective,
    ProgressCallback,
    StepReport,
    StopCheck,
    run_scale,
)
from engine.params import (
    EngineConfig,
    LossTerms,
    Snapshot,
    SnapshotCallback,
    StyleParams,
    StyleSpec,
)
from engine.planner import StepCosts, working_size
from engine.tiles import Tile, feather, tile_grid
from engine.vgg import VGGFeatures, load_vgg19_features

log = structlog.get_logger()

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Memory of one optimisation pass per pixel of the photo (activations kept for the backward pass,
# gradients, L-BFGS's history, allocator slack): measured in bf16 on the CPU at 768 px, 1.4 KB
# with Adam and 2.5 KB with L-BFGS (1.2 KB of it the history); planned with a margin.
BYTES_PER_PIXEL = 3000


@dataclass(frozen=True)
class StepPlan:
    """The scales optimised whole, then (for outputs over the budget) the full-size tiles."""

    whole: list[tuple[int, int]]  # (long edge, steps), coarsest first
    tile_steps: int = 0
    tiles: list[Tile] = dataclasses.field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(steps for _, steps in self.whole) + self.tile_steps * len(self.tiles)


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
class _Resume:
    """Where photos resumed from snapshots start: `step` steps into `schedule`, at `scale`."""

    schedule: tuple[tuple[int, int], ...]
    scale: int
    step: int


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else the CPU; an explicit device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise EngineError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(f"device {name!r} asked for, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EngineError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist"
            )
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 where the device runs it natively, else fp32; others stay as they are."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    return "fp32"


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


class Stylizer:
    """Neural style transfer with a resident VGG19.

    Build one per process and device: the constructor loads the network; `stylize()` and
    `stylize_batch()` do the work. Not thread-safe: one worker thread owns it.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        download_progress: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config or EngineConfig()
        # Snapshot intervals and time budgets are measured on this clock; tests inject theirs.
        self._clock = clock
        self.device = pick_device(self.config.device)
        # The precision in force: "auto" resolved for this device.
        self.precision = resolve_precision(self.config.precision, self.device)
        precision = self.precision
        if (
            precision == "bf16"
            and self.device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise EngineError("precision bf16 asked for, but this GPU does not support bfloat16")
        model = load_vgg19_features(
            self.config.weights,
            self.config.preprocess,
            download=self.config.download,
            progress=download_progress,
        )
        # NHWC weights to match the NHWC activations (VGGFeatures.forward): 15% faster per step
        # on the CPU, and what cuDNN's fastest kernels want.
        self.model: VGGFeatures = model.to(self.device).to(memory_format=torch.channels_last)
        if self.device.type == "cuda":
            # Autotuning pays off because the sizes repeat from photo to photo.
            torch.backends.cudnn.benchmark = True
        # Turns itself off for the life of the process if a capture fails.
        self.graphs = GraphPolicy(self.config.cuda_graphs and self.device.type == "cuda")
        self._targets: OrderedDict[Hashable, dict[str, torch.Tensor]] = OrderedDict()
        # Lowered after running out of memory: the next photos tile at a smaller size.
        self._budget_factor = 1.0
        # How often style targets were computed rather than found in the cache.
        self.target_computations = 0
        # What an optimisation step costs on this device at this precision, by pixels per pass:
        # calibrated once, refined by every scale that runs under a time budget.
        self.step_costs = StepCosts()

    def pixel_budget(self) -> int:
        """Photo pixels one optimisation pass may hold within the memory budget."""
        budget_mb = self.config.memory_budget_mb
        if budget_mb is None:
            if self.device.type == "cuda":
                total = torch.cuda.get_device_properties(self.device).total_memory
                budget = int(total * 0.8)  # leave room for the network, cuDNN and the canvas
            else:
                budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        else:
            budget = budget_mb * 2**20
        return max(1, int(budget * self._budget_factor) // BYTES_PER_PIXEL)

    def shrink_memory_budget(self) -> bool:
        """Halve the memory budget after running out of memory; False once it is so small
        (64 x 64 px tiles) that shrinking further would not help."""
        if self.pixel_budget() // 2 < 64 * 64:
            return False
        self._budget_factor /= 2
        return True

    # -- the small protocol the daemon uses: prepare_style, stylize, close --------------------

    def prepare_style(self, style: StyleSpec, params: StyleParams) -> None:
        """Load the paintings and compute their targets for every scale now (fails early)."""
        if params.preserve_colors == "histogram":
            for image in style.images:  # targets depend on each photo; only check the files
                _file_identity(image.path)
                _load_painting(image.path)
            return
        for long_edge, _ in params.schedule():
            self._style_targets(style, params, long_edge, photo=None)

    def stylize(
        self,
        content: Image.Image,
        style: StyleSpec,
        params: StyleParams,
        *,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        on_result: ResultCallback | None = None,
        snapshot: SnapshotCallback | None = None,
        snapshot_every: float = 10.0,
        resume: Mapping[int, Snapshot] | None = None,
    ) -> Stylized:
        return self.stylize_batch(
            [content],
            style,
            params,
            progress=progress,
            should_stop=should_stop,
            on_result=on_result,
            snapshot=snapshot,
            snapshot_every=snapshot_every,
            resume=resume,
        )[0]

    def close(self) -> None:
        """Free the network and the cached targets (and their GPU memory)."""
        self._targets.clear()
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- the work ------------------------------------------------------------------------------

    def stylize_batch(
        self,
        contents: Sequence[Image.Image],
        style: StyleSpec,
        params: StyleParams,
        *,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        on_result: ResultCallback | None = None,
        snapshot: SnapshotCallback | None = None,
        snapshot_every: float = 10.0,
        resume: Mapping[int, Snapshot] | None = None,
    ) -> list[Stylized]:
        """Stylize photos that share a style; photos of the same working size run as one batch.

        With Adam every photo gets exactly the result it would get alone (the losses are sums over
        the batch); with L-BFGS the photos share one curvature history, so results differ slightly.

        `on_result(index, result)` is called as soon as a photo is finished (photos of other
        working sizes may still be to run), besides the list returned at the end.

        `snapshot` is called every `snapshot_every` seconds of optimisation (checked between
        steps, never more often), once per photo of the running group, with the pixels being
        optimised. A photo larger than the memory budget (optimised in tiles) takes none.
        `resume` maps a photo's index to such a snapshot: that photo starts from its image and
        runs only what is left of its schedule (L-BFGS's history starts afresh). A snapshot that
        does not fit the photo (another size, another schedule's end) is ignored, with a warning.

        With `params.seconds` and no explicit `params.steps`, the scales and steps are planned to
        fill that time budget (the batch's: its groups share it by pixels) from measured step
        costs, and the clock is checked between steps (see engine.planner). A step count given
        beside `seconds` wins; the budget is then ignored, with a warning.
        """
        self._check_layers(params)
        if params.seconds is not None and params.steps is not None:
            log.warning(
                "budget_ignored",
                seconds=params.seconds,
                steps=params.steps,
                reason="an explicit step count wins over a time budget",
            )
        batch_started = self._clock()
        results: list[Stylized | None] = [None] * len(contents)
        groups: dict[tuple[tuple[int, int], _Resume | None], list[int]] = {}
        for index, content in enumerate(contents):
            shape = working_size(content.size, params.size)
            saved = None if resume is None else resume.get(index)
            point = None if saved is None else self._resume_point(saved, index, shape, params)
            # Photos that start at different points cannot share a pass.
            groups.setdefault((shape, point), []).append(index)
        budget = self.pixel_budget()
        chunks: list[tuple[_Resume | None, list[int]]] = []
        for (shape, point), indices in groups.items():
            # As many photos per pass as the memory budget holds (at least one: it may tile).
            per_pass = max(1, budget // (shape[0] * shape[1]))
            chunks += [(point, indices[i : i + per_pass]) for i in range(0, len(indices), per_pass)]
        pixels_left = sum(_pixels(contents[i[0]].size, params.size) * len(i) for _, i in chunks)
        for point, indices in chunks:
            group_budget: float | None = None
            if params.budgeted and params.seconds is not None:
                # The batch's budget, shared by pixels among the groups still to run.
                pixels = _pixels(contents[indices[0]].size, params.size) * len(indices)
                time_left = max(0.0, params.seconds - (self._clock() - batch_started))
                group_budget = time_left * pixels / max(1, pixels_left)
                pixels_left -= pixels
            starts = None
            if point is not None and resume is not None:
                starts = [resume[i].image for i in indices]
            images = self._run_group(
                [contents[i] for i in indices],
                style,
                params,
                progress,
                should_stop,
                indices=indices,
                start=point,
                start_images=starts,
                snapshot=snapshot,
                snapshot_every=snapshot_every,
                budget_seconds=group_budget,
            )
            for index, result in zip(indices, images, strict=True):
                results[index] = result
                if on_result is not None:
                    on_result(index, result)
        return [r for r in results if r is not None]

    def _resume_point(
        self, saved: Snapshot, index: int, final: tuple[int, int], params: StyleParams
    ) -> _Resume | None:
        """Where a snapshot lets photo `index` (`final` its working size) start; None, with a
        warning, when it does not fit this photo and these settings."""
        schedule = tuple((int(e), int(n)) for e, n in saved.schedule)
        problem = None
        if not schedule or schedule[-1][0] != params.size:
            end = schedule[-1][0] if schedule else None
            problem = f"its schedule ends at {end} px, this photo's at {params.size} px"
        elif not 1 <= saved.scale <= len(schedule):
            problem = f"scale {saved.scale} is not one of its {len(schedule)} scales"
        else:
            before = sum(n for _, n in schedule[: saved.scale - 1])
            expected = working_size(final, schedule[saved.scale - 1][0])
            if not before <= saved.step <= before + schedule[saved.scale - 1][1]:
                problem = f"step {saved.step} is not within scale {saved.scale}"
            elif saved.image.size != expected:
                problem = (
                    f"its image is {saved.image.size[0]}x{saved.image.size[1]}, "
                    f"the photo at that scale {expected[0]}x{expected[1]}"
                )
            elif final[0] * final[1] > self.pixel_budget():
                problem = "the photo is optimised in tiles, which do not resume"
        if problem is not None:
            log.warning(
                "snapshot_ignored", index=index, reason=problem, effect="the photo starts afresh"
            )
            return None
        return _Resume(schedule, saved.scale, saved.step)

    def _run_group(
        self,
        contents: Sequence[Image.Image],
        style: StyleSpec,
        params: StyleParams,
        progress: ProgressCallback | None,
        should_stop: StopCheck | None,
        *,
        indices: Sequence[int],
        start: _Resume | None = None,
        start_images: Sequence[Image.Image] | None = None,
        snapshot: SnapshotCallback | None = None,
        snapshot_every: float = 10.0,
        budget_seconds: float | None = None,
    ) -> list[Stylized]:
        """Photos of one working size, small enough together for the memory budget; a single
        photo larger than the budget is optimised at a size that fits, then refined in tiles
        (under a time budget: at a size that fits, then upsampled)."""
        started = time.perf_counter()
        clock_started = self._clock()
        final = working_size(contents[0].size, params.size)
        photos = torch.cat(
            [self._to_tensor(resize_long_edge(c.convert("RGB"), params.size)) for c in contents]
        )
        min_edge = min_input_edge(_layers(params))
        pixel_budget = self.pixel_budget()
        run: BudgetRun | None = None
        upsampled_from: int | None = None
        if budget_seconds is not None:
            count = len(contents)
            run = BudgetRun(
                budget_seconds,
                clock=self._clock,
                costs=self.step_costs,
                pixels=lambda edge: _pixels(final, edge) * count,
                ratio=params.scale_step_ratio,
            )
        if start is not None:
            schedule = start.schedule
            if run is not None and not self.step_costs.points:
                self._calibrate(photos, style, params, final, schedule[start.scale - 1][0])
                run.costs = self.step_costs
        elif run is not None:
            ladder = _ladder(final, params, min_edge, len(contents), pixel_budget)
            if not self.step_costs.points:
                coarsest = (ladder(params.size) or [min(params.size, min_edge * 4)])[0]
                self._calibrate(photos, style, params, final, coarsest)
                run.costs = self.step_costs
            planned = run.first_plan(params.size, ladder)
            schedule, upsampled_from = planned.schedule, planned.upsampled_from
        else:
            schedule = fitted_schedule(final, params, min_edge)
        tiled = run is None and final[0] * final[1] > pixel_budget
        # Tiled: every scale that fits runs whole; the last (full-size) scale runs tile by tile.
        whole = [(e, n) for e, n in schedule[:-1] if _pixels(final, e) <= pixel_budget]
        if tiled and not whole:
            whole = [(_fitting_edge(final, params.size, pixel_budget), schedule[0][1])]
        plan = StepPlan(
            whole if tiled else list(schedule),
            tile_steps=schedule[-1][1] if tiled else 0,
            tiles=tile_grid(final[1], final[0], _tile_edge(pixel_budget)) if tiled else [],
        )
        try:
            image, final_loss, ran = self._optimise(
                photos,
                style,
                params,
                final=final,
                plan=plan,
                started=started,
                progress=progress,
                should_stop=should_stop,
                start=start,
                start_images=start_images,
                snapshots=_Snapshots(snapshot, snapshot_every, self._clock, tuple(indices))
                if snapshot is not None and not plan.tiles
                else None,
                run=run,
            )
            if params.preserve_colors == "luminance":
                image = color.keep_luminance(image, photos)
        except torch.OutOfMemoryError as exc:
            self._release_memory()
            raise OutOfMemoryError(
                f"out of memory on {self.device} for {len(contents)} photo(s) at "
                f"{params.size} px: lower engine.memory_budget_mb, the batch or the size"
            ) from exc
        finally:
            if run is not None:
                self.step_costs = run.costs
        seconds = time.perf_counter() - started
        used = self._clock() - clock_started
        if upsampled_from is not None:
            log.info(
                "budget_upsampled",
                budget_seconds=budget_seconds,
                size=params.size,
                optimised_size=upsampled_from,
                reason="one step at the full size does not fit the time (or memory) budget",
            )
        return [
            Stylized(
                image=_to_pil(image[i]),
                loss=final_loss[i],
                steps=sum(n for _, n in ran),
                seconds=seconds,
                device=str(self.device),
                budget_seconds=budget_seconds,
                optimise_seconds=used,
                schedule=ran,
                upsampled_from=upsampled_from,
            )
            for i in range(len(contents))
        ]

    def _calibrate(
        self,
        photos: torch.Tensor,
        style: StyleSpec,
        params: StyleParams,
        final: tuple[int, int],
        edge: int,
    ) -> None:
        """Measure a step at `edge` (the coarsest of a plan: cheap) before the first plan of the
        process; the others are measured as they run, and larger sizes estimated from it."""
        width, height = working_size(final, edge)
        photo = _resize(photos, height, width)
        objective = self._objective(photo, style, params, edge)
        image = photo.detach().clone().requires_grad_(True)
        times = [self._clock()]
        for _ in range(2):  # the first pass carries the allocator's and the kernels' set-up
            image.grad = None
            objective.loss(image).backward()  # type: ignore[no-untyped-call]
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            times.append(self._clock())
        pixels = width * height * photos.shape[0]
        self.step_costs = self.step_costs.measured(pixels, times[-1] - times[-2])

    def _optimise(
        self,
        photos: torch.Tensor,
        style: StyleSpec,
        params: StyleParams,
        *,
        final: tuple[int, int],
        plan: StepPlan,
        started: float,
        progress: ProgressCallback | None,
        should_stop: StopCheck | None,
        start: _Resume | None = None,
        start_images: Sequence[Image.Image] | None = None,
        snapshots: _Snapshots | None = None,
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
            image = torch.cat([self._to_tensor(picture) for picture in start_images])
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
            photo = _resize(photos, height, width)
            if image is None:
                image = self._initial(photo, params, generator)
            else:
                image = _resize(image, height, width).clamp(0, 1)
            objective = self._objective(photo, style, params, long_edge)
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
                progress=progress,
                should_stop=should_stop,
                graphs=self.graphs,
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
                image = _resize(image, final[1], final[0]).clamp(0, 1)
            return image, losses_at_end, ran
        image = _resize(image, final[1], final[0]).clamp(0, 1)
        report = StepReport(scales, scales, params.size, done, plan.total, started)
        refined, tile_losses = self._refine_tiles(
            photos,
            image,
            style,
            params,
            plan=plan,
            report=report,
            progress=progress,
            should_stop=should_stop,
        )
        return refined, tile_losses, (*ran, (params.size, plan.tile_steps * len(plan.tiles)))

    def _refine_tiles(
        self,
        photo: torch.Tensor,
        start: torch.Tensor,
        style: StyleSpec,
        params: StyleParams,
        *,
        plan: StepPlan,
        report: StepReport,
        progress: ProgressCallback | None,
        should_stop: StopCheck | None,
    ) -> tuple[torch.Tensor, list[LossTerms]]:
        """The full-size scale, tile by tile; overlaps are blended with linear ramps."""
        matched = photo if params.preserve_colors == "histogram" else None
        style_targets = self._style_targets(style, params, params.size, photo=matched)
        # The canvas lives on the CPU: a 4096 px image is large next to one tile's activations.
        total = torch.zeros(start.shape, dtype=torch.float32)
        weight = torch.zeros((1, 1, *start.shape[2:]), dtype=torch.float32)
        losses_sum = [0.0, 0.0, 0.0]
        for index, (y0, y1, x0, x1) in enumerate(plan.tiles):
            tile_photo = photo[..., y0:y1, x0:x1]
            objective = self._objective(
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
                progress=progress,
                should_stop=should_stop,
                graphs=self.graphs,
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
        return (total / weight).to(self.device).clamp(0, 1), [loss]

    def _initial(
        self, photo: torch.Tensor, params: StyleParams, generator: torch.Generator
    ) -> torch.Tensor:
        if params.init_image is not None:
            picture = decode(params.init_image).image
            start = self._to_tensor(picture)
            return _resize(start, photo.shape[2], photo.shape[3]).expand_as(photo).clone()
        if params.init == "random":
            noise = torch.rand(photo.shape, generator=generator)
            return noise.to(self.device)
        return photo.clone()

    def _objective(
        self,
        photo: torch.Tensor,
        style: StyleSpec,
        params: StyleParams,
        long_edge: int,
        style_targets: dict[str, torch.Tensor] | None = None,
    ) -> Objective:
        with torch.no_grad(), self._autocast():
            features = self.model(photo, params.content_layers, params.pooling)
        content_targets = {name: f.float() for name, f in features.items()}
        if style_targets is not None:
            pass  # given: a tile of a larger picture shares the whole picture's targets
        elif params.preserve_colors == "histogram":
            per_photo = [
                self._style_targets(style, params, long_edge, photo=photo[i : i + 1])
                for i in range(photo.shape[0])
            ]
            style_targets = {
                layer: torch.cat([t[layer] for t in per_photo]) for layer in params.style_layers
            }
        else:
            style_targets = self._style_targets(style, params, long_edge, photo=None)
        return Objective(
            model=self.model,
            params=params,
            content_targets=content_targets,
            style_targets=style_targets,
            autocast=self._autocast,
        )

    def _style_targets(
        self, style: StyleSpec, params: StyleParams, long_edge: int, photo: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Blended Gram matrices of the paintings at this scale, cached unless photo-dependent."""
        key = (
            tuple(_file_identity(image.path) for image in style.images),
            style.normalised_weights(),
            round(long_edge * params.style_scale),
            params.style_layers,
            params.pooling,
        )
        if photo is None and key in self._targets:
            self._targets.move_to_end(key)
            return self._targets[key]
        self.target_computations += 1
        blended: dict[str, torch.Tensor] = {}
        style_edge = round(long_edge * params.style_scale)
        min_edge = min_input_edge(params.style_layers)
        for image, weight in zip(style.images, style.normalised_weights(), strict=True):
            picture = _load_painting(image.path)
            # A wide painting at a small scale is enlarged until its short edge survives the pools.
            edge = max(style_edge, math.ceil(max(picture.size) * min_edge / min(picture.size)))
            painting = self._to_tensor(resize_long_edge(picture, edge))
            if photo is not None:
                painting = color.match_histogram(painting, photo)
            for layer, g in self._painting_grams(painting, params).items():
                blended[layer] = blended[layer] + g * weight if layer in blended else g * weight
        if photo is None:
            self._targets[key] = blended
            while len(self._targets) > self.config.style_cache_size:
                self._targets.popitem(last=False)
        return blended

    def _painting_grams(
        self, painting: torch.Tensor, params: StyleParams
    ) -> dict[str, torch.Tensor]:
        """Gram matrices of a (1, 3, H, W) painting; one larger than the budget is summed over
        tiles, which gives the same matrices up to the convolutions' borders."""
        height, width = painting.shape[2:]
        # No gradients are kept here, so a pass holds several times more pixels than a step.
        budget = self.pixel_budget() * 4
        rows = cols = 1
        while (height // rows) * (width // cols) > budget:
            rows, cols = (rows + 1, cols) if height / rows >= width / cols else (rows, cols + 1)
        ys = [round(i * height / rows) for i in range(rows + 1)]
        xs = [round(i * width / cols) for i in range(cols + 1)]
        sums: dict[str, torch.Tensor] = {}
        positions: dict[str, int] = dict.fromkeys(params.style_layers, 0)
        for y0, y1 in itertools.pairwise(ys):
            for x0, x1 in itertools.pairwise(xs):
                with torch.no_grad(), self._autocast():
                    features = self.model(
                        painting[..., y0:y1, x0:x1],
                        params.style_layers,
                        params.pooling,
                    )
                for layer in params.style_layers:
                    f = features[layer]
                    positions[layer] += f.shape[2] * f.shape[3]
                    # gram() divides by C·H·W; undo that to sum, and divide once at the end.
                    g = losses.gram(f) * (f.shape[1] * f.shape[2] * f.shape[3])
                    sums[layer] = sums[layer] + g if layer in sums else g
        return {
            layer: sums[layer] / (sums[layer].shape[1] * positions[layer])
            for layer in params.style_layers
        }

    def _check_layers(self, params: StyleParams) -> None:
        deepest = max(LAYER_INDEX[name] for name in _layers(params))
        if deepest >= len(self.model.layers):
            raise EngineError(
                "a layer deeper than relu5_1 was asked for; the resident network stops there"
            )

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        # No cast-weight cache: each weight is cast once per pass anyway, and a CUDA graph
        # capture refuses one.
        return torch.autocast(device_type=self.device.type, dtype=dtype, cache_enabled=False)

    def _to_tensor(self, picture: Image.Image) -> torch.Tensor:
        pixels: torch.Tensor = pil_to_tensor(picture.convert("RGB"))
        return (pixels.float() / 255).unsqueeze(0).to(self.device)

    def _release_memory(self) -> None:
        self._targets.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class _Snapshots:
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
                        image=_to_pil(image[i]),
                    )
                )
            return False

        return after_step


def _ladder(
    final: tuple[int, int], params: StyleParams, min_edge: int, count: int, pixel_budget: int
) -> Callable[[int], list[int]]:
    """For the planner: the coarse-to-fine edges of a run that ends at a given edge (params'
    scales, those the network can see), or none when that edge is too small for the network
    or too large for the memory budget (a budgeted run upsamples rather than tiles)."""

    def ladder(edge: int) -> list[int]:
        if edge < 16 or min(working_size(final, edge)) < min_edge:
            return []
        if _pixels(final, edge) * count > pixel_budget:
            return []
        sizes = params.replace(size=edge, min_scale_size=min(edge, params.min_scale_size))
        coarse = sizes.scale_sizes()[:-1]
        return [e for e in coarse if min(working_size(final, e)) >= min_edge] + [edge]

    return ladder


def _pixels(size: tuple[int, int], long_edge: int) -> int:
    width, height = working_size(size, long_edge)
    return width * height


def _fitting_edge(size: tuple[int, int], long_edge: int, budget: int) -> int:
    """The largest long edge (at most `long_edge`) whose picture fits in `budget` pixels."""
    edge = long_edge
    while edge > 16 and _pixels(size, edge) > budget:
        edge = int(edge * 0.9)
    return edge


def _tile_edge(budget: int) -> int:
    """Square tiles that fit the budget, in multiples of 16 so that pooling divides them."""
    return max(32, math.isqrt(budget) // 16 * 16)


def _layers(params: StyleParams) -> tuple[str, ...]:
    return params.content_layers + params.style_layers


def _file_identity(path: Path) -> tuple[str, int, int]:
    """A painting's cache identity: a replaced file (new size or mtime) gets new targets."""
    try:
        stat = Path(path).stat()
    except OSError as exc:
        raise StyleError(f"style image {path} cannot be read: {exc.strerror or exc}") from exc
    return (os.fspath(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _load_painting(path: Path) -> Image.Image:
    """A painting that cannot be decoded is the style's fault, not the photo's."""
    try:
        return decode(path).image
    except BadImageError as exc:
        raise StyleError(f"style image {path} is unusable: {exc}") from exc


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if image.shape[2] == height and image.shape[3] == width:
        return image
    return F.interpolate(
        image, size=(height, width), mode="bicubic", align_corners=False, antialias=True
    )


def _to_pil(image: torch.Tensor) -> Image.Image:
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    picture: Image.Image = to_pil_image(pixels)
    return picture
