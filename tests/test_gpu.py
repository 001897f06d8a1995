"""The CUDA path: skipped without a GPU (run them on a machine that has one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.params import EngineConfig, StyleParams, StyleSpec
from engine.stylizer import Stylizer

pytestmark = pytest.mark.gpu
PARAMS = StyleParams(size=128, steps=20, scales=2, min_scale_size=32)


def _engine(weights: Path, precision: str) -> Stylizer:
    return Stylizer(
        EngineConfig(device="cuda", weights=weights, download=False, precision=precision)
    )  # type: ignore[arg-type]


def test_auto_device_and_precision_take_the_gpu_and_bf16(vgg_checkpoint: Path) -> None:
    engine = Stylizer(
        EngineConfig(device="auto", weights=vgg_checkpoint, download=False, precision="auto")
    )
    assert engine.device.type == "cuda"
    assert engine.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert next(engine.model.parameters()).is_contiguous(memory_format=torch.channels_last)


def test_bf16_lands_near_fp32_and_batches_match_singles(
    vgg_checkpoint: Path, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    style = StyleSpec.of(style_files[0])
    fp32 = _engine(vgg_checkpoint, "fp32").stylize(photo, style, PARAMS)
    bf16_engine = _engine(vgg_checkpoint, "bf16")
    bf16 = bf16_engine.stylize(photo, style, PARAMS)
    assert bf16.device.startswith("cuda")
    assert np.isfinite(np.asarray(bf16.image, dtype=float)).all()
    assert bf16.loss.total == pytest.approx(fp32.loss.total, rel=0.25)
    adam = PARAMS.replace(optimizer="adam")
    flipped = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    single = [bf16_engine.stylize(p, style, adam).image for p in (photo, flipped)]
    batch = bf16_engine.stylize_batch([photo, flipped], style, adam)
    for a, b in zip(single, batch, strict=True):
        diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b.image, dtype=int))
        assert diff.mean() < 1.0


def test_a_large_output_tiles_within_a_small_gpu_budget(
    vgg_checkpoint: Path, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    engine = Stylizer(
        EngineConfig(device="cuda", weights=vgg_checkpoint, download=False, memory_budget_mb=256)
    )
    torch.cuda.reset_peak_memory_stats()
    result = engine.stylize(
        photo,
        StyleSpec.of(style_files[0]),
        StyleParams(size=1024, steps=4, scales=2, optimizer="adam"),
    )
    assert max(result.image.size) == 1024
    # The network and the canvas come on top of the budget, which covers one pass's activations.
    assert torch.cuda.max_memory_allocated() < 1024 * 2**20


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_cuda_graphs_give_the_eager_images_and_stay_on(
    vgg_checkpoint: Path,
    photo: Image.Image,
    style_files: tuple[Path, Path],
    optimizer: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = PARAMS.replace(optimizer=optimizer)
    style = StyleSpec.of(style_files[0])
    engines = {
        graphs: Stylizer(
            EngineConfig(device="cuda", weights=vgg_checkpoint, download=False, cuda_graphs=graphs)
        )
        for graphs in (False, True)
    }
    # The same kernels on both sides (no autotuning, deterministic ones): a replayed graph runs
    # exactly what the eager pass runs, so L-BFGS, which amplifies any rounding difference after
    # a wild step, cannot tell them apart either.
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    results = {graphs: engine.stylize(photo, style, params) for graphs, engine in engines.items()}
    for graphs, engine in engines.items():
        assert engine.graphs.enabled is graphs, engine.graphs.failure  # no silent fallback
    diff = np.abs(
        np.asarray(results[True].image, dtype=int) - np.asarray(results[False].image, dtype=int)
    )
    assert diff.max() <= 1, diff.max()
    assert results[True].loss.total == pytest.approx(results[False].loss.total, rel=1e-3)


def test_a_scale_waits_for_the_gpu_only_when_it_reads_the_losses_back(
    vgg_checkpoint: Path, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    import math
    import warnings

    from engine.images import resize_long_edge
    from engine.optimize import REPORT_EVERY_ON_GPU, StepReport, run_scale

    engine = _engine(vgg_checkpoint, "bf16")
    params = PARAMS.replace(steps=100, scales=1)
    content = engine._to_tensor(resize_long_edge(photo, params.size)).contiguous()
    objective = engine._objective(content, StyleSpec.of(style_files[0]), params, params.size)
    report = StepReport(1, 1, params.size, 0, params.steps, 0.0)
    run_scale(objective, content, 3, report, graphs=engine.graphs)  # kernels chosen, warm
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_scale(objective, content, params.steps, report, graphs=engine.graphs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # One read of the starting loss (L-BFGS's rescaling), up to two around the capture (torch's
    # graph context synchronises and empties the cache), then one per chunk of losses; torch's
    # own L-BFGS would wait over a hundred times per step.
    assert len(syncs) <= 3 + math.ceil(params.steps / REPORT_EVERY_ON_GPU), [
        str(w.message) for w in syncs
    ]
    assert engine.graphs.enabled, engine.graphs.failure
