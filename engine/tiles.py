"""Overlapping tiles for outputs larger than the memory budget, and their blending weights.

The grid is plain arithmetic that engine.planner uses without torch; only the weights need it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

Tile = tuple[int, int, int, int]  # y0, y1, x0, x1 (ends exclusive)


def _spans(length: int, edge: int, overlap: int) -> list[tuple[int, int]]:
    if length <= edge:
        return [(0, length)]
    count = math.ceil((length - overlap) / (edge - overlap))
    step = (length - edge) / (count - 1)
    return [(round(i * step), round(i * step) + edge) for i in range(count)]


def tile_grid(height: int, width: int, edge: int) -> list[Tile]:
    """Tiles of at most edge x edge covering the image, overlapping by about a quarter of an
    edge: enough context that a tile's border pixels are optimised like its middle."""
    overlap = max(8, edge // 4)
    return [
        (y0, y1, x0, x1)
        for y0, y1 in _spans(height, edge, overlap)
        for x0, x1 in _spans(width, edge, overlap)
    ]


def feather(height: int, width: int, tiles: Sequence[Tile], tile: Tile) -> torch.Tensor:
    """(1, 1, h, w) weights of `tile`: 1 inside, falling linearly to near 0 across the part it
    shares with a neighbour, so that overlapping tiles cross-fade instead of meeting at a seam."""
    import torch

    y0, y1, x0, x1 = tile

    def ramp(length: int, start: int, end: int, starts: set[int], ends: set[int]) -> torch.Tensor:
        weights = torch.ones(length)
        # The overlap with the previous tile along this axis: it ends where that tile ends.
        before = max((e for e in ends if start < e < end), default=start) - start
        after = end - min((s for s in starts if start < s < end), default=end)
        if before > 0:
            weights[:before] = torch.minimum(
                weights[:before], (torch.arange(before) + 1) / (before + 1)
            )
        if after > 0:
            fall = torch.flip((torch.arange(after) + 1) / (after + 1), dims=(0,))
            weights[length - after :] = torch.minimum(weights[length - after :], fall)
        return weights

    row_starts = {t[0] for t in tiles if t[2] == x0}
    row_ends = {t[1] for t in tiles if t[2] == x0}
    col_starts = {t[2] for t in tiles if t[0] == y0}
    col_ends = {t[3] for t in tiles if t[0] == y0}
    wy = ramp(height, y0, y1, row_starts, row_ends)
    wx = ramp(width, x0, x1, col_starts, col_ends)
    return (wy[:, None] * wx[None, :]).view(1, 1, height, width)
