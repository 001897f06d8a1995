"""Outputs larger than the memory budget: tiles, blending, agreement with the plain path."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.params import EngineConfig, StyleParams, StyleSpec
from engine.stylizer import BYTES_PER_PIXEL, Stylizer
from engine.tiles import feather, tile_grid

# A budget of 9437 px: 96 px tiles for a 192 x 128 output, whose 96 px first scale fits whole.
# Tiles must not be tiny next to the picture, as in real use (1000+ px tiles): a 32 px tile sees
# too little of the picture for its statistics to stand for the whole.
SMALL_BUDGET_MB = 27
ADAM = StyleParams(
    size=192, steps=24, scales=2, min_scale_size=32, optimizer="adam", learning_rate=0.02
)


def _engine(weights: Path, budget_mb: int | None) -> Stylizer:
    return Stylizer(
        EngineConfig(device="cpu", weights=weights, download=False, memory_budget_mb=budget_mb)
    )


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_the_grid_covers_the_image_with_overlapping_tiles() -> None:
    tiles = tile_grid(100, 230, 64)
    covered = np.zeros((100, 230), dtype=int)
    for y0, y1, x0, x1 in tiles:
        assert y1 - y0 <= 64
        assert x1 - x0 <= 64
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    xs = sorted({(x0, x1) for _, _, x0, x1 in tiles})
    assert all(b[0] < a[1] - 8 for a, b in itertools.pairwise(xs))  # real overlaps
    assert tile_grid(50, 60, 64) == [(0, 50, 0, 60)]


def test_feather_weights_cross_fade_and_sum_to_something_everywhere() -> None:
    tiles = tile_grid(64, 150, 64)
    total = torch.zeros(1, 1, 64, 150)
    for tile in tiles:
        y0, y1, x0, x1 = tile
        weights = feather(y1 - y0, x1 - x0, tiles, tile)
        assert weights.max() == 1.0
        assert weights.min() > 0
        total[..., y0:y1, x0:x1] += weights
    assert total.min() > 0.5
    first = feather(64, 64, tiles, tiles[0])[0, 0, 32]
    assert first[0] == 1.0  # the image's own border is not faded
    assert first[-1] < 0.1  # the side shared with the next tile is


def test_a_tiled_output_agrees_with_the_plain_one_and_has_no_seams(
    vgg_checkpoint: Path, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    style = StyleSpec.of(style_files[0])
    plain = _engine(vgg_checkpoint, None).stylize(photo, style, ADAM)
    tiny = _engine(vgg_checkpoint, SMALL_BUDGET_MB)
    assert tiny.pixel_budget() == SMALL_BUDGET_MB * 2**20 // BYTES_PER_PIXEL
    tiled = tiny.stylize(photo, style, ADAM)
    assert tiled.image.size == plain.image.size == (192, 128)
    assert tiled.steps > plain.steps  # the full-size steps ran once per tile
    source = _array(photo.resize(plain.image.size, Image.Resampling.LANCZOS))
    moved = np.abs(_array(plain.image) - source).mean()
    apart = np.abs(_array(tiled.image) - _array(plain.image)).mean()
    assert moved > 10  # the style did change the photo...
    assert apart < 0.5 * moved  # ...and tiling lands close to where the plain path does

    # Seams: the step between neighbouring columns at tile borders is no larger than elsewhere.
    pixels = _array(tiled.image)
    steps = np.abs(np.diff(pixels, axis=1)).mean(axis=(0, 2))  # per column boundary
    borders = sorted({x for *_, x0, x1 in tile_grid(128, 192, 96) for x in (x0, x1) if 0 < x < 192})
    at_borders = np.mean([steps[x - 1] for x in borders])
    assert at_borders <= 1.25 * np.mean(steps), (at_borders, np.mean(steps))


def test_a_paintings_gram_summed_over_tiles_matches_the_whole(
    vgg_checkpoint: Path, style_files: tuple[Path, Path]
) -> None:
    with Image.open(style_files[0]) as im:
        painting = im.convert("RGB").resize((192, 192))
    tensor = torch.from_numpy(np.asarray(painting, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    params = StyleParams(style_layers=("relu1_1", "relu3_1"))
    whole = _engine(vgg_checkpoint, None).targets.painting_grams(tensor, params)
    tiled = _engine(vgg_checkpoint, 15).targets.painting_grams(tensor, params)  # in two halves
    for layer in params.style_layers:
        error = torch.linalg.norm(tiled[layer] - whole[layer]) / torch.linalg.norm(whole[layer])
        assert error < 0.1, (layer, float(error))


def test_batches_are_split_to_fit_the_budget_with_the_same_results(
    vgg_checkpoint: Path, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    small = photo.resize((48, 32))
    params = StyleParams(size=48, steps=4, scales=1, optimizer="adam")
    style = StyleSpec.of(style_files[0])
    one_at_a_time = _engine(vgg_checkpoint, 5)  # 1747 px: one 48 x 32 photo per pass
    together = _engine(vgg_checkpoint, None)
    flipped = small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    split = one_at_a_time.stylize_batch([small, flipped], style, params)
    joint = together.stylize_batch([small, flipped], style, params)
    for a, b in zip(split, joint, strict=True):
        assert np.abs(_array(a.image) - _array(b.image)).max() <= 2


@pytest.mark.slow
def test_a_4096_px_output_works_on_the_cpu_within_a_budget(
    vgg_checkpoint: Path, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    engine = _engine(vgg_checkpoint, 2048)
    params = StyleParams(size=4096, steps=3, scales=2, optimizer="adam")
    result = engine.stylize(photo, StyleSpec.of(style_files[0]), params)
    assert max(result.image.size) == 4096
    assert np.isfinite(_array(result.image)).all()


def test_the_memory_budget_and_stuck_time_are_config_settings(tmp_path: Path) -> None:
    from daemon.config import load_config

    (tmp_path / "inbox").mkdir()
    (tmp_path / "p.jpg").write_bytes(b"painting")
    (tmp_path / "c.yaml").write_text(
        "input: inbox\noutput: outbox\nstate: state\n"
        "engine: {memory_budget_mb: 8000, stuck_seconds: 5}\n"
        "styles: {s: {image: p.jpg}}\nrules: [{match: '**/*', styles: [s]}]\n"
    )
    config = load_config(tmp_path / "c.yaml")
    assert config.engine.engine.memory_budget_mb == 8000
    assert config.engine.stuck_seconds == 5.0


def test_the_budget_halves_after_running_out_of_memory_down_to_a_floor(
    vgg_checkpoint: Path,
) -> None:
    engine = _engine(vgg_checkpoint, 100)
    full = engine.pixel_budget()
    assert engine.shrink_memory_budget()
    assert engine.pixel_budget() == pytest.approx(full / 2, abs=1)
    while engine.shrink_memory_budget():
        pass
    assert 64 * 64 <= engine.pixel_budget() < 2 * 64 * 64
