"""The optimisation loop of one scale: L-BFGS or Adam over the pixels of a batch of images."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog
import torch

from engine import losses
from engine.errors import Cancelled, NumericalError
from engine.lbfgs import LBFGS
from engine.params import LossTerms, Progress, StyleParams
from engine.vgg import VGGFeatures

log = structlog.get_logger()

ProgressCallback = Callable[[Progress], None]
StopCheck = Callable[[], bool]
# Called after each step with the steps done in this scale and the live pixels (N, 3, H, W);
# True ends the scale there (a time budget ran out). Snapshots are taken from here too.
AfterStep = Callable[[int, torch.Tensor], bool]
LBFGS_START_LOSS = 100.0
LBFGS_HISTORY = 50
# On a GPU, losses are read back (one wait for the device) once per this many steps: a step at
# 512 px takes about a millisecond there, and a wait costs tens of microseconds plus the queue.
REPORT_EVERY_ON_GPU = 25
# Passes run before a capture, on a side stream: cuDNN's autotuning and the allocator's first
# requests must happen outside the graph.
GRAPH_WARMUP = 2


@dataclass(frozen=True)
class Objective:
    """What one scale optimises towards: targets computed from the photo(s) and painting(s)."""

    model: VGGFeatures
    params: StyleParams
    content_targets: Mapping[str, torch.Tensor]  # (N, C, H, W) per content layer
    style_targets: Mapping[str, torch.Tensor]  # (1 | N, C, C) Gram per style layer
    autocast: Callable[[], contextlib.AbstractContextManager[object]]

    def terms(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weighted content, style and TV losses, one value per photo each."""
        params = self.params
        layers = set(params.content_layers) | set(params.style_layers)
        with self.autocast():
            features = self.model(image, layers, params.pooling)
        content = torch.zeros(image.shape[0], device=image.device)
        for name in params.content_layers:
            content = content + losses.content_loss(features[name], self.content_targets[name])
        style = losses.style_loss(
            features, self.style_targets, params.style_layers, params.layer_weights()
        )
        tv = losses.tv_loss(image)
        return params.content_weight * content, params.style_weight * style, params.tv_weight * tv

    def loss(self, image: torch.Tensor) -> torch.Tensor:
        content, style, tv = self.terms(image)
        return (content + style + tv).sum()

    def evaluate(self, image: torch.Tensor) -> list[LossTerms]:
        """The loss parts of each photo at `image`, without gradients."""
        with torch.no_grad():
            content, style, tv = (t.tolist() for t in self.terms(image))
        return [LossTerms(c, s, t) for c, s, t in zip(content, style, tv, strict=True)]


