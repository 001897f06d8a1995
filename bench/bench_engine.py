"""Engine benchmark: stylewatch's engine against a plain baseline, same run, same images.

The baseline is written the way the PyTorch neural-style tutorial does it: the full VGG19 `features`
stack in fp32, the style targets recomputed for every photo, L-BFGS over the pixels. The engine is
the resident Stylizer (network cut at relu5_1, cached targets, the chosen precision).

    python bench/bench_engine.py                       # 256 px, fp32 and bf16, on the best device
    python bench/bench_engine.py --sizes 512 1024 --precisions fp32 bf16 --steps 100
    python bench/bench_engine.py --sizes 256 --presets fast balanced --batch 4

On a GPU every engine row is measured with CUDA graphs and without (--cuda-graphs), and the engine
reports progress once per chunk of steps there, so give it --steps 75 or more.

Weights: the real checkpoint when torch's hub cache (or --weights) has it, else random weights
(the timings do not depend on the values). Timings belong here and in BENCHMARKS.md, never in tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from engine import losses
from engine.layers import LAYER_INDEX
from engine.optimize import REPORT_EVERY_ON_GPU
from engine.params import PRESETS, EngineConfig, Progress, StyleParams, StyleSpec, with_preset
from engine.stylizer import Stylizer
from engine.vgg import build_vgg19_features, hub_checkpoint_path, load_state_dict

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "samples" / "chelsea.png"
PAINTING = REPO / "samples" / "starry_night.jpg"


class TutorialBaseline:
    """Neural style the plain way: full VGG19, targets per photo, fp32, no caching."""

    def __init__(self, weights: Path, device: torch.device) -> None:
        features = build_vgg19_features()
        state = load_state_dict(weights)
        features.load_state_dict(
            {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        )
        layers = [nn.ReLU(inplace=False) if isinstance(m, nn.ReLU) else m for m in features]
        self.net = nn.Sequential(*layers).to(device).eval().requires_grad_(False)
        self.device = device
        self.mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
        self.names = {index: name for name, index in LAYER_INDEX.items()}

    def features(self, image: torch.Tensor, wanted: set[str]) -> dict[str, torch.Tensor]:
        out = {}
        x = (image - self.mean) / self.std
        for index, module in enumerate(self.net):  # every layer, to the end of the stack
            x = module(x)
            if self.names[index] in wanted:
                out[self.names[index]] = x
        return out

    def run(
        self,
        photo: torch.Tensor,
        painting: torch.Tensor,
        params: StyleParams,
        progress: Callable[[Progress], None],
    ) -> torch.Tensor:
        started = time.perf_counter()
        wanted = set(params.style_layers) | set(params.content_layers)
        with torch.no_grad():
            style_targets = {k: losses.gram(v) for k, v in self.features(painting, wanted).items()}
            content_targets = self.features(photo, wanted)
        image = photo.clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([image], max_iter=1, tolerance_grad=-1, tolerance_change=-1)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            feats = self.features(image, wanted)
            loss = params.content_weight * sum(
                F.mse_loss(feats[n], content_targets[n]) for n in params.content_layers
            )
            for name in params.style_layers:
                loss = loss + params.style_weight / len(params.style_layers) * F.mse_loss(
                    losses.gram(feats[name]), style_targets[name]
                )
            loss.backward()
            return loss

        for step in range(1, params.steps + 1):
            loss = optimizer.step(closure)
            with torch.no_grad():
                image.clamp_(0, 1)
            progress(
                Progress(
                    1,
                    1,
                    params.size,
                    step,
                    params.steps,
                    loss.item(),
                    time.perf_counter() - started,
                )
            )
        return image.detach()


def matrix_peak(device: torch.device) -> tuple[float, str]:
    """Achieved FLOP/s of a large matrix product: bf16 on a GPU, fp32 on a CPU."""
    dtype, n, reps = (
        (torch.bfloat16, 8192, 20) if device.type == "cuda" else (torch.float32, 2048, 8)
    )
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start), str(dtype).removeprefix("torch.")


def step_flops(
    stylizer: Stylizer, photo: Image.Image, style: StyleSpec, params: StyleParams
) -> int:
    """FLOPs of one optimisation step (forward and input gradient) at the params' size.

    stylize() also runs the content pass and a final evaluation, so one step is the difference
    between a 2-step and a 1-step run.
    """
    counts = []
    for steps in (1, 2):
        counter = FlopCounterMode(display=False)
        with counter:
            stylizer.stylize(photo, style, params.replace(steps=steps, scales=1))
        counts.append(counter.get_total_flops())
    return counts[1] - counts[0]


def loss_in_fp32(
    reference: Stylizer,
    image: Image.Image,
    photo: Image.Image,
    style: StyleSpec,
    params: StyleParams,
) -> float:
    """The full-size loss of a result, evaluated by an fp32 engine."""
    from engine.images import resize_long_edge

    content = reference._to_tensor(resize_long_edge(photo, params.size))
    objective = reference._objective(content, style, params, params.size)
    return objective.evaluate(reference._to_tensor(image))[0].total


def steady_step_seconds(records: list[Progress]) -> float:
    """Median time per step between progress reports, leaving out the first report (warm-up,
    target building). On a GPU the engine reads its losses back, and reports, once per chunk of
    steps: the steps of a chunk share one time stamp, taken once the GPU has finished them."""
    reports: dict[float, int] = {}
    for record in records:
        reports[record.seconds] = record.step  # the last step of each chunk
    points = sorted(reports.items())
    rates = [(t1 - t0) / (s1 - s0) for (t0, s0), (t1, s1) in itertools.pairwise(points)]
    if not rates:
        raise SystemExit(
            f"too few steps to time: the engine reported {len(points)} time(s); on a GPU use "
            f"--steps {3 * REPORT_EVERY_ON_GPU} or more"
        )
    return statistics.median(rates)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_tensor(picture: Image.Image, device: torch.device) -> torch.Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return (pil_to_tensor(picture).float() / 255).unsqueeze(0).to(device).contiguous()


def _weights(given: Path | None, folder: Path) -> tuple[Path, str]:
    if given is not None:
        return given, "given"
    cached = hub_checkpoint_path()
    if cached.is_file():
        return cached, "pretrained (hub cache)"
    torch.manual_seed(0)
    path = folder / "vgg19-random.pth"
    torch.save({f"features.{k}": v for k, v in build_vgg19_features().state_dict().items()}, path)
    return path, "random"


def time_presets(
    engine: Stylizer,
    photo: Image.Image,
    style: StyleSpec,
    presets: list[str],
    *,
    size: int,
    batch: int,
) -> list[dict[str, object]]:
    """Warm wall time of one photo, and of a batch of same-style photos, per preset."""
    device = engine.device
    # Same working size, different pictures: the photo mirrored and turned.
    variants = [
        photo,
        photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        photo.transpose(Image.Transpose.ROTATE_180),
    ]
    photos = [variants[i % len(variants)] for i in range(batch)]
    rows = []
    for name in presets:
        params = with_preset(StyleParams(size=size), name)
        engine.stylize_batch(photos, style, params)  # warm: targets, kernel choice, allocator
        timings = {}
        for count in (1, batch):
            _sync(device)
            start = time.perf_counter()
            engine.stylize_batch(photos[:count], style, params)
            _sync(device)
            timings[count] = time.perf_counter() - start
        schedule = ", ".join(f"{edge}: {steps}" for edge, steps in params.schedule())
        row = {
            "preset": name,
            "size": size,
            "schedule": schedule,
            "s_per_photo": timings[1],
            "batch": batch,
            "s_per_batch": timings[batch],
        }
        rows.append(row)
        print(
            f"preset {name:8s} {size}px ({schedule})  1 photo {timings[1]:7.3f} s  "
            f"batch of {batch} {timings[batch]:7.3f} s ({timings[batch] / batch:.3f} s/photo)"
        )
        sys.stdout.flush()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", type=Path)
    parser.add_argument(
        "--presets",
        nargs="*",
        choices=list(PRESETS),
        default=[],
        help="also time these presets, one photo and a batch, warm",
    )
    parser.add_argument("--preset-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="photos in the preset batch")
    parser.add_argument(
        "--cuda-graphs",
        choices=["on", "off", "both"],
        default="both",
        help="on a GPU: engine rows with CUDA graphs, without, or both (default)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    rows = []
    preset_rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        weights, kind = _weights(args.weights, Path(tmp))

        def engine(precision: str, graphs: bool) -> Stylizer:
            return Stylizer(
                EngineConfig(
                    device=args.device,
                    weights=weights,
                    precision=precision,  # type: ignore[arg-type]
                    download=False,
                    cuda_graphs=graphs,
                )
            )

        reference = engine("fp32", graphs=False)
        device = reference.device
        graph_modes = {"on": [True], "off": [False], "both": [False, True]}[args.cuda_graphs]
        if device.type != "cuda":
            graph_modes = [False]  # graphs are a CUDA feature
        # fp32 first: the others' final losses are compared with its.
        variants = [
            (precision, graphs)
            for precision in sorted(args.precisions, key=lambda p: p != "fp32")
            for graphs in graph_modes
        ]
        # The reference doubles as the fp32 eager row: one network load fewer.
        engines = {v: reference if v == ("fp32", False) else engine(*v) for v in variants}
        baseline = TutorialBaseline(weights, device)
        peak, peak_dtype = matrix_peak(device)
        threads = torch.get_num_threads()
        print(
            f"# {time.strftime('%Y-%m-%d')} device={device} "
            f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}) "
            f"torch={torch.__version__} threads={threads} "
            f"cpu={platform.processor() or platform.machine()} weights={kind}"
        )
        print(f"# matrix peak ({peak_dtype} matmul): {peak / 1e9:.1f} GFLOP/s")
        with Image.open(PHOTO) as im:
            photo = im.convert("RGB")
        style = StyleSpec.of(PAINTING)
        for size in args.sizes:
            params = StyleParams(size=size, steps=args.steps, scales=1)
            from engine.images import resize_long_edge

            photo_t = _to_tensor(resize_long_edge(photo, size), device)
            with Image.open(PAINTING) as im:
                painting_t = _to_tensor(resize_long_edge(im.convert("RGB"), size), device)
            # Warm-up both sides (allocator, oneDNN/cuDNN kernel choice), then time.
            baseline.run(photo_t, painting_t, params.replace(steps=2), lambda _: None)
            base_records: list[Progress] = []
            _sync(device)
            start = time.perf_counter()
            baseline.run(photo_t, painting_t, params, base_records.append)
            _sync(device)
            base_photo = time.perf_counter() - start
            base_step = steady_step_seconds(base_records)
            # The same FLOPs whatever the precision; counted eagerly (a replayed CUDA graph never
            # passes through the counter).
            flops = step_flops(reference, photo, style, params)
            fp32_loss: float | None = None
            for (precision, graphs), stylizer in engines.items():
                stylizer.stylize(photo, style, params.replace(steps=2))
                records: list[Progress] = []
                _sync(device)
                start = time.perf_counter()
                result = stylizer.stylize(photo, style, params, progress=records.append)
                _sync(device)
                photo_seconds = time.perf_counter() - start
                step = steady_step_seconds(records)
                loss = loss_in_fp32(reference, result.image, photo, style, params)
                fp32_loss = loss if precision == "fp32" and fp32_loss is None else fp32_loss
                loss_gap = None if fp32_loss is None else loss / fp32_loss - 1
                label = precision + ("+graphs" if graphs else "")
                row = {
                    "size": size,
                    "precision": precision,
                    "cuda_graphs": graphs and stylizer.graphs.enabled,
                    "steps": args.steps,
                    "baseline_ms_per_step": base_step * 1e3,
                    "engine_ms_per_step": step * 1e3,
                    "step_speedup": base_step / step,
                    "baseline_s_per_photo": base_photo,
                    "engine_s_per_photo": photo_seconds,
                    "photo_speedup": base_photo / photo_seconds,
                    "gflop_per_step": flops / 1e9,
                    "achieved_gflops": flops / step / 1e9,
                    "fraction_of_peak": flops / step / peak,
                    "final_loss_fp32_eval": loss,
                    "loss_vs_fp32": loss_gap,
                }
                rows.append(row)
                print(
                    f"{size:5d}px {label:12s} baseline {base_step * 1e3:8.2f} ms/step  "
                    f"engine {step * 1e3:8.2f} ms/step  step x{row['step_speedup']:.2f}  "
                    f"photo x{row['photo_speedup']:.2f}  {flops / 1e9:6.1f} GFLOP/step  "
                    f"{flops / step / 1e9:8.1f} GFLOP/s ({row['fraction_of_peak']:.0%} of peak)  "
                    f"final loss {loss:.4g}"
                    + (
                        ""
                        if loss_gap is None or (precision == "fp32" and not graphs)
                        else f" ({loss_gap:+.1%} vs fp32"
                        f"{', within 2%' if abs(loss_gap) <= 0.02 else ', OVER 2%'})"
                    )
                    + ("" if stylizer.graphs.enabled or not graphs else " (graphs FAILED: off)")
                )
                sys.stdout.flush()
        for (precision, graphs), stylizer in engines.items():
            if args.presets and graphs == graph_modes[-1]:
                print(f"# presets, {precision}{' with CUDA graphs' if graphs else ''}")
                for row in time_presets(
                    stylizer, photo, style, args.presets, size=args.preset_size, batch=args.batch
                ):
                    preset_rows.append({"precision": precision, "cuda_graphs": graphs, **row})
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": str(device),
                    "weights": kind,
                    "peak_flops": peak,
                    "rows": rows,
                    "presets": preset_rows,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
