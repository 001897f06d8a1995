"""The device a Stylizer runs on: its choice, the precision in force, the memory budget, and
pictures moved onto it and back."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from engine.errors import EngineError

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Memory of one optimisation pass per pixel of the photo (activations kept for the backward pass,
# gradients, L-BFGS's history, allocator slack): measured in bf16 on the CPU at 768 px, 1.4 KB
# with Adam and 2.5 KB with L-BFGS (1.2 KB of it the history); planned with a margin.
BYTES_PER_PIXEL = 3000

Autocast = Callable[[], contextlib.AbstractContextManager[object]]


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


def check_precision(precision: str, device: torch.device) -> None:
    """An explicit bf16 on a GPU without it fails now, not at the first photo."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise EngineError("precision bf16 asked for, but this GPU does not support bfloat16")


def autocast_for(precision: str, device: torch.device) -> Autocast:
    """A factory of the autocast context of the VGG19 passes at this precision."""
    dtype = _AUTOCAST_DTYPES.get(precision)

    def autocast() -> contextlib.AbstractContextManager[object]:
        if dtype is None:
            return contextlib.nullcontext()
        # No cast-weight cache: each weight is cast once per pass anyway, and a CUDA graph
        # capture refuses one.
        return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=False)

    return autocast


class MemoryBudget:
    """Photo pixels one optimisation pass may hold: the configured budget, or a share of the
    device's memory, lowered after running out of it."""

    def __init__(self, device: torch.device, budget_mb: int | None) -> None:
        self._device = device
        self._budget_mb = budget_mb
        # Lowered after running out of memory: the next photos tile at a smaller size.
        self._factor = 1.0

    def pixels(self) -> int:
        if self._budget_mb is None:
            if self._device.type == "cuda":
                total = torch.cuda.get_device_properties(self._device).total_memory
                budget = int(total * 0.8)  # leave room for the network, cuDNN and the canvas
            else:
                budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        else:
            budget = self._budget_mb * 2**20
        return max(1, int(budget * self._factor) // BYTES_PER_PIXEL)

    def shrink(self) -> bool:
        """Halve the budget; False once it is so small (64 x 64 px tiles) that shrinking
        further would not help."""
        if self.pixels() // 2 < 64 * 64:
            return False
        self._factor /= 2
        return True


def to_tensor(picture: Image.Image, device: torch.device) -> torch.Tensor:
    """A picture as (1, 3, H, W) floats in [0, 1] on `device`."""
    pixels: torch.Tensor = pil_to_tensor(picture.convert("RGB"))
    return (pixels.float() / 255).unsqueeze(0).to(device)


def to_pil(image: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [0, 1] as an 8-bit RGB picture."""
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    picture: Image.Image = to_pil_image(pixels)
    return picture


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if image.shape[2] == height and image.shape[3] == width:
        return image
    return F.interpolate(
        image, size=(height, width), mode="bicubic", align_corners=False, antialias=True
    )


def release_cached(device: torch.device) -> None:
    """Give the allocator's cached blocks back to the GPU (after out-of-memory, on close)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