class GraphPolicy:
    """Whether the forward and backward pass of a step is captured as a CUDA graph.

    A VGG19 pass with its losses is about two hundred kernels; launched one by one from Python
    they take longer than the GPU needs to run them at small sizes. Captured once per scale and
    replayed, they cost one launch. One policy lives as long as its Stylizer: if a capture ever
    fails (a driver or an operation that cannot be captured), it says why in the log, turns
    itself off and the work goes on without graphs.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.failure: str | None = None

    def capture(
        self, closure: Callable[[], torch.Tensor], image: torch.Tensor
    ) -> Callable[[], torch.Tensor]:
        """`closure` itself, or a function that replays its capture (same effects: the loss it
        returns and image.grad are rewritten in place at each call)."""
        if not self.enabled:
            return closure
        try:
            return _capture(closure, image)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            self.enabled = False
            self.failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning(
                "cuda_graphs_off",
                reason=self.failure,
                effect="steps run without CUDA graphs from now on (slower at small sizes)",
                hint="set engine.cuda_graphs: false to skip the attempt",
            )
            image.grad = None
            return closure


def _capture(
    closure: Callable[[], torch.Tensor], image: torch.Tensor
) -> Callable[[], torch.Tensor]:
    device = image.device
    side = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(GRAPH_WARMUP):
            closure()  # the pixels do not move: the same gradient each time
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: a capture fails only for what this thread does. Other threads of the process
    # may use CUDA meanwhile (the daemon builds the Stylizer, which loads the network onto the
    # GPU, on its main thread and runs it on a worker thread; a host program may have CUDA work
    # of its own), and that must not end a capture.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        loss = closure()  # image.grad now points into the graph's memory

    def replay() -> torch.Tensor:
        graph.replay()
        return loss

    return replay


@dataclass(frozen=True)
class StepReport:
    """Where a scale sits in the whole run, for progress records."""

    scale: int
    scales: int
    size: int
    first_step: int  # steps done before this scale
    total_steps: int
    started: float  # time.perf_counter() at the start of the run
    # Under a time budget the last scale runs until its time is up: its current estimate of the
    # run's steps, given the steps done so far. None: total_steps holds.
    estimate: Callable[[int], int] | None = None


def run_scale(
    objective: Objective,
    init: torch.Tensor,
    steps: int,
    report: StepReport,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    graphs: GraphPolicy | None = None,
    report_every: int | None = None,
    after_step: AfterStep | None = None,
) -> torch.Tensor:
    """Optimise `init` (N, 3, H, W) in [0, 1] for `steps` steps; returns the new pixels.

    Nothing in a step waits for the device: the losses are gathered on it and read back every
    `report_every` steps (default: every step on the CPU, where reading costs nothing, and
    REPORT_EVERY_ON_GPU elsewhere), which is also when progress is reported and a non-finite
    loss is caught. On CUDA the forward and backward pass is captured once as a CUDA graph and
    replayed (see `GraphPolicy`). `after_step` may end the scale before `steps` (see AfterStep).
    """
    params = objective.params
    image = init.detach().clone().requires_grad_(True)
    # L-BFGS tests curvature (y·s > 1e-10) and sizes its first step (1/|g|₁) in absolute terms,
    # so a small loss stalls it and a huge one overshoots. Rescaling the objective to start at
    # LBFGS_START_LOSS makes it behave the same whatever the loss weights and the checkpoint.
    # Adam is scale-free and runs on the plain loss.
    scale = 1.0
    if params.optimizer == "lbfgs":
        with torch.no_grad():
            start = objective.loss(image).item()
        if math.isfinite(start) and start > 0:
            scale = LBFGS_START_LOSS / start

    def closure() -> torch.Tensor:
        image.grad = None
        loss = objective.loss(image) * scale
        loss.backward()  # type: ignore[no-untyped-call]
        return loss.detach()

    update: Callable[[], None]
    if params.optimizer == "lbfgs":
        # No clamping between steps: moving pixels behind its back corrupts its curvature pairs
        # and makes it diverge; the result is clamped once at the end instead.
        # A scale of k steps makes k - 1 pairs: a shorter scale needs no room for more.
        history = min(LBFGS_HISTORY, max(1, steps - 1))
        update = LBFGS(image, lr=params.lr, history_size=history).step
    else:
        adam = torch.optim.Adam([image], lr=params.lr, fused=image.device.type == "cuda")

        def update() -> None:
            adam.step()
            with torch.no_grad():
                image.clamp_(0, 1)

    evaluate = closure
    if graphs is not None and image.device.type == "cuda":
        evaluate = graphs.capture(closure, image)
    if report_every is None:
        report_every = 1 if image.device.type == "cpu" else REPORT_EVERY_ON_GPU
    trace = torch.empty(steps, device=image.device)
    reported = 0
    for step in range(1, steps + 1):
        if should_stop is not None and should_stop():
            raise Cancelled("stopped by request")
        trace[step - 1] = evaluate()
        update()
        ending = after_step is not None and after_step(step, image)
        if step - reported == report_every or step == steps or ending:
            _report(trace[reported:step].tolist(), reported, scale, report, progress)
            reported = step
        if ending:
            break
    return image.detach().clamp(0, 1)


def _report(
    values: list[float],
    done: int,
    scale: float,
    report: StepReport,
    progress: ProgressCallback | None,
) -> None:
    """Check and report the losses of steps done+1 .. done+len(values) of this scale."""
    seconds = time.perf_counter() - report.started
    for offset, scaled in enumerate(values, start=1):
        value = scaled / scale
        step = report.first_step + done + offset
        if not math.isfinite(value):
            raise NumericalError(
                f"the loss became {value} at step {step} "
                f"(scale {report.scale}, {report.size} px); with fp16 precision try bf16 or fp32, "
                "otherwise lower the learning rate or the loss weights"
            )
        if progress is not None:
            progress(
                Progress(
                    scale=report.scale,
                    scales=report.scales,
                    size=report.size,
                    step=step,
                    steps=report.total_steps if report.estimate is None else report.estimate(step),
                    loss=value,
                    seconds=seconds,
                )
            )
