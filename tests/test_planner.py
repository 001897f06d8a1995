"""The time-budget planner: measured step costs in, a schedule out (no clock, no torch)."""

from __future__ import annotations

import pytest

from engine.planner import MIN_COARSE_STEPS, StepCosts, plan

# Seconds per step at 128, 256 and 512 px (4:3): a CPU's ~4x per doubling of the edge.
COSTS = StepCosts(((128 * 96, 0.03), (256 * 192, 0.12), (512 * 384, 0.5)))


def _pixels(edge: int) -> int:
    return edge * round(edge * 0.75)


def _ladder(edge: int) -> list[int]:
    """Three scales, each half the next, none under 64 px; nothing under 64 px at all."""
    if edge < 64:
        return []
    return [e for e in (round(edge / 4), round(edge / 2)) if e >= 64] + [edge]


def _plan(budget: float, costs: StepCosts = COSTS):  # type: ignore[no-untyped-def]
    return plan(budget, 512, _ladder, _pixels, costs, ratio=2.0)


def test_a_budget_is_shared_between_scales_like_the_fixed_schedule() -> None:
    # 10 s: 95% planned, less the final evaluation (0.25 s) and a set-up per scale (0.65 s),
    # leaves 8.6 s for steps shared 4:2:1, at 0.03 + 2 x 0.12 / 2 ... = 0.86 s per share.
    planned = _plan(10.0)
    assert planned.schedule == ((128, 40), (256, 20), (512, 10))
    assert planned.upsampled_from is None
    assert planned.seconds == pytest.approx(9.5)


@pytest.mark.parametrize("budget", [2.0, 3.5, 5.0, 10.0, 20.0, 40.0, 400.0])
def test_every_plan_ends_at_full_size_and_fits_its_budget(budget: float) -> None:
    planned = _plan(budget)
    assert planned.schedule[-1][0] == 512
    assert planned.seconds <= budget
    assert all(steps >= 1 for _, steps in planned.schedule)
    assert all(steps >= MIN_COARSE_STEPS for _, steps in planned.schedule[:-1])


def test_a_larger_budget_never_buys_fewer_steps_at_any_size() -> None:
    budgets = [2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0]
    plans = [_plan(b) for b in budgets]
    finals = [p.schedule[-1][1] for p in plans]
    assert finals == sorted(finals)
    assert [p.steps for p in plans] == sorted(p.steps for p in plans)
    assert plans[-1].steps > plans[0].steps


def test_a_tight_budget_drops_coarse_scales_before_the_full_size_step() -> None:
    # 2 s: one step at 512 px with its set-up is 1 s; coarse scales of < 5 steps are not worth it.
    assert _plan(2.0).schedule == ((512, 2),)


def test_a_budget_too_small_for_one_full_size_step_optimises_smaller_and_says_so() -> None:
    planned = _plan(0.5)
    edge = planned.schedule[-1][0]
    assert edge < 512
    assert planned.upsampled_from == edge
    assert planned.seconds <= 0.5


def test_nothing_fits_gives_one_step_at_the_smallest_edge_the_network_takes() -> None:
    planned = _plan(1e-6)
    assert planned.schedule == ((planned.schedule[0][0], 1),)
    assert 64 <= planned.schedule[0][0] < 80  # 512 shrunk by 0.8 until the next is under 64


def test_slower_steps_buy_fewer_steps() -> None:
    slow = StepCosts(tuple((p, s * 2) for p, s in COSTS.points))
    assert _plan(20.0, slow).steps < _plan(20.0).steps


def test_step_costs_interpolate_extrapolate_and_learn() -> None:
    costs = StepCosts(((100, 1.0), (300, 2.0)))
    assert costs.seconds(100) == 1.0
    assert costs.seconds(200) == pytest.approx(1.5)
    assert costs.seconds(600) == pytest.approx(4.0)  # proportional beyond the largest
    assert costs.seconds(50) == pytest.approx(0.5)  # and below the smallest
    assert costs.measured(100, 3.0).seconds(100) == pytest.approx(2.0)  # blended half way
    assert costs.measured(200, 5.0).points == ((100, 1.0), (200, 5.0), (300, 2.0))
    assert costs.measured(100, float("nan")) == costs
    with pytest.raises(ValueError, match="no step has been measured"):
        StepCosts().seconds(100)
