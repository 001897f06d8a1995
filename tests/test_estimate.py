"""`stylewatch estimate`: a step's cost measured at two small sizes, a photo's schedule priced."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.estimate import StepCost, fit, predict, step_seconds
from engine.params import Progress, StyleParams

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _reports(seconds: list[float]) -> list[Progress]:
    return [
        Progress(scale=1, scales=1, size=96, step=n, steps=len(seconds), loss=1.0, seconds=s)
        for n, s in enumerate(seconds, start=1)
    ]


def test_the_warm_up_steps_are_left_out_of_the_step_time() -> None:
    # The first two steps pay for set-up; the rest take 0.1 s each.
    assert step_seconds(_reports([3.0, 3.5, 3.6, 3.7, 3.8, 3.9])) == pytest.approx(0.1)
    # One step held up by another program does not set the figure.
    assert step_seconds(_reports([3.0, 3.5, 3.6, 5.6, 5.7, 5.8])) == pytest.approx(0.1)


def test_a_line_through_two_sizes_prices_each_scale_by_its_pixels() -> None:
    cost = fit([(1000, 0.02), (4000, 0.05)])
    assert cost.fixed == pytest.approx(0.01)
    assert cost.per_pixel == pytest.approx(1e-5)
    params = StyleParams(size=300, steps=30, scales=2, min_scale_size=16)
    (small, n_small), (large, n_large) = params.schedule()
    assert (small, large) == (150, 300)
    # A 3:2 photo: 300x200 at the full size, 150x100 at the coarse one.
    expected = n_small * (0.01 + 150 * 100 * 1e-5) + n_large * (0.01 + 300 * 200 * 1e-5)
    assert predict(cost, params) == pytest.approx(expected)
    # Twice the steps, about twice the time.
    assert predict(cost, params.replace(steps=60)) == pytest.approx(2 * expected, rel=0.05)


def test_a_cost_never_goes_negative() -> None:
    assert StepCost(fixed=-1.0, per_pixel=1e-6).seconds(10) == 0.0


def test_a_measurement_disturbed_by_the_machine_falls_back_to_scaling_by_pixels() -> None:
    # The large size was held up by another program: its line would cross below zero.
    assert fit([(1000, 0.01), (4000, 0.12)]) == StepCost(fixed=0.0, per_pixel=0.12 / 4000)
    assert fit([(1000, 0.2), (4000, 0.1)]) == StepCost(fixed=0.0, per_pixel=0.1 / 4000)


def test_estimate_measures_this_machine_and_prices_every_rule(
    tmp_path: Path, vgg_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "inbox").mkdir()
    shutil.copyfile(SAMPLES / "starry_night.jpg", tmp_path / "paint.jpg")
    config = tmp_path / "config.yaml"
    config.write_text(
        "input: inbox\noutput: outbox\nstate: state\n"
        f"engine: {{device: cpu, weights: {vgg_checkpoint}, download: false}}\n"
        "styles: {s: {image: paint.jpg}}\ndefaults: {size: 128, steps: 20, scales: 2}\n"
        "rules: [{match: 'a/**', styles: [s], steps: 40}, {match: '**', styles: [s]},\n"
        "        {match: 'b/**', styles: [s], seconds: 30}]\n"
    )
    with pytest.raises(SystemExit) as info:
        main(["estimate", "-c", str(config)])
    assert info.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("measured on cpu (")
    assert "s/step at 96x64" in out[0]
    assert "s/step at 192x128" in out[0]
    assert out[1].startswith("rule 0 (a/**), style s: a 3:2 photo at 128 px, 40 steps")
    assert out[2].startswith("rule 1 (**), style s: a 3:2 photo at 128 px, 20 steps")
    assert all(" about " in line for line in out[1:3])
    # A time budget is its own estimate: the engine plans the steps to fill it.
    assert (
        out[3] == "rule 2 (b/**), style s: a 3:2 photo at 128 px within its time budget: about 30 s"
    )
    assert out[4].startswith("the network loaded in")
    assert len(out) == 5  # one measurement: the rules share what a step costs
