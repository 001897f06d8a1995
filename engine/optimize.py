"""The optimisation loop of one scale: L-BFGS or Adam over the pixels of a batch of images."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from engine import losses
from engine.errors import Cancelled, NumericalError
from engine.params import LossTerms, Progress, StyleParams
from engine.vgg import VGGFeatures

ProgressCallback = Callable[[Progress], None]
LBFGS_START_LOSS = 100.0
StopCheck = Callable[[], bool]


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


@dataclass(frozen=True)
class StepReport:
    """Where a scale sits in the whole run, for progress records."""

    scale: int
    scales: int
    size: int
    first_step: int  # steps done before this scale
    total_steps: int
    started: float  # time.perf_counter() at the start of the run


def run_scale(
    objective: Objective,
    init: torch.Tensor,
    steps: int,
    report: StepReport,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> torch.Tensor:
    """Optimise `init` (N, 3, H, W) in [0, 1] for `steps` steps; returns the new pixels."""
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
        return loss

    step_once: Callable[[], torch.Tensor]
    if params.optimizer == "lbfgs":
        # One function evaluation per step() call, so that progress and cancellation land between
        # steps; the curvature history lives in the optimizer's state across calls. The tolerances
        # are off: a step budget, not a convergence test, ends the run. No clamping between steps:
        # moving pixels behind its back corrupts its curvature pairs and makes it diverge; the
        # result is clamped once at the end instead.
        lbfgs = torch.optim.LBFGS(
            [image],
            lr=params.lr,
            max_iter=1,
            history_size=50,
            tolerance_grad=-1.0,
            tolerance_change=-1.0,
        )

        def step_once() -> torch.Tensor:
            loss: torch.Tensor = lbfgs.step(closure)  # type: ignore[no-untyped-call]
            return loss
    else:
        adam = torch.optim.Adam([image], lr=params.lr)

        def step_once() -> torch.Tensor:
            loss = closure()
            adam.step()
            with torch.no_grad():
                image.clamp_(0, 1)
            return loss

    for step in range(1, steps + 1):
        if should_stop is not None and should_stop():
            raise Cancelled("stopped by request")
        loss = step_once()
        value = loss.detach().item() / scale
        if not math.isfinite(value):
            raise NumericalError(
                f"the loss became {value} at step {report.first_step + step} "
                f"(scale {report.scale}, {report.size} px); with fp16 precision try bf16 or fp32, "
                "otherwise lower the learning rate or the loss weights"
            )
        if progress is not None:
            progress(
                Progress(
                    scale=report.scale,
                    scales=report.scales,
                    size=report.size,
                    step=report.first_step + step,
                    steps=report.total_steps,
                    loss=value,
                    seconds=time.perf_counter() - report.started,
                )
            )
    return image.detach().clamp(0, 1)
