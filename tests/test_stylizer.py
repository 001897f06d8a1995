"""The resident Stylizer end to end: real VGG19 architecture, random weights, tiny images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import color
from engine.errors import BadImageError, Cancelled, EngineError, NumericalError, StyleError
from engine.params import EngineConfig, Progress, StyleImage, StyleParams, StyleSpec
from engine.stylizer import Stylizer, fitted_schedule, pick_device, working_size

# Few steps, tiny sizes: the suite must run on two CPU cores in minutes.
FAST = StyleParams(size=48, steps=8, scales=2, min_scale_size=24)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_result_has_the_asked_size_and_aspect(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    result = stylizer.stylize(photo, StyleSpec.of(style_files[0]), FAST)
    assert max(result.image.size) == 48
    assert result.image.size == working_size(photo.size, 48)
    assert result.image.mode == "RGB"
    assert result.steps == 8
    assert result.device == "cpu"


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_loss_falls_under_optimisation(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path], optimizer: str
) -> None:
    seen: list[Progress] = []
    params = StyleParams(size=40, steps=15, scales=1, optimizer=optimizer)  # type: ignore[arg-type]
    stylizer.stylize(photo, StyleSpec.of(style_files[0]), params, progress=seen.append)
    assert [p.step for p in seen] == list(range(1, 16))
    assert seen[-1].loss < 0.5 * seen[0].loss


def test_same_seed_same_image_other_seed_other_image(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    params = FAST.replace(init="random", seed=7)
    style = StyleSpec.of(style_files[0])
    # With several threads on a busy CPU some kernels split their work by the threads they get,
    # which changes float summation order; one thread makes the result bit for bit repeatable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = stylizer.stylize(photo, style, params).image
        again = stylizer.stylize(photo, style, params).image
        other = stylizer.stylize(photo, style, params.replace(seed=8)).image
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(_pixels(first), _pixels(again))
    assert np.abs(_pixels(first) - _pixels(other)).mean() > 10


def test_style_targets_are_computed_once_for_many_photos(
    vgg_checkpoint: Path, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    stylizer = Stylizer(EngineConfig(device="cpu", weights=vgg_checkpoint, download=False))
    style = StyleSpec.of(style_files[0])
    params = StyleParams(size=48, steps=2, scales=2, min_scale_size=24)
    photos = [
        photo,
        photo.rotate(90, expand=True),
        photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    ]
    for picture in photos:
        stylizer.stylize(picture, style, params)
    # One set of Gram matrices per scale, shared by the three photos.
    assert stylizer.target_computations == len(params.schedule()) == 2
    stylizer.prepare_style(style, params)
    assert stylizer.target_computations == 2
    stylizer.stylize(photo, style, params.replace(style_scale=1.5))
    assert stylizer.target_computations == 4  # another painting size means other targets


def test_style_cache_is_bounded(
    vgg_checkpoint: Path, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    stylizer = Stylizer(
        EngineConfig(device="cpu", weights=vgg_checkpoint, download=False, style_cache_size=2)
    )
    params = StyleParams(size=32, steps=1, scales=1)
    for scale in (1.0, 1.25, 1.5):
        stylizer.prepare_style(StyleSpec.of(style_files[0]), params.replace(style_scale=scale))
    assert stylizer.target_computations == 3
    stylizer.prepare_style(StyleSpec.of(style_files[0]), params)  # evicted: computed again
    assert stylizer.target_computations == 4


def test_batch_matches_single_results_with_adam(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    params = FAST.replace(optimizer="adam", steps=6)
    style = StyleSpec.of(style_files[0])
    second = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    singles = [stylizer.stylize(p, style, params).image for p in (photo, second)]
    batch = stylizer.stylize_batch([photo, second], style, params)
    for single, batched in zip(singles, batch, strict=True):
        diff = np.abs(_pixels(single) - _pixels(batched.image))
        assert diff.max() <= 2, diff.max()
    assert not np.array_equal(_pixels(batch[0].image), _pixels(batch[1].image))


def test_batch_of_mixed_shapes_keeps_order(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    tall = photo.rotate(90, expand=True)
    results = stylizer.stylize_batch([photo, tall, photo], StyleSpec.of(style_files[0]), FAST)
    assert [r.image.size for r in results] == [
        working_size(photo.size, 48),
        working_size(tall.size, 48),
        working_size(photo.size, 48),
    ]


def test_luminance_preservation_keeps_the_photos_chroma(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    style = StyleSpec.of(style_files[0])
    plain = stylizer.stylize(photo, style, FAST).image
    kept = stylizer.stylize(photo, style, FAST.replace(preserve_colors="luminance")).image
    source = photo.resize(kept.size, Image.Resampling.LANCZOS)
    chroma = lambda im: np.asarray(im.convert("YCbCr"), dtype=np.int16)[..., 1:]  # noqa: E731
    assert np.abs(chroma(kept) - chroma(source)).mean() < 2.0
    assert (
        np.abs(chroma(plain) - chroma(source)).mean() > np.abs(chroma(kept) - chroma(source)).mean()
    )
    luma = lambda im: np.asarray(im.convert("L"), dtype=np.int16)  # noqa: E731
    assert np.abs(luma(kept) - luma(plain)).mean() < 2.0  # the style's luminance stays


def test_histogram_matching_gives_the_references_colour_statistics() -> None:
    torch.manual_seed(0)
    painting = torch.rand(1, 3, 20, 30) * torch.tensor([1.0, 0.3, 0.1]).view(1, 3, 1, 1)
    photo = torch.rand(1, 3, 25, 25) * 0.5 + 0.25
    matched = color.match_histogram(painting, photo)
    assert torch.allclose(matched.mean((2, 3)), photo.mean((2, 3)), atol=1e-3)
    got = torch.cov(matched.reshape(3, -1))
    want = torch.cov(photo.reshape(3, -1))
    assert torch.allclose(got, want, atol=1e-3)


def test_histogram_preservation_runs_per_photo_without_caching(
    vgg_checkpoint: Path, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    stylizer = Stylizer(EngineConfig(device="cpu", weights=vgg_checkpoint, download=False))
    params = FAST.replace(preserve_colors="histogram")
    results = stylizer.stylize_batch(
        [photo, photo.rotate(180)], StyleSpec.of(style_files[0]), params
    )
    assert len(results) == 2
    assert len(list(stylizer.targets)) == 0


def test_blend_weights_are_normalised_and_a_lone_painting_equals_itself(
    vgg_checkpoint: Path, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    stylizer = Stylizer(EngineConfig(device="cpu", weights=vgg_checkpoint, download=False))
    params = StyleParams(size=32, steps=1, scales=1)
    a, b = style_files
    only_a = stylizer.targets.get(StyleSpec.of(a), params, 32, photo=None)
    heavy_a = stylizer.targets.get(
        StyleSpec((StyleImage(a, 3.0), StyleImage(b, 1.0))), params, 32, photo=None
    )
    only_b = stylizer.targets.get(StyleSpec.of(b), params, 32, photo=None)
    for layer in params.style_layers:
        assert torch.allclose(
            heavy_a[layer], 0.75 * only_a[layer] + 0.25 * only_b[layer], rtol=1e-4
        )


def test_cancellation_lands_between_steps(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    seen: list[Progress] = []
    with pytest.raises(Cancelled):
        stylizer.stylize(
            photo,
            StyleSpec.of(style_files[0]),
            FAST,
            progress=seen.append,
            should_stop=lambda: len(seen) >= 3,
        )
    assert len(seen) == 3


def test_a_nan_loss_is_an_error_not_an_image(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    # fp32 overflows past 3.4e38: a weight that large turns the loss into inf.
    with pytest.raises(NumericalError, match="loss became"):
        stylizer.stylize(photo, StyleSpec.of(style_files[0]), FAST.replace(style_weight=1e300))


def test_a_missing_or_broken_painting_is_a_style_error(
    stylizer: Stylizer, photo: Image.Image, tmp_path: Path
) -> None:
    with pytest.raises(StyleError, match="cannot be read"):
        stylizer.stylize(photo, StyleSpec.of(tmp_path / "gone.jpg"), FAST)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a painting")
    with pytest.raises(StyleError, match="unusable"):
        stylizer.prepare_style(StyleSpec.of(broken), FAST)


def test_init_image_starts_the_optimisation(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path], tmp_path: Path
) -> None:
    start = tmp_path / "start.png"
    Image.new("RGB", (10, 10), (255, 0, 0)).save(start)
    params = StyleParams(
        size=32, steps=1, scales=1, optimizer="adam", learning_rate=1e-6, init_image=start
    )
    red = np.asarray(stylizer.stylize(photo, StyleSpec.of(style_files[0]), params).image)
    assert red[..., 0].min() >= 250
    assert red[..., 1:].max() <= 5


def test_low_precision_autocast_on_cpu_gives_a_close_loss(
    vgg_checkpoint: Path, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    results = {}
    for precision in ("fp32", "bf16"):
        engine = Stylizer(
            EngineConfig(device="cpu", weights=vgg_checkpoint, download=False, precision=precision)
        )  # type: ignore[arg-type]
        results[precision] = engine.stylize(photo, StyleSpec.of(style_files[0]), FAST)
    fp32, bf16 = results["fp32"].loss.total, results["bf16"].loss.total
    assert bf16 == pytest.approx(fp32, rel=0.25)


def test_unavailable_or_unknown_devices_are_clear_errors() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(EngineError, match="unknown device"):
        pick_device("quantum")


def test_schedule_spends_most_steps_on_small_scales() -> None:
    schedule = StyleParams(size=512, steps=300, scales=3).schedule()
    assert [size for size, _ in schedule] == [128, 256, 512]
    assert sum(steps for _, steps in schedule) == 300
    assert schedule[0][1] > schedule[1][1] > schedule[2][1]
    assert [
        s for s, _ in StyleParams(size=96, steps=10, scales=4, min_scale_size=40).schedule()
    ] == [48, 96]


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown VGG19 layer"):
        StyleParams(style_layers=("relu9_9",))
    with pytest.raises(ValueError, match="steps"):
        StyleParams(steps=0)
    with pytest.raises(ValueError, match="one weight per style layer"):
        StyleParams(style_layer_weights=(1.0,))
    with pytest.raises(ValueError, match="positive"):
        StyleImage(Path("a.jpg"), weight=0)


def test_thin_photos_drop_coarse_scales_and_too_thin_ones_are_refused(
    stylizer: Stylizer, style_files: tuple[Path, Path]
) -> None:
    panorama = Image.new("RGB", (400, 60), (90, 120, 200))
    params = StyleParams(size=128, steps=6, scales=3, min_scale_size=16)
    # 128 x 19 survives the four pools before relu5_1; 64 x 10 and 32 x 5 would not.
    assert fitted_schedule(panorama.size, params, 16) == ((128, 6),)
    result = stylizer.stylize(panorama, StyleSpec.of(style_files[0]), params)
    assert result.image.size == (128, 19)
    assert result.steps == 6
    with pytest.raises(BadImageError) as info:
        stylizer.stylize(Image.new("RGB", (400, 20)), StyleSpec.of(style_files[0]), params)
    assert info.value.reason == "too_small"
    assert "raise the size" in str(info.value)


def test_a_wide_painting_at_a_tiny_scale_still_gives_targets(
    stylizer: Stylizer, photo: Image.Image, tmp_path: Path
) -> None:
    wide = tmp_path / "wide.png"
    Image.new("RGB", (300, 30), (200, 40, 40)).save(wide)
    result = stylizer.stylize(photo, StyleSpec.of(wide), StyleParams(size=32, steps=2, scales=1))
    assert result.image.size == working_size(photo.size, 32)
