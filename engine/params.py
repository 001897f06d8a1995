"""Every knob of the engine, as frozen dataclasses with their defaults.

The CLI and the daemon's YAML loader build these objects; nothing below them passes dicts
around. Defaults live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from PIL import Image

from engine.layers import LAYER_NAMES

Device = str  # "auto", "cpu", "cuda", "cuda:1", ...
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Preprocess = Literal["torchvision", "caffe"]
Pooling = Literal["max", "avg"]
Optimizer = Literal["lbfgs", "adam"]
PreserveColors = Literal["none", "luminance", "histogram"]
Init = Literal["content", "random"]

# Layer names follow the Gatys paper: reluB_N is the N-th ReLU of block B of VGG19.
DEFAULT_CONTENT_LAYERS: tuple[str, ...] = ("relu4_2",)
DEFAULT_STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")

# Optimisation steps over all scales when neither `steps` nor a time budget (`seconds`) is set.
DEFAULT_STEPS = 300

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
PREPROCESSES: tuple[str, ...] = ("torchvision", "caffe")
POOLINGS: tuple[str, ...] = ("max", "avg")
OPTIMIZERS: tuple[str, ...] = ("lbfgs", "adam")
PRESERVE_COLORS: tuple[str, ...] = ("none", "luminance", "histogram")


class SettingError(ValueError):
    """A setting the engine refuses. `field` names it, so that a caller can point at the place
    where the value was written (the daemon's config loader does) without reading the message."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class EngineConfig:
    """What a resident Stylizer is built with: fixed for the life of the process."""

    device: Device = "auto"  # "auto" takes CUDA when present, else the CPU
    # A checkpoint file; None looks in torch's hub cache ($TORCH_HOME/hub/checkpoints).
    weights: Path | None = None
    # "torchvision": RGB in [0, 1] normalised with ImageNet mean/std (torchvision's checkpoint).
    # "caffe": BGR in [0, 255] minus the Caffe means (the Caffe-converted VGG19 checkpoint).
    preprocess: Preprocess = "torchvision"
    # Autocast precision of the VGG19 passes; Gram matrices and losses stay in fp32. "auto" takes
    # bf16 where the hardware runs it natively (recent NVIDIA GPUs; CPUs with AVX-512 BF16 or AMX),
    # about twice as fast, and fp32 elsewhere.
    precision: Precision = "auto"
    # Fetch the checkpoint into the hub cache when it is missing and none was named.
    download: bool = True
    # Style targets kept per process; each entry holds a few Gram matrices (about 1.5 MB).
    style_cache_size: int = 32
    # Memory one optimisation pass may use, in MiB. Photos beyond it are optimised at a size that
    # fits and refined at full size in overlapping tiles; batches are split to fit. None: 80% of
    # the GPU's memory, or half of the machine's RAM on a CPU.
    memory_budget_mb: int | None = None
    # On CUDA, capture each scale's forward and backward pass as a CUDA graph and replay it: at
    # small sizes a step is mostly kernel launches otherwise. Off: launch them one by one.
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("preprocess", self.preprocess, PREPROCESSES)
        if self.style_cache_size < 1:
            raise SettingError("style_cache_size", "style_cache_size must be at least 1")
        if self.memory_budget_mb is not None and self.memory_budget_mb < 1:
            raise SettingError("memory_budget_mb", "memory_budget_mb must be at least 1")


@dataclass(frozen=True)
class StyleImage:
    """One painting of a style, with its share of the blend."""

    path: Path
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"style weight must be a positive number, got {self.weight!r}")


@dataclass(frozen=True)
class StyleSpec:
    """A style: one painting, or several blended by weight (weights are normalised to sum 1)."""

    images: tuple[StyleImage, ...]
    name: str = ""

    def __post_init__(self) -> None:
        if not self.images:
            raise ValueError("a style needs at least one image")

    @classmethod
    def of(cls, *paths: str | Path, name: str = "") -> StyleSpec:
        """Equal-weight blend of the given paintings."""
        return cls(tuple(StyleImage(Path(p)) for p in paths), name=name)

    def normalised_weights(self) -> tuple[float, ...]:
        total = sum(image.weight for image in self.images)
        return tuple(image.weight / total for image in self.images)


