"""The batch progress reporter: a steady line across groups of different working sizes."""

from __future__ import annotations

import itertools

from daemon.progress import BatchProgress, Report, group_weights
from engine.params import Progress


def _group_steps(steps: int, seconds_per_step: float) -> list[Progress]:
    """One engine group's reports: its own steps 1..steps and its own clock from 0."""
    return [
        Progress(
            scale=1, scales=1, size=64, step=n, steps=steps, loss=1.0, seconds=n * seconds_per_step
        )
        for n in range(1, steps + 1)
    ]


def test_group_weights_follow_the_engine_order_and_count_photos_times_pixels() -> None:
    # Two 2:1 landscapes share a working size; the portrait is its own group.
    weights = group_weights([(200, 100), (100, 200), (400, 200)], 64)
    assert weights == [2 * 64 * 32, 32 * 64]


def test_the_interval_holds_across_a_batch_of_photos_of_different_sizes() -> None:
    now = [0.0]
    # A small group, then a large one whose steps cost 16x more: the large one's clock starts
    # again at 0, which once silenced the log until it passed the first group's seconds.
    groups = [(_group_steps(300, 0.5), 0.5), (_group_steps(100, 8.0), 8.0)]
    reporter = BatchProgress(
        group_weights([(256, 64), (256, 256)], 256), interval=10.0, clock=lambda: now[0]
    )
    lines: list[tuple[float, Report]] = []
    for reports, step_seconds in groups:
        for progress in reports:
            now[0] += step_seconds
            report = reporter.update(progress)
            if report is not None:
                lines.append((now[0], report))
    times = [0.0] + [at for at, _ in lines]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Never quiet for longer than the interval plus one step of the slowest group.
    assert max(gaps) <= 10.0 + 8.0
    assert times[-1] == now[0]  # the last step is always reported
    assert len(lines) >= now[0] / 18.0
    percents = [r.percent for _, r in lines]
    assert percents == sorted(percents)
    assert percents[-1] == 100.0
    assert lines[-1][1].eta_seconds == 0.0
    # The estimate at the end of the small group sees the large group still ahead.
    small_done = next(r for _, r in lines if r.percent > 0 and r.seconds >= 150.0)
    assert small_done.eta_seconds is not None
    assert small_done.eta_seconds > 150.0


def test_no_line_before_the_interval_within_a_group() -> None:
    now = [0.0]
    reporter = BatchProgress([1.0], interval=10.0, clock=lambda: now[0])
    seen = []
    for progress in _group_steps(30, 1.0):
        now[0] += 1.0
        seen.append(reporter.update(progress))
    emitted = [i + 1 for i, r in enumerate(seen) if r is not None]
    assert emitted == [10, 20, 30]
    last = seen[-1]
    assert last is not None
    assert last.percent == 100.0
    assert last.seconds == 30.0
    middle = seen[9]
    assert middle is not None
    assert middle.percent == 33.3
    assert middle.eta_seconds == 20.0


def test_within_a_photo_a_step_counts_for_the_pixels_of_its_scale() -> None:
    now = [0.0]
    schedule = ((128, 20), (256, 10))  # the coarse scale: 20 steps at a quarter of the pixels
    reporter = BatchProgress([1.0], interval=0.0, schedule=schedule, clock=lambda: now[0])
    reports = []
    for n in range(1, 31):
        now[0] += 1.0 if n <= 20 else 4.0  # a step at twice the edge costs 4x
        progress = Progress(scale=1, scales=2, size=128, step=n, steps=30, loss=1.0, seconds=now[0])
        reports.append(reporter.update(progress))
    coarse_done = reports[19]
    assert coarse_done is not None
    # 20 x 128^2 of 20 x 128^2 + 10 x 256^2: a third of the work, not two thirds of the steps.
    assert coarse_done.percent == 33.3
    assert coarse_done.eta_seconds == 40.0  # and so the 40 s still to come are foreseen
    assert [r.percent for r in reports if r is not None][-1] == 100.0


def test_a_plan_other_than_the_schedule_counts_steps() -> None:
    reporter = BatchProgress(
        [1.0], interval=0.0, schedule=((128, 20), (256, 10)), clock=lambda: 1.0
    )
    tiled = Progress(scale=2, scales=2, size=256, step=30, steps=60, loss=1.0, seconds=1.0)
    report = reporter.update(tiled)
    assert report is not None
    assert report.percent == 50.0
