"""L-BFGS over the pixels that never waits for the GPU.

torch.optim.LBFGS decides on the host: it reads the loss, tests the curvature pair (`ys > 1e-10`)
and turns each of the two-loop recursion's 2 x history coefficients into a Python number, so one
step stops the CPU until the GPU is idle about a hundred times. On a GPU that waiting, not the
network, is most of a small picture's step. This one keeps every decision on the device
(`torch.where` instead of `if`) and computes the direction from the compact representation of
Byrd, Nocedal and Schnabel (1994): two passes over the history as matrix products instead of
2 x history dot products and updates in a Python loop.

It is the same method as torch's with `max_iter=1`, a fixed step and the tolerances off (the
stylizer's settings): the same first step, the same history and the same directions, up to
rounding (tests/test_lbfgs.py holds the two side by side). Two deliberate differences:
- a curvature pair that fails `ys > 1e-10` still takes its slot in the history, with no weight
  (torch drops it), so that the slot order is known on the host;
- a direction that does not descend is replaced by the gradient's (torch stops there and, with the
  same history, would find the same direction again at every later step).
"""

from __future__ import annotations

import torch

CURVATURE_MIN = 1e-10  # torch's test for a usable pair


class LBFGS:
    """Minimises over `param` in place; call `step()` after each backward pass."""

    def __init__(self, param: torch.Tensor, lr: float = 1.0, history_size: int = 50) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self.param = param
        self.lr = lr
        m = self.history_size = history_size
        n = param.numel()
        device = param.device
        # Rows 0..m-1 hold the steps s, rows m..2m-1 the gradient changes y, in ring slots.
        # A slot never written, or written with a rejected pair, holds zeros.
        self._pairs = torch.zeros(2 * m, n, device=device, dtype=torch.float32)
        self._valid = torch.zeros(m, device=device, dtype=torch.bool)
        # The small matrices are float64: after a wild step the pairs' products span many orders
        # of magnitude, and the compact form subtracts nearly equal terms (fp32 lost the
        # direction there, where the two-loop recursion kept it).
        self._sy = torch.zeros(m, m, device=device, dtype=torch.float64)  # [i, j] = s_i·y_j
        self._yy = torch.zeros(m, m, device=device, dtype=torch.float64)  # [i, j] = y_i·y_j
        self._gamma = torch.ones((), device=device, dtype=torch.float64)  # H₀ = gamma·I
        # Row r: the slots oldest first when the oldest is slot r; and the inverse permutation.
        ring = torch.arange(m, device=device)
        self._order = (ring[None, :] + ring[:, None]) % m
        self._unorder = (ring[None, :] - ring[:, None]) % m
        self._pairs_written = 0  # on the host: fixes which slot comes next
        self._grad: torch.Tensor | None = None  # the previous step's gradient
        self._move: torch.Tensor | None = None  # the previous step, s = t·d

    def step(self) -> None:
        """Move `param` along the L-BFGS direction at its current gradient."""
        grad = self.param.grad
        if grad is None:
            raise RuntimeError("LBFGS.step() needs the gradient: call backward() first")
        g = grad.detach().reshape(-1).float()
        if self._grad is None or self._move is None:
            # The first step: steepest descent, no longer than 1 in the L1 sense (as torch).
            length = torch.clamp(1.0 / g.abs().sum(), max=1.0) * self.lr
            move = -g * length
        else:
            self._remember(self._move, g - self._grad)
            d = self._direction(g)
            descends = torch.dot(g, d) < 0
            move = torch.where(descends, d, -g * self._gamma.float()) * self.lr
        self._grad = g.clone()
        self._move = move
        with torch.no_grad():
            self.param.add_(move.view_as(self.param).to(self.param.dtype))

    def _remember(self, s: torch.Tensor, y: torch.Tensor) -> None:
        """Store the pair (s, y) in the next ring slot, with no weight unless its curvature is
        positive, and refresh the products with the other pairs."""
        m = self.history_size
        slot = self._pairs_written % m
        self._pairs_written += 1
        ys = torch.dot(y, s)
        accepted = ys > CURVATURE_MIN
        keep = accepted.to(s.dtype)
        self._pairs[slot].copy_(s * keep)
        self._pairs[m + slot].copy_(y * keep)
        self._valid[slot] = accepted
        self._gamma = torch.where(accepted, ys.double() / torch.dot(y, y).double(), self._gamma)
        products = (self._pairs @ self._pairs[m + slot]).double()  # (2m,): Sᵀy_new and Yᵀy_new
        self._sy[:, slot] = products[:m]
        self._yy[:, slot] = products[m:]
        self._yy[slot, :] = products[m:]

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        """-H·g for the inverse Hessian H of the stored pairs (compact form):

        H = γI + [S γY] · [[R⁻ᵀ(D + γYᵀY)R⁻¹, -R⁻ᵀ], [-R⁻¹, 0]] · [Sᵀ; γYᵀ]

        with R the upper triangle of SᵀY in time order and D its diagonal. Empty and rejected
        slots are zero pairs with a unit diagonal, which leaves the others' terms unchanged.
        """
        m = self.history_size
        oldest = self._pairs_written % m if self._pairs_written > m else 0
        order, unorder = self._order[oldest], self._unorder[oldest]
        gamma = self._gamma
        valid = self._valid[order]
        sy = self._sy[order][:, order]
        d = torch.diag(torch.where(valid, torch.diagonal(sy), torch.ones_like(gamma)))
        r = torch.triu(sy, diagonal=1) + d
        yy = self._yy[order][:, order]
        products = (self._pairs @ g).double()  # (2m,): Sᵀg and Yᵀg, slot-indexed
        sg, yg = products[:m][order], products[m:][order]
        p = torch.linalg.solve_triangular(r, sg.unsqueeze(1), upper=True)
        inner = (d + gamma * yy) @ p - gamma * yg.unsqueeze(1)
        top = torch.linalg.solve_triangular(r.T, inner, upper=False)
        weights = torch.cat([top.squeeze(1)[unorder], (-gamma * p.squeeze(1))[unorder]])
        return -(gamma.float() * g + weights.float() @ self._pairs)
