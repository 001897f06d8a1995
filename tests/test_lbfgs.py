"""The device-side L-BFGS against torch.optim.LBFGS with the settings the stylizer used."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from engine.lbfgs import LBFGS

Loss = Callable[[torch.Tensor], torch.Tensor]


def _quadratic(n: int, seed: int) -> Loss:
    """A convex quadratic with eigenvalues spread over two orders of magnitude."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    scales = torch.logspace(-1, 1, n, dtype=torch.float64)
    matrix = (basis * scales) @ basis.T
    centre = torch.randn(n, generator=generator, dtype=torch.float64)

    def loss(x: torch.Tensor) -> torch.Tensor:
        diff = x.double().reshape(-1) - centre
        return 0.5 * diff @ matrix @ diff

    return loss


def _rosenbrock(x: torch.Tensor) -> torch.Tensor:
    v = x.reshape(-1).double()
    return (100 * (v[1:] - v[:-1] ** 2) ** 2 + (1 - v[:-1]) ** 2).sum()


def _ours(loss: Loss, start: torch.Tensor, steps: int, history: int) -> list[torch.Tensor]:
    x = start.clone().requires_grad_(True)
    optimizer = LBFGS(x, lr=1.0, history_size=history)
    path = []
    for _ in range(steps):
        x.grad = None
        loss(x).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        path.append(x.detach().clone())
    return path


def _torchs(loss: Loss, start: torch.Tensor, steps: int, history: int) -> list[torch.Tensor]:
    x = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [x], lr=1.0, max_iter=1, history_size=history, tolerance_grad=-1, tolerance_change=-1
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss(x)
        value.backward()  # type: ignore[no-untyped-call]
        return value

    path = []
    for _ in range(steps):
        optimizer.step(closure)  # type: ignore[no-untyped-call]
        path.append(x.detach().clone())
    return path


@pytest.mark.parametrize("history", [1, 3, 50])
def test_it_walks_the_same_path_as_torch_on_a_quadratic(history: int) -> None:
    # 30 steps with a history of 3 wraps the ring buffer many times over.
    loss = _quadratic(40, seed=history)
    start = torch.zeros(4, 10)
    ours = _ours(loss, start, 30, history)
    theirs = _torchs(loss, start, 30, history)
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), f"paths part at step {step + 1}"
    assert loss(ours[-1]) < 1e-3 * loss(start)


def test_it_walks_the_same_path_as_torch_on_rosenbrock() -> None:
    # Non-convex: the curvature changes sign along the way, and the history ring wraps.
    start = torch.full((6,), -0.5)
    ours = _ours(_rosenbrock, start, 12, history=5)
    theirs = _torchs(_rosenbrock, start, 12, history=5)
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), f"paths part at step {step + 1}"


def test_a_pair_without_curvature_is_kept_with_no_weight() -> None:
    # Along a straight line of constant slope, y = 0: every pair is rejected, and the steps stay
    # plain gradient steps (gamma stays 1), as with torch's empty history.
    x = torch.zeros(5, requires_grad=True)
    slope = torch.arange(1.0, 6.0)
    optimizer = LBFGS(x, lr=0.5, history_size=4)
    for _ in range(10):
        x.grad = None
        (slope * x).sum().backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    first = 0.5 / slope.sum()  # the first step's length, as torch
    assert torch.allclose(x.detach(), -slope * (first + 9 * 0.5))
    assert not optimizer._valid.any()


def test_step_without_a_gradient_says_so() -> None:
    x = torch.zeros(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="backward"):
        LBFGS(x).step()
    with pytest.raises(ValueError, match="history_size"):
        LBFGS(x, history_size=0)