@dataclass(frozen=True)
class StyleParams:
    """The settings of one stylization. Every rule of the daemon resolves to one of these."""

    size: int = 512  # long edge of the result, in pixels
    # Optimisation steps over all scales together. None: planned to fill `seconds` when that is
    # set, else DEFAULT_STEPS. A step count given beside `seconds` wins (with a warning).
    steps: int | None = None
    # Time budget of one photo's optimisation (of one batch of same-style photos together),
    # excluding decode and encode: the engine plans scales and steps to fill it on this device
    # and stops within it. None: no budget; `steps` decides.
    seconds: float | None = None
    # Coarse-to-fine: the photo is optimised at `scales` sizes, each twice the one before and the
    # last one `size`; each scale starts from the previous result upsampled.
    scales: int = 3
    # Each finer scale gets 1/scale_step_ratio of the steps of the one before it. A step costs
    # about 4x more per doubling of the edge, so 2.0 spends most steps where they are cheap.
    scale_step_ratio: float = 2.0
    min_scale_size: int = 64  # coarser scales than this are skipped: VGG19 sees too little
    content_weight: float = 1.0
    # With the normalisation in losses.py, 1e6 balances the two terms as the PyTorch tutorial does.
    style_weight: float = 1e6
    # Total variation smooths the high-frequency noise the optimisation leaves behind.
    tv_weight: float = 1e-3
    content_layers: tuple[str, ...] = DEFAULT_CONTENT_LAYERS
    style_layers: tuple[str, ...] = DEFAULT_STYLE_LAYERS
    # Relative weights of style_layers (normalised to sum 1); empty means equal weights.
    style_layer_weights: tuple[float, ...] = ()
    # Painting size relative to the photo's working size: >1 gives finer brush strokes.
    style_scale: float = 1.0
    pooling: Pooling = "max"  # "avg" gives smoother gradients (Gatys et al.); "max" is the usual
    optimizer: Optimizer = "lbfgs"
    learning_rate: float | None = None  # None: 1.0 for L-BFGS, 0.02 for Adam (image in [0, 1])
    init: Init = "content"
    init_image: Path | None = None  # starts from this picture instead of `init`
    seed: int = 0
    # "luminance": keep the result's luminance and the photo's chroma (the photo's colours).
    # "histogram": recolour the paintings to the photo's colour statistics before transfer.
    preserve_colors: PreserveColors = "none"

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 16384:
            raise SettingError("size", f"size must be between 16 and 16384 pixels, got {self.size}")
        if self.steps is not None and self.steps < 1:
            raise SettingError("steps", f"steps must be at least 1, got {self.steps}")
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds > 0):
            raise SettingError(
                "seconds", f"seconds must be a positive number of seconds, got {self.seconds}"
            )
        if self.scales < 1:
            raise SettingError("scales", f"scales must be at least 1, got {self.scales}")
        if not self.scale_step_ratio > 0:
            raise SettingError("scale_step_ratio", "scale_step_ratio must be positive")
        for name in ("content_weight", "style_weight", "tv_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise SettingError(name, f"{name} must be a number >= 0, got {value!r}")
        if not (math.isfinite(self.style_scale) and 0.05 <= self.style_scale <= 8):
            raise SettingError(
                "style_scale", f"style_scale must be between 0.05 and 8, got {self.style_scale}"
            )
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise SettingError("learning_rate", "learning_rate must be positive")
        if not self.style_layers:
            raise SettingError("style_layers", "style_layers must name at least one layer")
        if not self.content_layers:
            raise SettingError("content_layers", "content_layers must name at least one layer")
        if self.style_layer_weights and len(self.style_layer_weights) != len(self.style_layers):
            raise SettingError(
                "style_layer_weights", "style_layer_weights needs one weight per style layer"
            )
        if any(not (math.isfinite(w) and w >= 0) for w in self.style_layer_weights):
            raise SettingError("style_layer_weights", "style_layer_weights must be numbers >= 0")
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("preserve_colors", self.preserve_colors, PRESERVE_COLORS)
        _check_choice("init", self.init, ("content", "random"))
        for name in ("content_layers", "style_layers"):
            for layer in getattr(self, name):
                if layer not in LAYER_NAMES:
                    raise SettingError(
                        name, f"unknown VGG19 layer {layer!r}; layers are named like relu4_2"
                    )

    def replace(self, **changes: object) -> StyleParams:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1.0 if self.optimizer == "lbfgs" else 0.02

    def layer_weights(self) -> tuple[float, ...]:
        weights = self.style_layer_weights or (1.0,) * len(self.style_layers)
        total = sum(weights)
        if total <= 0:
            raise SettingError("style_layer_weights", "style_layer_weights must not all be zero")
        return tuple(w / total for w in weights)

    @property
    def step_count(self) -> int:
        """`steps`, or DEFAULT_STEPS where it is not set."""
        return DEFAULT_STEPS if self.steps is None else self.steps

    @property
    def budgeted(self) -> bool:
        """Whether a time budget plans the schedule: `seconds` set and no explicit step count."""
        return self.seconds is not None and self.steps is None

    def scale_sizes(self) -> list[int]:
        """Long edge per scale, coarsest first: each half the next, the last `size`."""
        sizes = [round(self.size / 2**k) for k in reversed(range(self.scales))]
        return [s for s in sizes[:-1] if s >= self.min_scale_size] + [self.size]

    def schedule(self) -> tuple[tuple[int, int], ...]:
        """(long edge, steps) per scale, coarsest first; the last is (size, ...). Under a time
        budget the steps are planned per photo instead (engine.planner); this is its shape."""
        sizes = self.scale_sizes()
        shares = [self.scale_step_ratio ** (len(sizes) - 1 - i) for i in range(len(sizes))]
        total = sum(shares)
        count = self.step_count
        steps = [max(1, math.floor(count * share / total)) for share in shares]
        # Give the rounding remainder to the coarsest scale, where a step is cheapest.
        steps[0] += max(0, count - sum(steps))
        return tuple(zip(sizes, steps, strict=True))


# Named schedules: how many scales and steps a photo gets. Measured times per photo are in
# BENCHMARKS.md. Explicit settings given alongside a preset win over it.
PRESETS: dict[str, dict[str, object]] = {
    # A preview in seconds: few steps, and each finer scale gets a third of the one before,
    # so the full-size scale (the expensive one) runs only a handful of steps.
    "fast": {"steps": 120, "scales": 3, "scale_step_ratio": 3.0},
    # The defaults: enough steps at every scale for the style to settle.
    "balanced": {"steps": 300, "scales": 3, "scale_step_ratio": 2.0},
    # More steps and a fourth, coarser scale for large structures; minutes per photo on a CPU.
    "best": {"steps": 800, "scales": 4, "scale_step_ratio": 1.5},
}


def with_preset(params: StyleParams, name: str) -> StyleParams:
    """`params` with a preset's schedule. Under a time budget (`seconds` set, no `steps`) the
    preset gives the schedule's shape (scales, step ratio) and the budget its step count."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}")
    preset = PRESETS[name]
    if params.budgeted:
        preset = {k: v for k, v in preset.items() if k != "steps"}
    return params.replace(**preset)


@dataclass(frozen=True)
class Progress:
    """One optimisation step done, as reported to a progress callback."""

    scale: int  # 1-based index of the current scale
    scales: int
    size: int  # long edge at this scale
    step: int  # 1-based step within the whole run
    steps: int  # steps of the whole run
    loss: float
    seconds: float  # since the stylization started


@dataclass(frozen=True)
class Snapshot:
    """The state of one photo's optimisation, saved so that an interrupted job can resume.

    Resuming restarts L-BFGS's curvature history; nothing else of the run is lost.
    """

    index: int  # the photo's position in the batch it was taken from
    schedule: tuple[tuple[int, int], ...]  # (long edge, steps) per whole-image scale that runs
    scale: int  # 1-based scale of `schedule` that `image` belongs to
    step: int  # steps done over the whole run
    image: Image.Image  # the pixels being optimised: RGB, 8-bit, at that scale's working size


SnapshotCallback = Callable[[Snapshot], None]


@dataclass(frozen=True)
class LossTerms:
    """The parts of the last evaluated loss, for reports and benchmarks."""

    content: float
    style: float
    tv: float

    @property
    def total(self) -> float:
        return self.content + self.style + self.tv


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SettingError(name, f"{name} must be one of {', '.join(choices)}; got {value!r}")
