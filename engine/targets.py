"""Style targets: the blended Gram matrices of a style's paintings at one scale, cached.

They depend only on the paintings and the settings, so a daemon that styles a thousand photos
with one painting computes that painting's targets once per scale. Targets matched to a photo's
colours (preserve_colors: histogram) depend on the photo and are never cached.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path

import torch
from PIL import Image

from engine import color, losses
from engine.device import Autocast, to_tensor
from engine.errors import BadImageError, StyleError
from engine.images import decode, resize_long_edge
from engine.layers import min_input_edge
from engine.params import StyleParams, StyleSpec
from engine.vgg import VGGFeatures

Targets = dict[str, torch.Tensor]


class StyleTargets:
    """The style-target cache of one resident network: least recently used out first."""

    def __init__(
        self,
        model: VGGFeatures,
        device: torch.device,
        autocast: Autocast,
        *,
        size: int,
        pixel_budget: Callable[[], int],
    ) -> None:
        self._model = model
        self._device = device
        self._autocast = autocast
        self._size = size
        self._pixel_budget = pixel_budget
        self._cache: OrderedDict[Hashable, Targets] = OrderedDict()
        # How often style targets were computed rather than found in the cache.
        self.computations = 0

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._cache)

    def clear(self) -> None:
        self._cache.clear()

    def check_files(self, style: StyleSpec) -> None:
        """Fail now when a painting cannot be read or decoded."""
        for image in style.images:
            file_identity(image.path)
            load_painting(image.path)

    def get(
        self, style: StyleSpec, params: StyleParams, long_edge: int, photo: torch.Tensor | None
    ) -> Targets:
        """Blended Gram matrices of the paintings at this scale, cached unless photo-dependent."""
        key = (
            tuple(file_identity(image.path) for image in style.images),
            style.normalised_weights(),
            round(long_edge * params.style_scale),
            params.style_layers,
            params.pooling,
        )
        if photo is None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        self.computations += 1
        blended: Targets = {}
        style_edge = round(long_edge * params.style_scale)
        min_edge = min_input_edge(params.style_layers)
        for image, weight in zip(style.images, style.normalised_weights(), strict=True):
            picture = load_painting(image.path)
            # A wide painting at a small scale is enlarged until its short edge survives the pools.
            edge = max(style_edge, math.ceil(max(picture.size) * min_edge / min(picture.size)))
            painting = to_tensor(resize_long_edge(picture, edge), self._device)
            if photo is not None:
                painting = color.match_histogram(painting, photo)
            for layer, g in self.painting_grams(painting, params).items():
                blended[layer] = blended[layer] + g * weight if layer in blended else g * weight
        if photo is None:
            self._cache[key] = blended
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return blended

    def painting_grams(self, painting: torch.Tensor, params: StyleParams) -> Targets:
        """Gram matrices of a (1, 3, H, W) painting; one larger than the budget is summed over
        tiles, which gives the same matrices up to the convolutions' borders."""
        height, width = painting.shape[2:]
        # No gradients are kept here, so a pass holds several times more pixels than a step.
        budget = self._pixel_budget() * 4
        rows = cols = 1
        while (height // rows) * (width // cols) > budget:
            rows, cols = (rows + 1, cols) if height / rows >= width / cols else (rows, cols + 1)
        ys = [round(i * height / rows) for i in range(rows + 1)]
        xs = [round(i * width / cols) for i in range(cols + 1)]
        sums: Targets = {}
        positions: dict[str, int] = dict.fromkeys(params.style_layers, 0)
        for y0, y1 in itertools.pairwise(ys):
            for x0, x1 in itertools.pairwise(xs):
                with torch.no_grad(), self._autocast():
                    features = self._model(
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


def file_identity(path: Path) -> tuple[str, int, int]:
    """A painting's cache identity: a replaced file (new size or mtime) gets new targets."""
    try:
        stat = Path(path).stat()
    except OSError as exc:
        raise StyleError(f"style image {path} cannot be read: {exc.strerror or exc}") from exc
    return (os.fspath(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def load_painting(path: Path) -> Image.Image:
    """A painting that cannot be decoded is the style's fault, not the photo's."""
    try:
        return decode(path).image
    except BadImageError as exc:
        raise StyleError(f"style image {path} is unusable: {exc}") from exc
