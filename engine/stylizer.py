"""The resident Stylizer: VGG19 loaded once per process, style targets cached, photos in and out.

The Stylizer holds what lives as long as the process and splits a batch into groups; the rest
lives beside it:

    engine.device    the device, the precision in force, the memory budget
    engine.targets   the style-target cache (Gram matrices of the paintings per scale)
    engine.planner   which photos share a pass, where a resumed photo starts, the scales (pure)
    engine.budget    the clock of a run under a time budget
    engine.run       one group: its plan, its optimisation, its Stylized results
    engine.scales    the scale loop and the full-size tiles, under one RunContext
    engine.optimize  one scale: L-BFGS or Adam over the pixels
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import structlog
import torch
from PIL import Image

from engine.device import (
    BYTES_PER_PIXEL,
    MemoryBudget,
    autocast_for,
    check_precision,
    pick_device,
    release_cached,
    resolve_precision,
)
from engine.errors import EngineError
from engine.layers import LAYER_INDEX
from engine.optimize import GraphPolicy, Objective, ProgressCallback, StopCheck
from engine.params import EngineConfig, Snapshot, SnapshotCallback, StyleParams, StyleSpec
from engine.planner import (
    Resume,
    StepCosts,
    fitted_schedule,
    passes,
    pixels,
    resume_point,
    used_layers,
    working_size,
)
from engine.run import Group, ResultCallback, Stylized, run_group
from engine.scales import RunContext, Workbench
from engine.targets import StyleTargets, Targets
from engine.vgg import VGGFeatures, load_vgg19_features

# Names other modules and tests import from here, where they lived before the split.
__all__ = [
    "BYTES_PER_PIXEL",
    "ResultCallback",
    "Stylized",
    "Stylizer",
    "fitted_schedule",
    "pick_device",
    "resolve_precision",
    "working_size",
]

log = structlog.get_logger()


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
        self.device = pick_device(self.config.device)
        # The precision in force: "auto" resolved for this device.
        self.precision = resolve_precision(self.config.precision, self.device)
        check_precision(self.precision, self.device)
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
        self._budget = MemoryBudget(self.device, self.config.memory_budget_mb)
        autocast = autocast_for(self.precision, self.device)
        self.targets = StyleTargets(
            self.model,
            self.device,
            autocast,
            size=self.config.style_cache_size,
            pixel_budget=self._budget.pixels,
        )
        self._bench = Workbench(
            self.model, self.device, autocast, self.graphs, self.targets, self._budget, clock
        )

    @property
    def target_computations(self) -> int:
        """How often style targets were computed rather than found in the cache."""
        return self.targets.computations

    @property
    def step_costs(self) -> StepCosts:
        """What an optimisation step costs here, by pixels per pass (see engine.planner)."""
        return self._bench.step_costs

    def pixel_budget(self) -> int:
        """Photo pixels one optimisation pass may hold within the memory budget."""
        return self._budget.pixels()

    def shrink_memory_budget(self) -> bool:
        """Halve the memory budget after running out of memory; False once it is so small
        (64 x 64 px tiles) that shrinking further would not help."""
        return self._budget.shrink()

    # The daemon's Engine Protocol is four methods: shrink_memory_budget (above), prepare_style,
    # stylize_batch and close; stylize() is stylize_batch() for one photo.

    def prepare_style(self, style: StyleSpec, params: StyleParams) -> None:
        """Load the paintings and compute their targets for every scale now (fails early)."""
        if params.preserve_colors == "histogram":
            self.targets.check_files(style)  # targets depend on each photo: only the files
            return
        for long_edge, _ in params.schedule():
            self.targets.get(style, params, long_edge, photo=None)

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
        self.targets.clear()
        del self.model, self.targets, self._bench
        release_cached(self.device)

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
        ctx = RunContext(progress, should_stop, snapshot, snapshot_every)
        clock = self._bench.clock
        batch_started = clock()
        results: list[Stylized | None] = [None] * len(contents)
        shapes = [working_size(content.size, params.size) for content in contents]
        points = [self._resume_point(resume, i, shape, params) for i, shape in enumerate(shapes)]
        chunks = passes(shapes, points, self.pixel_budget())
        pixels_left = sum(pixels(contents[i[0]].size, params.size) * len(i) for _, i in chunks)
        for point, indices in chunks:
            budget_seconds: float | None = None
            if params.budgeted and params.seconds is not None:
                # The batch's budget, shared by pixels among the groups still to run.
                group_pixels = pixels(contents[indices[0]].size, params.size) * len(indices)
                time_left = max(0.0, params.seconds - (clock() - batch_started))
                budget_seconds = time_left * group_pixels / max(1, pixels_left)
                pixels_left -= group_pixels
            starts = None
            if point is not None and resume is not None:
                starts = [resume[i].image for i in indices]
            group = Group([contents[i] for i in indices], indices, point, starts, budget_seconds)
            for index, result in zip(
                indices, run_group(self._bench, ctx, group, style, params), strict=True
            ):
                results[index] = result
                if on_result is not None:
                    on_result(index, result)
        return [r for r in results if r is not None]

    def _resume_point(
        self,
        resume: Mapping[int, Snapshot] | None,
        index: int,
        final: tuple[int, int],
        params: StyleParams,
    ) -> Resume | None:
        """Where photo `index` (`final` its working size) starts when `resume` has a snapshot of
        it; None, with a warning, when that does not fit this photo and these settings."""
        saved = None if resume is None else resume.get(index)
        if saved is None:
            return None
        point = resume_point(saved, final, params, self.pixel_budget())
        if isinstance(point, str):
            log.warning(
                "snapshot_ignored", index=index, reason=point, effect="the photo starts afresh"
            )
            return None
        return point

    def _check_layers(self, params: StyleParams) -> None:
        deepest = max(LAYER_INDEX[name] for name in used_layers(params))
        if deepest >= len(self.model.layers):
            raise EngineError(
                "a layer deeper than relu5_1 was asked for; the resident network stops there"
            )

    # bench/ and the optimiser's tests build objectives the way the scale loop does.
    def _to_tensor(self, picture: Image.Image) -> torch.Tensor:
        return self._bench.to_tensor(picture)

    def _objective(
        self,
        photo: torch.Tensor,
        style: StyleSpec,
        params: StyleParams,
        long_edge: int,
        style_targets: Targets | None = None,
    ) -> Objective:
        return self._bench.objective(photo, style, params, long_edge, style_targets)
