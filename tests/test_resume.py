"""Photos handed over as soon as they are done, snapshots of a running job, resuming from one."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from PIL import Image
from structlog.testing import capture_logs

from engine.params import EngineConfig, Progress, Snapshot, StyleParams, StyleSpec
from engine.stylizer import Stylized, Stylizer, working_size

FAST = StyleParams(size=48, steps=8, scales=2, min_scale_size=24)


def _snapshots(stylizer: Stylizer, photo: Image.Image, style: StyleSpec) -> list[Snapshot]:
    taken: list[Snapshot] = []
    stylizer.stylize(photo, style, FAST, snapshot=taken.append, snapshot_every=0)
    return taken


def test_each_photo_is_handed_over_when_its_group_ends_not_when_the_batch_does(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    tall = photo.rotate(90, expand=True)
    events: list[tuple[str, int]] = []
    handed: dict[int, Stylized] = {}

    def on_result(index: int, result: Stylized) -> None:
        events.append(("result", index))
        handed[index] = result

    results = stylizer.stylize_batch(
        [photo, tall, photo],
        StyleSpec.of(style_files[0]),
        FAST,
        progress=lambda p: events.append(("step", p.step)),
        on_result=on_result,
    )
    # The two photos of the first working size come out before the tall one's first step.
    second_run = events.index(("step", 1), 1)
    assert sorted(events[second_run - 2 : second_run]) == [("result", 0), ("result", 2)]
    assert events[-1] == ("result", 1)
    assert [handed[i] for i in range(3)] == results


def test_snapshots_come_no_more_often_than_asked(
    vgg_checkpoint: Path, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    ticks = itertools.count(0.0, 4.0)  # each look at the clock: 4 s later
    stylizer = Stylizer(
        EngineConfig(device="cpu", weights=vgg_checkpoint, download=False),
        clock=lambda: next(ticks),
    )
    taken: list[Snapshot] = []
    stylizer.stylize(
        photo, StyleSpec.of(style_files[0]), FAST, snapshot=taken.append, snapshot_every=10
    )
    # Read at the start (0 s) and after steps 1..8 (4..32 s): due at 12 s and 24 s.
    assert [s.step for s in taken] == [3, 6]
    schedule = FAST.schedule()
    assert all(s.schedule == schedule and s.index == 0 for s in taken)
    first_scale_steps = schedule[0][1]
    for s in taken:
        assert s.scale == (1 if s.step <= first_scale_steps else 2)
        assert s.image.mode == "RGB"
        final = working_size(photo.size, FAST.size)
        assert s.image.size == working_size(final, schedule[s.scale - 1][0])


@pytest.mark.parametrize("at", [2, 6])
def test_a_resumed_photo_runs_only_the_steps_it_had_left(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path], at: int
) -> None:
    style = StyleSpec.of(style_files[0])
    saved = next(s for s in _snapshots(stylizer, photo, style) if s.step == at)
    seen: list[Progress] = []
    result = stylizer.stylize(photo, style, FAST, progress=seen.append, resume={0: saved})
    assert [p.step for p in seen] == list(range(at + 1, FAST.steps + 1))
    assert result.image.size == working_size(photo.size, FAST.size)
    assert result.image.mode == "RGB"


def test_resumed_and_fresh_photos_of_one_size_run_apart_in_order(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    style = StyleSpec.of(style_files[0])
    saved = next(s for s in _snapshots(stylizer, photo, style) if s.step == 5)
    seen: list[Progress] = []
    results = stylizer.stylize_batch(
        [photo, photo], style, FAST, progress=seen.append, resume={1: saved}
    )
    assert len(seen) == FAST.steps + (FAST.steps - 5)
    assert [r.image.size for r in results] == [working_size(photo.size, FAST.size)] * 2


def test_a_snapshot_of_another_size_is_ignored_with_a_warning(
    stylizer: Stylizer, photo: Image.Image, style_files: tuple[Path, Path]
) -> None:
    style = StyleSpec.of(style_files[0])
    saved = _snapshots(stylizer, photo, style)[4]
    other = FAST.replace(size=40)
    seen: list[Progress] = []
    with capture_logs() as logs:
        result = stylizer.stylize(photo, style, other, progress=seen.append, resume={0: saved})
    assert [p.step for p in seen] == list(range(1, other.steps + 1))
    assert result.image.size == working_size(photo.size, 40)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["snapshot_ignored"]
