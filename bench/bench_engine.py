"""Engine benchmark: stylewatch's engine against a plain baseline, same run, same images.

The baseline is written the way the PyTorch neural-style tutorial does it: the full VGG19 `features`
stack in fp32, the style targets recomputed for every photo, L-BFGS over the pixels. The engine is
the resident Stylizer (network cut at relu5_1, cached targets, the chosen precision).

    python bench/bench_engine.py                       # 256 px, fp32 and bf16, on the best device
    python bench/bench_engine.py --sizes 512 1024 --precisions fp32 bf16 --steps 20

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
from engine.params import EngineConfig, Progress, StyleParams, StyleSpec
from engine.stylizer import Stylizer
from engine.vgg import LAYER_INDEX, build_vgg19_features, hub_checkpoint_path, load_state_dict

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
    """Median time between steps, leaving out the first step (warm-up, target building)."""
    stamps = [r.seconds for r in records]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return statistics.median(gaps)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights, kind = _weights(args.weights, Path(tmp))
        engines = {
            p: Stylizer(
                EngineConfig(device=args.device, weights=weights, precision=p, download=False)
            )
            for p in args.precisions
        }
        device = next(iter(engines.values())).device
        # Every result's loss is evaluated by an fp32 engine, so that precisions compare fairly.
        reference = engines.get("fp32") or Stylizer(
            EngineConfig(device=args.device, weights=weights, precision="fp32", download=False)
        )
        baseline = TutorialBaseline(weights, device)
        peak, peak_dtype = matrix_peak(device)
        threads = torch.get_num_threads()
        print(
            f"# {time.strftime('%Y-%m-%d')} device={device} torch={torch.__version__} "
            f"threads={threads} cpu={platform.processor() or platform.machine()} weights={kind}"
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
            fp32_loss: float | None = None
            # fp32 first: the others' final losses are compared with its.
            for precision, engine in sorted(engines.items(), key=lambda e: e[0] != "fp32"):
                engine.stylize(photo, style, params.replace(steps=2))
                records: list[Progress] = []
                _sync(device)
                start = time.perf_counter()
                result = engine.stylize(photo, style, params, progress=records.append)
                _sync(device)
                photo_seconds = time.perf_counter() - start
                step = steady_step_seconds(records)
                flops = step_flops(engine, photo, style, params)
                loss = loss_in_fp32(reference, result.image, photo, style, params)
                fp32_loss = loss if precision == "fp32" else fp32_loss
                loss_gap = None if fp32_loss is None else loss / fp32_loss - 1
                row = {
                    "size": size,
                    "precision": precision,
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
                    f"{size:5d}px {precision:5s} baseline {base_step * 1e3:8.1f} ms/step  "
                    f"engine {step * 1e3:8.1f} ms/step  step x{row['step_speedup']:.2f}  "
                    f"photo x{row['photo_speedup']:.2f}  {flops / 1e9:6.1f} GFLOP/step  "
                    f"{flops / step / 1e9:7.1f} GFLOP/s ({row['fraction_of_peak']:.0%} of peak)  "
                    f"final loss {loss:.4g}"
                    + (
                        ""
                        if loss_gap is None
                        else f" ({loss_gap:+.1%} vs fp32"
                        f"{', within 2%' if abs(loss_gap) <= 0.02 else ', OVER 2%'})"
                    )
                )
                sys.stdout.flush()
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": str(device), "weights": kind, "peak_flops": peak, "rows": rows}, indent=2
            )
        )


if __name__ == "__main__":
    main()
