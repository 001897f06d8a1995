"""The engine's device-side L-BFGS against torch.optim.LBFGS on real style objectives.

    python bench/compare_lbfgs.py --size 112 --steps 80

Every ordered pair of the bundled samples (photo, painting) is optimised from the photo with both
optimizers, same objective (rescaled to start at 100, as the engine does), same settings (lr 1,
history 50, no line search, no tolerances); the final losses are printed side by side with their
ratio. The two follow the same method, so the ratios should scatter around 1: L-BFGS paths drift
apart with rounding after the first wild step, which is why this compares endpoints over many
problems rather than paths. Weights: as bench_engine (hub cache, else random).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
from pathlib import Path

import torch
from bench_engine import _weights
from PIL import Image

from engine.images import resize_long_edge
from engine.lbfgs import LBFGS
from engine.optimize import LBFGS_START_LOSS, Objective
from engine.params import EngineConfig, StyleParams, StyleSpec
from engine.stylizer import Stylizer

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def final_loss(kind: str, objective: Objective, content: torch.Tensor, steps: int) -> float:
    scale = LBFGS_START_LOSS / objective.loss(content).item()
    x = content.clone().requires_grad_(True)

    def closure() -> torch.Tensor:
        x.grad = None
        loss = objective.loss(x) * scale
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    if kind == "torch":
        theirs = torch.optim.LBFGS(
            [x], lr=1, max_iter=1, history_size=50, tolerance_grad=-1, tolerance_change=-1
        )
        for _ in range(steps):
            theirs.step(closure)  # type: ignore[no-untyped-call]
    else:
        ours = LBFGS(x, lr=1.0, history_size=50)
        for _ in range(steps):
            closure()
            ours.step()
    with torch.no_grad():
        return objective.loss(x.clamp(0, 1)).item() * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights, kind = _weights(args.weights, Path(tmp))
        engine = Stylizer(EngineConfig(device=args.device, weights=weights, download=False))
    print(f"# device={engine.device} weights={kind} size={args.size} steps={args.steps}")
    pictures = sorted(p for p in SAMPLES.iterdir() if p.suffix in {".png", ".jpg"})
    ratios = []
    for photo_path, painting in itertools.permutations(pictures, 2):
        with Image.open(photo_path) as im:
            photo = resize_long_edge(im.convert("RGB"), args.size)
        params = StyleParams(size=args.size, steps=args.steps, scales=1)
        content = engine._to_tensor(photo).contiguous()
        objective = engine._objective(content, StyleSpec.of(painting), params, args.size)
        theirs = final_loss("torch", objective, content, args.steps)
        ours = final_loss("ours", objective, content, args.steps)
        ratios.append(ours / theirs)
        print(
            f"{photo_path.name:18s} {painting.name:18s} torch {theirs:9.4f}  ours {ours:9.4f}  "
            f"ratio {ours / theirs:.3f}",
            flush=True,
        )
    print(
        f"# {len(ratios)} problems: median ratio {statistics.median(ratios):.4f}, "
        f"geometric mean {statistics.geometric_mean(ratios):.4f}, "
        f"range {min(ratios):.3f}..{max(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
