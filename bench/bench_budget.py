"""Time budgets: the time each budget takes and the quality it buys, against the presets.

For each budget, photos are stylized with `seconds: B` and no step count; the table gives the
optimisation time used (the goal: never above the budget + 10%) and the final loss evaluated in
fp32 at full size (the goal: lower for every larger budget). Then each preset runs, and a budget
of the time that preset took runs on the same photos: the two at equal time.

    python bench/bench_budget.py                                  # 512 px, 5 10 20 40 s, 10 photos
    python bench/bench_budget.py --photos 3 --budgets 5 10 --presets fast
    python bench/bench_budget.py --device cuda --budgets 0.5 1 2  # on a GPU

The process is warmed first (one short budgeted photo): the first job of a process calibrates a
step and computes the painting's targets, as a daemon does once. Weights: the real checkpoint when
torch's hub cache (or --weights) has it, else seeded random weights (the losses are then those of
a random network: comparable with each other, not with a real one's).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageOps

from engine.images import resize_long_edge
from engine.params import EngineConfig, StyleParams, StyleSpec, with_preset
from engine.stylizer import Stylized, Stylizer
from engine.vgg import build_vgg19_features, hub_checkpoint_path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "samples"
PAINTING = SAMPLES / "starry_night.jpg"


def photos(count: int) -> list[tuple[str, Image.Image]]:
    """`count` different photos from the samples: each as it is, mirrored, centre-cropped."""
    out: list[tuple[str, Image.Image]] = []
    for name in ("chelsea.png", "astronaut.png", "shipwreck.jpg"):
        with Image.open(SAMPLES / name) as im:
            picture = im.convert("RGB")
        width, height = picture.size
        crop = picture.crop((width // 10, height // 10, width - width // 10, height - height // 10))
        out += [
            (name, picture),
            (f"{name} mirrored", ImageOps.mirror(picture)),
            (f"{name} cropped", crop),
        ]
    out.append(("chelsea.png turned", out[0][1].rotate(90, expand=True)))
    return out[:count]


def weights_path(given: Path | None, folder: Path) -> tuple[Path, str]:
    if given is not None:
        return given, "given"
    cached = hub_checkpoint_path("torchvision")
    if cached.is_file():
        return cached, "real (hub cache)"
    torch.manual_seed(1234)
    features = build_vgg19_features()
    path = folder / "vgg19-random.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path, "random (seeded)"


class Fp32Loss:
    """The final loss of a result, evaluated in fp32 at full size with the run's loss settings."""

    def __init__(self, weights: Path, device: str, style: StyleSpec, params: StyleParams) -> None:
        self.engine = Stylizer(EngineConfig(device=device, weights=weights, precision="fp32"))
        self.style = style
        self.params = params
        self._objectives: dict[int, object] = {}

    def __call__(self, key: int, photo: Image.Image, result: Stylized) -> float:
        engine = self.engine
        if key not in self._objectives:
            content = engine._to_tensor(resize_long_edge(photo, self.params.size))
            self._objectives[key] = engine._objective(
                content, self.style, self.params, self.params.size
            )
        objective = self._objectives[key]
        image = engine._to_tensor(result.image)
        return objective.evaluate(image)[0].total  # type: ignore[attr-defined, no-any-return]


def schedule_text(result: Stylized) -> str:
    text = " ".join(f"{edge}:{steps}" for edge, steps in result.schedule)
    if result.upsampled_from is not None:
        text += f" (upsampled from {result.upsampled_from})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--budgets", type=float, nargs="+", default=[5.0, 10.0, 20.0, 40.0])
    parser.add_argument("--photos", type=int, default=10, help="photos per budget (at most 10)")
    parser.add_argument("--presets", nargs="*", default=["fast", "balanced"])
    parser.add_argument("--preset-photos", type=int, default=2, help="photos per preset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's, the cores)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        weights, kind = weights_path(args.weights, Path(folder))
        stylizer = Stylizer(
            EngineConfig(device=args.device, weights=weights, precision=args.precision)
        )
        style = StyleSpec.of(PAINTING)
        base = StyleParams(size=args.size)
        loss = Fp32Loss(weights, args.device, style, base)
        pictures = photos(args.photos)
        print(
            f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.machine()}, "
            f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads; device {stylizer.device}, precision {stylizer.precision}; weights {kind}; "
            f"load average at start {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        stylizer.stylize(pictures[0][1], style, base.replace(seconds=min(args.budgets)))

        print(
            "\n| budget | photos | time used: mean | max | max over budget | fp32 loss: mean "
            "| schedule (first photo) |\n| --- | --- | --- | --- | --- | --- | --- |",
            flush=True,
        )
        for budget in args.budgets:
            used, losses, first = [], [], None
            for key, (_, picture) in enumerate(pictures):
                started = time.perf_counter()
                result = stylizer.stylize(picture, style, base.replace(seconds=budget))
                used.append(time.perf_counter() - started)
                losses.append(loss(key, picture, result))
                first = first or result
            assert first is not None
            over = max(used) / budget - 1
            print(
                f"| {budget:g} s | {len(used)} | {statistics.mean(used):.2f} s "
                f"| {max(used):.2f} s | {over:+.1%} | {statistics.mean(losses):.4g} "
                f"| {schedule_text(first)} |",
                flush=True,
            )

        if args.presets:
            print(
                "\n| preset | photos | preset time: mean | preset fp32 loss | budget of that time:"
                " time used | budget fp32 loss | budget / preset loss |\n"
                "| --- | --- | --- | --- | --- | --- | --- |",
                flush=True,
            )
        for name in args.presets:
            times, preset_losses, budget_used, budget_losses = [], [], [], []
            for key, (_, picture) in enumerate(pictures[: args.preset_photos]):
                started = time.perf_counter()
                result = stylizer.stylize(picture, style, with_preset(base, name))
                took = time.perf_counter() - started
                times.append(took)
                preset_losses.append(loss(key, picture, result))
                started = time.perf_counter()
                budgeted = stylizer.stylize(picture, style, base.replace(seconds=took))
                budget_used.append(time.perf_counter() - started)
                budget_losses.append(loss(key, picture, budgeted))
            ratio = statistics.mean(
                b / p for b, p in zip(budget_losses, preset_losses, strict=True)
            )
            print(
                f"| {name} | {len(times)} | {statistics.mean(times):.2f} s "
                f"| {statistics.mean(preset_losses):.4g} | {statistics.mean(budget_used):.2f} s "
                f"| {statistics.mean(budget_losses):.4g} | {ratio:.3f} |",
                flush=True,
            )
        print(f"\n# load average at the end {os.getloadavg()[0]:.2f}", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
